//! `/server_info`, `/config_dump`, `/certs`, `/runtime`, `/listeners`, `/memory`: pure functions
//! of the configuration and process state.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use sluice_config::listener::{TransportSocket, TransportSocketConfig};
use sluice_config::tls::CommonTlsContext;
use sluice_config::{Bootstrap, DataSource};

use super::{CommandLineOptions, ListenerInfo, State};

/// What `/hot_restart_version` answers: sluice has no hot restart (Envoy prints the same word
/// when started with `--disable-hot-restart`).
pub const HOT_RESTART_VERSION: &str = "disabled";

/// `sluice/<version>/Clean/<RELEASE|DEBUG>/rustls`, shaped like Envoy's
/// `<sha>/<version>/<status>/<build type>/<ssl library>`.
pub fn version_string() -> String {
    format!("sluice/{}/Clean/{}/rustls", env!("CARGO_PKG_VERSION"), build_type())
}

fn build_type() -> &'static str {
    if cfg!(debug_assertions) {
        "DEBUG"
    } else {
        "RELEASE"
    }
}

/// `2026-11-24T22:15:55Z`; with `millis`, `2026-11-24T22:20:10.777Z`.
pub fn rfc3339(t: SystemTime, millis: bool) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = crate::formatter::time::civil_from_days(days);
    let base = format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60);
    if millis {
        format!("{base}.{:03}Z", d.subsec_millis())
    } else {
        format!("{base}Z")
    }
}

fn node_json(b: &Bootstrap, source_node: Option<&Value>) -> Value {
    let mut node = Map::new();
    match source_node.and_then(Value::as_object) {
        Some(n) => node.extend(n.clone()),
        None => {
            let settings = crate::bootstrap::settings(b);
            node.insert("id".into(), json!(settings.node_id));
            node.insert("cluster".into(), json!(settings.local_cluster));
        }
    }
    let mut parts = env!("CARGO_PKG_VERSION").split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor, patch) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    node.insert("user_agent_name".into(), json!("sluice"));
    node.insert(
        "user_agent_build_version".into(),
        json!({
            "version": {"major_number": major, "minor_number": minor, "patch": patch},
            "metadata": {"ssl.version": "rustls", "build.type": build_type(), "revision.status": "Clean"}
        }),
    );
    node
        .entry("extensions")
        .or_insert_with(|| Value::Array(EXTENSIONS.iter().map(|(n, c, t)| extension(n, c, t)).collect()));
    Value::Object(node)
}

/// The extensions sluice implements, as `node.extensions` lists them.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("envoy.filters.network.http_connection_manager", "envoy.filters.network", "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
    ("envoy.filters.http.router", "envoy.filters.http", "envoy.extensions.filters.http.router.v3.Router"),
    ("envoy.filters.http.ext_authz", "envoy.filters.http", "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"),
    ("envoy.filters.listener.tls_inspector", "envoy.filters.listener", "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"),
    ("envoy.transport_sockets.tls", "envoy.transport_sockets.downstream", "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"),
    ("envoy.transport_sockets.tls", "envoy.transport_sockets.upstream", "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
    ("envoy.transport_sockets.raw_buffer", "envoy.transport_sockets.downstream", "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"),
    ("envoy.network.dns_resolver.cares", "envoy.network.dns_resolver", "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"),
    ("envoy.upstreams.http.http_protocol_options", "envoy.upstream_options", "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
];

fn extension(name: &str, category: &str, type_url: &str) -> Value {
    json!({"name": name, "category": category, "type_descriptor": "", "disabled": false, "type_urls": [type_url]})
}

/// `command_line_options` of `/server_info`, in Envoy's order.
fn command_line_options(o: &CommandLineOptions) -> Value {
    let pairs: Vec<(&str, Value)> = vec![
        ("base_id", json!(o.base_id.to_string())),
        ("concurrency", json!(o.concurrency)),
        ("config_path", json!(o.config_path)),
        ("config_yaml", json!("")),
        ("allow_unknown_static_fields", json!(false)),
        ("admin_address_path", json!("")),
        ("local_address_ip_version", json!("v4")),
        ("log_level", json!(o.log_level)),
        ("component_log_level", json!("")),
        ("log_format", json!("[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v")),
        ("log_path", json!("")),
        ("service_cluster", json!("")),
        ("service_node", json!("")),
        ("service_zone", json!("")),
        ("file_flush_interval", json!("10s")),
        ("drain_time", json!(format!("{}s", o.drain_time_s))),
        ("parent_shutdown_time", json!(format!("{}s", o.parent_shutdown_time_s))),
        ("mode", json!(o.mode)),
        ("disable_hot_restart", json!(true)),
        ("enable_mutex_tracing", json!(false)),
        ("restart_epoch", json!(0)),
        ("cpuset_threads", json!(false)),
        ("reject_unknown_dynamic_fields", json!(false)),
        ("log_format_escaped", json!(false)),
        ("disabled_extensions", json!([])),
        ("ignore_unknown_dynamic_fields", json!(false)),
        ("use_dynamic_base_id", json!(false)),
        ("base_id_path", json!("")),
        ("drain_strategy", json!("Gradual")),
        ("enable_fine_grain_logging", json!(false)),
        ("socket_path", json!("@envoy_domain_socket")),
        ("socket_mode", json!(0)),
        ("enable_core_dump", json!(false)),
        ("stats_tag", json!([])),
        ("skip_hot_restart_on_no_parent", json!(false)),
        ("skip_hot_restart_parent_stats", json!(false)),
        ("skip_deprecated_logs", json!(false)),
        ("file_flush_min_size", json!(0)),
        ("log_stacktrace_single_entry", json!(false)),
    ];
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// `/server_info`.
pub fn server_info(
    b: &Bootstrap,
    source: &Value,
    state: State,
    uptime_secs: u64,
    o: &CommandLineOptions,
) -> Value {
    let mut node = node_json(b, source.get("node")).as_object().cloned().unwrap_or_default();
    node.entry("client_features").or_insert(json!([]));
    node.entry("listening_addresses").or_insert(json!([]));
    node.entry("dynamic_parameters").or_insert(json!({}));
    json!({
        "version": version_string(),
        "state": state.name(),
        "uptime_current_epoch": format!("{uptime_secs}s"),
        "uptime_all_epochs": format!("{uptime_secs}s"),
        "hot_restart_version": HOT_RESTART_VERSION,
        "command_line_options": command_line_options(o),
        "node": Value::Object(node),
        "hot_restart_initializing": false
    })
}

const T_BOOTSTRAP_DUMP: &str = "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump";
const T_CLUSTERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ClustersConfigDump";
const T_LISTENERS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ListenersConfigDump";
const T_SCOPED_DUMP: &str = "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump";
const T_ROUTES_DUMP: &str = "type.googleapis.com/envoy.admin.v3.RoutesConfigDump";
const T_SECRETS_DUMP: &str = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump";
const T_CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const T_LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const T_ROUTE_CONFIG: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

fn with_type(type_url: &str, v: &Value) -> Value {
    let mut m = Map::new();
    m.insert("@type".into(), json!(type_url));
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            if k != "@type" {
                m.insert(k.clone(), x.clone());
            }
        }
    }
    Value::Object(m)
}

/// `/config_dump` from the (already redacted) source tree: Bootstrap, Clusters, Listeners,
/// ScopedRoutes, Routes and Secrets dumps, in Envoy's order.
pub fn config_dump(b: &Bootstrap, redacted: &Value, loaded_at: SystemTime) -> Value {
    let ts = rfc3339(loaded_at, true);
    let mut bootstrap = Map::new();
    bootstrap.insert("node".into(), node_json(b, redacted.get("node")));
    if let Some(o) = redacted.as_object() {
        for (k, v) in o {
            if k != "node" {
                bootstrap.insert(k.clone(), v.clone());
            }
        }
    }
    let statics = redacted.get("static_resources");
    let list = |key: &str| -> Vec<Value> {
        statics.and_then(|s| s.get(key)).and_then(Value::as_array).cloned().unwrap_or_default()
    };
    let clusters: Vec<Value> =
        list("clusters").iter().map(|c| json!({"cluster": with_type(T_CLUSTER, c), "last_updated": ts})).collect();
    let listeners_src = list("listeners");
    let listeners: Vec<Value> = listeners_src
        .iter()
        .map(|l| json!({"listener": with_type(T_LISTENER, l), "last_updated": ts}))
        .collect();
    let mut routes = Vec::new();
    for l in &listeners_src {
        let chains = l
            .get("filter_chains")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(l.get("default_filter_chain"));
        for chain in chains {
            for f in chain.get("filters").and_then(Value::as_array).into_iter().flatten() {
                if let Some(rc) = f.get("typed_config").and_then(|t| t.get("route_config")) {
                    routes.push(json!({"route_config": with_type(T_ROUTE_CONFIG, rc), "last_updated": ts}));
                }
            }
        }
    }
    let mut configs = vec![json!({"@type": T_BOOTSTRAP_DUMP, "bootstrap": Value::Object(bootstrap), "last_updated": ts})];
    let mut c = Map::new();
    c.insert("@type".into(), json!(T_CLUSTERS_DUMP));
    if !clusters.is_empty() {
        c.insert("static_clusters".into(), Value::Array(clusters));
    }
    configs.push(Value::Object(c));
    let mut l = Map::new();
    l.insert("@type".into(), json!(T_LISTENERS_DUMP));
    if !listeners.is_empty() {
        l.insert("static_listeners".into(), Value::Array(listeners));
    }
    configs.push(Value::Object(l));
    configs.push(json!({"@type": T_SCOPED_DUMP}));
    let mut r = Map::new();
    r.insert("@type".into(), json!(T_ROUTES_DUMP));
    if !routes.is_empty() {
        r.insert("static_route_configs".into(), Value::Array(routes));
    }
    configs.push(Value::Object(r));
    configs.push(json!({"@type": T_SECRETS_DUMP}));
    json!({ "configs": configs })
}

/// The message type of each repeated field of the config dumps (`?resource=`).
const RESOURCE_TYPES: &[(&str, &str)] = &[
    ("static_clusters", "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.StaticCluster"),
    ("dynamic_active_clusters", "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster"),
    ("dynamic_warming_clusters", "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster"),
    ("static_listeners", "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.StaticListener"),
    ("dynamic_listeners", "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener"),
    ("static_route_configs", "type.googleapis.com/envoy.admin.v3.RoutesConfigDump.StaticRouteConfig"),
    ("dynamic_route_configs", "type.googleapis.com/envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig"),
    ("static_secrets", "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.StaticSecret"),
    ("dynamic_active_secrets", "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret"),
    ("dynamic_warming_secrets", "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret"),
];

/// The name a `?name_regex=` filter looks at in one resource of a dump.
fn resource_name(resource: &Value) -> Option<&str> {
    for key in ["cluster", "listener", "active_state", "route_config", "secret"] {
        if let Some(inner) = resource.get(key) {
            let inner = inner.get("listener").unwrap_or(inner);
            return inner.get("name").and_then(Value::as_str);
        }
    }
    resource.get("name").and_then(Value::as_str)
}

/// Keep only the fields named by a protobuf `FieldMask` (`a.b,c`); `@type` always stays. As in
/// protobuf, a path cannot go through a repeated field: `None` when a path tries to.
fn apply_mask(value: &Value, paths: &[Vec<&str>]) -> Option<Value> {
    let Value::Object(map) = value else { return Some(value.clone()) };
    let mut out = Map::new();
    for (k, v) in map {
        if k == "@type" {
            out.insert(k.clone(), v.clone());
            continue;
        }
        let sub: Vec<Vec<&str>> =
            paths.iter().filter(|p| p.first() == Some(&k.as_str())).map(|p| p[1..].to_vec()).collect();
        if sub.is_empty() {
            continue;
        }
        if sub.iter().any(|p| p.is_empty()) {
            out.insert(k.clone(), v.clone());
        } else if v.is_array() {
            return None;
        } else {
            out.insert(k.clone(), apply_mask(v, &sub)?);
        }
    }
    Some(Value::Object(out))
}

/// `/config_dump` with Envoy's query parameters: `resource` (one repeated field of the dumps,
/// each entry typed), `mask` (a field mask applied to each dump, or to each resource), and
/// `name_regex` (resources whose name matches). `Err` is a 404/400 message.
pub fn config_dump_query(
    dump: Value,
    resource: Option<&str>,
    mask: Option<&str>,
    name_regex: Option<&regex::Regex>,
) -> Result<Value, (u16, String)> {
    let paths: Option<Vec<Vec<&str>>> =
        mask.filter(|m| !m.is_empty()).map(|m| m.split(',').map(|p| p.trim().split('.').collect()).collect());
    let configs = dump.get("configs").and_then(Value::as_array).cloned().unwrap_or_default();
    // Envoy prints a dump without entries as `{}`.
    let wrap = |configs: Vec<Value>| if configs.is_empty() { json!({}) } else { json!({ "configs": configs }) };
    let Some(resource) = resource.filter(|r| !r.is_empty()) else {
        let Some(paths) = paths else { return Ok(wrap(configs)) };
        // Each dump keeps what the mask names; a dump the mask does not apply to is left out.
        let masked: Vec<Value> = configs
            .iter()
            .filter_map(|c| apply_mask(c, &paths))
            .filter(|c| c.as_object().is_some_and(|o| o.keys().any(|k| k != "@type")))
            .collect();
        if masked.is_empty() {
            let mask = mask.unwrap_or_default();
            return Err((400, format!("FieldMask {mask} could not be successfully applied to any configs.")));
        }
        return Ok(wrap(masked));
    };
    let Some((_, type_url)) = RESOURCE_TYPES.iter().find(|(f, _)| *f == resource) else {
        return Err((404, format!("{resource} not found in config dump")));
    };
    let Some(items) = configs.iter().find_map(|c| c.get(resource)).and_then(Value::as_array) else {
        // The field exists in Envoy's dump messages but is empty here.
        return Ok(json!({}));
    };
    let mut out = Vec::new();
    for item in items {
        // RE2 full match, as Envoy applies `name_regex`.
        if let Some(re) = name_regex {
            if !resource_name(item).is_some_and(|n| re.find(n).is_some_and(|m| m.start() == 0 && m.end() == n.len())) {
                continue;
            }
        }
        let item = match &paths {
            Some(p) => match apply_mask(item, p) {
                Some(v) => v,
                None => continue,
            },
            None => item.clone(),
        };
        out.push(with_type(type_url, &item));
    }
    Ok(wrap(out))
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// Details of one certificate, as `/certs` prints them.
#[derive(Clone, Debug, PartialEq)]
pub struct CertDetails {
    pub path: String,
    pub serial_number: String,
    pub subject_alt_names: Vec<(&'static str, String)>,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertDetails {
    pub fn days_until_expiration(&self, now: SystemTime) -> u64 {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        ((self.not_after - now).max(0) / 86_400) as u64
    }

    fn to_json(&self, now: SystemTime) -> Value {
        let sans: Vec<Value> = self.subject_alt_names.iter().map(|(k, v)| json!({ *k: v })).collect();
        let t = |s: i64| rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(s.max(0) as u64), false);
        json!({
            "path": self.path,
            "serial_number": self.serial_number,
            "subject_alt_names": sans,
            "days_until_expiration": self.days_until_expiration(now).to_string(),
            "valid_from": t(self.not_before),
            "expiration_time": t(self.not_after),
        })
    }
}

/// The first certificate of a PEM data source.
pub fn cert_details(ds: &DataSource) -> Option<CertDetails> {
    let bytes = crate::data_source::load(ds).ok()?;
    let pem = x509_parser::pem::Pem::iter_from_buffer(&bytes).next()?.ok()?;
    let cert = pem.parse_x509().ok()?;
    let mut serial = cert.raw_serial();
    while serial.len() > 1 && serial[0] == 0 {
        serial = &serial[1..];
    }
    let serial_number = serial.iter().map(|b| format!("{b:02x}")).collect();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for gn in &ext.value.general_names {
            use x509_parser::extensions::GeneralName;
            match gn {
                GeneralName::DNSName(d) => sans.push(("dns", d.to_string())),
                GeneralName::URI(u) => sans.push(("uri", u.to_string())),
                GeneralName::IPAddress(ip) => {
                    let s = match ip.len() {
                        4 => std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
                        16 => {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(ip);
                            std::net::Ipv6Addr::from(a).to_string()
                        }
                        _ => continue,
                    };
                    sans.push(("ip_address", s));
                }
                _ => {}
            }
        }
    }
    Some(CertDetails {
        path: ds.display_path(),
        serial_number,
        subject_alt_names: sans,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Every TLS context of the config: upstream (clusters) first, then listeners, as Envoy
/// creates them.
fn tls_contexts(b: &Bootstrap) -> Vec<&CommonTlsContext> {
    let mut out = Vec::new();
    fn common(ts: &TransportSocket) -> Option<&CommonTlsContext> {
        match &ts.typed_config {
            TransportSocketConfig::DownstreamTls(d) => Some(&d.common_tls_context),
            TransportSocketConfig::UpstreamTls(u) => Some(&u.common_tls_context),
            _ => None,
        }
    }
    for c in &b.static_resources.clusters {
        if let Some(ctx) = c.transport_socket.as_ref().and_then(common) {
            out.push(ctx);
        }
    }
    for l in &b.static_resources.listeners {
        for chain in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
            if let Some(ctx) = chain.transport_socket.as_ref().and_then(common) {
                out.push(ctx);
            }
        }
    }
    out
}

/// (ca_cert, cert_chain) details of every TLS context.
pub fn certificates(b: &Bootstrap) -> Vec<(Vec<CertDetails>, Vec<CertDetails>)> {
    tls_contexts(b)
        .into_iter()
        .map(|ctx| {
            let ca = ctx
                .validation_context
                .as_ref()
                .and_then(|v| v.trusted_ca.as_ref())
                .and_then(cert_details)
                .into_iter()
                .collect();
            let chain = ctx
                .tls_certificates
                .iter()
                .filter_map(|c| c.certificate_chain.as_ref().and_then(cert_details))
                .collect();
            (ca, chain)
        })
        .collect()
}

/// `/certs`.
pub fn certs_json(b: &Bootstrap, now: SystemTime) -> Value {
    let certs: Vec<Value> = certificates(b)
        .iter()
        .map(|(ca, chain)| {
            json!({
                "ca_cert": ca.iter().map(|c| c.to_json(now)).collect::<Vec<_>>(),
                "cert_chain": chain.iter().map(|c| c.to_json(now)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "certificates": certs })
}

/// `server.days_until_first_cert_expiring`: the minimum over all certificates, `u32::MAX` when
/// there is none (as Envoy shows 4294967295).
pub fn days_until_first_cert_expiring(b: &Bootstrap, now: SystemTime) -> u64 {
    certificates(b)
        .iter()
        .flat_map(|(ca, chain)| ca.iter().chain(chain.iter()))
        .map(|c| c.days_until_expiration(now))
        .min()
        .unwrap_or(u64::from(u32::MAX))
}

// ---------------------------------------------------------------------------------------------
// Runtime, listeners, memory

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, x, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Bool(b) => out.push((prefix.to_string(), b.to_string())),
        Value::Number(n) => out.push((prefix.to_string(), n.to_string())),
        Value::Null | Value::Array(_) => {}
    }
}

/// `/runtime`: `{"entries": {key: {"final_value", "layer_values"}}, "layers": [names]}`.
pub fn runtime_json(b: &Bootstrap) -> Value {
    use std::collections::BTreeMap;
    let layers = crate::bootstrap::settings(b).runtime_layers;
    let mut per_layer: Vec<BTreeMap<String, String>> = Vec::new();
    for (_, layer) in &layers {
        let mut kv = Vec::new();
        if let Some(s) = layer {
            flatten("", s, &mut kv);
        }
        per_layer.push(kv.into_iter().collect());
    }
    let mut keys: Vec<&String> = per_layer.iter().flat_map(|m| m.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut entries = Map::new();
    for k in keys {
        let values: Vec<String> = per_layer.iter().map(|m| m.get(k).cloned().unwrap_or_default()).collect();
        let final_value = values.iter().rev().find(|v| !v.is_empty()).cloned().unwrap_or_default();
        entries.insert(k.clone(), json!({"final_value": final_value, "layer_values": values}));
    }
    json!({
        "entries": Value::Object(entries),
        "layers": layers.iter().map(|(name, _)| name.to_string()).collect::<Vec<_>>(),
    })
}

/// `runtime.num_keys` / `runtime.num_layers`.
pub fn runtime_counts(b: &Bootstrap) -> (usize, usize) {
    let v = runtime_json(b);
    (
        v["entries"].as_object().map_or(0, Map::len),
        v["layers"].as_array().map_or(0, Vec::len),
    )
}

/// `/listeners`: `name::ip:port` lines.
pub fn listeners_text(ls: &[ListenerInfo]) -> String {
    ls.iter().map(|l| format!("{}::{}\n", l.name, l.address)).collect()
}

/// `/listeners?format=json`.
pub fn listeners_json(ls: &[ListenerInfo]) -> Value {
    let statuses: Vec<Value> = ls
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "local_address": {"socket_address": {"address": l.address.ip().to_string(), "port_value": l.address.port()}}
            })
        })
        .collect();
    json!({ "listener_statuses": statuses })
}

/// Process memory from `/proc/self/statm` (bytes): (resident, shared, data segment).
pub fn process_memory() -> Option<(u64, u64, u64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let f: Vec<u64> = statm.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // Linux pages are 4 KiB on the platforms sluice targets.
    let page = 4096;
    Some((f.get(1)? * page, f.get(2)? * page, f.get(5)? * page))
}

/// `/memory`, with Envoy's keys (it reports tcmalloc's figures; sluice has no tcmalloc):
/// `allocated` = resident anonymous memory (RSS − shared), `heap_size` = data segment size,
/// `total_physical_bytes` = RSS; the page-heap and thread-cache figures are 0.
pub fn memory_json() -> Value {
    let (rss, shared, data) = process_memory().unwrap_or((0, 0, 0));
    json!({
        "allocated": rss.saturating_sub(shared).to_string(),
        "heap_size": data.to_string(),
        "pageheap_unmapped": "0",
        "pageheap_free": "0",
        "total_thread_cache": "0",
        "total_physical_bytes": rss.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(2_110_918_555_000);
        assert_eq!(rfc3339(t, false), "2036-11-21T22:15:55Z");
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_795_558_810_777);
        assert_eq!(rfc3339(t, true), "2026-11-24T22:20:10.777Z");
        assert_eq!(rfc3339(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn runtime_flattens_layers() {
        let b: Bootstrap = serde_json::from_value(json!({
            "layered_runtime": {"layers": [
                {"name": "static_layer_0", "static_layer": {"envoy": {"resource_limits": {"listener": {"x": {"connection_limit": 10000}}}}}},
                {"name": "static_layer_1", "static_layer": {"a": {"b": 1, "c": "x", "d": true}, "re.loadbalancing": 0.5}},
                {"name": "empty"}
            ]}
        }))
        .unwrap();
        let v = runtime_json(&b);
        assert_eq!(v["layers"], json!(["static_layer_0", "static_layer_1", "empty"]));
        assert_eq!(
            v["entries"]["envoy.resource_limits.listener.x.connection_limit"],
            json!({"final_value": "10000", "layer_values": ["10000", "", ""]})
        );
        assert_eq!(v["entries"]["a.d"], json!({"final_value": "true", "layer_values": ["", "true", ""]}));
        assert_eq!(v["entries"]["re.loadbalancing"]["final_value"], json!("0.5"));
        assert_eq!(runtime_counts(&b), (5, 3));
        assert_eq!(
            super::super::json::pretty(&runtime_json(&Bootstrap::default())),
            "{\n \"entries\": {},\n \"layers\": []\n}\n"
        );
    }

    #[test]
    fn listeners_formats() {
        let ls = vec![ListenerInfo { name: "diff_listener".into(), address: "127.0.0.1:19900".parse().unwrap() }];
        assert_eq!(listeners_text(&ls), "diff_listener::127.0.0.1:19900\n");
        assert_eq!(
            super::super::json::pretty(&listeners_json(&ls)),
            "{\n \"listener_statuses\": [\n  {\n   \"name\": \"diff_listener\",\n   \"local_address\": {\n    \"socket_address\": {\n     \"address\": \"127.0.0.1\",\n     \"port_value\": 19900\n    }\n   }\n  }\n ]\n}\n"
        );
    }
}
