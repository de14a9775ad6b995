//! Per-replica rewriting of Envoy v3 bootstraps, on `serde_json::Value` trees.
//!
//! - wildcard listener and admin addresses (`0.0.0.0`, `::`) become the replica's own address;
//!   published ports bind on the publish address with their host port instead;
//! - the bootstrap's `typed_dns_resolver_config` points at the mesh's DNS server (c-ares, no
//!   fallback to the system's resolvers); per-cluster resolver settings are replaced too;
//! - optionally every STRICT_DNS / LOGICAL_DNS cluster gets a `dns_refresh_rate`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde_json::{json, Map, Value};

use crate::topology::parse_duration;

/// Envoy's default `dns_refresh_rate`.
pub const ENVOY_DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

/// How to rewrite one replica's config.
#[derive(Debug, Clone)]
pub struct Rewrite {
    /// The replica's own address.
    pub ip: IpAddr,
    /// Published ports: port in the config → address to bind instead.
    pub publish: BTreeMap<u16, SocketAddr>,
    /// The mesh's DNS server.
    pub dns: SocketAddr,
    /// `dns_refresh_rate` to set on DNS clusters (e.g. `1s`), if any.
    pub refresh_rate: Option<String>,
}

/// What the rewritten config listens on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rewritten {
    /// Listener addresses (after rewriting).
    pub listeners: Vec<SocketAddr>,
    /// Admin address (after rewriting), if the config has one.
    pub admin: Option<SocketAddr>,
    /// The longest DNS refresh interval among its DNS clusters (None: no DNS cluster).
    pub max_dns_refresh: Option<Duration>,
}

/// Parses a YAML or JSON bootstrap into a JSON tree.
pub fn parse_config(text: &str) -> anyhow::Result<Value> {
    let v: Value = serde_yaml_ng::from_str(text).context("invalid proxy config (YAML/JSON)")?;
    if !v.is_object() {
        return Err(anyhow!("proxy config is not a mapping"));
    }
    Ok(v)
}

fn is_wildcard(addr: &str) -> bool {
    matches!(addr, "0.0.0.0" | "::" | "[::]" | "")
}

/// Rewrites one `socket_address` object in place; returns the resulting address when parseable.
fn rewrite_socket_address(sa: &mut Map<String, Value>, rw: &Rewrite) -> Option<SocketAddr> {
    let port = sa
        .get("port_value")
        .and_then(|p| p.as_u64().or_else(|| p.as_str()?.parse().ok()))? as u16;
    if let Some(publish) = rw.publish.get(&port) {
        sa.insert("address".into(), json!(publish.ip().to_string()));
        sa.insert("port_value".into(), json!(publish.port()));
        return Some(*publish);
    }
    let addr = sa
        .get("address")
        .and_then(|a| a.as_str())
        .unwrap_or("")
        .to_string();
    let ip: IpAddr = if is_wildcard(&addr) {
        sa.insert("address".into(), json!(rw.ip.to_string()));
        rw.ip
    } else {
        addr.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?
    };
    Some(SocketAddr::new(ip, port))
}

fn socket_address_mut(address: &mut Value) -> Option<&mut Map<String, Value>> {
    address.get_mut("socket_address")?.as_object_mut()
}

/// Rewrites a bootstrap for one replica; see the module docs.
pub fn rewrite(config: &mut Value, rw: &Rewrite) -> Rewritten {
    let mut out = Rewritten::default();
    let root = config.as_object_mut().expect("config is a mapping");

    if let Some(listeners) = root
        .get_mut("static_resources")
        .and_then(|s| s.get_mut("listeners"))
        .and_then(|l| l.as_array_mut())
    {
        for l in listeners {
            if let Some(sa) = l.get_mut("address").and_then(socket_address_mut) {
                if let Some(a) = rewrite_socket_address(sa, rw) {
                    out.listeners.push(a);
                }
            }
            if let Some(extra) = l
                .get_mut("additional_addresses")
                .and_then(|a| a.as_array_mut())
            {
                for e in extra {
                    if let Some(sa) = e.get_mut("address").and_then(socket_address_mut) {
                        if let Some(a) = rewrite_socket_address(sa, rw) {
                            out.listeners.push(a);
                        }
                    }
                }
            }
        }
    }
    if let Some(sa) = root
        .get_mut("admin")
        .and_then(|a| a.get_mut("address"))
        .and_then(socket_address_mut)
    {
        out.admin = rewrite_socket_address(sa, rw);
    }

    let resolver = json!({
        "name": "envoy.network.dns_resolver.cares",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
            "resolvers": [{"socket_address": {"address": rw.dns.ip().to_string(), "port_value": rw.dns.port()}}],
            "use_resolvers_as_fallback": false
        }
    });
    root.remove("dns_resolution_config");
    root.insert("typed_dns_resolver_config".into(), resolver.clone());

    if let Some(clusters) = root
        .get_mut("static_resources")
        .and_then(|s| s.get_mut("clusters"))
        .and_then(|c| c.as_array_mut())
    {
        for c in clusters {
            let Some(c) = c.as_object_mut() else { continue };
            let ty = c
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap_or("STATIC")
                .to_ascii_uppercase();
            if ty != "STRICT_DNS" && ty != "LOGICAL_DNS" {
                continue;
            }
            for k in ["dns_resolvers", "dns_resolution_config"] {
                c.remove(k);
            }
            if c.contains_key("typed_dns_resolver_config") {
                c.insert("typed_dns_resolver_config".into(), resolver.clone());
            }
            if let Some(rate) = &rw.refresh_rate {
                c.insert("dns_refresh_rate".into(), json!(proto_duration(rate)));
            }
            let refresh = c
                .get("dns_refresh_rate")
                .and_then(parse_duration)
                .unwrap_or(ENVOY_DEFAULT_DNS_REFRESH);
            out.max_dns_refresh = Some(out.max_dns_refresh.map_or(refresh, |m| m.max(refresh)));
        }
    }
    out
}

/// A duration in protobuf JSON form (`500ms` → `0.500s`); unparseable text is kept as is.
pub fn proto_duration(text: &str) -> String {
    match parse_duration(&json!(text)) {
        Some(d) if d.subsec_nanos() == 0 => format!("{}s", d.as_secs()),
        Some(d) => format!("{:.3}s", d.as_secs_f64()),
        None => text.to_string(),
    }
}

/// Serializes a config as YAML (Envoy and `sluice proxy` read both).
pub fn to_yaml(config: &Value) -> anyhow::Result<String> {
    Ok(serde_yaml_ng::to_string(config)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIDECAR: &str = include_str!("../../../examples/guide/service-envoy-1.yaml");
    const FRONT: &str = include_str!("../../../examples/guide/front-envoy.yaml");

    fn rw(ip: &str) -> Rewrite {
        Rewrite {
            ip: ip.parse().unwrap(),
            publish: BTreeMap::new(),
            dns: "127.0.10.1:5353".parse().unwrap(),
            refresh_rate: None,
        }
    }

    #[test]
    fn sidecar_gets_own_address_and_resolver() {
        let mut v = parse_config(SIDECAR).unwrap();
        let out = rewrite(&mut v, &rw("127.0.10.4"));
        assert_eq!(out.listeners, vec!["127.0.10.4:8000".parse().unwrap()]);
        assert_eq!(out.admin, Some("127.0.10.4:8001".parse().unwrap()));
        // The guide's sidecar re-resolves every second (its own dns_refresh_rate).
        assert_eq!(out.max_dns_refresh, Some(Duration::from_secs(1)));
        let r = &v["typed_dns_resolver_config"];
        assert_eq!(r["name"], "envoy.network.dns_resolver.cares");
        assert_eq!(
            r["typed_config"]["resolvers"][0]["socket_address"]["address"],
            "127.0.10.1"
        );
        assert_eq!(
            r["typed_config"]["resolvers"][0]["socket_address"]["port_value"],
            5353
        );
        assert_eq!(r["typed_config"]["use_resolvers_as_fallback"], false);
        // Clusters keep their DNS names, ports and own refresh rate.
        let c = &v["static_resources"]["clusters"][0];
        assert_eq!(c["dns_refresh_rate"], "1s");
        let ep = &c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(ep["address"], "service1");
        assert_eq!(ep["port_value"], 8080);
        // Round trip through YAML.
        let again = parse_config(&to_yaml(&v).unwrap()).unwrap();
        assert_eq!(again, v);
    }

    #[test]
    fn front_publishes_and_refresh_rate() {
        let mut v = parse_config(FRONT).unwrap();
        let mut r = rw("127.0.10.7");
        r.publish.insert(8080, "127.0.0.1:18080".parse().unwrap());
        r.publish.insert(8443, "127.0.0.1:18443".parse().unwrap());
        r.publish.insert(8001, "127.0.0.1:18001".parse().unwrap());
        r.refresh_rate = Some("1s".into());
        let out = rewrite(&mut v, &r);
        assert_eq!(
            out.listeners,
            vec![
                "127.0.0.1:18080".parse().unwrap(),
                "127.0.0.1:18443".parse().unwrap()
            ]
        );
        assert_eq!(out.admin, Some("127.0.0.1:18001".parse().unwrap()));
        assert_eq!(out.max_dns_refresh, Some(Duration::from_secs(1)));
        for c in v["static_resources"]["clusters"].as_array().unwrap() {
            assert_eq!(c["dns_refresh_rate"], "1s");
        }
        // The TLS material and the authz filter are untouched.
        let s = to_yaml(&v).unwrap();
        assert!(s.contains("BEGIN CERTIFICATE"));
        assert!(s.contains("ext_authz-opa-service"));
    }

    #[test]
    fn proto_durations() {
        assert_eq!(proto_duration("500ms"), "0.500s");
        assert_eq!(proto_duration("1s"), "1s");
        assert_eq!(proto_duration("2"), "2s");
        assert_eq!(proto_duration("0.25s"), "0.250s");
    }

    #[test]
    fn explicit_addresses_are_kept() {
        let mut v = parse_config(
            "static_resources:\n  listeners:\n  - address: {socket_address: {address: 127.0.0.5, port_value: 9}}\n",
        )
        .unwrap();
        let out = rewrite(&mut v, &rw("127.0.10.9"));
        assert_eq!(out.listeners, vec!["127.0.0.5:9".parse().unwrap()]);
        assert_eq!(out.admin, None);
        assert_eq!(out.max_dns_refresh, None);
    }

    #[test]
    fn existing_refresh_rate_counts() {
        let mut v = parse_config(
            "static_resources:\n  clusters:\n  - {name: a, type: STRICT_DNS, dns_refresh_rate: 10s}\n  - {name: b, type: STATIC}\n",
        )
        .unwrap();
        let out = rewrite(&mut v, &rw("127.0.10.9"));
        assert_eq!(out.max_dns_refresh, Some(Duration::from_secs(10)));
        // Without one, Envoy's default counts.
        let mut v =
            parse_config("static_resources:\n  clusters:\n  - {name: a, type: LOGICAL_DNS}\n")
                .unwrap();
        let out = rewrite(&mut v, &rw("127.0.10.9"));
        assert_eq!(out.max_dns_refresh, Some(ENVOY_DEFAULT_DNS_REFRESH));
    }
}
