//! `envoy.config.core.v3.SubstitutionFormatString` and the HTTP connection manager's
//! `local_reply_config` (`LocalReplyConfig`, `ResponseMapper`): the configuration of Envoy's
//! substitution formatter wherever a format is configured (access logs, local reply bodies).
//!
//! The format strings themselves (`%REQ(…)%` command operators) are parsed by the proxy when it
//! builds its runtime objects; an error there names the path of the field it came from.

use serde::{Deserialize, Serialize};

use crate::access_log::AccessLogFilter;
use crate::core::{DataSource, HeaderValueOption};
use crate::de::NotSupported;

/// `envoy.config.core.v3.SubstitutionFormatString`: exactly one of `text_format`, `json_format`,
/// `text_format_source`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubstitutionFormatString {
    /// Deprecated in favour of `text_format_source`, still widely used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format: Option<String>,
    /// A `google.protobuf.Struct`: string values are formats, other values are copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_format_source: Option<DataSource>,
    #[serde(default)]
    pub omit_empty_values: bool,
    /// The `content-type` of a local reply body with this format (default `text/plain` for text,
    /// `application/json` for JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Formatter extensions (`envoy.formatter.*`): none is supported; an empty list is fine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formatters: Vec<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format_options: Option<JsonFormatOptions>,
}

/// The format of a [`SubstitutionFormatString`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FormatKind<'a> {
    Text(&'a str),
    TextSource(&'a DataSource),
    Json(&'a serde_json::Map<String, serde_json::Value>),
}

impl SubstitutionFormatString {
    /// The one format; `None` when zero or several are set.
    pub fn kind(&self) -> Option<FormatKind<'_>> {
        let all = [
            self.text_format.as_deref().map(FormatKind::Text),
            self.text_format_source.as_ref().map(FormatKind::TextSource),
            self.json_format.as_ref().map(FormatKind::Json),
        ];
        let mut set = all.into_iter().flatten();
        let first = set.next()?;
        set.next().is_none().then_some(first)
    }
}

/// `envoy.config.core.v3.JsonFormatOptions`. Envoy 1.40 always sorts the keys of a JSON log
/// line; `sort_properties` (deprecated) is accepted and changes nothing there either.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonFormatOptions {
    #[serde(default)]
    pub sort_properties: bool,
}

/// `envoy.extensions.filters.network.http_connection_manager.v3.LocalReplyConfig`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalReplyConfig {
    #[serde(default)]
    pub mappers: Vec<ResponseMapper>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_format: Option<SubstitutionFormatString>,
}

/// `envoy.extensions.filters.network.http_connection_manager.v3.ResponseMapper`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseMapper {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_format_override: Option<SubstitutionFormatString>,
    #[serde(default)]
    pub headers_to_add: Vec<HeaderValueOption>,
}
