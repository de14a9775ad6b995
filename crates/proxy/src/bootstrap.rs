//! The bootstrap's top-level settings, resolved once from the config (the field audit's entry
//! point: every field of `Bootstrap`, its `node`, `admin`, `static_resources` and runtime layers
//! is bound here and handed to what runs it).

use std::time::Duration;

use sluice_config::bootstrap::{Admin, DnsResolverConfig, LayeredRuntime, RuntimeLayer, StaticResources};
use sluice_config::cluster::Cluster as ClusterConfig;
use sluice_config::core::{Node, TypedExtensionConfig};
use sluice_config::listener::Listener as ListenerConfig;
use sluice_config::Bootstrap;

use crate::config_audit::{refused_at_load, without_effect};

/// What the server, the cluster manager and the admin need from a bootstrap.
pub struct Settings<'b> {
    pub listeners: &'b [ListenerConfig],
    pub clusters: &'b [ClusterConfig],
    /// `typed_dns_resolver_config`: the DNS resolver of clusters without one of their own.
    pub dns_resolver: Option<&'b DnsResolverConfig>,
    /// `node.id`.
    pub node_id: &'b str,
    /// `node.cluster`: Envoy's local service cluster name.
    pub local_cluster: &'b str,
    /// `admin.address`: the admin listener's address and whether it is IPv6-only.
    pub admin: Option<Result<(std::net::SocketAddr, bool), String>>,
    /// `layered_runtime.layers`: (name, static values) in order; the last layer wins.
    pub runtime_layers: Vec<(&'b str, Option<&'b serde_json::Value>)>,
    /// `stats_flush_interval` (default 5 s).
    pub stats_flush_interval: Duration,
}

/// Resolve a bootstrap's settings.
pub fn settings(b: &Bootstrap) -> Settings<'_> {
    let Bootstrap {
        node,
        static_resources,
        dynamic_resources,
        admin,
        layered_runtime,
        stats_flush_interval,
        typed_dns_resolver_config,
        stats_sinks,
        stats_config,
        overload_manager,
        tracing,
        cluster_manager,
        watchdogs,
    } = b;
    for refused in [dynamic_resources, stats_sinks, stats_config, overload_manager, tracing, cluster_manager, watchdogs] {
        refused_at_load(refused);
    }
    let StaticResources { listeners, clusters, secrets } = static_resources;
    refused_at_load(secrets);
    let (node_id, local_cluster) = match node {
        Some(Node { id, cluster, metadata, locality, user_agent_name }) => {
            // Envoy sends these to xDS servers (refused by sluice) and reports them in
            // /config_dump (which shows the config as loaded); they change nothing else.
            without_effect(metadata, "reported to xDS servers, which sluice refuses, and in /config_dump");
            without_effect(locality, "reported to xDS servers, which sluice refuses, and in /config_dump");
            without_effect(user_agent_name, "Envoy reports its own user agent whatever the config says");
            (id.as_str(), cluster.as_str())
        }
        None => ("", ""),
    };
    let admin = admin.as_ref().and_then(|a| {
        let Admin { address, access_log_path, access_log, profile_path, socket_options, ignore_global_conn_limit } = a;
        for refused in [access_log_path, access_log, profile_path, socket_options, ignore_global_conn_limit] {
            refused_at_load(refused);
        }
        address.as_ref().map(crate::listener::bind_address)
    });
    let mut runtime_layers = Vec::new();
    if let Some(LayeredRuntime { layers }) = layered_runtime {
        for RuntimeLayer { name, static_layer, admin_layer, disk_layer, rtds_layer } in layers {
            for refused in [admin_layer, disk_layer, rtds_layer] {
                refused_at_load(refused);
            }
            runtime_layers.push((name.as_str(), static_layer.as_ref()));
        }
    }
    let dns_resolver = typed_dns_resolver_config.as_ref().map(|t| {
        let TypedExtensionConfig { name, typed_config } = t;
        without_effect(name, "the resolver is chosen by its typed_config");
        typed_config
    });
    Settings {
        listeners,
        clusters,
        dns_resolver,
        node_id,
        local_cluster,
        admin,
        runtime_layers,
        stats_flush_interval: stats_flush_interval.map_or(Duration::from_secs(5), |d| d.as_std()),
    }
}
