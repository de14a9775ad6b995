//! The field audit: every field the config crate (`sluice-config`) deserializes is either
//! implemented (the proxy reads it) or refused at load as `not supported by sluice` — never
//! accepted and ignored.
//!
//! What the audit covers: every struct of `crates/config/src` that derives `Deserialize` (the
//! Envoy v3 bootstrap as sluice models it: listeners, connection manager, routes, clusters, TLS,
//! access logs, health checks, ext_authz, runtime, DNS resolvers). Their consumer is this crate,
//! `sluice-proxy` (`crates/proxy/src`): the authz and mesh crates have config types of their own
//! (OPA's, the mesh's), which are not Envoy config and are not audited here.
//!
//! How it is enforced:
//! * The config crate types every field sluice recognises but does not implement as
//!   `NotSupported` (`Option<NotSupported>`, `Vec<NotSupported>`): present in a config, it fails
//!   at load with its path and `recognised but not supported by sluice`.
//! * Every other field is consumed by the proxy in a function that destructures its struct
//!   exhaustively (`let cfg::Cluster { name, lb_policy, … } = cfg;`, never `..`, never `_` or an
//!   `_underscore` name for an implemented field). The proxy crate denies `unused_variables`, so a
//!   field bound there and read by nothing is a compile error. `NotSupported` fields are bound too
//!   and handed to `config_audit::refused_at_load`, which only accepts `NotSupported` types.
//! * This test parses both crates' sources with `syn`, prints every deserialized field with its
//!   status (`cargo nextest run -p sluice-proxy --test config_audit --no-capture`) and fails when
//!   a config struct has no exhaustive destructuring in the proxy, when such a destructuring
//!   ignores an implemented field, or when the proxy stops denying `unused_variables`.
//!
//! A pattern counts only when its path names the config type: a name imported from
//! `sluice_config` (aliases resolved) or a path through a module imported from it
//! (`cfg::Route { … }` with `use sluice_config::route as cfg`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A deserialized struct of the config crate.
#[derive(Debug)]
struct ConfigStruct {
    file: PathBuf,
    /// Field name → `true` when the field is typed `NotSupported`.
    fields: BTreeMap<String, bool>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).unwrap();
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn derives_deserialize(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("derive")
            && a.meta.require_list().is_ok_and(|l| l.tokens.to_string().split(',').any(|t| t.trim().ends_with("Deserialize")))
    })
}

/// Whether serde skips the field on input (`#[serde(skip)]` / `skip_deserializing`).
fn skipped(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("serde")
            && a.meta.require_list().is_ok_and(|l| {
                let t = l.tokens.to_string();
                t.split(',').any(|p| matches!(p.trim(), "skip" | "skip_deserializing"))
            })
    })
}

fn is_not_supported(ty: &syn::Type) -> bool {
    let text = quote::ToTokens::to_token_stream(ty).to_string().replace(' ', "");
    matches!(text.as_str(), "NotSupported" | "Option<NotSupported>" | "Vec<NotSupported>")
}

#[derive(Default)]
struct StructCollector {
    structs: Vec<(String, BTreeMap<String, bool>)>,
}

impl<'a> Visit<'a> for StructCollector {
    fn visit_item_struct(&mut self, s: &'a syn::ItemStruct) {
        if derives_deserialize(&s.attrs) {
            let fields = match &s.fields {
                syn::Fields::Named(named) => named
                    .named
                    .iter()
                    .filter(|f| !skipped(&f.attrs))
                    .map(|f| (f.ident.as_ref().unwrap().to_string(), is_not_supported(&f.ty)))
                    .collect(),
                // Tuple and unit structs with derived `Deserialize` would need their own rule.
                _ => panic!("config struct {} is not a struct with named fields", s.ident),
            };
            self.structs.push((s.ident.to_string(), fields));
        }
        syn::visit::visit_item_struct(self, s);
    }
    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        // `#[cfg(test)] mod tests` holds test helpers, not config.
        let is_test = m.attrs.iter().any(|a| a.path().is_ident("cfg") && quote::ToTokens::to_token_stream(&a.meta).to_string().contains("test"));
        if !is_test {
            syn::visit::visit_item_mod(self, m);
        }
    }
}

/// Names a proxy file imports from `sluice_config`: items (alias → original name) and modules
/// (alias).
#[derive(Default, Debug)]
struct Imports {
    items: BTreeMap<String, String>,
    modules: BTreeSet<String>,
}

fn collect_use(tree: &syn::UseTree, from_config: bool, imports: &mut Imports) {
    match tree {
        syn::UseTree::Path(p) => {
            let from = from_config || p.ident == "sluice_config";
            collect_use(&p.tree, from, imports);
        }
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| collect_use(t, from_config, imports)),
        syn::UseTree::Name(n) if from_config => {
            let name = n.ident.to_string();
            if name.chars().next().is_some_and(char::is_uppercase) {
                imports.items.insert(name.clone(), name);
            } else {
                imports.modules.insert(name);
            }
        }
        syn::UseTree::Rename(r) if from_config || r.ident == "sluice_config" => {
            let (orig, alias) = (r.ident.to_string(), r.rename.to_string());
            if orig.chars().next().is_some_and(char::is_uppercase) {
                imports.items.insert(alias, orig);
            } else {
                imports.modules.insert(alias);
            }
        }
        _ => {}
    }
}

struct ImportCollector<'i>(&'i mut Imports);

impl<'a> Visit<'a> for ImportCollector<'_> {
    fn visit_item_use(&mut self, u: &'a syn::ItemUse) {
        collect_use(&u.tree, false, self.0);
    }
}

/// A struct pattern in the proxy naming a config struct.
#[derive(Debug, Clone)]
struct Destructuring {
    file: PathBuf,
    name: String,
    fields: BTreeSet<String>,
    rest: bool,
    /// Fields bound to `_` or to an `_underscore` name (which silences `unused_variables`).
    ignored: BTreeSet<String>,
}

struct PatternCollector<'f> {
    file: &'f Path,
    imports: &'f Imports,
    found: Vec<Destructuring>,
}

impl PatternCollector<'_> {
    /// The config struct a pattern path names, if it names one.
    fn config_name(&self, path: &syn::Path) -> Option<String> {
        let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        match segs.as_slice() {
            [one] => self.imports.items.get(one).cloned(),
            [first, .., last] if first == "sluice_config" || self.imports.modules.contains(first) => Some(last.clone()),
            _ => None,
        }
    }
}

fn ignores_binding(p: &syn::Pat) -> bool {
    match p {
        syn::Pat::Wild(_) => true,
        syn::Pat::Ident(i) => i.ident.to_string().starts_with('_'),
        syn::Pat::Reference(r) => ignores_binding(&r.pat),
        _ => false,
    }
}

impl<'a> Visit<'a> for PatternCollector<'_> {
    fn visit_pat_struct(&mut self, p: &'a syn::PatStruct) {
        if let Some(name) = self.config_name(&p.path) {
            let mut fields = BTreeSet::new();
            let mut ignored = BTreeSet::new();
            for f in &p.fields {
                if let syn::Member::Named(id) = &f.member {
                    fields.insert(id.to_string());
                    if ignores_binding(&f.pat) {
                        ignored.insert(id.to_string());
                    }
                }
            }
            self.found.push(Destructuring { file: self.file.to_path_buf(), name, fields, rest: p.rest.is_some(), ignored });
        }
        syn::visit::visit_pat_struct(self, p);
    }
}

/// `let _ = binding;` (which silences `unused_variables` for a destructured field) and the
/// `without_effect(field, "reason")` calls of one proxy file.
struct Evasions<'f> {
    file: &'f Path,
    discarded: Vec<String>,
    without_effect: Vec<(String, String)>,
}

fn is_plain_binding(e: &syn::Expr) -> bool {
    match e {
        syn::Expr::Path(p) => p.path.segments.len() == 1 && p.qself.is_none(),
        syn::Expr::Tuple(t) => t.elems.iter().all(is_plain_binding),
        syn::Expr::Reference(r) => is_plain_binding(&r.expr),
        _ => false,
    }
}

impl<'a> Visit<'a> for Evasions<'_> {
    fn visit_local(&mut self, l: &'a syn::Local) {
        let wild = match &l.pat {
            syn::Pat::Wild(_) => true,
            syn::Pat::Type(t) => matches!(*t.pat, syn::Pat::Wild(_)),
            _ => false,
        };
        if let (true, Some(init)) = (wild, &l.init) {
            if is_plain_binding(&init.expr) {
                let text = quote::ToTokens::to_token_stream(&init.expr).to_string();
                self.discarded.push(format!("{}: `let _ = {text};`", relative(self.file)));
            }
        }
        syn::visit::visit_local(self, l);
    }
    fn visit_expr_call(&mut self, c: &'a syn::ExprCall) {
        if let syn::Expr::Path(f) = &*c.func {
            if f.path.segments.last().is_some_and(|s| s.ident == "without_effect") {
                let field = c.args.first().map(|a| quote::ToTokens::to_token_stream(a).to_string()).unwrap_or_default();
                let why = match c.args.iter().nth(1) {
                    Some(syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. })) => s.value(),
                    _ => String::new(),
                };
                self.without_effect.push((format!("{}: {}", relative(self.file), field.replace(' ', "")), why));
            }
        }
        syn::visit::visit_expr_call(self, c);
    }
}

fn crate_dir(name: &str) -> PathBuf {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates/ holds the proxy crate");
    crates.join(name).join("src")
}

fn relative(p: &Path) -> String {
    let s = p.display().to_string();
    s.split_once("/crates/").map(|(_, r)| format!("crates/{r}")).unwrap_or(s)
}

/// Config structs whose consumers have not been converted to exhaustive destructuring yet. The
/// list may only shrink: the test fails when a struct here is destructured (remove it from the
/// list) and when a struct not here is not.
const PENDING: &[&str] = &[];

#[test]
fn every_deserialized_field_is_implemented_or_refused() {
    // The proxy denies unused variables crate-wide and never allows them back.
    let proxy_src = crate_dir("proxy");
    let lib = std::fs::read_to_string(proxy_src.join("lib.rs")).unwrap();
    assert!(lib.contains("#![deny(unused_variables)]"), "crates/proxy/src/lib.rs must deny unused_variables");

    // The config crate's deserialized structs.
    let mut config: BTreeMap<String, ConfigStruct> = BTreeMap::new();
    let mut files = Vec::new();
    rust_files(&crate_dir("config"), &mut files);
    for file in &files {
        let mut c = StructCollector::default();
        c.visit_file(&parse(file));
        for (name, fields) in c.structs {
            assert!(
                config.insert(name.clone(), ConfigStruct { file: file.clone(), fields }).is_none(),
                "two config structs are called {name}: the audit needs unique names"
            );
        }
    }
    assert!(config.len() > 50, "found only {} config structs: is the source layout as expected?", config.len());

    // Struct patterns in the proxy that name config structs.
    let mut patterns = Vec::new();
    let mut discarded = Vec::new();
    let mut no_effect = Vec::new();
    let mut files = Vec::new();
    rust_files(&proxy_src, &mut files);
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for allow in ["allow(unused_variables)", "allow(unused)"] {
            assert!(!text.contains(allow), "{}: `{allow}` defeats the field audit", relative(file));
        }
        let ast = parse(file);
        let mut imports = Imports::default();
        ImportCollector(&mut imports).visit_file(&ast);
        let mut c = PatternCollector { file, imports: &imports, found: Vec::new() };
        c.visit_file(&ast);
        patterns.extend(c.found);
        if !file.ends_with("config_audit.rs") {
            let mut e = Evasions { file, discarded: Vec::new(), without_effect: Vec::new() };
            e.visit_file(&ast);
            discarded.extend(e.discarded);
            no_effect.extend(e.without_effect);
        }
    }

    let mut report = String::new();
    let mut problems = Vec::new();
    let (mut implemented, mut refused, mut pending_fields) = (0usize, 0usize, 0usize);
    for (name, s) in &config {
        let expected: BTreeSet<String> = s.fields.keys().cloned().collect();
        let exhaustive: Vec<&Destructuring> =
            patterns.iter().filter(|p| p.name == *name && !p.rest && p.fields == expected).collect();
        let ignored: BTreeSet<&String> = exhaustive
            .iter()
            .flat_map(|p| p.ignored.iter())
            .filter(|f| !s.fields.get(*f).copied().unwrap_or(false))
            .collect();
        let pending = PENDING.contains(&name.as_str());
        if s.fields.is_empty() {
            report.push_str(&format!("{name}: (no fields)\n"));
            if pending {
                problems.push(format!("{name} has no fields: remove it from PENDING"));
            }
            continue;
        }
        match (exhaustive.is_empty(), pending) {
            (true, false) => {
                let partial: Vec<String> = patterns
                    .iter()
                    .filter(|p| p.name == *name)
                    .map(|p| {
                        let missing: Vec<&String> = expected.difference(&p.fields).collect();
                        format!("{} (`..`: {}, missing {:?})", relative(&p.file), p.rest, missing)
                    })
                    .collect();
                problems.push(format!(
                    "{name} ({}): no exhaustive destructuring in the proxy{}",
                    relative(&s.file),
                    if partial.is_empty() { String::new() } else { format!("; partial ones: {}", partial.join("; ")) }
                ));
            }
            (false, true) => problems.push(format!("{name} is destructured now: remove it from PENDING")),
            _ => {}
        }
        for f in &ignored {
            problems.push(format!("{name}.{f}: bound to `_` (accepted and ignored)"));
        }
        for (field, not_supported) in &s.fields {
            let status = if *not_supported {
                refused += 1;
                "not supported by sluice (refused at load)"
            } else if pending {
                pending_fields += 1;
                "PENDING (struct not destructured yet)"
            } else if exhaustive.is_empty() || ignored.contains(field) {
                "IGNORED"
            } else {
                implemented += 1;
                "implemented"
            };
            report.push_str(&format!("{name}.{field}: {status}\n"));
        }
    }
    for d in &discarded {
        problems.push(format!("{d} discards a binding (use it, or `without_effect` with the reason)"));
    }
    report.push_str("\nimplemented fields whose value changes nothing in sluice (as in Envoy), with the reason:\n");
    for (field, why) in &no_effect {
        if why.is_empty() {
            problems.push(format!("{field}: without_effect needs a literal reason"));
        }
        report.push_str(&format!("  {field}: {why}\n"));
    }
    for p in PENDING {
        if !config.contains_key(*p) {
            problems.push(format!("PENDING names {p}, which is not a config struct"));
        }
    }
    println!("{report}");
    println!(
        "config audit: {} structs ({} pending), {} fields: {implemented} implemented, {refused} not supported by sluice, \
         {pending_fields} pending; {} uses of without_effect; {} problems",
        config.len(),
        PENDING.len(),
        config.values().map(|s| s.fields.len()).sum::<usize>(),
        no_effect.len(),
        problems.len()
    );
    assert!(problems.is_empty(), "{} config audit problems:\n{}", problems.len(), problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Fields the audit found read by nothing and that are implemented now: each test shows the
// behaviour changes with the field.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use sluice_testkit::certs::Pki;
use sluice_testkit::client::{self, Conn, Response};
use sluice_testkit::EchoUpstream;

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// An HCM filter with `extra` fields, routing everything with `action` (a route's action part).
fn hcm(extra: Value, action: Value) -> Value {
    let mut route = json!({"match": {"prefix": "/"}});
    for (k, v) in action.as_object().unwrap() {
        route[k] = v.clone();
    }
    let mut cfg = json!({
        "@type": HCM,
        "stat_prefix": "audit",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": cfg})
}

fn direct(body: &str) -> Value {
    json!({"direct_response": {"status": 200, "body": {"inline_string": body}}})
}

fn cluster(name: &str, addr: SocketAddr, extra: Value) -> Value {
    let mut c = json!({"name": name, "connect_timeout": "1s", "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}]}]}});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// One listener on 127.0.0.1:0 with `listener` fields (`filter_chains` …) and `clusters`.
fn bootstrap(listener: Value, clusters: Vec<Value>) -> Value {
    let mut l = json!({"name": "audit", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}});
    for (k, v) in listener.as_object().unwrap() {
        l[k] = v.clone();
    }
    json!({"static_resources": {"listeners": [l], "clusters": clusters}})
}

fn tls_socket(pki: &Pki, extra: Value) -> Value {
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"inline_string": pki.server_cert},
            "private_key": {"inline_string": pki.server_key}}]}
    });
    for (k, v) in extra.as_object().unwrap() {
        ctx[k] = v.clone();
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx})
}

async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> Response {
    let mut h = vec![("host", "audit.test")];
    h.extend_from_slice(headers);
    tokio::time::timeout(Duration::from_secs(10), client::request("GET", &format!("http://{addr}/"), &h, ""))
        .await
        .expect("request timed out")
        .expect("request failed")
}

fn upstream_header(r: &Response, name: &str) -> Option<String> {
    r.json()["headers"].as_array()?.iter().find(|h| h[0] == name).map(|h| h[1].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_xff_append_leaves_x_forwarded_for_as_it_came() {
    let up = EchoUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    for skip in [false, true] {
        let cfg = bootstrap(
            json!({"filter_chains": [{"filters": [hcm(json!({"use_remote_address": true, "skip_xff_append": skip}), json!({"route": {"cluster": "up"}}))]}]}),
            vec![cluster("up", up.addr(), json!({}))],
        );
        let server = common::start_proxy(&cfg, "audit.json").await;
        let addr = server.listeners[0].address;
        let r = get(addr, &[("x-forwarded-for", "198.51.100.7")]).await;
        assert_eq!(r.status, 200);
        let xff = upstream_header(&r, "x-forwarded-for").unwrap_or_default();
        if skip {
            assert_eq!(xff, "198.51.100.7", "skip_xff_append: the header is forwarded unchanged");
        } else {
            assert!(xff.starts_with("198.51.100.7,") && xff.len() > "198.51.100.7,".len(), "the peer is appended: {xff}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_stat_prefix_names_the_listener_stats() {
    let cfg = bootstrap(json!({"stat_prefix": "audit_listener", "filter_chains": [{"filters": [hcm(json!({}), direct("ok"))]}]}), vec![]);
    let server = common::start_proxy(&cfg, "audit.json").await;
    let addr = server.listeners[0].address;
    assert_eq!(get(addr, &[]).await.text(), "ok");
    assert!(server.stats.counter("listener.audit_listener.downstream_cx_total").value() >= 1);
    assert_eq!(server.stats.counter(format!("listener.127.0.0.1_{}.downstream_cx_total", addr.port())).value(), 0);
    assert!(server.stats.counter("listener.audit_listener.http.audit.downstream_rq_2xx").value() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_port_selects_filter_chains() {
    // A chain for another destination port never matches; the chain without one does.
    let cfg = bootstrap(
        json!({"filter_chains": [
            {"filter_chain_match": {"destination_port": 1}, "filters": [hcm(json!({}), direct("port one"))]},
            {"filters": [hcm(json!({}), direct("any port"))]}
        ]}),
        vec![],
    );
    let server = common::start_proxy(&cfg, "audit.json").await;
    assert_eq!(get(server.listeners[0].address, &[]).await.text(), "any port");
    // Only a chain for another port: the default filter chain answers.
    let cfg = bootstrap(
        json!({
            "filter_chains": [{"filter_chain_match": {"destination_port": 1}, "filters": [hcm(json!({}), direct("port one"))]}],
            "default_filter_chain": {"filters": [hcm(json!({}), direct("default"))]}
        }),
        vec![],
    );
    let server = common::start_proxy(&cfg, "audit.json").await;
    assert_eq!(get(server.listeners[0].address, &[]).await.text(), "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_filters_timeout_closes_silent_connections() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new();
    let cfg = bootstrap(
        json!({
            "listener_filters_timeout": "0.2s",
            "filter_chains": [{"filters": [hcm(json!({}), direct("tls"))], "transport_socket": tls_socket(&pki, json!({}))}]
        }),
        vec![],
    );
    let server = common::start_proxy(&cfg, "audit.json").await;
    let mut tcp = tokio::net::TcpStream::connect(server.listeners[0].address).await.unwrap();
    // Nothing is sent: the ClientHello wait ends after 0.2 s (Envoy's default is 15 s).
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.expect("the silent connection stayed open");
    assert!(matches!(n, Ok(0) | Err(_)), "closed without data: {n:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_sni_refuses_handshakes_without_a_server_name() {
    let pki = Pki::new();
    let cfg = bootstrap(
        json!({"filter_chains": [{"filters": [hcm(json!({}), direct("tls"))], "transport_socket": tls_socket(&pki, json!({"require_sni": true}))}]}),
        vec![],
    );
    let server = common::start_proxy(&cfg, "audit.json").await;
    let addr = server.listeners[0].address;
    // An IP address as the server name: rustls sends no SNI.
    assert!(Conn::connect_tls(addr, pki.client_config(&[], false), "127.0.0.1").await.is_err(), "no SNI must fail");
    let mut conn = Conn::connect_tls(addr, pki.client_config(&[], false), "localhost").await.expect("with SNI");
    assert_eq!(conn.get(&format!("https://localhost:{}/", addr.port())).await.unwrap().text(), "tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_bounds_a_silent_upstream_without_a_route_timeout() {
    // An upstream that accepts and never answers; the route timeout is disabled.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..16 {
            match silent.accept().await {
                Ok((s, _)) => held.push(s),
                Err(_) => break,
            }
        }
    });
    let cfg = bootstrap(
        json!({"filter_chains": [{"filters": [hcm(json!({"stream_idle_timeout": "0.3s"}), json!({"route": {"cluster": "silent", "timeout": "0s"}}))]}]}),
        vec![cluster("silent", silent_addr, json!({}))],
    );
    let server = common::start_proxy(&cfg, "audit.json").await;
    let started = std::time::Instant::now();
    let r = get(server.listeners[0].address, &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "stream timeout");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_authz_grpc_initial_metadata_is_sent_with_every_check() {
    let authz = EchoUpstream::start_h2("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let filter = json!({"name": "envoy.filters.http.ext_authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "2s",
                         "initial_metadata": [{"key": "x-audit-meta", "value": "m1"}]}}});
    let mut h = hcm(json!({}), direct("allowed"));
    h["typed_config"]["http_filters"] = json!([filter, {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]);
    let cfg = bootstrap(
        json!({"filter_chains": [{"filters": [h]}]}),
        vec![cluster("authz", authz.addr(), json!({"http2_protocol_options": {}}))],
    );
    let server = common::start_proxy(&cfg, "audit.json").await;
    // The echo server is no authorization service: the check fails (403), but it saw the call.
    let r = get(server.listeners[0].address, &[]).await;
    assert_eq!(r.status, 403);
    let checks = authz.recorded();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert!(checks[0].headers.iter().any(|(k, v)| k == "x-audit-meta" && v == "m1"), "{:?}", checks[0].headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_compat_lets_an_ipv6_listener_take_ipv4_connections() {
    // `::ffff:127.0.0.1` is an IPv4-mapped address: an IPv6-only socket (Envoy's default)
    // cannot bind it; with `ipv4_compat` it binds and serves 127.0.0.1.
    let listener = |compat: bool| {
        bootstrap(
            json!({
                "address": {"socket_address": {"address": "::ffff:127.0.0.1", "port_value": 0, "ipv4_compat": compat}},
                "filter_chains": [{"filters": [hcm(json!({}), direct("mapped"))]}]
            }),
            vec![],
        )
    };
    let snapshot = sluice_config::parse(&listener(false).to_string(), sluice_config::Format::Json).unwrap();
    let options = sluice_proxy::server::Options { config_path: "audit.json".into(), concurrency: 1, log_level: "warning".into() };
    let refused = tokio::time::timeout(Duration::from_secs(10), sluice_proxy::server::start(std::sync::Arc::new(snapshot), options))
        .await
        .expect("start timed out");
    assert!(refused.is_err(), "an IPv6-only socket cannot take an IPv4-mapped address");
    let server = common::start_proxy(&listener(true), "audit.json").await;
    let port = server.listeners[0].address.port();
    let r = get(SocketAddr::from(([127, 0, 0, 1], port)), &[]).await;
    assert_eq!(r.text(), "mapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameter_present_match_false_asks_for_absence() {
    // Envoy 1.40 (checked by hand): `present_match: false` matches only requests without the
    // parameter.
    let mut h = hcm(json!({}), direct("fallback"));
    h["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] = json!([
        {"match": {"prefix": "/q", "query_parameters": [{"name": "debug", "present_match": false}]},
         "direct_response": {"status": 200, "body": {"inline_string": "no debug"}}},
        {"match": {"prefix": "/q", "query_parameters": [{"name": "debug", "present_match": true}]},
         "direct_response": {"status": 200, "body": {"inline_string": "debug"}}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "fallback"}}}
    ]);
    let server = common::start_proxy(&bootstrap(json!({"filter_chains": [{"filters": [h]}]}), vec![]), "audit.json").await;
    let addr = server.listeners[0].address;
    let text = |path: &'static str| async move {
        tokio::time::timeout(Duration::from_secs(10), client::request("GET", &format!("http://{addr}{path}"), &[("host", "a.test")], ""))
            .await
            .unwrap()
            .unwrap()
            .text()
    };
    assert_eq!(text("/q").await, "no debug");
    assert_eq!(text("/q?debug=1").await, "debug");
    assert_eq!(text("/q?other=1").await, "no debug");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cipher_suites_restrict_tls12() {
    let pki = Pki::new(); // ECDSA server key
    for (suite, want) in [
        ("ECDHE-ECDSA-AES256-GCM-SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
        ("ECDHE-ECDSA-CHACHA20-POLY1305", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
    ] {
        let socket = tls_socket(&pki, json!({}));
        let mut socket = socket;
        socket["typed_config"]["common_tls_context"]["tls_params"] =
            json!({"tls_maximum_protocol_version": "TLSv1_2", "cipher_suites": [suite], "ecdh_curves": ["P-256"]});
        let cfg = bootstrap(json!({"filter_chains": [{"filters": [hcm(json!({}), direct("tls"))], "transport_socket": socket}]}), vec![]);
        let server = common::start_proxy(&cfg, "audit.json").await;
        let tcp = tokio::net::TcpStream::connect(server.listeners[0].address).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(pki.client_config(&[], false));
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp)).await.unwrap().unwrap();
        let session = tls.get_ref().1;
        assert_eq!(session.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(format!("{:?}", session.negotiated_cipher_suite().unwrap().suite()), want);
        assert_eq!(format!("{:?}", session.negotiated_key_exchange_group().unwrap().name()), "secp256r1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_socket_connect_timeout_bounds_the_tls_handshake() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let cfg = bootstrap(
        json!({"filter_chains": [{
            "filters": [hcm(json!({}), direct("tls"))],
            "transport_socket": tls_socket(&pki, json!({})),
            "transport_socket_connect_timeout": "0.3s"}]}),
        vec![],
    );
    let server = common::start_proxy(&cfg, "audit.json").await;
    // A client that sends its ClientHello and then never finishes the handshake.
    let mut client = rustls::ClientConnection::new(pki.client_config(&[], false), "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(server.listeners[0].address).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    // The server's flight arrives, then the connection is closed at the timeout.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        for _ in 0..1000 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled handshake was not cut off");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "{took:?}");
}
