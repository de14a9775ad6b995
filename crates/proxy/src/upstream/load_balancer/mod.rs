//! Load balancers behind one trait. A [`LbFactory`] is made once per cluster from its config;
//! every time the host set changes the cluster calls [`LbFactory::build`] with the routable hosts
//! and swaps the new balancer in together with the snapshot, so [`LoadBalancer::choose`] only
//! reads prebuilt state (rings, tables, schedules) plus atomics. Seeds are fixed: every sluice
//! instance maps a hash key to the same host for the same host set.

pub mod hash;
mod least_request;
mod maglev;
mod random;
mod ring_hash;
mod round_robin;

use std::sync::Arc;

use sluice_config::cluster::{LbPolicy, LeastRequestLbConfig, MaglevLbConfig, RingHashFunction, RingHashLbConfig, RoundRobinLbConfig};

use crate::config_audit::refused_at_load;

use super::host::{Host, HostSet};
use super::LbContext;

pub use least_request::LeastRequestFactory;
pub use maglev::{MaglevFactory, DEFAULT_TABLE_SIZE};
pub use random::RandomFactory;
pub use ring_hash::RingHashFactory;
pub use round_robin::RoundRobinFactory;

/// Chooses a host among the hosts it was built for.
pub trait LoadBalancer: Send + Sync {
    /// `hosts` is the set this balancer was built from.
    fn choose(&self, hosts: &HostSet, ctx: &LbContext) -> Option<Arc<Host>>;
}

/// Builds a [`LoadBalancer`] for a host set; keeps what must survive rebuilds (the RR cursor).
pub trait LbFactory: Send + Sync {
    fn build(&self, hosts: &HostSet) -> Box<dyn LoadBalancer>;
}

/// The factory for a cluster's `lb_policy`, with its policy's config.
pub fn factory(
    cluster: &str,
    lb_policy: LbPolicy,
    least_request: Option<&LeastRequestLbConfig>,
    ring_hash: Option<&RingHashLbConfig>,
    maglev: Option<&MaglevLbConfig>,
    round_robin: Option<&RoundRobinLbConfig>,
) -> anyhow::Result<Box<dyn LbFactory>> {
    // Each policy reads its own config; the others' configs are unused by Envoy too.
    let least_request_choices = match least_request {
        Some(LeastRequestLbConfig { choice_count, active_request_bias, slow_start_config }) => {
            refused_at_load(active_request_bias);
            refused_at_load(slow_start_config);
            choice_count.unwrap_or(2)
        }
        None => 2,
    };
    let ring = match ring_hash {
        Some(RingHashLbConfig { minimum_ring_size, maximum_ring_size, hash_function }) => {
            // The validator refuses MURMUR_HASH_2; xxHash is Envoy's default.
            anyhow::ensure!(
                matches!(hash_function, None | Some(RingHashFunction::XxHash)),
                "cluster '{cluster}': ring_hash_lb_config.hash_function MURMUR_HASH_2 is not supported by sluice"
            );
            (*minimum_ring_size, *maximum_ring_size)
        }
        None => (None, None),
    };
    let table_size = match maglev {
        Some(MaglevLbConfig { table_size }) => table_size.unwrap_or(DEFAULT_TABLE_SIZE),
        None => DEFAULT_TABLE_SIZE,
    };
    if let Some(RoundRobinLbConfig { slow_start_config }) = round_robin {
        refused_at_load(slow_start_config);
    }
    Ok(match lb_policy {
        LbPolicy::RoundRobin => Box::new(RoundRobinFactory::default()),
        LbPolicy::LeastRequest => Box::new(LeastRequestFactory::new(least_request_choices)),
        LbPolicy::Random => Box::new(RandomFactory),
        LbPolicy::RingHash => Box::new(RingHashFactory::new(ring.0, ring.1)?),
        LbPolicy::Maglev => Box::new(MaglevFactory::new(table_size)?),
        other => anyhow::bail!("cluster '{cluster}': lb_policy {other:?} is not supported"),
    })
}

/// A uniformly random index below `n` (> 0).
pub(crate) fn random_below(n: usize) -> usize {
    use rand::Rng;
    rand::rng().random_range(0..n)
}

/// Cumulative weights, for weighted random picks.
pub(crate) fn prefix_weights(hosts: &HostSet) -> Vec<u64> {
    let mut acc = 0u64;
    hosts
        .hosts
        .iter()
        .map(|h| {
            acc += h.weight as u64;
            acc
        })
        .collect()
}

/// A weighted random index using cumulative weights.
pub(crate) fn weighted_random(prefix: &[u64]) -> usize {
    use rand::Rng;
    let total = *prefix.last().expect("non-empty");
    let x = rand::rng().random_range(0..total);
    prefix.partition_point(|p| *p <= x)
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    pub fn hosts(n: usize) -> HostSet {
        weighted(&vec![1; n])
    }

    pub fn weighted(weights: &[u32]) -> HostSet {
        HostSet::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let addr: SocketAddr = format!("127.0.0.{}:8080", i + 1).parse().unwrap();
                    Arc::new(Host::new(addr, "", *w, Default::default(), Default::default()))
                })
                .collect(),
        )
    }

    /// Pick `n` times, count per host address.
    pub fn count(lb: &dyn LoadBalancer, hosts: &HostSet, n: usize, ctx: impl Fn(usize) -> LbContext) -> HashMap<SocketAddr, usize> {
        let mut m = HashMap::new();
        for i in 0..n {
            let h = lb.choose(hosts, &ctx(i)).expect("a host");
            *m.entry(h.address).or_default() += 1;
        }
        m
    }
}
