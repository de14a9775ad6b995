//! Active health checking (cluster `health_checks`), as Envoy's `HealthCheckerImplBase` and its
//! HTTP, TCP and gRPC checkers.
//!
//! Everything here runs on the control runtime: one manager task per cluster ([`run`]) keeps one
//! session task per host (hosts join and leave with discovery), and applies passive failures
//! (`x-envoy-immediate-health-check-fail` seen by the request path). A session checks its host
//! every interval, bounded by `timeout`, and applies Envoy's state machine
//! ([`HealthChecker::handle_success`], [`HealthChecker::set_unhealthy`]):
//!
//! * a host starts `/failed_active_hc`; its first passing check makes it healthy at once, later it
//!   takes `healthy_threshold` consecutive passes;
//! * a healthy host becomes unhealthy after `unhealthy_threshold` consecutive network failures or
//!   timeouts (or retriable statuses), but at once on any other failed check (an unexpected
//!   HTTP status, a payload mismatch, a passive failure);
//! * the next check comes after `interval`, `unhealthy_interval`, `healthy_edge_interval` or
//!   `unhealthy_edge_interval` (on the way to a change), or `no_traffic_interval` /
//!   `no_traffic_healthy_interval` until the cluster has opened a connection for traffic, plus
//!   `interval_jitter` and `interval_jitter_percent`.
//!
//! A changed host rebuilds the cluster's load-balancer snapshot ([`Cluster::on_health_changed`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_config::core::{HeaderAppendAction, HeaderValueOption, StringPattern};
use sluice_config::health_check::{CodecClientType, HealthCheck, HealthCheckKind, Payload};

use crate::config_audit::refused_at_load;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::cluster::Cluster;
use super::host::{health_flag, Host};
use crate::body::Body;
use crate::stats::{Counter, Gauge, Store};

/// Why a check failed (Envoy's `HealthCheckFailureType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureType {
    /// The host answered, wrongly.
    Active,
    /// Connecting, sending or receiving failed.
    Network,
    /// The check did not finish within `timeout`.
    NetworkTimeout,
    /// The request path saw `x-envoy-immediate-health-check-fail`.
    Passive,
}

impl FailureType {
    fn network(self) -> bool {
        matches!(self, FailureType::Network | FailureType::NetworkTimeout)
    }
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Healthy { degraded: bool },
    /// `status`: the HTTP check's response status (0 without one), for the event log.
    Unhealthy { kind: FailureType, retriable: bool, status: u16 },
}

/// How a result changed the host (Envoy's `HealthTransition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    Changed,
    /// On the way to a change (thresholds not reached yet).
    ChangePending,
}

/// One session's counters.
#[derive(Debug)]
pub struct SessionState {
    num_healthy: u32,
    num_unhealthy: u32,
    first_check: bool,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState { num_healthy: 0, num_unhealthy: 0, first_check: true }
    }
}

/// `cluster.<name>.health_check.*`.
#[derive(Debug)]
struct HcStats {
    attempt: Counter,
    success: Counter,
    failure: Counter,
    network_failure: Counter,
    passive_failure: Counter,
    verify_cluster: Counter,
    healthy: Gauge,
    degraded: Gauge,
}

/// A compiled string matcher (`service_name_matcher`).
#[derive(Debug)]
enum NameMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(regex::Regex),
}

impl NameMatch {
    fn matches(&self, v: &str, ignore_case: bool) -> bool {
        let (v, norm) = if ignore_case { (v.to_ascii_lowercase(), true) } else { (v.to_string(), false) };
        let n = |s: &str| if norm { s.to_ascii_lowercase() } else { s.to_string() };
        match self {
            NameMatch::Exact(s) => v == n(s),
            NameMatch::Prefix(s) => v.starts_with(&n(s)),
            NameMatch::Suffix(s) => v.ends_with(&n(s)),
            NameMatch::Contains(s) => v.contains(&n(s)),
            NameMatch::Regex(r) => r.is_match(&v),
        }
    }
}

#[derive(Debug)]
struct HttpCheck {
    path: String,
    /// `host`; empty: the cluster's name.
    host: String,
    method: http::Method,
    body: Option<Bytes>,
    receive: Vec<Vec<u8>>,
    /// 0: the whole body.
    response_buffer_size: usize,
    headers_add: Vec<(HeaderName, HeaderValue, HeaderAppendAction)>,
    headers_remove: Vec<HeaderName>,
    expected: Vec<(u16, u16)>,
    retriable: Vec<(u16, u16)>,
    h2: bool,
    service_name_matcher: Option<(NameMatch, bool)>,
}

#[derive(Debug)]
struct TcpCheck {
    send: Vec<u8>,
    receive: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct GrpcCheck {
    service_name: String,
    /// Empty: the cluster's name.
    authority: String,
    metadata: Vec<(HeaderName, HeaderValue, HeaderAppendAction)>,
}

#[derive(Debug)]
enum CheckKind {
    Http(Box<HttpCheck>),
    Tcp(TcpCheck),
    Grpc(GrpcCheck),
}

impl CheckKind {
    /// Envoy's `HealthCheckerType` name.
    fn checker_type(&self) -> &'static str {
        match self {
            CheckKind::Http(_) => "HTTP",
            CheckKind::Tcp(_) => "TCP",
            CheckKind::Grpc(_) => "GRPC",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The event log

/// One health-check event (Envoy's `HealthCheckEvent` kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Eject { kind: FailureType, status: u16 },
    AddHealthy { first_check: bool },
    Failure { kind: FailureType, first_check: bool, status: u16 },
    Degraded,
    NoLongerDegraded,
    Success,
}

impl FailureType {
    fn name(self) -> &'static str {
        match self {
            FailureType::Active => "ACTIVE",
            FailureType::Passive => "PASSIVE",
            FailureType::Network => "NETWORK",
            FailureType::NetworkTimeout => "NETWORK_TIMEOUT",
        }
    }
}

/// `event_log_path`: one JSON object per line, as Envoy prints a `HealthCheckEvent` (fields in
/// field-number order, default values included).
#[derive(Debug)]
struct EventLog {
    file: Mutex<std::fs::File>,
    /// The cluster name as a JSON string.
    cluster: String,
    checker: &'static str,
    always_log_failures: bool,
    always_log_success: bool,
}

impl EventLog {
    fn open(settings: &EventLogSettings, cluster: &str, checker: &'static str) -> anyhow::Result<EventLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&settings.path)
            .map_err(|e| anyhow::anyhow!("health check event_log_path {}: {e}", settings.path))?;
        Ok(EventLog {
            file: Mutex::new(file),
            cluster: serde_json::Value::from(cluster).to_string(),
            checker,
            always_log_failures: settings.always_log_failures,
            always_log_success: settings.always_log_success,
        })
    }

    fn log(&self, host: &Host, event: Event) {
        use std::io::Write;
        let line = self.line(host, event, std::time::SystemTime::now());
        // A full disk or a removed file costs the event, never the check.
        let _ = lock(&self.file).write_all(line.as_bytes());
    }

    fn line(&self, host: &Host, event: Event, now: std::time::SystemTime) -> String {
        let json = |s: &str| serde_json::Value::from(s).to_string();
        let l = &host.locality;
        let mut out = format!(
            "{{\"health_checker_type\":\"{}\",\"host\":{{\"socket_address\":{{\"protocol\":\"TCP\",\"address\":\"{}\",\"port_value\":{},\"resolver_name\":\"\",\"ipv4_compat\":false,\"network_namespace_filepath\":\"\"}}}},\"cluster_name\":{}",
            self.checker,
            host.address.ip(),
            host.address.port(),
            self.cluster
        );
        // Field numbers: eject 4, add_healthy 5, timestamp 6, failure 7, degraded 8, no longer
        // degraded 9, locality 11, successful 12.
        match event {
            Event::Eject { kind, status } => {
                out.push_str(&format!(",\"eject_unhealthy_event\":{{\"failure_type\":\"{}\",\"http_status_code\":{status}}}", kind.name()))
            }
            Event::AddHealthy { first_check } => out.push_str(&format!(",\"add_healthy_event\":{{\"first_check\":{first_check}}}")),
            _ => {}
        }
        out.push_str(&format!(",\"timestamp\":\"{}\"", timestamp(now)));
        match event {
            Event::Failure { kind, first_check, status } => out.push_str(&format!(
                ",\"health_check_failure_event\":{{\"failure_type\":\"{}\",\"first_check\":{first_check},\"http_status_code\":{status}}}",
                kind.name()
            )),
            Event::Degraded => out.push_str(",\"degraded_healthy_host\":{}"),
            Event::NoLongerDegraded => out.push_str(",\"no_longer_degraded_host\":{}"),
            _ => {}
        }
        out.push_str(&format!(
            ",\"locality\":{{\"region\":{},\"zone\":{},\"sub_zone\":{}}}",
            json(&l.region),
            json(&l.zone),
            json(&l.sub_zone)
        ));
        if event == Event::Success {
            out.push_str(",\"successful_health_check_event\":{}");
        }
        out.push_str("}\n");
        out
    }
}

/// A protobuf JSON timestamp at Envoy's millisecond precision: `2024-01-31T12:34:56.789Z`, or
/// `…:56Z` on a whole second.
fn timestamp(t: std::time::SystemTime) -> String {
    let s = crate::formatter::time::TimeFormat::parse("").format(t);
    match s.strip_suffix(".000Z") {
        Some(whole) => format!("{whole}Z"),
        None => s,
    }
}

/// A cluster's health check, compiled.
#[derive(Debug)]
pub struct HealthCheckConfig {
    pub timeout: Duration,
    pub interval: Duration,
    pub initial_jitter: Duration,
    pub interval_jitter: Duration,
    pub interval_jitter_percent: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub reuse_connection: bool,
    pub no_traffic_interval: Duration,
    pub no_traffic_healthy_interval: Duration,
    pub unhealthy_interval: Duration,
    pub unhealthy_edge_interval: Duration,
    pub healthy_edge_interval: Duration,
    kind: CheckKind,
    /// `event_log_path` with `always_log_health_check_failures` / `_success`.
    event_log: Option<EventLogSettings>,
}

/// Where and what the health checker logs as events.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EventLogSettings {
    path: String,
    always_log_failures: bool,
    always_log_success: bool,
}

fn header_list(list: &[HeaderValueOption]) -> anyhow::Result<Vec<(HeaderName, HeaderValue, HeaderAppendAction)>> {
    let mut out = Vec::with_capacity(list.len());
    for o in list {
        let HeaderValueOption { header, append, append_action, keep_empty_value } = o;
        let sluice_config::core::HeaderValue { key, value, raw_value } = header;
        let name = HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
            .map_err(|_| anyhow::anyhow!("invalid header name \"{key}\""))?;
        let raw = raw_value.as_deref().unwrap_or(value).replace("%%", "%");
        let value = HeaderValue::from_str(&raw).map_err(|_| anyhow::anyhow!("invalid header value \"{raw}\""))?;
        // An empty value is left out unless `keep_empty_value`, as Envoy's header parser does.
        if value.is_empty() && !keep_empty_value {
            continue;
        }
        // `append_action` wins; the deprecated `append: false` overwrites; else append.
        let action = match (append_action, append) {
            (Some(a), _) => *a,
            (None, Some(false)) => HeaderAppendAction::OverwriteIfExistsOrAdd,
            (None, _) => HeaderAppendAction::AppendIfExistsOrAdd,
        };
        out.push((name, value, action));
    }
    Ok(out)
}

fn ranges(list: &[sluice_config::route::Int64Range]) -> Vec<(u16, u16)> {
    list.iter()
        .map(|sluice_config::route::Int64Range { start, end }| (start.clamp(&0, &600).to_owned() as u16, end.clamp(&0, &600).to_owned() as u16))
        .collect()
}

impl HealthCheckConfig {
    pub fn build(hc: &HealthCheck) -> anyhow::Result<HealthCheckConfig> {
        let HealthCheck {
            timeout,
            interval,
            initial_jitter,
            interval_jitter,
            interval_jitter_percent,
            unhealthy_threshold,
            healthy_threshold,
            alt_port,
            reuse_connection,
            http_health_check,
            tcp_health_check,
            grpc_health_check,
            custom_health_check,
            no_traffic_interval,
            no_traffic_healthy_interval,
            unhealthy_interval,
            unhealthy_edge_interval,
            healthy_edge_interval,
            event_log_path,
            event_logger,
            event_service,
            always_log_health_check_failures,
            always_log_health_check_success,
            tls_options,
            transport_socket_match_criteria,
        } = hc;
        for refused in [alt_port, custom_health_check, event_logger, event_service, tls_options, transport_socket_match_criteria] {
            refused_at_load(refused);
        }
        // Both only change what the event log records: without `event_log_path`, as in Envoy
        // without an event logger, they have nothing to act on.
        let event_log = event_log_path.as_ref().map(|path| EventLogSettings {
            path: path.clone(),
            always_log_failures: *always_log_health_check_failures,
            always_log_success: *always_log_health_check_success,
        });
        let d = |v: &Option<sluice_config::Duration>| v.map(|d| d.as_std());
        let interval = d(interval).ok_or_else(|| anyhow::anyhow!("health check: interval is required"))?;
        let unhealthy_interval = d(unhealthy_interval).unwrap_or(interval);
        // Default 60 s.
        let no_traffic_interval = d(no_traffic_interval).unwrap_or(Duration::from_secs(60));
        let checker = match (http_health_check, tcp_health_check, grpc_health_check) {
            (Some(h), None, None) => HealthCheckKind::Http(h),
            (None, Some(t), None) => HealthCheckKind::Tcp(t),
            (None, None, Some(g)) => HealthCheckKind::Grpc(g),
            _ => anyhow::bail!("health check: one checker kind is required"),
        };
        let kind = match checker {
            HealthCheckKind::Http(h) => {
                let sluice_config::health_check::HttpHealthCheck {
                    host,
                    path,
                    send,
                    receive,
                    response_buffer_size,
                    request_headers_to_add,
                    request_headers_to_remove,
                    expected_statuses,
                    retriable_statuses,
                    codec_client_type,
                    service_name_matcher,
                    method,
                } = h;
                let mut expected = ranges(expected_statuses);
                if expected.is_empty() {
                    expected.push((200, 201));
                }
                let service_name_matcher = match service_name_matcher {
                    None => None,
                    Some(m) => {
                        let p = match m.pattern().ok_or_else(|| anyhow::anyhow!("service_name_matcher needs one pattern"))? {
                            StringPattern::Exact(s) => NameMatch::Exact(s.into()),
                            StringPattern::Prefix(s) => NameMatch::Prefix(s.into()),
                            StringPattern::Suffix(s) => NameMatch::Suffix(s.into()),
                            StringPattern::Contains(s) => NameMatch::Contains(s.into()),
                            StringPattern::Regex(r) => NameMatch::Regex(
                                regex::Regex::new(&format!("^(?:{r})$")).map_err(|e| anyhow::anyhow!("service_name_matcher: {e}"))?,
                            ),
                        };
                        Some((p, m.ignore_case))
                    }
                };
                CheckKind::Http(Box::new(HttpCheck {
                    path: path.clone(),
                    host: host.clone(),
                    method: http::Method::from_bytes(method.as_str().as_bytes()).expect("static method"),
                    body: send.as_ref().map(|p| payload(p).map(Bytes::from)).transpose().map_err(anyhow::Error::msg)?,
                    receive: receive.iter().map(payload).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?,
                    response_buffer_size: response_buffer_size.unwrap_or(1024) as usize,
                    headers_add: header_list(request_headers_to_add)?,
                    headers_remove: request_headers_to_remove
                        .iter()
                        .map(|n| {
                            HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                                .map_err(|_| anyhow::anyhow!("invalid header name \"{n}\""))
                        })
                        .collect::<Result<_, _>>()?,
                    expected,
                    retriable: ranges(retriable_statuses),
                    h2: match codec_client_type {
                        CodecClientType::Http1 => false,
                        CodecClientType::Http2 => true,
                        CodecClientType::Http3 => anyhow::bail!("health check: HTTP3 is not supported"),
                    },
                    service_name_matcher,
                }))
            }
            HealthCheckKind::Tcp(t) => {
                let sluice_config::health_check::TcpHealthCheck { send, receive, proxy_protocol_config } = t;
                refused_at_load(proxy_protocol_config);
                CheckKind::Tcp(TcpCheck {
                    send: send.as_ref().map(payload).transpose().map_err(anyhow::Error::msg)?.unwrap_or_default(),
                    receive: receive.iter().map(payload).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?,
                })
            }
            HealthCheckKind::Grpc(g) => {
                let sluice_config::health_check::GrpcHealthCheck { service_name, authority, initial_metadata } = g;
                CheckKind::Grpc(GrpcCheck {
                    service_name: service_name.clone(),
                    authority: authority.clone(),
                    metadata: header_list(initial_metadata)?,
                })
            }
        };
        Ok(HealthCheckConfig {
            timeout: d(timeout).ok_or_else(|| anyhow::anyhow!("health check: timeout is required"))?,
            interval,
            initial_jitter: d(initial_jitter).unwrap_or_default(),
            interval_jitter: d(interval_jitter).unwrap_or_default(),
            interval_jitter_percent: *interval_jitter_percent,
            unhealthy_threshold: unhealthy_threshold.ok_or_else(|| anyhow::anyhow!("health check: unhealthy_threshold is required"))?,
            healthy_threshold: healthy_threshold.ok_or_else(|| anyhow::anyhow!("health check: healthy_threshold is required"))?,
            reuse_connection: reuse_connection.unwrap_or(true),
            no_traffic_interval,
            no_traffic_healthy_interval: d(no_traffic_healthy_interval).unwrap_or(no_traffic_interval),
            unhealthy_interval,
            unhealthy_edge_interval: d(unhealthy_edge_interval).unwrap_or(unhealthy_interval),
            healthy_edge_interval: d(healthy_edge_interval).unwrap_or(interval),
            kind,
            event_log,
        })
    }

    /// `base` plus `interval_jitter_percent` and `interval_jitter`, at least 1 ms (Envoy's
    /// `intervalWithJitter`).
    pub fn with_jitter(&self, base: Duration, jitter: Duration) -> Duration {
        let mut ms = base.as_millis() as u64;
        let pct = self.interval_jitter_percent as u64 * ms / 100;
        if pct > 0 {
            ms += rand::random_range(0..pct);
        }
        let j = jitter.as_millis() as u64;
        if j > 0 {
            ms += rand::random_range(0..j);
        }
        Duration::from_millis(ms.max(1))
    }

    /// The wait before the next check (Envoy's `HealthCheckerImplBase::interval`): `healthy` is
    /// the result of the check just made.
    pub fn next_interval(&self, healthy: bool, t: Transition, traffic_seen: bool) -> Duration {
        let base = if traffic_seen {
            match (healthy, t) {
                (false, Transition::ChangePending) => self.unhealthy_edge_interval,
                (false, _) => self.unhealthy_interval,
                (true, Transition::ChangePending) => self.healthy_edge_interval,
                (true, _) => self.interval,
            }
        } else if healthy && t != Transition::ChangePending {
            self.no_traffic_healthy_interval
        } else {
            self.no_traffic_interval
        };
        self.with_jitter(base, self.interval_jitter)
    }

    /// The wait before a session's first check: none, or a random part of `initial_jitter`.
    pub fn initial_delay(&self) -> Duration {
        if self.initial_jitter.is_zero() {
            Duration::ZERO
        } else {
            self.with_jitter(Duration::ZERO, self.initial_jitter)
        }
    }
}

/// One cluster's active health checker: its config, stats and the channel for passive failures.
#[derive(Debug)]
pub struct HealthChecker {
    pub cfg: HealthCheckConfig,
    stats: HcStats,
    /// `event_log_path`, opened.
    events: Option<EventLog>,
    pub(crate) tx: mpsc::UnboundedSender<Arc<Host>>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Arc<Host>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HealthChecker {
    /// The checker of cluster `cluster` (its name, for the event log) with stats under
    /// `cluster_prefix`; fails when the event log cannot be opened.
    pub(crate) fn new(cfg: HealthCheckConfig, store: &Store, cluster_prefix: &str, cluster: &str) -> anyhow::Result<HealthChecker> {
        let c = |n: &str| store.counter(format!("{cluster_prefix}health_check.{n}"));
        let g = |n: &str| store.gauge(format!("{cluster_prefix}health_check.{n}"));
        let (tx, rx) = mpsc::unbounded_channel();
        let events = match &cfg.event_log {
            Some(settings) => Some(EventLog::open(settings, cluster, cfg.kind.checker_type())?),
            None => None,
        };
        Ok(HealthChecker {
            cfg,
            events,
            stats: HcStats {
                attempt: c("attempt"),
                success: c("success"),
                failure: c("failure"),
                network_failure: c("network_failure"),
                passive_failure: c("passive_failure"),
                verify_cluster: c("verify_cluster"),
                healthy: g("healthy"),
                degraded: g("degraded"),
            },
            tx,
            rx: Mutex::new(Some(rx)),
        })
    }

    fn log(&self, host: &Host, event: Event) {
        if let Some(e) = &self.events {
            e.log(host, event);
        }
    }

    /// A session for `host` starts: Envoy counts the hosts that are not failing.
    fn session_added(&self, host: &Host) {
        if !host.health_flag(health_flag::FAILED_ACTIVE_HC) {
            self.stats.healthy.inc();
        }
        if host.health_flag(health_flag::DEGRADED_ACTIVE_HC) {
            self.stats.degraded.inc();
        }
    }

    fn session_removed(&self, host: &Host) {
        if !host.health_flag(health_flag::FAILED_ACTIVE_HC) {
            self.stats.healthy.dec();
        }
        if host.health_flag(health_flag::DEGRADED_ACTIVE_HC) {
            self.stats.degraded.dec();
        }
    }

    fn clear_pending(host: &Host, t: Transition) -> Transition {
        if host.set_health_flag(health_flag::PENDING_ACTIVE_HC, false) & health_flag::PENDING_ACTIVE_HC != 0 {
            Transition::Changed
        } else {
            t
        }
    }

    /// A passing check.
    pub fn handle_success(&self, host: &Host, st: &mut SessionState, degraded: bool) -> Transition {
        use health_flag::*;
        st.num_unhealthy = 0;
        let mut t = Transition::Unchanged;
        if host.health_flag(FAILED_ACTIVE_HC) {
            let now_healthy = st.first_check || {
                st.num_healthy += 1;
                st.num_healthy == self.cfg.healthy_threshold
            };
            if now_healthy {
                host.set_health_flag(ACTIVE_HC_TIMEOUT | EXCLUDED_VIA_IMMEDIATE_HC_FAIL | FAILED_ACTIVE_HC, false);
                self.stats.healthy.inc();
                t = Transition::Changed;
                self.log(host, Event::AddHealthy { first_check: st.first_check });
            } else {
                t = Transition::ChangePending;
            }
        }
        t = Self::clear_pending(host, t);
        if degraded != host.health_flag(DEGRADED_ACTIVE_HC) {
            host.set_health_flag(DEGRADED_ACTIVE_HC, degraded);
            if degraded {
                self.stats.degraded.inc();
                self.log(host, Event::Degraded);
            } else {
                self.stats.degraded.dec();
                self.log(host, Event::NoLongerDegraded);
            }
            if t == Transition::Unchanged {
                t = Transition::Changed;
            }
        }
        if t != Transition::Changed && self.events.as_ref().is_some_and(|e| e.always_log_success) {
            self.log(host, Event::Success);
        }
        self.stats.success.inc();
        st.first_check = false;
        t
    }

    /// A failing check (or a passive failure).
    pub fn set_unhealthy(&self, host: &Host, st: &mut SessionState, kind: FailureType, retriable: bool) -> Transition {
        self.set_unhealthy_status(host, st, kind, retriable, 0)
    }

    /// [`Self::set_unhealthy`] with the HTTP check's response status (0: none).
    fn set_unhealthy_status(&self, host: &Host, st: &mut SessionState, kind: FailureType, retriable: bool, status: u16) -> Transition {
        use health_flag::*;
        st.num_healthy = 0;
        let mut t = Transition::Unchanged;
        if !host.health_flag(FAILED_ACTIVE_HC) {
            let now_failed = (!kind.network() && !retriable) || {
                st.num_unhealthy += 1;
                st.num_unhealthy == self.cfg.unhealthy_threshold
            };
            if now_failed {
                host.set_health_flag(FAILED_ACTIVE_HC, true);
                self.stats.healthy.dec();
                t = Transition::Changed;
                self.log(host, Event::Eject { kind, status });
            } else {
                t = Transition::ChangePending;
            }
        }
        let timeout = kind == FailureType::NetworkTimeout && host.health_flag(FAILED_ACTIVE_HC);
        host.set_health_flag(ACTIVE_HC_TIMEOUT, timeout);
        t = Self::clear_pending(host, t);
        if st.first_check || self.events.as_ref().is_some_and(|e| e.always_log_failures) {
            self.log(host, Event::Failure { kind, first_check: st.first_check, status });
        }
        self.stats.failure.inc();
        if kind.network() {
            self.stats.network_failure.inc();
        } else if kind == FailureType::Passive {
            self.stats.passive_failure.inc();
        }
        st.first_check = false;
        t
    }

    fn apply(&self, host: &Host, st: &mut SessionState, r: CheckResult) -> Transition {
        match r {
            CheckResult::Healthy { degraded } => self.handle_success(host, st, degraded),
            CheckResult::Unhealthy { kind, retriable, status } => self.set_unhealthy_status(host, st, kind, retriable, status),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection kept between checks (`reuse_connection`).
#[derive(Default)]
enum Kept {
    #[default]
    None,
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
    Tcp(Box<dyn Io>),
}

const NETWORK: CheckResult = CheckResult::Unhealthy { kind: FailureType::Network, retriable: false, status: 0 };
const ACTIVE: CheckResult = CheckResult::Unhealthy { kind: FailureType::Active, retriable: false, status: 0 };

/// An HTTP check's wrong answer.
fn active(status: u16, retriable: bool) -> CheckResult {
    CheckResult::Unhealthy { kind: FailureType::Active, retriable, status }
}

async fn connect(cluster: &Cluster, host: &Host, h2: bool) -> std::io::Result<Box<dyn Io>> {
    let tcp = tokio::net::TcpStream::connect(host.address).await?;
    let _ = tcp.set_nodelay(true);
    Ok(match cluster.tls() {
        Some(tls) => Box::new(tls.connect(tcp, host.address.ip(), h2).await?),
        None => Box::new(tcp),
    })
}

/// Whether every block appears in `data`, in order, not necessarily contiguous (Envoy's
/// `PayloadMatcher::match`).
fn payload_matches(blocks: &[Vec<u8>], data: &[u8]) -> bool {
    let mut from = 0;
    for b in blocks {
        if b.is_empty() {
            continue;
        }
        match data.get(from..).and_then(|rest| rest.windows(b.len()).position(|w| w == b.as_slice())) {
            Some(i) => from += i + b.len(),
            None => return false,
        }
    }
    true
}

fn apply_headers(h: &mut http::HeaderMap, add: &[(HeaderName, HeaderValue, HeaderAppendAction)], remove: &[HeaderName]) {
    for n in remove {
        h.remove(n);
    }
    for (n, v, action) in add {
        match action {
            HeaderAppendAction::AppendIfExistsOrAdd => {
                h.append(n.clone(), v.clone());
            }
            HeaderAppendAction::AddIfAbsent => {
                if !h.contains_key(n) {
                    h.insert(n.clone(), v.clone());
                }
            }
            HeaderAppendAction::OverwriteIfExistsOrAdd => {
                h.insert(n.clone(), v.clone());
            }
            HeaderAppendAction::OverwriteIfExists => {
                if h.contains_key(n) {
                    h.insert(n.clone(), v.clone());
                }
            }
        }
    }
}

impl HealthChecker {
    /// One check of `host`, reusing `kept` when allowed. Not bounded here: the caller applies
    /// `timeout`.
    async fn check(&self, cluster: &Cluster, host: &Host, kept: &mut Kept) -> CheckResult {
        match &self.cfg.kind {
            CheckKind::Http(h) => self.http_check(cluster, host, kept, h).await,
            CheckKind::Tcp(t) => self.tcp_check(cluster, host, kept, t).await,
            CheckKind::Grpc(g) => self.grpc_check(cluster, host, kept, g).await,
        }
    }

    async fn sender(&self, cluster: &Cluster, host: &Host, kept: &mut Kept, h2: bool) -> Option<Kept> {
        let reusable = match std::mem::take(kept) {
            Kept::H1(mut s) if !h2 && !s.is_closed() => s.ready().await.is_ok().then_some(Kept::H1(s)),
            Kept::H2(s) if h2 && !s.is_closed() => Some(Kept::H2(s)),
            _ => None,
        };
        if reusable.is_some() {
            return reusable;
        }
        let io = TokioIo::new(connect(cluster, host, h2).await.ok()?);
        if h2 {
            let (s, conn) = http2::Builder::new(TokioExecutor::new()).handshake(io).await.ok()?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Some(Kept::H2(s))
        } else {
            let (s, conn) = http1::Builder::new().handshake(io).await.ok()?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Some(Kept::H1(s))
        }
    }

    /// Send `req`; the response head and its body (the first `limit` bytes kept; 0 keeps all).
    async fn exchange(
        &self,
        conn: &mut Kept,
        req: Request<Body>,
        limit: usize,
    ) -> Option<(http::response::Parts, Bytes, Option<http::HeaderMap>)> {
        let resp = match conn {
            Kept::H1(s) => s.send_request(req).await.ok()?,
            Kept::H2(s) => s.send_request(req).await.ok()?,
            Kept::None | Kept::Tcp(_) => return None,
        };
        let (parts, mut body) = resp.into_parts();
        let mut buf = BytesMut::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.ok()?;
            if let Some(d) = frame.data_ref() {
                let room = if limit == 0 { d.len() } else { limit.saturating_sub(buf.len()).min(d.len()) };
                buf.extend_from_slice(&d[..room]);
            } else if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
            }
        }
        Some((parts, buf.freeze(), trailers))
    }

    async fn http_check(&self, cluster: &Cluster, host: &Host, kept: &mut Kept, h: &HttpCheck) -> CheckResult {
        let Some(mut conn) = self.sender(cluster, host, kept, h.h2).await else { return NETWORK };
        let authority = if h.host.is_empty() { cluster.name() } else { h.host.as_str() };
        let mut b = Request::builder().method(h.method.clone());
        if h.h2 {
            let scheme = if cluster.tls().is_some() { "https" } else { "http" };
            match Uri::builder().scheme(scheme).authority(authority).path_and_query(h.path.as_str()).build() {
                Ok(u) => b = b.uri(u),
                Err(_) => return ACTIVE,
            }
        } else {
            b = b.uri(h.path.as_str()).header(http::header::HOST, authority);
        }
        b = b.header(http::header::USER_AGENT, "Envoy/HC");
        if let Some(body) = &h.body {
            b = b.header(http::header::CONTENT_LENGTH, body.len());
        }
        let Ok(mut req) = b.body(h.body.clone().map(Body::full).unwrap_or_default()) else { return ACTIVE };
        apply_headers(req.headers_mut(), &h.headers_add, &h.headers_remove);
        let limit = if h.receive.is_empty() { 1 } else { h.response_buffer_size };
        let Some((parts, body, _)) = self.exchange(&mut conn, req, limit).await else { return NETWORK };
        let status = parts.status.as_u16();
        let immediate = parts.headers.contains_key("x-envoy-immediate-health-check-fail");
        let in_ranges = |r: &[(u16, u16)]| r.iter().any(|(s, e)| status >= *s && status < *e);
        let result = if !h.receive.is_empty() && !payload_matches(&h.receive, &body) {
            if immediate {
                host.set_health_flag(health_flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, true);
            }
            active(status, false)
        } else if !in_ranges(&h.expected) {
            if immediate {
                host.set_health_flag(health_flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, true);
            }
            active(status, in_ranges(&h.retriable))
        } else {
            let degraded = parts.headers.contains_key("x-envoy-degraded");
            match &h.service_name_matcher {
                Some((m, ic)) => {
                    self.stats.verify_cluster.inc();
                    let v = parts.headers.get("x-envoy-upstream-healthchecked-cluster").and_then(|v| v.to_str().ok()).unwrap_or("");
                    if m.matches(v, *ic) {
                        CheckResult::Healthy { degraded }
                    } else {
                        active(status, false)
                    }
                }
                None => CheckResult::Healthy { degraded },
            }
        };
        let close = !self.cfg.reuse_connection
            || (!h.h2
                && parts
                    .headers
                    .get(http::header::CONNECTION)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")));
        if !close {
            *kept = conn;
        }
        result
    }

    /// Connect-only (no `receive`): success on connect, the connection closed (nothing is
    /// written, as in Envoy). Otherwise write `send` and read until every `receive` block has
    /// arrived in order; the connection is kept for the next check with `reuse_connection`.
    async fn tcp_check(&self, cluster: &Cluster, host: &Host, kept: &mut Kept, t: &TcpCheck) -> CheckResult {
        let mut io = match std::mem::take(kept) {
            Kept::Tcp(io) if !t.receive.is_empty() => io,
            _ => match connect(cluster, host, false).await {
                Ok(io) => io,
                Err(_) => return NETWORK,
            },
        };
        if t.receive.is_empty() {
            return CheckResult::Healthy { degraded: false };
        }
        if !t.send.is_empty() && (io.write_all(&t.send).await.is_err() || io.flush().await.is_err()) {
            return NETWORK;
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return NETWORK,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if payload_matches(&t.receive, &buf) {
                        if self.cfg.reuse_connection {
                            *kept = Kept::Tcp(io);
                        }
                        return CheckResult::Healthy { degraded: false };
                    }
                    // Bounded: a peer that never sends the expected bytes fails here, or at the
                    // timeout.
                    if buf.len() > 1 << 20 {
                        return ACTIVE;
                    }
                }
            }
        }
    }

    async fn grpc_check(&self, cluster: &Cluster, host: &Host, kept: &mut Kept, g: &GrpcCheck) -> CheckResult {
        let Some(mut conn) = self.sender(cluster, host, kept, true).await else { return NETWORK };
        let authority = if g.authority.is_empty() { cluster.name() } else { g.authority.as_str() };
        let scheme = if cluster.tls().is_some() { "https" } else { "http" };
        let Ok(uri) = Uri::builder().scheme(scheme).authority(authority).path_and_query("/grpc.health.v1.Health/Check").build() else {
            return ACTIVE;
        };
        // HealthCheckRequest { service = 1 }, in one length-prefixed gRPC message.
        let mut msg = Vec::new();
        if !g.service_name.is_empty() {
            msg.push(0x0a);
            let mut n = g.service_name.len();
            while n >= 0x80 {
                msg.push((n as u8 & 0x7f) | 0x80);
                n >>= 7;
            }
            msg.push(n as u8);
            msg.extend_from_slice(g.service_name.as_bytes());
        }
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        let Ok(mut req) = Request::builder()
            .method(http::Method::POST)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Body::full(framed))
        else {
            return ACTIVE;
        };
        apply_headers(req.headers_mut(), &g.metadata, &[]);
        let Some((parts, body, trailers)) = self.exchange(&mut conn, req, 0).await else { return NETWORK };
        *kept = if self.cfg.reuse_connection { conn } else { Kept::None };
        if parts.status != http::StatusCode::OK {
            return ACTIVE;
        }
        let grpc_status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u32>().ok());
        if grpc_status != Some(0) {
            return ACTIVE;
        }
        // HealthCheckResponse { status = 1 }: SERVING is 1.
        let mut b = body;
        if b.len() < 5 {
            return ACTIVE;
        }
        b.advance(1);
        let len = b.get_u32() as usize;
        let m = b.slice(..len.min(b.len()));
        if m.starts_with(&[0x08, 0x01]) {
            CheckResult::Healthy { degraded: false }
        } else {
            ACTIVE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions and the manager

struct Session {
    host: Arc<Host>,
    state: Arc<Mutex<SessionState>>,
    task: tokio::task::JoinHandle<()>,
}

/// What happens after a result: rebuild on changes, drop a removed host that failed,
/// uneject an outlier that passes.
fn after_result(cluster: &Arc<Cluster>, host: &Arc<Host>, healthy: bool, t: Transition) {
    let mut changed = t == Transition::Changed;
    if healthy && !host.health_flag(health_flag::FAILED_ACTIVE_HC) && host.health_flag(health_flag::FAILED_OUTLIER_CHECK) {
        if let Some(d) = cluster.detector().filter(|d| d.cfg.successful_active_health_check_uneject_host) {
            d.uneject(host, tokio::time::Instant::now());
            changed = true;
        }
    }
    if t == Transition::Changed && host.health_flag(health_flag::FAILED_ACTIVE_HC) && host.health_flag(health_flag::PENDING_DYNAMIC_REMOVAL)
    {
        cluster.remove_host(host);
        return;
    }
    if changed {
        cluster.on_health_changed(std::slice::from_ref(host));
    }
}

async fn session(cluster: Arc<Cluster>, host: Arc<Host>, state: Arc<Mutex<SessionState>>, mut first_done: Option<oneshot::Sender<()>>) {
    let Some(hc) = cluster.health_checker().cloned() else { return };
    let mut kept = Kept::None;
    let mut delay = hc.cfg.initial_delay();
    loop {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        hc.stats.attempt.inc();
        let result = match tokio::time::timeout(hc.cfg.timeout, hc.check(&cluster, &host, &mut kept)).await {
            Ok(r) => r,
            Err(_) => {
                kept = Kept::None;
                CheckResult::Unhealthy { kind: FailureType::NetworkTimeout, retriable: false, status: 0 }
            }
        };
        if matches!(result, CheckResult::Unhealthy { kind: FailureType::Network, .. }) {
            kept = Kept::None;
        }
        let t = hc.apply(&host, &mut lock(&state), result);
        let healthy = matches!(result, CheckResult::Healthy { .. });
        after_result(&cluster, &host, healthy, t);
        if let Some(tx) = first_done.take() {
            let _ = tx.send(());
        }
        delay = hc.cfg.next_interval(healthy, t, cluster.traffic_seen());
    }
}

/// The health checker of one cluster: waits for `discovered` (the first discovery answer), starts
/// a session per host, calls `warmed` once every initial host had its first result, then follows
/// membership changes and passive failures until shutdown.
pub(crate) async fn run(
    cluster: Arc<Cluster>,
    discovered: Option<oneshot::Receiver<()>>,
    warmed: Option<Box<dyn FnOnce() + Send>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(hc) = cluster.health_checker().cloned() else {
        if let Some(w) = warmed {
            w();
        }
        return;
    };
    let Some(mut rx) = lock(&hc.rx).take() else { return };
    if let Some(d) = discovered {
        tokio::select! {
            _ = d => {}
            _ = shutdown.changed() => return,
        }
    }
    let mut sessions: HashMap<usize, Session> = HashMap::new();
    let mut firsts = Vec::new();
    reconcile(&cluster, &hc, &mut sessions, Some(&mut firsts));
    let warm_task = tokio::spawn(async move {
        for f in firsts {
            let _ = f.await;
        }
        if let Some(w) = warmed {
            w();
        }
    });
    loop {
        tokio::select! {
            _ = cluster.members_changed() => reconcile(&cluster, &hc, &mut sessions, None),
            msg = rx.recv() => {
                let Some(host) = msg else { break };
                if let Some(s) = sessions.get(&(Arc::as_ptr(&host) as usize)) {
                    let t = hc.set_unhealthy(&host, &mut lock(&s.state), FailureType::Passive, false);
                    after_result(&cluster, &host, false, t);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    warm_task.abort();
    for (_, s) in sessions.drain() {
        s.task.abort();
    }
}

fn reconcile(
    cluster: &Arc<Cluster>,
    hc: &Arc<HealthChecker>,
    sessions: &mut HashMap<usize, Session>,
    mut firsts: Option<&mut Vec<oneshot::Receiver<()>>>,
) {
    let hosts = cluster.hosts();
    let current: std::collections::HashSet<usize> = hosts.hosts.iter().map(|h| Arc::as_ptr(h) as usize).collect();
    sessions.retain(|k, s| {
        let keep = current.contains(k);
        if !keep {
            s.task.abort();
            hc.session_removed(&s.host);
        }
        keep
    });
    for h in &hosts.hosts {
        if sessions.contains_key(&(Arc::as_ptr(h) as usize)) {
            continue;
        }
        hc.session_added(h);
        let state = Arc::new(Mutex::new(SessionState::default()));
        let (tx, rx) = oneshot::channel();
        if let Some(f) = firsts.as_deref_mut() {
            f.push(rx);
        }
        let task = tokio::spawn(session(cluster.clone(), h.clone(), state.clone(), Some(tx)));
        sessions.insert(Arc::as_ptr(h) as usize, Session { host: h.clone(), state, task });
    }
}

/// A health-check payload's bytes: hex `text` or base64 `binary` (exactly one).
fn payload(p: &Payload) -> Result<Vec<u8>, String> {
    let Payload { text, binary } = p;
    match (text, binary) {
        (Some(t), None) => sluice_config::health_check::decode_hex(t),
        (None, Some(b)) => sluice_config::core::base64_decode(b).ok_or_else(|| "binary is not valid base64".to_string()),
        _ => Err("exactly one of text, binary is required".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker(extra: serde_json::Value) -> HealthChecker {
        let mut v = serde_json::json!({"timeout": "1s", "interval": "10s", "unhealthy_threshold": 3, "healthy_threshold": 2,
                                       "http_health_check": {"path": "/hc"}});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let hc: HealthCheck = serde_json::from_value(v).unwrap();
        HealthChecker::new(HealthCheckConfig::build(&hc).unwrap(), &Store::new(), "cluster.c.", "c").unwrap()
    }

    #[test]
    fn header_list_keeps_empty_values_only_when_asked() {
        let opts: Vec<HeaderValueOption> = serde_json::from_value(serde_json::json!([
            {"header": {"key": "X-Empty", "value": ""}},
            {"header": {"key": "x-kept", "value": ""}, "keep_empty_value": true},
            {"header": {"key": "x-set", "value": "v"}, "append": false},
            {"header": {"key": "x-add", "value": "w"}, "append_action": "ADD_IF_ABSENT"}
        ]))
        .unwrap();
        let list = header_list(&opts).unwrap();
        let names: Vec<&str> = list.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["x-kept", "x-set", "x-add"]);
        assert_eq!(list[1].2, HeaderAppendAction::OverwriteIfExistsOrAdd);
        assert_eq!(list[2].2, HeaderAppendAction::AddIfAbsent);
    }

    fn failed_host() -> Host {
        let h = Host::simple("127.0.0.1:1".parse().unwrap());
        h.set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        h
    }

    const NET: CheckResult = CheckResult::Unhealthy { kind: FailureType::Network, retriable: false, status: 0 };
    const OK: CheckResult = CheckResult::Healthy { degraded: false };

    #[test]
    fn first_pass_is_enough_then_thresholds_apply() {
        let hc = checker(serde_json::json!({}));
        let h = failed_host();
        let mut st = SessionState::default();
        hc.session_added(&h);
        assert_eq!(hc.stats.healthy.value(), 0);
        assert_eq!(hc.apply(&h, &mut st, OK), Transition::Changed);
        assert!(!h.health_flag(health_flag::FAILED_ACTIVE_HC));
        assert_eq!(hc.stats.healthy.value(), 1);
        // Two network failures are pending, the third (unhealthy_threshold 3) fails the host.
        assert_eq!(hc.apply(&h, &mut st, NET), Transition::ChangePending);
        assert_eq!(hc.apply(&h, &mut st, NET), Transition::ChangePending);
        assert_eq!(hc.apply(&h, &mut st, NET), Transition::Changed);
        assert!(h.health_flag(health_flag::FAILED_ACTIVE_HC));
        assert_eq!(hc.stats.healthy.value(), 0);
        // Back after healthy_threshold (2) passes; a failure in between restarts the count.
        assert_eq!(hc.apply(&h, &mut st, OK), Transition::ChangePending);
        assert_eq!(hc.apply(&h, &mut st, NET), Transition::Unchanged);
        assert_eq!(hc.apply(&h, &mut st, OK), Transition::ChangePending);
        assert_eq!(hc.apply(&h, &mut st, OK), Transition::Changed);
        assert!(!h.health_flag(health_flag::FAILED_ACTIVE_HC));
        assert_eq!((hc.stats.success.value(), hc.stats.failure.value(), hc.stats.network_failure.value()), (4, 4, 4));
    }

    #[test]
    fn an_unexpected_status_fails_at_once_a_retriable_one_counts() {
        let hc = checker(serde_json::json!({}));
        let h = failed_host();
        let mut st = SessionState::default();
        hc.apply(&h, &mut st, OK);
        let retriable = CheckResult::Unhealthy { kind: FailureType::Active, retriable: true, status: 503 };
        assert_eq!(hc.apply(&h, &mut st, retriable), Transition::ChangePending);
        assert_eq!(hc.apply(&h, &mut st, ACTIVE), Transition::Changed);
        // A timeout on a failed host sets /active_hc_timeout; another failure clears it.
        let timeout = CheckResult::Unhealthy { kind: FailureType::NetworkTimeout, retriable: false, status: 0 };
        hc.apply(&h, &mut st, timeout);
        assert_eq!(h.health_flags(), "/failed_active_hc/active_hc_timeout");
        hc.apply(&h, &mut st, ACTIVE);
        assert_eq!(h.health_flags(), "/failed_active_hc");
        // Passive failures are counted apart.
        let h2 = Host::simple("127.0.0.1:2".parse().unwrap());
        let mut st2 = SessionState { first_check: false, ..Default::default() };
        assert_eq!(hc.set_unhealthy(&h2, &mut st2, FailureType::Passive, false), Transition::Changed);
        assert_eq!(hc.stats.passive_failure.value(), 1);
    }

    #[test]
    fn degraded_and_pending_flags() {
        let hc = checker(serde_json::json!({}));
        let h = failed_host();
        h.set_health_flag(health_flag::PENDING_ACTIVE_HC, true);
        let mut st = SessionState::default();
        // A failing first check still clears /pending_active_hc (a change for the LB).
        assert_eq!(hc.apply(&h, &mut st, NET), Transition::Changed);
        assert_eq!(h.health_flags(), "/failed_active_hc");
        assert_eq!(hc.apply(&h, &mut st, CheckResult::Healthy { degraded: true }), Transition::ChangePending);
        assert_eq!(hc.apply(&h, &mut st, CheckResult::Healthy { degraded: true }), Transition::Changed);
        assert_eq!(h.health_flags(), "/degraded_active_hc");
        assert_eq!(hc.stats.degraded.value(), 1);
        assert_eq!(hc.apply(&h, &mut st, OK), Transition::Changed);
        assert_eq!(hc.stats.degraded.value(), 0);
    }

    #[test]
    fn intervals_follow_envoys_choice_and_jitter_bounds() {
        let hc = checker(serde_json::json!({"interval": "10s", "unhealthy_interval": "20s", "unhealthy_edge_interval": "3s",
                                            "healthy_edge_interval": "2s", "no_traffic_interval": "60s",
                                            "no_traffic_healthy_interval": "90s"}));
        let c = &hc.cfg;
        let s = Duration::from_secs;
        assert_eq!(c.next_interval(true, Transition::Unchanged, true), s(10));
        assert_eq!(c.next_interval(true, Transition::Changed, true), s(10));
        assert_eq!(c.next_interval(true, Transition::ChangePending, true), s(2));
        assert_eq!(c.next_interval(false, Transition::Changed, true), s(20));
        assert_eq!(c.next_interval(false, Transition::ChangePending, true), s(3));
        assert_eq!(c.next_interval(true, Transition::Unchanged, false), s(90));
        assert_eq!(c.next_interval(true, Transition::ChangePending, false), s(60));
        assert_eq!(c.next_interval(false, Transition::Unchanged, false), s(60));
        // Defaults: no_traffic_interval 60 s, the others from interval.
        let d = checker(serde_json::json!({}));
        assert_eq!(d.cfg.next_interval(false, Transition::ChangePending, true), s(10));
        assert_eq!(d.cfg.next_interval(true, Transition::Unchanged, false), s(60));
        // Jitter: interval + [0, 10 % of it) + [0, interval_jitter).
        let j = checker(
            serde_json::json!({"interval": "1s", "interval_jitter": "0.2s", "interval_jitter_percent": 10, "initial_jitter": "0.5s"}),
        );
        for _ in 0..500 {
            let d = j.cfg.next_interval(true, Transition::Unchanged, true);
            assert!(d >= Duration::from_millis(1000) && d < Duration::from_millis(1300), "{d:?}");
            let i = j.cfg.initial_delay();
            assert!(i >= Duration::from_millis(1) && i < Duration::from_millis(500), "{i:?}");
        }
        assert_eq!(checker(serde_json::json!({})).cfg.initial_delay(), Duration::ZERO);
    }

    #[test]
    fn payload_matching_is_ordered_and_fuzzy() {
        let blocks = vec![b"PO".to_vec(), b"NG".to_vec()];
        assert!(payload_matches(&blocks, b"xxPOyyNGzz"));
        assert!(!payload_matches(&blocks, b"NGPO"));
        assert!(payload_matches(&[], b""));
    }

    #[test]
    fn event_lines_are_envoys() {
        let path = std::env::temp_dir().join(format!("sluice-hc-events-{}.log", std::process::id()));
        let settings = EventLogSettings { path: path.display().to_string(), always_log_failures: false, always_log_success: false };
        let log = EventLog::open(&settings, "hc", "HTTP").unwrap();
        let loc = sluice_config::core::Locality { zone: "z1".into(), ..Default::default() };
        let host = Host::new("127.0.0.1:18082".parse().unwrap(), "", 1, loc, Default::default());
        // 2026-12-01T22:02:27.686Z, as real Envoy 1.40 wrote these lines.
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_796_162_547_686);
        let addr = r#""host":{"socket_address":{"protocol":"TCP","address":"127.0.0.1","port_value":18082,"resolver_name":"","ipv4_compat":false,"network_namespace_filepath":""}}"#;
        let loc = r#""locality":{"region":"","zone":"z1","sub_zone":""}"#;
        let ts = r#""timestamp":"2026-12-01T22:02:27.686Z""#;
        assert_eq!(
            log.line(&host, Event::Failure { kind: FailureType::Active, first_check: true, status: 503 }, at),
            format!("{{\"health_checker_type\":\"HTTP\",{addr},\"cluster_name\":\"hc\",{ts},\"health_check_failure_event\":{{\"failure_type\":\"ACTIVE\",\"first_check\":true,\"http_status_code\":503}},{loc}}}\n")
        );
        assert_eq!(
            log.line(&host, Event::AddHealthy { first_check: false }, at),
            format!("{{\"health_checker_type\":\"HTTP\",{addr},\"cluster_name\":\"hc\",\"add_healthy_event\":{{\"first_check\":false}},{ts},{loc}}}\n")
        );
        assert_eq!(
            log.line(&host, Event::Eject { kind: FailureType::Network, status: 0 }, at),
            format!("{{\"health_checker_type\":\"HTTP\",{addr},\"cluster_name\":\"hc\",\"eject_unhealthy_event\":{{\"failure_type\":\"NETWORK\",\"http_status_code\":0}},{ts},{loc}}}\n")
        );
        assert!(log.line(&host, Event::Success, at).ends_with(&format!("{loc},\"successful_health_check_event\":{{}}}}\n")));
        assert!(log.line(&host, Event::Degraded, at).contains(&format!("{ts},\"degraded_healthy_host\":{{}},{loc}")));
        // A whole second has no fraction.
        assert!(log.line(&host, Event::NoLongerDegraded, std::time::UNIX_EPOCH + Duration::from_secs(1_796_162_547)).contains("\"timestamp\":\"2026-12-01T22:02:27Z\""));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_checker_logs_transitions_and_first_or_every_failure() {
        let path = std::env::temp_dir().join(format!("sluice-hc-transitions-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let hc = checker(serde_json::json!({"event_log_path": path.display().to_string(), "unhealthy_threshold": 2}));
        let h = Host::simple("127.0.0.1:1".parse().unwrap());
        h.set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        let mut st = SessionState { first_check: true, ..Default::default() };
        hc.apply(&h, &mut st, ACTIVE); // first check fails: logged as the first failure
        hc.apply(&h, &mut st, CheckResult::Healthy { degraded: false });
        hc.apply(&h, &mut st, CheckResult::Healthy { degraded: false }); // healthy
        hc.apply(&h, &mut st, NETWORK); // pending: not logged
        hc.apply(&h, &mut st, NETWORK); // ejected
        hc.apply(&h, &mut st, NETWORK); // still failing: not logged
        let text = std::fs::read_to_string(&path).unwrap();
        let kinds: Vec<&str> = text
            .lines()
            .map(|l| ["health_check_failure_event", "add_healthy_event", "eject_unhealthy_event"].into_iter().find(|k| l.contains(k)).unwrap())
            .collect();
        assert_eq!(kinds, ["health_check_failure_event", "add_healthy_event", "eject_unhealthy_event"]);
        assert!(text.lines().next().unwrap().contains("\"first_check\":true"));
        assert!(text.lines().nth(1).unwrap().contains("\"add_healthy_event\":{\"first_check\":false}"));
        let _ = std::fs::remove_file(&path);
        // With always_log_health_check_failures every failure is logged.
        let hc = checker(serde_json::json!({"event_log_path": path.display().to_string(), "always_log_health_check_failures": true}));
        let mut st = SessionState { first_check: false, ..Default::default() };
        h.set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        hc.apply(&h, &mut st, NETWORK);
        hc.apply(&h, &mut st, NETWORK);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        let _ = std::fs::remove_file(&path);
    }
}
