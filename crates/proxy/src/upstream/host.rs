//! Hosts (one per endpoint address) and immutable host-set snapshots.
//!
//! A host carries Envoy's health flags ([`health_flag`]) as one atomic word: active health
//! checking and outlier detection set and clear them on the control runtime, then rebuild the
//! cluster's load-balancer snapshot; the request path only reads the snapshot. Results of
//! requests are reported per host with [`Host::report`] (atomics; a message to the control
//! runtime only when a consecutive-error threshold is reached).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use sluice_config::cluster::HealthStatus;
use sluice_config::core::Locality;

use super::outlier::{HostMonitor, OutlierSink};
use super::pool::HostPool;

/// Envoy's `Host::HealthFlag`s as bits of [`Host::health_flags_bits`].
pub mod health_flag {
    /// Failing active health checks (new hosts start so when the cluster has health checks).
    pub const FAILED_ACTIVE_HC: u32 = 1 << 0;
    /// Ejected by outlier detection.
    pub const FAILED_OUTLIER_CHECK: u32 = 1 << 1;
    /// `health_status` UNHEALTHY, DRAINING or TIMEOUT in the endpoint config.
    pub const FAILED_EDS_HEALTH: u32 = 1 << 2;
    /// Active health check answered with `x-envoy-degraded`.
    pub const DEGRADED_ACTIVE_HC: u32 = 1 << 3;
    /// `health_status` DEGRADED in the endpoint config.
    pub const DEGRADED_EDS_HEALTH: u32 = 1 << 4;
    /// Removed from discovery but kept while it passes active health checks.
    pub const PENDING_DYNAMIC_REMOVAL: u32 = 1 << 5;
    /// Not checked yet (`ignore_new_hosts_until_first_hc`): excluded from load balancing.
    pub const PENDING_ACTIVE_HC: u32 = 1 << 6;
    /// A response carried `x-envoy-immediate-health-check-fail`: excluded until a check passes.
    pub const EXCLUDED_VIA_IMMEDIATE_HC_FAIL: u32 = 1 << 7;
    /// The last failed active check timed out.
    pub const ACTIVE_HC_TIMEOUT: u32 = 1 << 8;

    /// `/clusters` names, in Envoy's order.
    pub const NAMES: &[(u32, &str)] = &[
        (FAILED_ACTIVE_HC, "/failed_active_hc"),
        (FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
        (FAILED_EDS_HEALTH, "/failed_eds_health"),
        (DEGRADED_ACTIVE_HC, "/degraded_active_hc"),
        (DEGRADED_EDS_HEALTH, "/degraded_eds_health"),
        (PENDING_DYNAMIC_REMOVAL, "/pending_dynamic_removal"),
        (PENDING_ACTIVE_HC, "/pending_active_hc"),
        (EXCLUDED_VIA_IMMEDIATE_HC_FAIL, "/excluded_via_immediate_hc_fail"),
        (ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
    ];

    /// `healthy`, or the flags' names concatenated (the `health_flags` of `/clusters`).
    pub fn to_string(bits: u32) -> String {
        let s: String = NAMES.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n).collect();
        if s.is_empty() {
            "healthy".to_string()
        } else {
            s
        }
    }
}

/// Envoy's coarse host health, what load balancing uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoarseHealth {
    Healthy,
    Degraded,
    Unhealthy,
}

/// What happened to one request on one host: Envoy's outlier-detection results
/// (`putHttpResponseCode` / `putResult`). Report each attempt once, with [`Host::report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The host answered with this status (for gRPC: the HTTP status mapped from
    /// `grpc-status` when it is in the response headers).
    HttpStatus(u16),
    /// A connection to the host was established (or a pooled one taken).
    ConnectSuccess,
    /// Connecting failed, or the connection or stream was reset before the response headers
    /// (not for a circuit-breaker overflow, which says nothing about the host).
    ConnectFailed,
    /// The attempt timed out waiting for the host (route timeout or per-try timeout).
    Timeout,
}

/// How a host reaches its cluster's control tasks (set once, when it joins the cluster).
#[derive(Debug, Default)]
pub(crate) struct HostLink {
    pub(crate) outlier: Option<Arc<OutlierSink>>,
    /// The health checker's channel for passive failures (`x-envoy-immediate-health-check-fail`).
    pub(crate) health_checker: Option<tokio::sync::mpsc::UnboundedSender<Arc<Host>>>,
    /// `close_connections_on_host_health_failure`.
    pub(crate) close_on_failure: bool,
}

/// Per-host counters, as `/clusters` prints them. Plain atomics (`Relaxed`).
#[derive(Debug, Default)]
pub struct HostStats {
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub cx_total: AtomicU64,
    pub rq_active: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_pending_active: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_timeout: AtomicU64,
    pub rq_total: AtomicU64,
}

impl HostStats {
    /// `(name, value)` in `/clusters` order.
    pub fn values(&self) -> [(&'static str, u64); 9] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("cx_active", l(&self.cx_active)),
            ("cx_connect_fail", l(&self.cx_connect_fail)),
            ("cx_total", l(&self.cx_total)),
            ("rq_active", l(&self.rq_active)),
            ("rq_error", l(&self.rq_error)),
            ("rq_pending_active", l(&self.rq_pending_active)),
            ("rq_success", l(&self.rq_success)),
            ("rq_timeout", l(&self.rq_timeout)),
            ("rq_total", l(&self.rq_total)),
        ]
    }
}

/// One upstream endpoint. Kept (same `Arc`, same pool and counters) across DNS refreshes as long
/// as the address stays in the answer.
#[derive(Debug)]
pub struct Host {
    pub address: SocketAddr,
    /// The DNS name it was resolved from (STRICT_DNS/LOGICAL_DNS), else the endpoint's
    /// `hostname` (empty for STATIC).
    pub hostname: String,
    pub weight: u32,
    pub locality: Locality,
    pub health: HealthStatus,
    /// The priority level of its endpoint group (0 highest).
    pub priority: u32,
    /// Its endpoint group's `load_balancing_weight` (0: none), for locality-weighted balancing.
    pub locality_weight: u32,
    pub stats: HostStats,
    pub(crate) pool: HostPool,
    draining: AtomicBool,
    flags: AtomicU32,
    pub(crate) outlier: HostMonitor,
    pub(crate) link: OnceLock<HostLink>,
}

impl Host {
    pub fn new(address: SocketAddr, hostname: impl Into<String>, weight: u32, locality: Locality, health: HealthStatus) -> Host {
        let eds = match health {
            HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout => health_flag::FAILED_EDS_HEALTH,
            HealthStatus::Degraded => health_flag::DEGRADED_EDS_HEALTH,
            HealthStatus::Unknown | HealthStatus::Healthy => 0,
        };
        Host {
            address,
            hostname: hostname.into(),
            weight: weight.max(1),
            locality,
            health,
            priority: 0,
            locality_weight: 0,
            stats: HostStats::default(),
            pool: HostPool::default(),
            draining: AtomicBool::new(false),
            flags: AtomicU32::new(eds),
            outlier: HostMonitor::default(),
            link: OnceLock::new(),
        }
    }

    /// The host in priority level `priority`.
    pub fn with_priority(mut self, priority: u32) -> Host {
        self.priority = priority;
        self
    }

    /// The host in a locality weighing `weight` (0: no weight).
    pub fn with_locality_weight(mut self, weight: u32) -> Host {
        self.locality_weight = weight;
        self
    }

    /// A host with weight 1, no hostname (tests, STATIC).
    pub fn simple(address: SocketAddr) -> Host {
        Host::new(address, "", 1, Locality::default(), HealthStatus::Unknown)
    }

    /// Whether the load balancer picks it outside panic mode: healthy or degraded, not excluded.
    pub fn routable(&self) -> bool {
        self.coarse_health() != CoarseHealth::Unhealthy && !self.excluded()
    }

    /// The raw [`health_flag`] bits.
    pub fn health_flags_bits(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }

    pub fn health_flag(&self, flag: u32) -> bool {
        self.health_flags_bits() & flag != 0
    }

    /// Set (or clear) flags; returns the previous bits. Control runtime only.
    pub(crate) fn set_health_flag(&self, flag: u32, on: bool) -> u32 {
        if on {
            self.flags.fetch_or(flag, Ordering::AcqRel)
        } else {
            self.flags.fetch_and(!flag, Ordering::AcqRel)
        }
    }

    /// Envoy's `coarseHealth()`: any failed flag → unhealthy, else any degraded flag → degraded.
    pub fn coarse_health(&self) -> CoarseHealth {
        use health_flag::*;
        let f = self.health_flags_bits();
        if f & (FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK | FAILED_EDS_HEALTH) != 0 {
            CoarseHealth::Unhealthy
        } else if f & (DEGRADED_ACTIVE_HC | DEGRADED_EDS_HEALTH) != 0 {
            CoarseHealth::Degraded
        } else {
            CoarseHealth::Healthy
        }
    }

    /// Excluded from load balancing altogether, panic mode included.
    pub fn excluded(&self) -> bool {
        self.health_flag(health_flag::PENDING_ACTIVE_HC | health_flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL)
    }

    /// The `health_flags` value of `/clusters`.
    pub fn health_flags(&self) -> String {
        health_flag::to_string(self.health_flags_bits())
    }

    /// Count the result of one attempt on this host for outlier detection (cheap: atomics, and a
    /// message to the control runtime only when a consecutive-error threshold is reached). A
    /// no-op when the cluster has no `outlier_detection`. The router reports
    /// [`Outcome::Timeout`] itself; [`super::Cluster::send`] reports the others.
    pub fn report(self: &Arc<Self>, outcome: Outcome) {
        if let Some(sink) = self.link.get().and_then(|l| l.outlier.as_ref()) {
            sink.report(self, outcome);
        }
    }

    /// The host answered with `x-envoy-immediate-health-check-fail`: excluded at once, and its
    /// active health check counts a passive failure (Envoy's `ImmediateHealthCheckFail`). A
    /// no-op without active health checking.
    pub fn immediate_health_check_fail(self: &Arc<Self>) {
        if let Some(tx) = self.link.get().and_then(|l| l.health_checker.as_ref()) {
            self.set_health_flag(health_flag::EXCLUDED_VIA_IMMEDIATE_HC_FAIL, true);
            let _ = tx.send(self.clone());
        }
    }

    /// [`Self::immediate_health_check_fail`] when `headers` (a response of this host) carry
    /// `x-envoy-immediate-health-check-fail`; nothing to look up without active health checks.
    pub fn check_immediate_health_check_fail(self: &Arc<Self>, headers: &http::HeaderMap) {
        if self.link.get().is_some_and(|l| l.health_checker.is_some()) && headers.contains_key("x-envoy-immediate-health-check-fail") {
            self.immediate_health_check_fail();
        }
    }

    /// Whether a connection whose request ended goes back to the pool: not when the host was
    /// removed, nor while it is unhealthy with `close_connections_on_host_health_failure`.
    pub(crate) fn pools_connections(&self) -> bool {
        let closing = self.link.get().is_some_and(|l| l.close_on_failure) && self.coarse_health() == CoarseHealth::Unhealthy;
        !(self.is_draining() || closing)
    }

    /// Removed from discovery: no new requests; idle connections are closed now, busy ones when
    /// their request ends.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.pool.close_idle();
    }
}

/// An immutable snapshot of a cluster's hosts (priority 0), in discovery order.
#[derive(Debug, Default, Clone)]
pub struct HostSet {
    pub hosts: Vec<Arc<Host>>,
}

impl HostSet {
    pub fn new(hosts: Vec<Arc<Host>>) -> HostSet {
        HostSet { hosts }
    }
    pub fn len(&self) -> usize {
        self.hosts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
    /// Hosts the load balancer picks outside panic mode (healthy or degraded, not excluded).
    pub fn routable(&self) -> HostSet {
        HostSet { hosts: self.hosts.iter().filter(|h| h.routable()).cloned().collect() }
    }
    /// Whether all weights are equal.
    pub fn equal_weights(&self) -> bool {
        self.hosts.windows(2).all(|w| w[0].weight == w[1].weight)
    }
}
