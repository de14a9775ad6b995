//! LEAST_REQUEST: with equal weights, the host with the fewest active requests among
//! `choice_count` (default 2) random picks ("power of two choices"); with different weights,
//! `choice_count` weighted random picks compared by `weight / (active + 1)` (Envoy's
//! `active_request_bias` 1.0).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{prefix_weights, random_below, weighted_random, LbFactory, LoadBalancer};
use crate::upstream::host::{Host, HostSet};
use crate::upstream::LbContext;

pub struct LeastRequestFactory {
    choice_count: u32,
}

impl LeastRequestFactory {
    pub fn new(choice_count: u32) -> Self {
        LeastRequestFactory { choice_count: choice_count.max(1) }
    }
}

struct LeastRequest {
    choice_count: u32,
    prefix: Option<Vec<u64>>,
}

impl LbFactory for LeastRequestFactory {
    fn build(&self, hosts: &HostSet) -> Box<dyn LoadBalancer> {
        Box::new(LeastRequest {
            choice_count: self.choice_count,
            prefix: (!hosts.equal_weights()).then(|| prefix_weights(hosts)),
        })
    }
}

impl LoadBalancer for LeastRequest {
    fn choose(&self, hosts: &HostSet, _ctx: &LbContext) -> Option<Arc<Host>> {
        let n = hosts.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return hosts.hosts.first().cloned();
        }
        let active = |i: usize| hosts.hosts[i].stats.rq_active.load(Ordering::Relaxed);
        let mut best: Option<usize> = None;
        for _ in 0..self.choice_count {
            let c = match &self.prefix {
                Some(p) => weighted_random(p),
                None => random_below(n),
            };
            best = Some(match best {
                None => c,
                Some(b) => {
                    let better = match &self.prefix {
                        None => active(c) < active(b),
                        Some(_) => {
                            let score = |i: usize| hosts.hosts[i].weight as f64 / (active(i) as f64 + 1.0);
                            score(c) > score(b)
                        }
                    };
                    if better {
                        c
                    } else {
                        b
                    }
                }
            });
        }
        best.and_then(|i| hosts.hosts.get(i).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::load_balancer::test_util::*;

    #[test]
    fn prefers_the_idle_host() {
        let hosts = hosts(2);
        hosts.hosts[0].stats.rq_active.store(50, Ordering::Relaxed);
        let lb = LeastRequestFactory::new(2).build(&hosts);
        let m = count(lb.as_ref(), &hosts, 1000, |_| LbContext::default());
        // The busy host only wins when both choices land on it (~25%).
        let busy = m.get(&hosts.hosts[0].address).copied().unwrap_or(0);
        assert!(busy < 350, "busy host got {busy}");
        // With many choices the idle host is (almost) always chosen.
        let lb = LeastRequestFactory::new(10).build(&hosts);
        let m = count(lb.as_ref(), &hosts, 1000, |_| LbContext::default());
        assert!(m.get(&hosts.hosts[0].address).copied().unwrap_or(0) < 10);
    }

    #[test]
    fn idle_hosts_share_evenly() {
        let hosts = hosts(3);
        let lb = LeastRequestFactory::new(2).build(&hosts);
        let m = count(lb.as_ref(), &hosts, 9000, |_| LbContext::default());
        for h in &hosts.hosts {
            assert!((m[&h.address] as f64 / 3000.0 - 1.0).abs() < 0.1);
        }
    }

    #[test]
    fn weighted_prefers_heavier_host() {
        let hosts = weighted(&[1, 4]);
        let lb = LeastRequestFactory::new(2).build(&hosts);
        let m = count(lb.as_ref(), &hosts, 5000, |_| LbContext::default());
        assert!(m[&hosts.hosts[1].address] > 3500);
    }
}
