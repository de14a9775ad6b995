//! RANDOM: uniform, or weighted by `load_balancing_weight`.

use std::sync::Arc;

use super::{prefix_weights, random_below, weighted_random, LbFactory, LoadBalancer};
use crate::upstream::host::{Host, HostSet};
use crate::upstream::LbContext;

pub struct RandomFactory;

struct Random {
    prefix: Option<Vec<u64>>,
}

impl LbFactory for RandomFactory {
    fn build(&self, hosts: &HostSet) -> Box<dyn LoadBalancer> {
        Box::new(Random { prefix: (!hosts.equal_weights()).then(|| prefix_weights(hosts)) })
    }
}

impl LoadBalancer for Random {
    fn choose(&self, hosts: &HostSet, _ctx: &LbContext) -> Option<Arc<Host>> {
        if hosts.is_empty() {
            return None;
        }
        let i = match &self.prefix {
            Some(p) => weighted_random(p),
            None => random_below(hosts.len()),
        };
        hosts.hosts.get(i).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::load_balancer::test_util::*;

    #[test]
    fn spreads_uniformly_and_by_weight() {
        let hosts = hosts(4);
        let lb = RandomFactory.build(&hosts);
        let m = count(lb.as_ref(), &hosts, 20_000, |_| LbContext::default());
        for h in &hosts.hosts {
            let c = m[&h.address] as f64;
            assert!((c / 5000.0 - 1.0).abs() < 0.1, "{c}");
        }
        let hosts = weighted(&[1, 3]);
        let lb = RandomFactory.build(&hosts);
        let m = count(lb.as_ref(), &hosts, 20_000, |_| LbContext::default());
        let a = m[&hosts.hosts[0].address] as f64;
        assert!((a / 20_000.0 - 0.25).abs() < 0.03, "{a}");
    }
}
