//! Deserialization with paths: serde errors are rewritten into Envoy-style messages, and nested
//! `typed_config` blocks (deserialized in a second step, once their `@type` is known) carry their
//! inner path out to the top.

use serde::de::{DeserializeOwned, Error as _};

use crate::error::{join_path, ConfigError, PathError};

/// Marks a serde error message that carries a nested path: `\u{1}path\u{1}message`.
const MARK: char = '\u{1}';

/// Deserialize a typed value from a tree; errors name the path from the tree's root.
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let outer = path_string(e.path());
        let (inner, message) = split_marked(&e.inner().to_string());
        let path = strip_unknown_field(join_path(&outer, &inner), &message);
        ConfigError {
            errors: vec![PathError { path, message }],
        }
    })
}

/// Deserialize a nested typed value inside a `Deserialize` impl; its error path is carried in
/// the message so that [`from_value`] can join it with the outer path.
pub(crate) fn nested<T: DeserializeOwned, E: serde::de::Error>(
    value: serde_json::Value,
) -> Result<T, E> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let outer = path_string(e.path());
        let (inner, message) = split_marked(&e.inner().to_string());
        let path = strip_unknown_field(join_path(&outer, &inner), &message);
        E::custom(format!("{MARK}{path}{MARK}{message}"))
    })
}

/// An error about a field name inside a nested value (for example a bad `@type`).
pub(crate) fn nested_error<E: serde::de::Error>(path: &str, message: impl std::fmt::Display) -> E {
    E::custom(format!("{MARK}{path}{MARK}{message}"))
}

/// serde_path_to_error already descended into an unknown key; the error belongs to its parent.
fn strip_unknown_field(path: String, message: &str) -> String {
    if let Some(name) = message
        .strip_prefix("unknown field \"")
        .and_then(|r| r.strip_suffix('"'))
    {
        if let Some(parent) = path.strip_suffix(name).and_then(|p| p.strip_suffix('.')) {
            return parent.to_string();
        }
        if path == name {
            return String::new();
        }
    }
    path
}

fn path_string(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

fn split_marked(message: &str) -> (String, String) {
    if let Some(rest) = message.strip_prefix(MARK) {
        if let Some((path, msg)) = rest.split_once(MARK) {
            return (path.to_string(), msg.to_string());
        }
    }
    (String::new(), envoy_style(message))
}

/// serde's wording → ours: `unknown field "x"`, `unknown value "X"`, `missing field "x"`.
fn envoy_style(message: &str) -> String {
    let quoted = |rest: &str| rest.split('`').nth(1).unwrap_or("").to_string();
    if !message.contains('`') {
        // Already ours (e.g. `missing field "@type"` from a typed_config).
        return message.to_string();
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        format!("unknown field \"{}\"", quoted(rest))
    } else if let Some(rest) = message.strip_prefix("unknown variant ") {
        format!("unknown value \"{}\"", quoted(rest))
    } else if let Some(rest) = message.strip_prefix("missing field ") {
        format!("missing field \"{}\"", quoted(rest))
    } else {
        message.to_string()
    }
}

/// A field sluice recognises but does not support: present in the config → error at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSupported {}

impl<'de> serde::Deserialize<'de> for NotSupported {
    fn deserialize<D: serde::Deserializer<'de>>(_d: D) -> Result<Self, D::Error> {
        Err(D::Error::custom("recognised but not supported by sluice"))
    }
}

impl serde::Serialize for NotSupported {
    fn serialize<S: serde::Serializer>(&self, _s: S) -> Result<S::Ok, S::Error> {
        match *self {}
    }
}

/// Split a `typed_config` object into its `@type` URL and the rest.
pub(crate) fn split_type<E: serde::de::Error>(
    mut value: serde_json::Value,
) -> Result<(String, serde_json::Value), E> {
    let obj = value
        .as_object_mut()
        .ok_or_else(|| E::custom("typed_config must be an object with an \"@type\""))?;
    let url = match obj.remove("@type") {
        Some(serde_json::Value::String(s)) => s,
        Some(_) => return Err(nested_error("@type", "must be a string")),
        None => return Err(E::custom("missing field \"@type\"")),
    };
    Ok((url, value))
}

/// A typed message as JSON with its `"@type"` URL first.
pub(crate) fn with_type(message: &str, inner: serde_json::Value) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert(
        "@type".to_string(),
        serde_json::Value::String(format!("type.googleapis.com/{message}")),
    );
    if let serde_json::Value::Object(fields) = inner {
        map.extend(fields);
    }
    serde_json::Value::Object(map)
}

/// The message name of a type URL (`type.googleapis.com/a.b.C` → `a.b.C`).
pub(crate) fn type_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// Define an enum resolved from a `typed_config` by `@type`: each variant names the proto message
/// and the Rust type holding it.
macro_rules! typed_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident($ty:ty) = $msg:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        $vis enum $name { $($(#[$vmeta])* $variant($ty),)+ }

        /// Serialized as the config was written: `"@type"` first, then the message's fields.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let inner = match self { $(Self::$variant(v) => serde_json::to_value(v),)+ }
                    .map_err(<S::Error as serde::ser::Error>::custom)?;
                $crate::de::with_type(self.message_name(), inner).serialize(s)
            }
        }

        impl $name {
            /// The proto message names this enum accepts.
            pub const MESSAGES: &'static [&'static str] = &[$($msg),+];
            /// The proto message name of this value.
            pub fn message_name(&self) -> &'static str {
                match self { $(Self::$variant(_) => $msg,)+ }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = <serde_json::Value as serde::Deserialize>::deserialize(d)?;
                let (url, rest) = $crate::de::split_type::<D::Error>(value)?;
                match $crate::de::type_name(&url) {
                    $($msg => Ok(Self::$variant($crate::de::nested::<$ty, D::Error>(rest)?)),)+
                    _ => Err($crate::de::nested_error(
                        "@type",
                        format!("unsupported type \"{}\" here (expected one of: {})", url,
                            Self::MESSAGES.join(", ")),
                    )),
                }
            }
        }
    };
}
pub(crate) use typed_enum;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::from_value;
    use crate::bootstrap::Bootstrap;
    use crate::cluster::Cluster;

    /// The one error of deserializing `value` as a bootstrap, as displayed.
    fn error(value: serde_json::Value) -> String {
        let e = from_value::<Bootstrap>(value).expect_err("should fail");
        assert_eq!(e.errors.len(), 1, "{e}");
        e.to_string()
    }

    fn hcm(extra: serde_json::Value) -> serde_json::Value {
        let mut typed = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "s",
            "route_config": {"virtual_hosts": []},
            "http_filters": [{"name": "envoy.filters.http.router"}],
        });
        typed
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"static_resources": {"listeners": [{
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": typed}]}],
        }]}})
    }

    const HCM: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

    #[test]
    fn unknown_field_names_its_parent() {
        assert_eq!(error(json!({"bogus": 1})), "unknown field \"bogus\"");
        assert_eq!(
            error(json!({"static_resources": {"clusterz": []}})),
            "static_resources: unknown field \"clusterz\""
        );
        assert_eq!(
            error(hcm(json!({"bogus_field": true}))),
            format!("{HCM}: unknown field \"bogus_field\"")
        );
    }

    #[test]
    fn unknown_enum_value() {
        let v = json!({"static_resources": {"clusters": [{"name": "a"}, {"name": "b", "lb_policy": "ROUNDROBIN"}]}});
        assert_eq!(
            error(v),
            "static_resources.clusters[1].lb_policy: unknown value \"ROUNDROBIN\""
        );
        assert_eq!(
            error(hcm(json!({"codec_type": "HTTP9"}))),
            format!("{HCM}.codec_type: unknown value \"HTTP9\"")
        );
    }

    #[test]
    fn bad_type_url() {
        let v = hcm(
            json!({"http_filters": [{"name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"}}]}),
        );
        assert_eq!(
            error(v),
            format!(
                "{HCM}.http_filters[0].typed_config.@type: unsupported type \"type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope\" here (expected one of: envoy.extensions.filters.http.router.v3.Router, envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, envoy.extensions.filters.http.health_check.v3.HealthCheck)"
            )
        );
        let v =
            hcm(json!({"http_filters": [{"name": "x", "typed_config": {"dynamic_stats": true}}]}));
        assert_eq!(
            error(v),
            format!("{HCM}.http_filters[0].typed_config: missing field \"@type\"")
        );
    }

    #[test]
    fn nested_typed_config_errors_carry_the_inner_path() {
        let v = hcm(json!({"http_filters": [{"name": "r", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "dynamic_stats": "yes"}}]}));
        let e = error(v);
        assert!(
            e.starts_with(&format!(
                "{HCM}.http_filters[0].typed_config.dynamic_stats: "
            )),
            "{e}"
        );
    }

    #[test]
    fn not_supported_field() {
        assert_eq!(
            error(hcm(json!({"rds": {}}))),
            format!("{HCM}.rds: recognised but not supported by sluice")
        );
        assert_eq!(
            error(json!({"dynamic_resources": {}})),
            "dynamic_resources: recognised but not supported by sluice"
        );
    }

    #[test]
    fn bad_duration() {
        let v = json!({"static_resources": {"clusters": [{"name": "a", "connect_timeout": "5 seconds"}]}});
        assert_eq!(
            error(v),
            "static_resources.clusters[0].connect_timeout: invalid duration \"5 seconds\": expected seconds with an \"s\" suffix, e.g. \"0.250s\""
        );
        let v = json!({"static_resources": {"clusters": [{"name": "a", "connect_timeout": 5}]}});
        assert!(error(v)
            .starts_with("static_resources.clusters[0].connect_timeout: invalid duration 5"));
        // The object form of google.protobuf.Duration is accepted too.
        let c: Cluster =
            from_value(json!({"name": "a", "connect_timeout": {"seconds": 1, "nanos": 500000000}}))
                .unwrap();
        assert_eq!(c.connect_timeout(), std::time::Duration::from_millis(1500));
    }

    #[test]
    fn missing_required_field() {
        assert_eq!(
            error(json!({"static_resources": {"clusters": [{"type": "STATIC"}]}})),
            "static_resources.clusters[0]: missing field \"name\""
        );
        let mut v = hcm(json!({}));
        v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            .as_object_mut()
            .unwrap()
            .remove("stat_prefix");
        assert_eq!(error(v), format!("{HCM}: missing field \"stat_prefix\""));
    }

    #[test]
    fn typed_configs_serialize_with_their_type_url_first() {
        let b: Bootstrap = from_value(hcm(json!({}))).unwrap();
        let out = serde_json::to_value(&b).unwrap();
        let typed = &out["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        assert_eq!(
            typed.as_object().unwrap().keys().next().map(String::as_str),
            Some("@type"),
            "{typed}"
        );
        assert_eq!(
            typed["@type"],
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
        );
    }
}
