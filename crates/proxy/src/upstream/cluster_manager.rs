//! The cluster manager: builds every cluster of the bootstrap, runs their discovery tasks, and
//! tracks warming (every cluster's first discovery answer or failure).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use super::cluster::{Cluster, Discovery};
use super::{discovery, health_check, outlier};
use crate::stats::Store;

pub struct ClusterManager {
    clusters: Vec<Arc<Cluster>>,
    index: HashMap<String, usize>,
    warming: Arc<Warming>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// `node.cluster` (Envoy's local service cluster name).
    local_cluster_name: String,
    /// `/healthcheck/fail` is in effect (what the health-check HTTP filter answers).
    healthcheck_failed: AtomicBool,
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
        let settings = crate::bootstrap::settings(bootstrap);
        let cfgs = settings.clusters;
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
            let cluster = Arc::new(Cluster::new(cfg, stats, Vec::new()).with_context(|| format!("cluster '{}'", cfg.name))?);
            if let Discovery::Dns(dns_settings) = cluster.discovery() {
                let tcp = dns_settings.use_tcp;
                let resolver = match (dns_settings.resolver.as_ref(), tcp) {
                    (Some(r), _) => discovery::build_resolver(Some(r), tcp),
                    (None, true) => discovery::build_resolver(settings.dns_resolver, true),
                    (None, false) => match &default_resolver {
                        Some(r) => Ok(Clone::clone(r)),
                        None => discovery::build_resolver(settings.dns_resolver, false)
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
        // Warming: every DNS cluster's first answer, then (Envoy's rule) the first check of each
        // host of every cluster with active health checking.
        let checked: Vec<&Arc<Cluster>> = clusters.iter().filter(|c| c.health_checker().is_some()).collect();
        let warming =
            Arc::new(Warming { remaining: AtomicUsize::new(dns.len() + checked.len()), notify: tokio::sync::Notify::new() });
        warming_gauge.set(dns.len() as i64);
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        let step = |w: &Arc<Warming>| {
            let w = w.clone();
            move || {
                if w.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    w.notify.notify_waiters();
                }
            }
        };
        let mut discovered = HashMap::new();
        for c in clusters.iter().filter(|c| matches!(c.discovery(), Discovery::Static) && c.health_checker().is_none()) {
            c.mark_live();
        }
        for (cluster, resolver) in dns {
            let g = warming_gauge.clone();
            let warmed = step(&warming);
            let (tx, rx_discovered) = tokio::sync::oneshot::channel::<()>();
            discovered.insert(Arc::as_ptr(&cluster), rx_discovered);
            let c = (cluster.health_checker().is_none()).then(|| cluster.clone());
            let done: Box<dyn FnOnce() + Send> = Box::new(move || {
                g.dec();
                let _ = tx.send(());
                if let Some(c) = c {
                    c.mark_live();
                }
                warmed();
            });
            tasks.push(tokio::spawn(discovery::dns_loop(cluster, resolver, Some(done), rx.clone())));
        }
        for c in checked {
            let step = step(&warming);
            let live = c.clone();
            let warmed: Box<dyn FnOnce() + Send> = Box::new(move || {
                live.mark_live();
                step();
            });
            let first = discovered.remove(&Arc::as_ptr(c));
            tasks.push(tokio::spawn(health_check::run(c.clone(), first, Some(warmed), rx.clone())));
        }
        for c in clusters.iter().filter(|c| c.detector().is_some()) {
            tasks.push(tokio::spawn(outlier::run(c.clone(), rx.clone())));
        }
        let local_cluster_name = settings.local_cluster.to_string();
        Ok(Arc::new(ClusterManager {
            clusters,
            index,
            warming,
            shutdown,
            tasks: Mutex::new(tasks),
            local_cluster_name,
            healthcheck_failed: AtomicBool::new(false),
        }))
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

    /// `node.cluster`: what the health-check filter puts in `x-envoy-upstream-healthchecked-cluster`.
    pub fn local_cluster_name(&self) -> &str {
        &self.local_cluster_name
    }

    /// Whether `/healthcheck/fail` is in effect.
    pub fn healthcheck_failed(&self) -> bool {
        self.healthcheck_failed.load(Ordering::Acquire)
    }

    /// `/healthcheck/fail` (true) and `/healthcheck/ok` (false).
    pub fn set_healthcheck_failed(&self, failed: bool) {
        self.healthcheck_failed.store(failed, Ordering::Release);
    }

    /// Stop the discovery, health-checking and outlier-detection tasks.
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
