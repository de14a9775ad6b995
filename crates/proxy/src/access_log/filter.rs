//! Access log filters (`envoy.config.accesslog.v3.AccessLogFilter`), also used by the
//! `local_reply_config` mappers: `status_code_filter`, `duration_filter`,
//! `not_health_check_filter`, `response_flag_filter`, `header_filter`, `runtime_filter`,
//! `and_filter`, `or_filter`. The others are refused by the config types.

use sluice_config::access_log::{
    AccessLogFilter, ComparisonFilter, ComparisonOp, DurationFilter, FilterList, FractionalPercent, HeaderFilter,
    NotHealthCheckFilter, ResponseFlagFilter, RuntimeFilter, RuntimeUInt32, StatusCodeFilter,
};

use super::runtime;
use crate::formatter::Context;
use crate::router::config::{header_matcher, HeaderMatcher, RouteRequest};
use crate::stream_info::ResponseFlags;

/// A compiled filter.
#[derive(Debug)]
pub enum Filter {
    StatusCode(Comparison),
    Duration(Comparison),
    NotHealthCheck,
    Runtime { key: String, default: FractionalPercent, independent: bool },
    And(Box<[Filter]>),
    Or(Box<[Filter]>),
    Header(HeaderMatcher),
    /// Any of these flags; an empty set matches any flag.
    ResponseFlags(ResponseFlags),
}

/// `ComparisonFilter`: the value is read from the runtime at evaluation, as Envoy does.
#[derive(Debug)]
pub struct Comparison {
    op: ComparisonOp,
    default: u32,
    key: String,
}

impl Comparison {
    fn build(c: &Option<ComparisonFilter>) -> Result<Comparison, (String, String)> {
        let Some(ComparisonFilter { op, value }) = c else {
            return Err(("comparison".into(), "value is required".into()));
        };
        let Some(RuntimeUInt32 { default_value, runtime_key }) = value else {
            return Err(("comparison.value".into(), "value is required".into()));
        };
        Ok(Comparison { op: *op, default: *default_value, key: runtime_key.clone() })
    }

    fn matches(&self, actual: u64) -> bool {
        let v = if self.key.is_empty() { self.default } else { runtime::u32(&self.key).unwrap_or(self.default) } as u64;
        match self.op {
            ComparisonOp::Ge => actual >= v,
            ComparisonOp::Eq => actual == v,
            ComparisonOp::Le => actual <= v,
            ComparisonOp::Ne => actual != v,
        }
    }
}

impl Filter {
    /// Compile; errors are (path relative to the filter, message).
    pub fn build(cfg: &AccessLogFilter) -> Result<Filter, (String, String)> {
        // The `NotSupported` fields (`traceable_filter`, `grpc_status_filter`, `extension_filter`,
        // `metadata_filter`, `log_type_filter`) are refused when the config is read.
        let AccessLogFilter {
            status_code_filter,
            duration_filter,
            not_health_check_filter,
            traceable_filter: _,
            runtime_filter,
            and_filter,
            or_filter,
            header_filter,
            response_flag_filter,
            grpc_status_filter: _,
            extension_filter: _,
            metadata_filter: _,
            log_type_filter: _,
        } = cfg;
        let set = [
            status_code_filter.is_some(),
            duration_filter.is_some(),
            not_health_check_filter.is_some(),
            runtime_filter.is_some(),
            and_filter.is_some(),
            or_filter.is_some(),
            header_filter.is_some(),
            response_flag_filter.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err((String::new(), "exactly one filter is required".into()));
        }
        fn at(p: &str) -> impl Fn((String, String)) -> (String, String) + '_ {
            move |(q, e)| (if q.is_empty() { p.to_string() } else { format!("{p}.{q}") }, e)
        }
        if let Some(StatusCodeFilter { comparison }) = status_code_filter {
            return Ok(Filter::StatusCode(Comparison::build(comparison).map_err(at("status_code_filter"))?));
        }
        if let Some(DurationFilter { comparison }) = duration_filter {
            return Ok(Filter::Duration(Comparison::build(comparison).map_err(at("duration_filter"))?));
        }
        if let Some(NotHealthCheckFilter {}) = not_health_check_filter {
            return Ok(Filter::NotHealthCheck);
        }
        if let Some(RuntimeFilter { runtime_key, percent_sampled, use_independent_randomness }) = runtime_filter {
            if runtime_key.is_empty() {
                return Err(("runtime_filter.runtime_key".into(), "value length must be at least 1 characters".into()));
            }
            let FractionalPercent { numerator, denominator } = percent_sampled.unwrap_or_default();
            return Ok(Filter::Runtime {
                key: runtime_key.clone(),
                default: FractionalPercent { numerator, denominator },
                independent: *use_independent_randomness,
            });
        }
        for (name, list, and) in [("and_filter", and_filter, true), ("or_filter", or_filter, false)] {
            if let Some(FilterList { filters }) = list {
                if filters.len() < 2 {
                    return Err((format!("{name}.filters"), "value must contain at least 2 item(s)".into()));
                }
                let mut built = Vec::with_capacity(filters.len());
                for (i, f) in filters.iter().enumerate() {
                    built.push(Filter::build(f).map_err(at(&format!("{name}.filters[{i}]")))?);
                }
                let built = built.into_boxed_slice();
                return Ok(if and { Filter::And(built) } else { Filter::Or(built) });
            }
        }
        if let Some(HeaderFilter { header }) = header_filter {
            let Some(h) = header else {
                return Err(("header_filter.header".into(), "value is required".into()));
            };
            return Ok(Filter::Header(header_matcher(h).map_err(|e| ("header_filter.header".to_string(), e))?));
        }
        if let Some(ResponseFlagFilter { flags }) = response_flag_filter {
            let mut set = ResponseFlags::empty();
            for (i, name) in flags.iter().enumerate() {
                match ResponseFlags::ALL.iter().find(|(_, short, _)| short == name) {
                    Some((f, _, _)) => set.insert(*f),
                    None => {
                        let all: Vec<&str> = ResponseFlags::ALL.iter().map(|(_, s, _)| *s).collect();
                        return Err((
                            format!("response_flag_filter.flags[{i}]"),
                            format!("value must be in list [{}]", all.join(" ")),
                        ));
                    }
                }
            }
            return Ok(Filter::ResponseFlags(set));
        }
        unreachable!("exactly one filter is set")
    }

    /// Whether the request is logged.
    pub fn evaluate(&self, ctx: &Context<'_>) -> bool {
        let info = ctx.info;
        match self {
            Filter::StatusCode(c) => c.matches(info.response_code.unwrap_or(0) as u64),
            Filter::Duration(c) => {
                let d = info.last_downstream_tx.unwrap_or_else(|| info.elapsed());
                c.matches(d.as_millis() as u64)
            }
            Filter::NotHealthCheck => !info.health_check,
            Filter::Runtime { key, default, independent } => {
                let percent = runtime::fractional_percent(key).unwrap_or(*default);
                let random = if *independent { None } else { request_id_integer(ctx) };
                let random = random.unwrap_or_else(rand::random::<u64>);
                let denominator = percent.denominator.value();
                random % denominator < percent.numerator as u64
            }
            Filter::And(list) => list.iter().all(|f| f.evaluate(ctx)),
            Filter::Or(list) => list.iter().any(|f| f.evaluate(ctx)),
            Filter::Header(m) => ctx.request.is_some_and(|r| {
                let authority = match r.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()) {
                    Some(h) => h,
                    None => r.uri.authority().map(|a| a.as_str()).unwrap_or(""),
                };
                let tls = if info.conn.tls.is_some() { "https" } else { "http" };
                m.matches(&RouteRequest {
                    host: authority,
                    authority,
                    path_and_query: r.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
                    method: r.method.as_str(),
                    scheme: r.uri.scheme_str().unwrap_or(tls),
                    headers: r.headers,
                })
            }),
            Filter::ResponseFlags(set) => {
                if set.is_empty() {
                    !info.response_flags.is_empty()
                } else {
                    info.response_flags.intersects(*set)
                }
            }
        }
    }
}

/// Envoy's UUID request id as an integer: its first 8 characters as hex.
fn request_id_integer(ctx: &Context<'_>) -> Option<u64> {
    let id = ctx.request?.headers.get("x-request-id")?.as_bytes();
    let first = std::str::from_utf8(id.get(..8)?).ok()?;
    u64::from_str_radix(first, 16).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use http::{HeaderMap, HeaderValue, Method, Uri, Version};

    use super::*;
    use crate::filters::ConnectionInfo;
    use crate::formatter::RequestView;
    use crate::stream_info::StreamInfo;

    fn filter(yaml: &str) -> Result<Filter, (String, String)> {
        Filter::build(&serde_yaml_ng::from_str::<AccessLogFilter>(yaml).unwrap())
    }

    fn info(code: u16, flags: ResponseFlags, ms: u64) -> StreamInfo {
        let c = Arc::new(ConnectionInfo::new("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), None));
        let mut si = StreamInfo::new(1, Version::HTTP_11, c);
        si.response_code = Some(code);
        si.set_flag(flags);
        si.last_downstream_tx = Some(Duration::from_millis(ms));
        si
    }

    #[test]
    fn comparisons_flags_and_combinations() {
        let si = info(404, ResponseFlags::NO_ROUTE_FOUND, 30);
        let ctx = Context::new(&si);
        let yes = |y: &str| filter(y).unwrap().evaluate(&ctx);
        assert!(yes("{status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: k}}}}"));
        assert!(!yes("{status_code_filter: {comparison: {op: LE, value: {default_value: 399}}}}"));
        assert!(yes("{status_code_filter: {comparison: {op: NE, value: {default_value: 200}}}}"));
        assert!(yes("{duration_filter: {comparison: {op: GE, value: {default_value: 30}}}}"));
        assert!(!yes("{duration_filter: {comparison: {op: EQ, value: {default_value: 31}}}}"));
        assert!(yes("{response_flag_filter: {flags: [UH, NR]}}"));
        assert!(!yes("{response_flag_filter: {flags: [UH]}}"));
        assert!(yes("{response_flag_filter: {}}"), "no list: any flag");
        assert!(yes("{not_health_check_filter: {}}"));
        assert!(!yes("{and_filter: {filters: [{not_health_check_filter: {}}, {response_flag_filter: {flags: [UH]}}]}}"));
        assert!(yes("{or_filter: {filters: [{not_health_check_filter: {}}, {response_flag_filter: {flags: [UH]}}]}}"));
        let ok = info(200, ResponseFlags::empty(), 1);
        assert!(!filter("{response_flag_filter: {}}").unwrap().evaluate(&Context::new(&ok)));
    }

    #[test]
    fn header_and_runtime_filters_read_the_request() {
        let si = info(200, ResponseFlags::empty(), 1);
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("00000031-0000-4000-8000-000000000000"));
        h.insert("x-env", HeaderValue::from_static("prod"));
        let (m, u) = (Method::GET, Uri::from_static("/"));
        let ctx = Context::new(&si).with_request(RequestView { method: &m, uri: &u, headers: &h });
        let f = filter("{header_filter: {header: {name: x-env, string_match: {exact: prod}}}}").unwrap();
        assert!(f.evaluate(&ctx));
        assert!(filter("{header_filter: {header: {name: ':path', string_match: {exact: /}}}}").unwrap().evaluate(&ctx));
        assert!(filter("{header_filter: {header: {name: ':method', string_match: {exact: GET}}}}").unwrap().evaluate(&ctx));
        assert!(!f.evaluate(&Context::new(&si)), "no request, no header");
        // 0x31 = 49 < 50: sampled; with 49 % it is not.
        assert!(filter("{runtime_filter: {runtime_key: a.b, percent_sampled: {numerator: 50}}}").unwrap().evaluate(&ctx));
        assert!(!filter("{runtime_filter: {runtime_key: a.b, percent_sampled: {numerator: 49}}}").unwrap().evaluate(&ctx));
        assert!(!filter("{runtime_filter: {runtime_key: a.b}}").unwrap().evaluate(&ctx), "default 0 %");
    }

    #[test]
    fn bad_filters_name_their_field() {
        let e = |y: &str| filter(y).expect_err(y);
        assert_eq!(e("{}").1, "exactly one filter is required");
        assert_eq!(e("{status_code_filter: {}}").0, "status_code_filter.comparison");
        assert_eq!(e("{runtime_filter: {runtime_key: ''}}").0, "runtime_filter.runtime_key");
        assert_eq!(e("{or_filter: {filters: [{not_health_check_filter: {}}, {response_flag_filter: {flags: [ZZ]}}]}}").0, "or_filter.filters[1].response_flag_filter.flags[0]");
        assert_eq!(e("{header_filter: {}}").0, "header_filter.header");
    }
}
