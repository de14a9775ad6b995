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
//! # Loading as Envoy loads
//!
//! Envoy's loader is protobuf's JSON mapping, and so is sluice's (one `serde::Deserializer` in
//! `de.rs` serves every type, YAML, JSON and xDS trees alike):
//!
//! * field names in snake_case or lowerCamelCase (`filter_chains` / `filterChains`); map keys
//!   (per-filter configs, metadata, runtime layers) are never rewritten; errors name the path as
//!   written (`staticResources.clusters[0].lbPolicy: …`);
//! * enum values by name in any ASCII case (`round_robin`) or by number (`1`, `"1"`); a number
//!   naming no value is refused as Envoy's `defined_only` rule does;
//! * integers as numbers or strings (64-bit values as `"18446744073709551615"`), integral floats,
//!   range-checked for their width; bools also as the YAML 1.1 words yaml-cpp reads (`yes`, `on`);
//!   `null` for a field means "not set";
//! * every `google.protobuf.Duration` (`"1.5s"` or `{seconds, nanos}`) checked as Envoy checks it:
//!   within protobuf's range, not negative, at most 9,223,372,035 s; never a panic;
//! * an empty document (empty file, only comments, `null`) is refused, as Envoy refuses it; `{}`
//!   is the empty bootstrap;
//! * nesting deeper than [`MAX_NESTING_DEPTH`] (100, protobuf's limit) is refused; a linear
//!   pre-scan refuses absurd depths before the YAML parser runs, so no input makes loading slow;
//! * a `typed_config` whose `@type` is an Envoy v3 message sluice does not run is
//!   `not supported by sluice`; other URLs (v2, unknown packages) are unknown, as for Envoy.
//! * a field of an Envoy message that sluice's struct does not model is `recognised but not
//!   supported by sluice` at its path (the field lists of Envoy's messages are in
//!   `envoy_fields.rs`, generated from Envoy's API protos by
//!   `tests/envoy_fields/generate.py`, with the numbers of Envoy's enums); a name Envoy does not
//!   have is an `unknown field`. Re-run the generator after adding a config struct or enum.
//!
//! Proto-validate (PGV) rules Envoy applies at load (ranges of ports, durations, limits) are
//! checked by [`validate`] with PGV's wording. [`fuzz::load`] is the loader's fuzz target
//! (`crates/config/fuzz`, and bounded in `tests/fuzz_smoke.rs`); `tests/corpus` holds real-world
//! configs that `tests/corpus.rs` loads with sluice and, given `SLUICE_ENVOY`, with real Envoy.
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
mod envoy_fields;
pub mod error;
pub mod ext_authz;
pub mod format;
pub mod hcm;
pub mod health_check;
pub mod listener;
pub mod route;
pub mod tls;
pub mod validate;

use std::path::Path;

pub use bootstrap::Bootstrap;
pub use core::{DataSource, Duration};
pub use de::NotSupported;
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
    check_depth(&source)?;
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

/// Envoy's protobuf JSON parser refuses values nested deeper than this (the root object is
/// level 1; `{"node": {"metadata": …}}` is 3 levels at `metadata`'s value).
pub const MAX_NESTING_DEPTH: usize = 100;

/// The YAML pre-scan refuses documents whose estimated nesting exceeds this before the YAML
/// parser sees them (the parser's time grows with the square of the depth). The estimate can only
/// over-count a little (indentation inside block scalars, brackets inside plain scalars), so it
/// is far above [`MAX_NESTING_DEPTH`], which the parsed tree is then checked against exactly.
pub const YAML_PRESCAN_DEPTH: usize = 1000;

/// Parse text into a generic tree without typing it.
///
/// As Envoy: an empty document (empty file, only comments, `null`, `~`) is refused, and so is
/// nesting deeper than [`MAX_NESTING_DEPTH`]. Deep input is refused by a linear pre-scan before
/// the parser runs, so a hostile file cannot make loading slow.
pub fn parse_tree(text: &str, format: Format) -> Result<serde_json::Value, ConfigError> {
    let value: serde_json::Value = match format {
        Format::Json => {
            if let Some(depth) = json_depth_over(text, MAX_NESTING_DEPTH) {
                return Err(too_deep(depth));
            }
            serde_json::from_str(text)
                .map_err(|e| ConfigError::single("", format!("invalid JSON: {e}")))?
        }
        Format::Yaml => {
            if let Some(depth) = yaml_depth_estimate_over(text, YAML_PRESCAN_DEPTH) {
                return Err(too_deep(depth));
            }
            serde_yaml_ng::from_str(text)
                .map_err(|e| ConfigError::single("", format!("invalid YAML: {e}")))?
        }
    };
    if value.is_null() {
        // Envoy: "Unable to convert YAML as JSON: " for an empty file; `{}` is the empty bootstrap.
        return Err(ConfigError::single(
            "",
            "Unable to convert YAML as JSON: the configuration is empty \
             (an empty bootstrap is written \"{}\")",
        ));
    }
    check_depth(&value)?;
    Ok(value)
}

fn too_deep(depth: usize) -> ConfigError {
    ConfigError::single(
        "",
        format!(
            "nesting depth {depth} exceeds {MAX_NESTING_DEPTH}, the limit of Envoy's protobuf JSON parser"
        ),
    )
}

/// Refuse a tree nested deeper than [`MAX_NESTING_DEPTH`] (iteratively: any depth is safe).
pub fn check_depth(value: &serde_json::Value) -> Result<(), ConfigError> {
    let mut stack: Vec<(&serde_json::Value, usize)> = vec![(value, 1)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth > MAX_NESTING_DEPTH {
            return Err(too_deep(depth));
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    Ok(())
}

/// JSON: the bracket depth outside strings, exactly. `Some(depth)` once it exceeds `limit`.
fn json_depth_over(text: &str, limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return Some(depth);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// YAML: an over-estimate of the nesting depth, in one pass over the text. Block nesting is the
/// stack of indentation columns (plus compact `- ` entries on one line); flow nesting is the
/// bracket depth outside quoted scalars and comments. `Some(estimate)` once it exceeds `limit`.
fn yaml_depth_estimate_over(text: &str, limit: usize) -> Option<usize> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for line in text.lines() {
        let bytes = line.as_bytes();
        let mut i = bytes.iter().take_while(|b| **b == b' ').count();
        if i == bytes.len() || bytes[i] == b'#' {
            continue;
        }
        if flow == 0 {
            while indents.last().is_some_and(|top| *top >= i) {
                indents.pop();
            }
            indents.push(i);
        }
        // Compact block entries: `- - - x`, `? `, each one more level.
        let mut compact = 0;
        while i + 1 < bytes.len() && matches!(bytes[i], b'-' | b'?') && bytes[i + 1] == b' ' {
            compact += 1;
            i += 2;
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
        }
        let mut quote: Option<u8> = None;
        let mut prev = b' ';
        let mut line_flow_max = flow;
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Some(q) => {
                    if b == q {
                        quote = None;
                    }
                }
                None => match b {
                    b'#' if prev == b' ' || prev == b'\t' => break,
                    b'"' | b'\'' if matches!(prev, b' ' | b'\t' | b'[' | b'{' | b',' | b':') => {
                        quote = Some(b)
                    }
                    b'[' | b'{' => {
                        flow += 1;
                        line_flow_max = line_flow_max.max(flow);
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = b;
            i += 1;
        }
        let estimate = indents.len() + compact + line_flow_max;
        if estimate > limit {
            return Some(estimate);
        }
    }
    None
}

/// The config loader as a fuzz target: `crates/config/fuzz` runs it under libFuzzer, and
/// `tests/fuzz_smoke.rs` runs it on a fixed seed corpus plus deterministic mutations in the
/// normal test suite.
#[doc(hidden)]
pub mod fuzz {
    use super::{parse, Format};

    /// Load `data` as YAML and as JSON. It must never panic or hang, whatever the bytes; and a
    /// config that loads must load again from its own typed serialization (what `/config_dump`
    /// and tooling rely on).
    pub fn load(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        for format in [Format::Yaml, Format::Json] {
            if let Ok(snapshot) = parse(text, format) {
                let json = serde_json::to_string(&snapshot.bootstrap)
                    .expect("a loaded bootstrap serializes");
                if let Err(e) = parse(&json, Format::Json) {
                    panic!("a loaded config does not load from its serialization: {e}\n{json}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_documents_are_refused_as_envoy_does() {
        for text in ["", "\n\n", "# only a comment\n", "null", "~", "---\n"] {
            let e = parse(text, Format::Yaml).expect_err(text);
            assert!(
                e.to_string().starts_with("Unable to convert YAML as JSON"),
                "{text:?}: {e}"
            );
        }
        assert!(parse("", Format::Json).is_err());
        assert!(parse("null", Format::Json).is_err());
        // `{}` is the empty bootstrap, accepted by Envoy.
        parse("{}", Format::Yaml).unwrap();
        parse("{}", Format::Json).unwrap();
        // A root that is not an object is refused.
        assert!(parse("[]", Format::Yaml).is_err());
        assert!(parse("5", Format::Yaml).is_err());
    }

    /// `node.metadata` nested `n` objects deep.
    fn deep_metadata(n: usize) -> String {
        format!(
            "node:\n  metadata: {}1{}\n",
            "{a: ".repeat(n),
            "}".repeat(n)
        )
    }

    #[test]
    fn nesting_depth_matches_envoy() {
        // Envoy 1.40 accepts 98 levels under node.metadata (100 in all) and refuses 99.
        parse(&deep_metadata(98), Format::Yaml).unwrap();
        let e = parse(&deep_metadata(99), Format::Yaml).unwrap_err();
        assert!(
            e.to_string().contains("nesting depth 101 exceeds 100"),
            "{e}"
        );
        let json = format!(
            "{{\"node\": {{\"metadata\": {}1{}}}}}",
            "{\"a\": ".repeat(99),
            "}".repeat(99)
        );
        let e = parse(&json, Format::Json).unwrap_err();
        assert!(e.to_string().contains("exceeds 100"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let n = 100_000;
        let cases = [
            (
                format!("a: {}{}", "[".repeat(n), "]".repeat(n)),
                Format::Yaml,
            ),
            (
                format!("a: {}1{}", "{a: ".repeat(n), "}".repeat(n)),
                Format::Yaml,
            ),
            (format!("a:\n{}", "- ".repeat(n)), Format::Yaml),
            (format!("{}{}", "[".repeat(n), "]".repeat(n)), Format::Json),
            (
                (0..2000)
                    .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                    .collect::<String>(),
                Format::Yaml,
            ),
        ];
        for (text, format) in cases {
            let start = std::time::Instant::now();
            let e = parse(&text, format).expect_err("deep input must be refused");
            assert!(e.to_string().contains("nesting depth"), "{e}");
            assert!(
                start.elapsed() < std::time::Duration::from_secs(2),
                "took {:?}",
                start.elapsed()
            );
        }
    }

    #[test]
    fn yaml_prescan_does_not_count_text() {
        // Brackets in quoted scalars and comments, and indentation inside a block scalar, stay
        // far below the pre-scan bound.
        let text = format!(
            "a: \"{}\"\nb: '{}'\n# {}\nc: |\n{}",
            "[".repeat(5000),
            "{".repeat(5000),
            "[".repeat(5000),
            (0..40)
                .map(|i| format!("  {}x\n", " ".repeat(i)))
                .collect::<String>()
        );
        assert_eq!(yaml_depth_estimate_over(&text, YAML_PRESCAN_DEPTH), None);
    }

    #[test]
    fn merge_tree_follows_protobuf_merge() {
        let mut base: serde_json::Value = serde_json::json!({"a": {"x": 1, "l": [1]}, "s": "old"});
        merge_tree(
            &mut base,
            serde_json::json!({"a": {"y": 2, "l": [2]}, "s": "new"}),
        );
        assert_eq!(
            base,
            serde_json::json!({"a": {"x": 1, "y": 2, "l": [1, 2]}, "s": "new"})
        );
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
