//! `/clusters` (text and JSON) from a neutral view of the cluster manager.
//!
//! The admin interface reads clusters through [`ClusterSource`], so it does not depend on the
//! upstream module's internals (and tests can feed synthetic clusters). [`StaticClusters`] builds
//! the views straight from the configuration (static hosts, zero counters).

use std::net::SocketAddr;

use regex::Regex;
use serde_json::{json, Map, Value};
use sluice_config::cluster::{HealthStatus, RoutingPriority};
use sluice_config::core::Locality;

/// Circuit breaker limits of one priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThresholdsView {
    pub max_connections: u64,
    pub max_pending_requests: u64,
    pub max_requests: u64,
    pub max_retries: u64,
}

impl Default for ThresholdsView {
    /// Envoy's defaults: 1024 / 1024 / 1024 / 3.
    fn default() -> Self {
        ThresholdsView { max_connections: 1024, max_pending_requests: 1024, max_requests: 1024, max_retries: 3 }
    }
}

/// Per-host counters (`cx_*`, `rq_*` counters) and gauges (`*_active`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStatsView {
    pub cx_active: u64,
    pub cx_connect_fail: u64,
    pub cx_total: u64,
    pub rq_active: u64,
    pub rq_error: u64,
    pub rq_pending_active: u64,
    pub rq_success: u64,
    pub rq_timeout: u64,
    pub rq_total: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HostView {
    pub address: SocketAddr,
    pub hostname: String,
    pub weight: u32,
    pub locality: Locality,
    pub priority: u32,
    /// The EDS/config health status.
    pub health: HealthStatus,
    /// Envoy's health flags ([`crate::upstream::health_flag`] bits; the EDS ones are derived
    /// from `health`).
    pub flags: u32,
    /// Outlier detection's last success rates (external, local origin); -1 when unknown.
    pub success_rate: f64,
    pub local_origin_success_rate: f64,
    pub stats: HostStatsView,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterView {
    pub name: String,
    pub observability_name: String,
    pub added_via_api: bool,
    /// Default priority, then high.
    pub thresholds: [ThresholdsView; 2],
    pub hosts: Vec<HostView>,
}

/// Where the admin interface reads cluster status from.
pub trait ClusterSource: Send + Sync {
    /// Every cluster, in the order `/clusters` lists them.
    fn cluster_views(&self) -> Vec<ClusterView>;
    /// The cluster manager finished its initial warm-up (DNS resolutions …).
    fn is_initialized(&self) -> bool {
        true
    }
    /// `/healthcheck/fail` (true) and `/healthcheck/ok` (false): what the health-check HTTP
    /// filter answers.
    fn set_healthcheck_failed(&self, _failed: bool) {}
}

/// Circuit-breaker limits from a cluster's config (Envoy's defaults where unset).
pub fn thresholds_from_config(c: &sluice_config::cluster::Cluster) -> [ThresholdsView; 2] {
    let mut out = [ThresholdsView::default(); 2];
    for t in c.circuit_breakers.iter().flat_map(|cb| cb.thresholds.iter()) {
        let slot = match t.priority {
            RoutingPriority::Default => 0,
            RoutingPriority::High => 1,
        };
        let d = ThresholdsView::default();
        out[slot] = ThresholdsView {
            max_connections: t.max_connections.map_or(d.max_connections, u64::from),
            max_pending_requests: t.max_pending_requests.map_or(d.max_pending_requests, u64::from),
            max_requests: t.max_requests.map_or(d.max_requests, u64::from),
            max_retries: t.max_retries.map_or(d.max_retries, u64::from),
        };
    }
    out
}

/// Cluster views straight from the configuration: hosts with IP literal addresses, zero stats.
pub struct StaticClusters(pub Vec<ClusterView>);

impl StaticClusters {
    pub fn from_bootstrap(b: &sluice_config::Bootstrap) -> Self {
        let views = b
            .static_resources
            .clusters
            .iter()
            .map(|c| {
                let mut hosts = Vec::new();
                for lle in c.load_assignment.iter().flat_map(|la| la.endpoints.iter()) {
                    for ep in &lle.lb_endpoints {
                        let Some(e) = &ep.endpoint else { continue };
                        let Some(addr) = e.address.socket_address.as_ref().and_then(|s| s.to_socket_addr())
                        else {
                            continue;
                        };
                        hosts.push(HostView {
                            address: addr,
                            hostname: e.hostname.clone().unwrap_or_default(),
                            weight: ep.weight(),
                            locality: lle.locality.clone().unwrap_or_default(),
                            priority: lle.priority,
                            health: ep.health_status,
                            flags: 0,
                            success_rate: -1.0,
                            local_origin_success_rate: -1.0,
                            stats: HostStatsView::default(),
                        });
                    }
                }
                ClusterView {
                    name: c.name.clone(),
                    observability_name: c.stat_name().to_string(),
                    added_via_api: false,
                    thresholds: thresholds_from_config(c),
                    hosts,
                }
            })
            .collect();
        StaticClusters(views)
    }
}

impl ClusterSource for StaticClusters {
    fn cluster_views(&self) -> Vec<ClusterView> {
        self.0.clone()
    }
}

impl ClusterSource for crate::upstream::ClusterManager {
    fn cluster_views(&self) -> Vec<ClusterView> {
        use std::sync::atomic::Ordering::Relaxed;
        self.clusters()
            .map(|c| {
                let t = c.thresholds();
                let th = |t: &crate::upstream::CircuitBreakerThresholds| ThresholdsView {
                    max_connections: u64::from(t.max_connections),
                    max_pending_requests: u64::from(t.max_pending_requests),
                    max_requests: u64::from(t.max_requests),
                    max_retries: u64::from(t.max_retries),
                };
                let hosts = c
                    .hosts()
                    .hosts
                    .iter()
                    .map(|h| {
                        let s = &h.stats;
                        let [success_rate, local_origin_success_rate] = h.outlier.state().success_rate;
                        let eds = crate::upstream::health_flag::FAILED_EDS_HEALTH | crate::upstream::health_flag::DEGRADED_EDS_HEALTH;
                        HostView {
                            address: h.address,
                            hostname: h.hostname.clone(),
                            weight: h.weight,
                            locality: h.locality.clone(),
                            priority: h.priority,
                            health: h.health,
                            flags: h.health_flags_bits() & !eds,
                            success_rate,
                            local_origin_success_rate,
                            stats: HostStatsView {
                                cx_active: s.cx_active.load(Relaxed),
                                cx_connect_fail: s.cx_connect_fail.load(Relaxed),
                                cx_total: s.cx_total.load(Relaxed),
                                rq_active: s.rq_active.load(Relaxed),
                                rq_error: s.rq_error.load(Relaxed),
                                rq_pending_active: s.rq_pending_active.load(Relaxed),
                                rq_success: s.rq_success.load(Relaxed),
                                rq_timeout: s.rq_timeout.load(Relaxed),
                                rq_total: s.rq_total.load(Relaxed),
                            },
                        }
                    })
                    .collect();
                ClusterView {
                    name: c.name().to_string(),
                    observability_name: c.config().stat_name().to_string(),
                    added_via_api: false,
                    thresholds: [th(&t[0]), th(&t[1])],
                    hosts,
                }
            })
            .collect()
    }

    fn is_initialized(&self) -> bool {
        crate::upstream::ClusterManager::is_initialized(self)
    }

    fn set_healthcheck_failed(&self, failed: bool) {
        crate::upstream::ClusterManager::set_healthcheck_failed(self, failed)
    }
}

/// The host's flags with the EDS ones derived from its configured `health_status`.
fn all_flags(h: &HostView) -> u32 {
    use crate::upstream::health_flag::*;
    h.flags
        | match h.health {
            HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout => FAILED_EDS_HEALTH,
            HealthStatus::Degraded => DEGRADED_EDS_HEALTH,
            HealthStatus::Unknown | HealthStatus::Healthy => 0,
        }
}

/// `healthy`, or the `/`-prefixed flags Envoy prints, in Envoy's order.
pub fn health_flags(h: &HostView) -> String {
    crate::upstream::health_flag::to_string(all_flags(h))
}

/// Envoy prints a double with the shortest representation (`-1`, `50`, `93.75`).
fn rate(v: f64) -> String {
    if v < 0.0 {
        "-1".to_string()
    } else {
        format!("{v}")
    }
}

fn selected<'a>(views: &'a [ClusterView], filter: Option<&'a Regex>) -> impl Iterator<Item = &'a ClusterView> {
    views.iter().filter(move |c| filter.is_none_or(|re| re.is_match(&c.name)))
}

/// `/clusters`: `cluster::key::value` lines.
pub fn text(views: &[ClusterView], filter: Option<&Regex>) -> String {
    let mut out = String::new();
    for c in selected(views, filter) {
        let n = &c.name;
        out.push_str(&format!("{n}::observability_name::{}\n", c.observability_name));
        for (prio, t) in ["default_priority", "high_priority"].iter().zip(c.thresholds.iter()) {
            out.push_str(&format!("{n}::{prio}::max_connections::{}\n", t.max_connections));
            out.push_str(&format!("{n}::{prio}::max_pending_requests::{}\n", t.max_pending_requests));
            out.push_str(&format!("{n}::{prio}::max_requests::{}\n", t.max_requests));
            out.push_str(&format!("{n}::{prio}::max_retries::{}\n", t.max_retries));
        }
        out.push_str(&format!("{n}::added_via_api::{}\n", c.added_via_api));
        for h in &c.hosts {
            let a = h.address;
            let s = &h.stats;
            for (k, v) in [
                ("cx_active", s.cx_active),
                ("cx_connect_fail", s.cx_connect_fail),
                ("cx_total", s.cx_total),
                ("rq_active", s.rq_active),
                ("rq_error", s.rq_error),
                ("rq_pending_active", s.rq_pending_active),
                ("rq_success", s.rq_success),
                ("rq_timeout", s.rq_timeout),
                ("rq_total", s.rq_total),
            ] {
                out.push_str(&format!("{n}::{a}::{k}::{v}\n"));
            }
            out.push_str(&format!("{n}::{a}::hostname::{}\n", h.hostname));
            out.push_str(&format!("{n}::{a}::health_flags::{}\n", health_flags(h)));
            out.push_str(&format!("{n}::{a}::weight::{}\n", h.weight));
            let Locality { region, zone, sub_zone } = &h.locality;
            out.push_str(&format!("{n}::{a}::region::{region}\n"));
            out.push_str(&format!("{n}::{a}::zone::{zone}\n"));
            out.push_str(&format!("{n}::{a}::sub_zone::{sub_zone}\n"));
            out.push_str(&format!("{n}::{a}::canary::false\n"));
            out.push_str(&format!("{n}::{a}::priority::{}\n", h.priority));
            out.push_str(&format!("{n}::{a}::success_rate::{}\n", rate(h.success_rate)));
            out.push_str(&format!("{n}::{a}::local_origin_success_rate::{}\n", rate(h.local_origin_success_rate)));
        }
    }
    out
}

fn stat(name: &str, value: u64, gauge: bool) -> Value {
    let mut m = Map::new();
    if gauge {
        m.insert("type".into(), json!("GAUGE"));
    }
    if value != 0 {
        m.insert("value".into(), json!(value.to_string()));
    }
    m.insert("name".into(), json!(name));
    Value::Object(m)
}

fn thresholds_json(t: &ThresholdsView, high: bool) -> Value {
    let mut m = Map::new();
    if high {
        m.insert("priority".into(), json!("HIGH"));
    }
    m.insert("max_connections".into(), json!(t.max_connections));
    m.insert("max_pending_requests".into(), json!(t.max_pending_requests));
    m.insert("max_requests".into(), json!(t.max_requests));
    m.insert("max_retries".into(), json!(t.max_retries));
    Value::Object(m)
}

/// `/clusters?format=json`: `{"cluster_statuses":[…]}`.
pub fn json(views: &[ClusterView], filter: Option<&Regex>) -> Value {
    let mut statuses = Vec::new();
    for c in selected(views, filter) {
        let mut cm = Map::new();
        cm.insert("name".into(), json!(c.name));
        if c.added_via_api {
            cm.insert("added_via_api".into(), json!(true));
        }
        if !c.hosts.is_empty() {
            let hosts: Vec<Value> = c
                .hosts
                .iter()
                .map(|h| {
                    let s = &h.stats;
                    let mut hm = Map::new();
                    hm.insert(
                        "address".into(),
                        json!({"socket_address": {"address": h.address.ip().to_string(), "port_value": h.address.port()}}),
                    );
                    hm.insert(
                        "stats".into(),
                        json!([
                            stat("cx_connect_fail", s.cx_connect_fail, false),
                            stat("cx_total", s.cx_total, false),
                            stat("rq_error", s.rq_error, false),
                            stat("rq_success", s.rq_success, false),
                            stat("rq_timeout", s.rq_timeout, false),
                            stat("rq_total", s.rq_total, false),
                            stat("cx_active", s.cx_active, true),
                            stat("rq_active", s.rq_active, true),
                            stat("rq_pending_active", s.rq_pending_active, true),
                        ]),
                    );
                    // Envoy prints HostHealthStatus fields in field-number order, the EDS status
                    // third.
                    let mut hs = Map::new();
                    let f = h.flags;
                    let eds = match h.health {
                        HealthStatus::Unknown | HealthStatus::Healthy => "HEALTHY",
                        HealthStatus::Unhealthy => "UNHEALTHY",
                        HealthStatus::Draining => "DRAINING",
                        HealthStatus::Timeout => "TIMEOUT",
                        HealthStatus::Degraded => "DEGRADED",
                    };
                    {
                        use crate::upstream::health_flag::*;
                        for (bit, name) in [
                            (FAILED_ACTIVE_HC, "failed_active_health_check"),
                            (FAILED_OUTLIER_CHECK, "failed_outlier_check"),
                            (0, "eds_health_status"),
                            (DEGRADED_ACTIVE_HC, "failed_active_degraded_check"),
                            (PENDING_DYNAMIC_REMOVAL, "pending_dynamic_removal"),
                            (PENDING_ACTIVE_HC, "pending_active_hc"),
                            (EXCLUDED_VIA_IMMEDIATE_HC_FAIL, "excluded_via_immediate_hc_fail"),
                            (ACTIVE_HC_TIMEOUT, "active_hc_timeout"),
                        ] {
                            if bit == 0 {
                                hs.insert(name.into(), json!(eds));
                            } else if f & bit != 0 {
                                hs.insert(name.into(), json!(true));
                            }
                        }
                    }
                    hm.insert("health_status".into(), Value::Object(hs));
                    if h.success_rate >= 0.0 {
                        hm.insert("success_rate".into(), json!({"value": h.success_rate}));
                    }
                    hm.insert("weight".into(), json!(h.weight));
                    if !h.hostname.is_empty() {
                        hm.insert("hostname".into(), json!(h.hostname));
                    }
                    if h.priority != 0 {
                        hm.insert("priority".into(), json!(h.priority));
                    }
                    if h.local_origin_success_rate >= 0.0 {
                        hm.insert("local_origin_success_rate".into(), json!({"value": h.local_origin_success_rate}));
                    }
                    let mut loc = Map::new();
                    for (k, v) in
                        [("region", &h.locality.region), ("zone", &h.locality.zone), ("sub_zone", &h.locality.sub_zone)]
                    {
                        if !v.is_empty() {
                            loc.insert(k.into(), json!(v));
                        }
                    }
                    hm.insert("locality".into(), Value::Object(loc));
                    Value::Object(hm)
                })
                .collect();
            cm.insert("host_statuses".into(), Value::Array(hosts));
        }
        cm.insert(
            "circuit_breakers".into(),
            json!({"thresholds": [thresholds_json(&c.thresholds[0], false), thresholds_json(&c.thresholds[1], true)]}),
        );
        cm.insert("observability_name".into(), json!(c.observability_name));
        statuses.push(Value::Object(cm));
    }
    json!({ "cluster_statuses": statuses })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn echo() -> ClusterView {
        ClusterView {
            name: "echo".into(),
            observability_name: "echo".into(),
            added_via_api: false,
            thresholds: [ThresholdsView::default(); 2],
            hosts: vec![HostView {
                address: "127.0.0.1:19902".parse().unwrap(),
                hostname: String::new(),
                weight: 1,
                locality: Locality::default(),
                priority: 0,
                health: HealthStatus::Unknown,
                flags: 0,
                success_rate: -1.0,
                local_origin_success_rate: -1.0,
                stats: HostStatsView {
                    cx_active: 1,
                    cx_total: 4,
                    rq_error: 2,
                    rq_success: 18,
                    rq_timeout: 1,
                    rq_total: 20,
                    ..Default::default()
                },
            }],
        }
    }

    fn empty() -> ClusterView {
        ClusterView { name: "empty".into(), observability_name: "empty".into(), hosts: vec![], ..echo() }
    }

    #[test]
    fn text_matches_envoy_sample() {
        let out = text(&[empty(), echo()], None);
        let want = "empty::observability_name::empty
empty::default_priority::max_connections::1024
empty::default_priority::max_pending_requests::1024
empty::default_priority::max_requests::1024
empty::default_priority::max_retries::3
empty::high_priority::max_connections::1024
empty::high_priority::max_pending_requests::1024
empty::high_priority::max_requests::1024
empty::high_priority::max_retries::3
empty::added_via_api::false
echo::observability_name::echo
echo::default_priority::max_connections::1024
echo::default_priority::max_pending_requests::1024
echo::default_priority::max_requests::1024
echo::default_priority::max_retries::3
echo::high_priority::max_connections::1024
echo::high_priority::max_pending_requests::1024
echo::high_priority::max_requests::1024
echo::high_priority::max_retries::3
echo::added_via_api::false
echo::127.0.0.1:19902::cx_active::1
echo::127.0.0.1:19902::cx_connect_fail::0
echo::127.0.0.1:19902::cx_total::4
echo::127.0.0.1:19902::rq_active::0
echo::127.0.0.1:19902::rq_error::2
echo::127.0.0.1:19902::rq_pending_active::0
echo::127.0.0.1:19902::rq_success::18
echo::127.0.0.1:19902::rq_timeout::1
echo::127.0.0.1:19902::rq_total::20
echo::127.0.0.1:19902::hostname::
echo::127.0.0.1:19902::health_flags::healthy
echo::127.0.0.1:19902::weight::1
echo::127.0.0.1:19902::region::
echo::127.0.0.1:19902::zone::
echo::127.0.0.1:19902::sub_zone::
echo::127.0.0.1:19902::canary::false
echo::127.0.0.1:19902::priority::0
echo::127.0.0.1:19902::success_rate::-1
echo::127.0.0.1:19902::local_origin_success_rate::-1
";
        assert_eq!(out, want);
        let re = Regex::new("^emp").unwrap();
        assert!(text(&[empty(), echo()], Some(&re)).lines().all(|l| l.starts_with("empty::")));
    }

    #[test]
    fn json_matches_envoy_sample() {
        let out = super::super::json::pretty(&json(&[empty(), echo()], None));
        let want = r#"{
 "cluster_statuses": [
  {
   "name": "empty",
   "circuit_breakers": {
    "thresholds": [
     {
      "max_connections": 1024,
      "max_pending_requests": 1024,
      "max_requests": 1024,
      "max_retries": 3
     },
     {
      "priority": "HIGH",
      "max_connections": 1024,
      "max_pending_requests": 1024,
      "max_requests": 1024,
      "max_retries": 3
     }
    ]
   },
   "observability_name": "empty"
  },
  {
   "name": "echo",
   "host_statuses": [
    {
     "address": {
      "socket_address": {
       "address": "127.0.0.1",
       "port_value": 19902
      }
     },
     "stats": [
      {
       "name": "cx_connect_fail"
      },
      {
       "value": "4",
       "name": "cx_total"
      },
      {
       "value": "2",
       "name": "rq_error"
      },
      {
       "value": "18",
       "name": "rq_success"
      },
      {
       "value": "1",
       "name": "rq_timeout"
      },
      {
       "value": "20",
       "name": "rq_total"
      },
      {
       "type": "GAUGE",
       "value": "1",
       "name": "cx_active"
      },
      {
       "type": "GAUGE",
       "name": "rq_active"
      },
      {
       "type": "GAUGE",
       "name": "rq_pending_active"
      }
     ],
     "health_status": {
      "eds_health_status": "HEALTHY"
     },
     "weight": 1,
     "locality": {}
    }
   ],
   "circuit_breakers": {
    "thresholds": [
     {
      "max_connections": 1024,
      "max_pending_requests": 1024,
      "max_requests": 1024,
      "max_retries": 3
     },
     {
      "priority": "HIGH",
      "max_connections": 1024,
      "max_pending_requests": 1024,
      "max_requests": 1024,
      "max_retries": 3
     }
    ]
   },
   "observability_name": "echo"
  }
 ]
}
"#;
        assert_eq!(out, want);
    }

    #[test]
    fn health_flags_and_thresholds_from_config() {
        let mut h = echo().hosts.remove(0);
        assert_eq!(health_flags(&h), "healthy");
        h.flags = crate::upstream::health_flag::FAILED_ACTIVE_HC;
        assert_eq!(health_flags(&h), "/failed_active_hc");
        h.flags |= crate::upstream::health_flag::FAILED_OUTLIER_CHECK | crate::upstream::health_flag::PENDING_DYNAMIC_REMOVAL;
        h.health = HealthStatus::Degraded;
        assert_eq!(health_flags(&h), "/failed_active_hc/failed_outlier_check/degraded_eds_health/pending_dynamic_removal");
        assert_eq!(rate(-1.0), "-1");
        assert_eq!(rate(50.0), "50");
        assert_eq!(rate(93.75), "93.75");
        let c: sluice_config::cluster::Cluster = serde_json::from_value(serde_json::json!({
            "name": "c",
            "circuit_breakers": {"thresholds": [{"priority": "HIGH", "max_requests": 7}, {"max_retries": 9}]}
        }))
        .unwrap();
        let t = thresholds_from_config(&c);
        assert_eq!(t[0].max_retries, 9);
        assert_eq!(t[0].max_connections, 1024);
        assert_eq!(t[1].max_requests, 7);
    }
}
