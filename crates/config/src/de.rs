//! Deserialization with paths, following protobuf's JSON mapping as Envoy's loader does.
//!
//! Every typed value is deserialized through [`Proto`], a `serde::Deserializer` over a
//! `serde_json::Value` tree that accepts what protobuf's JSON parser (Envoy's YAML/JSON loader)
//! accepts, for every type at once:
//!
//! * **Field names** in snake_case or lowerCamelCase (`filter_chains` / `filterChains`): in
//!   `deserialize_struct`, a key that is the JSON name (protobuf's `json_name`) of one of the
//!   struct's fields is read as that field. Map keys (`typed_per_filter_config` keys, metadata,
//!   runtime layers, header names) go through `deserialize_map` and are never rewritten. When
//!   both spellings of one field are present the lowerCamelCase one wins, as with Envoy.
//! * **`null`** for any field of a message means "not set" (the field keeps its default).
//! * **Enums** by name, ASCII case-insensitively (`round_robin`, `Round_Robin`), or by number
//!   (`1`, `"1"`); a number that names no value fails as Envoy's `defined_only` rule does.
//! * **Integers** as JSON numbers or strings (`"4096"`, 64-bit values above 2^53), including
//!   integral floats (`4096.0`, `"4e3"`), range-checked for their width; **floats** also as
//!   `"NaN"`, `"Infinity"`, `"-Infinity"` or numeric strings; **bools** also as the YAML 1.1 words
//!   Envoy's YAML reader turns into bools (`yes`, `on`, `True`, …).
//!
//! Errors name the path as written in the source (`static_resources.clusters[0].lbPolicy`),
//! built while the error unwinds: each map entry and list item adds its key or index. Nested
//! `typed_config` blocks (deserialized in a second step, once their `@type` is known) carry their
//! inner path out to the top through [`nested`].

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Error as _, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::Value;

use crate::error::{join_path, ConfigError, PathError};

/// Marks a serde error message that carries a nested path: `\u{1}path\u{1}message`.
const MARK: char = '\u{1}';

/// Deserialize a typed value from a tree; errors name the path from the tree's root.
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ConfigError> {
    T::deserialize(Proto(&value)).map_err(|e| ConfigError {
        errors: vec![PathError {
            path: e.path,
            message: e.message,
        }],
    })
}

/// Deserialize a nested typed value inside a `Deserialize` impl; its error path is carried in
/// the message so that [`from_value`] can join it with the outer path.
pub(crate) fn nested<T: DeserializeOwned, E: serde::de::Error>(
    value: serde_json::Value,
) -> Result<T, E> {
    T::deserialize(Proto(&value))
        .map_err(|e| E::custom(format!("{MARK}{}{MARK}{}", e.path, e.message)))
}

/// An error about a field name inside a nested value (for example a bad `@type`).
pub(crate) fn nested_error<E: serde::de::Error>(path: &str, message: impl std::fmt::Display) -> E {
    E::custom(format!("{MARK}{path}{MARK}{message}"))
}

/// The error of [`Proto`]: a message and the path where it happened, relative to the value
/// being deserialized (grown towards the root as the error unwinds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeError {
    pub path: String,
    pub message: String,
}

impl DeError {
    fn at(mut self, segment: &str) -> Self {
        self.path = join_path(segment, &self.path);
        self
    }
}

impl std::fmt::Display for DeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        let msg = msg.to_string();
        if let Some(rest) = msg.strip_prefix(MARK) {
            if let Some((path, message)) = rest.split_once(MARK) {
                return DeError {
                    path: path.to_string(),
                    message: message.to_string(),
                };
            }
        }
        DeError {
            path: String::new(),
            message: msg,
        }
    }
    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        Self::custom(format!("unknown field \"{field}\""))
    }
    fn unknown_variant(variant: &str, _expected: &'static [&'static str]) -> Self {
        Self::custom(format!("unknown value \"{variant}\""))
    }
    fn missing_field(field: &'static str) -> Self {
        Self::custom(format!("missing field \"{field}\""))
    }
    fn duplicate_field(field: &'static str) -> Self {
        Self::custom(format!("duplicate field \"{field}\""))
    }
}

/// Protobuf's JSON name of a field (`filter_chains` → `filterChains`, `accept_http_10` →
/// `acceptHttp10`), compared without allocating.
fn is_json_name_of(key: &str, field: &str) -> bool {
    let mut k = key.chars();
    let mut upper_next = false;
    for c in field.chars() {
        if c == '_' {
            upper_next = true;
            continue;
        }
        let want = if upper_next {
            c.to_ascii_uppercase()
        } else {
            c
        };
        upper_next = false;
        if k.next() != Some(want) {
            return false;
        }
    }
    k.next().is_none()
}

/// The struct field a key names: itself, or the field whose JSON name it is.
fn field_for(key: &str, fields: &'static [&'static str]) -> Option<&'static str> {
    fields
        .iter()
        .find(|f| **f == key)
        .or_else(|| fields.iter().find(|f| is_json_name_of(key, f)))
        .copied()
}

const NOT_SUPPORTED: &str = "recognised but not supported by sluice";

/// Whether `key` (snake_case or lowerCamelCase) names a field of the Envoy message that the
/// struct `name` mirrors (see `envoy_fields.rs`): a real Envoy field sluice does not model.
fn envoy_has_field(name: &str, key: &str) -> bool {
    crate::envoy_fields::ENVOY_FIELDS
        .iter()
        .filter(|(rust, _, _)| *rust == name)
        .any(|(_, _, fields)| fields.iter().any(|f| *f == key || is_json_name_of(key, f)))
}

/// A `serde::Deserializer` over a JSON tree with protobuf's JSON rules (see the module doc).
#[derive(Clone, Copy)]
pub(crate) struct Proto<'a>(pub &'a Value);

fn invalid_type(v: &Value, expected: &str) -> DeError {
    let what = match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string \"{s}\""),
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "an object".to_string(),
    };
    DeError::custom(format!("invalid type: {what}, expected {expected}"))
}

/// An integer written as a JSON number or string, integral floats included (protobuf's rules).
fn integer(v: &Value, ty: &str) -> Result<i128, DeError> {
    let out_of_range = || DeError::custom(format!("value {v} is out of range for {ty}"));
    let from_f64 = |f: f64| -> Result<i128, DeError> {
        if !f.is_finite() || f.fract() != 0.0 {
            return Err(DeError::custom(format!(
                "expected an integer ({ty}), got {v}"
            )));
        }
        if f.abs() > 1.8e19 {
            return Err(out_of_range());
        }
        Ok(f as i128)
    };
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(u as i128)
            } else if let Some(i) = n.as_i64() {
                Ok(i as i128)
            } else {
                from_f64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => {
            let t = s.as_str();
            if t.is_empty() || t.trim() != t {
                return Err(DeError::custom(format!(
                    "expected an integer ({ty}), got {v}"
                )));
            }
            if let Ok(i) = t.parse::<i128>() {
                return Ok(i);
            }
            match t.parse::<f64>() {
                Ok(f)
                    if !t
                        .chars()
                        .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
                {
                    from_f64(f)
                }
                _ => Err(DeError::custom(format!(
                    "expected an integer ({ty}), got {v}"
                ))),
            }
        }
        other => Err(invalid_type(other, &format!("an integer ({ty})"))),
    }
}

pub(crate) fn integer_in_range<T: TryFrom<i128>>(v: &Value, ty: &str) -> Result<T, DeError> {
    let i = integer(v, ty)?;
    T::try_from(i).map_err(|_| DeError::custom(format!("value {v} is out of range for {ty}")))
}

fn float(v: &Value) -> Result<f64, DeError> {
    match v {
        Value::Number(n) => Ok(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            t if !t.is_empty()
                && t.trim() == t
                && !t
                    .chars()
                    .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
            {
                t.parse::<f64>()
                    .map_err(|_| DeError::custom(format!("expected a number, got {v}")))
            }
            _ => Err(DeError::custom(format!("expected a number, got {v}"))),
        },
        other => Err(invalid_type(other, "a number")),
    }
}

/// Envoy reads YAML with yaml-cpp, whose booleans include the YAML 1.1 words.
fn boolean(v: &Value) -> Result<bool, DeError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.as_str() {
            "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "y" | "Y" | "on" | "On" | "ON" => {
                Ok(true)
            }
            "false" | "False" | "FALSE" | "no" | "No" | "NO" | "n" | "N" | "off" | "Off"
            | "OFF" => Ok(false),
            _ => Err(DeError::custom(format!(
                "expected 'true' or 'false', got {v}"
            ))),
        },
        other => Err(DeError::custom(format!(
            "expected 'true' or 'false', got {other}"
        ))),
    }
}

/// The proto values (name, number) of the Envoy enum a Rust enum mirrors (`envoy_fields.rs`).
fn enum_values(name: &str) -> Option<&'static [(&'static str, i64)]> {
    crate::envoy_fields::ENVOY_ENUMS
        .iter()
        .find(|(rust, _, _)| *rust == name)
        .map(|(_, _, values)| *values)
}

const UNDEFINED_ENUM: &str = "value must be one of the defined enum values";

/// The serde variant an enum value written as `v` stands for (protobuf: the name in any ASCII
/// case, or the number).
fn enum_variant(
    name: &str,
    variants: &'static [&'static str],
    v: &Value,
) -> Result<&'static str, DeError> {
    let numbers = enum_values(name);
    let by_number = |n: i128| -> Result<&'static str, DeError> {
        let Some(table) = numbers else {
            return Err(DeError::custom(format!(
                "enum value by number ({n}) is not supported by sluice for {name}; write its name"
            )));
        };
        let proto = table
            .iter()
            .find(|(_, num)| i128::from(*num) == n)
            .map(|(p, _)| *p)
            .ok_or_else(|| DeError::custom(UNDEFINED_ENUM))?;
        variants
            .iter()
            .find(|v| v.eq_ignore_ascii_case(proto))
            .copied()
            .ok_or_else(|| DeError::custom(format!("value \"{proto}\" is not supported by sluice")))
    };
    match v {
        Value::String(s) => {
            if let Some(exact) = variants.iter().find(|v| **v == s) {
                return Ok(exact);
            }
            if let Some(found) = variants.iter().find(|v| v.eq_ignore_ascii_case(s)) {
                return Ok(found);
            }
            if let Ok(n) = s.parse::<i128>() {
                return by_number(n);
            }
            // A value of Envoy's enum that sluice's enum lacks.
            if let Some(proto) = numbers
                .and_then(|t| t.iter().find(|(p, _)| p.eq_ignore_ascii_case(s)))
                .map(|(p, _)| *p)
            {
                return Err(DeError::custom(format!(
                    "value \"{proto}\" is not supported by sluice"
                )));
            }
            Err(DeError::unknown_variant(s, variants))
        }
        Value::Number(n) => match n.as_i64() {
            Some(i) => by_number(i128::from(i)),
            None => Err(DeError::custom(format!("unknown value \"{n}\""))),
        },
        other => Err(invalid_type(other, "an enum value name or number")),
    }
}

impl<'de> de::Deserializer<'de> for Proto<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.iter(),
                index: 0,
            }),
            Value::Object(map) => visitor.visit_map(Map {
                entries: map
                    .iter()
                    .map(|(k, v)| (k.as_str(), k.as_str(), v))
                    .collect::<Vec<_>>()
                    .into_iter(),
                value: None,
            }),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_bool(boolean(self.0)?)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i8(integer_in_range(self.0, "int8")?)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i16(integer_in_range(self.0, "int16")?)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i32(integer_in_range(self.0, "int32")?)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i64(integer_in_range(self.0, "int64")?)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u8(integer_in_range(self.0, "uint8")?)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u16(integer_in_range(self.0, "uint16")?)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u32(integer_in_range(self.0, "uint32")?)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u64(integer_in_range(self.0, "uint64")?)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_f32(float(self.0)? as f32)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_f64(float(self.0)?)
    }
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::String(s) => visitor.visit_borrowed_str(s),
            other => Err(invalid_type(other, "a string")),
        }
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            other => Err(invalid_type(other, "null")),
        }
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.iter(),
                index: 0,
            }),
            other => Err(invalid_type(other, "a list")),
        }
    }
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(invalid_type(other, "an object")),
        }
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let Value::Object(map) = self.0 else {
            return Err(invalid_type(self.0, "an object"));
        };
        // (key as written, key as the struct names it, value); null means "not set".
        let mut entries: Vec<(&'de str, &'de str, &'de Value)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            if v.is_null() {
                continue;
            }
            let field = match field_for(k, fields) {
                Some(f) => f,
                None if envoy_has_field(name, k) => {
                    return Err(DeError::custom(NOT_SUPPORTED).at(k));
                }
                None => k.as_str(),
            };
            if let Some(i) = entries.iter().position(|(_, f, _)| *f == field) {
                // Both spellings of one field: the lowerCamelCase one wins, as with Envoy.
                if k.as_str() != field {
                    entries[i] = (k, field, v);
                }
                continue;
            }
            entries.push((k, field, v));
        }
        visitor.visit_map(Map {
            entries: entries.into_iter(),
            value: None,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let variant = enum_variant(name, variants, self.0)?;
        visitor.visit_enum(variant.into_deserializer())
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct Seq<'a> {
    items: std::slice::Iter<'a, Value>,
    index: usize,
}

impl<'de> SeqAccess<'de> for Seq<'de> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(Proto(item))
            .map(Some)
            .map_err(|e| e.at(&format!("[{index}]")))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Map<'a> {
    /// (key as written, key given to the visitor, value).
    entries: std::vec::IntoIter<(&'a str, &'a str, &'a Value)>,
    value: Option<(&'a str, &'a Value)>,
}

impl<'de> MapAccess<'de> for Map<'de> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((written, key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((written, value));
        seed.deserialize(de::value::BorrowedStrDeserializer::<DeError>::new(key))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (written, value) = self
            .value
            .take()
            .ok_or_else(|| DeError::custom("a map value was asked for before its key"))?;
        seed.deserialize(Proto(value)).map_err(|e| e.at(written))
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// A field sluice recognises but does not support: present in the config → error at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSupported {}

impl<'de> serde::Deserialize<'de> for NotSupported {
    fn deserialize<D: serde::Deserializer<'de>>(_d: D) -> Result<Self, D::Error> {
        Err(D::Error::custom(NOT_SUPPORTED))
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

/// The error for a `typed_config` whose `@type` is none of `supported`. An Envoy v3 API message
/// (or a `TypedStruct` wrapper) is a real Envoy extension that sluice does not run; anything else
/// (v2 URLs, other packages) is unknown to Envoy 1.40 as well.
pub(crate) fn unsupported_type(url: &str, supported: &[&str]) -> String {
    let name = type_name(url);
    let envoy_v3 = (name.starts_with("envoy.")
        && name
            .split('.')
            .any(|part| part == "v3" || part.starts_with("v3alpha")))
        || matches!(name, "udpa.type.v1.TypedStruct" | "xds.type.v3.TypedStruct");
    if envoy_v3 && url.contains('/') {
        format!(
            "type \"{url}\" is not supported by sluice here (sluice supports: {})",
            supported.join(", ")
        )
    } else {
        format!(
            "unknown type \"{url}\" here (not an Envoy v3 message; expected one of: {})",
            supported.join(", ")
        )
    }
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
                        $crate::de::unsupported_type(&url, Self::MESSAGES),
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
                "{HCM}.http_filters[0].typed_config.@type: type \"type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope\" is not supported by sluice here (sluice supports: envoy.extensions.filters.http.router.v3.Router, envoy.extensions.filters.http.ext_authz.v3.ExtAuthz, envoy.extensions.filters.http.health_check.v3.HealthCheck)"
            )
        );
        // A v2 URL is unknown to Envoy 1.40 as well: not called "not supported".
        let v = hcm(
            json!({"http_filters": [{"name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.config.filter.http.router.v2.Router"}}]}),
        );
        let e = error(v);
        assert!(e.contains("@type: unknown type"), "{e}");
        assert!(!e.contains("not supported by sluice"), "{e}");
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
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "dynamic_stats": 5}}]}));
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

    fn cluster(extra: serde_json::Value) -> serde_json::Value {
        let mut c = json!({"name": "a"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"static_resources": {"clusters": [c]}})
    }

    /// The generated enum table (`envoy_fields.rs`) names, for each mirrored enum, exactly the
    /// proto values of its serde variants, in proto order.
    #[test]
    fn enum_number_table_matches_the_enums() {
        use crate::cluster::*;
        use crate::core::*;
        use crate::hcm::*;
        fn names<T: serde::Serialize + Copy>(values: &[T]) -> Vec<String> {
            values
                .iter()
                .map(|v| {
                    serde_json::to_value(v)
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        }
        let enums: Vec<(&str, Vec<String>)> = vec![
            (
                "LbPolicy",
                names(&[
                    LbPolicy::RoundRobin,
                    LbPolicy::LeastRequest,
                    LbPolicy::RingHash,
                    LbPolicy::Random,
                    LbPolicy::Maglev,
                    LbPolicy::ClusterProvided,
                    LbPolicy::LoadBalancingPolicyConfig,
                ]),
            ),
            (
                "RingHashFunction",
                names(&[RingHashFunction::XxHash, RingHashFunction::MurmurHash2]),
            ),
            (
                "DiscoveryType",
                names(&[
                    DiscoveryType::Static,
                    DiscoveryType::StrictDns,
                    DiscoveryType::LogicalDns,
                    DiscoveryType::Eds,
                    DiscoveryType::OriginalDst,
                ]),
            ),
            (
                "CodecType",
                names(&[
                    CodecType::Auto,
                    CodecType::Http1,
                    CodecType::Http2,
                    CodecType::Http3,
                ]),
            ),
            (
                "HeaderAppendAction",
                names(&[
                    HeaderAppendAction::AppendIfExistsOrAdd,
                    HeaderAppendAction::AddIfAbsent,
                    HeaderAppendAction::OverwriteIfExistsOrAdd,
                    HeaderAppendAction::OverwriteIfExists,
                ]),
            ),
            (
                "TlsProtocol",
                names(&[
                    crate::tls::TlsProtocol::Auto,
                    crate::tls::TlsProtocol::V1_0,
                    crate::tls::TlsProtocol::V1_1,
                    crate::tls::TlsProtocol::V1_2,
                    crate::tls::TlsProtocol::V1_3,
                ]),
            ),
        ];
        for (name, serde_names) in enums {
            let protos: Vec<&str> = super::enum_values(name)
                .unwrap()
                .iter()
                .map(|(p, _)| *p)
                .collect();
            assert_eq!(protos, serde_names, "{name}");
        }
        assert_eq!(
            super::enum_values("LbPolicy")
                .unwrap()
                .iter()
                .find(|(p, _)| *p == "MAGLEV"),
            Some(&("MAGLEV", 5))
        );
        // Every enum of the config model is in the table (numbers work for all of them).
        for name in [
            "SocketProtocol",
            "HeaderAppendAction",
            "HeadersWithUnderscoresAction",
            "CodecType",
            "ServerHeaderTransformation",
            "DiscoveryType",
            "LbPolicy",
            "DnsLookupFamily",
            "RoutingPriority",
            "RingHashFunction",
            "HealthStatus",
            "TlsRequirementType",
            "ClusterNotFoundResponseCode",
            "RedirectResponseCode",
            "ApiVersion",
            "TlsProtocol",
            "TrustChainVerification",
        ] {
            assert!(super::enum_values(name).is_some(), "{name}");
        }
    }

    #[test]
    fn lower_camel_case_field_names() {
        let v = json!({"staticResources": {"listeners": [{
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 1}},
            "filterChains": [{"filters": [{"name": "hcm", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "statPrefix": "s",
                "routeConfig": {"virtualHosts": [{"name": "v", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 200}}],
                    "typedPerFilterConfig": {}}]},
                "httpFilters": [{"name": "envoy.filters.http.router"}],
                "httpProtocolOptions": {"acceptHttp10": true},
            }}]}],
        }]}});
        let b: Bootstrap = from_value(v).unwrap();
        let l = &b.static_resources.listeners[0];
        assert_eq!(l.address.socket_address.as_ref().unwrap().port_value, 1);
        let crate::listener::NetworkFilterConfig::HttpConnectionManager(h) =
            &l.filter_chains[0].filters[0].typed_config;
        assert_eq!(h.stat_prefix, "s");
        assert!(h.accept_http_10());
        // Errors name the path as written.
        let e = error(cluster(json!({"lbPolicy": "ROUNDROBIN"})));
        assert_eq!(
            e,
            "static_resources.clusters[0].lbPolicy: unknown value \"ROUNDROBIN\""
        );
        let e =
            error(json!({"staticResources": {"clusters": [{"name": "a", "connectTimeout": "x"}]}}));
        assert!(
            e.starts_with("staticResources.clusters[0].connectTimeout: invalid duration"),
            "{e}"
        );
        // Names that are neither spelling stay unknown.
        assert_eq!(
            error(cluster(json!({"LbPolicy": "RANDOM"}))),
            "static_resources.clusters[0]: unknown field \"LbPolicy\""
        );
        assert_eq!(
            error(cluster(json!({"lb_Policy": "RANDOM"}))),
            "static_resources.clusters[0]: unknown field \"lb_Policy\""
        );
    }

    #[test]
    fn envoy_fields_sluice_lacks_are_not_supported_typos_are_unknown() {
        // `preconnect_policy` is a field of Envoy's Cluster that sluice does not model.
        assert_eq!(
            error(cluster(json!({"preconnect_policy": {}}))),
            "static_resources.clusters[0].preconnect_policy: recognised but not supported by sluice"
        );
        assert_eq!(
            error(cluster(json!({"preconnectPolicy": {}}))),
            "static_resources.clusters[0].preconnectPolicy: recognised but not supported by sluice"
        );
        // Unset (null) is fine, as for Envoy.
        from_value::<Cluster>(json!({"name": "a", "preconnect_policy": null})).unwrap();
        // A misspelt name is still unknown.
        assert_eq!(
            error(cluster(json!({"preconect_policy": {}}))),
            "static_resources.clusters[0]: unknown field \"preconect_policy\""
        );
        assert_eq!(
            error(hcm(
                json!({"set_current_client_cert_details": {"subject": true}})
            )),
            format!(
                "{HCM}.set_current_client_cert_details: recognised but not supported by sluice"
            )
        );
    }

    #[test]
    fn both_spellings_the_camel_case_one_wins() {
        // Envoy 1.40 keeps the lowerCamelCase value whichever comes first.
        for v in [
            json!({"name": "a", "lbPolicy": "RANDOM", "lb_policy": "MAGLEV"}),
            json!({"name": "a", "lb_policy": "MAGLEV", "lbPolicy": "RANDOM"}),
        ] {
            let c: Cluster = from_value(v).unwrap();
            assert_eq!(c.lb_policy, crate::cluster::LbPolicy::Random);
        }
    }

    #[test]
    fn map_keys_are_never_rewritten() {
        let v = json!({"layered_runtime": {"layers": [{"name": "l", "static_layer": {"someKey": {"innerKey": 1}}}]},
                       "node": {"metadata": {"fooBar": "x"}}});
        let b: Bootstrap = from_value(v).unwrap();
        assert_eq!(b.runtime_value("someKey.innerKey"), Some(&json!(1)));
        assert_eq!(b.node.unwrap().metadata.unwrap(), json!({"fooBar": "x"}));
    }

    #[test]
    fn null_means_not_set() {
        let c: Cluster = from_value(
            json!({"name": "a", "lb_policy": null, "load_assignment": null,
            "respect_dns_ttl": null, "health_checks": null}),
        )
        .unwrap();
        assert_eq!(c.lb_policy, crate::cluster::LbPolicy::RoundRobin);
        assert!(c.load_assignment.is_none());
    }

    #[test]
    fn enums_by_name_in_any_case_or_by_number() {
        use crate::cluster::LbPolicy;
        for (written, want) in [
            (json!("round_robin"), LbPolicy::RoundRobin),
            (json!("Least_Request"), LbPolicy::LeastRequest),
            (json!(1), LbPolicy::LeastRequest),
            (json!("1"), LbPolicy::LeastRequest),
            (json!(5), LbPolicy::Maglev),
            (json!(6), LbPolicy::ClusterProvided),
        ] {
            let c: Cluster = from_value(json!({"name": "a", "lb_policy": written})).unwrap();
            assert_eq!(c.lb_policy, want, "{written}");
        }
        for n in [4, 99, -1] {
            assert_eq!(
                error(cluster(json!({"lb_policy": n}))),
                "static_resources.clusters[0].lb_policy: value must be one of the defined enum values"
            );
        }
        for bad in ["round-robin", " ROUND_ROBIN", "1.0"] {
            assert_eq!(
                error(cluster(json!({"lb_policy": bad}))),
                format!("static_resources.clusters[0].lb_policy: unknown value \"{bad}\"")
            );
        }
        // Mixed-case proto names (TLSv1_2) and names with digits (MURMUR_HASH_2).
        let t: crate::tls::TlsParameters = from_value(
            json!({"tls_minimum_protocol_version": "tlsv1_2", "tls_maximum_protocol_version": 4}),
        )
        .unwrap();
        assert_eq!(
            t.tls_minimum_protocol_version,
            Some(crate::tls::TlsProtocol::V1_2)
        );
        assert_eq!(
            t.tls_maximum_protocol_version,
            Some(crate::tls::TlsProtocol::V1_3)
        );
        for w in [json!("MURMUR_HASH_2"), json!("murmur_hash_2"), json!(1)] {
            let r: crate::cluster::RingHashLbConfig =
                from_value(json!({"hash_function": w})).unwrap();
            assert_eq!(
                r.hash_function,
                Some(crate::cluster::RingHashFunction::MurmurHash2)
            );
        }
    }

    #[test]
    fn integers_as_strings_and_integral_floats() {
        let limit = |v: serde_json::Value| json!({"circuit_breakers": {"thresholds": [{"max_connections": v}]}});
        let max_connections = |c: Cluster| c.circuit_breakers.unwrap().thresholds[0].max_connections;
        let mut m = limit(json!("4096"));
        m["name"] = json!("a");
        m["ring_hash_lb_config"] = json!({"minimum_ring_size": "18446744073709551615"});
        let c: Cluster = from_value(m).unwrap();
        assert_eq!(max_connections(c.clone()), Some(4096));
        assert_eq!(
            c.ring_hash_lb_config.unwrap().minimum_ring_size,
            Some(u64::MAX)
        );
        for ok in [json!(4096.0), json!("4e3"), json!("4096.0")] {
            let mut m = limit(ok);
            m["name"] = json!("a");
            let c: Cluster = from_value(m).unwrap();
            assert!(max_connections(c).is_some());
        }
        let p = "static_resources.clusters[0].circuit_breakers.thresholds[0].max_connections";
        for (bad, msg) in [
            (
                json!(4294967296u64),
                "value 4294967296 is out of range for uint32",
            ),
            (json!(-1), "value -1 is out of range for uint32"),
            (json!(4096.5), "expected an integer (uint32), got 4096.5"),
            (
                json!(" 4096"),
                "expected an integer (uint32), got \" 4096\"",
            ),
            (
                json!(true),
                "invalid type: boolean `true`, expected an integer (uint32)",
            ),
        ] {
            assert_eq!(
                error(cluster(limit(bad))),
                format!("{p}: {msg}")
            );
        }
    }

    #[test]
    fn bools_as_envoys_yaml_reader_reads_them() {
        for (w, want) in [
            ("yes", true),
            ("on", true),
            ("True", true),
            ("n", false),
            ("Off", false),
            ("false", false),
        ] {
            let c: Cluster = from_value(json!({"name": "a", "respect_dns_ttl": w})).unwrap();
            assert_eq!(c.respect_dns_ttl, want, "{w}");
        }
        assert!(
            error(cluster(json!({"respect_dns_ttl": 1}))).contains("expected 'true' or 'false'")
        );
        // Strings stay strings: a number is refused where a string is expected, as Envoy does.
        assert!(error(cluster(json!({"alt_stat_name": 123}))).contains("expected a string"));
    }

    #[test]
    fn durations_are_range_checked_never_panic() {
        let p = "static_resources.clusters[0].dns_refresh_rate";
        for (d, msg) in [
            (
                json!({"seconds": 18446744073709551615u64, "nanos": 1000000000}),
                "seconds: value 18446744073709551615 is out of range for int64",
            ),
            (
                json!({"seconds": 1, "nanos": 1000000000}),
                "Invalid duration: Duration out-of-range according to Protobuf",
            ),
            (
                json!({"seconds": 315576000001i64}),
                "Invalid duration: Duration out-of-range according to Protobuf",
            ),
            (
                json!({"seconds": 9223372036i64}),
                "Invalid duration: Duration out-of-range",
            ),
            (
                json!({"seconds": -1}),
                "Invalid duration: Expected positive duration",
            ),
            (
                json!({"seconds": 1, "nanos": -5}),
                "Invalid duration: Expected positive duration",
            ),
            (
                json!("-0.5s"),
                "Invalid duration: Expected positive duration",
            ),
            (
                json!("315576000001s"),
                "invalid duration \"315576000001s\": duration out of range",
            ),
            (
                json!({"nanos": 4294967296u64}),
                "nanos: value 4294967296 is out of range for int32",
            ),
            (
                json!({"seconds": 1, "minutes": 1}),
                "unknown field \"minutes\"",
            ),
        ] {
            let e = error(cluster(json!({"dns_refresh_rate": d})));
            let want = if msg.starts_with("seconds") || msg.starts_with("nanos") {
                format!("{p}.{msg}")
            } else {
                format!("{p}: {msg}")
            };
            assert_eq!(e, want, "{d}");
        }
        // The largest duration Envoy accepts, as a string of seconds in the object form.
        let c: Cluster = from_value(json!({"name": "a",
            "connect_timeout": {"seconds": "9223372035", "nanos": 999999999}}))
        .unwrap();
        assert_eq!(c.connect_timeout().as_secs(), 9_223_372_035);
    }
}
