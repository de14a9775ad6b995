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

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts, ServerOrderingStrategy};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use sluice_config::bootstrap::{CaresDnsResolverConfig, DnsResolverConfig, DnsResolverOptions, GetAddrInfoDnsResolverConfig};
use sluice_config::cluster::{
    ClusterLoadAssignment, DnsLookupFamily, Endpoint, HealthStatus, LbEndpoint, LoadAssignmentPolicy, LocalityLbEndpoints,
};
use sluice_config::core::Locality;

use super::cluster::{Cluster, PriorityPolicy};
use crate::config_audit::{refused_at_load, without_effect};
use super::host::Host;

/// One endpoint of a cluster's load assignment.
#[derive(Debug, Clone)]
pub(crate) struct EndpointSpec {
    pub name: String,
    pub port: u16,
    pub weight: u32,
    pub locality: Locality,
    pub health: HealthStatus,
    /// The endpoint group's `priority` (0 highest).
    pub priority: u32,
    /// The endpoint group's `load_balancing_weight` (0: none).
    pub locality_weight: u32,
    /// Configured `endpoint.hostname` (STATIC).
    pub hostname: Option<String>,
}

/// A DNS cluster's discovery settings, resolved from its config.
#[derive(Debug, Clone)]
pub(crate) struct DnsSettings {
    /// LOGICAL_DNS: one address per name.
    pub logical: bool,
    pub endpoints: Vec<EndpointSpec>,
    /// `dns_refresh_rate` (default 5 s).
    pub refresh_rate: Duration,
    /// `dns_failure_refresh_rate`: base and max (default max: 10 × base).
    pub failure_refresh: Option<(Duration, Duration)>,
    pub respect_ttl: bool,
    pub family: DnsLookupFamily,
    /// `dns_jitter`: a random delay below it is added to each refresh after a success.
    pub jitter: Option<Duration>,
    /// `use_tcp_for_dns_lookups`.
    pub use_tcp: bool,
    /// The cluster's own `typed_dns_resolver_config`.
    pub resolver: Option<DnsResolverConfig>,
}

/// The endpoints of a cluster's `load_assignment`, and its priority policy.
pub(crate) fn endpoints(
    cluster: &str,
    load_assignment: Option<&ClusterLoadAssignment>,
) -> anyhow::Result<(Vec<EndpointSpec>, PriorityPolicy)> {
    let mut out = Vec::new();
    let Some(ClusterLoadAssignment { cluster_name, endpoints, named_endpoints, policy }) = load_assignment else {
        return Ok((out, PriorityPolicy::default()));
    };
    without_effect(cluster_name, "names the cluster for EDS, which sluice refuses");
    refused_at_load(named_endpoints);
    let mut priority_policy = PriorityPolicy::default();
    if let Some(LoadAssignmentPolicy { drop_overloads, overprovisioning_factor, endpoint_stale_after, weighted_priority_health }) = policy {
        refused_at_load(drop_overloads);
        refused_at_load(endpoint_stale_after);
        priority_policy = PriorityPolicy {
            overprovisioning: overprovisioning_factor.unwrap_or(140).max(1),
            weighted: *weighted_priority_health,
            locality_weighted: false,
        };
    }
    for (li, group) in endpoints.iter().enumerate() {
        let LocalityLbEndpoints { locality, lb_endpoints, load_balancing_weight: locality_weight, priority, proximity, metadata } = group;
        without_effect(proximity, "Envoy does not use it");
        without_effect(metadata, "read only by features sluice refuses (subset load balancing)");
        for (ei, e) in lb_endpoints.iter().enumerate() {
            let LbEndpoint { endpoint, endpoint_name, health_status, metadata, load_balancing_weight } = e;
            refused_at_load(endpoint_name);
            without_effect(metadata, "read only by features sluice refuses (subset load balancing, %UPSTREAM_HOST_METADATA%)");
            let Some(Endpoint { address, hostname, health_check_config, additional_addresses }) = endpoint else { continue };
            refused_at_load(health_check_config);
            refused_at_load(additional_addresses);
            let sa = address.socket_address.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "cluster '{cluster}': load_assignment.endpoints[{li}].lb_endpoints[{ei}]: only socket_address is supported"
                )
            })?;
            let port = u16::try_from(sa.port_value)
                .map_err(|_| anyhow::anyhow!("cluster '{cluster}': invalid port {}", sa.port_value))?;
            out.push(EndpointSpec {
                name: sa.address.trim_start_matches('[').trim_end_matches(']').to_string(),
                port,
                weight: load_balancing_weight.unwrap_or(1).max(1),
                locality: locality.clone().unwrap_or_default(),
                health: *health_status,
                priority: *priority,
                locality_weight: locality_weight.unwrap_or(0),
                hostname: hostname.clone(),
            });
        }
    }
    Ok((out, priority_policy))
}

/// STATIC hosts: every endpoint must be an IP literal.
pub(crate) fn static_hosts(cluster: &str, endpoints: &[EndpointSpec]) -> anyhow::Result<Vec<Arc<Host>>> {
    endpoints
        .iter()
        .map(|e| {
            let ip: IpAddr = e.name.parse().map_err(|_| {
                anyhow::anyhow!("cluster '{cluster}': STATIC endpoint address '{}' is not an IP address", e.name)
            })?;
            Ok(Arc::new(
                Host::new(SocketAddr::new(ip, e.port), e.hostname.clone().unwrap_or_default(), e.weight, e.locality.clone(), e.health)
                    .with_priority(e.priority)
                    .with_locality_weight(e.locality_weight),
            ))
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
        Some(DnsResolverConfig::Cares(c)) => {
            let CaresDnsResolverConfig {
                resolvers,
                use_resolvers_as_fallback,
                filter_unroutable_families,
                dns_resolver_options,
                udp_max_queries,
                query_timeout_seconds,
                query_tries,
                rotate_nameservers,
            } = c;
            refused_at_load(filter_unroutable_families);
            refused_at_load(udp_max_queries);
            let tcp = match dns_resolver_options {
                Some(DnsResolverOptions { use_tcp_for_dns_lookups, no_default_search_domain }) => {
                    refused_at_load(no_default_search_domain);
                    cluster_tcp || *use_tcp_for_dns_lookups
                }
                None => cluster_tcp,
            };
            opts.timeout = Duration::from_secs(query_timeout_seconds.unwrap_or(5).max(1));
            opts.attempts = query_tries.unwrap_or(4).max(1) as usize;
            if *rotate_nameservers {
                opts.server_ordering_strategy = ServerOrderingStrategy::RoundRobin;
            }
            if resolvers.is_empty() {
                system()?
            } else {
                let custom = cares_config(resolvers, tcp)?;
                if *use_resolvers_as_fallback {
                    match system() {
                        Ok((sys, o)) if !sys.name_servers().is_empty() => (sys, o),
                        _ => (custom, ResolverOpts::default()),
                    }
                } else {
                    (custom, ResolverOpts::default())
                }
            }
        }
        Some(DnsResolverConfig::GetAddrInfo(GetAddrInfoDnsResolverConfig { num_retries, num_resolver_threads })) => {
            refused_at_load(num_retries);
            refused_at_load(num_resolver_threads);
            let (sys, o) = system()?;
            opts.timeout = o.timeout;
            opts.attempts = o.attempts;
            (sys, o)
        }
        None => {
            let (sys, o) = system()?;
            opts.timeout = o.timeout;
            opts.attempts = o.attempts;
            (sys, o)
        }
    };
    opts.ndots = base_opts.ndots;
    // Every refresh asks the wire (as Envoy does); TTLs are read from the answers.
    opts.cache_size = 0;
    let mut b = TokioResolver::builder_with_config(config, provider);
    *b.options_mut() = opts;
    Ok(b.build()?)
}

fn cares_config(resolvers: &[sluice_config::core::Address], tcp: bool) -> anyhow::Result<ResolverConfig> {
    let mut servers = Vec::new();
    for a in resolvers {
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
fn failure_delay(dns: &DnsSettings, failures: u32) -> Duration {
    let (base, max) = dns.failure_refresh.unwrap_or((dns.refresh_rate, dns.refresh_rate));
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    exp.min(max).max(Duration::from_millis(1))
}

/// The wait after a successful resolution: the refresh rate (or the smallest TTL with
/// `respect_dns_ttl`) plus a random `dns_jitter` share.
fn success_delay(dns: &DnsSettings, min_ttl: Option<Duration>) -> Duration {
    let base = if dns.respect_ttl { min_ttl.filter(|t| !t.is_zero()).unwrap_or(dns.refresh_rate) } else { dns.refresh_rate };
    let jitter = dns.jitter.map_or(Duration::ZERO, |j| {
        use rand::Rng;
        Duration::from_nanos(rand::rng().random_range(0..j.as_nanos().min(u128::from(u64::MAX)) as u64))
    });
    base + jitter
}

/// The discovery loop of one DNS cluster. `first_done` is called once, after the first attempt.
pub(crate) async fn dns_loop(
    cluster: Arc<Cluster>,
    resolver: TokioResolver,
    mut first_done: Option<Box<dyn FnOnce() + Send>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let super::cluster::Discovery::Dns(dns) = cluster.discovery() else { return };
    let dns = dns.clone();
    let eps = &dns.endpoints;
    let logical = dns.logical;
    let family = dns.family;
    let name = cluster.name().to_string();
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
                    tracing::debug!(cluster = %name, name = %ep.name, error = %e, "DNS resolution failed");
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
                    .unwrap_or_else(|| {
                        Arc::new(Host::new(addr, ep.name.clone(), ep.weight, ep.locality.clone(), ep.health).with_priority(ep.priority).with_locality_weight(ep.locality_weight))
                    });
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
        let delay = if failed { failure_delay(&dns, failures) } else { success_delay(&dns, min_ttl) };
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

    fn settings() -> DnsSettings {
        DnsSettings {
            logical: false,
            endpoints: Vec::new(),
            refresh_rate: Duration::from_secs(5),
            failure_refresh: None,
            respect_ttl: false,
            family: DnsLookupFamily::Auto,
            jitter: None,
            use_tcp: false,
            resolver: None,
        }
    }

    #[test]
    fn failure_backoff_doubles_up_to_max() {
        let mut dns = DnsSettings { failure_refresh: Some((Duration::from_millis(100), Duration::from_millis(500))), ..settings() };
        let d: Vec<u128> = (1..6).map(|f| failure_delay(&dns, f).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
        dns.failure_refresh = None;
        assert_eq!(failure_delay(&dns, 3), Duration::from_secs(5));
    }

    #[test]
    fn success_delay_follows_ttl_and_adds_jitter() {
        let dns = settings();
        assert_eq!(success_delay(&dns, Some(Duration::from_secs(30))), Duration::from_secs(5));
        let ttl = DnsSettings { respect_ttl: true, ..settings() };
        assert_eq!(success_delay(&ttl, Some(Duration::from_secs(30))), Duration::from_secs(30));
        assert_eq!(success_delay(&ttl, Some(Duration::ZERO)), Duration::from_secs(5));
        // `dns_jitter`: within [rate, rate + jitter), and not always the same.
        let jittered = DnsSettings { jitter: Some(Duration::from_secs(1)), ..settings() };
        let delays: std::collections::HashSet<Duration> = (0..64).map(|_| success_delay(&jittered, None)).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_secs(5) && *d < Duration::from_secs(6)), "{delays:?}");
        assert!(delays.len() > 1, "jitter never varied: {delays:?}");
    }
}
