//! The admin endpoints' query handling under arbitrary input, for the cargo-fuzz target
//! `admin_query` (crates/proxy/fuzz) and a bounded sweep in the unit tests: any bytes as the
//! query string of every read-only endpoint get an answer (200, 400, 404 or 503), never a panic.

use std::sync::{Arc, OnceLock};

use http::Method;

use super::{handle, register_server_stats, AdminContext, CommandLineOptions, ServerState, StaticClusters};
use crate::stats::Store;

/// The endpoints that only read (their queries select, filter and format).
pub const READ_ONLY: &[&str] = &[
    "/stats",
    "/stats/prometheus",
    "/clusters",
    "/config_dump",
    "/listeners",
    "/server_info",
    "/ready",
    "/certs",
    "/runtime",
    "/memory",
    "/help",
];

/// A config with something in each part the endpoints show.
const CONFIG: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          route_config:
            virtual_hosts:
            - {name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: backend}}]}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]
"#;

/// An admin context for `yaml` (no listeners bound).
pub(crate) fn context(yaml: &str) -> AdminContext {
    let snapshot = sluice_config::parse(yaml, sluice_config::Format::Yaml).expect("config");
    let stats = Store::new();
    register_server_stats(&stats, 2);
    AdminContext {
        stats,
        clusters: Arc::new(StaticClusters::from_bootstrap(&snapshot.bootstrap)),
        snapshot: Arc::new(snapshot),
        server: ServerState::new(),
        listeners: vec![],
        options: CommandLineOptions::default(),
    }
}

/// `data` as the query of every read-only endpoint; panics only if an answer is not one Envoy
/// gives (the fuzzer reports a panic either way).
pub fn check(data: &[u8]) {
    static CTX: OnceLock<AdminContext> = OnceLock::new();
    let ctx = CTX.get_or_init(|| context(CONFIG));
    let query = String::from_utf8_lossy(data);
    for path in READ_ONLY {
        let status = handle(ctx, &Method::GET, path, Some(&query)).status().as_u16();
        assert!(matches!(status, 200 | 400 | 404 | 503), "GET {path}?{query} answered {status}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_query_sweep_over_every_read_only_endpoint() {
        // Escapes, separators, parameter names the endpoints read, regex syntax and multi-byte
        // text, combined by a fixed generator (bounded: 3,000 queries).
        let pieces = [
            "%", "%a", "%zz", "%41", "%e9", "é", "字", "=", "&", "filter=", "type=", "usedonly", "format=json",
            "resource=", "mask=", "name_regex=", "include_eds", "dynamic_listeners", "(", "[", "*", "\\", "+",
            "%%", "%f0%9f", "Gauges", "Counters", "prometheus", "text_readouts", "histogram_buckets=",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..3_000 {
            let mut q = String::new();
            for _ in 0..(seed % 7) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                q.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            seed = seed.wrapping_add(0x9e37_79b9);
            super::check(q.as_bytes());
        }
        super::check(&[0xff, 0xfe, b'=', 0x80]);
    }
}
