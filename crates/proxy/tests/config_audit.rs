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
