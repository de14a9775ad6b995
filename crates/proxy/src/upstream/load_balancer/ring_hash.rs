//! RING_HASH (Ketama-style consistent hashing, as Envoy builds it): each host gets a number of
//! ring entries proportional to its weight, hashed with xxHash64 (seed 0) of
//! `"<ip:port>_<i>"`; the ring has at least `minimum_ring_size` (1024) and at most
//! `maximum_ring_size` (8 M) entries. A request hash picks the first entry at or after it
//! (wrapping). Without a hash the pick is random.

use std::sync::Arc;

use super::hash::hash_key;
use super::{random_below, LbFactory, LoadBalancer};
use crate::upstream::host::{Host, HostSet};
use crate::upstream::LbContext;

pub const DEFAULT_MIN_RING: u64 = 1024;
pub const DEFAULT_MAX_RING: u64 = 8 * 1024 * 1024;

pub struct RingHashFactory {
    min: u64,
    max: u64,
}

impl RingHashFactory {
    pub fn new(min: Option<u64>, max: Option<u64>) -> anyhow::Result<Self> {
        let min = min.unwrap_or(DEFAULT_MIN_RING);
        let max = max.unwrap_or(DEFAULT_MAX_RING);
        anyhow::ensure!(min <= max, "ring_hash_lb_config: minimum_ring_size {min} > maximum_ring_size {max}");
        anyhow::ensure!(max <= DEFAULT_MAX_RING, "ring_hash_lb_config: maximum_ring_size {max} > 8M");
        Ok(RingHashFactory { min: min.max(1), max })
    }
}

struct RingHash {
    /// Sorted by hash: (hash, host index).
    ring: Vec<(u64, u32)>,
}

impl LbFactory for RingHashFactory {
    fn build(&self, hosts: &HostSet) -> Box<dyn LoadBalancer> {
        let mut ring = Vec::new();
        if !hosts.is_empty() {
            let total: f64 = hosts.hosts.iter().map(|h| h.weight as f64).sum();
            let min_norm = hosts.hosts.iter().map(|h| h.weight as f64 / total).fold(f64::INFINITY, f64::min);
            let scale = ((min_norm * self.min as f64).ceil() / min_norm).min(self.max as f64);
            ring.reserve(scale as usize);
            let mut current = 0.0f64;
            let mut target = 0.0f64;
            for (idx, h) in hosts.hosts.iter().enumerate() {
                target += scale * (h.weight as f64 / total);
                let mut i = 0u64;
                let prefix = format!("{}_", h.address);
                while current < target {
                    let key = format!("{prefix}{i}");
                    ring.push((hash_key(key.as_bytes()), idx as u32));
                    i += 1;
                    current += 1.0;
                }
            }
            ring.sort_unstable();
        }
        Box::new(RingHash { ring })
    }
}

impl LoadBalancer for RingHash {
    fn choose(&self, hosts: &HostSet, ctx: &LbContext) -> Option<Arc<Host>> {
        if hosts.is_empty() || self.ring.is_empty() {
            return None;
        }
        let Some(h) = ctx.hash else {
            return hosts.hosts.get(random_below(hosts.len())).cloned();
        };
        let mut i = self.ring.partition_point(|(e, _)| *e < h);
        if i == self.ring.len() {
            i = 0;
        }
        hosts.hosts.get(self.ring[i].1 as usize).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::load_balancer::test_util::*;

    fn key_ctx(i: usize) -> LbContext {
        LbContext { hash: Some(hash_key(format!("user-{i}").as_bytes())), ..Default::default() }
    }

    #[test]
    fn same_key_same_host_and_even_spread() {
        let hosts = hosts(4);
        let f = RingHashFactory::new(None, None).unwrap();
        let lb = f.build(&hosts);
        for i in 0..100 {
            let a = lb.choose(&hosts, &key_ctx(i)).unwrap().address;
            // A second, independently built ring (another proxy instance) agrees.
            let b = f.build(&hosts).choose(&hosts, &key_ctx(i)).unwrap().address;
            assert_eq!(a, b);
            assert_eq!(a, lb.choose(&hosts, &key_ctx(i)).unwrap().address);
        }
        let m = count(lb.as_ref(), &hosts, 10_000, key_ctx);
        for h in &hosts.hosts {
            let c = m.get(&h.address).copied().unwrap_or(0) as f64;
            assert!((c / 2500.0 - 1.0).abs() <= 0.10, "host {} got {c} of 10000", h.address);
        }
    }

    #[test]
    fn removing_one_of_four_remaps_few_keys() {
        let hosts4 = hosts(4);
        let hosts3 = HostSet::new(hosts4.hosts[..3].to_vec());
        let f = RingHashFactory::new(None, None).unwrap();
        let (lb4, lb3) = (f.build(&hosts4), f.build(&hosts3));
        let moved = (0..10_000)
            .filter(|i| lb4.choose(&hosts4, &key_ctx(*i)).unwrap().address != lb3.choose(&hosts3, &key_ctx(*i)).unwrap().address)
            .count();
        assert!(moved <= 3500, "{moved} keys moved");
        // Keys of the kept hosts mostly stay (the ring grows from 256 to 342 entries per host,
        // ~12% move, as with Envoy).
        let kept: Vec<usize> =
            (0..10_000).filter(|i| lb4.choose(&hosts4, &key_ctx(*i)).unwrap().address != hosts4.hosts[3].address).collect();
        let moved_kept = kept
            .iter()
            .filter(|i| lb4.choose(&hosts4, &key_ctx(**i)).unwrap().address != lb3.choose(&hosts3, &key_ctx(**i)).unwrap().address)
            .count();
        assert!(moved_kept * 5 < kept.len(), "{moved_kept} of {} kept keys moved", kept.len());
    }

    #[test]
    fn weights_and_ring_size() {
        let hosts = weighted(&[1, 3]);
        let f = RingHashFactory::new(Some(4096), None).unwrap();
        let lb = f.build(&hosts);
        let m = count(lb.as_ref(), &hosts, 10_000, key_ctx);
        let heavy = m[&hosts.hosts[1].address] as f64 / 10_000.0;
        assert!((heavy - 0.75).abs() < 0.07, "{heavy}");
        assert!(RingHashFactory::new(Some(10), Some(5)).is_err());
        // No hash → random, still some host.
        assert!(lb.choose(&hosts, &LbContext::default()).is_some());
    }
}
