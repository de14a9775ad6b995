//! Hosts (one per endpoint address) and immutable host-set snapshots.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sluice_config::cluster::HealthStatus;
use sluice_config::core::Locality;

use super::pool::HostPool;

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
    pub stats: HostStats,
    pub(crate) pool: HostPool,
    draining: AtomicBool,
}

impl Host {
    pub fn new(address: SocketAddr, hostname: impl Into<String>, weight: u32, locality: Locality, health: HealthStatus) -> Host {
        Host {
            address,
            hostname: hostname.into(),
            weight: weight.max(1),
            locality,
            health,
            stats: HostStats::default(),
            pool: HostPool::default(),
            draining: AtomicBool::new(false),
        }
    }

    /// A host with weight 1, no hostname (tests, STATIC).
    pub fn simple(address: SocketAddr) -> Host {
        Host::new(address, "", 1, Locality::default(), HealthStatus::Unknown)
    }

    /// Whether the load balancer may pick it (`health_status` UNKNOWN, HEALTHY or DEGRADED).
    pub fn routable(&self) -> bool {
        self.health.routable()
    }

    /// The `health_flags` value of `/clusters`.
    pub fn health_flags(&self) -> &'static str {
        match self.health {
            HealthStatus::Unknown | HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "/degraded_eds_health",
            _ => "/failed_eds_health",
        }
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
    /// Hosts the load balancer may pick.
    pub fn routable(&self) -> HostSet {
        HostSet { hosts: self.hosts.iter().filter(|h| h.routable()).cloned().collect() }
    }
    /// Whether all weights are equal.
    pub fn equal_weights(&self) -> bool {
        self.hosts.windows(2).all(|w| w[0].weight == w[1].weight)
    }
}
