//! ROUND_ROBIN: one atomic cursor per cluster per process (Envoy keeps one per worker; one per
//! process gives the same totals and an exact cyclic order). Equal weights → `cursor % n`;
//! different weights → a precomputed interleaved weighted schedule (each round visits every host
//! whose weight exceeds the round number), so picks stay proportional and lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{LbFactory, LoadBalancer};
use crate::upstream::host::{Host, HostSet};
use crate::upstream::LbContext;

/// Longest weighted schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 1 << 16;

#[derive(Default)]
pub struct RoundRobinFactory {
    cursor: Arc<AtomicU64>,
}

struct RoundRobin {
    cursor: Arc<AtomicU64>,
    schedule: Option<Vec<u32>>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn schedule(hosts: &HostSet) -> Vec<u32> {
    let mut w: Vec<u64> = hosts.hosts.iter().map(|h| h.weight.max(1) as u64).collect();
    let g = w.iter().copied().fold(0, gcd).max(1);
    w.iter_mut().for_each(|x| *x /= g);
    let sum: u64 = w.iter().sum();
    if sum > MAX_SCHEDULE {
        w.iter_mut().for_each(|x| *x = (*x * MAX_SCHEDULE / sum).max(1));
    }
    let max = w.iter().copied().max().unwrap_or(1);
    let mut s = Vec::with_capacity(w.iter().sum::<u64>() as usize);
    for round in 0..max {
        for (i, wi) in w.iter().enumerate() {
            if *wi > round {
                s.push(i as u32);
            }
        }
    }
    s
}

impl LbFactory for RoundRobinFactory {
    fn build(&self, hosts: &HostSet) -> Box<dyn LoadBalancer> {
        let schedule = (!hosts.equal_weights()).then(|| schedule(hosts));
        Box::new(RoundRobin { cursor: self.cursor.clone(), schedule })
    }
}

impl LoadBalancer for RoundRobin {
    fn choose(&self, hosts: &HostSet, _ctx: &LbContext) -> Option<Arc<Host>> {
        let n = hosts.hosts.len();
        if n == 0 {
            return None;
        }
        let c = self.cursor.fetch_add(1, Ordering::Relaxed);
        let i = match &self.schedule {
            Some(s) if !s.is_empty() => s[(c % s.len() as u64) as usize] as usize,
            _ => (c % n as u64) as usize,
        };
        hosts.hosts.get(i).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::load_balancer::test_util::*;

    #[test]
    fn two_hundred_over_three_is_67_67_66() {
        let hosts = hosts(3);
        let lb = RoundRobinFactory::default().build(&hosts);
        let m = count(lb.as_ref(), &hosts, 200, |_| LbContext::default());
        let mut v: Vec<usize> = m.values().copied().collect();
        v.sort();
        assert_eq!(v, vec![66, 67, 67]);
        // Strictly cyclic order.
        let seq: Vec<_> = (0..6).map(|_| lb.choose(&hosts, &LbContext::default()).unwrap().address).collect();
        assert_eq!(seq[0..3], seq[3..6]);
        assert_ne!(seq[0], seq[1]);
    }

    #[test]
    fn weighted_is_proportional_and_interleaved() {
        let hosts = weighted(&[1, 2, 5]);
        let lb = RoundRobinFactory::default().build(&hosts);
        let m = count(lb.as_ref(), &hosts, 800, |_| LbContext::default());
        assert_eq!(m[&hosts.hosts[0].address], 100);
        assert_eq!(m[&hosts.hosts[1].address], 200);
        assert_eq!(m[&hosts.hosts[2].address], 500);
        // Huge weights are scaled, still proportional within 1%.
        let hosts = weighted(&[1_000_000, 3_000_000]);
        let lb = RoundRobinFactory::default().build(&hosts);
        let m = count(lb.as_ref(), &hosts, 40_000, |_| LbContext::default());
        let a = m[&hosts.hosts[0].address] as f64;
        assert!((a / 40_000.0 - 0.25).abs() < 0.01, "{a}");
    }

    #[test]
    fn cursor_survives_rebuilds_and_empty_set_gives_none() {
        let f = RoundRobinFactory::default();
        let empty = HostSet::default();
        assert!(f.build(&empty).choose(&empty, &LbContext::default()).is_none());
        let hosts = hosts(2);
        let a = f.build(&hosts).choose(&hosts, &LbContext::default()).unwrap();
        let b = f.build(&hosts).choose(&hosts, &LbContext::default()).unwrap();
        assert_ne!(a.address, b.address);
    }
}
