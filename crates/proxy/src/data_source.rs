//! `envoy.config.core.v3.DataSource`: the bytes of a certificate, key, CA, body or format.

use sluice_config::DataSource;

use crate::config_audit::refused_at_load;

/// Read a data source's bytes: a file, an inline string, inline bytes (base64, as proto3 JSON
/// `bytes`) or an environment variable (the validator requires exactly one).
pub fn load(ds: &DataSource) -> Result<Vec<u8>, String> {
    let DataSource { filename, inline_string, inline_bytes, environment_variable, watched_directory } = ds;
    refused_at_load(watched_directory);
    match (filename, inline_string, inline_bytes, environment_variable) {
        (Some(f), None, None, None) => std::fs::read(f).map_err(|e| format!("cannot read \"{f}\": {e}")),
        (None, Some(s), None, None) => Ok(s.as_bytes().to_vec()),
        (None, None, Some(b), None) => {
            sluice_config::core::base64_decode(b).ok_or_else(|| "inline_bytes is not valid base64".to_string())
        }
        (None, None, None, Some(v)) => {
            std::env::var(v).map(String::into_bytes).map_err(|_| format!("environment variable \"{v}\" is not set"))
        }
        _ => Err("exactly one of filename, inline_string, inline_bytes, environment_variable is required".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_and_refusals() {
        let inline = DataSource { inline_string: Some("abc".into()), ..Default::default() };
        assert_eq!(load(&inline).unwrap(), b"abc");
        let bytes = DataSource { inline_bytes: Some("aGVsbG8=".into()), ..Default::default() };
        assert_eq!(load(&bytes).unwrap(), b"hello");
        let bad = DataSource { inline_bytes: Some("a$b".into()), ..Default::default() };
        assert!(load(&bad).unwrap_err().contains("base64"));
        let file = DataSource { filename: Some("/nonexistent/sluice-data-source".into()), ..Default::default() };
        assert!(load(&file).unwrap_err().contains("cannot read"));
        let env = DataSource { environment_variable: Some("SLUICE_DATA_SOURCE_TEST_UNSET_VARIABLE".into()), ..Default::default() };
        assert!(load(&env).unwrap_err().contains("is not set"));
        let two = DataSource { inline_string: Some("a".into()), filename: Some("b".into()), ..Default::default() };
        assert!(load(&two).unwrap_err().contains("exactly one"));
        assert!(load(&DataSource::default()).unwrap_err().contains("exactly one"));
    }
}
