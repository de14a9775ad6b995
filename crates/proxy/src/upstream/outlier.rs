//! Outlier detection (cluster `outlier_detection`), as Envoy's `Outlier::DetectorImpl`.
//!
//! * **Request path** ([`OutlierSink::report`], reached through [`Host::report`]): per-host
//!   atomics count consecutive 5xx, gateway failures (502/503/504) and local-origin failures
//!   (connect failures, resets, timeouts), and fill the success-rate bucket of the current
//!   interval. When a consecutive counter reaches its threshold exactly, one message goes to the
//!   control runtime; nothing else leaves the worker.
//! * **Control runtime** ([`run`]): consecutive-error messages eject at once (within
//!   `max_ejection_percent`, enforced with the `enforcing_*` probability); every `interval` the
//!   detector returns hosts whose ejection time has passed (`base_ejection_time` × the ejection
//!   backoff, at most `max_ejection_time`, plus jitter), swaps the success-rate buckets, runs the
//!   success-rate and failure-percentage algorithms, and lets the backoff of hosts that stayed
//!   healthy for an interval decay by one. Every change rebuilds the cluster's load-balancer
//!   snapshot ([`Cluster::on_health_changed`]).
//!
//! Without `split_external_local_origin_errors`, local-origin results are counted as HTTP codes
//! (connect failure / reset → 503, timeout → 504), as Envoy does.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::cluster::Cluster;
use super::host::{health_flag, Host, Outcome};
use crate::stats::{Counter, Gauge, Store};

/// Why a host is ejected (Envoy's `OutlierEjectionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionType {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    SuccessRate,
    SuccessRateLocalOrigin,
    FailurePercentage,
    FailurePercentageLocalOrigin,
}

impl EjectionType {
    const ALL: [EjectionType; 7] = [
        Self::Consecutive5xx,
        Self::ConsecutiveGatewayFailure,
        Self::ConsecutiveLocalOriginFailure,
        Self::SuccessRate,
        Self::SuccessRateLocalOrigin,
        Self::FailurePercentage,
        Self::FailurePercentageLocalOrigin,
    ];
    fn index(self) -> usize {
        self as usize
    }
    /// The stat name suffix (`ejections_detected_<suffix>`, `ejections_enforced_<suffix>`).
    fn stat_suffix(self) -> &'static str {
        match self {
            Self::Consecutive5xx => "consecutive_5xx",
            Self::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Self::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
            Self::SuccessRate => "success_rate",
            Self::SuccessRateLocalOrigin => "local_origin_success_rate",
            Self::FailurePercentage => "failure_percentage",
            Self::FailurePercentageLocalOrigin => "local_origin_failure_percentage",
        }
    }
}

/// `outlier_detection` with Envoy's defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub split_external_local_origin_errors: bool,
    pub success_rate_minimum_hosts: u32,
    pub success_rate_request_volume: u32,
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u32,
    pub failure_percentage_request_volume: u32,
    /// Percentages, indexed by [`EjectionType`].
    pub enforcing: [u32; 7],
    pub successful_active_health_check_uneject_host: bool,
    pub always_eject_one_host: bool,
}

impl OutlierConfig {
    pub fn build(cfg: &sluice_config::cluster::OutlierDetection) -> anyhow::Result<OutlierConfig> {
        let sluice_config::cluster::OutlierDetection {
            consecutive_5xx,
            interval,
            base_ejection_time,
            max_ejection_percent,
            enforcing_consecutive_5xx,
            enforcing_success_rate,
            success_rate_minimum_hosts,
            success_rate_request_volume,
            success_rate_stdev_factor,
            consecutive_gateway_failure,
            enforcing_consecutive_gateway_failure,
            split_external_local_origin_errors,
            consecutive_local_origin_failure,
            enforcing_consecutive_local_origin_failure,
            enforcing_local_origin_success_rate,
            failure_percentage_threshold,
            enforcing_failure_percentage,
            enforcing_failure_percentage_local_origin,
            failure_percentage_minimum_hosts,
            failure_percentage_request_volume,
            max_ejection_time,
            max_ejection_time_jitter,
            successful_active_health_check_uneject_host,
            monitors: None,
            always_eject_one_host,
            detect_degraded_hosts: None,
        } = cfg
        else {
            anyhow::bail!("outlier_detection: monitors and detect_degraded_hosts are not supported");
        };
        let ms = |d: &Option<sluice_config::Duration>, default: u64| d.map(|d| d.as_std()).unwrap_or(Duration::from_millis(default));
        let base = ms(base_ejection_time, 30_000);
        let mut enforcing = [0; 7];
        enforcing[EjectionType::Consecutive5xx.index()] = enforcing_consecutive_5xx.unwrap_or(100);
        enforcing[EjectionType::ConsecutiveGatewayFailure.index()] = enforcing_consecutive_gateway_failure.unwrap_or(0);
        enforcing[EjectionType::ConsecutiveLocalOriginFailure.index()] = enforcing_consecutive_local_origin_failure.unwrap_or(100);
        enforcing[EjectionType::SuccessRate.index()] = enforcing_success_rate.unwrap_or(100);
        enforcing[EjectionType::SuccessRateLocalOrigin.index()] = enforcing_local_origin_success_rate.unwrap_or(100);
        enforcing[EjectionType::FailurePercentage.index()] = enforcing_failure_percentage.unwrap_or(0);
        enforcing[EjectionType::FailurePercentageLocalOrigin.index()] = enforcing_failure_percentage_local_origin.unwrap_or(0);
        Ok(OutlierConfig {
            interval: ms(interval, 10_000),
            base_ejection_time: base,
            // Unset: 300 s, or base_ejection_time when that is larger.
            max_ejection_time: max_ejection_time.map(|d| d.as_std()).unwrap_or(base.max(Duration::from_secs(300))),
            max_ejection_time_jitter: ms(max_ejection_time_jitter, 0),
            max_ejection_percent: max_ejection_percent.unwrap_or(10),
            consecutive_5xx: consecutive_5xx.unwrap_or(5),
            consecutive_gateway_failure: consecutive_gateway_failure.unwrap_or(5),
            consecutive_local_origin_failure: consecutive_local_origin_failure.unwrap_or(5),
            split_external_local_origin_errors: *split_external_local_origin_errors,
            success_rate_minimum_hosts: success_rate_minimum_hosts.unwrap_or(5),
            success_rate_request_volume: success_rate_request_volume.unwrap_or(100),
            success_rate_stdev_factor: success_rate_stdev_factor.unwrap_or(1900),
            failure_percentage_threshold: failure_percentage_threshold.unwrap_or(85),
            failure_percentage_minimum_hosts: failure_percentage_minimum_hosts.unwrap_or(5),
            failure_percentage_request_volume: failure_percentage_request_volume.unwrap_or(50),
            enforcing,
            successful_active_health_check_uneject_host: successful_active_health_check_uneject_host.unwrap_or(true),
            always_eject_one_host: always_eject_one_host.unwrap_or(false),
        })
    }
}

/// `cluster.<name>.outlier_detection.*`, registered when the cluster has outlier detection.
#[derive(Debug)]
struct OutlierStats {
    ejections_active: Gauge,
    ejections_enforced_total: Counter,
    ejections_overflow: Counter,
    /// Deprecated counters Envoy still keeps.
    ejections_total: Counter,
    ejections_consecutive_5xx: Counter,
    ejections_success_rate: Counter,
    detected: [Counter; 7],
    enforced: [Counter; 7],
}

impl OutlierStats {
    fn new(store: &Store, cluster_prefix: &str) -> OutlierStats {
        let c = |n: &str| store.counter(format!("{cluster_prefix}outlier_detection.{n}"));
        // Registered so `/stats` lists it as Envoy does; sluice does not detect degradation.
        c("ejections_detected_degradation");
        OutlierStats {
            ejections_active: store.gauge(format!("{cluster_prefix}outlier_detection.ejections_active")),
            ejections_enforced_total: c("ejections_enforced_total"),
            ejections_overflow: c("ejections_overflow"),
            ejections_total: c("ejections_total"),
            ejections_consecutive_5xx: c("ejections_consecutive_5xx"),
            ejections_success_rate: c("ejections_success_rate"),
            detected: EjectionType::ALL.map(|t| c(&format!("ejections_detected_{}", t.stat_suffix()))),
            enforced: EjectionType::ALL.map(|t| c(&format!("ejections_enforced_{}", t.stat_suffix()))),
        }
    }
}

/// A success/total pair for one interval.
#[derive(Debug, Default)]
struct Bucket {
    success: AtomicU64,
    total: AtomicU64,
}

/// Two buckets: the request path writes `current`, the detector reads the other one.
#[derive(Debug, Default)]
struct SuccessRateMonitor {
    buckets: [Bucket; 2],
    current: AtomicUsize,
}

impl SuccessRateMonitor {
    fn record(&self, success: bool) {
        let b = &self.buckets[self.current.load(Ordering::Relaxed) & 1];
        b.total.fetch_add(1, Ordering::Relaxed);
        if success {
            b.success.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Start a new interval; returns the finished interval's `(success rate %, volume)`.
    fn swap(&self) -> Option<(f64, u64)> {
        let finished = self.current.load(Ordering::Relaxed) & 1;
        let next = &self.buckets[finished ^ 1];
        next.success.store(0, Ordering::Relaxed);
        next.total.store(0, Ordering::Relaxed);
        self.current.store(finished ^ 1, Ordering::Relaxed);
        let b = &self.buckets[finished];
        let total = b.total.load(Ordering::Relaxed);
        (total > 0).then(|| (b.success.load(Ordering::Relaxed) as f64 * 100.0 / total as f64, total))
    }
}

/// The detector's per-host state, changed on the control runtime only.
#[derive(Debug)]
pub(crate) struct HostOutlierState {
    pub(crate) num_ejections: u32,
    last_ejection: Option<Instant>,
    last_unejection: Option<Instant>,
    /// The multiplier of `base_ejection_time` (grows per ejection, decays while healthy).
    backoff: u32,
    jitter: Duration,
    /// The last interval's success rates, external and local origin (-1 when unknown), as
    /// `/clusters` shows them.
    pub(crate) success_rate: [f64; 2],
}

impl Default for HostOutlierState {
    fn default() -> Self {
        HostOutlierState {
            num_ejections: 0,
            last_ejection: None,
            last_unejection: None,
            backoff: 0,
            jitter: Duration::ZERO,
            success_rate: [-1.0, -1.0],
        }
    }
}

/// A host's outlier-detection counters: atomics written by the request path, plus the
/// detector's state.
#[derive(Debug, Default)]
pub(crate) struct HostMonitor {
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    external: SuccessRateMonitor,
    local: SuccessRateMonitor,
    pub(crate) state: Mutex<HostOutlierState>,
}

impl HostMonitor {
    fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        self.consecutive_local_origin_failure.store(0, Ordering::Relaxed);
    }
    pub(crate) fn state(&self) -> std::sync::MutexGuard<'_, HostOutlierState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the request path needs: thresholds and the channel to the detector.
#[derive(Debug)]
pub(crate) struct OutlierSink {
    consecutive_5xx: u32,
    consecutive_gateway_failure: u32,
    consecutive_local_origin_failure: u32,
    split: bool,
    tx: mpsc::UnboundedSender<(Arc<Host>, EjectionType)>,
}

impl OutlierSink {
    pub(crate) fn report(&self, host: &Arc<Host>, outcome: Outcome) {
        match (outcome, self.split) {
            (Outcome::HttpStatus(code), _) => self.put_http(host, code),
            (Outcome::ConnectSuccess, false) => {}
            (Outcome::ConnectFailed, false) => self.put_http(host, 503),
            (Outcome::Timeout, false) => self.put_http(host, 504),
            (Outcome::ConnectSuccess, true) => {
                host.outlier.local.record(true);
                host.outlier.consecutive_local_origin_failure.store(0, Ordering::Relaxed);
            }
            (Outcome::ConnectFailed | Outcome::Timeout, true) => {
                host.outlier.local.record(false);
                if host.outlier.consecutive_local_origin_failure.fetch_add(1, Ordering::Relaxed) + 1
                    == self.consecutive_local_origin_failure
                {
                    self.notify(host, EjectionType::ConsecutiveLocalOriginFailure);
                }
            }
        }
    }

    fn put_http(&self, host: &Arc<Host>, code: u16) {
        let m = &host.outlier;
        if (500..600).contains(&code) {
            m.external.record(false);
            if matches!(code, 502..=504) {
                if m.consecutive_gateway_failure.fetch_add(1, Ordering::Relaxed) + 1 == self.consecutive_gateway_failure {
                    self.notify(host, EjectionType::ConsecutiveGatewayFailure);
                }
            } else {
                m.consecutive_gateway_failure.store(0, Ordering::Relaxed);
            }
            if m.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1 == self.consecutive_5xx {
                self.notify(host, EjectionType::Consecutive5xx);
            }
        } else {
            m.external.record(true);
            m.consecutive_5xx.store(0, Ordering::Relaxed);
            m.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        }
    }

    fn notify(&self, host: &Arc<Host>, t: EjectionType) {
        let _ = self.tx.send((host.clone(), t));
    }
}

/// One cluster's detector.
#[derive(Debug)]
pub struct Detector {
    pub(crate) cfg: OutlierConfig,
    stats: OutlierStats,
    active: AtomicU64,
    pub(crate) sink: Arc<OutlierSink>,
    rx: Mutex<Option<Receiver>>,
}

/// Consecutive-error messages from the request path.
type Receiver = mpsc::UnboundedReceiver<(Arc<Host>, EjectionType)>;

impl Detector {
    pub(crate) fn new(cfg: OutlierConfig, store: &Store, cluster_prefix: &str) -> Detector {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Arc::new(OutlierSink {
            consecutive_5xx: cfg.consecutive_5xx,
            consecutive_gateway_failure: cfg.consecutive_gateway_failure,
            consecutive_local_origin_failure: cfg.consecutive_local_origin_failure,
            split: cfg.split_external_local_origin_errors,
            tx,
        });
        Detector { stats: OutlierStats::new(store, cluster_prefix), cfg, active: AtomicU64::new(0), sink, rx: Mutex::new(Some(rx)) }
    }

    /// Hosts currently ejected.
    pub fn ejections_active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    fn set_active(&self, n: u64) {
        self.active.store(n, Ordering::Relaxed);
        self.stats.ejections_active.set(n as i64);
    }

    fn enforce(&self, t: EjectionType) -> bool {
        let pct = self.cfg.enforcing[t.index()];
        pct >= 100 || (pct > 0 && rand::random_range(0..100u32) < pct)
    }

    /// A consecutive-error threshold was reached on `host` (one of `total_hosts`). Returns
    /// whether the host was ejected.
    pub(crate) fn on_consecutive_error(&self, host: &Arc<Host>, t: EjectionType, total_hosts: usize, now: Instant) -> bool {
        if host.health_flag(health_flag::FAILED_OUTLIER_CHECK) {
            return false;
        }
        self.stats.detected[t.index()].inc();
        let ejected = self.eject(host, t, total_hosts, now);
        let m = &host.outlier;
        match t {
            EjectionType::Consecutive5xx => {
                self.stats.ejections_consecutive_5xx.inc();
                m.consecutive_5xx.store(0, Ordering::Relaxed);
            }
            EjectionType::ConsecutiveGatewayFailure => m.consecutive_gateway_failure.store(0, Ordering::Relaxed),
            EjectionType::ConsecutiveLocalOriginFailure => m.consecutive_local_origin_failure.store(0, Ordering::Relaxed),
            _ => {}
        }
        ejected
    }

    fn eject(&self, host: &Arc<Host>, t: EjectionType, total_hosts: usize, now: Instant) -> bool {
        if host.health_flag(health_flag::FAILED_OUTLIER_CHECK) {
            return false;
        }
        let active = self.ejections_active();
        let max = self.cfg.max_ejection_percent.min(100) as f64;
        let percent = 100.0 * (active + 1) as f64 / total_hosts.max(1) as f64;
        let should = percent <= max || (self.cfg.always_eject_one_host && active == 0);
        if !should {
            self.stats.ejections_overflow.inc();
            return false;
        }
        if matches!(t, EjectionType::Consecutive5xx | EjectionType::SuccessRate) {
            self.stats.ejections_total.inc();
        }
        if !self.enforce(t) {
            return false;
        }
        self.set_active(active + 1);
        self.stats.ejections_enforced_total.inc();
        self.stats.enforced[t.index()].inc();
        host.set_health_flag(health_flag::FAILED_OUTLIER_CHECK, true);
        let mut st = host.outlier.state();
        st.num_ejections += 1;
        st.last_ejection = Some(now);
        let max_jitter = self.cfg.max_ejection_time_jitter.as_millis() as u64;
        st.jitter = Duration::from_millis(if max_jitter == 0 { 0 } else { rand::random_range(0..=max_jitter) });
        let base = self.cfg.base_ejection_time;
        if base.saturating_mul(st.backoff) < self.cfg.max_ejection_time + base {
            st.backoff += 1;
        }
        true
    }

    /// Return an ejected host (its time passed, or an active health check succeeded).
    pub(crate) fn uneject(&self, host: &Host, now: Instant) {
        if host.set_health_flag(health_flag::FAILED_OUTLIER_CHECK, false) & health_flag::FAILED_OUTLIER_CHECK == 0 {
            return;
        }
        self.set_active(self.ejections_active().saturating_sub(1));
        host.outlier.reset_consecutive();
        host.outlier.state().last_unejection = Some(now);
    }

    /// A host left the cluster.
    pub(crate) fn on_host_removed(&self, host: &Host) {
        if host.health_flag(health_flag::FAILED_OUTLIER_CHECK) {
            self.set_active(self.ejections_active().saturating_sub(1));
        }
    }

    /// How long `host` stays ejected this time.
    pub(crate) fn ejection_duration(&self, host: &Host) -> Duration {
        let st = host.outlier.state();
        self.cfg.base_ejection_time.saturating_mul(st.backoff).min(self.cfg.max_ejection_time) + st.jitter
    }

    /// The interval timer: returns, swaps buckets, success-rate and failure-percentage
    /// ejections, backoff decay. Returns whether any host's health changed.
    pub(crate) fn on_interval(&self, hosts: &[Arc<Host>], now: Instant) -> bool {
        let mut changed = false;
        let mut rates: Vec<[Option<(f64, u64)>; 2]> = Vec::with_capacity(hosts.len());
        for h in hosts {
            if h.health_flag(health_flag::FAILED_OUTLIER_CHECK) {
                let ejected_at = h.outlier.state().last_ejection;
                if ejected_at.is_some_and(|t| self.ejection_duration(h) <= now.saturating_duration_since(t)) {
                    self.uneject(h, now);
                    changed = true;
                }
            }
            rates.push([h.outlier.external.swap(), h.outlier.local.swap()]);
            h.outlier.state().success_rate = [-1.0, -1.0];
        }
        changed |= self.success_rate_ejections(hosts, &rates, 0, now);
        changed |= self.success_rate_ejections(hosts, &rates, 1, now);
        for h in hosts {
            if !h.health_flag(health_flag::FAILED_OUTLIER_CHECK) {
                let mut st = h.outlier.state();
                if st.last_unejection.is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.interval) && st.backoff > 0 {
                    st.backoff -= 1;
                }
            }
        }
        changed
    }

    /// `origin` 0: external (all results without the split), 1: local origin.
    fn success_rate_ejections(&self, hosts: &[Arc<Host>], rates: &[[Option<(f64, u64)>; 2]], origin: usize, now: Instant) -> bool {
        let c = &self.cfg;
        let n = hosts.len() as u64;
        if n < c.success_rate_minimum_hosts as u64 && n < c.failure_percentage_minimum_hosts as u64 {
            return false;
        }
        let sr_volume = c.success_rate_request_volume as u64;
        let fp_volume = c.failure_percentage_request_volume as u64;
        let mut sr_hosts = Vec::new();
        let mut fp_hosts = Vec::new();
        let mut sum = 0.0;
        for (h, r) in hosts.iter().zip(rates) {
            if h.health_flag(health_flag::FAILED_OUTLIER_CHECK) {
                continue;
            }
            let Some((rate, volume)) = r[origin] else { continue };
            if volume >= sr_volume.min(fp_volume) {
                h.outlier.state().success_rate[origin] = rate;
            }
            if volume >= sr_volume {
                sr_hosts.push((h, rate));
                sum += rate;
            }
            if volume >= fp_volume {
                fp_hosts.push((h, rate));
            }
        }
        let mut changed = false;
        if !sr_hosts.is_empty() && sr_hosts.len() as u64 >= c.success_rate_minimum_hosts as u64 {
            let threshold = success_rate_threshold(
                sum,
                &sr_hosts.iter().map(|(_, r)| *r).collect::<Vec<_>>(),
                c.success_rate_stdev_factor as f64 / 1000.0,
            )
            .1;
            let t = if origin == 0 { EjectionType::SuccessRate } else { EjectionType::SuccessRateLocalOrigin };
            for (h, rate) in &sr_hosts {
                if *rate < threshold {
                    self.stats.ejections_success_rate.inc();
                    self.stats.detected[t.index()].inc();
                    changed |= self.eject(h, t, hosts.len(), now);
                }
            }
        }
        if !fp_hosts.is_empty() && fp_hosts.len() as u64 >= c.failure_percentage_minimum_hosts as u64 {
            let t = if origin == 0 { EjectionType::FailurePercentage } else { EjectionType::FailurePercentageLocalOrigin };
            for (h, rate) in &fp_hosts {
                if 100.0 - rate >= c.failure_percentage_threshold as f64 {
                    self.stats.detected[t.index()].inc();
                    changed |= self.eject(h, t, hosts.len(), now);
                }
            }
        }
        changed
    }
}

/// `(mean, mean - factor × standard deviation)` of the hosts' success rates.
fn success_rate_threshold(sum: f64, rates: &[f64], factor: f64) -> (f64, f64) {
    let n = rates.len() as f64;
    let mean = sum / n;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / n;
    (mean, mean - factor * variance.sqrt())
}

/// The detector's control loop for one cluster: consecutive-error messages and the interval
/// timer, until shutdown.
pub(crate) async fn run(cluster: Arc<Cluster>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(det) = cluster.detector() else { return };
    let Some(mut rx) = det.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
    let mut next = Instant::now() + det.cfg.interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                let hosts = cluster.hosts();
                if det.on_interval(&hosts.hosts, now) {
                    cluster.on_health_changed(&hosts.hosts);
                }
                next = now + det.cfg.interval;
            }
            msg = rx.recv() => {
                let Some((host, t)) = msg else { return };
                let hosts = cluster.hosts();
                if hosts.hosts.iter().any(|h| Arc::ptr_eq(h, &host))
                    && det.on_consecutive_error(&host, t, hosts.len(), Instant::now())
                {
                    cluster.on_health_changed(std::slice::from_ref(&host));
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(cfg: serde_json::Value) -> Detector {
        let cfg: sluice_config::cluster::OutlierDetection = serde_json::from_value(cfg).unwrap();
        Detector::new(OutlierConfig::build(&cfg).unwrap(), &Store::new(), "cluster.c.")
    }

    fn hosts(n: usize, det: &Detector) -> Vec<Arc<Host>> {
        (0..n)
            .map(|i| {
                let h = Arc::new(Host::simple(format!("127.0.0.{}:80", i + 1).parse().unwrap()));
                h.link.set(crate::upstream::host::HostLink { outlier: Some(det.sink.clone()), ..Default::default() }).unwrap();
                h
            })
            .collect()
    }

    /// Deliver the messages the request path sent, as the control loop does.
    fn drain(det: &Detector, total: usize, now: Instant) -> usize {
        let mut rx = det.rx.lock().unwrap();
        let rx = rx.as_mut().unwrap();
        let mut ejected = 0;
        while let Ok((h, t)) = rx.try_recv() {
            ejected += det.on_consecutive_error(&h, t, total, now) as usize;
        }
        ejected
    }

    #[test]
    fn defaults_are_envoys() {
        let d = detector(serde_json::json!({}));
        let c = &d.cfg;
        assert_eq!(
            (c.interval, c.base_ejection_time, c.max_ejection_time),
            (Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(300))
        );
        assert_eq!((c.consecutive_5xx, c.consecutive_gateway_failure, c.max_ejection_percent), (5, 5, 10));
        assert_eq!(c.enforcing, [100, 0, 100, 100, 100, 0, 0]);
        let d = detector(serde_json::json!({"base_ejection_time": "400s"}));
        assert_eq!(d.cfg.max_ejection_time, Duration::from_secs(400));
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_ejects_and_returns_after_the_ejection_time() {
        let d =
            detector(serde_json::json!({"consecutive_5xx": 3, "max_ejection_percent": 100, "interval": "1s", "base_ejection_time": "2s"}));
        let hs = hosts(3, &d);
        let h = &hs[0];
        h.report(Outcome::HttpStatus(500));
        h.report(Outcome::HttpStatus(500));
        h.report(Outcome::HttpStatus(200)); // resets
        h.report(Outcome::HttpStatus(500));
        h.report(Outcome::HttpStatus(503));
        assert_eq!(drain(&d, 3, Instant::now()), 0);
        h.report(Outcome::HttpStatus(502));
        let t0 = Instant::now();
        assert_eq!(drain(&d, 3, t0), 1);
        assert!(h.health_flag(health_flag::FAILED_OUTLIER_CHECK));
        assert_eq!(d.ejections_active(), 1);
        assert_eq!(d.stats.detected[0].value(), 1);
        assert_eq!(d.stats.ejections_enforced_total.value(), 1);
        // Still out at 1 s, back at the first interval tick at or after 2 s.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!d.on_interval(&hs, Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(d.on_interval(&hs, Instant::now()));
        assert!(!h.health_flag(health_flag::FAILED_OUTLIER_CHECK));
        assert_eq!(d.ejections_active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_per_ejection_and_decays_while_healthy() {
        let d = detector(serde_json::json!({"consecutive_5xx": 1, "max_ejection_percent": 100, "interval": "1s",
                                            "base_ejection_time": "2s", "max_ejection_time": "5s"}));
        let hs = hosts(2, &d);
        let h = &hs[0];
        let eject = |now| {
            h.report(Outcome::HttpStatus(500));
            assert_eq!(drain(&d, 2, now), 1);
        };
        // 1st ejection: 2 s; 2nd (right after return): 4 s; 3rd: capped at 5 s.
        let mut expected = vec![2, 4, 5, 5];
        for want in expected.drain(..) {
            eject(Instant::now());
            assert_eq!(d.ejection_duration(h), Duration::from_secs(want), "ejection {}", h.outlier.state().num_ejections);
            let start = Instant::now();
            let mut ticks = 0;
            while h.health_flag(health_flag::FAILED_OUTLIER_CHECK) {
                tokio::time::advance(Duration::from_secs(1)).await;
                d.on_interval(&hs, Instant::now());
                ticks += 1;
                assert!(ticks <= 10);
            }
            assert_eq!(Instant::now() - start, Duration::from_secs(want));
        }
        // Healthy intervals let the multiplier decay back to 1 ejection's worth.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            d.on_interval(&hs, Instant::now());
        }
        eject(Instant::now());
        assert_eq!(d.ejection_duration(h), Duration::from_secs(2));
    }

    #[test]
    fn max_ejection_percent_overflows_and_enforcing_zero_only_detects() {
        let d = detector(serde_json::json!({"consecutive_5xx": 1, "max_ejection_percent": 50}));
        let hs = hosts(4, &d);
        let now = Instant::now();
        for h in &hs[..3] {
            h.report(Outcome::HttpStatus(500));
        }
        assert_eq!(drain(&d, 4, now), 2);
        assert_eq!(d.stats.ejections_overflow.value(), 1);
        assert_eq!(d.stats.detected[0].value(), 3);
        // Gateway failures are detected but not enforced by default (enforcing 0).
        let d = detector(serde_json::json!({"consecutive_gateway_failure": 2, "consecutive_5xx": 100, "max_ejection_percent": 100}));
        let hs = hosts(2, &d);
        hs[0].report(Outcome::ConnectFailed); // 503 without the split
        hs[0].report(Outcome::Timeout); // 504
        assert_eq!(drain(&d, 2, now), 0);
        assert_eq!(d.stats.detected[EjectionType::ConsecutiveGatewayFailure.index()].value(), 1);
        assert_eq!(d.stats.ejections_enforced_total.value(), 0);
    }

    #[test]
    fn split_counts_local_origin_failures_apart() {
        let d = detector(serde_json::json!({"split_external_local_origin_errors": true, "consecutive_local_origin_failure": 2,
                                            "consecutive_5xx": 2, "max_ejection_percent": 100}));
        let hs = hosts(2, &d);
        let now = Instant::now();
        hs[0].report(Outcome::ConnectFailed);
        hs[0].report(Outcome::HttpStatus(500)); // external: does not reset the local count
        hs[0].report(Outcome::Timeout);
        assert_eq!(drain(&d, 2, now), 1);
        assert_eq!(d.stats.enforced[EjectionType::ConsecutiveLocalOriginFailure.index()].value(), 1);
        hs[1].report(Outcome::ConnectFailed);
        hs[1].report(Outcome::ConnectSuccess); // resets
        hs[1].report(Outcome::ConnectFailed);
        assert_eq!(drain(&d, 2, now), 0);
    }

    #[test]
    fn success_rate_and_failure_percentage() {
        // Five hosts, 100 requests each per interval; one at 50 % success.
        let d = detector(serde_json::json!({"max_ejection_percent": 100, "consecutive_5xx": 1000}));
        let hs = hosts(5, &d);
        for (i, h) in hs.iter().enumerate() {
            for k in 0..100 {
                h.report(Outcome::HttpStatus(if i == 0 && k % 2 == 0 { 500 } else { 200 }));
            }
        }
        assert!(d.on_interval(&hs, Instant::now()));
        assert!(hs[0].health_flag(health_flag::FAILED_OUTLIER_CHECK));
        assert!(hs[1..].iter().all(|h| !h.health_flag(health_flag::FAILED_OUTLIER_CHECK)));
        assert_eq!(d.stats.enforced[EjectionType::SuccessRate.index()].value(), 1);
        assert_eq!(hs[1].outlier.state().success_rate[0], 100.0);
        // (50, 100, 100, 100, 100): mean 90, stdev 20 → threshold 90 - 1.9 × 20 = 52.
        assert_eq!(success_rate_threshold(450.0, &[50.0, 100.0, 100.0, 100.0, 100.0], 1.9), (90.0, 52.0));
        // Failure percentage, enforced at 100 %: 90 % failures ≥ 85 %.
        let d = detector(serde_json::json!({"max_ejection_percent": 100, "consecutive_5xx": 1000, "enforcing_success_rate": 0,
                                            "enforcing_failure_percentage": 100, "failure_percentage_minimum_hosts": 2,
                                            "failure_percentage_request_volume": 10}));
        let hs = hosts(2, &d);
        for k in 0..10 {
            hs[0].report(Outcome::HttpStatus(if k == 0 { 200 } else { 503 }));
            hs[1].report(Outcome::HttpStatus(200));
        }
        assert!(d.on_interval(&hs, Instant::now()));
        assert!(hs[0].health_flag(health_flag::FAILED_OUTLIER_CHECK));
        assert_eq!(d.stats.enforced[EjectionType::FailurePercentage.index()].value(), 1);
    }
}
