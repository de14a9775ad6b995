//! Retries as Envoy's router makes them: the compiled `retry_policy` (route over virtual host),
//! the conditions of `retry_on` / `x-envoy-retry-on` / `x-envoy-retry-grpc-on`, the per-request
//! retry state (retries left, the cluster's `max_retries` circuit breaker, the retry stats) and
//! the fully jittered exponential back-off.
//!
//! A route without a retry policy never builds any of this: the router only looks here when
//! the route has a policy or a request header asks for retries.

use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use sluice_config::route as cfg;

use super::config::{header_matcher, HeaderMatcher, RouteRequest};
use crate::body::Body;
use crate::upstream::{Cluster, RetryGuard, UpstreamFailure};

/// `retry_on` condition bits.
pub mod on {
    pub const X5XX: u32 = 1 << 0;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const CONNECT_FAILURE: u32 = 1 << 2;
    pub const RETRIABLE_4XX: u32 = 1 << 3;
    pub const REFUSED_STREAM: u32 = 1 << 4;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 5;
    pub const RETRIABLE_HEADERS: u32 = 1 << 6;
    pub const RESET: u32 = 1 << 7;
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 8;
    pub const ENVOY_RATE_LIMITED: u32 = 1 << 9;
    pub const GRPC_CANCELLED: u32 = 1 << 10;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 11;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 12;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 13;
    pub const GRPC_INTERNAL: u32 = 1 << 14;
    pub const GRPC_ANY: u32 = GRPC_CANCELLED | GRPC_DEADLINE_EXCEEDED | GRPC_RESOURCE_EXHAUSTED | GRPC_UNAVAILABLE | GRPC_INTERNAL;
}

/// The HTTP conditions (`x-envoy-retry-on` values).
const HTTP_CONDITIONS: &[(&str, u32)] = &[
    ("5xx", on::X5XX),
    ("gateway-error", on::GATEWAY_ERROR),
    ("connect-failure", on::CONNECT_FAILURE),
    ("envoy-ratelimited", on::ENVOY_RATE_LIMITED),
    ("retriable-4xx", on::RETRIABLE_4XX),
    ("refused-stream", on::REFUSED_STREAM),
    ("retriable-status-codes", on::RETRIABLE_STATUS_CODES),
    ("retriable-headers", on::RETRIABLE_HEADERS),
    ("reset", on::RESET),
    ("reset-before-request", on::RESET_BEFORE_REQUEST),
];

/// The gRPC conditions (`x-envoy-retry-grpc-on` values).
const GRPC_CONDITIONS: &[(&str, u32)] = &[
    ("cancelled", on::GRPC_CANCELLED),
    ("deadline-exceeded", on::GRPC_DEADLINE_EXCEEDED),
    ("resource-exhausted", on::GRPC_RESOURCE_EXHAUSTED),
    ("unavailable", on::GRPC_UNAVAILABLE),
    ("internal", on::GRPC_INTERNAL),
];

/// Envoy conditions sluice does not implement (refused at load).
const UNSUPPORTED_CONDITIONS: &[&str] = &["http3-post-connect-failure"];

fn lookup(table: &[(&str, u32)], token: &str) -> Option<u32> {
    table.iter().find(|(n, _)| *n == token).map(|(_, b)| *b)
}

/// The bits of a request header's comma-separated list; unknown values are ignored (Envoy).
pub fn parse_header(value: &[u8], grpc: bool) -> u32 {
    let table = if grpc { GRPC_CONDITIONS } else { HTTP_CONDITIONS };
    let Ok(s) = std::str::from_utf8(value) else { return 0 };
    s.split(',').map(str::trim).filter_map(|t| lookup(table, t)).fold(0, |a, b| a | b)
}

/// A config `retry_on`: HTTP and gRPC conditions together. An unknown or unsupported condition
/// is an error.
pub fn parse_config(value: &str) -> Result<u32, String> {
    let mut bits = 0;
    for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if let Some(b) = lookup(HTTP_CONDITIONS, token).or_else(|| lookup(GRPC_CONDITIONS, token)) {
            bits |= b;
        } else if UNSUPPORTED_CONDITIONS.contains(&token) {
            return Err(format!("\"{token}\": recognised but not supported by sluice"));
        } else {
            return Err(format!("unknown retry condition \"{token}\""));
        }
    }
    Ok(bits)
}

/// Envoy's default back-off base (`upstream.base_retry_backoff_ms`).
pub const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// A compiled `retry_policy`.
#[derive(Debug)]
pub struct RetryPolicy {
    pub retry_on: u32,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    /// `per_try_idle_timeout`: an attempt with no upstream activity for this long ends as a
    /// per-try timeout (before the response headers) or is cut (while its body streams).
    pub per_try_idle_timeout: Option<Duration>,
    /// `envoy.retry_host_predicates.previous_hosts`.
    pub previous_hosts: bool,
    /// Extra host picks when the predicate rejects a host (`host_selection_retry_max_attempts` − 1).
    pub host_reselections: u32,
    pub retriable_status_codes: Vec<u16>,
    pub retriable_headers: Vec<HeaderMatcher>,
    pub retriable_request_headers: Vec<HeaderMatcher>,
    pub base_interval: Duration,
    pub max_interval: Duration,
    /// `rate_limited_retry_back_off`.
    pub rate_limited: Option<RateLimitedBackOff>,
}

/// A compiled `rate_limited_retry_back_off`: the reset headers in order, and the longest
/// interval accepted from them.
#[derive(Debug)]
pub struct RateLimitedBackOff {
    pub reset_headers: Vec<(http::HeaderName, cfg::ResetHeaderFormat)>,
    pub max_interval: Duration,
}

impl RateLimitedBackOff {
    /// The interval the first usable reset header of `headers` asks for: an integer of seconds
    /// (`SECONDS`) or a Unix time in seconds after `now_unix` (`UNIX_TIMESTAMP`), at most
    /// `max_interval`; headers that do not parse, ask for a past time or too long a wait are
    /// skipped.
    pub fn interval(&self, headers: &HeaderMap, now_unix: Duration) -> Option<Duration> {
        self.reset_headers.iter().find_map(|(name, format)| {
            let secs: u64 = headers.get(name)?.to_str().ok()?.parse().ok()?;
            let at = Duration::from_secs(secs);
            let interval = match format {
                cfg::ResetHeaderFormat::Seconds => at,
                cfg::ResetHeaderFormat::UnixTimestamp => at.checked_sub(now_unix).filter(|d| !d.is_zero())?,
            };
            (interval <= self.max_interval).then_some(interval)
        })
    }
}

/// Envoy's jittered lower-bound back-off: a random value in `[interval, 1.5 × interval)`, in
/// whole milliseconds.
fn jittered_lower_bound(interval: Duration, random: u64) -> Duration {
    let ms = interval.as_millis() as u64;
    Duration::from_millis(ms + random % (ms / 2).max(1))
}

const NOT_SUPPORTED: &str = "recognised but not supported by sluice";
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

impl RetryPolicy {
    /// Compile a policy; errors are `(path relative to the policy, message)`.
    pub fn build(p: &cfg::RetryPolicy) -> Result<RetryPolicy, (String, String)> {
        let cfg::RetryPolicy {
            retry_on,
            num_retries,
            per_try_timeout,
            per_try_idle_timeout,
            retry_priority: None,
            retry_host_predicate,
            retry_options_predicates: None,
            host_selection_retry_max_attempts,
            retriable_status_codes,
            retry_back_off,
            rate_limited_retry_back_off,
            retriable_headers,
            retriable_request_headers,
        } = p
        else {
            let field = if p.retry_priority.is_some() { "retry_priority" } else { "retry_options_predicates" };
            return Err((field.to_string(), NOT_SUPPORTED.to_string()));
        };
        let retry_on = match retry_on {
            Some(s) => parse_config(s).map_err(|e| ("retry_on".to_string(), e))?,
            None => 0,
        };
        let mut previous_hosts = false;
        for (i, h) in retry_host_predicate.iter().enumerate() {
            let cfg::RetryHostPredicate { name, typed_config } = h;
            match typed_config {
                Some(cfg::RetryHostPredicateConfig::PreviousHosts(cfg::PreviousHostsPredicate {})) => previous_hosts = true,
                None if name == PREVIOUS_HOSTS => previous_hosts = true,
                None => return Err((format!("retry_host_predicate[{i}].name"), format!("\"{name}\": {NOT_SUPPORTED}"))),
            }
        }
        let mut codes = Vec::with_capacity(retriable_status_codes.len());
        for (i, c) in retriable_status_codes.iter().enumerate() {
            match u16::try_from(*c) {
                Ok(c) if (100..600).contains(&c) => codes.push(c),
                _ => return Err((format!("retriable_status_codes[{i}]"), format!("{c} is not an HTTP status code"))),
            }
        }
        let matchers = |list: &[cfg::HeaderMatcher], field: &str| -> Result<Vec<HeaderMatcher>, (String, String)> {
            list.iter().enumerate().map(|(i, h)| header_matcher(h).map_err(|e| (format!("{field}[{i}]"), e))).collect()
        };
        let (base_interval, max_interval) = match retry_back_off {
            Some(cfg::RetryBackOff { base_interval, max_interval }) => {
                let base = base_interval.as_std();
                if base < Duration::from_millis(1) {
                    return Err(("retry_back_off.base_interval".into(), "value must be at least 1ms".into()));
                }
                let max = match max_interval {
                    Some(m) => {
                        let m = m.as_std();
                        if m < Duration::from_millis(1) {
                            return Err(("retry_back_off.max_interval".into(), "value must be at least 1ms".into()));
                        }
                        if m < base {
                            return Err(("retry_back_off.max_interval".into(), "max_interval must be greater than or equal to the base_interval".into()));
                        }
                        m
                    }
                    None => base * 10,
                };
                (base, max)
            }
            None => (DEFAULT_BASE_INTERVAL, DEFAULT_BASE_INTERVAL * 10),
        };
        let attempts = host_selection_retry_max_attempts.unwrap_or(1);
        let rate_limited = match rate_limited_retry_back_off {
            Some(b) => Some(rate_limited_back_off(b)?),
            None => None,
        };
        Ok(RetryPolicy {
            retry_on,
            num_retries: num_retries.unwrap_or(1),
            per_try_timeout: per_try_timeout.map(|d| d.as_std()).filter(|d| !d.is_zero()),
            per_try_idle_timeout: per_try_idle_timeout.map(|d| d.as_std()).filter(|d| !d.is_zero()),
            previous_hosts,
            host_reselections: attempts.clamp(1, 1000) as u32 - 1,
            retriable_status_codes: codes,
            retriable_headers: matchers(retriable_headers, "retriable_headers")?,
            retriable_request_headers: matchers(retriable_request_headers, "retriable_request_headers")?,
            base_interval,
            max_interval,
            rate_limited,
        })
    }
}

fn rate_limited_back_off(b: &cfg::RateLimitedRetryBackOff) -> Result<RateLimitedBackOff, (String, String)> {
    let cfg::RateLimitedRetryBackOff { reset_headers, max_interval } = b;
    if reset_headers.is_empty() {
        return Err(("rate_limited_retry_back_off.reset_headers".into(), "value must contain at least 1 item(s)".into()));
    }
    let mut headers = Vec::with_capacity(reset_headers.len());
    for (i, h) in reset_headers.iter().enumerate() {
        let cfg::ResetHeader { name, format } = h;
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) if !name.is_empty() => headers.push((n, *format)),
            _ => {
                return Err((
                    format!("rate_limited_retry_back_off.reset_headers[{i}].name"),
                    format!("\"{name}\" is not a valid HTTP header name"),
                ))
            }
        }
    }
    let max_interval = match max_interval {
        Some(d) if d.as_std().is_zero() => {
            return Err(("rate_limited_retry_back_off.max_interval".into(), "value must be greater than 0s".into()))
        }
        Some(d) => d.as_std(),
        None => Duration::from_secs(300),
    };
    Ok(RateLimitedBackOff { reset_headers: headers, max_interval })
}

/// Header matching outside routing (request or response headers; no pseudo-headers).
fn matches_any(list: &[HeaderMatcher], headers: &HeaderMap) -> bool {
    let req = RouteRequest { host: "", authority: "", path_and_query: "", method: "", scheme: "", headers };
    list.iter().any(|m| m.matches(&req))
}

/// Envoy's answer to "retry?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStatus {
    /// Retry after this back-off.
    Yes(Duration),
    /// The outcome is not retriable.
    No,
    /// Retriable, but the retries are used up (`URX`).
    LimitExceeded,
    /// Retriable, but the cluster's `max_retries` circuit breaker is open (`UO`).
    Overflow,
}

/// Why an attempt ended without response headers, as the retry conditions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// Connecting failed (refused, timeout): `connect-failure`, before the request started.
    ConnectFailure,
    /// The upstream reset or closed after the request started.
    Reset,
    /// A circuit breaker overflow: never retried.
    Overflow,
    /// The per-try timeout expired (a local reset).
    PerTryTimeout,
    /// An HTTP/2 upstream refused the stream (`REFUSED_STREAM`): `refused-stream`, and any
    /// condition that retries resets.
    RefusedStream,
}

impl ResetKind {
    pub fn of(f: &UpstreamFailure) -> ResetKind {
        match f {
            UpstreamFailure::Overflow | UpstreamFailure::NoHealthyUpstream => ResetKind::Overflow,
            UpstreamFailure::ConnectionFailure { .. } | UpstreamFailure::ConnectTimeout => ResetKind::ConnectFailure,
            UpstreamFailure::ConnectionTermination | UpstreamFailure::ProtocolError => ResetKind::Reset,
            UpstreamFailure::RemoteReset { refused: false } => ResetKind::Reset,
            UpstreamFailure::RemoteReset { refused: true } => ResetKind::RefusedStream,
        }
    }
}

/// One request's retry state.
pub struct RetryState {
    policy: Option<Arc<RetryPolicy>>,
    retry_on: u32,
    remaining: u32,
    /// The back-off exponent (Envoy's `current_retry_`, from 1).
    backoff_step: u32,
    base: Duration,
    max: Duration,
    /// Held from a "yes" until the next decision (Envoy's retry resource).
    armed: Option<RetryGuard>,
    /// The interval the last retriable response asked for (`rate_limited_retry_back_off`).
    rate_limited: Option<Duration>,
}

impl RetryState {
    /// The state for a request, or `None` when nothing can be retried (no policy, no header).
    /// Reads and removes `x-envoy-retry-on`, `x-envoy-retry-grpc-on`, `x-envoy-max-retries`.
    pub fn new(policy: Option<&Arc<RetryPolicy>>, headers: &mut HeaderMap) -> Option<RetryState> {
        let has_headers = headers.contains_key("x-envoy-retry-on")
            || headers.contains_key("x-envoy-retry-grpc-on")
            || headers.contains_key("x-envoy-max-retries");
        if policy.is_none() && !has_headers {
            return None;
        }
        let mut retry_on = policy.map_or(0, |p| p.retry_on);
        let mut remaining = policy.map_or(1, |p| p.num_retries);
        if has_headers {
            if let Some(v) = headers.get("x-envoy-retry-on") {
                retry_on |= parse_header(v.as_bytes(), false);
            }
            if let Some(v) = headers.get("x-envoy-retry-grpc-on") {
                retry_on |= parse_header(v.as_bytes(), true);
            }
        }
        if let Some(p) = policy {
            if !p.retriable_request_headers.is_empty() && !matches_any(&p.retriable_request_headers, headers) {
                retry_on = 0;
            }
        }
        if retry_on != 0 {
            if let Some(n) = headers.get("x-envoy-max-retries").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok()) {
                remaining = n;
            }
        }
        if has_headers {
            crate::http::headers::remove_ordered(headers, |n| {
                matches!(n.as_str(), "x-envoy-retry-on" | "x-envoy-retry-grpc-on" | "x-envoy-max-retries")
            });
        }
        let (base, max) = policy.map_or((DEFAULT_BASE_INTERVAL, DEFAULT_BASE_INTERVAL * 10), |p| (p.base_interval, p.max_interval));
        Some(RetryState { policy: policy.cloned(), retry_on, remaining, backoff_step: 1, base, max, armed: None, rate_limited: None })
    }

    pub fn policy(&self) -> Option<&Arc<RetryPolicy>> {
        self.policy.as_ref()
    }

    /// Whether a response with these headers is retriable. A retriable one's reset headers
    /// set the next back-off when the policy has `rate_limited_retry_back_off`.
    pub fn would_retry_response(&mut self, status: u16, headers: &HeaderMap) -> bool {
        let retry = self.response_condition(status, headers);
        self.rate_limited = None;
        if retry {
            if let Some(r) = self.policy.as_ref().and_then(|p| p.rate_limited.as_ref()) {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                // Envoy uses the reset interval only when it is longer than 1 ms.
                self.rate_limited = r.interval(headers, now).filter(|d| *d > Duration::from_millis(1));
            }
        }
        retry
    }

    fn response_condition(&self, status: u16, headers: &HeaderMap) -> bool {
        let on = self.retry_on;
        if headers.contains_key("x-envoy-ratelimited") {
            return on & on::ENVOY_RATE_LIMITED != 0;
        }
        if on & on::X5XX != 0 && (500..600).contains(&status) {
            return true;
        }
        if on & on::GATEWAY_ERROR != 0 && matches!(status, 502..=504) {
            return true;
        }
        if on & on::RETRIABLE_4XX != 0 && status == 409 {
            return true;
        }
        if on & on::RETRIABLE_STATUS_CODES != 0 && self.policy.as_ref().is_some_and(|p| p.retriable_status_codes.contains(&status)) {
            return true;
        }
        if on & on::RETRIABLE_HEADERS != 0 && self.policy.as_ref().is_some_and(|p| matches_any(&p.retriable_headers, headers)) {
            return true;
        }
        if on & on::GRPC_ANY != 0 {
            let grpc = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u32>().ok());
            let bit = match grpc {
                Some(1) => on::GRPC_CANCELLED,
                Some(4) => on::GRPC_DEADLINE_EXCEEDED,
                Some(8) => on::GRPC_RESOURCE_EXHAUSTED,
                Some(13) => on::GRPC_INTERNAL,
                Some(14) => on::GRPC_UNAVAILABLE,
                _ => 0,
            };
            if on & bit != 0 {
                return true;
            }
        }
        false
    }

    /// Whether an attempt that ended without response headers is retriable.
    pub fn would_retry_reset(&mut self, kind: ResetKind) -> bool {
        self.rate_limited = None;
        let on = self.retry_on;
        match kind {
            ResetKind::Overflow => false,
            ResetKind::ConnectFailure => {
                on & (on::CONNECT_FAILURE | on::RESET_BEFORE_REQUEST | on::X5XX | on::GATEWAY_ERROR | on::RESET) != 0
            }
            ResetKind::Reset | ResetKind::PerTryTimeout => on & (on::X5XX | on::GATEWAY_ERROR | on::RESET) != 0,
            ResetKind::RefusedStream => on & (on::REFUSED_STREAM | on::X5XX | on::GATEWAY_ERROR | on::RESET) != 0,
        }
    }

    /// Envoy's `shouldRetry`: counts `upstream_rq_retry_success` when the attempt after a retry
    /// is not retriable, `upstream_rq_retry_limit_exceeded`, `upstream_rq_retry_overflow`,
    /// `upstream_rq_retry` and `upstream_rq_retry_backoff_exponential`.
    pub fn should_retry(&mut self, would_retry: bool, cluster: &Cluster) -> RetryStatus {
        let stats = cluster.retry_stats();
        if self.armed.is_some() && !would_retry {
            stats.upstream_rq_retry_success.inc();
        }
        self.armed = None;
        if !would_retry {
            return RetryStatus::No;
        }
        if self.remaining == 0 {
            stats.upstream_rq_retry_limit_exceeded.inc();
            return RetryStatus::LimitExceeded;
        }
        self.remaining -= 1;
        let Some(guard) = cluster.try_retry() else {
            stats.upstream_rq_retry_overflow.inc();
            return RetryStatus::Overflow;
        };
        self.armed = Some(guard);
        stats.upstream_rq_retry.inc();
        if let Some(interval) = self.rate_limited.take() {
            stats.upstream_rq_retry_backoff_ratelimited.inc();
            return RetryStatus::Yes(jittered_lower_bound(interval, rand::random::<u64>()));
        }
        stats.upstream_rq_retry_backoff_exponential.inc();
        RetryStatus::Yes(self.next_backoff(rand::random::<u64>()))
    }

    /// Fully jittered exponential back-off: a random value below `(2^n − 1) × base`, at most
    /// `max`; `n` grows while the ceiling is below `max`.
    fn next_backoff(&mut self, random: u64) -> Duration {
        let base_ms = self.base.as_millis().max(1) as u64;
        let max_ms = self.max.as_millis() as u64;
        let multiplier = (1u64 << self.backoff_step.min(62)) - 1;
        let ceiling = multiplier.saturating_mul(base_ms);
        if ceiling <= max_ms {
            self.backoff_step += 1;
        }
        Duration::from_millis((random % ceiling.max(1)).min(max_ms))
    }
}

/// A request body kept in memory so each attempt can send it again.
pub struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// Read `body` to its end when it fits in `limit` bytes (`Ok(Ok(_))`); a larger body comes
    /// back as a body that replays what was read and then streams the rest (`Ok(Err(_))`).
    /// `Err(())` when the body failed (the client went away).
    pub async fn read(mut body: Body, limit: usize) -> Result<Result<Replay, Body>, ()> {
        use http_body_util::BodyExt;
        if http_body::Body::is_end_stream(&body) {
            return Ok(Ok(Replay { data: Bytes::new(), trailers: None }));
        }
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut size = 0usize;
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ())?;
            match frame.into_data() {
                Ok(d) => {
                    size += d.len();
                    chunks.push(d);
                    if size > limit {
                        return Ok(Err(Body::boxed(Prefixed { head: chunks.into(), rest: body })));
                    }
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
        }
        let data = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut b = bytes::BytesMut::with_capacity(size);
                for c in &chunks {
                    b.extend_from_slice(c);
                }
                b.freeze()
            }
        };
        Ok(Ok(Replay { data, trailers }))
    }

    /// A fresh body with the same bytes (and trailers).
    pub fn body(&self) -> Body {
        match &self.trailers {
            None => Body::full(self.data.clone()),
            Some(t) => Body::boxed(WithTrailers { data: Some(self.data.clone()).filter(|d| !d.is_empty()), trailers: Some(t.clone()) }),
        }
    }
}

/// Bytes then trailers.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(d) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// The chunks already read, then the rest of the body.
struct Prefixed {
    head: std::collections::VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(d) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(yaml: serde_json::Value) -> Result<Arc<RetryPolicy>, (String, String)> {
        let p: cfg::RetryPolicy = serde_json::from_value(yaml).unwrap();
        RetryPolicy::build(&p).map(Arc::new)
    }

    #[test]
    fn config_conditions_parse_and_unknown_ones_fail() {
        let p = policy(serde_json::json!({"retry_on": "5xx, reset,connect-failure,unavailable"})).unwrap();
        assert_eq!(p.retry_on, on::X5XX | on::RESET | on::CONNECT_FAILURE | on::GRPC_UNAVAILABLE);
        assert_eq!(p.num_retries, 1);
        assert_eq!((p.base_interval, p.max_interval), (Duration::from_millis(25), Duration::from_millis(250)));
        let (path, e) = policy(serde_json::json!({"retry_on": "5xx,bogus"})).unwrap_err();
        assert_eq!(path, "retry_on");
        assert!(e.contains("bogus"), "{e}");
        let (_, e) = policy(serde_json::json!({"retry_on": "http3-post-connect-failure"})).unwrap_err();
        assert!(e.contains("not supported by sluice"), "{e}");
    }

    #[test]
    fn host_predicates_and_back_off_are_checked() {
        let p = policy(serde_json::json!({"retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts"}],
            "host_selection_retry_max_attempts": 3, "retry_back_off": {"base_interval": "0.1s"}}))
        .unwrap();
        assert!(p.previous_hosts);
        assert_eq!(p.host_reselections, 2);
        assert_eq!(p.max_interval, Duration::from_secs(1));
        let (path, _) = policy(serde_json::json!({"retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]})).unwrap_err();
        assert_eq!(path, "retry_host_predicate[0].name");
        let (path, _) = policy(serde_json::json!({"retry_back_off": {"base_interval": "1s", "max_interval": "0.5s"}})).unwrap_err();
        assert_eq!(path, "retry_back_off.max_interval");
        let (path, _) = policy(serde_json::json!({"retriable_status_codes": [700]})).unwrap_err();
        assert_eq!(path, "retriable_status_codes[0]");
    }

    fn state(p: Option<&Arc<RetryPolicy>>, headers: &[(&'static str, &'static str)]) -> (Option<RetryState>, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_static(v));
        }
        (RetryState::new(p, &mut h), h)
    }

    #[test]
    fn request_headers_merge_and_are_removed() {
        let (s, h) = state(None, &[]);
        assert!(s.is_none() && h.is_empty(), "no policy, no header: no state");
        let (s, h) = state(None, &[("x-envoy-retry-on", "gateway-error"), ("x-envoy-max-retries", "4"), ("x-keep", "1")]);
        let s = s.unwrap();
        assert_eq!((s.retry_on, s.remaining), (on::GATEWAY_ERROR, 4));
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
        let p = policy(serde_json::json!({"retry_on": "5xx", "num_retries": 2, "retriable_request_headers": [{"name": ":method", "exact_match": "GET"}, {"name": "x-retry"}]})).unwrap();
        let (s, _) = state(Some(&p), &[("x-envoy-retry-grpc-on", "cancelled")]);
        assert_eq!(s.unwrap().retry_on, 0, "no retriable request header matched");
        let (s, _) = state(Some(&p), &[("x-retry", "y"), ("x-envoy-retry-grpc-on", "cancelled, nonsense")]);
        let s = s.unwrap();
        assert_eq!((s.retry_on, s.remaining), (on::X5XX | on::GRPC_CANCELLED, 2));
    }

    #[test]
    fn response_and_reset_conditions() {
        let p = policy(serde_json::json!({"retry_on": "retriable-status-codes,retriable-headers,retriable-4xx,deadline-exceeded",
            "retriable_status_codes": [418], "retriable_headers": [{"name": "x-again"}]}))
        .unwrap();
        let (s, _) = state(Some(&p), &[]);
        let mut s = s.unwrap();
        let mut h = HeaderMap::new();
        assert!(s.would_retry_response(418, &h));
        assert!(s.would_retry_response(409, &h));
        assert!(!s.would_retry_response(503, &h));
        h.insert("grpc-status", HeaderValue::from_static("4"));
        assert!(s.would_retry_response(200, &h));
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert!(!s.would_retry_response(200, &h));
        h.insert("x-again", HeaderValue::from_static("1"));
        assert!(s.would_retry_response(200, &h));
        h.insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
        assert!(!s.would_retry_response(418, &h), "rate limited responses need envoy-ratelimited");
        assert!(!s.would_retry_reset(ResetKind::Reset));

        let p = policy(serde_json::json!({"retry_on": "connect-failure"})).unwrap();
        let mut s = state(Some(&p), &[]).0.unwrap();
        assert!(s.would_retry_reset(ResetKind::ConnectFailure));
        assert!(!s.would_retry_reset(ResetKind::Reset));
        assert!(!s.would_retry_reset(ResetKind::PerTryTimeout));
        let p = policy(serde_json::json!({"retry_on": "reset-before-request"})).unwrap();
        let mut s = state(Some(&p), &[]).0.unwrap();
        assert!(s.would_retry_reset(ResetKind::ConnectFailure));
        assert!(!s.would_retry_reset(ResetKind::Reset));
        let p = policy(serde_json::json!({"retry_on": "gateway-error"})).unwrap();
        let mut s = state(Some(&p), &[]).0.unwrap();
        assert!(s.would_retry_reset(ResetKind::PerTryTimeout) && s.would_retry_reset(ResetKind::Reset));
        assert!(!s.would_retry_reset(ResetKind::Overflow));
        assert!(s.would_retry_response(504, &HeaderMap::new()) && !s.would_retry_response(500, &HeaderMap::new()));
    }

    #[test]
    fn back_off_is_fully_jittered_and_capped() {
        let p = policy(serde_json::json!({"retry_on": "5xx", "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.05s"}})).unwrap();
        let mut s = state(Some(&p), &[]).0.unwrap();
        // Ceilings: 10, 30, 70→capped at 50, then stays capped.
        assert_eq!(s.next_backoff(9), Duration::from_millis(9));
        assert_eq!(s.next_backoff(30), Duration::from_millis(0), "below the second ceiling, 30 ms");
        let mut s = state(Some(&p), &[]).0.unwrap();
        assert_eq!(s.next_backoff(u64::MAX), Duration::from_millis(u64::MAX % 10));
        assert_eq!(s.next_backoff(29), Duration::from_millis(29));
        assert_eq!(s.next_backoff(69), Duration::from_millis(50), "capped at max_interval");
        assert_eq!(s.next_backoff(69), Duration::from_millis(50));
        for r in 0..1000u64 {
            assert!(s.next_backoff(r.wrapping_mul(0x9e37_79b9_7f4a_7c15)) <= Duration::from_millis(50));
        }
    }

    async fn collect(b: Body) -> (Vec<u8>, Option<HeaderMap>) {
        use http_body_util::BodyExt;
        let c = b.collect().await.unwrap();
        let t = c.trailers().cloned();
        (c.to_bytes().to_vec(), t)
    }

    #[tokio::test]
    async fn bodies_replay_within_the_limit_and_stream_once_beyond_it() {
        let body = || {
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                vec![Ok(Frame::data(Bytes::from_static(b"abc"))), Ok(Frame::data(Bytes::from_static(b"def")))];
            Body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(chunks)))
        };
        let r = Replay::read(body(), 6).await.unwrap().expect("fits");
        assert_eq!(collect(r.body()).await.0, b"abcdef");
        assert_eq!(collect(r.body()).await.0, b"abcdef", "every attempt gets the whole body");
        let partial = Replay::read(body(), 4).await.unwrap().err().expect("over the limit");
        assert_eq!(collect(partial).await.0, b"abcdef", "the body still goes once, whole");
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        let with_t: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![Ok(Frame::data(Bytes::from_static(b"x"))), Ok(Frame::trailers(t))];
        let r = Replay::read(Body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(with_t))), 10).await.unwrap().ok().unwrap();
        let (d, t) = collect(r.body()).await;
        assert_eq!((d.as_slice(), t.unwrap()["grpc-status"].to_str().unwrap()), (&b"x"[..], "0"));
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_sleeps_on_the_paused_clock() {
        let p = policy(serde_json::json!({"retry_on": "5xx", "retry_back_off": {"base_interval": "1s"}})).unwrap();
        let mut s = state(Some(&p), &[]).0.unwrap();
        let d = s.next_backoff(999);
        let t0 = tokio::time::Instant::now();
        tokio::time::sleep(d).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(999));
    }

    #[tokio::test]
    async fn rate_limited_back_off_follows_the_reset_headers() {
        let p = policy(serde_json::json!({"retry_on": "retriable-status-codes", "retriable_status_codes": [429], "num_retries": 3,
            "rate_limited_retry_back_off": {"reset_headers": [{"name": "Retry-After"}, {"name": "x-ratelimit-reset", "format": "UNIX_TIMESTAMP"}],
            "max_interval": "10s"}}))
        .unwrap();
        let r = p.rate_limited.as_ref().unwrap();
        let now = Duration::from_secs(1_000_000);
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert_eq!(r.interval(&headers(&[("retry-after", "3")]), now), Some(Duration::from_secs(3)));
        // Too long a wait or unparsable: the next header.
        let h = headers(&[("retry-after", "30"), ("x-ratelimit-reset", "1000005")]);
        assert_eq!(r.interval(&h, now), Some(Duration::from_secs(5)));
        assert_eq!(r.interval(&headers(&[("retry-after", "soon"), ("x-ratelimit-reset", "1000002")]), now), Some(Duration::from_secs(2)));
        assert_eq!(r.interval(&headers(&[("x-ratelimit-reset", "999999")]), now), None, "a time in the past");
        assert_eq!(r.interval(&headers(&[("retry-after", "11")]), now), None);
        assert_eq!(r.interval(&HeaderMap::new(), now), None);
        for i in 0..1000u64 {
            let d = jittered_lower_bound(Duration::from_secs(3), i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert!((Duration::from_millis(3000)..Duration::from_millis(4500)).contains(&d), "{d:?}");
        }
        // The retry waits what the response asked for, counted as rate limited; a retriable
        // response without reset headers falls back to the exponential back-off.
        let store = crate::stats::Store::new();
        let cluster = Cluster::new(&sluice_config::cluster::Cluster { name: "c".into(), ..Default::default() }, &store, Vec::new()).unwrap();
        let mut s = state(Some(&p), &[]).0.unwrap();
        assert!(s.would_retry_response(429, &headers(&[("retry-after", "2")])));
        match s.should_retry(true, &cluster) {
            RetryStatus::Yes(d) => assert!((Duration::from_secs(2)..Duration::from_secs(3)).contains(&d), "{d:?}"),
            other => panic!("{other:?}"),
        }
        assert!(s.would_retry_response(429, &HeaderMap::new()));
        match s.should_retry(true, &cluster) {
            RetryStatus::Yes(d) => assert!(d <= Duration::from_millis(250), "{d:?}"),
            other => panic!("{other:?}"),
        }
        let st = cluster.retry_stats();
        assert_eq!((st.upstream_rq_retry_backoff_ratelimited.value(), st.upstream_rq_retry_backoff_exponential.value()), (1, 1));
        // A response that is not retriable does not arm it.
        assert!(!s.would_retry_response(200, &headers(&[("retry-after", "2")])));
        assert_eq!(s.rate_limited, None);
    }

    #[test]
    fn rate_limited_back_off_is_checked() {
        let (path, _) = policy(serde_json::json!({"rate_limited_retry_back_off": {"reset_headers": []}})).unwrap_err();
        assert_eq!(path, "rate_limited_retry_back_off.reset_headers");
        let (path, _) = policy(serde_json::json!({"rate_limited_retry_back_off": {"reset_headers": [{"name": "bad header"}]}})).unwrap_err();
        assert_eq!(path, "rate_limited_retry_back_off.reset_headers[0].name");
        let (path, _) = policy(serde_json::json!({"rate_limited_retry_back_off": {"reset_headers": [{"name": "retry-after"}], "max_interval": "0s"}})).unwrap_err();
        assert_eq!(path, "rate_limited_retry_back_off.max_interval");
        let p = policy(serde_json::json!({"rate_limited_retry_back_off": {"reset_headers": [{"name": "retry-after"}]}})).unwrap();
        assert_eq!(p.rate_limited.as_ref().unwrap().max_interval, Duration::from_secs(300));
    }
}
