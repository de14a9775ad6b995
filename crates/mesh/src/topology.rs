//! The topology file of `sluice up` (see `examples/guide/mesh.yaml` for a commented example).

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The guide's topology, built into the binary.
pub const GUIDE_MESH: &str = include_str!("../../../examples/guide/mesh.yaml");
/// The files the guide's topology refers to, built into the binary.
pub const GUIDE_FILES: &[(&str, &str)] = &[
    (
        "front-envoy.yaml",
        include_str!("../../../examples/guide/front-envoy.yaml"),
    ),
    (
        "service-envoy-1.yaml",
        include_str!("../../../examples/guide/service-envoy-1.yaml"),
    ),
    (
        "service-envoy-2.yaml",
        include_str!("../../../examples/guide/service-envoy-2.yaml"),
    ),
    (
        "policy.rego",
        include_str!("../../../examples/guide/policy.rego"),
    ),
];

/// What a component runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `sluice proxy -c CONFIG` (Envoy bootstrap; rewritten per replica).
    Proxy,
    /// `sluice authz run --server … POLICY` (OPA-compatible).
    Authz,
    /// `sluice service --name N …` (the demo service).
    Service,
    /// Any `sluice` subcommand given by `command`.
    Command,
}

/// A published port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    /// Port inside the mesh (a listener or admin port of the component's config).
    pub port: u16,
    /// Host port (default: the same).
    #[serde(default)]
    pub host_port: Option<u16>,
    /// Environment variable overriding the host port.
    #[serde(default)]
    pub env: Option<String>,
}

/// DNS settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsSettings {
    /// TTL of the answers (seconds).
    #[serde(default)]
    pub ttl: Option<u32>,
    /// When set (e.g. `1s`, `500ms`), every DNS cluster of every proxy gets this `dns_refresh_rate`.
    #[serde(default)]
    pub refresh_rate: Option<String>,
}

/// One component (a compose "service").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Component {
    /// Name: also its DNS name.
    pub name: String,
    /// What it runs.
    pub role: Role,
    /// Proxy config file (relative to the topology file).
    #[serde(default)]
    pub config: Option<String>,
    /// Policy file (authz).
    #[serde(default)]
    pub policy: Option<String>,
    /// Demo service name (`1`, `2`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// Ports it listens on (for service/authz/command; proxies' ports come from their config).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Initial replicas.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Ports published on the host.
    #[serde(default)]
    pub publish: Vec<Publish>,
    /// Components started (and ready) before this one.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Explicit `sluice` arguments (placeholders: {ip} {hostname} {config} {policy} {name}
    /// {index} {port}).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Extra environment variables.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// A topology file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Topology {
    /// Project name.
    #[serde(default = "default_name")]
    pub name: String,
    /// Replicas get addresses from this /24 (`.1` is the DNS server), e.g. `127.0.10.0`.
    #[serde(default = "default_subnet")]
    pub subnet: Ipv4Addr,
    /// Address the published ports bind on.
    #[serde(default = "default_publish_address")]
    pub publish_address: std::net::IpAddr,
    /// DNS settings.
    #[serde(default)]
    pub dns: DnsSettings,
    /// The components, in file order.
    pub components: Vec<Component>,
    /// Directory relative paths are resolved against (not in the file).
    #[serde(skip)]
    pub base_dir: Option<PathBuf>,
    /// Embedded files (for the built-in topology), by relative path.
    #[serde(skip)]
    pub embedded: BTreeMap<String, String>,
}

fn default_name() -> String {
    "mesh".into()
}
fn default_subnet() -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 10, 0)
}
fn default_publish_address() -> std::net::IpAddr {
    std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)
}

impl Topology {
    /// Parses and checks a topology.
    pub fn parse(text: &str) -> anyhow::Result<Topology> {
        let t: Topology = serde_yaml_ng::from_str(text).context("invalid topology file")?;
        t.validate()?;
        Ok(t)
    }

    /// The built-in guide topology.
    pub fn guide() -> Topology {
        let mut t = Topology::parse(GUIDE_MESH).expect("built-in topology is valid");
        t.embedded = GUIDE_FILES
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        t
    }

    /// Loads a topology file; relative paths inside are relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<Topology> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read topology {}", path.display()))?;
        let mut t = Topology::parse(&text).with_context(|| format!("in {}", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        t.base_dir = Some(if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        });
        Ok(t)
    }

    /// Reads a file the topology refers to.
    pub fn read_file(&self, rel: &str) -> anyhow::Result<String> {
        if let Some(s) = self.embedded.get(rel) {
            return Ok(s.clone());
        }
        let path = match &self.base_dir {
            Some(d) => d.join(rel),
            None => PathBuf::from(rel),
        };
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// A component by name.
    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name == name)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut names = HashSet::new();
        if self.subnet.octets()[0] != 127 {
            bail!("subnet must be inside 127.0.0.0/8 (got {})", self.subnet);
        }
        for c in &self.components {
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                bail!("bad component name {:?}", c.name);
            }
            if !names.insert(c.name.as_str()) {
                bail!("component {} is defined twice", c.name);
            }
            match c.role {
                Role::Proxy if c.config.is_none() && c.command.is_none() => {
                    bail!("component {}: role proxy needs `config`", c.name)
                }
                Role::Authz if c.policy.is_none() && c.command.is_none() => {
                    bail!("component {}: role authz needs `policy`", c.name)
                }
                Role::Service if c.service_name.is_none() && c.command.is_none() => {
                    bail!("component {}: role service needs `service_name`", c.name)
                }
                Role::Command if c.command.is_none() => {
                    bail!("component {}: role command needs `command`", c.name)
                }
                _ => {}
            }
            if !c.publish.is_empty() && c.replicas > 1 {
                bail!(
                    "component {} publishes ports: it cannot have more than 1 replica",
                    c.name
                );
            }
        }
        for c in &self.components {
            for d in &c.depends_on {
                if !names.contains(d.as_str()) {
                    bail!("component {} depends on unknown component {d}", c.name);
                }
            }
        }
        self.start_order()?;
        Ok(())
    }

    /// Components ordered so that dependencies come first (file order otherwise).
    pub fn start_order(&self) -> anyhow::Result<Vec<&Component>> {
        let mut done: Vec<&Component> = Vec::new();
        let mut left: Vec<&Component> = self.components.iter().collect();
        while !left.is_empty() {
            let pos = left.iter().position(|c| {
                c.depends_on
                    .iter()
                    .all(|d| done.iter().any(|x| &x.name == d))
            });
            match pos {
                Some(i) => done.push(left.remove(i)),
                None => bail!(
                    "dependency cycle among: {}",
                    left.iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
        Ok(done)
    }
}

/// Parses a duration like `1s`, `0.5s`, `250ms`, or a protobuf JSON `{seconds, nanos}` value.
pub fn parse_duration(v: &serde_json::Value) -> Option<std::time::Duration> {
    use std::time::Duration;
    match v {
        serde_json::Value::String(s) => {
            let s = s.trim();
            if let Some(ms) = s.strip_suffix("ms") {
                return ms
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .map(|x| Duration::from_secs_f64(x / 1000.0));
            }
            let secs = s.strip_suffix('s').unwrap_or(s);
            secs.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| *x >= 0.0)
                .map(Duration::from_secs_f64)
        }
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|x| *x >= 0.0)
            .map(Duration::from_secs_f64),
        serde_json::Value::Object(o) => {
            let s = o
                .get("seconds")
                .and_then(|x| x.as_u64().or_else(|| x.as_str()?.parse().ok()))?;
            let n = o.get("nanos").and_then(|x| x.as_u64()).unwrap_or(0);
            Some(Duration::from_secs(s) + Duration::from_nanos(n))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn guide_topology() {
        let t = Topology::guide();
        assert_eq!(t.components.len(), 6);
        let order: Vec<_> = t
            .start_order()
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert!(pos("service1") < pos("service-envoy-1"));
        assert!(pos("service-envoy-1") < pos("front-envoy"));
        assert!(pos("ext_authz-opa-service") < pos("front-envoy"));
        // The front config carries its own TLS material inline.
        let front_cfg = t.read_file("front-envoy.yaml").unwrap();
        assert!(front_cfg.contains("BEGIN CERTIFICATE") && front_cfg.contains("PRIVATE KEY"));
        assert!(t
            .read_file("policy.rego")
            .unwrap()
            .contains("package envoy.authz"));
        let front = t.component("front-envoy").unwrap();
        assert_eq!(front.publish.len(), 3);
        assert_eq!(front.publish[0].env.as_deref(), Some("PORT_PROXY"));
    }

    #[test]
    fn rejects_bad_files() {
        let base = "components:\n";
        assert!(Topology::parse(&format!("{base}- {{name: a, role: proxy}}\n")).is_err());
        assert!(Topology::parse(&format!(
            "{base}- {{name: a, role: service, service_name: '1', depends_on: [b]}}\n"
        ))
        .is_err());
        assert!(Topology::parse(&format!(
            "{base}- {{name: a, role: service, service_name: '1', depends_on: [b]}}\n- {{name: b, role: service, service_name: '2', depends_on: [a]}}\n"
        ))
        .is_err());
        assert!(Topology::parse("subnet: 10.0.0.0\ncomponents: []\n").is_err());
        assert!(Topology::parse(&format!(
            "{base}- {{name: a, role: service, service_name: '1'}}\n- {{name: a, role: service, service_name: '1'}}\n"
        ))
        .is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration(&json!("5s")), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_duration(&json!("0.250s")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_duration(&json!("250ms")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_duration(&json!({"seconds": 2, "nanos": 500000000})),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_duration(&json!("x")), None);
    }
}
