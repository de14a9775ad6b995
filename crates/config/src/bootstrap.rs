//! `envoy.config.bootstrap.v3.Bootstrap` (static subset).

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::core::{Address, Duration, Node, TypedExtensionConfig};
use crate::de::{typed_enum, NotSupported};
use crate::listener::Listener;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    #[serde(default)]
    pub static_resources: StaticResources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_resources: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layered_runtime: Option<LayeredRuntime>,
    /// Default 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_flush_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_dns_resolver_config: Option<TypedExtensionConfig<DnsResolverConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_sinks: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_config: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overload_manager: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_manager: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdogs: Option<NotSupported>,
}

impl Bootstrap {
    pub fn stats_flush_interval(&self) -> std::time::Duration {
        self.stats_flush_interval
            .map(Duration::as_std)
            .unwrap_or(std::time::Duration::from_secs(5))
    }

    /// The value of a runtime key (`a.b.c`) in the static layers, the last layer winning.
    pub fn runtime_value(&self, key: &str) -> Option<&serde_json::Value> {
        let layers = &self.layered_runtime.as_ref()?.layers;
        layers.iter().rev().find_map(|layer| {
            let mut v = layer.static_layer.as_ref()?;
            for part in key.split('.') {
                v = v.get(part)?;
            }
            Some(v)
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StaticResources {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<NotSupported>,
}

/// `envoy.config.bootstrap.v3.Admin`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_path: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_path: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_options: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_global_conn_limit: Option<NotSupported>,
}

/// `envoy.config.bootstrap.v3.LayeredRuntime`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayeredRuntime {
    #[serde(default)]
    pub layers: Vec<RuntimeLayer>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeLayer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_layer: Option<serde_json::Value>,
    /// Needs `/runtime_modify`, which sluice does not offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_layer: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_layer: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtds_layer: Option<NotSupported>,
}

typed_enum! {
    /// The bootstrap's (or a cluster's) DNS resolver. sluice always resolves with its own
    /// resolver; these configs choose the servers it asks.
    pub enum DnsResolverConfig {
        Cares(CaresDnsResolverConfig) = "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
        GetAddrInfo(GetAddrInfoDnsResolverConfig) = "envoy.extensions.network.dns_resolver.getaddrinfo.v3.GetAddrInfoDnsResolverConfig",
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CaresDnsResolverConfig {
    #[serde(default)]
    pub resolvers: Vec<Address>,
    #[serde(default)]
    pub use_resolvers_as_fallback: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_unroutable_families: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_resolver_options: Option<DnsResolverOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_max_queries: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_tries: Option<u32>,
    #[serde(default)]
    pub rotate_nameservers: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsResolverOptions {
    #[serde(default)]
    pub use_tcp_for_dns_lookups: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_default_search_domain: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GetAddrInfoDnsResolverConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_resolver_threads: Option<NotSupported>,
}
