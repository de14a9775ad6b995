//! Envoy v3 static bootstrap, as sluice understands it.
//!
//! The YAML or JSON text is parsed into a generic tree, then deserialized into the typed structs of
//! this crate with every field checked: unknown fields, unknown enum values and features sluice
//! recognises but does not support are errors that name the full path of the offending field
//! (`static_resources.clusters[2].lb_policy: unknown value "ROUNDROBIN"`). `typed_config` blocks are
//! resolved by their `@type` URL. [`validate`] then applies Envoy's semantic rules (duplicate
//! domains, routes to unknown clusters, …). The result is an immutable [`Snapshot`]; nothing here
//! needs an async runtime.
//!
//! Struct and field names follow Envoy's protos (snake_case), so the Envoy docs describe them.
//! Proto `oneof`s are sibling `Option` fields, as in the YAML; accessors return them as enums.
//!
//! # What is supported
//!
//! A static bootstrap (`static_resources`, no xDS): `node`, `admin` (IP address),
//! `layered_runtime` static layers, `stats_flush_interval`, `typed_dns_resolver_config` (c-ares
//! resolvers / getaddrinfo).
//!
//! * **Listeners** on IP:port (TCP), filter chains selected by `filter_chain_match` (server names,
//!   transport protocol, ALPN, destination port) plus `default_filter_chain`, the TLS inspector
//!   listener filter, and TLS termination (`DownstreamTlsContext`: certificates and trusted CA from
//!   files, inline strings/bytes or environment variables; ALPN; protocol versions; client
//!   certificates).
//! * **One network filter**: the HTTP connection manager (codec AUTO/HTTP1/HTTP2), with an inline
//!   `route_config`, and the HTTP filters `envoy.filters.http.ext_authz` (gRPC via `envoy_grpc` or
//!   raw HTTP) and `envoy.filters.http.router` (last).
//! * **Routes**: virtual hosts by domain (exact, `*.suffix`, `prefix.*`, `*`), matches by prefix,
//!   path, `path_separated_prefix`, safe regex, headers and query parameters; forwarding to a
//!   cluster, a cluster named by a header or weighted clusters, with prefix/regex rewrites, host
//!   rewrites, timeouts and hash policies; redirects; direct responses; header mutations at every
//!   level; per-route `ExtAuthzPerRoute`.
//! * **Clusters**: STATIC, STRICT_DNS, LOGICAL_DNS; ROUND_ROBIN, LEAST_REQUEST, RANDOM,
//!   RING_HASH, MAGLEV; circuit breakers; upstream HTTP/1.1 or HTTP/2 (`HttpProtocolOptions` or
//!   the deprecated fields); upstream TLS; endpoints at priority 0.
//!
//! Anything else Envoy knows is either an unknown-field error or, for fields sluice recognises but
//! does not implement (RDS, EDS, tracing, retries, …), the error
//! `recognised but not supported by sluice` at the field's path. See [`validate`] for the
//! semantic rules.

pub mod access_log;
pub mod bootstrap;
pub mod cluster;
pub mod core;
mod de;
pub mod error;
pub mod ext_authz;
pub mod format;
pub mod hcm;
pub mod listener;
pub mod route;
pub mod tls;
pub mod validate;

use std::path::Path;

pub use bootstrap::Bootstrap;
pub use core::{DataSource, Duration};
pub use error::{ConfigError, PathError};

/// A validated configuration: the typed bootstrap, plus the parsed source tree (for
/// `/config_dump`, with secrets redacted by the consumer).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub bootstrap: Bootstrap,
    pub source: serde_json::Value,
}

/// What `/config_dump` shows instead of a secret.
pub const REDACTED: &str = "[redacted]";

impl Snapshot {
    /// The source tree with secrets hidden, as Envoy's `/config_dump` shows them: in every
    /// `tls_certificates` entry, each string of the `private_key` (and `password`) data source
    /// becomes `"[redacted]"`, e.g. `{"inline_string": "[redacted]"}` or
    /// `{"filename": "[redacted]"}`. Everything else is unchanged.
    pub fn redacted_source(&self) -> serde_json::Value {
        let mut tree = self.source.clone();
        redact(&mut tree);
        tree
    }
}

fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "tls_certificates" {
                    for cert in v.as_array_mut().into_iter().flatten() {
                        for secret in ["private_key", "password"] {
                            if let Some(serde_json::Value::Object(ds)) = cert.get_mut(secret) {
                                for s in ds.values_mut() {
                                    *s = serde_json::Value::String(REDACTED.to_string());
                                }
                            }
                        }
                    }
                } else {
                    redact(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Source text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// Envoy decides by extension: `.json` is JSON, anything else YAML (YAML is a superset anyway).
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// Read, parse and validate a bootstrap file.
pub fn load_file(path: impl AsRef<Path>) -> Result<Snapshot, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single("", format!("cannot read {}: {e}", path.display())))?;
    parse(&text, Format::from_path(path))
}

/// Parse and validate bootstrap text.
pub fn parse(text: &str, format: Format) -> Result<Snapshot, ConfigError> {
    from_tree(parse_tree(text, format)?)
}

/// Type and validate an already parsed tree.
pub fn from_tree(source: serde_json::Value) -> Result<Snapshot, ConfigError> {
    let bootstrap = de::from_value::<Bootstrap>(source.clone())?;
    validate::validate(&bootstrap)?;
    Ok(Snapshot { bootstrap, source })
}

/// Merge `overlay` into `base` as protobuf's `MergeFrom` does for Envoy's `--config-yaml`:
/// objects merge field by field, lists are appended, other values are replaced.
pub fn merge_tree(base: &mut serde_json::Value, overlay: serde_json::Value) {
    use serde_json::Value;
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_tree(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

/// Parse text into a generic tree without typing it.
pub fn parse_tree(text: &str, format: Format) -> Result<serde_json::Value, ConfigError> {
    let value: serde_json::Value = match format {
        Format::Json => serde_json::from_str(text)
            .map_err(|e| ConfigError::single("", format!("invalid JSON: {e}")))?,
        Format::Yaml => serde_yaml_ng::from_str(text)
            .map_err(|e| ConfigError::single("", format!("invalid YAML: {e}")))?,
    };
    if value.is_null() {
        // An empty file is an empty bootstrap, as for Envoy.
        return Ok(serde_json::Value::Object(Default::default()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_tree_follows_protobuf_merge() {
        let mut base: serde_json::Value = serde_json::json!({"a": {"x": 1, "l": [1]}, "s": "old"});
        merge_tree(&mut base, serde_json::json!({"a": {"y": 2, "l": [2]}, "s": "new"}));
        assert_eq!(base, serde_json::json!({"a": {"x": 1, "y": 2, "l": [1, 2]}, "s": "new"}));
    }

    #[test]
    fn redacted_source_hides_private_keys_only() {
        let text = r#"
static_resources:
  listeners:
  - address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - transport_socket:
        name: tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {inline_string: "CERT"}
              private_key: {inline_string: "SECRET-KEY"}
      filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config: {virtual_hosts: [{name: a, domains: ["*"], routes: [{match: {prefix: /}, direct_response: {status: 200}}]}]}
          http_filters: [{name: envoy.filters.http.router}]
layered_runtime:
  layers: [{name: l, static_layer: {private_key: not-a-secret}}]
"#;
        let snapshot = parse(text, Format::Yaml).unwrap();
        let redacted = snapshot.redacted_source();
        let cert = &redacted["static_resources"]["listeners"][0]["filter_chains"][0]
            ["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0];
        assert_eq!(
            cert["private_key"],
            serde_json::json!({"inline_string": "[redacted]"})
        );
        assert_eq!(
            cert["certificate_chain"],
            serde_json::json!({"inline_string": "CERT"})
        );
        assert!(!redacted.to_string().contains("SECRET-KEY"));
        // Only data sources of TLS certificates are secrets; the runtime is left alone.
        assert_eq!(
            redacted["layered_runtime"]["layers"][0]["static_layer"]["private_key"],
            "not-a-secret"
        );
        // The snapshot itself still has the key (the proxy needs it).
        assert!(snapshot.source.to_string().contains("SECRET-KEY"));
    }

    #[test]
    fn redaction_covers_file_based_keys() {
        let mut tree = serde_json::json!({"a": [{"tls_certificates": [
            {"certificate_chain": {"filename": "c.pem"}, "private_key": {"filename": "k.pem"}}
        ]}]});
        redact(&mut tree);
        assert_eq!(
            tree["a"][0]["tls_certificates"][0]["private_key"],
            serde_json::json!({"filename": "[redacted]"})
        );
        assert_eq!(
            tree["a"][0]["tls_certificates"][0]["certificate_chain"]["filename"],
            "c.pem"
        );
    }
}
