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

/// Histogram buckets follow Envoy's (libcircllhist's) log-linear layout: every power of ten is cut
/// into 90 buckets of two significant digits (`[1.0, 1.1)`, …, `[28, 29)`, …, `[500, 510)`), plus a
/// bucket for 0. Values are recorded as whole units, as Envoy's `recordValue(uint64_t)` does.
const DECADES: usize = 13;
const NBUCKETS: usize = 1 + 90 * DECADES;
const POW10: [f64; DECADES] =
    [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12];

/// The bucket of a whole value.
fn bucket_index(v: u64) -> usize {
    if v == 0 {
        return 0;
    }
    let (mut val, mut exp) = if v < 10 { (v * 10, 0usize) } else { (v, 1usize) };
    while val >= 100 {
        val /= 10;
        exp += 1;
    }
    if exp >= DECADES {
        return NBUCKETS - 1;
    }
    1 + exp * 90 + (val as usize - 10)
}

/// (left edge, width) of a bucket.
fn bucket_bounds(index: usize) -> (f64, f64) {
    if index == 0 {
        return (0.0, 0.0);
    }
    let exp = (index - 1) / 90;
    let val = ((index - 1) % 90 + 10) as f64;
    ((val / 10.0) * POW10[exp], POW10[exp] / 10.0)
}

/// Quantiles the way Envoy 1.40 reports them: the k-th sample (k = ⌈q·n⌉, at least 1), the
/// samples of a bucket being spread evenly inside it (`left + width·i/(c+1)`). NaN when empty.
fn quantiles_of(buckets: &[(usize, u64)]) -> [f64; QUANTILES.len()] {
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    let mut out = [f64::NAN; QUANTILES.len()];
    if total == 0 {
        return out;
    }
    for (qi, q) in QUANTILES.iter().enumerate() {
        let k = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut lower = 0u64;
        for (idx, c) in buckets {
            if *c == 0 {
                continue;
            }
            if lower + c >= k {
                let (left, width) = bucket_bounds(*idx);
                out[qi] = if width == 0.0 {
                    left
                } else {
                    left + width * (k - lower) as f64 / (*c + 1) as f64
                };
                break;
            }
            lower += c;
        }
    }
    out
}

/// Envoy's approximate sum: each sample counts as `2·l·u/(l+u)` of its bucket `[l, u)`.
fn sum_of(buckets: &[(usize, u64)]) -> f64 {
    let mut sum = 0.0;
    for (idx, c) in buckets {
        let (l, w) = bucket_bounds(*idx);
        if w == 0.0 {
            continue;
        }
        let u = l + w;
        sum += 2.0 * l * u / (l + u) * *c as f64;
    }
    sum
}

/// Cumulative counts at each of [`PROMETHEUS_BUCKETS`] (a bucket counts below `le` when its left
/// edge is ≤ `le`, as Envoy computes it), then the total for `+Inf`.
fn prometheus_of(buckets: &[(usize, u64)]) -> [u64; PROMETHEUS_BUCKETS.len() + 1] {
    let mut out = [0u64; PROMETHEUS_BUCKETS.len() + 1];
    for (i, le) in PROMETHEUS_BUCKETS.iter().enumerate() {
        let mut n = 0;
        for (idx, c) in buckets {
            if bucket_bounds(*idx).0 > *le {
                break;
            }
            n += c;
        }
        out[i] = n;
    }
    out[PROMETHEUS_BUCKETS.len()] = buckets.iter().map(|(_, c)| c).sum();
    out
}

/// A distribution of whole values (milliseconds for times), with Envoy's interval/cumulative
/// split: [`Histogram::flush`] (the periodic stats flush) closes an interval.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    /// Samples recorded since the last flush.
    live: Box<[AtomicU64]>,
    used: AtomicBool,
    merged: Mutex<Merged>,
}

#[derive(Debug, Default)]
struct Merged {
    /// Sparse (bucket, count), ascending.
    cumulative: Vec<(usize, u64)>,
    interval: Vec<(usize, u64)>,
    used: bool,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram(Arc::new(HistogramInner {
            live: (0..NBUCKETS).map(|_| AtomicU64::new(0)).collect(),
            used: AtomicBool::new(false),
            merged: Mutex::new(Merged::default()),
        }))
    }
}

/// A point-in-time view of a histogram (everything recorded so far, flushed or not).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub count: u64,
    /// Envoy's approximate sum of the recorded values.
    pub sum: f64,
    /// Values at [`QUANTILES`] (`None` when nothing was recorded).
    pub quantiles: Option<[f64; QUANTILES.len()]>,
    /// Cumulative counts for each of [`PROMETHEUS_BUCKETS`], then `+Inf`.
    pub buckets: [u64; PROMETHEUS_BUCKETS.len() + 1],
}

/// What the admin interface shows for a histogram: the state at the last flush, as Envoy does.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramStatistics {
    /// Some value was flushed at least once (otherwise `No recorded values`).
    pub used: bool,
    /// Quantiles of the last closed interval (NaN when it was empty).
    pub interval: [f64; QUANTILES.len()],
    /// Quantiles of everything flushed so far (NaN when empty).
    pub cumulative: [f64; QUANTILES.len()],
    pub count: u64,
    pub sum: f64,
    pub buckets: [u64; PROMETHEUS_BUCKETS.len() + 1],
}

fn merge_into(into: &mut Vec<(usize, u64)>, add: &[(usize, u64)]) {
    let mut out = Vec::with_capacity(into.len() + add.len());
    let (mut i, mut j) = (0, 0);
    while i < into.len() || j < add.len() {
        if j == add.len() || (i < into.len() && into[i].0 < add[j].0) {
            out.push(into[i]);
            i += 1;
        } else if i == into.len() || add[j].0 < into[i].0 {
            out.push(add[j]);
            j += 1;
        } else {
            out.push((into[i].0, into[i].1 + add[j].1));
            i += 1;
            j += 1;
        }
    }
    *into = out;
}

impl Histogram {
    /// Record one value (milliseconds for durations). Like Envoy, only the whole part counts.
    pub fn record(&self, value: f64) {
        let v = if value.is_finite() && value > 0.0 { value as u64 } else { 0 };
        self.record_int(v);
    }

    /// Record one whole value.
    pub fn record_int(&self, v: u64) {
        self.0.live[bucket_index(v)].fetch_add(1, Ordering::Relaxed);
        if !self.0.used.load(Ordering::Relaxed) {
            self.0.used.store(true, Ordering::Relaxed);
        }
    }

    /// Recorded at least once since start.
    pub fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }

    fn live(&self) -> Vec<(usize, u64)> {
        self.0
            .live
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.load(Ordering::Relaxed);
                (c > 0).then_some((i, c))
            })
            .collect()
    }

    /// Everything recorded so far (flushed or not).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut all = self.live();
        {
            let m = self.0.merged.lock().unwrap_or_else(|e| e.into_inner());
            merge_into(&mut all, &m.cumulative);
        }
        let count = all.iter().map(|(_, c)| c).sum();
        HistogramSnapshot {
            count,
            sum: sum_of(&all),
            quantiles: (count > 0).then(|| quantiles_of(&all)),
            buckets: prometheus_of(&all),
        }
    }

    /// Close the current interval: its samples become the interval shown by the admin
    /// interface and are added to the cumulative distribution.
    pub fn flush(&self) {
        let mut interval = Vec::new();
        for (i, c) in self.0.live.iter().enumerate() {
            if c.load(Ordering::Relaxed) > 0 {
                let n = c.swap(0, Ordering::Relaxed);
                if n > 0 {
                    interval.push((i, n));
                }
            }
        }
        let mut m = self.0.merged.lock().unwrap_or_else(|e| e.into_inner());
        merge_into(&mut m.cumulative, &interval);
        if !interval.is_empty() {
            m.used = true;
        }
        m.interval = interval;
    }

    /// The state as of the last [`flush`](Self::flush).
    pub fn statistics(&self) -> HistogramStatistics {
        let m = self.0.merged.lock().unwrap_or_else(|e| e.into_inner());
        HistogramStatistics {
            used: m.used,
            interval: quantiles_of(&m.interval),
            cumulative: quantiles_of(&m.cumulative),
            count: m.cumulative.iter().map(|(_, c)| c).sum(),
            sum: sum_of(&m.cumulative),
            buckets: prometheus_of(&m.cumulative),
        }
    }
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

    /// `/reset_counters`: counters back to zero; gauges and histograms keep their values, as in
    /// Envoy.
    pub fn reset_counters(&self) {
        let m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        for metric in m.values() {
            if let Metric::Counter(c) = metric {
                c.reset();
            }
        }
    }

    /// Close the current histogram interval of every histogram (the periodic stats flush).
    pub fn flush_histograms(&self) {
        let hs: Vec<Histogram> = {
            let m = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
            m.values()
                .filter_map(|v| match v {
                    Metric::Histogram(h) => Some(h.clone()),
                    _ => None,
                })
                .collect()
        };
        for h in hs {
            h.flush();
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
    fn histogram_buckets_follow_circllhist() {
        assert_eq!(bucket_bounds(bucket_index(0)), (0.0, 0.0));
        assert_eq!(bucket_bounds(bucket_index(1)), (1.0, 0.1));
        assert_eq!(bucket_bounds(bucket_index(9)), (9.0, 0.1));
        assert_eq!(bucket_bounds(bucket_index(28)), (28.0, 1.0));
        assert_eq!(bucket_bounds(bucket_index(505)), (500.0, 10.0));
        assert_eq!(bucket_bounds(bucket_index(16_999)), (16_000.0, 1000.0));
        let mut last = 0;
        for v in [0u64, 1, 2, 9, 10, 11, 99, 100, 101, 999, 1000, 123_456, u64::MAX] {
            let i = bucket_index(v);
            assert!(i >= last && i < NBUCKETS);
            last = i;
        }
    }

    #[test]
    fn histogram_quantiles_match_envoy() {
        // Seen on Envoy 1.40: 52 samples of 1 → P0 1.0018867924528303 … P100 1.0981132075471698.
        let h = Histogram::default();
        for _ in 0..52 {
            h.record(1.0);
        }
        let q = h.snapshot().quantiles.unwrap();
        assert_eq!(
            q,
            [
                1.0018867924528303,
                1.0245283018867926,
                1.049056603773585,
                1.0735849056603775,
                1.088679245283019,
                1.0943396226415094,
                1.0981132075471698,
                1.0981132075471698,
                1.0981132075471698,
                1.0981132075471698
            ]
        );
        // One sample → the bucket's middle; 0 stays 0.
        let one = Histogram::default();
        one.record(38.7);
        assert_eq!(one.snapshot().quantiles.unwrap(), [38.5; 10]);
        let zero = Histogram::default();
        zero.record(0.3);
        assert_eq!(zero.snapshot().quantiles.unwrap(), [0.0; 10]);
        // 14×0, 3×1, 2×2, 1×17 (Envoy's admin downstream_rq_time).
        let mixed = Histogram::default();
        for v in std::iter::repeat_n(0, 14).chain([1, 1, 1, 2, 2, 17]) {
            mixed.record_int(v);
        }
        let q = mixed.snapshot().quantiles.unwrap();
        assert_eq!(q[3], 1.025);
        assert_eq!(q[4], 2.033333333333333);
        assert_eq!(q[5], 2.066666666666667);
        assert_eq!(q[6], 17.5);
    }

    #[test]
    fn histogram_sum_and_buckets_match_envoy() {
        let h = Histogram::default();
        for v in std::iter::repeat_n(0, 14).chain([1, 1, 2, 2, 17]) {
            h.record_int(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 19);
        assert_eq!(format!("{:.15}", s.sum), "23.678513356562135");
        // le=0.5 → 14, le=1 → 16 (a bucket counts when its left edge is ≤ le), le=5 → 18.
        assert_eq!(&s.buckets[..5], &[14, 16, 18, 18, 19]);
        assert_eq!(s.buckets[PROMETHEUS_BUCKETS.len()], 19);
        let one = Histogram::default();
        one.record_int(28);
        assert_eq!(one.snapshot().sum, 2.0 * 28.0 * 29.0 / 57.0);
    }

    #[test]
    fn histogram_intervals_rotate_on_flush() {
        let h = Histogram::default();
        assert!(!h.statistics().used);
        h.record_int(5);
        // Not flushed yet: the admin view is unchanged, the snapshot sees it.
        assert!(!h.statistics().used);
        assert_eq!(h.snapshot().count, 1);
        h.flush();
        let st = h.statistics();
        assert!(st.used);
        assert_eq!(st.interval[0], 5.05);
        assert_eq!(st.cumulative[0], 5.05);
        h.flush();
        let st = h.statistics();
        assert!(st.interval[0].is_nan());
        assert_eq!(st.cumulative[9], 5.05);
        assert_eq!(st.count, 1);
    }
}
