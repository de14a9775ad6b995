//! Stats: counters, gauges and histograms named as Envoy names them.
//!
//! Names are registered once (at config build time, or the first time a dynamic name such as
//! `upstream_rq_503` is needed) under a lock; the request path only touches the returned handles,
//! which are plain atomics shared through `Arc`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<CounterInner>);

#[derive(Debug, Default)]
struct CounterInner {
    value: AtomicU64,
    used: AtomicBool,
}

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.value.fetch_add(n, Ordering::Relaxed);
        if !self.0.used.load(Ordering::Relaxed) {
            self.0.used.store(true, Ordering::Relaxed);
        }
    }
    pub fn value(&self) -> u64 {
        self.0.value.load(Ordering::Relaxed)
    }
    /// Written at least once since start (what `?usedonly` shows).
    pub fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }
    fn reset(&self) {
        self.0.value.store(0, Ordering::Relaxed);
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<GaugeInner>);

#[derive(Debug, Default)]
struct GaugeInner {
    value: AtomicI64,
    used: AtomicBool,
}

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn dec(&self) {
        self.sub(1);
    }
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.value.fetch_add(n, Ordering::Relaxed);
        self.mark();
    }
    #[inline]
    pub fn sub(&self, n: i64) {
        self.0.value.fetch_sub(n, Ordering::Relaxed);
        self.mark();
    }
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.value.store(v, Ordering::Relaxed);
        self.mark();
    }
    pub fn value(&self) -> i64 {
        self.0.value.load(Ordering::Relaxed)
    }
    pub fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }
    #[inline]
    fn mark(&self) {
        if !self.0.used.load(Ordering::Relaxed) {
            self.0.used.store(true, Ordering::Relaxed);
        }
    }
}

/// Upper bounds (ms) of the buckets Envoy exports to Prometheus; the last bucket is `+Inf`.
pub const PROMETHEUS_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Envoy's reported quantiles.
pub const QUANTILES: [f64; 10] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];

/// Fine buckets: value v (in units of 1/64 ms… large) → log-linear index, 16 sub-buckets per
/// power of two; enough precision for quantiles (≤ 6.25 % relative error).
const SUB_BUCKETS: usize = 16;
const POWERS: usize = 40;
const FINE: usize = SUB_BUCKETS * POWERS;
/// Values are recorded in units of 1/1000 ms (microseconds) before bucketing.
const SCALE: f64 = 1000.0;

/// A distribution of values in milliseconds.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    fine: Box<[AtomicU64]>,
    prometheus: [AtomicU64; PROMETHEUS_BUCKETS.len() + 1],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram(Arc::new(HistogramInner {
            fine: (0..FINE).map(|_| AtomicU64::new(0)).collect(),
            prometheus: Default::default(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }))
    }
}

fn fine_index(units: u64) -> usize {
    if units < SUB_BUCKETS as u64 {
        return units as usize;
    }
    let power = 63 - units.leading_zeros() as usize; // ≥ 4
    let shift = power - 4;
    let sub = ((units >> shift) as usize) & (SUB_BUCKETS - 1);
    ((power - 3) * SUB_BUCKETS + sub).min(FINE - 1)
}

/// The [lower, upper) bounds in units of a fine bucket.
fn fine_bounds(index: usize) -> (f64, f64) {
    if index < SUB_BUCKETS {
        return (index as f64, index as f64 + 1.0);
    }
    let power = index / SUB_BUCKETS + 3;
    let sub = index % SUB_BUCKETS;
    let width = (1u64 << (power - 4)) as f64;
    let lower = (1u64 << power) as f64 + sub as f64 * width;
    (lower, lower + width)
}

/// A point-in-time view of a histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub count: u64,
    /// Sum of recorded values, ms.
    pub sum: f64,
    /// Values at [`QUANTILES`], ms (`None` when nothing was recorded).
    pub quantiles: Option<[f64; QUANTILES.len()]>,
    /// Cumulative counts for each of [`PROMETHEUS_BUCKETS`], then `+Inf`.
    pub buckets: [u64; PROMETHEUS_BUCKETS.len() + 1],
}

impl Histogram {
    /// Record one value in milliseconds.
    pub fn record(&self, ms: f64) {
        let ms = if ms.is_finite() && ms > 0.0 { ms } else { 0.0 };
        let units = (ms * SCALE) as u64;
        let inner = &self.0;
        inner.fine[fine_index(units)].fetch_add(1, Ordering::Relaxed);
        let p = PROMETHEUS_BUCKETS.partition_point(|b| *b < ms);
        inner.prometheus[p].fetch_add(1, Ordering::Relaxed);
        inner.count.fetch_add(1, Ordering::Relaxed);
        inner.sum_us.fetch_add(units, Ordering::Relaxed);
    }

    pub fn used(&self) -> bool {
        self.0.count.load(Ordering::Relaxed) > 0
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let inner = &self.0;
        let fine: Vec<u64> = inner.fine.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let count: u64 = fine.iter().sum();
        let mut buckets = [0u64; PROMETHEUS_BUCKETS.len() + 1];
        let mut acc = 0;
        for (i, b) in inner.prometheus.iter().enumerate() {
            acc += b.load(Ordering::Relaxed);
            buckets[i] = acc;
        }
        let quantiles = (count > 0).then(|| {
            let mut out = [0.0; QUANTILES.len()];
            for (qi, q) in QUANTILES.iter().enumerate() {
                out[qi] = quantile(&fine, count, *q) / SCALE;
            }
            out
        });
        HistogramSnapshot {
            count,
            sum: inner.sum_us.load(Ordering::Relaxed) as f64 / SCALE,
            quantiles,
            buckets,
        }
    }

    fn reset(&self) {
        for c in self.0.fine.iter() {
            c.store(0, Ordering::Relaxed);
        }
        for c in self.0.prometheus.iter() {
            c.store(0, Ordering::Relaxed);
        }
        self.0.count.store(0, Ordering::Relaxed);
        self.0.sum_us.store(0, Ordering::Relaxed);
    }
}

/// Linear interpolation inside the bucket holding the q-th value.
fn quantile(fine: &[u64], count: u64, q: f64) -> f64 {
    let target = q * count as f64;
    let mut seen = 0.0;
    let mut last_nonempty = 0;
    for (i, c) in fine.iter().enumerate() {
        if *c == 0 {
            continue;
        }
        last_nonempty = i;
        let c = *c as f64;
        if seen + c >= target && target > 0.0 {
            let (lo, hi) = fine_bounds(i);
            return lo + (hi - lo) * ((target - seen) / c);
        }
        if target == 0.0 {
            return fine_bounds(i).0;
        }
        seen += c;
    }
    fine_bounds(last_nonempty).1
}

/// Kinds of metric, as `/stats?type=` names them.
#[derive(Clone, Debug)]
pub enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// All stats of one process.
#[derive(Clone, Debug, Default)]
pub struct Store {
    metrics: Arc<Mutex<BTreeMap<String, Metric>>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter with this name, created on first use.
    pub fn counter(&self, name: impl Into<String>) -> Counter {
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        match m.entry(name.into()).or_insert_with(|| Metric::Counter(Counter::default())) {
            Metric::Counter(c) => c.clone(),
            // A name used with two kinds is a programming error; keep running with a detached
            // handle rather than crash the proxy.
            _ => Counter::default(),
        }
    }

    /// The gauge with this name, created on first use.
    pub fn gauge(&self, name: impl Into<String>) -> Gauge {
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        match m.entry(name.into()).or_insert_with(|| Metric::Gauge(Gauge::default())) {
            Metric::Gauge(g) => g.clone(),
            _ => Gauge::default(),
        }
    }

    /// The histogram with this name (values in ms), created on first use.
    pub fn histogram(&self, name: impl Into<String>) -> Histogram {
        let mut m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        match m.entry(name.into()).or_insert_with(|| Metric::Histogram(Histogram::default())) {
            Metric::Histogram(h) => h.clone(),
            _ => Histogram::default(),
        }
    }

    /// Every metric, sorted by name.
    pub fn all(&self) -> Vec<(String, Metric)> {
        let m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// `/reset_counters`: counters and histograms back to zero (gauges keep their values).
    pub fn reset_counters(&self) {
        let m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        for metric in m.values() {
            match metric {
                Metric::Counter(c) => c.reset(),
                Metric::Histogram(h) => h.reset(),
                Metric::Gauge(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_share_handles_by_name() {
        let s = Store::new();
        s.counter("a.b").inc();
        s.counter("a.b").add(2);
        assert_eq!(s.counter("a.b").value(), 3);
        let g = s.gauge("g");
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(s.gauge("g").value(), 1);
        s.reset_counters();
        assert_eq!(s.counter("a.b").value(), 0);
        assert!(s.counter("a.b").used());
        assert_eq!(s.gauge("g").value(), 1);
        let names: Vec<String> = s.all().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["a.b".to_string(), "g".to_string()]);
    }

    #[test]
    fn histogram_quantiles_are_close() {
        let h = Histogram::default();
        for i in 1..=1000 {
            h.record(i as f64 / 10.0); // 0.1 .. 100 ms
        }
        let s = h.snapshot();
        assert_eq!(s.count, 1000);
        let q = s.quantiles.unwrap();
        let p50 = q[2];
        assert!((p50 - 50.0).abs() / 50.0 < 0.07, "p50 {p50}");
        let p100 = q[9];
        assert!(p100 >= 100.0 && p100 < 107.0, "p100 {p100}");
        assert!((s.sum - 50050.0).abs() < 1.0, "sum {}", s.sum);
        // le=0.5 holds 0.1..=0.5 → 5 values; le=100 holds all.
        assert_eq!(s.buckets[0], 5);
        assert_eq!(s.buckets[6], 1000);
        assert_eq!(s.buckets[PROMETHEUS_BUCKETS.len()], 1000);
    }

    #[test]
    fn fine_index_is_monotonic_and_bounds_contain_values() {
        let mut last = 0;
        for units in [0u64, 1, 15, 16, 17, 31, 32, 100, 1000, 65_535, 1 << 30, u64::MAX / 2] {
            let i = fine_index(units);
            assert!(i >= last);
            last = i;
            let (lo, hi) = fine_bounds(i);
            if i < FINE - 1 {
                assert!(lo <= units as f64 && (units as f64) < hi, "{units} in [{lo},{hi})");
            }
        }
    }
}
