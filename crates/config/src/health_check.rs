//! `envoy.config.core.v3.HealthCheck` (a cluster's active health checks) and the
//! `envoy.filters.http.health_check` HTTP filter
//! (`envoy.extensions.filters.http.health_check.v3.HealthCheck`), with their proto-validate rules
//! ([`check_cluster`], [`check_filter`]) and sluice's limits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::core::{Duration, HeaderValueOption, Percent, StringMatcher};
use crate::de::NotSupported;
use crate::route::{HeaderMatcher, Int64Range};

/// `envoy.config.core.v3.HealthCheck`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Required, > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Required, > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_jitter: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_jitter: Option<Duration>,
    #[serde(default)]
    pub interval_jitter_percent: u32,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_port: Option<NotSupported>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_connection: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_health_check: Option<HttpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_health_check: Option<TcpHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_health_check: Option<GrpcHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_health_check: Option<NotSupported>,
    /// Default 60 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_traffic_interval: Option<Duration>,
    /// Default `no_traffic_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_traffic_healthy_interval: Option<Duration>,
    /// Default `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_interval: Option<Duration>,
    /// Default `unhealthy_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_edge_interval: Option<Duration>,
    /// Default `interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_edge_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_logger: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_service: Option<NotSupported>,
    /// What the event log records (every failure, not only the first); without an event log
    /// (`event_log_path`, `event_logger`) it has no effect, in Envoy as in sluice.
    #[serde(default)]
    pub always_log_health_check_failures: bool,
    /// What the event log records (every success); no effect without an event log.
    #[serde(default)]
    pub always_log_health_check_success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_options: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_socket_match_criteria: Option<NotSupported>,
}

impl HealthCheck {
    /// Which checker the `health_checker` oneof selects.
    pub fn kind(&self) -> Option<HealthCheckKind<'_>> {
        match (
            &self.http_health_check,
            &self.tcp_health_check,
            &self.grpc_health_check,
        ) {
            (Some(h), None, None) => Some(HealthCheckKind::Http(h)),
            (None, Some(t), None) => Some(HealthCheckKind::Tcp(t)),
            (None, None, Some(g)) => Some(HealthCheckKind::Grpc(g)),
            _ => None,
        }
    }
}

/// The `health_checker` oneof.
#[derive(Debug, Clone, Copy)]
pub enum HealthCheckKind<'a> {
    Http(&'a HttpHealthCheck),
    Tcp(&'a TcpHealthCheck),
    Grpc(&'a GrpcHealthCheck),
}

/// `HealthCheck.Payload`: hex `text` or base64 `binary`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Base64 (proto3 JSON `bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
}

impl Payload {
    /// The payload's bytes (`text` is hex, `binary` base64).
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.text, &self.binary) {
            (Some(t), None) => decode_hex(t),
            (None, Some(b)) => crate::core::base64_decode(b)
                .ok_or_else(|| "binary is not valid base64".to_string()),
            _ => Err("exactly one of text, binary is required".to_string()),
        }
    }
}

/// Hex text (`"000000FF"`, case-insensitive, even length) to bytes.
pub fn decode_hex(s: &str) -> Result<Vec<u8>, String> {
    if s.is_empty() {
        return Err("value length must be at least 1 characters".to_string());
    }
    if !s.len().is_multiple_of(2) {
        return Err(format!("invalid hex string \"{s}\": odd length"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16)
                .map_err(|_| format!("invalid hex string \"{s}\""))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CodecClientType {
    #[default]
    Http1,
    Http2,
    Http3,
}

/// `envoy.config.core.v3.RequestMethod`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestMethod {
    /// GET.
    #[default]
    MethodUnspecified,
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl RequestMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MethodUnspecified | Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
        }
    }
}

/// `HealthCheck.HttpHealthCheck`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHealthCheck {
    /// Host header; default the cluster's name.
    #[serde(default)]
    pub host: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Payload>,
    #[serde(default)]
    pub receive: Vec<Payload>,
    /// How many response body bytes `receive` is matched against (default 1024; 0: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_buffer_size: Option<u64>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOption>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub expected_statuses: Vec<Int64Range>,
    #[serde(default)]
    pub retriable_statuses: Vec<Int64Range>,
    #[serde(default)]
    pub codec_client_type: CodecClientType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name_matcher: Option<StringMatcher>,
    #[serde(default)]
    pub method: RequestMethod,
}

/// `HealthCheck.TcpHealthCheck`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Payload>,
    #[serde(default)]
    pub receive: Vec<Payload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol_config: Option<NotSupported>,
}

/// `HealthCheck.GrpcHealthCheck`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcHealthCheck {
    #[serde(default)]
    pub service_name: String,
    /// `:authority`; default the cluster's name.
    #[serde(default)]
    pub authority: String,
    #[serde(default)]
    pub initial_metadata: Vec<HeaderValueOption>,
}

/// `envoy.extensions.filters.http.health_check.v3.HealthCheck`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFilter {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_through_mode: Option<bool>,
    /// Needs the filter's response phase (to cache the upstream's answer), which sluice's
    /// filter chain does not have yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_time: Option<NotSupported>,
    #[serde(default)]
    pub cluster_min_healthy_percentages: BTreeMap<String, Percent>,
    #[serde(default)]
    pub headers: Vec<HeaderMatcher>,
}

/// Envoy's interval defaults and rules, resolved.
impl HealthCheck {
    pub fn no_traffic_interval(&self) -> std::time::Duration {
        self.no_traffic_interval
            .map(Duration::as_std)
            .unwrap_or(std::time::Duration::from_secs(60))
    }
}

fn range_errors(path: &str, ranges: &[Int64Range], kind: &str, out: &mut Vec<(String, String)>) {
    for (i, r) in ranges.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if r.start >= r.end {
            out.push((p, format!("Invalid http {kind} status range: expecting start < end, but found start={} and end={}", r.start, r.end)));
        } else if r.start < 100 {
            out.push((
                p,
                format!(
                    "Invalid http {kind} status range: expecting start >= 100, but found start={}",
                    r.start
                ),
            ));
        } else if r.end > 600 {
            out.push((
                p,
                format!(
                    "Invalid http {kind} status range: expecting end <= 600, but found end={}",
                    r.end
                ),
            ));
        }
    }
}

fn header_value_errors(path: &str, headers: &[HeaderValueOption], out: &mut Vec<(String, String)>) {
    for (i, h) in headers.iter().enumerate() {
        let value = h.header.raw_value.as_deref().unwrap_or(&h.header.value);
        if value.replace("%%", "").contains('%') {
            out.push((
                format!("{path}[{i}].header.value"),
                "formatter commands (%…%) in health check headers are not supported by sluice"
                    .to_string(),
            ));
        }
    }
}

/// The proto-validate and Envoy rules for a cluster's `health_checks` and `outlier_detection`,
/// as `(path relative to the cluster, message)`.
pub fn check_cluster(c: &Cluster) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if c.health_checks.len() > 1 {
        out.push((
            "health_checks[1]".to_string(),
            "sluice runs one health check per cluster".to_string(),
        ));
    }
    for (i, hc) in c.health_checks.iter().enumerate() {
        let p = |f: &str| format!("health_checks[{i}].{f}");
        for (f, v) in [("timeout", hc.timeout), ("interval", hc.interval)] {
            match v {
                None => out.push((p(f), "value is required".to_string())),
                Some(d) if d.is_zero() => {
                    out.push((p(f), "value must be greater than 0s".to_string()))
                }
                _ => {}
            }
        }
        for (f, v) in [
            ("unhealthy_threshold", hc.unhealthy_threshold),
            ("healthy_threshold", hc.healthy_threshold),
        ] {
            if v.is_none() {
                out.push((p(f), "value is required".to_string()));
            }
        }
        for (f, v) in [
            ("no_traffic_interval", hc.no_traffic_interval),
            (
                "no_traffic_healthy_interval",
                hc.no_traffic_healthy_interval,
            ),
            ("unhealthy_interval", hc.unhealthy_interval),
            ("unhealthy_edge_interval", hc.unhealthy_edge_interval),
            ("healthy_edge_interval", hc.healthy_edge_interval),
        ] {
            if v.is_some_and(|d| d.is_zero()) {
                out.push((p(f), "value must be greater than 0s".to_string()));
            }
        }
        let set = [
            hc.http_health_check.is_some(),
            hc.tcp_health_check.is_some(),
            hc.grpc_health_check.is_some(),
        ];
        match set.iter().filter(|s| **s).count() {
            0 => out.push((
                format!("health_checks[{i}]"),
                "one of http_health_check, tcp_health_check, grpc_health_check, custom_health_check is required".to_string(),
            )),
            1 => {}
            _ => out.push((
                format!("health_checks[{i}]"),
                "only one of http_health_check, tcp_health_check, grpc_health_check, custom_health_check may be set".to_string(),
            )),
        }
        if let Some(h) = &hc.http_health_check {
            let hp = |f: &str| p(&format!("http_health_check.{f}"));
            if h.path.is_empty() {
                out.push((
                    hp("path"),
                    "value length must be at least 1 characters".to_string(),
                ));
            }
            if h.codec_client_type == CodecClientType::Http3 {
                out.push((
                    hp("codec_client_type"),
                    "value \"HTTP3\" is recognised but not supported by sluice".to_string(),
                ));
            }
            if h.method == RequestMethod::Connect {
                out.push((
                    hp("method"),
                    "value must not be in list [CONNECT]".to_string(),
                ));
            }
            if let Some(s) = &h.send {
                match s.bytes() {
                    Err(e) => out.push((hp("send"), e)),
                    Ok(_) if matches!(
                        h.method,
                        RequestMethod::MethodUnspecified | RequestMethod::Get | RequestMethod::Head | RequestMethod::Delete | RequestMethod::Trace
                    ) =>
                    {
                        out.push((
                            hp("send"),
                            format!(
                                "HTTP health check cannot specify a request payload with method '{}'. Only methods that support a request body (POST, PUT, PATCH, OPTIONS) can be used with payload.",
                                h.method.as_str()
                            ),
                        ))
                    }
                    Ok(_) => {}
                }
            }
            let mut total = 0usize;
            for (k, r) in h.receive.iter().enumerate() {
                match r.bytes() {
                    Ok(b) => total += b.len(),
                    Err(e) => out.push((hp(&format!("receive[{k}]")), e)),
                }
            }
            let buffer = h.response_buffer_size.unwrap_or(1024);
            if buffer != 0 && total as u64 > buffer {
                out.push((
                    hp("receive"),
                    format!("The expected response length '{total}' is over than http health response buffer size '{buffer}'"),
                ));
            }
            range_errors(
                &hp("expected_statuses"),
                &h.expected_statuses,
                "expected",
                &mut out,
            );
            range_errors(
                &hp("retriable_statuses"),
                &h.retriable_statuses,
                "retriable",
                &mut out,
            );
            header_value_errors(
                &hp("request_headers_to_add"),
                &h.request_headers_to_add,
                &mut out,
            );
            if let Some(m) = &h.service_name_matcher {
                if m.pattern().is_none() {
                    out.push((
                        hp("service_name_matcher"),
                        "exactly one of exact, prefix, suffix, contains, safe_regex is required"
                            .to_string(),
                    ));
                }
            }
        }
        if let Some(t) = &hc.tcp_health_check {
            if let Some(s) = &t.send {
                if let Err(e) = s.bytes() {
                    out.push((p("tcp_health_check.send"), e));
                }
            }
            for (k, r) in t.receive.iter().enumerate() {
                if let Err(e) = r.bytes() {
                    out.push((p(&format!("tcp_health_check.receive[{k}]")), e));
                }
            }
        }
        if let Some(g) = &hc.grpc_health_check {
            header_value_errors(
                &p("grpc_health_check.initial_metadata"),
                &g.initial_metadata,
                &mut out,
            );
        }
    }
    if let Some(od) = &c.outlier_detection {
        let p = |f: &str| format!("outlier_detection.{f}");
        for (f, v) in [
            ("interval", od.interval),
            ("base_ejection_time", od.base_ejection_time),
            ("max_ejection_time", od.max_ejection_time),
        ] {
            if v.is_some_and(|d| d.is_zero()) {
                out.push((p(f), "value must be greater than 0s".to_string()));
            }
        }
        for (f, v) in [
            ("max_ejection_percent", od.max_ejection_percent),
            ("enforcing_consecutive_5xx", od.enforcing_consecutive_5xx),
            ("enforcing_success_rate", od.enforcing_success_rate),
            (
                "enforcing_consecutive_gateway_failure",
                od.enforcing_consecutive_gateway_failure,
            ),
            (
                "enforcing_consecutive_local_origin_failure",
                od.enforcing_consecutive_local_origin_failure,
            ),
            (
                "enforcing_local_origin_success_rate",
                od.enforcing_local_origin_success_rate,
            ),
            (
                "failure_percentage_threshold",
                od.failure_percentage_threshold,
            ),
            (
                "enforcing_failure_percentage",
                od.enforcing_failure_percentage,
            ),
            (
                "enforcing_failure_percentage_local_origin",
                od.enforcing_failure_percentage_local_origin,
            ),
        ] {
            if v.is_some_and(|v| v > 100) {
                out.push((p(f), "value must be less than or equal to 100".to_string()));
            }
        }
        let base = od
            .base_ejection_time
            .map(Duration::as_std)
            .unwrap_or(std::time::Duration::from_secs(30));
        if let Some(max) = od.max_ejection_time {
            if max.as_std() < base {
                out.push((
                    "outlier_detection".to_string(),
                    "outlier detector's max_ejection_time cannot be smaller than base_ejection_time".to_string(),
                ));
            }
        }
    }
    if let Some(lb) = &c.common_lb_config {
        if let Some(t) = &lb.healthy_panic_threshold {
            if !(0.0..=100.0).contains(&t.value) {
                out.push((
                    "common_lb_config.healthy_panic_threshold.value".to_string(),
                    "value must be inside range [0, 100]".to_string(),
                ));
            }
        }
    }
    out
}

/// The rules of the health-check HTTP filter's config, as `(path relative to typed_config,
/// message)`.
pub fn check_filter(f: &HealthCheckFilter) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if f.pass_through_mode.is_none() {
        out.push((
            "pass_through_mode".to_string(),
            "value is required".to_string(),
        ));
    }
    for (name, pct) in &f.cluster_min_healthy_percentages {
        if !(0.0..=100.0).contains(&pct.value) {
            out.push((
                format!("cluster_min_healthy_percentages.{name}.value"),
                "value must be inside range [0, 100]".to_string(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_payloads() {
        assert_eq!(decode_hex("000000FF").unwrap(), vec![0, 0, 0, 255]);
        assert_eq!(decode_hex("6f6B").unwrap(), b"ok");
        assert!(decode_hex("abc").is_err());
        assert!(decode_hex("zz").is_err());
        assert!(decode_hex("").is_err());
        let p = Payload {
            binary: Some("b2s=".into()),
            ..Default::default()
        };
        assert_eq!(p.bytes().unwrap(), b"ok");
        assert!(Payload::default().bytes().is_err());
    }

    fn cluster(v: serde_json::Value) -> Cluster {
        crate::de::from_value(v).expect("cluster")
    }

    #[test]
    fn cluster_rules_name_their_paths() {
        let c = cluster(serde_json::json!({
            "name": "c",
            "health_checks": [{"interval": "0s", "http_health_check": {"path": "", "expected_statuses": [{"start": 300, "end": 200}]},
                               "tcp_health_check": {}}],
            "outlier_detection": {"max_ejection_percent": 101, "base_ejection_time": "10s", "max_ejection_time": "5s"},
            "common_lb_config": {"healthy_panic_threshold": {"value": 150}}
        }));
        let errs = check_cluster(&c);
        let has = |p: &str, m: &str| errs.iter().any(|(ep, em)| ep == p && em.contains(m));
        assert!(
            has("health_checks[0].timeout", "value is required"),
            "{errs:?}"
        );
        assert!(has("health_checks[0].interval", "greater than 0s"));
        assert!(has("health_checks[0].unhealthy_threshold", "required"));
        assert!(has("health_checks[0]", "only one of"));
        assert!(has("health_checks[0].http_health_check.path", "at least 1"));
        assert!(has(
            "health_checks[0].http_health_check.expected_statuses[0]",
            "start < end"
        ));
        assert!(has(
            "outlier_detection.max_ejection_percent",
            "less than or equal to 100"
        ));
        assert!(has(
            "outlier_detection",
            "max_ejection_time cannot be smaller"
        ));
        assert!(has(
            "common_lb_config.healthy_panic_threshold.value",
            "[0, 100]"
        ));
    }

    #[test]
    fn a_good_health_check_passes() {
        let c = cluster(serde_json::json!({
            "name": "c",
            "health_checks": [{"timeout": "1s", "interval": "2s", "unhealthy_threshold": 2, "healthy_threshold": 1,
                               "http_health_check": {"path": "/hc", "method": "POST", "send": {"text": "6f6b"},
                                                     "receive": [{"text": "6f6b"}]}}]
        }));
        assert_eq!(check_cluster(&c), vec![]);
        let f: HealthCheckFilter =
            crate::de::from_value(serde_json::json!({"pass_through_mode": false})).unwrap();
        assert!(check_filter(&f).is_empty());
        let f: HealthCheckFilter = crate::de::from_value(serde_json::json!({})).unwrap();
        assert_eq!(
            check_filter(&f),
            vec![("pass_through_mode".into(), "value is required".into())]
        );
    }
}
