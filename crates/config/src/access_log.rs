//! `envoy.config.accesslog.v3` (access logs and their filters) and the access loggers sluice
//! runs: `envoy.access_loggers.file`, `envoy.access_loggers.stdout`, `envoy.access_loggers.stderr`.

use serde::{Deserialize, Serialize};

use crate::de::{typed_enum, NotSupported};
use crate::format::SubstitutionFormatString;
use crate::route::HeaderMatcher;

/// `envoy.config.accesslog.v3.AccessLog`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<AccessLogFilter>,
    pub typed_config: AccessLoggerConfig,
}

typed_enum! {
    pub enum AccessLoggerConfig {
        File(FileAccessLog) = "envoy.extensions.access_loggers.file.v3.FileAccessLog",
        Stdout(StreamAccessLog) = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        Stderr(StreamAccessLog) = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
    }
}

/// `envoy.extensions.access_loggers.file.v3.FileAccessLog`: `path` plus at most one of the
/// formats (`format`, `json_format`, `typed_json_format` are deprecated spellings Envoy 1.40
/// still accepts).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_json_format: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<SubstitutionFormatString>,
}

/// `envoy.extensions.access_loggers.stream.v3.StdoutAccessLog` / `StderrAccessLog`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamAccessLog {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<SubstitutionFormatString>,
}

/// `envoy.config.accesslog.v3.AccessLogFilter`: exactly one of the filters.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code_filter: Option<StatusCodeFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_filter: Option<DurationFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_health_check_filter: Option<NotHealthCheckFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceable_filter: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_filter: Option<RuntimeFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub and_filter: Option<FilterList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub or_filter: Option<FilterList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_filter: Option<HeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_flag_filter: Option<ResponseFlagFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status_filter: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_filter: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_filter: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_type_filter: Option<NotSupported>,
}

/// `envoy.config.accesslog.v3.ComparisonFilter`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonFilter {
    #[serde(default)]
    pub op: ComparisonOp,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<RuntimeUInt32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ComparisonOp {
    #[default]
    Ge,
    Eq,
    Le,
    Ne,
}

/// `envoy.config.core.v3.RuntimeUInt32`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeUInt32 {
    #[serde(default)]
    pub default_value: u32,
    #[serde(default)]
    pub runtime_key: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusCodeFilter {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<ComparisonFilter>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DurationFilter {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparison: Option<ComparisonFilter>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotHealthCheckFilter {}

/// `envoy.config.accesslog.v3.RuntimeFilter`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFilter {
    #[serde(default)]
    pub runtime_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_sampled: Option<FractionalPercent>,
    #[serde(default)]
    pub use_independent_randomness: bool,
}

/// `envoy.type.v3.FractionalPercent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercent {
    #[serde(default)]
    pub numerator: u32,
    #[serde(default)]
    pub denominator: DenominatorType,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DenominatorType {
    #[default]
    Hundred,
    TenThousand,
    Million,
}

impl DenominatorType {
    pub fn value(self) -> u64 {
        match self {
            DenominatorType::Hundred => 100,
            DenominatorType::TenThousand => 10_000,
            DenominatorType::Million => 1_000_000,
        }
    }
}

/// `and_filter` / `or_filter`: at least two filters.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterList {
    #[serde(default)]
    pub filters: Vec<AccessLogFilter>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderFilter {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatcher>,
}

/// `envoy.config.accesslog.v3.ResponseFlagFilter`: short flag names; empty matches any flag.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFlagFilter {
    #[serde(default)]
    pub flags: Vec<String>,
}
