//! Helpers of the field audit (`tests/config_audit.rs`).
//!
//! Build functions destructure their config structs exhaustively; a field sluice recognises but
//! does not implement is typed `NotSupported` in `sluice-config`, so the loader refuses any
//! config that sets it (`<path>: recognised but not supported by sluice`). Such fields are bound
//! in the destructuring too and passed to [`refused_at_load`], which accepts nothing else: an
//! implemented field cannot be silenced this way.

use sluice_config::NotSupported;

/// A field type that can only ever be empty in a loaded config.
pub trait Refused {
    /// Always true: `NotSupported` has no values.
    fn is_empty(&self) -> bool;
}

impl Refused for Option<NotSupported> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}

impl Refused for Vec<NotSupported> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

/// Marks fields the loader refuses when they are set: nothing to build.
pub fn refused_at_load<T: Refused + ?Sized>(field: &T) {
    debug_assert!(field.is_empty(), "a NotSupported field has no values");
}

/// Marks an implemented field whose value changes nothing in sluice, for the reason given (the
/// audit test lists every such field with its reason). Envoy has the same behaviour: the field only
/// matters together with a feature sluice refuses at load.
pub fn without_effect<T: ?Sized>(_field: &T, _why: &'static str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_supported_fields_are_always_empty() {
        let none: Option<NotSupported> = None;
        refused_at_load(&none);
        let empty: Vec<NotSupported> = Vec::new();
        refused_at_load(&empty);
        // A NotSupported value cannot be deserialized at all.
        let err = serde_json::from_str::<NotSupported>("1").unwrap_err();
        assert!(err.to_string().contains("not supported by sluice"), "{err}");
    }
}
