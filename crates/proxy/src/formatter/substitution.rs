//! A compiled `SubstitutionFormatString`: a text format or a JSON format, with
//! `omit_empty_values` and the `content_type` a local reply body gets.
//!
//! * Text: the format as is (no newline is added); missing values are `-`, or nothing with
//!   `omit_empty_values`.
//! * JSON: one object per line (`\n` added), keys sorted at every level; a string value that is
//!   exactly one operator keeps its type, other strings are formatted as text; numbers, booleans
//!   and nulls of the config are copied. With `omit_empty_values`, `null` values are dropped from
//!   objects and lists, and so are objects left empty.

use sluice_config::format::{JsonFormatOptions, SubstitutionFormatString};

use crate::config_audit::{refused_at_load, without_effect};

use super::json;
use super::{Context, Format, Typed};

/// Envoy's default access log format.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

#[derive(Debug, Clone, PartialEq)]
enum Body {
    Text(Format),
    Json(Template),
}

/// A value of a `json_format`.
#[derive(Debug, Clone, PartialEq)]
enum Template {
    Format(Format),
    Number(f64),
    Bool(bool),
    Null,
    List(Box<[Template]>),
    /// Sorted by key.
    Object(Box<[(Box<str>, Template)]>),
}

/// A compiled substitution format string.
#[derive(Debug, Clone, PartialEq)]
pub struct FormatString {
    body: Body,
    omit_empty_values: bool,
    content_type: Option<String>,
}

/// A build error: (path relative to the format string, message).
pub type BuildError = (String, String);

impl FormatString {
    /// Compile a `SubstitutionFormatString`.
    pub fn build(cfg: &SubstitutionFormatString) -> Result<FormatString, BuildError> {
        let SubstitutionFormatString {
            text_format,
            json_format,
            text_format_source,
            omit_empty_values,
            content_type,
            formatters,
            json_format_options,
        } = cfg;
        // Formatter extensions are refused by the config types (any element is an error).
        refused_at_load(formatters);
        if let Some(JsonFormatOptions { sort_properties }) = json_format_options {
            without_effect(sort_properties, "deprecated; Envoy 1.40 always sorts the keys of a JSON log line");
        }
        let body = match (text_format, text_format_source, json_format) {
            (Some(t), None, None) => Body::Text(Format::parse(t).map_err(|e| ("text_format".to_string(), e))?),
            (None, Some(ds), None) => {
                let bytes = crate::data_source::load(ds).map_err(|e| ("text_format_source".to_string(), e))?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| ("text_format_source".to_string(), "the format is not UTF-8".to_string()))?;
                Body::Text(Format::parse(&text).map_err(|e| ("text_format_source".to_string(), e))?)
            }
            (None, None, Some(map)) => Body::Json(template_object(map, "json_format")?),
            _ => {
                return Err((
                    String::new(),
                    "exactly one of text_format, text_format_source, json_format is required".to_string(),
                ))
            }
        };
        Ok(FormatString { body, omit_empty_values: *omit_empty_values, content_type: content_type.clone().filter(|c| !c.is_empty()) })
    }

    /// A text format.
    pub fn text(format: &str, omit_empty_values: bool) -> Result<FormatString, String> {
        Ok(FormatString { body: Body::Text(Format::parse(format)?), omit_empty_values, content_type: None })
    }

    /// A JSON format from a `google.protobuf.Struct`; errors carry a path under `path`.
    pub fn json(map: &serde_json::Map<String, serde_json::Value>, omit_empty_values: bool, path: &str) -> Result<FormatString, BuildError> {
        Ok(FormatString { body: Body::Json(template_object(map, path)?), omit_empty_values, content_type: None })
    }

    /// Envoy's default access log format.
    pub fn default_access_log() -> FormatString {
        FormatString::text(DEFAULT_ACCESS_LOG_FORMAT, false).expect("the default format parses")
    }

    /// `content_type`, else `text/plain` or `application/json`.
    pub fn content_type(&self) -> &str {
        match (&self.content_type, &self.body) {
            (Some(c), _) => c,
            (None, Body::Text(_)) => "text/plain",
            (None, Body::Json(_)) => "application/json",
        }
    }

    pub fn is_json(&self) -> bool {
        matches!(self.body, Body::Json(_))
    }

    /// Append the formatted output.
    pub fn write(&self, ctx: &Context<'_>, out: &mut Vec<u8>) {
        let missing: &[u8] = if self.omit_empty_values { b"" } else { b"-" };
        match &self.body {
            Body::Text(f) => f.write_text(ctx, missing, out),
            Body::Json(t) => {
                if !render(t, ctx, self.omit_empty_values, missing, out) {
                    out.extend_from_slice(b"{}");
                }
                out.push(b'\n');
            }
        }
    }

    pub fn format(&self, ctx: &Context<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write(ctx, &mut out);
        out
    }
}

fn template_object(map: &serde_json::Map<String, serde_json::Value>, path: &str) -> Result<Template, BuildError> {
    let mut fields = Vec::with_capacity(map.len());
    for (k, v) in map {
        fields.push((k.as_str().into(), template(v, &format!("{path}.{k}"))?));
    }
    fields.sort_by(|a: &(Box<str>, Template), b| a.0.cmp(&b.0));
    Ok(Template::Object(fields.into_boxed_slice()))
}

fn template(v: &serde_json::Value, path: &str) -> Result<Template, BuildError> {
    use serde_json::Value;
    Ok(match v {
        Value::String(s) => Template::Format(Format::parse(s).map_err(|e| (path.to_string(), e))?),
        Value::Number(n) => Template::Number(n.as_f64().unwrap_or(0.0)),
        Value::Bool(b) => Template::Bool(*b),
        Value::Null => Template::Null,
        Value::Array(items) => Template::List(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| template(item, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?
                .into_boxed_slice(),
        ),
        Value::Object(map) => template_object(map, path)?,
    })
}

/// Write one value; `false` (and nothing written) when `omit` drops it.
fn render(t: &Template, ctx: &Context<'_>, omit: bool, missing: &[u8], out: &mut Vec<u8>) -> bool {
    match t {
        Template::Null => {
            if omit {
                return false;
            }
            out.extend_from_slice(b"null");
        }
        Template::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Template::Number(n) => json::write_number(out, *n),
        Template::Format(f) => match f.typed(ctx, missing) {
            Typed::Null => {
                if omit {
                    return false;
                }
                out.extend_from_slice(b"null");
            }
            Typed::Bytes(b) => json::write_str(out, &b),
            Typed::Number(n) => json::write_number(out, n),
            Typed::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Typed::Json(v) => {
                if omit && *v == serde_json::Value::Null {
                    return false;
                }
                json::write_value(out, &v);
            }
        },
        Template::List(items) => {
            out.push(b'[');
            let mut first = true;
            for item in items.iter() {
                let mark = out.len();
                if !first {
                    out.push(b',');
                }
                if render(item, ctx, omit, missing, out) {
                    first = false;
                } else {
                    out.truncate(mark);
                }
            }
            out.push(b']');
        }
        Template::Object(fields) => {
            let start = out.len();
            out.push(b'{');
            let mut first = true;
            for (k, v) in fields.iter() {
                let mark = out.len();
                if !first {
                    out.push(b',');
                }
                json::write_str(out, k.as_bytes());
                out.push(b':');
                if render(v, ctx, omit, missing, out) {
                    first = false;
                } else {
                    out.truncate(mark);
                }
            }
            if omit && first {
                out.truncate(start);
                return false;
            }
            out.push(b'}');
        }
    }
    true
}
