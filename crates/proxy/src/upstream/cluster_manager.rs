//! The cluster manager: builds every cluster of the bootstrap, runs their discovery tasks, and
//! tracks warming (every cluster's first discovery answer or failure).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use sluice_config::cluster::DiscoveryType;

use super::cluster::Cluster;
use super::discovery;
use crate::stats::Store;

pub struct ClusterManager {
    clusters: Vec<Arc<Cluster>>,
    index: HashMap<String, usize>,
    warming: Arc<Warming>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Warming {
    remaining: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl std::fmt::Debug for ClusterManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterManager").field("clusters", &self.index.keys().collect::<Vec<_>>()).finish()
    }
}

impl ClusterManager {
    /// Build every cluster of the bootstrap; must run inside a tokio runtime: spawns the
    /// per-cluster discovery tasks.
    pub fn new(bootstrap: &sluice_config::Bootstrap, stats: &Store) -> anyhow::Result<Arc<ClusterManager>> {
        let cfgs = &bootstrap.static_resources.clusters;
        let active = stats.gauge("cluster_manager.active_clusters");
        let added = stats.counter("cluster_manager.cluster_added");
        for n in ["cluster_modified", "cluster_removed", "cluster_updated", "cluster_updated_via_merge", "update_merge_cancelled", "update_out_of_merge_window"] {
            stats.counter(format!("cluster_manager.{n}"));
        }
        let warming_gauge = stats.gauge("cluster_manager.warming_clusters");
        let mut clusters = Vec::new();
        let mut index = HashMap::new();
        let mut dns = Vec::new();
        let mut default_resolver = None;
        for cfg in cfgs {
            anyhow::ensure!(!index.contains_key(&cfg.name), "cluster manager: duplicate cluster '{}'", cfg.name);
            let (hosts, is_dns) = match cfg.type_ {
                DiscoveryType::Static => (discovery::static_hosts(cfg)?, false),
                DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
                    discovery::endpoints(cfg)?;
                    if cfg.type_ == DiscoveryType::LogicalDns {
                        anyhow::ensure!(
                            discovery::endpoints(cfg)?.len() == 1,
                            "cluster '{}': LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
                            cfg.name
                        );
                    }
                    (Vec::new(), true)
                }
                other => anyhow::bail!("cluster '{}': discovery type {other:?} is not supported", cfg.name),
            };
            let cluster = Arc::new(Cluster::new(cfg, stats, hosts).with_context(|| format!("cluster '{}'", cfg.name))?);
            if is_dns {
                let tcp = cfg.use_tcp_for_dns_lookups.unwrap_or(false);
                let resolver = match (cfg.typed_dns_resolver_config.as_ref(), tcp) {
                    (Some(t), _) => discovery::build_resolver(Some(&t.typed_config), tcp),
                    (None, true) => discovery::build_resolver(bootstrap.typed_dns_resolver_config.as_ref().map(|t| &t.typed_config), true),
                    (None, false) => match &default_resolver {
                        Some(r) => Ok(Clone::clone(r)),
                        None => discovery::build_resolver(bootstrap.typed_dns_resolver_config.as_ref().map(|t| &t.typed_config), false)
                            .inspect(|r| default_resolver = Some(r.clone())),
                    },
                }
                .with_context(|| format!("cluster '{}': DNS resolver", cfg.name))?;
                dns.push((cluster.clone(), resolver));
            }
            index.insert(cfg.name.clone(), clusters.len());
            clusters.push(cluster);
            added.inc();
        }
        active.set(clusters.len() as i64);
        let warming = Arc::new(Warming { remaining: AtomicUsize::new(dns.len()), notify: tokio::sync::Notify::new() });
        warming_gauge.set(dns.len() as i64);
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for (cluster, resolver) in dns {
            let w = warming.clone();
            let g = warming_gauge.clone();
            let done: Box<dyn FnOnce() + Send> = Box::new(move || {
                g.dec();
                if w.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    w.notify.notify_waiters();
                }
            });
            tasks.push(tokio::spawn(discovery::dns_loop(cluster, resolver, Some(done), rx.clone())));
        }
        Ok(Arc::new(ClusterManager { clusters, index, warming, shutdown, tasks: Mutex::new(tasks) }))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.index.get(name).map(|i| &self.clusters[*i])
    }

    /// Clusters in config order.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.iter()
    }

    /// Resolves once every cluster has had its first discovery answer or failure.
    pub async fn initialized(&self) {
        loop {
            let n = self.warming.notify.notified();
            if self.is_initialized() {
                return;
            }
            n.await;
        }
    }

    pub fn is_initialized(&self) -> bool {
        self.warming.remaining.load(Ordering::Acquire) == 0
    }

    /// Stop the discovery tasks.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

impl Drop for ClusterManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}
