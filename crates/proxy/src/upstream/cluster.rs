//! One cluster: its host snapshot + load balancer, circuit breakers, stats, and `send`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Frame;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_config::cluster::{
    CircuitBreakers, Cluster as ClusterConfig, CommonLbConfig, DiscoveryType, ExplicitHttpConfig, ProtocolOptions, RefreshRate,
    RoutingPriority, TcpKeepalive, Thresholds, UpstreamConnectionOptions, UpstreamHttpOptions, UpstreamHttpProtocolOptions,
    UseDownstreamHttpConfig,
};
use sluice_config::core::{CommonHttpProtocolOptions, Http1ProtocolOptions, Http2ProtocolOptions, Metadata, Percent, TypedExtensionConfig};
use sluice_config::listener::{TransportSocket, TransportSocketConfig};
use tokio::io::{AsyncRead, AsyncWrite};

use super::health_check::{HealthCheckConfig, HealthChecker};
use super::host::{health_flag, CoarseHealth, Host, HostLink, HostSet, Outcome};
use super::load_balancer::{self, LbFactory, LoadBalancer};
use super::outlier::{Detector, OutlierConfig};
use super::pool::{ConnLimits, ConnState, ConnUse, LifeStats, Started};
use super::tls::UpstreamTls;
use super::{LbContext, UpstreamFailure};
use crate::access_log::connection::Counted;
use crate::body::{BoxError, Body};
use crate::config_audit::{refused_at_load, without_effect};
use crate::filters::BoxFuture;
use crate::stats::{Counter, Gauge, Histogram, Store};

/// Circuit-breaker limits of one priority (Envoy defaults 1024/1024/1024/3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreakerThresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    /// `retry_budget`: when set, it limits the concurrent retries instead of `max_retries`.
    pub retry_budget: Option<RetryBudgetLimit>,
}

impl Default for CircuitBreakerThresholds {
    fn default() -> Self {
        CircuitBreakerThresholds { max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3, retry_budget: None }
    }
}

/// A retry budget: concurrent retries up to `budget_percent` of the active and pending
/// requests, never fewer than `min_retry_concurrency` (Envoy's defaults 20 % and 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetLimit {
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

impl RetryBudgetLimit {
    /// The concurrent retries allowed with `active` requests active or pending.
    pub fn max_retries(&self, active: u64) -> u64 {
        ((self.budget_percent / 100.0 * active as f64) as u64).max(self.min_retry_concurrency as u64)
    }
}

/// Counter/gauge handles for `cluster.<stat_name>.*`. All handles are registered at build time
/// (so `/stats` lists them with 0, like Envoy); `upstream_rq_<code>` handles are created on first
/// use and cached in a lock-free per-status table.
pub struct ClusterStats {
    store: Store,
    prefix: String,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_completed: Counter,
    pub upstream_rq_pending_total: Counter,
    pub upstream_rq_pending_active: Gauge,
    pub upstream_rq_pending_overflow: Counter,
    pub upstream_rq_active_overflow: Counter,
    pub upstream_rq_timeout: Counter,
    upstream_rq_time: OnceLock<[Histogram; 2]>,
    pub upstream_cx_total: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
    pub upstream_cx_tx_bytes_total: Counter,
    /// `default.total_match_count`: connections that took the cluster's (only) transport socket.
    pub transport_socket_default_match: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_cx_overflow: Counter,
    pub upstream_cx_protocol_error: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_cx_destroy_local: Counter,
    pub upstream_cx_idle_timeout: Counter,
    pub upstream_cx_max_duration_reached: Counter,
    pub upstream_cx_max_requests: Counter,
    pub upstream_cx_destroy_remote: Counter,
    pub upstream_cx_destroy_with_active_rq: Counter,
    pub upstream_cx_destroy_remote_with_active_rq: Counter,
    pub upstream_cx_connect_ms: Histogram,
    pub upstream_cx_length_ms: Histogram,
    pub update_attempt: Counter,
    pub update_success: Counter,
    pub update_failure: Counter,
    pub update_empty: Counter,
    pub update_no_rebuild: Counter,
    /// Counted on every pick made while the cluster is in panic mode.
    pub lb_healthy_panic: Counter,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
    pub membership_degraded: Gauge,
    pub membership_excluded: Gauge,
    pub membership_change: Counter,
    pub cb_cx_open: Gauge,
    pub cb_rq_open: Gauge,
    pub cb_rq_pending_open: Gauge,
    pub cb_rq_retry_open: Gauge,
    pub retry: RetryStats,
    external_rq_completed: Counter,
    /// `[upstream_rq_Nxx, external.upstream_rq_Nxx]` for N = 1..=5, made on first use as Envoy
    /// does (like the per-code counters and the `upstream_rq_time` histograms).
    classes: [OnceLock<[Counter; 2]>; 5],
    /// Index `status - 100` → `[upstream_rq_<code>, external.upstream_rq_<code>]`.
    codes: Box<[OnceLock<[Counter; 2]>]>,
}

/// The router's retry counters of a cluster (Envoy's names).
pub struct RetryStats {
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_retry_overflow: Counter,
    pub upstream_rq_retry_limit_exceeded: Counter,
    pub upstream_rq_retry_backoff_exponential: Counter,
    pub upstream_rq_retry_backoff_ratelimited: Counter,
    pub upstream_rq_per_try_timeout: Counter,
    pub upstream_rq_per_try_idle_timeout: Counter,
}

/// Counters registered only so `/stats` lists them as Envoy does (never incremented here).
const ZERO_COUNTERS: &[&str] = &[
    "assignment_stale",
    "assignment_timeout_received",
    "assignment_use_cached",
    "bind_errors",
    "lb_local_cluster_not_ok",
    "lb_recalculate_zone_structures",
    "lb_subsets_created",
    "lb_subsets_fallback",
    "lb_subsets_fallback_panic",
    "lb_subsets_removed",
    "lb_subsets_selected",
    "lb_zone_cluster_too_small",
    "lb_zone_no_capacity_left",
    "lb_zone_routing_all_directly",
    "lb_zone_routing_cross_zone",
    "lb_zone_routing_sampled",
    "original_dst_host_invalid",
    "retry_or_shadow_abandoned",
    "upstream_cx_close_notify",
    "upstream_cx_connect_attempts_exceeded",
    "upstream_cx_connect_with_0_rtt",
    "upstream_cx_destroy_local_with_active_rq",
    "upstream_cx_http3_total",
    "upstream_cx_pool_overflow",
    "upstream_cx_preconnect_skipped",
    "upstream_flow_control_backed_up_total",
    "upstream_flow_control_drained_total",
    "upstream_flow_control_paused_reading_total",
    "upstream_flow_control_resumed_reading_total",
    "upstream_http3_broken",
    "upstream_internal_redirect_failed_total",
    "upstream_internal_redirect_succeeded_total",
    "upstream_rq_0rtt",
    "upstream_rq_cancelled",
    "upstream_rq_maintenance_mode",
    "upstream_rq_max_duration_reached",
    "upstream_rq_pending_failure_eject",
    "upstream_rq_rx_reset",
    "upstream_rq_rx_reset_no_error",
    "upstream_rq_tx_reset",
];
const ZERO_GAUGES: &[&str] = &[
    "circuit_breakers.default.cx_pool_open",
    "circuit_breakers.high.cx_open",
    "circuit_breakers.high.cx_pool_open",
    "circuit_breakers.high.rq_open",
    "circuit_breakers.high.rq_pending_open",
    "circuit_breakers.high.rq_retry_open",
    "lb_subsets_active",
    "max_host_weight",
    "upstream_queue_overloaded",
    "version",
    "warming_state",
];

impl ClusterStats {
    pub fn new(store: &Store, stat_name: &str) -> ClusterStats {
        let prefix = format!("cluster.{stat_name}.");
        let c = |n: &str| store.counter(format!("{prefix}{n}"));
        let g = |n: &str| store.gauge(format!("{prefix}{n}"));
        let h = |n: &str| store.histogram(format!("{prefix}{n}"));
        for n in ZERO_COUNTERS {
            c(n);
        }
        for n in ZERO_GAUGES {
            g(n);
        }
        store.histogram(format!("{prefix}upstream_rq_per_cx"));
        ClusterStats {
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_pending_total: c("upstream_rq_pending_total"),
            upstream_rq_pending_active: g("upstream_rq_pending_active"),
            upstream_rq_pending_overflow: c("upstream_rq_pending_overflow"),
            upstream_rq_active_overflow: c("upstream_rq_active_overflow"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_time: OnceLock::new(),
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            transport_socket_default_match: c("default.total_match_count"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_overflow: c("upstream_cx_overflow"),
            upstream_cx_protocol_error: c("upstream_cx_protocol_error"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_destroy_local: c("upstream_cx_destroy_local"),
            upstream_cx_idle_timeout: c("upstream_cx_idle_timeout"),
            upstream_cx_max_duration_reached: c("upstream_cx_max_duration_reached"),
            upstream_cx_max_requests: c("upstream_cx_max_requests"),
            upstream_cx_destroy_remote: c("upstream_cx_destroy_remote"),
            upstream_cx_destroy_with_active_rq: c("upstream_cx_destroy_with_active_rq"),
            upstream_cx_destroy_remote_with_active_rq: c("upstream_cx_destroy_remote_with_active_rq"),
            upstream_cx_connect_ms: h("upstream_cx_connect_ms"),
            upstream_cx_length_ms: h("upstream_cx_length_ms"),
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_failure: c("update_failure"),
            update_empty: c("update_empty"),
            update_no_rebuild: c("update_no_rebuild"),
            lb_healthy_panic: c("lb_healthy_panic"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            membership_degraded: g("membership_degraded"),
            membership_excluded: g("membership_excluded"),
            membership_change: c("membership_change"),
            cb_cx_open: g("circuit_breakers.default.cx_open"),
            cb_rq_open: g("circuit_breakers.default.rq_open"),
            cb_rq_pending_open: g("circuit_breakers.default.rq_pending_open"),
            cb_rq_retry_open: g("circuit_breakers.default.rq_retry_open"),
            retry: RetryStats {
                upstream_rq_retry: c("upstream_rq_retry"),
                upstream_rq_retry_success: c("upstream_rq_retry_success"),
                upstream_rq_retry_overflow: c("upstream_rq_retry_overflow"),
                upstream_rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
                upstream_rq_retry_backoff_exponential: c("upstream_rq_retry_backoff_exponential"),
                upstream_rq_retry_backoff_ratelimited: c("upstream_rq_retry_backoff_ratelimited"),
                upstream_rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
                upstream_rq_per_try_idle_timeout: c("upstream_rq_per_try_idle_timeout"),
            },
            external_rq_completed: c("external.upstream_rq_completed"),
            classes: std::array::from_fn(|_| OnceLock::new()),
            codes: (100..600).map(|_| OnceLock::new()).collect(),
            store: store.clone(),
            prefix,
        }
    }

    /// Charge one response (upstream's or local) to this cluster: `upstream_rq_<code>`,
    /// `upstream_rq_<N>xx`, `upstream_rq_completed` (and the `external.` copies), and the
    /// `upstream_rq_time` histogram when `upstream_time_ms` is given.
    pub fn charge_response(&self, status: u16, upstream_time_ms: Option<f64>) {
        self.charge_code(status);
        self.upstream_rq_completed.inc();
        self.external_rq_completed.inc();
        if let Some(ms) = upstream_time_ms {
            let [h, external] = self.upstream_rq_time.get_or_init(|| {
                [
                    self.store.histogram(format!("{}upstream_rq_time", self.prefix)),
                    self.store.histogram(format!("{}external.upstream_rq_time", self.prefix)),
                ]
            });
            h.record(ms);
            external.record(ms);
        }
    }

    /// Charge an interim (1xx) upstream response: its code counters only.
    pub fn charge_informational(&self, status: u16) {
        self.charge_code(status);
    }

    fn charge_code(&self, status: u16) {
        if (100..600).contains(&status) {
            let pair = self.codes[(status - 100) as usize].get_or_init(|| {
                [
                    self.store.counter(format!("{}upstream_rq_{status}", self.prefix)),
                    self.store.counter(format!("{}external.upstream_rq_{status}", self.prefix)),
                ]
            });
            pair[0].inc();
            pair[1].inc();
            let n = status / 100;
            let class = self.classes[(n - 1) as usize].get_or_init(|| {
                [
                    self.store.counter(format!("{}upstream_rq_{n}xx", self.prefix)),
                    self.store.counter(format!("{}external.upstream_rq_{n}xx", self.prefix)),
                ]
            });
            class[0].inc();
            class[1].inc();
        }
    }

    /// A response that was retried: `retry.upstream_rq_<code>` and `retry.upstream_rq_<N>xx`
    /// (Envoy charges these instead of the plain response counters).
    pub fn charge_retried_response(&self, status: u16) {
        if (100..600).contains(&status) {
            self.store.counter(format!("{}retry.upstream_rq_{status}", self.prefix)).inc();
            self.store.counter(format!("{}retry.upstream_rq_{}xx", self.prefix, status / 100)).inc();
            self.store.counter(format!("{}retry.upstream_rq_completed", self.prefix)).inc();
        }
    }

    /// The router counts route-timeout expiry here.
    pub fn upstream_rq_timeout(&self) -> &Counter {
        &self.upstream_rq_timeout
    }
    pub fn store(&self) -> &Store {
        &self.store
    }
    /// `cluster.<stat_name>.`
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Which HTTP version a cluster speaks upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    Downstream,
}

/// The current host snapshot and the load balancers built for it: Envoy's priority load
/// (healthy, then degraded hosts of each priority level, scaled by the overprovisioning factor)
/// and panic mode per level.
struct LbState {
    all: Arc<HostSet>,
    /// The priority levels that have hosts, highest (lowest number) first.
    levels: Vec<Level>,
    /// Percent of picks per level going to its healthy hosts, then to its degraded hosts;
    /// together 100.
    healthy_load: Vec<u32>,
    degraded_load: Vec<u32>,
}

/// The hosts of one priority level and their load balancers.
struct Level {
    healthy: HostSet,
    healthy_lb: Box<dyn LoadBalancer>,
    /// Degraded hosts and their balancer (only when the level has some).
    degraded: Option<(HostSet, Box<dyn LoadBalancer>)>,
    /// Panic mode: every host of the level that is not excluded, whatever its health.
    panic: Option<(HostSet, Box<dyn LoadBalancer>)>,
    /// `locality_weighted_lb_config`: the healthy and the degraded hosts per locality.
    localities: Option<[Option<Localities>; 2]>,
}

/// One level's localities that can take load: cumulative effective weights, each with its
/// hosts and their balancer.
struct Localities(Vec<(f64, HostSet, Box<dyn LoadBalancer>)>);

impl Localities {
    /// Envoy's locality weighting: each locality's `load_balancing_weight` times its
    /// availability (min(1, factor × eligible / all its hosts)); `None` when no locality has a
    /// weight or none has an eligible host (the level's hosts are then used together).
    fn build(level_hosts: &[Arc<Host>], eligible: &[Arc<Host>], factory: &dyn LbFactory, overprovisioning: u32) -> Option<Localities> {
        let mut groups: Vec<(&sluice_config::core::Locality, u32, usize, Vec<Arc<Host>>)> = Vec::new();
        for h in level_hosts {
            match groups.iter_mut().find(|g| *g.0 == h.locality) {
                Some(g) => g.2 += 1,
                None => groups.push((&h.locality, h.locality_weight, 1, Vec::new())),
            }
        }
        if groups.iter().all(|g| g.1 == 0) {
            return None;
        }
        for h in eligible {
            if let Some(g) = groups.iter_mut().find(|g| *g.0 == h.locality) {
                g.3.push(h.clone());
            }
        }
        let mut sum = 0.0;
        let mut out = Vec::new();
        for (_, weight, total, hosts) in groups {
            let availability = (overprovisioning as f64 / 100.0 * hosts.len() as f64 / total as f64).min(1.0);
            let effective = weight as f64 * availability;
            if effective > 0.0 {
                sum += effective;
                let set = HostSet::new(hosts);
                let lb = factory.build(&set);
                out.push((sum, set, lb));
            }
        }
        (!out.is_empty()).then_some(Localities(out))
    }

    fn choose(&self, ctx: &LbContext) -> Option<Arc<Host>> {
        let total = self.0.last().map_or(0.0, |l| l.0);
        let at = rand::random::<f64>() * total;
        let (_, set, lb) = self.0.iter().find(|l| at < l.0).or(self.0.last())?;
        lb.choose(set, ctx)
    }
}

/// One level's hosts sorted by health, before balancers are built.
#[derive(Default)]
struct Sorted {
    /// Every host of the level (excluded ones too).
    hosts: Vec<Arc<Host>>,
    healthy: Vec<Arc<Host>>,
    degraded: Vec<Arc<Host>>,
    available: Vec<Arc<Host>>,
    total: usize,
}

impl Sorted {
    /// Envoy's availability of the level: min(100, factor × healthy (or degraded) hosts / hosts
    /// not excluded), in host weights with `weighted_priority_health`.
    fn availability(&self, hosts: &[Arc<Host>], policy: PriorityPolicy) -> u32 {
        let (part, whole) = if policy.weighted {
            let w = |hs: &[Arc<Host>]| hs.iter().map(|h| h.weight as u64).sum::<u64>();
            (w(hosts), w(&self.available))
        } else {
            (hosts.len() as u64, self.available.len() as u64)
        };
        (policy.overprovisioning as u64 * part).checked_div(whole).map_or(0, |a| a.min(100) as u32)
    }
    /// Below the panic threshold: healthy and degraded hosts are less than it in percent of the
    /// hosts not excluded (an empty level is always below a non-zero threshold).
    fn below_panic_threshold(&self, threshold: f64) -> bool {
        let n = self.available.len();
        let percent = if n == 0 { 0.0 } else { 100.0 * (self.healthy.len() + self.degraded.len()) as f64 / n as f64 };
        percent < threshold
    }
}

/// `load_assignment.policy`: how priority levels' health is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PriorityPolicy {
    /// `overprovisioning_factor` in percent (default 140).
    pub overprovisioning: u32,
    /// `weighted_priority_health`.
    pub weighted: bool,
    /// `common_lb_config.locality_weighted_lb_config`.
    pub locality_weighted: bool,
}

impl Default for PriorityPolicy {
    fn default() -> Self {
        PriorityPolicy { overprovisioning: 140, weighted: false, locality_weighted: false }
    }
}

/// Give each level `min(left, availability × 100 / total)` of `load` in order; returns the
/// first level with availability and the load left.
fn distribute(out: &mut [u32], availability: &[u32], mut load: u32, total: u32) -> (Option<usize>, u32) {
    let mut first = None;
    for (i, a) in availability.iter().enumerate() {
        if first.is_none() && *a > 0 {
            first = Some(i);
        }
        out[i] = load.min(a * 100 / total);
        load -= out[i];
    }
    (first, load)
}

impl LbState {
    /// `[healthy, degraded, excluded]` (what the `membership_*` gauges show).
    fn counts(all: &HostSet) -> [usize; 3] {
        let mut c = [0; 3];
        for h in &all.hosts {
            if h.excluded() {
                c[2] += 1;
                continue;
            }
            match h.coarse_health() {
                CoarseHealth::Healthy => c[0] += 1,
                CoarseHealth::Degraded => c[1] += 1,
                CoarseHealth::Unhealthy => {}
            }
        }
        c
    }

    fn build(all: Arc<HostSet>, factory: &dyn LbFactory, panic_threshold: f64, policy: PriorityPolicy) -> (LbState, [usize; 3]) {
        // Levels 0 to the lowest priority present (at most 128), empty ones included.
        let lowest = all.hosts.iter().map(|h| h.priority).max().unwrap_or(0);
        let mut by_priority: Vec<(u32, Sorted)> = (0..=lowest).map(|p| (p, Sorted::default())).collect();
        for h in &all.hosts {
            let level = &mut by_priority[h.priority as usize].1;
            level.total += 1;
            level.hosts.push(h.clone());
            if h.excluded() {
                continue;
            }
            level.available.push(h.clone());
            match h.coarse_health() {
                CoarseHealth::Healthy => level.healthy.push(h.clone()),
                CoarseHealth::Degraded => level.degraded.push(h.clone()),
                CoarseHealth::Unhealthy => {}
            }
        }
        let counts = Self::counts(&all);
        let sorted = by_priority;
        let health: Vec<u32> = sorted.iter().map(|(_, l)| l.availability(&l.healthy, policy)).collect();
        let degraded: Vec<u32> = sorted.iter().map(|(_, l)| l.availability(&l.degraded, policy)).collect();
        let total = (health.iter().sum::<u32>() + degraded.iter().sum::<u32>()).min(100);
        let n = sorted.len();
        let (mut healthy_load, mut degraded_load) = (vec![0; n], vec![0; n]);
        if total > 0 {
            let (first_healthy, left) = distribute(&mut healthy_load, &health, 100, total);
            let (first_degraded, left) = distribute(&mut degraded_load, &degraded, left, total);
            // Rounding: what is left goes to the first level with healthy hosts, else degraded.
            match (first_healthy, first_degraded) {
                (Some(i), _) => healthy_load[i] += left,
                (None, Some(i)) => degraded_load[i] += left,
                (None, None) => {}
            }
        }
        let panic: Vec<bool> = sorted.iter().map(|(_, l)| total != 100 && l.below_panic_threshold(panic_threshold)).collect();
        if panic_threshold == 0.0 && total == 0 {
            // No host available and panic disabled: the load goes to P0, which has no host.
            healthy_load[0] = 100;
        } else if panic.iter().all(|p| *p) {
            // Every level in panic: the load follows the host counts, whatever their health.
            let hosts: usize = sorted.iter().map(|(_, l)| l.total).sum();
            degraded_load.iter_mut().for_each(|d| *d = 0);
            let mut left = 100;
            for (i, (_, l)) in sorted.iter().enumerate() {
                // No host at all: nothing here, and all of it to P0 below.
                healthy_load[i] = (100 * l.total).checked_div(hosts).unwrap_or(0) as u32;
                left -= healthy_load[i];
            }
            let first = sorted.iter().position(|(_, l)| l.total > 0).unwrap_or(0);
            healthy_load[first] += left;
        }
        let levels = sorted
            .into_iter()
            .zip(panic)
            .enumerate()
            .map(|(i, ((_, l), in_panic))| {
                let localities = policy.locality_weighted.then(|| {
                    [
                        Localities::build(&l.hosts, &l.healthy, factory, policy.overprovisioning),
                        Localities::build(&l.hosts, &l.degraded, factory, policy.overprovisioning),
                    ]
                });
                let healthy = HostSet::new(l.healthy);
                let healthy_lb = factory.build(&healthy);
                let degraded = (!l.degraded.is_empty() && degraded_load[i] > 0).then(|| {
                    let set = HostSet::new(l.degraded);
                    let lb = factory.build(&set);
                    (set, lb)
                });
                let panic = in_panic.then(|| {
                    let set = HostSet::new(l.available);
                    let lb = factory.build(&set);
                    (set, lb)
                });
                Level { healthy, healthy_lb, degraded, panic, localities }
            })
            .collect();
        (LbState { all, levels, healthy_load, degraded_load }, counts)
    }

    /// Envoy's `choosePriority`: the level and whether its degraded hosts take the pick, for a
    /// value below 100 (the request's hash with hashing balancers, else random).
    fn choose_level(&self, value: u32) -> (usize, bool) {
        let mut sum = 0;
        for (i, l) in self.healthy_load.iter().enumerate() {
            sum += l;
            if value < sum {
                return (i, false);
            }
        }
        for (i, l) in self.degraded_load.iter().enumerate() {
            sum += l;
            if value < sum {
                return (i, true);
            }
        }
        (0, false)
    }

    fn choose(&self, ctx: &LbContext, panic_counter: &Counter) -> Option<Arc<Host>> {
        let (i, degraded) = if self.levels.len() == 1 && self.degraded_load[0] == 0 {
            (0, false)
        } else {
            let value = ctx.hash.map_or_else(|| load_balancer::random_below(100) as u32, |h| (h % 100) as u32);
            self.choose_level(value)
        };
        let level = &self.levels[i];
        if let Some((set, lb)) = &level.panic {
            panic_counter.inc();
            return lb.choose(set, ctx);
        }
        if degraded {
            if let Some(l) = level.localities.as_ref().and_then(|[_, d]| d.as_ref()) {
                return l.choose(ctx);
            }
            if let Some((set, lb)) = &level.degraded {
                return lb.choose(set, ctx);
            }
        }
        if let Some(l) = level.localities.as_ref().and_then(|[h, _]| h.as_ref()) {
            return l.choose(ctx);
        }
        level.healthy_lb.choose(&level.healthy, ctx)
    }
}

/// An upstream cluster.
pub struct Cluster {
    name: String,
    config: ClusterConfig,
    shared: Arc<Shared>,
    state: ArcSwap<LbState>,
    lb_factory: Box<dyn LbFactory>,
    tls: Option<UpstreamTls>,
    protocol: Protocol,
    h2_client: H2Client,
    discovery: Discovery,
    connect_timeout: Duration,
    health: ClusterHealth,
    /// Connection life limits (idle timeout, max duration, max requests).
    limits: ConnLimits,
    /// `upstream_connection_options.tcp_keepalive`.
    keepalive: Option<Keepalive>,
}

/// How a cluster finds its hosts (`type`).
pub(crate) enum Discovery {
    /// STATIC: the hosts of `load_assignment`.
    Static,
    /// STRICT_DNS / LOGICAL_DNS: resolved by a discovery task.
    Dns(Arc<super::discovery::DnsSettings>),
}

/// What `Cluster::new` hands to `finish`.
struct BuildParts<'c> {
    lb_factory: Box<dyn LbFactory>,
    tls: Option<UpstreamTls>,
    protocol: Protocol,
    h2_client: H2Client,
    discovery: Discovery,
    circuit_breakers: Option<&'c CircuitBreakers>,
    outlier_detection: Option<&'c sluice_config::cluster::OutlierDetection>,
    common_lb_config: Option<&'c CommonLbConfig>,
    connect_timeout: Duration,
    ignore_health_on_host_removal: bool,
    close_on_failure: bool,
    limits: ConnLimits,
    keepalive: Option<Keepalive>,
    priority_policy: PriorityPolicy,
}

/// What health checking, outlier detection and the panic threshold need in a cluster.
struct ClusterHealth {
    checker: Option<Arc<HealthChecker>>,
    detector: Option<Arc<Detector>>,
    /// `common_lb_config.healthy_panic_threshold` in percent (default 50).
    panic_threshold: f64,
    /// `load_assignment.policy` (overprovisioning factor, weighted priority health).
    priority_policy: PriorityPolicy,
    /// `common_lb_config.ignore_new_hosts_until_first_hc`.
    ignore_new_hosts_until_first_hc: bool,
    /// `ignore_health_on_host_removal`.
    ignore_health_on_host_removal: bool,
    /// `close_connections_on_host_health_failure`.
    close_on_failure: bool,
    /// Serialises host-set changes and rebuilds (control runtime only).
    update: Mutex<()>,
    /// Woken when membership changes (the health checker follows it).
    members: tokio::sync::Notify,
    /// `common_lb_config.update_merge_window` (default 1 s).
    merge_window: Duration,
    merge: Mutex<MergeState>,
    /// The cluster finished warming: from then on updates go through the merge window and are
    /// counted in `cluster_manager.*`, as Envoy's cluster manager sees them.
    live: std::sync::atomic::AtomicBool,
    cm_stats: [Counter; 4],
}

/// Envoy's pending merged update of one cluster.
#[derive(Default)]
struct MergeState {
    /// When the load balancer last got an update.
    last_updated: Option<tokio::time::Instant>,
    /// The generation of the scheduled delivery, if one is pending.
    pending: Option<u64>,
    generation: u64,
}

/// Indexes of `ClusterHealth::cm_stats`.
const CLUSTER_UPDATED: usize = 0;
const UPDATED_VIA_MERGE: usize = 1;
const MERGE_CANCELLED: usize = 2;
const OUT_OF_MERGE_WINDOW: usize = 3;

/// What connection tasks and response bodies need after `send` returned.
struct Shared {
    stats: ClusterStats,
    thresholds: [CircuitBreakerThresholds; 2],
    cx_count: AtomicU64,
    rq_count: AtomicU64,
    pending_count: AtomicU64,
    /// Retries scheduled and not yet decided (`max_retries`).
    retry_count: AtomicU64,
    /// Woken when a connection closes or returns idle (requests waiting on `max_connections`).
    cx_freed: tokio::sync::Notify,
}

impl Shared {
    fn update_cb_gauges(&self) {
        let t = self.thresholds[0];
        let s = &self.stats;
        s.cb_cx_open.set((self.cx_count.load(Ordering::Relaxed) >= t.max_connections as u64) as i64);
        s.cb_rq_open.set((self.rq_count.load(Ordering::Relaxed) >= t.max_requests as u64) as i64);
        s.cb_rq_pending_open.set((self.pending_count.load(Ordering::Relaxed) >= t.max_pending_requests as u64) as i64);
        s.cb_rq_retry_open.set((self.retry_count.load(Ordering::Relaxed) >= self.max_retries()) as i64);
    }

    /// The `max_retries` circuit breaker's limit now: the threshold, or what the retry budget
    /// allows for the requests active and pending.
    fn max_retries(&self) -> u64 {
        let t = &self.thresholds[0];
        match &t.retry_budget {
            None => t.max_retries as u64,
            Some(b) => b.max_retries(self.rq_count.load(Ordering::Relaxed) + self.pending_count.load(Ordering::Relaxed)),
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name).finish_non_exhaustive()
    }
}

fn thresholds(circuit_breakers: Option<&CircuitBreakers>) -> [CircuitBreakerThresholds; 2] {
    let mut out = [CircuitBreakerThresholds::default(); 2];
    let Some(CircuitBreakers { thresholds, per_host_thresholds }) = circuit_breakers else { return out };
    refused_at_load(per_host_thresholds);
    for t in thresholds {
        let Thresholds {
            priority,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            track_remaining,
            max_connection_pools,
            retry_budget,
        } = t;
        refused_at_load(track_remaining);
        refused_at_load(max_connection_pools);
        let retry_budget = retry_budget.as_ref().map(|b| {
            let sluice_config::cluster::RetryBudget { budget_percent, min_retry_concurrency, budget_interval } = b;
            refused_at_load(budget_interval);
            RetryBudgetLimit {
                budget_percent: budget_percent.map_or(20.0, |Percent { value }| value.clamp(0.0, 100.0)),
                min_retry_concurrency: min_retry_concurrency.unwrap_or(3),
            }
        });
        let i = match priority {
            RoutingPriority::Default => 0,
            RoutingPriority::High => 1,
        };
        let d = CircuitBreakerThresholds::default();
        out[i] = CircuitBreakerThresholds {
            max_connections: max_connections.unwrap_or(d.max_connections),
            max_pending_requests: max_pending_requests.unwrap_or(d.max_pending_requests),
            max_requests: max_requests.unwrap_or(d.max_requests),
            max_retries: max_retries.unwrap_or(d.max_retries),
            retry_budget,
        };
    }
    out
}

/// The upstream protocol, HTTP/2 client settings and connection limits from a cluster's protocol
/// options (`typed_extension_protocol_options` or the deprecated cluster fields). The upstream
/// settings sluice does not implement are refused by the validator at their path.
fn upstream_protocol(
    typed_extension_protocol_options: &std::collections::BTreeMap<String, ProtocolOptions>,
    http_protocol_options: Option<&Http1ProtocolOptions>,
    http2_protocol_options: Option<&Http2ProtocolOptions>,
    common_http_protocol_options: Option<&CommonHttpProtocolOptions>,
    max_requests_per_connection: Option<u32>,
) -> (Protocol, H2Client, ConnLimits) {
    let mut common = common_http_protocol_options;
    let mut protocol = if http2_protocol_options.is_some() { Protocol::Http2 } else { Protocol::Http1 };
    // The deprecated field selects HTTP/1.1 explicitly (its upstream settings are refused).
    without_effect(&http_protocol_options, "selects HTTP/1.1, the default; its upstream settings are refused");
    let mut h2 = http2_protocol_options;
    for ProtocolOptions::Http(options) in typed_extension_protocol_options.values() {
        let UpstreamHttpProtocolOptions {
            common_http_protocol_options,
            upstream_http_protocol_options,
            explicit_http_config,
            use_downstream_protocol_config,
            auto_config,
            http_filters,
        } = &**options;
        if let Some(c) = common_http_protocol_options {
            common = Some(c);
        }
        refused_at_load(auto_config);
        refused_at_load(http_filters);
        if let Some(UpstreamHttpOptions { auto_sni, auto_san_validation, override_auto_sni_header }) = upstream_http_protocol_options {
            refused_at_load(auto_sni);
            refused_at_load(auto_san_validation);
            refused_at_load(override_auto_sni_header);
        }
        if let Some(ExplicitHttpConfig { http_protocol_options, http2_protocol_options, http3_protocol_options }) = explicit_http_config {
            refused_at_load(http3_protocol_options);
            without_effect(http_protocol_options, "selects HTTP/1.1; its upstream settings are refused");
            if let Some(o) = http2_protocol_options {
                protocol = Protocol::Http2;
                h2 = Some(o);
            }
        }
        if let Some(UseDownstreamHttpConfig { http_protocol_options, http2_protocol_options, http3_protocol_options }) =
            use_downstream_protocol_config
        {
            refused_at_load(http3_protocol_options);
            without_effect(http_protocol_options, "HTTP/1.1 requests go upstream as HTTP/1.1; its upstream settings are refused");
            protocol = Protocol::Downstream;
            h2 = http2_protocol_options.as_ref();
        }
    }
    let settings = crate::listener::H2Settings::build(h2);
    (
        protocol,
        H2Client {
            initial_stream_window_size: settings.initial_stream_window_size,
            initial_connection_window_size: settings.initial_connection_window_size,
            keepalive: settings.keepalive,
        },
        conn_limits(common, max_requests_per_connection),
    )
}

/// The upstream connection limits of the cluster's `common_http_protocol_options` (and the
/// deprecated cluster `max_requests_per_connection`; the validator refuses both together).
fn conn_limits(common: Option<&CommonHttpProtocolOptions>, legacy_max_requests: Option<u32>) -> ConnLimits {
    let default_common = CommonHttpProtocolOptions::default();
    let CommonHttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_headers_count,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = common.unwrap_or(&default_common);
    without_effect(max_stream_duration, "refused by the validator for upstream connections");
    without_effect(max_headers_count, "refused by the validator for upstream connections");
    without_effect(headers_with_underscores_action, "refused by the validator for upstream connections");
    let idle = idle_timeout.map_or(Duration::from_secs(3600), |d| d.as_std());
    ConnLimits {
        idle_timeout: (!idle.is_zero()).then_some(idle),
        max_duration: max_connection_duration.map(|d| d.as_std()),
        max_requests: max_requests_per_connection.or(legacy_max_requests).and_then(std::num::NonZeroU32::new),
    }
}

/// `upstream_connection_options.tcp_keepalive` as socket options: `None` when absent or
/// disabled (a value of 0, as Envoy reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Keepalive {
    probes: Option<u32>,
    time: Option<u32>,
    interval: Option<u32>,
}

fn keepalive(options: &UpstreamConnectionOptions) -> Option<Keepalive> {
    let UpstreamConnectionOptions { tcp_keepalive, set_local_interface_name_on_upstream_connections, happy_eyeballs_config } = options;
    without_effect(set_local_interface_name_on_upstream_connections, "refused by the validator when true");
    refused_at_load(happy_eyeballs_config);
    let TcpKeepalive { keepalive_probes, keepalive_time, keepalive_interval } = (*tcp_keepalive)?;
    if [keepalive_probes, keepalive_time, keepalive_interval].contains(&Some(0)) {
        return None;
    }
    Some(Keepalive { probes: keepalive_probes, time: keepalive_time, interval: keepalive_interval })
}

/// Turn TCP keepalive on for an upstream socket with the configured probe settings (the OS's
/// for those unset).
fn set_keepalive(tcp: &tokio::net::TcpStream, k: &Keepalive) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(tcp, sockopt::KeepAlive, &true)?;
    if let Some(n) = k.probes {
        setsockopt(tcp, sockopt::TcpKeepCount, &n)?;
    }
    if let Some(n) = k.time {
        setsockopt(tcp, sockopt::TcpKeepIdle, &n)?;
    }
    if let Some(n) = k.interval {
        setsockopt(tcp, sockopt::TcpKeepInterval, &n)?;
    }
    Ok(())
}

/// The upstream HTTP/2 client's settings (`http2_protocol_options`).
#[derive(Debug, Clone, Copy, Default)]
struct H2Client {
    initial_stream_window_size: Option<u32>,
    initial_connection_window_size: Option<u32>,
    keepalive: Option<(Duration, Duration)>,
}

/// An upstream's response, with the HTTP/1.1 connection to pool again once its body ends, and
/// the local address of the connection it came on (`%UPSTREAM_LOCAL_ADDRESS%`).
type Sent = (Response<hyper::body::Incoming>, Option<http1::SendRequest<Body>>, Option<SocketAddr>);

/// The connection a request goes out on, with its local address and the request's use of it.
enum Conn {
    H1 { sender: http1::SendRequest<Body>, reused: bool, local: Option<SocketAddr>, used: ConnUse },
    H2(http2::SendRequest<Body>, Option<SocketAddr>, ConnUse),
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Cluster {
    /// Build a cluster: its STATIC hosts from `load_assignment`, plus `hosts` (tests add hosts
    /// of their own); DNS clusters start empty and are filled by discovery.
    pub fn new(config: &ClusterConfig, stats: &Store, hosts: Vec<Arc<Host>>) -> anyhow::Result<Cluster> {
        let ClusterConfig {
            name,
            alt_stat_name,
            type_,
            cluster_type,
            eds_cluster_config,
            connect_timeout,
            per_connection_buffer_limit_bytes,
            lb_policy,
            load_assignment,
            health_checks,
            max_requests_per_connection,
            circuit_breakers,
            typed_extension_protocol_options,
            http2_protocol_options,
            http_protocol_options,
            common_http_protocol_options,
            dns_refresh_rate,
            dns_failure_refresh_rate,
            respect_dns_ttl,
            dns_lookup_family,
            dns_jitter,
            dns_resolvers,
            use_tcp_for_dns_lookups,
            typed_dns_resolver_config,
            transport_socket,
            transport_socket_matches,
            outlier_detection,
            ring_hash_lb_config,
            maglev_lb_config,
            least_request_lb_config,
            round_robin_lb_config,
            common_lb_config,
            load_balancing_policy,
            upstream_connection_options,
            upstream_bind_config,
            close_connections_on_host_health_failure,
            ignore_health_on_host_removal,
            metadata,
        } = config;
        for refused in [
            cluster_type,
            eds_cluster_config,
            per_connection_buffer_limit_bytes,
            dns_resolvers,
            transport_socket_matches,
            load_balancing_policy,
            upstream_bind_config,
        ] {
            refused_at_load(refused);
        }
        if let Some(Metadata { filter_metadata, typed_filter_metadata }) = metadata {
            refused_at_load(typed_filter_metadata);
            without_effect(filter_metadata, "read only by features sluice refuses (subset load balancing, %CLUSTER_METADATA%)");
        }
        let lb_factory = load_balancer::factory(
            name,
            *lb_policy,
            least_request_lb_config.as_ref(),
            ring_hash_lb_config.as_ref(),
            maglev_lb_config.as_ref(),
            round_robin_lb_config.as_ref(),
        )?;
        let tls = match transport_socket {
            Some(TransportSocket { name: socket_name, typed_config }) => {
                without_effect(socket_name, "the transport socket is chosen by its typed_config");
                match typed_config {
                    TransportSocketConfig::UpstreamTls(ctx) => Some(UpstreamTls::new(ctx, name)?),
                    TransportSocketConfig::RawBuffer(_) => None,
                    TransportSocketConfig::DownstreamTls(_) => {
                        anyhow::bail!("cluster '{name}': transport_socket must be an UpstreamTlsContext")
                    }
                }
            }
            None => None,
        };
        let (protocol, h2_client, limits) = upstream_protocol(
            typed_extension_protocol_options,
            http_protocol_options.as_ref(),
            http2_protocol_options.as_ref(),
            common_http_protocol_options.as_ref(),
            *max_requests_per_connection,
        );
        let (endpoints, priority_policy) = super::discovery::endpoints(name, load_assignment.as_ref())?;
        let discovery = match type_ {
            DiscoveryType::Static => Discovery::Static,
            DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
                let logical = *type_ == DiscoveryType::LogicalDns;
                anyhow::ensure!(
                    !logical || endpoints.len() == 1,
                    "cluster '{name}': LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint"
                );
                let refresh_rate = dns_refresh_rate.map_or(Duration::from_secs(5), |d| d.as_std());
                Discovery::Dns(Arc::new(super::discovery::DnsSettings {
                    logical,
                    endpoints: endpoints.clone(),
                    refresh_rate,
                    failure_refresh: dns_failure_refresh_rate.as_ref().map(|RefreshRate { base_interval, max_interval }| {
                        let base = base_interval.as_std();
                        (base, max_interval.map_or(base * 10, |m| m.as_std()))
                    }),
                    respect_ttl: *respect_dns_ttl,
                    family: *dns_lookup_family,
                    jitter: dns_jitter.map(|d| d.as_std()).filter(|d| !d.is_zero()),
                    use_tcp: use_tcp_for_dns_lookups.unwrap_or(false),
                    resolver: typed_dns_resolver_config.as_ref().map(|t| {
                        let TypedExtensionConfig { name: resolver_name, typed_config } = t;
                        without_effect(resolver_name, "the resolver is chosen by its typed_config");
                        typed_config.clone()
                    }),
                }))
            }
            other => anyhow::bail!("cluster '{name}': discovery type {other:?} is not supported"),
        };
        let mut all_hosts = match discovery {
            Discovery::Static => super::discovery::static_hosts(name, &endpoints)?,
            Discovery::Dns(_) => Vec::new(),
        };
        all_hosts.extend(hosts);
        let store = stats;
        let stats = ClusterStats::new(store, alt_stat_name.as_deref().unwrap_or(name));
        // The validator refuses a second health check.
        let checker = match health_checks.as_slice() {
            [] => None,
            [hc] => Some(Arc::new(HealthChecker::new(HealthCheckConfig::build(hc)?, store, stats.prefix(), name)?)),
            _ => anyhow::bail!("cluster '{name}': at most one health check is supported"),
        };
        Self::finish(config, store, stats, checker, all_hosts, BuildParts {
            lb_factory,
            tls,
            protocol,
            h2_client,
            discovery,
            circuit_breakers: circuit_breakers.as_ref(),
            outlier_detection: outlier_detection.as_ref(),
            common_lb_config: common_lb_config.as_ref(),
            connect_timeout: connect_timeout.map_or(Duration::from_secs(5), |d| d.as_std()),
            ignore_health_on_host_removal: *ignore_health_on_host_removal,
            close_on_failure: *close_connections_on_host_health_failure,
            limits,
            keepalive: upstream_connection_options.as_ref().and_then(keepalive),
            priority_policy,
        })
    }

    fn finish(
        config: &ClusterConfig,
        store: &Store,
        stats: ClusterStats,
        checker: Option<Arc<HealthChecker>>,
        hosts: Vec<Arc<Host>>,
        parts: BuildParts<'_>,
    ) -> anyhow::Result<Cluster> {
        let BuildParts {
            lb_factory,
            tls,
            protocol,
            h2_client,
            discovery,
            circuit_breakers,
            outlier_detection,
            common_lb_config,
            connect_timeout,
            ignore_health_on_host_removal,
            close_on_failure,
            limits,
            keepalive,
            priority_policy,
        } = parts;
        let detector = match outlier_detection {
            Some(od) => Some(Arc::new(Detector::new(OutlierConfig::build(od)?, store, stats.prefix()))),
            None => None,
        };
        let default_lb = CommonLbConfig::default();
        let CommonLbConfig {
            healthy_panic_threshold,
            zone_aware_lb_config,
            locality_weighted_lb_config,
            update_merge_window,
            ignore_new_hosts_until_first_hc,
            close_connections_on_host_set_change,
            consistent_hashing_lb_config,
            override_host_status,
        } = common_lb_config.unwrap_or(&default_lb);
        // The validator refuses it with RING_HASH and MAGLEV, whose tables sluice builds
        // without locality weights.
        let priority_policy = PriorityPolicy { locality_weighted: locality_weighted_lb_config.is_some(), ..priority_policy };
        for refused in [
            zone_aware_lb_config,
            close_connections_on_host_set_change,
            consistent_hashing_lb_config,
            override_host_status,
        ] {
            refused_at_load(refused);
        }
        let health = ClusterHealth {
            checker,
            detector,
            panic_threshold: healthy_panic_threshold.map_or(50.0, |Percent { value }| value.clamp(0.0, 100.0)),
            priority_policy,
            ignore_new_hosts_until_first_hc: *ignore_new_hosts_until_first_hc,
            ignore_health_on_host_removal,
            close_on_failure,
            update: Mutex::new(()),
            members: tokio::sync::Notify::new(),
            merge_window: update_merge_window.map_or(Duration::from_secs(1), |d| d.as_std()),
            merge: Mutex::new(MergeState::default()),
            live: std::sync::atomic::AtomicBool::new(false),
            cm_stats: ["cluster_updated", "cluster_updated_via_merge", "update_merge_cancelled", "update_out_of_merge_window"]
                .map(|n| store.counter(format!("cluster_manager.{n}"))),
        };
        let (lb_state, _) = LbState::build(Arc::new(HostSet::default()), lb_factory.as_ref(), health.panic_threshold, health.priority_policy);
        let state = ArcSwap::from_pointee(lb_state);
        let c = Cluster {
            name: config.name.clone(),
            config: config.clone(),
            shared: Arc::new(Shared {
                stats,
                thresholds: thresholds(circuit_breakers),
                cx_count: AtomicU64::new(0),
                rq_count: AtomicU64::new(0),
                retry_count: AtomicU64::new(0),
                pending_count: AtomicU64::new(0),
                cx_freed: tokio::sync::Notify::new(),
            }),
            state,
            lb_factory,
            tls,
            protocol,
            h2_client,
            discovery,
            connect_timeout,
            health,
            limits,
            keepalive,
        };
        c.set_hosts(hosts);
        Ok(c)
    }

    /// `connect_timeout` (default 5 s).
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// How the cluster finds its hosts.
    pub(crate) fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }
    pub fn stats(&self) -> &ClusterStats {
        &self.shared.stats
    }
    /// The current host snapshot (all hosts, routable or not).
    pub fn hosts(&self) -> Arc<HostSet> {
        self.state.load().all.clone()
    }
    /// `[default, high]` priority thresholds.
    pub fn thresholds(&self) -> [CircuitBreakerThresholds; 2] {
        self.shared.thresholds
    }

    /// Replace the host set (discovery). Hosts joining for the first time are linked to the
    /// cluster's health checker and detector (with health checks they start
    /// `/failed_active_hc`); hosts no longer present leave and start draining, except that with
    /// active health checking a host still passing its checks stays as
    /// `/pending_dynamic_removal` until it fails one (unless `ignore_health_on_host_removal`).
    /// Returns whether membership changed.
    pub(crate) fn set_hosts(&self, hosts: Vec<Arc<Host>>) -> bool {
        let _g = self.health.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.state.load_full();
        let mut hosts = hosts;
        for h in &hosts {
            self.link_host(h);
            h.set_health_flag(health_flag::PENDING_DYNAMIC_REMOVAL, false);
        }
        let keep_healthy = self.health.checker.is_some() && !self.health.ignore_health_on_host_removal;
        for h in &old.all.hosts {
            if keep_healthy
                && !hosts.iter().any(|n| Arc::ptr_eq(n, h))
                && !h.health_flag(health_flag::FAILED_ACTIVE_HC | health_flag::FAILED_EDS_HEALTH)
            {
                h.set_health_flag(health_flag::PENDING_DYNAMIC_REMOVAL, true);
                hosts.push(h.clone());
            }
        }
        self.replace_hosts(&old, hosts)
    }

    /// Store a new host list (under the update lock).
    fn replace_hosts(&self, old: &LbState, hosts: Vec<Arc<Host>>) -> bool {
        let changed = old.all.hosts.len() != hosts.len()
            || old.all.hosts.iter().zip(&hosts).any(|(a, b)| !Arc::ptr_eq(a, b));
        if !changed {
            return false;
        }
        let all = Arc::new(HostSet::new(hosts));
        for h in &old.all.hosts {
            if !all.hosts.iter().any(|n| Arc::ptr_eq(n, h)) {
                if let Some(d) = &self.health.detector {
                    d.on_host_removed(h);
                }
                h.start_draining();
            }
        }
        self.shared.stats.membership_change.inc();
        if self.health.live.load(Ordering::Acquire) {
            // Not mergeable: delivered now, cancelling a pending merged update.
            let mut m = self.health.merge.lock().unwrap_or_else(|e| e.into_inner());
            if !self.health.merge_window.is_zero() {
                if m.pending.take().is_some() {
                    self.health.cm_stats[MERGE_CANCELLED].inc();
                }
                m.last_updated = Some(tokio::time::Instant::now());
            }
            self.health.cm_stats[CLUSTER_UPDATED].inc();
        }
        self.store_state(all);
        self.health.members.notify_one();
        true
    }

    /// Warming finished (first discovery answer and first health checks): later updates are
    /// merged and counted as Envoy's cluster manager does.
    pub(crate) fn mark_live(&self) {
        self.health.live.store(true, Ordering::Release);
    }

    /// First time in this cluster: connect the host to the health checker and detector.
    fn link_host(&self, h: &Arc<Host>) {
        if h.link.get().is_some() {
            return;
        }
        if self.health.checker.is_some() {
            let mut f = health_flag::FAILED_ACTIVE_HC;
            if self.health.ignore_new_hosts_until_first_hc {
                f |= health_flag::PENDING_ACTIVE_HC;
            }
            h.set_health_flag(f, true);
        }
        let _ = h.link.set(HostLink {
            outlier: self.health.detector.as_ref().map(|d| d.sink.clone()),
            health_checker: self.health.checker.as_ref().map(|c| c.tx.clone()),
            close_on_failure: self.health.close_on_failure,
        });
    }

    /// Build and swap in the load balancers for `all` with the hosts' current health.
    fn store_state(&self, all: Arc<HostSet>) {
        self.set_membership_gauges(&all);
        let (st, _) = LbState::build(all, self.lb_factory.as_ref(), self.health.panic_threshold, self.health.priority_policy);
        self.state.store(Arc::new(st));
    }

    /// Health flags of `hosts` changed (active health checking, outlier detection): close their
    /// connections when they became unhealthy and `close_connections_on_host_health_failure` is
    /// set, and rebuild the load balancers. Control runtime only.
    ///
    /// The `membership_*` gauges change at once; the load balancers follow Envoy's
    /// `update_merge_window`: an update more than a window after the previous one is delivered
    /// at once, others are merged and delivered together a window after the first of them.
    pub(crate) fn on_health_changed(self: &Arc<Self>, hosts: &[Arc<Host>]) {
        if self.health.close_on_failure {
            for h in hosts {
                if h.coarse_health() == CoarseHealth::Unhealthy {
                    h.pool.close_idle();
                }
            }
        }
        let h = &self.health;
        let _g = h.update.lock().unwrap_or_else(|e| e.into_inner());
        let all = self.state.load().all.clone();
        if !h.live.load(Ordering::Acquire) || h.merge_window.is_zero() {
            if h.live.load(Ordering::Acquire) {
                h.cm_stats[CLUSTER_UPDATED].inc();
            }
            self.store_state(all);
            return;
        }
        let now = tokio::time::Instant::now();
        let mut m = h.merge.lock().unwrap_or_else(|e| e.into_inner());
        let out_of_window = m.last_updated.is_none_or(|t| now.saturating_duration_since(t) > h.merge_window);
        if out_of_window {
            h.cm_stats[OUT_OF_MERGE_WINDOW].inc();
            if m.pending.take().is_some() {
                h.cm_stats[MERGE_CANCELLED].inc();
            }
            m.last_updated = Some(now);
            drop(m);
            h.cm_stats[CLUSTER_UPDATED].inc();
            self.store_state(all);
            return;
        }
        self.set_membership_gauges(&all);
        if m.pending.is_none() {
            m.generation += 1;
            let generation = m.generation;
            m.pending = Some(generation);
            let c = self.clone();
            let window = h.merge_window;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                c.deliver_merged(generation);
            });
        }
    }

    /// The merge window of a pending update ended: deliver it (unless it was cancelled).
    fn deliver_merged(&self, generation: u64) {
        let h = &self.health;
        let _g = h.update.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = h.merge.lock().unwrap_or_else(|e| e.into_inner());
        if m.pending != Some(generation) {
            return;
        }
        m.pending = None;
        m.last_updated = Some(tokio::time::Instant::now());
        drop(m);
        h.cm_stats[UPDATED_VIA_MERGE].inc();
        self.store_state(self.state.load().all.clone());
    }

    fn set_membership_gauges(&self, all: &HostSet) {
        let [healthy, degraded, excluded] = LbState::counts(all);
        let s = &self.shared.stats;
        s.membership_total.set(all.len() as i64);
        s.membership_healthy.set(healthy as i64);
        s.membership_degraded.set(degraded as i64);
        s.membership_excluded.set(excluded as i64);
    }

    /// A host kept as `/pending_dynamic_removal` failed its health check: it leaves now.
    pub(crate) fn remove_host(&self, host: &Arc<Host>) {
        let _g = self.health.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.state.load_full();
        let hosts = old.all.hosts.iter().filter(|h| !Arc::ptr_eq(h, host)).cloned().collect();
        if !self.replace_hosts(&old, hosts) {
            self.store_state(old.all.clone());
        }
    }

    /// Resolves when membership changed since the last call.
    pub(crate) async fn members_changed(&self) {
        self.health.members.notified().await
    }

    pub(crate) fn health_checker(&self) -> Option<&Arc<HealthChecker>> {
        self.health.checker.as_ref()
    }

    /// The outlier detector (`outlier_detection`), if configured.
    pub fn detector(&self) -> Option<&Arc<Detector>> {
        self.health.detector.as_ref()
    }

    pub(crate) fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_ref()
    }

    /// Whether the cluster ever opened a connection for traffic (Envoy's rule for
    /// `no_traffic_interval`; health-check connections do not count).
    pub(crate) fn traffic_seen(&self) -> bool {
        self.shared.stats.upstream_cx_total.used()
    }

    /// The router's retry counters.
    pub fn retry_stats(&self) -> &RetryStats {
        &self.shared.stats.retry
    }

    /// Take one retry of the `max_retries` circuit breaker; `None` when it is open. The retry
    /// counts until the guard drops.
    pub fn try_retry(&self) -> Option<RetryGuard> {
        let sh = &self.shared;
        let max = sh.max_retries();
        if sh.retry_count.fetch_add(1, Ordering::AcqRel) >= max {
            sh.retry_count.fetch_sub(1, Ordering::AcqRel);
            sh.update_cb_gauges();
            return None;
        }
        sh.update_cb_gauges();
        Some(RetryGuard { shared: sh.clone() })
    }

    /// Choose a host as [`Self::send`] does (panic mode and degraded hosts included); `None`
    /// when no host is routable. For callers that pick the host themselves (retries with
    /// `previous_hosts`): pick, check, and pass it to [`Self::send_to`].
    pub fn choose_host(&self, ctx: &LbContext) -> Option<Arc<Host>> {
        self.state.load().choose(ctx, &self.shared.stats.lb_healthy_panic)
    }

    /// Envoy's host selection with a retry host predicate: pick up to `1 + extra_attempts`
    /// times (`host_selection_retry_max_attempts`) until `reject` accepts a host (e.g.
    /// `previous_hosts`); the last pick when every one was rejected.
    pub fn choose_host_with(&self, ctx: &LbContext, extra_attempts: u32, reject: impl Fn(&Host) -> bool) -> Option<Arc<Host>> {
        let st = self.state.load();
        let mut host = st.choose(ctx, &self.shared.stats.lb_healthy_panic)?;
        for _ in 0..extra_attempts {
            if !reject(&host) {
                break;
            }
            host = st.choose(ctx, &self.shared.stats.lb_healthy_panic)?;
        }
        Some(host)
    }

    /// Choose a host with the LB, take a pooled connection or connect (bounded by
    /// `connect_timeout`), apply circuit breakers, send. The response body streams; the
    /// connection returns to the pool when the body ends.
    pub async fn send(&self, req: Request<Body>, ctx: &LbContext) -> Result<Response<Body>, UpstreamFailure> {
        let Some(host) = self.choose_host(ctx) else {
            self.shared.stats.upstream_cx_none_healthy.inc();
            return Err(UpstreamFailure::NoHealthyUpstream);
        };
        self.send_to(host, req, ctx).await
    }

    /// [`Self::send`] to a host the caller chose ([`Self::choose_host`],
    /// [`Self::choose_host_with`]). The attempt's result is reported to outlier detection
    /// (connect success/failure, reset, response status); a timeout the caller applies around
    /// this future is the caller's to report ([`Host::report`] with [`Outcome::Timeout`]).
    pub async fn send_to(&self, host: Arc<Host>, req: Request<Body>, ctx: &LbContext) -> Result<Response<Body>, UpstreamFailure> {
        let h2 = match self.protocol {
            Protocol::Http1 => false,
            Protocol::Http2 => true,
            Protocol::Downstream => ctx.downstream_http2,
        };
        let rq = RqGuard::acquire(&self.shared, &host)?;
        let conn = match self.acquire_conn(&host, h2).await {
            Ok(c) => c,
            Err(e) => {
                host.stats.rq_error.fetch_add(1, Ordering::Relaxed);
                if e != UpstreamFailure::Overflow {
                    host.report(Outcome::ConnectFailed);
                }
                return Err(e);
            }
        };
        host.report(Outcome::ConnectSuccess);
        self.shared.stats.upstream_rq_total.inc();
        host.stats.rq_total.fetch_add(1, Ordering::Relaxed);
        let req = self.prepare(req, h2);
        let (result, used) = match conn {
            Conn::H1 { mut sender, reused, local, used } => match sender.try_send_request(req).await {
                Ok(resp) => (Ok((resp, Some(sender), local)), Some(used)),
                Err(e) => {
                    drop(used);
                    match self.after_failed_send(e, reused, &host).await {
                        Ok((sent, used)) => (Ok(sent), Some(used)),
                        Err(e) => (Err(e), None),
                    }
                }
            },
            Conn::H2(mut sender, local, used) => {
                (sender.send_request(req).await.map(|r| (r, None, local)).map_err(|e| self.map_error(&e)), Some(used))
            }
        };
        match result {
            // Framing Envoy's HTTP/1 codec refuses in a response (hyper accepts it): 502, and
            // the connection is not reused.
            Ok((resp, Some(_), _)) if !http1_framing_ok(resp.headers()) => {
                self.shared.stats.upstream_cx_protocol_error.inc();
                host.stats.rq_error.fetch_add(1, Ordering::Relaxed);
                Err(UpstreamFailure::ProtocolError)
            }
            Ok((resp, sender, local)) => {
                host.report(Outcome::HttpStatus(resp.status().as_u16()));
                host.check_immediate_health_check_fail(resp.headers());
                // A switched connection belongs to its tunnel, never to the pool.
                let switched = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
                    || (resp.status().is_success() && resp.extensions().get::<hyper::upgrade::OnUpgrade>().is_some());
                let sender = if switched { None } else { sender };
                if switched {
                    if let Some(u) = &used {
                        u.state().switch();
                    }
                }
                if resp.status().is_server_error() {
                    host.stats.rq_error.fetch_add(1, Ordering::Relaxed);
                } else {
                    host.stats.rq_success.fetch_add(1, Ordering::Relaxed);
                }
                let (mut parts, body) = resp.into_parts();
                if ctx.report_host {
                    parts.extensions.insert(crate::stream_info::UpstreamHost(host.address));
                    if let Some(local) = local {
                        parts.extensions.insert(crate::stream_info::UpstreamLocalAddress(local));
                    }
                }
                let done = Done { _rq: rq, sender: sender.map(|s| (s, local)), used, host: host.clone(), shared: self.shared.clone() };
                let body = UpstreamBody::new(body, done, ctx.response_deadline, ctx.response_idle.clone());
                Ok(Response::from_parts(parts, Body::boxed(body)))
            }
            Err(e) => {
                host.stats.rq_error.fetch_add(1, Ordering::Relaxed);
                host.report(Outcome::ConnectFailed);
                Err(e)
            }
        }
    }

    /// A request a pooled HTTP/1.1 connection did not take: when the connection had closed
    /// before the request was written, replay it once on a new connection; otherwise the
    /// failure. Boxed, like [`Self::connect`]: a rare path kept out of every request's state.
    fn after_failed_send<'a>(
        &'a self,
        mut e: hyper::client::conn::TrySendError<Request<Body>>,
        reused: bool,
        host: &'a Arc<Host>,
    ) -> BoxFuture<'a, Result<(Sent, ConnUse), UpstreamFailure>> {
        Box::pin(async move {
            let req = match (reused, e.take_message()) {
                (true, Some(req)) => req,
                _ => return Err(self.map_error(e.error())),
            };
            drop(e);
            match self.connect(host, false).await? {
                Conn::H1 { mut sender, local, used, .. } => {
                    sender.send_request(req).await.map(|r| ((r, Some(sender), local), used)).map_err(|e| self.map_error(&e))
                }
                Conn::H2(..) => unreachable!("HTTP/1.1 connect"),
            }
        })
    }

    fn map_error(&self, e: &hyper::Error) -> UpstreamFailure {
        let s = &self.shared.stats;
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
            s.upstream_cx_protocol_error.inc();
            return UpstreamFailure::ProtocolError;
        }
        // An HTTP/2 stream reset by the upstream (the connection lives on).
        let reset = std::error::Error::source(e).and_then(|s| s.downcast_ref::<h2::Error>()).filter(|h| h.is_reset() && h.is_remote());
        if let Some(reason) = reset.and_then(h2::Error::reason) {
            let refused = reason == h2::Reason::REFUSED_STREAM;
            // Envoy counts a refused stream apart from other resets.
            if !refused {
                s.store().counter(format!("{}upstream_rq_rx_reset", s.prefix())).inc();
            }
            return UpstreamFailure::RemoteReset { refused };
        }
        s.upstream_cx_destroy_remote.inc();
        s.upstream_cx_destroy_remote_with_active_rq.inc();
        s.upstream_cx_destroy_with_active_rq.inc();
        UpstreamFailure::ConnectionTermination
    }

    /// Make the request fit the wire protocol.
    fn prepare(&self, req: Request<Body>, h2: bool) -> Request<Body> {
        let (mut parts, body) = req.into_parts();
        let pq = |uri: &Uri| uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".to_string());
        if h2 {
            let pq = pq(&parts.uri);
            let authority = parts
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .or_else(|| parts.uri.authority().map(|a| a.as_str().to_string()))
                .unwrap_or_default();
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            if let Ok(uri) = Uri::builder().scheme(scheme).authority(authority.as_str()).path_and_query(pq.as_str()).build() {
                parts.uri = uri;
            }
            for h in ["host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"] {
                parts.headers.remove(h);
            }
            if parts.headers.get(http::header::TE).is_some_and(|v| v != "trailers") {
                parts.headers.remove(http::header::TE);
            }
            parts.version = Version::HTTP_2;
        } else {
            if !parts.headers.contains_key(http::header::HOST) {
                if let Some(a) = parts.uri.authority() {
                    if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                        parts.headers.insert(http::header::HOST, v);
                    }
                }
            }
            // HTTP/1.1 upstreams get origin-form; most requests already are (CONNECT keeps its
            // authority-form).
            if parts.method != Method::CONNECT && (parts.uri.scheme().is_some() || parts.uri.authority().is_some()) {
                if let Ok(uri) = pq(&parts.uri).parse() {
                    parts.uri = uri;
                }
            }
            // Envoy's HTTP/1 codec announces an empty body for methods that carry one.
            if http_body::Body::is_end_stream(&body)
                && !matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE | Method::TRACE | Method::CONNECT)
                && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
                && !parts.headers.contains_key(http::header::TRANSFER_ENCODING)
            {
                parts.headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
            parts.version = Version::HTTP_11;
        }
        Request::from_parts(parts, body)
    }

    /// A pooled connection, or a new one within the circuit breakers.
    async fn acquire_conn(&self, host: &Arc<Host>, h2: bool) -> Result<Conn, UpstreamFailure> {
        let sh = &self.shared;
        let t = sh.thresholds[0];
        let mut pending: Option<PendingGuard> = None;
        loop {
            let notified = sh.cx_freed.notified();
            if h2 {
                if let Some((s, local, started)) = host.pool.h2(&self.limits) {
                    return Ok(Conn::H2(s, local, self.started(started)));
                }
            } else if let Some((s, local, started)) = host.pool.take_h1(&self.limits).await {
                return Ok(Conn::H1 { sender: s, reused: true, local, used: self.started(started) });
            }
            if pending.is_none() {
                pending = Some(PendingGuard::acquire(sh, host)?);
            }
            if sh.cx_count.load(Ordering::Relaxed) < t.max_connections as u64 {
                if h2 {
                    // One connect per host at a time; the others then share it.
                    let _g = host.pool.h2_connect.lock().await;
                    if let Some((s, local, started)) = host.pool.h2(&self.limits) {
                        return Ok(Conn::H2(s, local, self.started(started)));
                    }
                    return self.connect(host, true).await;
                }
                return self.connect(host, false).await;
            }
            // At max_connections: stay pending until a connection frees up.
            sh.stats.upstream_cx_overflow.inc();
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }

    /// A request started on a connection: `upstream_cx_max_requests` when it used up
    /// `max_requests_per_connection`.
    fn started(&self, started: Started) -> ConnUse {
        if started.reached_max_requests {
            self.shared.stats.upstream_cx_max_requests.inc();
        }
        started.conn
    }

    fn life_stats(&self) -> LifeStats {
        let s = &self.shared.stats;
        LifeStats {
            idle_timeout: s.upstream_cx_idle_timeout.clone(),
            max_duration_reached: s.upstream_cx_max_duration_reached.clone(),
            destroy_local: s.upstream_cx_destroy_local.clone(),
        }
    }

    /// Open a connection to `host` (TCP, then TLS if configured, then the HTTP handshake).
    ///
    /// Boxed: connecting is rare next to sending, and its state (TLS handshake, HTTP/2
    /// handshake) is large; inline it would size every request's future (and the copies the
    /// runtime makes of it when an HTTP/2 stream task is spawned) for the rare path.
    fn connect<'a>(&'a self, host: &'a Arc<Host>, h2: bool) -> BoxFuture<'a, Result<Conn, UpstreamFailure>> {
        Box::pin(self.open_connection(host, h2))
    }

    async fn open_connection(&self, host: &Arc<Host>, h2: bool) -> Result<Conn, UpstreamFailure> {
        let s = &self.shared.stats;
        s.upstream_cx_total.inc();
        host.stats.cx_total.fetch_add(1, Ordering::Relaxed);
        if h2 {
            s.upstream_cx_http2_total.inc();
        } else {
            s.upstream_cx_http1_total.inc();
        }
        let guard = CxGuard::new(&self.shared, host);
        let start = Instant::now();
        let addr = host.address;
        let fut = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| Some(connect_error(&e)))?;
            let _ = tcp.set_nodelay(true);
            if let Some(k) = &self.keepalive {
                let _ = set_keepalive(&tcp, k);
            }
            let local = tcp.local_addr().ok();
            let io: Box<dyn Io> = match &self.tls {
                Some(tls) => Box::new(tls.connect(tcp, addr.ip(), h2).await.map_err(|e| Some(format!("TLS_error:|{e}")))?),
                None => Box::new(tcp),
            };
            Ok::<_, Option<String>>((io, local))
        };
        let (io, local) = match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(Ok(io)) => io,
            Ok(Err(reason)) => {
                s.upstream_cx_connect_fail.inc();
                host.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                return Err(UpstreamFailure::ConnectionFailure { transport_reason: reason });
            }
            Err(_) => {
                s.upstream_cx_connect_fail.inc();
                s.upstream_cx_connect_timeout.inc();
                host.stats.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
                return Err(UpstreamFailure::ConnectTimeout);
            }
        };
        s.upstream_cx_connect_ms.record(start.elapsed().as_secs_f64() * 1000.0);
        s.transport_socket_default_match.inc();
        let io = TokioIo::new(Counted::new(io, None, s.upstream_cx_rx_bytes_total.clone(), s.upstream_cx_tx_bytes_total.clone()));
        if h2 {
            let mut b = http2::Builder::new(TokioExecutor::new());
            let o = self.h2_client;
            if let Some(w) = o.initial_stream_window_size {
                b.initial_stream_window_size(w);
            }
            if let Some(w) = o.initial_connection_window_size {
                b.initial_connection_window_size(w);
            }
            if let Some((interval, timeout)) = o.keepalive {
                b.timer(hyper_util::rt::TokioTimer::new()).keep_alive_interval(interval).keep_alive_timeout(timeout);
            }
            let (sender, conn) = b.handshake(io).await.map_err(|_| {
                s.upstream_cx_protocol_error.inc();
                UpstreamFailure::ProtocolError
            })?;
            let (state, used) = self.new_conn_state();
            let (limits, stats, opened) = (self.limits, self.life_stats(), tokio::time::Instant::now());
            let st = state.clone();
            tokio::spawn(async move {
                super::pool::drive(conn, st, limits, opened, stats).await;
                drop(guard);
            });
            host.pool.set_h2(sender.clone(), local, state);
            Ok(Conn::H2(sender, local, used))
        } else {
            let (sender, conn) = http1::Builder::new().handshake(io).await.map_err(|_| {
                s.upstream_cx_protocol_error.inc();
                UpstreamFailure::ProtocolError
            })?;
            let (state, used) = self.new_conn_state();
            let (limits, stats, opened) = (self.limits, self.life_stats(), tokio::time::Instant::now());
            tokio::spawn(async move {
                // With upgrades: a `101` (or a 2xx to CONNECT) hands the connection over.
                super::pool::drive(conn.with_upgrades(), state, limits, opened, stats).await;
                drop(guard);
            });
            Ok(Conn::H1 { sender, reused: false, local, used })
        }
    }

    /// A new connection's state, with the first request started on it.
    fn new_conn_state(&self) -> (Arc<ConnState>, ConnUse) {
        let state = ConnState::new();
        let started = state.try_begin(&self.limits).expect("a new connection is not draining");
        (state, self.started(started))
    }

    /// Connections currently open (all hosts).
    pub fn active_connections(&self) -> u64 {
        self.shared.cx_count.load(Ordering::Relaxed)
    }
}
/// Whether an HTTP/1 response's framing headers are ones Envoy accepts: at most one
/// `Content-Length` (no list), and `Transfer-Encoding` only as exactly `chunked` and never
/// with a `Content-Length`.
fn http1_framing_ok(h: &http::HeaderMap) -> bool {
    let mut cl = h.get_all(http::header::CONTENT_LENGTH).iter();
    let cl_first = cl.next();
    if cl.next().is_some() || cl_first.is_some_and(|v| v.as_bytes().contains(&b',')) {
        return false;
    }
    let mut te = h.get_all(http::header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => true,
        (Some(v), None) => cl_first.is_none() && v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// One open upstream connection's accounting; dropped when the connection task ends.
struct CxGuard {
    shared: Arc<Shared>,
    host: Arc<Host>,
    opened: Instant,
}

impl CxGuard {
    fn new(sh: &Arc<Shared>, host: &Arc<Host>) -> CxGuard {
        sh.cx_count.fetch_add(1, Ordering::Relaxed);
        sh.stats.upstream_cx_active.inc();
        host.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        sh.update_cb_gauges();
        CxGuard { shared: sh.clone(), host: host.clone(), opened: Instant::now() }
    }
}

impl Drop for CxGuard {
    fn drop(&mut self) {
        let sh = &self.shared;
        sh.cx_count.fetch_sub(1, Ordering::Relaxed);
        sh.stats.upstream_cx_active.dec();
        sh.stats.upstream_cx_destroy.inc();
        sh.stats.upstream_cx_length_ms.record(self.opened.elapsed().as_secs_f64() * 1000.0);
        self.host.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        sh.update_cb_gauges();
        sh.cx_freed.notify_waiters();
    }
}

/// One scheduled retry (`max_retries`), from the decision to retry until the next decision.
pub struct RetryGuard {
    shared: Arc<Shared>,
}

impl Drop for RetryGuard {
    fn drop(&mut self) {
        self.shared.retry_count.fetch_sub(1, Ordering::AcqRel);
        self.shared.update_cb_gauges();
    }
}

/// One active request (`max_requests`), from host choice to the end of the response body.
struct RqGuard {
    shared: Arc<Shared>,
    host: Arc<Host>,
}

impl RqGuard {
    fn acquire(sh: &Arc<Shared>, host: &Arc<Host>) -> Result<RqGuard, UpstreamFailure> {
        let max = sh.thresholds[0].max_requests as u64;
        if sh.rq_count.fetch_add(1, Ordering::AcqRel) >= max {
            sh.rq_count.fetch_sub(1, Ordering::AcqRel);
            sh.stats.upstream_rq_active_overflow.inc();
            sh.update_cb_gauges();
            return Err(UpstreamFailure::Overflow);
        }
        sh.stats.upstream_rq_active.inc();
        host.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        sh.update_cb_gauges();
        Ok(RqGuard { shared: sh.clone(), host: host.clone() })
    }
}

impl Drop for RqGuard {
    fn drop(&mut self) {
        self.shared.rq_count.fetch_sub(1, Ordering::AcqRel);
        self.shared.stats.upstream_rq_active.dec();
        self.host.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
        self.shared.update_cb_gauges();
    }
}

/// A request waiting for a connection (`max_pending_requests`).
struct PendingGuard {
    shared: Arc<Shared>,
    host: Arc<Host>,
}

impl PendingGuard {
    fn acquire(sh: &Arc<Shared>, host: &Arc<Host>) -> Result<PendingGuard, UpstreamFailure> {
        let max = sh.thresholds[0].max_pending_requests as u64;
        if sh.pending_count.fetch_add(1, Ordering::AcqRel) >= max {
            sh.pending_count.fetch_sub(1, Ordering::AcqRel);
            sh.stats.upstream_rq_pending_overflow.inc();
            sh.update_cb_gauges();
            return Err(UpstreamFailure::Overflow);
        }
        sh.stats.upstream_rq_pending_total.inc();
        sh.stats.upstream_rq_pending_active.inc();
        host.stats.rq_pending_active.fetch_add(1, Ordering::Relaxed);
        sh.update_cb_gauges();
        Ok(PendingGuard { shared: sh.clone(), host: host.clone() })
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.shared.pending_count.fetch_sub(1, Ordering::AcqRel);
        self.shared.stats.upstream_rq_pending_active.dec();
        self.host.stats.rq_pending_active.fetch_sub(1, Ordering::Relaxed);
        self.shared.update_cb_gauges();
    }
}

/// What happens when a response body ends.
struct Done {
    _rq: RqGuard,
    sender: Option<(http1::SendRequest<Body>, Option<SocketAddr>)>,
    /// The request's use of its connection (ends with the body).
    used: Option<ConnUse>,
    host: Arc<Host>,
    shared: Arc<Shared>,
}

impl Done {
    /// `clean`: the body was read to its end, so the HTTP/1.1 connection can be reused.
    fn finish(self, clean: bool) {
        if let (true, Some((s, local)), Some(used)) = (clean, self.sender, &self.used) {
            if self.host.pools_connections() {
                self.host.pool.put_h1(s, local, used.state().clone());
                self.shared.cx_freed.notify_waiters();
            }
        }
    }
}

/// The upstream response body; returns the connection to the pool at its end and releases the
/// request's circuit-breaker slot.
struct UpstreamBody {
    inner: hyper::body::Incoming,
    done: Option<Done>,
    /// The route timeout's end ([`LbContext::response_deadline`]); the timer is armed only
    /// when the body makes its reader wait.
    deadline: Option<tokio::time::Instant>,
    /// The idle timeout ([`LbContext::response_idle`]): the one timer serves both, armed
    /// for whichever comes first.
    idle: Option<super::ResponseIdle>,
    /// When the body last gave a frame (read only when it makes its reader wait).
    last_active: Option<tokio::time::Instant>,
    active_since_wait: bool,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: bool,
}

impl UpstreamBody {
    fn new(
        inner: hyper::body::Incoming,
        done: Done,
        deadline: Option<tokio::time::Instant>,
        idle: Option<super::ResponseIdle>,
    ) -> UpstreamBody {
        let mut b = UpstreamBody {
            inner,
            done: Some(done),
            deadline,
            idle,
            last_active: None,
            active_since_wait: true,
            sleep: None,
            timed_out: false,
        };
        if http_body::Body::is_end_stream(&b.inner) {
            b.finish(true);
        }
        b
    }
    fn finish(&mut self, clean: bool) {
        if let Some(d) = self.done.take() {
            d.finish(clean);
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.deadline.is_none() && this.idle.is_none() {
                    return Poll::Pending;
                }
                if this.idle.is_some() && this.active_since_wait {
                    this.active_since_wait = false;
                    this.last_active = Some(tokio::time::Instant::now());
                }
                loop {
                    let idle_at = this.idle.as_ref().zip(this.last_active).map(|(i, t)| t + i.after);
                    let Some(wake) = [this.deadline, idle_at].into_iter().flatten().min() else { return Poll::Pending };
                    let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
                    if sleep.deadline() != wake {
                        sleep.as_mut().reset(wake);
                    }
                    if std::future::Future::poll(sleep.as_mut(), cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The connection is not reused after either timeout.
                    this.timed_out = true;
                    let err: BoxError = if this.deadline.is_some_and(|d| d <= wake) {
                        // The route timeout ended the response.
                        if let Some(d) = &this.done {
                            d.shared.stats.upstream_rq_timeout.inc();
                        }
                        Box::new(super::RouteTimeout)
                    } else {
                        match this.idle.as_ref() {
                            Some(i) if i.per_try => {
                                if let Some(d) = &this.done {
                                    d.shared.stats.retry.upstream_rq_per_try_idle_timeout.inc();
                                }
                                Box::new(super::PerTryIdleTimeout)
                            }
                            Some(i) => {
                                if let Some(c) = &i.stream_counter {
                                    c.inc();
                                }
                                Box::new(super::StreamIdleTimeout)
                            }
                            None => continue,
                        }
                    };
                    this.finish(false);
                    return Poll::Ready(Some(Err(err)));
                }
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(f))) => {
                this.active_since_wait = true;
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(f)))
            }
        }
    }
    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::load_balancer::RoundRobinFactory;

    #[test]
    fn connect_errors_are_worded_as_envoy_words_them() {
        // Linux errno values: ECONNREFUSED, EADDRNOTAVAIL.
        assert_eq!(connect_error(&std::io::Error::from_raw_os_error(111)), "delayed connect error: Connection refused");
        assert_eq!(
            connect_error(&std::io::Error::from_raw_os_error(99)),
            "immediate connect error: Cannot assign requested address"
        );
    }

    fn hosts(n: usize) -> Vec<Arc<Host>> {
        (0..n).map(|i| Arc::new(Host::simple(format!("127.0.0.{}:80", i + 1).parse().unwrap()))).collect()
    }

    fn picks(st: &LbState, n: usize, counter: &Counter) -> std::collections::HashMap<std::net::SocketAddr, usize> {
        let mut m = std::collections::HashMap::new();
        for _ in 0..n {
            *m.entry(st.choose(&LbContext::default(), counter).unwrap().address).or_default() += 1;
        }
        m
    }

    #[test]
    fn unhealthy_hosts_leave_until_the_panic_threshold() {
        let hs = hosts(4);
        let counter = Counter::default();
        let f = RoundRobinFactory::default();
        // One of four failed (75 % ≥ 50 %): the three others share the load.
        hs[0].set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        let (st, counts) = LbState::build(Arc::new(HostSet::new(hs.clone())), &f, 50.0, PriorityPolicy::default());
        assert_eq!(counts, [3, 0, 0]);
        let m = picks(&st, 300, &counter);
        assert!(!m.contains_key(&hs[0].address));
        assert_eq!(m.len(), 3);
        assert_eq!(counter.value(), 0);
        // Three of four failed (25 % < 50 %): panic, every host, each pick counted.
        hs[1].set_health_flag(health_flag::FAILED_OUTLIER_CHECK, true);
        hs[2].set_health_flag(health_flag::FAILED_EDS_HEALTH, true);
        let (st, counts) = LbState::build(Arc::new(HostSet::new(hs.clone())), &f, 50.0, PriorityPolicy::default());
        assert_eq!(counts, [1, 0, 0]);
        assert_eq!(picks(&st, 400, &counter).len(), 4);
        assert_eq!(counter.value(), 400);
        // A threshold of 0 never panics: only the healthy host.
        let (st, _) = LbState::build(Arc::new(HostSet::new(hs.clone())), &f, 0.0, PriorityPolicy::default());
        assert_eq!(picks(&st, 10, &counter).len(), 1);
        // 2 of 4 healthy = 50 %: not below the threshold, no panic.
        hs[2].set_health_flag(health_flag::FAILED_EDS_HEALTH, false);
        let (st, _) = LbState::build(Arc::new(HostSet::new(hs.clone())), &f, 50.0, PriorityPolicy::default());
        assert!(st.levels[0].panic.is_none());
        // All hosts failed, threshold 0: nothing to pick.
        for h in &hs {
            h.set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        }
        let (st, _) = LbState::build(Arc::new(HostSet::new(hs.clone())), &f, 0.0, PriorityPolicy::default());
        assert!(st.choose(&LbContext::default(), &counter).is_none());
    }

    #[tokio::test]
    async fn choose_host_with_skips_rejected_hosts() {
        let hs = hosts(3);
        let c = Cluster::new(&ClusterConfig { name: "c".into(), ..Default::default() }, &crate::stats::Store::new(), hs.clone()).unwrap();
        for _ in 0..30 {
            let h = c.choose_host_with(&LbContext::default(), 3, |h| h.address == hs[0].address).unwrap();
            assert_ne!(h.address, hs[0].address);
        }
        // Every host rejected: the last pick.
        assert!(c.choose_host_with(&LbContext::default(), 2, |_| true).is_some());
    }

    #[test]
    fn degraded_hosts_take_what_healthy_ones_cannot_and_excluded_ones_nothing() {
        let hs = hosts(3);
        let f = RoundRobinFactory::default();
        let counter = Counter::default();
        // Two healthy, one degraded: 140 × 2/3 = 93 % to healthy hosts, 7 % to the degraded one.
        hs[2].set_health_flag(health_flag::DEGRADED_ACTIVE_HC, true);
        let (st, counts) = LbState::build(Arc::new(HostSet::new(hs.clone())), &f, 50.0, PriorityPolicy::default());
        assert_eq!((counts, st.healthy_load[0], st.degraded_load[0]), ([2, 1, 0], 93, 7));
        let m = picks(&st, 10_000, &counter);
        let d = m.get(&hs[2].address).copied().unwrap_or(0);
        assert!((400..1000).contains(&d), "degraded host got {d}");
        // Excluded hosts count nowhere, not even in panic.
        hs[0].set_health_flag(health_flag::FAILED_ACTIVE_HC | health_flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, true);
        hs[1].set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        let (st, counts) = LbState::build(Arc::new(HostSet::new(hs.clone())), &f, 100.0, PriorityPolicy::default());
        assert_eq!(counts, [0, 1, 1]);
        let m = picks(&st, 100, &counter);
        assert!(!m.contains_key(&hs[0].address));
    }

    fn cluster_yaml(yaml: &str) -> Cluster {
        let config: ClusterConfig = serde_yaml_ng::from_str(yaml).unwrap();
        Cluster::new(&config, &crate::stats::Store::new(), Vec::new()).unwrap()
    }

    #[test]
    fn a_retry_budget_replaces_max_retries() {
        // Defaults: 20 % of the active and pending requests, at least 3; max_retries unused.
        let c = cluster_yaml("name: b\ncircuit_breakers: {thresholds: [{max_retries: 1, retry_budget: {}}]}");
        let retries = |c: &Cluster| std::iter::from_fn(|| c.try_retry()).take(100).collect::<Vec<_>>();
        assert_eq!(retries(&c).len(), 3);
        c.shared.rq_count.store(40, Ordering::Relaxed);
        c.shared.pending_count.store(10, Ordering::Relaxed);
        assert_eq!(retries(&c).len(), 10);
        let held = retries(&c);
        assert_eq!(held.len(), 10);
        assert!(c.try_retry().is_none(), "the budget is used up while the retries are held");
        assert_eq!(c.stats().cb_rq_retry_open.value(), 1);
        drop(held);
        assert_eq!(c.stats().cb_rq_retry_open.value(), 0);
        let c = cluster_yaml("name: b\ncircuit_breakers: {thresholds: [{retry_budget: {budget_percent: {value: 50}, min_retry_concurrency: 1}}]}");
        assert_eq!(retries(&c).len(), 1);
        c.shared.rq_count.store(7, Ordering::Relaxed);
        assert_eq!(retries(&c).len(), 3, "50 % of 7, rounded down");
        // Without a budget: max_retries.
        let c = cluster_yaml("name: b\ncircuit_breakers: {thresholds: [{max_retries: 2}]}");
        c.shared.rq_count.store(1000, Ordering::Relaxed);
        assert_eq!(retries(&c).len(), 2);
    }

    #[test]
    fn connection_limits_come_from_either_protocol_options_field() {
        let c = cluster_yaml("name: l\nmax_requests_per_connection: 7");
        assert_eq!(c.limits, ConnLimits { max_requests: std::num::NonZeroU32::new(7), ..ConnLimits::default() });
        let c = cluster_yaml(
            "name: l\ntyped_extension_protocol_options:\n  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    common_http_protocol_options: {idle_timeout: 0s, max_connection_duration: 2.5s, max_requests_per_connection: 0}\n    explicit_http_config: {http_protocol_options: {}}",
        );
        assert_eq!(c.limits, ConnLimits { idle_timeout: None, max_duration: Some(Duration::from_millis(2500)), max_requests: None });
        let c = cluster_yaml("name: l\ncommon_http_protocol_options: {idle_timeout: 30s}");
        assert_eq!(c.limits.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(cluster_yaml("name: l").limits, ConnLimits::default());
    }

    #[test]
    fn tcp_keepalive_is_off_when_any_value_is_zero() {
        let k = |yaml: &str| cluster_yaml(&format!("name: k\nupstream_connection_options: {yaml}")).keepalive;
        assert_eq!(k("{}"), None);
        assert_eq!(k("{tcp_keepalive: {}}"), Some(Keepalive { probes: None, time: None, interval: None }));
        assert_eq!(k("{tcp_keepalive: {keepalive_probes: 3, keepalive_time: 20}}"), Some(Keepalive { probes: Some(3), time: Some(20), interval: None }));
        assert_eq!(k("{tcp_keepalive: {keepalive_probes: 3, keepalive_interval: 0}}"), None);
    }

    #[tokio::test]
    async fn tcp_keepalive_options_reach_the_socket() {
        use nix::sys::socket::{getsockopt, sockopt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        assert!(!getsockopt(&tcp, sockopt::KeepAlive).unwrap());
        set_keepalive(&tcp, &Keepalive { probes: Some(4), time: Some(33), interval: Some(7) }).unwrap();
        assert!(getsockopt(&tcp, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&tcp, sockopt::TcpKeepCount).unwrap(), 4);
        assert_eq!(getsockopt(&tcp, sockopt::TcpKeepIdle).unwrap(), 33);
        assert_eq!(getsockopt(&tcp, sockopt::TcpKeepInterval).unwrap(), 7);
    }

    fn leveled(priorities: &[u32]) -> Vec<Arc<Host>> {
        priorities
            .iter()
            .enumerate()
            .map(|(i, p)| Arc::new(Host::simple(format!("127.0.1.{}:80", i + 1).parse().unwrap()).with_priority(*p)))
            .collect()
    }

    fn loads(hs: &[Arc<Host>], policy: PriorityPolicy) -> (Vec<u32>, Vec<u32>, Vec<bool>) {
        let (st, _) = LbState::build(Arc::new(HostSet::new(hs.to_vec())), &RoundRobinFactory::default(), 50.0, policy);
        (st.healthy_load.clone(), st.degraded_load.clone(), st.levels.iter().map(|l| l.panic.is_some()).collect())
    }

    #[test]
    fn priority_levels_share_the_load_by_availability() {
        let d = PriorityPolicy::default();
        let hs = leveled(&[0, 0, 1, 1]);
        assert_eq!(loads(&hs, d), (vec![100, 0], vec![0, 0], vec![false, false]));
        // One of two P0 hosts down: P0 keeps 140 × 1/2 = 70 %, P1 takes the rest.
        hs[0].set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        assert_eq!(loads(&hs, d), (vec![70, 30], vec![0, 0], vec![false, false]));
        let counter = Counter::default();
        let (st, _) = LbState::build(Arc::new(HostSet::new(hs.clone())), &RoundRobinFactory::default(), 50.0, d);
        let m = picks(&st, 10_000, &counter);
        let p1 = m.get(&hs[2].address).unwrap() + m.get(&hs[3].address).unwrap();
        assert!((2500..3500).contains(&p1), "P1 got {p1} of 10000");
        assert!(!m.contains_key(&hs[0].address));
        // Without overprovisioning, P0 keeps exactly its healthy share.
        assert_eq!(loads(&hs, PriorityPolicy { overprovisioning: 100, ..PriorityPolicy::default() }).0, vec![50, 50]);
        // Failover: P0 all down, P1 takes everything (full availability: no level panics).
        hs[1].set_health_flag(health_flag::FAILED_OUTLIER_CHECK, true);
        assert_eq!(loads(&hs, d), (vec![0, 100], vec![0, 0], vec![false, false]));
        let (st, _) = LbState::build(Arc::new(HostSet::new(hs.clone())), &RoundRobinFactory::default(), 50.0, d);
        let m = picks(&st, 100, &counter);
        assert_eq!(m.len(), 2);
        assert!(m.contains_key(&hs[2].address) && m.contains_key(&hs[3].address));
        assert_eq!(counter.value(), 0);
        // P1 at 1 of 2: 70 % available in all; P0 panics (0 %), P1 (50 %) does not.
        hs[2].set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        assert_eq!(loads(&hs, d), (vec![0, 100], vec![0, 0], vec![true, false]));
        // Every level in panic: the load follows the host counts, each pick counted.
        let hs5 = [hs.clone(), vec![Arc::new(Host::simple("127.0.1.9:80".parse().unwrap()).with_priority(1))]].concat();
        hs5[4].set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        assert_eq!(loads(&hs5, d), (vec![40, 60], vec![0, 0], vec![true, true]));
        let (st, _) = LbState::build(Arc::new(HostSet::new(hs5.clone())), &RoundRobinFactory::default(), 50.0, d);
        assert_eq!(picks(&st, 500, &counter).len(), 5);
        assert_eq!(counter.value(), 500);
    }

    #[test]
    fn priority_levels_with_degraded_hosts_gaps_and_weights() {
        let d = PriorityPolicy::default();
        // P0: one healthy, one degraded (70 + 70); the degraded share is what is left.
        let hs = leveled(&[0, 0, 1]);
        hs[1].set_health_flag(health_flag::DEGRADED_ACTIVE_HC, true);
        assert_eq!(loads(&hs, d), (vec![70, 30], vec![0, 0], vec![false, false]));
        hs[2].set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        assert_eq!(loads(&hs, d), (vec![70, 0], vec![30, 0], vec![false, false]));
        // A gap: P1 empty, P2 takes the failover.
        let hs = leveled(&[0, 2]);
        hs[0].set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        let (h, _, panic) = loads(&hs, d);
        assert_eq!((h, panic), (vec![0, 0, 100], vec![false, false, false]));
        // weighted_priority_health: P0 health counts weights (3 healthy of 4).
        let hs = vec![
            Arc::new(Host::new("127.0.2.1:80".parse().unwrap(), "", 3, Default::default(), Default::default())),
            Arc::new(Host::new("127.0.2.2:80".parse().unwrap(), "", 1, Default::default(), Default::default())),
            Arc::new(Host::simple("127.0.2.3:80".parse().unwrap()).with_priority(1)),
        ];
        hs[1].set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        assert_eq!(loads(&hs, d).0, vec![70, 30]);
        assert_eq!(loads(&hs, PriorityPolicy { weighted: true, ..PriorityPolicy::default() }).0, vec![100, 0]);
        // No host anywhere, panic disabled: the load stays on P0, and nothing is picked.
        let (st, _) = LbState::build(Arc::new(HostSet::default()), &RoundRobinFactory::default(), 0.0, d);
        assert_eq!(st.healthy_load, vec![100]);
        assert!(st.choose(&LbContext::default(), &Counter::default()).is_none());
    }

    #[test]
    fn locality_weights_split_a_level_by_weight_and_availability() {
        let loc = |zone: &str| sluice_config::core::Locality { zone: zone.into(), ..Default::default() };
        let host = |i: u8, zone: &str, w: u32| {
            Arc::new(Host::new(format!("127.0.3.{i}:80").parse().unwrap(), "", 1, loc(zone), Default::default()).with_locality_weight(w))
        };
        // z1 weighs 1, z2 weighs 3, two hosts each.
        let hs = vec![host(1, "z1", 1), host(2, "z1", 1), host(3, "z2", 3), host(4, "z2", 3)];
        let policy = PriorityPolicy { locality_weighted: true, ..PriorityPolicy::default() };
        let share_z1 = |hs: &[Arc<Host>]| {
            let (st, _) = LbState::build(Arc::new(HostSet::new(hs.to_vec())), &RoundRobinFactory::default(), 50.0, policy);
            let m = picks(&st, 8000, &Counter::default());
            let z1: usize = hs.iter().filter(|h| h.locality.zone == "z1").map(|h| m.get(&h.address).copied().unwrap_or(0)).sum();
            100.0 * z1 as f64 / 8000.0
        };
        let s = share_z1(&hs);
        assert!((22.0..28.0).contains(&s), "z1 got {s} %, expected 25");
        // One z2 host down: z2 availability min(1, 1.4 × 1/2) = 0.7, effective 2.1 against 1.
        hs[3].set_health_flag(health_flag::FAILED_ACTIVE_HC, true);
        let s = share_z1(&hs);
        assert!((29.0..35.5).contains(&s), "z1 got {s} %, expected 32.3");
        // Without the config the weights change nothing: 2 of 3 healthy hosts are in z1.
        let (st, _) = LbState::build(Arc::new(HostSet::new(hs.clone())), &RoundRobinFactory::default(), 50.0, PriorityPolicy::default());
        let m = picks(&st, 300, &Counter::default());
        assert_eq!(m.get(&hs[0].address).copied().unwrap_or(0) + m.get(&hs[1].address).copied().unwrap_or(0), 200);
        // A locality without weight gets nothing; with no weight at all, the level is used whole.
        let hs = vec![host(1, "z1", 0), host(3, "z2", 2)];
        assert_eq!(share_z1(&hs), 0.0);
        let hs = vec![host(1, "z1", 0), host(3, "z2", 0)];
        assert!((40.0..60.0).contains(&share_z1(&hs)));
    }
}

/// Envoy's transport failure reason for a TCP connect that failed: the socket error, as
/// `strerror` words it, after `delayed connect error` (reported by the socket once the
/// non-blocking connect ended: refused, timed out, unreachable) or `immediate connect error`.
fn connect_error(e: &std::io::Error) -> String {
    let when = match e.kind() {
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut | std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => "delayed",
        _ => "immediate",
    };
    let text = e.to_string();
    // std words an OS error as "<strerror> (os error N)".
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    format!("{when} connect error: {text}")
}
