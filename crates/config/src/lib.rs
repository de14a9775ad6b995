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

pub mod bootstrap;
pub mod cluster;
pub mod core;
mod de;
pub mod error;
pub mod ext_authz;
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
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single("", format!("cannot read {}: {e}", path.display()))
    })?;
    parse(&text, Format::from_path(path))
}

/// Parse and validate bootstrap text.
pub fn parse(text: &str, format: Format) -> Result<Snapshot, ConfigError> {
    let source = parse_tree(text, format)?;
    let bootstrap = de::from_value::<Bootstrap>(source.clone())?;
    validate::validate(&bootstrap)?;
    Ok(Snapshot { bootstrap, source })
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
