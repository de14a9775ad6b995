//! MAGLEV: a lookup table (default 65537 entries, must be prime) filled from per-host
//! permutations: offset = xxh64(address, seed 0) % M, skip = xxh64(address, seed 1) % (M-1) + 1,
//! weighted as Envoy does (a host of weight w/max fills a slot every max/w rounds). A request
//! hash picks `table[hash % M]`. Without a hash the pick is random.

use std::sync::Arc;

use super::{random_below, LbFactory, LoadBalancer};
use crate::upstream::host::{Host, HostSet};
use crate::upstream::LbContext;

pub const DEFAULT_TABLE_SIZE: u64 = 65537;

pub struct MaglevFactory {
    size: u64,
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2;
    while i * i <= n {
        if n.is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}

impl MaglevFactory {
    pub fn new(size: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(is_prime(size), "maglev_lb_config.table_size {size} is not a prime number");
        anyhow::ensure!(size <= 5_000_011, "maglev_lb_config.table_size {size} is too large");
        Ok(MaglevFactory { size })
    }
}

struct Maglev {
    table: Vec<u32>,
}

impl LbFactory for MaglevFactory {
    fn build(&self, hosts: &HostSet) -> Box<dyn LoadBalancer> {
        let m = self.size;
        if hosts.is_empty() {
            return Box::new(Maglev { table: Vec::new() });
        }
        struct Entry {
            offset: u64,
            skip: u64,
            weight: f64,
            target: f64,
            next: u64,
        }
        let max_w = hosts.hosts.iter().map(|h| h.weight).max().unwrap_or(1) as f64;
        let mut entries: Vec<Entry> = hosts
            .hosts
            .iter()
            .map(|h| {
                let key = h.address.to_string();
                Entry {
                    offset: xxhash_rust::xxh64::xxh64(key.as_bytes(), 0) % m,
                    skip: xxhash_rust::xxh64::xxh64(key.as_bytes(), 1) % (m - 1) + 1,
                    weight: h.weight as f64 / max_w,
                    target: 0.0,
                    next: 0,
                }
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < m {
            for (i, e) in entries.iter_mut().enumerate() {
                if filled >= m {
                    break;
                }
                if (iteration as f64) * e.weight < e.target {
                    continue;
                }
                e.target += 1.0;
                let mut c = (e.offset + e.skip * e.next) % m;
                while table[c as usize] != EMPTY {
                    e.next += 1;
                    c = (e.offset + e.skip * e.next) % m;
                }
                table[c as usize] = i as u32;
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Box::new(Maglev { table })
    }
}

impl LoadBalancer for Maglev {
    fn choose(&self, hosts: &HostSet, ctx: &LbContext) -> Option<Arc<Host>> {
        if hosts.is_empty() || self.table.is_empty() {
            return None;
        }
        let Some(h) = ctx.hash else {
            return hosts.hosts.get(random_below(hosts.len())).cloned();
        };
        hosts.hosts.get(self.table[(h % self.table.len() as u64) as usize] as usize).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::load_balancer::hash::hash_key;
    use crate::upstream::load_balancer::test_util::*;

    fn key_ctx(i: usize) -> LbContext {
        LbContext { hash: Some(hash_key(format!("user-{i}").as_bytes())), ..Default::default() }
    }

    #[test]
    fn same_key_same_host_and_even_spread() {
        let hosts = hosts(4);
        let f = MaglevFactory::new(DEFAULT_TABLE_SIZE).unwrap();
        let lb = f.build(&hosts);
        let other = f.build(&hosts);
        for i in 0..200 {
            assert_eq!(lb.choose(&hosts, &key_ctx(i)).unwrap().address, other.choose(&hosts, &key_ctx(i)).unwrap().address);
        }
        let m = count(lb.as_ref(), &hosts, 10_000, key_ctx);
        for h in &hosts.hosts {
            let c = m.get(&h.address).copied().unwrap_or(0) as f64;
            assert!((c / 2500.0 - 1.0).abs() <= 0.10, "host {} got {c}", h.address);
        }
    }

    #[test]
    fn removing_one_of_four_remaps_few_keys() {
        let hosts4 = hosts(4);
        let hosts3 = HostSet::new(hosts4.hosts[..3].to_vec());
        let f = MaglevFactory::new(DEFAULT_TABLE_SIZE).unwrap();
        let (lb4, lb3) = (f.build(&hosts4), f.build(&hosts3));
        let moved = (0..10_000)
            .filter(|i| lb4.choose(&hosts4, &key_ctx(*i)).unwrap().address != lb3.choose(&hosts3, &key_ctx(*i)).unwrap().address)
            .count();
        assert!(moved <= 3500, "{moved} keys moved");
    }

    #[test]
    fn weights_and_prime_check() {
        let hosts = weighted(&[1, 3]);
        let lb = MaglevFactory::new(DEFAULT_TABLE_SIZE).unwrap().build(&hosts);
        let m = count(lb.as_ref(), &hosts, 10_000, key_ctx);
        let heavy = m[&hosts.hosts[1].address] as f64 / 10_000.0;
        assert!((heavy - 0.75).abs() < 0.05, "{heavy}");
        assert!(MaglevFactory::new(65536).is_err());
        assert!(lb.choose(&hosts, &LbContext::default()).is_some());
    }
}
