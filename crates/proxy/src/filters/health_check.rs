//! `envoy.filters.http.health_check`: answer (or pass through) the health checks of the proxy's
//! own callers, as Envoy does.
//!
//! A request is a health check when it matches every `headers` matcher (`:path`, `:method`,
//! `:authority`, `:scheme` are matched as pseudo-headers). Then:
//!
//! * after `/healthcheck/fail` it is answered `503` (in both modes);
//! * without `pass_through_mode` it is answered here: `200`, or `503` when a cluster of
//!   `cluster_min_healthy_percentages` is missing, empty (unless its minimum is 0) or has fewer
//!   than that percentage of its hosts healthy or degraded;
//! * with `pass_through_mode` it goes on to the router;
//!
//! and its response carries `x-envoy-upstream-healthchecked-cluster: <node.cluster>`. Every other
//! response carries `x-envoy-immediate-health-check-fail: true` while `/healthcheck/fail` is in
//! effect, which makes Envoy (and sluice) peers exclude this proxy at once.

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::Request;
use regex::Regex;
use sluice_config::core::StringPattern;
use sluice_config::health_check::HealthCheckFilter as Config;
use sluice_config::route::HeaderMatcher as HeaderMatcherConfig;

use super::{BoxFuture, FilterContext, FilterFactoryContext, FilterOutcome, HttpFilter};
use crate::body::Body;
use crate::http::local_reply::LocalReply;
use crate::stats::Counter;
use crate::upstream::ClusterManager;

static HEALTHCHECKED_CLUSTER: HeaderName = HeaderName::from_static("x-envoy-upstream-healthchecked-cluster");
static IMMEDIATE_FAIL: HeaderName = HeaderName::from_static("x-envoy-immediate-health-check-fail");

#[derive(Debug)]
enum Value {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(Regex),
    Range(i64, i64),
    Present(bool),
}

impl Value {
    fn matches(&self, v: &str) -> bool {
        let eq = |a: &str, b: &str, ic: bool| if ic { a.eq_ignore_ascii_case(b) } else { a == b };
        match self {
            Value::Exact(s, ic) => eq(v, s, *ic),
            Value::Prefix(s, ic) => v.len() >= s.len() && v.is_char_boundary(s.len()) && eq(&v[..s.len()], s, *ic),
            Value::Suffix(s, ic) => v.len() >= s.len() && v.is_char_boundary(v.len() - s.len()) && eq(&v[v.len() - s.len()..], s, *ic),
            Value::Contains(s, ic) => {
                if *ic {
                    v.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
                } else {
                    v.contains(s.as_str())
                }
            }
            Value::Regex(r) => r.is_match(v),
            Value::Range(a, b) => v.parse::<i64>().is_ok_and(|x| x >= *a && x < *b),
            Value::Present(p) => *p,
        }
    }
}

/// One compiled `headers` entry.
#[derive(Debug)]
struct Matcher {
    name: String,
    value: Value,
    invert: bool,
    missing_as_empty: bool,
}

fn full_regex(r: &str) -> anyhow::Result<Regex> {
    Regex::new(&format!("^(?:{r})$")).map_err(|e| anyhow::anyhow!("invalid regex \"{r}\": {e}"))
}

impl Matcher {
    fn build(h: &HeaderMatcherConfig) -> anyhow::Result<Matcher> {
        let HeaderMatcherConfig {
            name,
            exact_match,
            safe_regex_match,
            range_match,
            present_match,
            prefix_match,
            suffix_match,
            contains_match,
            string_match,
            invert_match,
            treat_missing_header_as_empty,
        } = h;
        let value = if let Some(m) = string_match {
            let ic = m.ignore_case;
            match m.pattern().ok_or_else(|| anyhow::anyhow!("string_match needs exactly one pattern"))? {
                StringPattern::Exact(s) => Value::Exact(s.into(), ic),
                StringPattern::Prefix(s) => Value::Prefix(s.into(), ic),
                StringPattern::Suffix(s) => Value::Suffix(s.into(), ic),
                StringPattern::Contains(s) => Value::Contains(s.into(), ic),
                StringPattern::Regex(r) => Value::Regex(full_regex(&if ic { format!("(?i){r}") } else { r.to_string() })?),
            }
        } else if let Some(s) = exact_match {
            Value::Exact(s.clone(), false)
        } else if let Some(s) = prefix_match {
            Value::Prefix(s.clone(), false)
        } else if let Some(s) = suffix_match {
            Value::Suffix(s.clone(), false)
        } else if let Some(s) = contains_match {
            Value::Contains(s.clone(), false)
        } else if let Some(r) = safe_regex_match {
            Value::Regex(full_regex(&r.regex)?)
        } else if let Some(r) = range_match {
            Value::Range(r.start, r.end)
        } else {
            Value::Present(present_match.unwrap_or(true))
        };
        Ok(Matcher { name: name.to_ascii_lowercase(), value, invert: *invert_match, missing_as_empty: *treat_missing_header_as_empty })
    }

    fn matches(&self, req: &Request<Body>) -> bool {
        let pseudo;
        let values: Vec<&str> = match self.name.as_str() {
            ":path" => {
                pseudo = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
                vec![pseudo.as_str()]
            }
            ":method" => vec![req.method().as_str()],
            ":authority" => req.headers().get(http::header::HOST).and_then(|v| v.to_str().ok()).into_iter().collect(),
            ":scheme" => req.uri().scheme_str().into_iter().collect(),
            n => req.headers().get_all(n).iter().filter_map(|v| v.to_str().ok()).collect(),
        };
        let result = if values.is_empty() {
            match self.value {
                Value::Present(p) => !p,
                _ if self.missing_as_empty => self.value.matches(""),
                // A missing header never matches, even inverted.
                _ => return false,
            }
        } else {
            match self.value {
                Value::Present(p) => p,
                _ => self.value.matches(&values.join(",")),
            }
        };
        result != self.invert
    }
}

pub struct HealthCheckFilter {
    pass_through: bool,
    matchers: Vec<Matcher>,
    /// `(cluster, minimum percent)`; only used without pass-through (as Envoy).
    min_healthy: Vec<(String, f64)>,
    clusters: Arc<ClusterManager>,
    local_cluster: HeaderValue,
    server_name: HeaderValue,
    stats: FilterStats,
}

/// `http.<prefix>.health_check.*`.
struct FilterStats {
    request_total: Counter,
    ok: Counter,
    failed: Counter,
    failed_cluster_not_found: Counter,
    failed_cluster_empty: Counter,
    failed_cluster_unhealthy: Counter,
}

/// Why the filter answers 503.
enum Unhealthy {
    ClusterNotFound,
    ClusterEmpty,
    ClusterUnhealthy,
}

impl HealthCheckFilter {
    pub fn build(cfg: &Config, ctx: &FilterFactoryContext<'_>) -> anyhow::Result<Self> {
        let Config { pass_through_mode, cache_time: None, cluster_min_healthy_percentages, headers } = cfg else {
            anyhow::bail!("cache_time is not supported by sluice");
        };
        let pass_through = pass_through_mode.ok_or_else(|| anyhow::anyhow!("pass_through_mode: value is required"))?;
        Ok(HealthCheckFilter {
            pass_through,
            matchers: headers.iter().map(Matcher::build).collect::<anyhow::Result<_>>()?,
            min_healthy: if pass_through {
                Vec::new()
            } else {
                cluster_min_healthy_percentages.iter().map(|(k, v)| (k.clone(), v.value)).collect()
            },
            clusters: ctx.clusters.clone(),
            local_cluster: HeaderValue::from_str(ctx.clusters.local_cluster_name())
                .map_err(|_| anyhow::anyhow!("node.cluster is not a valid header value"))?,
            server_name: ctx.server_name.clone(),
            stats: {
                let c = |n: &str| ctx.stats.counter(format!("{}health_check.{n}", ctx.stat_prefix));
                // Envoy shows these two too; sluice has no cache and no degraded answer.
                c("cached_response");
                c("degraded");
                FilterStats {
                    request_total: c("request_total"),
                    ok: c("ok"),
                    failed: c("failed"),
                    failed_cluster_not_found: c("failed_cluster_not_found"),
                    failed_cluster_empty: c("failed_cluster_empty"),
                    failed_cluster_unhealthy: c("failed_cluster_unhealthy"),
                }
            },
        })
    }

    /// The answer without pass-through: 200, or 503 when a cluster is below its minimum.
    fn status(&self) -> u16 {
        match self.cluster_check() {
            None => 200,
            Some(why) => {
                match why {
                    Unhealthy::ClusterNotFound => self.stats.failed_cluster_not_found.inc(),
                    Unhealthy::ClusterEmpty => self.stats.failed_cluster_empty.inc(),
                    Unhealthy::ClusterUnhealthy => self.stats.failed_cluster_unhealthy.inc(),
                }
                503
            }
        }
    }

    /// The first cluster below its minimum healthy percentage, and why.
    fn cluster_check(&self) -> Option<Unhealthy> {
        for (name, min) in &self.min_healthy {
            let Some(c) = self.clusters.get(name) else { return Some(Unhealthy::ClusterNotFound) };
            let s = c.stats();
            let total = s.membership_total.value().max(0) as u64;
            let min = *min as u64;
            if total == 0 {
                if min == 0 {
                    continue;
                }
                return Some(Unhealthy::ClusterEmpty);
            }
            let available = (s.membership_healthy.value() + s.membership_degraded.value()).max(0) as u64;
            if 100 * available < total * min {
                return Some(Unhealthy::ClusterUnhealthy);
            }
        }
        None
    }
}

impl HttpFilter for HealthCheckFilter {
    fn on_request<'a>(&'a self, req: &'a mut Request<Body>, ctx: &'a mut FilterContext) -> BoxFuture<'a, FilterOutcome> {
        Box::pin(async move {
            let failed = self.clusters.healthcheck_failed();
            if !self.matchers.iter().all(|m| m.matches(req)) {
                if failed {
                    ctx.response_headers_to_add.push((IMMEDIATE_FAIL.clone(), HeaderValue::from_static("true")));
                }
                return FilterOutcome::Continue;
            }
            ctx.health_check = true;
            self.stats.request_total.inc();
            if self.pass_through && !failed {
                ctx.response_headers_to_add.push((HEALTHCHECKED_CLUSTER.clone(), self.local_cluster.clone()));
                return FilterOutcome::Continue;
            }
            let status = if failed { 503 } else { self.status() };
            if status == 200 {
                self.stats.ok.inc();
            } else {
                self.stats.failed.inc();
            }
            // Envoy's order: the filter's headers first, then the connection manager's.
            let mut reply = LocalReply::new(status).header(HEALTHCHECKED_CLUSTER.clone(), self.local_cluster.clone());
            if failed {
                reply = reply.header(IMMEDIATE_FAIL.clone(), HeaderValue::from_static("true"));
            }
            FilterOutcome::Respond(reply.build(&self.server_name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(v: serde_json::Value) -> Matcher {
        Matcher::build(&serde_json::from_value(v).unwrap()).unwrap()
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
        let mut b = Request::builder().uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn matchers_see_pseudo_headers() {
        assert!(matcher(serde_json::json!({"name": ":path", "string_match": {"exact": "/healthz"}})).matches(&req("/healthz", &[])));
        assert!(!matcher(serde_json::json!({"name": ":path", "exact_match": "/healthz"})).matches(&req("/healthz?x=1", &[])));
        assert!(matcher(serde_json::json!({"name": ":method", "exact_match": "GET"})).matches(&req("/", &[])));
        assert!(matcher(serde_json::json!({"name": "x-hc"})).matches(&req("/", &[("x-hc", "1")])));
        assert!(!matcher(serde_json::json!({"name": "x-hc"})).matches(&req("/", &[])));
        assert!(matcher(serde_json::json!({"name": "x-hc", "present_match": false})).matches(&req("/", &[])));
        assert!(matcher(serde_json::json!({"name": "user-agent", "prefix_match": "Envoy/HC"}))
            .matches(&req("/", &[("user-agent", "Envoy/HC")])));
        assert!(!matcher(serde_json::json!({"name": "x-a", "exact_match": "b", "invert_match": true})).matches(&req("/", &[])));
        assert!(matcher(serde_json::json!({"name": "x-a", "safe_regex_match": {"regex": "a+"}, "invert_match": true}))
            .matches(&req("/", &[("x-a", "b")])));
    }
}
