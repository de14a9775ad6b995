//! Service discovery: STATIC hosts, and STRICT_DNS / LOGICAL_DNS refresh tasks on hickory.
//!
//! One background task per DNS cluster: resolve every endpoint name (per `dns_lookup_family`),
//! build the new host list keeping the existing `Arc<Host>` of every (name, address) still
//! present, swap it into the cluster, sleep (`dns_refresh_rate`, the record TTL with
//! `respect_dns_ttl`, or the failure backoff), repeat. A failed lookup (timeout, SERVFAIL,
//! unreachable resolver) keeps that endpoint's last good addresses; an authoritative empty answer
//! (NXDOMAIN/NODATA) empties it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use sluice_config::bootstrap::{CaresDnsResolverConfig, DnsResolverConfig};
use sluice_config::cluster::{Cluster as ClusterConfig, DiscoveryType, DnsLookupFamily, HealthStatus};
use sluice_config::core::Locality;

use super::cluster::Cluster;
use super::host::Host;

/// One endpoint of a cluster's load assignment.
#[derive(Debug, Clone)]
pub(crate) struct EndpointSpec {
    pub name: String,
    pub port: u16,
    pub weight: u32,
    pub locality: Locality,
    pub health: HealthStatus,
    /// Configured `endpoint.hostname` (STATIC).
    pub hostname: Option<String>,
}

pub(crate) fn endpoints(cfg: &ClusterConfig) -> anyhow::Result<Vec<EndpointSpec>> {
    let mut out = Vec::new();
    let Some(la) = &cfg.load_assignment else { return Ok(out) };
    for (li, l) in la.endpoints.iter().enumerate() {
        anyhow::ensure!(l.priority == 0, "cluster '{}': only priority 0 is supported", cfg.name);
        for (ei, e) in l.lb_endpoints.iter().enumerate() {
            let Some(ep) = &e.endpoint else { continue };
            let sa = ep.address.socket_address.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "cluster '{}': load_assignment.endpoints[{li}].lb_endpoints[{ei}]: only socket_address is supported",
                    cfg.name
                )
            })?;
            let port = u16::try_from(sa.port_value)
                .map_err(|_| anyhow::anyhow!("cluster '{}': invalid port {}", cfg.name, sa.port_value))?;
            out.push(EndpointSpec {
                name: sa.address.trim_start_matches('[').trim_end_matches(']').to_string(),
                port,
                weight: e.weight(),
                locality: l.locality.clone().unwrap_or_default(),
                health: e.health_status,
                hostname: ep.hostname.clone(),
            });
        }
    }
    Ok(out)
}

/// STATIC hosts: every endpoint must be an IP literal.
pub(crate) fn static_hosts(cfg: &ClusterConfig) -> anyhow::Result<Vec<Arc<Host>>> {
    endpoints(cfg)?
        .into_iter()
        .map(|e| {
            let ip: IpAddr = e.name.parse().map_err(|_| {
                anyhow::anyhow!("cluster '{}': STATIC endpoint address '{}' is not an IP address", cfg.name, e.name)
            })?;
            Ok(Arc::new(Host::new(SocketAddr::new(ip, e.port), e.hostname.clone().unwrap_or_default(), e.weight, e.locality, e.health)))
        })
        .collect()
}

/// The resolver for the bootstrap's (or the cluster's) `typed_dns_resolver_config`, else the
/// system's `/etc/resolv.conf` (read by hickory, never libc).
pub(crate) fn build_resolver(cfg: Option<&DnsResolverConfig>, cluster_tcp: bool) -> anyhow::Result<TokioResolver> {
    let provider = TokioRuntimeProvider::default();
    let mut opts = ResolverOpts::default();
    let system = || -> anyhow::Result<(ResolverConfig, ResolverOpts)> {
        hickory_resolver::system_conf::read_system_conf().map_err(|e| anyhow::anyhow!("reading /etc/resolv.conf: {e}"))
    };
    let (config, base_opts) = match cfg {
        Some(DnsResolverConfig::Cares(c)) if !c.resolvers.is_empty() => {
            let custom = cares_config(c, cluster_tcp)?;
            if c.use_resolvers_as_fallback {
                match system() {
                    Ok((sys, o)) if !sys.name_servers().is_empty() => (sys, o),
                    _ => (custom, ResolverOpts::default()),
                }
            } else {
                (custom, ResolverOpts::default())
            }
        }
        _ => system()?,
    };
    opts.ndots = base_opts.ndots;
    if let Some(DnsResolverConfig::Cares(c)) = cfg {
        opts.timeout = Duration::from_secs(c.query_timeout_seconds.unwrap_or(5).max(1));
        opts.attempts = c.query_tries.unwrap_or(4).max(1) as usize;
    } else {
        opts.timeout = base_opts.timeout;
        opts.attempts = base_opts.attempts;
    }
    // Every refresh asks the wire (as Envoy does); TTLs are read from the answers.
    opts.cache_size = 0;
    let mut b = TokioResolver::builder_with_config(config, provider);
    *b.options_mut() = opts;
    Ok(b.build()?)
}

fn cares_config(c: &CaresDnsResolverConfig, cluster_tcp: bool) -> anyhow::Result<ResolverConfig> {
    let tcp = cluster_tcp || c.dns_resolver_options.as_ref().is_some_and(|o| o.use_tcp_for_dns_lookups);
    let mut servers = Vec::new();
    for a in &c.resolvers {
        let sa = a
            .socket_address
            .as_ref()
            .and_then(|s| s.to_socket_addr())
            .ok_or_else(|| anyhow::anyhow!("typed_dns_resolver_config: resolvers need an IP socket_address"))?;
        let port = if sa.port() == 0 { 53 } else { sa.port() };
        let mut conns = Vec::new();
        if !tcp {
            let mut u = ConnectionConfig::udp();
            u.port = port;
            conns.push(u);
        }
        let mut t = ConnectionConfig::tcp();
        t.port = port;
        conns.push(t);
        servers.push(NameServerConfig::new(sa.ip(), true, conns));
    }
    Ok(ResolverConfig::from_parts(None, vec![], servers))
}

/// The answer for one name: addresses (possibly none) and the smallest TTL.
#[derive(Debug)]
pub(crate) struct Answer {
    pub addrs: Vec<IpAddr>,
    pub ttl: Option<Duration>,
}

async fn query(resolver: &TokioResolver, name: &str, rt: RecordType) -> Result<Answer, String> {
    // Parse as plain ASCII: a `&str` goes through IDNA, whose STD3 rules reject `_`, which
    // real service names use (`ext_authz-opa-service` in the guide).
    let name = Name::from_ascii(name).map_err(|e| format!("invalid DNS name \"{name}\": {e}"))?;
    match resolver.lookup(name, rt).await {
        Ok(l) => {
            let mut addrs = Vec::new();
            let mut ttl: Option<u32> = None;
            for r in l.answers() {
                let ip = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
                ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
            }
            Ok(Answer { addrs, ttl: ttl.map(|t| Duration::from_secs(t as u64)) })
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(nr)))
            if matches!(nr.response_code, ResponseCode::NXDomain | ResponseCode::NoError) =>
        {
            Ok(Answer { addrs: Vec::new(), ttl: None })
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Resolve `name` per the lookup family. IP literals need no lookup.
pub(crate) async fn resolve(resolver: &TokioResolver, name: &str, family: DnsLookupFamily) -> Result<Answer, String> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(Answer { addrs: vec![ip], ttl: None });
    }
    let (first, second, both) = match family {
        DnsLookupFamily::V4Only => return query(resolver, name, RecordType::A).await,
        DnsLookupFamily::V6Only => return query(resolver, name, RecordType::AAAA).await,
        DnsLookupFamily::Auto => (RecordType::AAAA, RecordType::A, false),
        DnsLookupFamily::V4Preferred => (RecordType::A, RecordType::AAAA, false),
        DnsLookupFamily::All => (RecordType::A, RecordType::AAAA, true),
    };
    let a = query(resolver, name, first).await?;
    if !both && !a.addrs.is_empty() {
        return Ok(a);
    }
    let b = query(resolver, name, second).await?;
    let mut addrs = a.addrs;
    for x in b.addrs {
        if !addrs.contains(&x) {
            addrs.push(x);
        }
    }
    let ttl = match (a.ttl, b.ttl) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    };
    Ok(Answer { addrs, ttl })
}

/// Failure backoff: `dns_failure_refresh_rate` base doubling up to max (default: the refresh rate).
fn failure_delay(cfg: &ClusterConfig, failures: u32) -> Duration {
    let (base, max) = match &cfg.dns_failure_refresh_rate {
        Some(r) => {
            let base = r.base_interval.as_std();
            (base, r.max_interval.map(|m| m.as_std()).unwrap_or(base * 10))
        }
        None => (cfg.dns_refresh_rate(), cfg.dns_refresh_rate()),
    };
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    exp.min(max).max(Duration::from_millis(1))
}

/// The discovery loop of one DNS cluster. `first_done` is called once, after the first attempt.
pub(crate) async fn dns_loop(
    cluster: Arc<Cluster>,
    resolver: TokioResolver,
    mut first_done: Option<Box<dyn FnOnce() + Send>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let cfg = cluster.config().clone();
    let eps = endpoints(&cfg).unwrap_or_default();
    let logical = cfg.type_ == DiscoveryType::LogicalDns;
    let family = cfg.dns_lookup_family;
    // Last good addresses per endpoint.
    let mut last: Vec<Option<Vec<IpAddr>>> = vec![None; eps.len()];
    let mut failures = 0u32;
    loop {
        let stats = cluster.stats();
        stats.update_attempt.inc();
        let mut failed = false;
        let mut min_ttl: Option<Duration> = None;
        for (i, ep) in eps.iter().enumerate() {
            match resolve(&resolver, &ep.name, family).await {
                Ok(a) => {
                    let mut addrs = a.addrs;
                    if logical {
                        addrs.truncate(1);
                    }
                    last[i] = Some(addrs);
                    if let Some(t) = a.ttl {
                        min_ttl = Some(min_ttl.map_or(t, |m| m.min(t)));
                    }
                }
                Err(e) => {
                    tracing::debug!(cluster = %cfg.name, name = %ep.name, error = %e, "DNS resolution failed");
                    failed = true;
                }
            }
        }
        // Build the new host list, keeping existing hosts.
        let current = cluster.hosts();
        let mut existing: HashMap<(String, SocketAddr), Arc<Host>> =
            current.hosts.iter().map(|h| ((h.hostname.clone(), h.address), h.clone())).collect();
        let mut hosts = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            for ip in last[i].iter().flatten() {
                let addr = SocketAddr::new(*ip, ep.port);
                let key = (ep.name.clone(), addr);
                let h = existing
                    .remove(&key)
                    .unwrap_or_else(|| Arc::new(Host::new(addr, ep.name.clone(), ep.weight, ep.locality.clone(), ep.health)));
                if !hosts.iter().any(|x: &Arc<Host>| Arc::ptr_eq(x, &h)) {
                    hosts.push(h);
                }
            }
        }
        let total = hosts.len();
        if !cluster.set_hosts(hosts) {
            stats.update_no_rebuild.inc();
        }
        if failed {
            stats.update_failure.inc();
            failures += 1;
        } else {
            stats.update_success.inc();
            failures = 0;
            if total == 0 {
                stats.update_empty.inc();
            }
        }
        if let Some(f) = first_done.take() {
            f();
        }
        let delay = if failed {
            failure_delay(&cfg, failures)
        } else if cfg.respect_dns_ttl {
            min_ttl.filter(|t| !t.is_zero()).unwrap_or_else(|| cfg.dns_refresh_rate())
        } else {
            cfg.dns_refresh_rate()
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_backoff_doubles_up_to_max() {
        let mut cfg = ClusterConfig {
            dns_failure_refresh_rate: Some(sluice_config::cluster::RefreshRate {
                base_interval: sluice_config::Duration(Duration::from_millis(100)),
                max_interval: Some(sluice_config::Duration(Duration::from_millis(500))),
            }),
            ..Default::default()
        };
        let d: Vec<u128> = (1..6).map(|f| failure_delay(&cfg, f).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
        cfg.dns_failure_refresh_rate = None;
        assert_eq!(failure_delay(&cfg, 3), Duration::from_secs(5));
    }
}
