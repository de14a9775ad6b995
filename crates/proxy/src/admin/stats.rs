//! `/stats` (text and JSON) and `/stats/prometheus`, from a [`Store`]: pure functions.
//!
//! Histograms show their state at the last stats flush (interval and cumulative), as Envoy does.

use regex::Regex;
use serde_json::{json, Map, Value};

use super::json;
use crate::stats::{HistogramStatistics, Metric, Store, PROMETHEUS_BUCKETS, QUANTILES};

/// `?type=`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatsType {
    #[default]
    All,
    Counters,
    Gauges,
    Histograms,
    TextReadouts,
}

impl StatsType {
    pub fn parse(s: &str) -> Option<StatsType> {
        Some(match s {
            "All" => StatsType::All,
            "Counters" => StatsType::Counters,
            "Gauges" => StatsType::Gauges,
            "Histograms" => StatsType::Histograms,
            "TextReadouts" => StatsType::TextReadouts,
            _ => return None,
        })
    }
}

/// The selection parameters shared by every stats format.
#[derive(Clone, Debug, Default)]
pub struct StatsParams {
    /// RE2-like, partial match.
    pub filter: Option<Regex>,
    pub invert_filter: bool,
    pub used_only: bool,
    pub kind: StatsType,
}

impl StatsParams {
    fn name_ok(&self, name: &str) -> bool {
        match &self.filter {
            None => true,
            Some(re) => re.is_match(name) != self.invert_filter,
        }
    }
}

enum Row {
    Counter(u64),
    Gauge(i64),
    Histogram(Box<HistogramStatistics>),
}

/// The selected metrics, sorted by name.
fn select(store: &Store, p: &StatsParams) -> Vec<(String, Row)> {
    let mut out = Vec::new();
    for (name, m) in store.all() {
        if !p.name_ok(&name) {
            continue;
        }
        let row = match m {
            Metric::Counter(c) => {
                if !matches!(p.kind, StatsType::All | StatsType::Counters) || (p.used_only && !c.used()) {
                    continue;
                }
                Row::Counter(c.value())
            }
            Metric::Gauge(g) => {
                if !matches!(p.kind, StatsType::All | StatsType::Gauges) || (p.used_only && !g.used()) {
                    continue;
                }
                Row::Gauge(g.value())
            }
            Metric::Histogram(h) => {
                if !matches!(p.kind, StatsType::All | StatsType::Histograms) {
                    continue;
                }
                let st = h.statistics();
                if p.used_only && !st.used {
                    continue;
                }
                Row::Histogram(Box::new(st))
            }
        };
        out.push((name, row));
    }
    out
}

/// `1.05`, `0`, `nan`, `1033.3333333333333` — Envoy's quantile numbers.
fn quantile_number(f: f64) -> String {
    if f.is_nan() {
        "nan".to_string()
    } else {
        json::number(f)
    }
}

fn quantile_label(q: f64) -> String {
    json::number(q * 100.0)
}

/// `P0(interval,cumulative) … P100(…)` or `No recorded values`.
pub fn histogram_summary(st: &HistogramStatistics) -> String {
    if !st.used {
        return "No recorded values".to_string();
    }
    let mut parts = Vec::with_capacity(QUANTILES.len());
    for (i, q) in QUANTILES.iter().enumerate() {
        parts.push(format!(
            "P{}({},{})",
            quantile_label(*q),
            quantile_number(st.interval[i]),
            quantile_number(st.cumulative[i])
        ));
    }
    parts.join(" ")
}

/// `/stats`: `name: value` lines for counters and gauges (sorted together), then histograms.
pub fn text(store: &Store, p: &StatsParams) -> String {
    let rows = select(store, p);
    let mut out = String::new();
    for (name, row) in &rows {
        match row {
            Row::Counter(v) => out.push_str(&format!("{name}: {v}\n")),
            Row::Gauge(v) => out.push_str(&format!("{name}: {v}\n")),
            Row::Histogram(_) => {}
        }
    }
    for (name, row) in &rows {
        if let Row::Histogram(st) = row {
            out.push_str(&format!("{name}: {}\n", histogram_summary(st)));
        }
    }
    out
}

/// `/stats?format=json`: one line, `{"stats":[{"name","value"}…,{"histograms":{…}}]}`.
pub fn json(store: &Store, p: &StatsParams) -> String {
    let rows = select(store, p);
    let mut stats = Vec::new();
    for (name, row) in &rows {
        match row {
            Row::Counter(v) => stats.push(json!({"name": name, "value": v})),
            Row::Gauge(v) => stats.push(json!({"name": name, "value": v})),
            Row::Histogram(_) => {}
        }
    }
    let mut computed = Vec::new();
    for (name, row) in &rows {
        if let Row::Histogram(st) = row {
            let values: Vec<Value> = (0..QUANTILES.len())
                .map(|i| {
                    let mut m = Map::new();
                    m.insert("cumulative".into(), float(st.cumulative[i]));
                    m.insert("interval".into(), float(st.interval[i]));
                    Value::Object(m)
                })
                .collect();
            computed.push(json!({"name": name, "values": values}));
        }
    }
    if !computed.is_empty() {
        let supported: Vec<Value> = QUANTILES.iter().map(|q| float(q * 100.0)).collect();
        stats.push(json!({"histograms": {"supported_quantiles": supported, "computed_quantiles": computed}}));
    }
    json::compact(&json!({ "stats": stats }))
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------
// Prometheus

/// Envoy's default tag extraction: the metric name without the tag values, and the tags in the
/// order Envoy emits them (the tags found anywhere in the name first, then those found from the
/// name's first segment).
pub fn extract_tags(name: &str) -> (String, Vec<(&'static str, String)>) {
    let mut n = name.to_string();
    let mut tags: Vec<(&'static str, String)> = Vec::new();

    // `…_rq_<code>` and `…_rq_<N>xx` at the end.
    if let Some(pos) = n.rfind("_rq_") {
        let tail = &n[pos + 4..];
        let b = tail.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_digit) {
            tags.push(("envoy_response_code", tail.to_string()));
            n.truncate(pos + 3);
        } else if b.len() == 3 && b[0].is_ascii_digit() && &tail[1..] == "xx" {
            tags.push(("envoy_response_code_class", tail[..1].to_string()));
            n = format!("{}xx", &n[..pos + 4]);
        }
    }
    // `….worker_<n>.…` (listeners, server watchdogs, thread-local cluster manager).
    {
        let segs: Vec<&str> = n.split('.').collect();
        if let Some(i) = segs.iter().enumerate().skip(1).find_map(|(i, s)| {
            let id = s.strip_prefix("worker_")?;
            (!id.is_empty() && id.bytes().all(|c| c.is_ascii_digit()) && i + 1 < segs.len()).then_some(i)
        }) {
            tags.push(("envoy_worker_id", segs[i]["worker_".len()..].to_string()));
            let rest = segs[i + 1..].join(".");
            n = format!("{}.worker_{}", segs[..i].join("."), rest);
        }
    }
    // TLS details.
    for (marker, tag, to_end) in [
        (".ssl.ciphers.", "envoy_ssl_cipher", true),
        (".ssl.curves.", "envoy_ssl_curve", true),
        (".ssl.sigalgs.", "envoy_ssl_sigalg", true),
        (".ssl.versions.", "envoy_ssl_version", true),
        (".ssl.certificate.", "envoy_tls_certificate", false),
    ] {
        if let Some(pos) = n.find(marker) {
            let start = pos + marker.len();
            let rest = n[start..].to_string();
            if to_end {
                if !rest.is_empty() {
                    tags.push((tag, rest));
                    n.truncate(start - 1);
                }
            } else if let Some(dot) = rest.find('.') {
                tags.push((tag, rest[..dot].to_string()));
                n = format!("{}{}", &n[..start], &rest[dot + 1..]);
            }
            break;
        }
    }

    // Tags found from the first segment.
    let first = n.split('.').next().unwrap_or("").to_string();
    match first.as_str() {
        "cluster" => {
            if let Some((c, rest)) = split_segment(&n["cluster.".len()..]) {
                tags.push(("envoy_cluster_name", c.to_string()));
                n = format!("cluster.{rest}");
            }
        }
        "http" => {
            if let Some((p, rest)) = split_segment(&n["http.".len()..]) {
                tags.push(("envoy_http_conn_manager_prefix", p.to_string()));
                n = format!("http.{rest}");
            }
        }
        "tcp" => {
            if let Some((p, rest)) = split_segment(&n["tcp.".len()..]) {
                tags.push(("envoy_tcp_prefix", p.to_string()));
                n = format!("tcp.{rest}");
            }
        }
        "vhost" => {
            if let Some((v, rest)) = split_segment(&n["vhost.".len()..]) {
                tags.push(("envoy_virtual_host", v.to_string()));
                let mut rest = rest.to_string();
                if let Some(r) = rest.strip_prefix("vcluster.") {
                    if let Some((vc, r2)) = split_segment(r) {
                        tags.push(("envoy_virtual_cluster", vc.to_string()));
                        rest = format!("vcluster.{r2}");
                    }
                }
                n = format!("vhost.{rest}");
            }
        }
        "listener" => {
            // listener.<…>.http.<prefix>.…
            if let Some(pos) = n.find(".http.") {
                let start = pos + ".http.".len();
                if let Some((p, _)) = split_segment(&n[start..]) {
                    let p = p.to_string();
                    n = format!("{}{}", &n[..start], &n[start + p.len() + 1..]);
                    tags.push(("envoy_http_conn_manager_prefix", p));
                }
            }
            // listener.<address>.…
            let rest = &n["listener.".len()..];
            if let Some(len) = listener_address_len(rest) {
                tags.push(("envoy_listener_address", rest[..len].to_string()));
                n = format!("listener.{}", &rest[len + 1..]);
            }
        }
        _ => {}
    }
    (n, tags)
}

/// `abc.rest` → (`abc`, `rest`), when both are present.
fn split_segment(s: &str) -> Option<(&str, &str)> {
    let dot = s.find('.')?;
    (dot > 0 && dot + 1 < s.len()).then(|| (&s[..dot], &s[dot + 1..]))
}

/// Envoy's listener address tag: `[_.0-9]*` (IPv4 `127.0.0.1_8080`) or `[_\[\]a-fA-F0-9]*` (IPv6),
/// followed by a dot; the longest such prefix.
fn listener_address_len(rest: &str) -> Option<usize> {
    let classes: [fn(u8) -> bool; 2] = [
        |c| c == b'_' || c == b'.' || c.is_ascii_digit(),
        |c| c == b'_' || c == b'[' || c == b']' || c.is_ascii_hexdigit(),
    ];
    for class in classes {
        let b = rest.as_bytes();
        let mut run = 0;
        while run < b.len() && class(b[run]) {
            run += 1;
        }
        // The longest j ≤ run with b[j] == '.' (the dot itself may be inside the run).
        let mut j = run.min(b.len().saturating_sub(1));
        loop {
            if j < b.len() && b[j] == b'.' && j > 0 && j + 1 < b.len() {
                return Some(j);
            }
            if j == 0 {
                break;
            }
            j -= 1;
        }
    }
    None
}

/// `envoy_` + the name with every character outside `[a-zA-Z0-9_]` replaced by `_`.
pub fn prometheus_name(tag_extracted: &str) -> String {
    let mut out = String::from("envoy_");
    for c in tag_extracted.chars() {
        out.push(if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' });
    }
    out
}

fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(tags: &[(&'static str, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> =
        tags.iter().map(|(k, v)| format!("{k}=\"{}\"", label_value(v))).collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    format!("{{{}}}", parts.join(","))
}

/// `%.32g` of a double, as Envoy prints histogram sums.
pub fn g32(f: f64) -> String {
    if f == 0.0 {
        return "0".to_string();
    }
    if !f.is_finite() {
        return if f.is_nan() { "nan".into() } else if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let sci = format!("{:.31e}", f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if !(-4..32).contains(&exp) {
        let mut m = format!("{}.{}", &digits[..1], &digits[1..]);
        while m.ends_with('0') {
            m.pop();
        }
        if m.ends_with('.') {
            m.pop();
        }
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{}{m}e{sign}{:02}", if negative { "-" } else { "" }, exp.abs());
    }
    let mut s = if exp >= 0 {
        let point = exp as usize + 1;
        format!("{}.{}", &digits[..point], &digits[point..])
    } else {
        format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
    };
    while s.ends_with('0') {
        s.pop();
    }
    if s.ends_with('.') {
        s.pop();
    }
    format!("{}{s}", if negative { "-" } else { "" })
}

fn le_label(b: f64) -> String {
    json::number(b)
}

/// `/stats/prometheus`: counters, then gauges, then histograms; families sorted by name, each
/// with a `# TYPE` line; the metrics of a family in stat-name order.
pub fn prometheus(store: &Store, p: &StatsParams) -> String {
    use std::collections::BTreeMap;
    type Family = Vec<(Vec<(&'static str, String)>, Row)>;
    let mut families: [BTreeMap<String, Family>; 3] = Default::default();
    for (name, row) in select(store, p) {
        let (extracted, tags) = extract_tags(&name);
        let slot = match row {
            Row::Counter(_) => 0,
            Row::Gauge(_) => 1,
            Row::Histogram(_) => 2,
        };
        families[slot].entry(prometheus_name(&extracted)).or_default().push((tags, row));
    }
    let mut out = String::new();
    for (slot, fams) in families.iter().enumerate() {
        let kind = ["counter", "gauge", "histogram"][slot];
        for (fam, metrics) in fams {
            out.push_str(&format!("# TYPE {fam} {kind}\n"));
            for (tags, row) in metrics {
                match row {
                    Row::Counter(v) => out.push_str(&format!("{fam}{} {v}\n", labels(tags, None))),
                    Row::Gauge(v) => out.push_str(&format!("{fam}{} {v}\n", labels(tags, None))),
                    Row::Histogram(st) => {
                        for (i, b) in PROMETHEUS_BUCKETS.iter().enumerate() {
                            out.push_str(&format!(
                                "{fam}_bucket{} {}\n",
                                labels(tags, Some(("le", &le_label(*b)))),
                                st.buckets[i]
                            ));
                        }
                        out.push_str(&format!(
                            "{fam}_bucket{} {}\n",
                            labels(tags, Some(("le", "+Inf"))),
                            st.buckets[PROMETHEUS_BUCKETS.len()]
                        ));
                        out.push_str(&format!("{fam}_sum{} {}\n", labels(tags, None), g32(st.sum)));
                        out.push_str(&format!("{fam}_count{} {}\n", labels(tags, None), st.count));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prom_line(name: &str) -> String {
        let (n, tags) = extract_tags(name);
        format!("{}{}", prometheus_name(&n), labels(&tags, None))
    }

    /// Stat name → what Envoy 1.40 printed for it (observed on the real binary).
    #[test]
    fn tag_extraction_matches_envoy() {
        let table = [
            ("cluster.echo.upstream_rq_total", r#"envoy_cluster_upstream_rq_total{envoy_cluster_name="echo"}"#),
            ("cluster.service1-envoy.upstream_rq_200", r#"envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="service1-envoy"}"#),
            ("cluster.echo.upstream_rq_5xx", r#"envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="echo"}"#),
            ("cluster.echo.external.upstream_rq_503", r#"envoy_cluster_external_upstream_rq{envoy_response_code="503",envoy_cluster_name="echo"}"#),
            ("cluster.echo.internal.upstream_rq_2xx", r#"envoy_cluster_internal_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="echo"}"#),
            ("cluster.ext_authz-opa-service.upstream_rq_completed", r#"envoy_cluster_upstream_rq_completed{envoy_cluster_name="ext_authz-opa-service"}"#),
            ("cluster.service1-envoy.ext_authz.error", r#"envoy_cluster_ext_authz_error{envoy_cluster_name="service1-envoy"}"#),
            ("cluster.echo.circuit_breakers.default.cx_open", r#"envoy_cluster_circuit_breakers_default_cx_open{envoy_cluster_name="echo"}"#),
            ("cluster.echo.default.total_match_count", r#"envoy_cluster_default_total_match_count{envoy_cluster_name="echo"}"#),
            ("cluster_manager.cluster_added", "envoy_cluster_manager_cluster_added{}"),
            ("http.ingress_http.downstream_rq_2xx", r#"envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="ingress_http"}"#),
            ("http.ingress_http.downstream_rq_total", r#"envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"}"#),
            ("http.ingress_http.ext_authz.denied", r#"envoy_http_ext_authz_denied{envoy_http_conn_manager_prefix="ingress_http"}"#),
            ("http.admin.downstream_cx_total", r#"envoy_http_downstream_cx_total{envoy_http_conn_manager_prefix="admin"}"#),
            ("http.async-client.no_cluster", r#"envoy_http_no_cluster{envoy_http_conn_manager_prefix="async-client"}"#),
            ("listener.127.0.0.1_29080.downstream_cx_total", r#"envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_29080"}"#),
            ("listener.127.0.0.1_29080.http.ingress_http.downstream_rq_4xx", r#"envoy_listener_http_downstream_rq_xx{envoy_response_code_class="4",envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="127.0.0.1_29080"}"#),
            ("listener.127.0.0.1_29081.http.direct.downstream_rq_completed", r#"envoy_listener_http_downstream_rq_completed{envoy_http_conn_manager_prefix="direct",envoy_listener_address="127.0.0.1_29081"}"#),
            ("listener.127.0.0.1_29080.worker_1.downstream_cx_total", r#"envoy_listener_worker_downstream_cx_total{envoy_worker_id="1",envoy_listener_address="127.0.0.1_29080"}"#),
            ("listener.127.0.0.1_29443.ssl.ciphers.TLS_AES_256_GCM_SHA384", r#"envoy_listener_ssl_ciphers{envoy_ssl_cipher="TLS_AES_256_GCM_SHA384",envoy_listener_address="127.0.0.1_29443"}"#),
            ("listener.127.0.0.1_29443.ssl.curves.X25519", r#"envoy_listener_ssl_curves{envoy_ssl_curve="X25519",envoy_listener_address="127.0.0.1_29443"}"#),
            ("listener.127.0.0.1_29443.ssl.versions.TLSv1.3", r#"envoy_listener_ssl_versions{envoy_ssl_version="TLSv1.3",envoy_listener_address="127.0.0.1_29443"}"#),
            ("listener.127.0.0.1_29443.ssl.certificate.unnamed_cert_e3b0c442.expiration_unix_time_seconds", r#"envoy_listener_ssl_certificate_expiration_unix_time_seconds{envoy_tls_certificate="unnamed_cert_e3b0c442",envoy_listener_address="127.0.0.1_29443"}"#),
            ("listener.127.0.0.1_29443.ssl.no_certificate", r#"envoy_listener_ssl_no_certificate{envoy_listener_address="127.0.0.1_29443"}"#),
            ("listener.127.0.0.1_29443.server_ssl_socket_factory.downstream_context_secrets_not_ready", r#"envoy_listener_server_ssl_socket_factory_downstream_context_secrets_not_ready{envoy_listener_address="127.0.0.1_29443"}"#),
            ("listener.admin.downstream_cx_total", "envoy_listener_admin_downstream_cx_total{}"),
            ("listener.admin.main_thread.downstream_cx_total", "envoy_listener_admin_main_thread_downstream_cx_total{}"),
            ("listener.admin.http.admin.downstream_rq_2xx", r#"envoy_listener_admin_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="admin"}"#),
            ("listener.admin.http.admin.downstream_rq_completed", r#"envoy_listener_admin_http_downstream_rq_completed{envoy_http_conn_manager_prefix="admin"}"#),
            ("listener.[__1]_8080.downstream_cx_total", r#"envoy_listener_downstream_cx_total{envoy_listener_address="[__1]_8080"}"#),
            ("listener_manager.workers_started", "envoy_listener_manager_workers_started{}"),
            ("server.state", "envoy_server_state{}"),
            ("server.worker_0.watchdog_miss", r#"envoy_server_worker_watchdog_miss{envoy_worker_id="0"}"#),
            ("server.main_thread.watchdog_miss", "envoy_server_main_thread_watchdog_miss{}"),
            ("thread_local_cluster_manager.worker_0.clusters_inflated", r#"envoy_thread_local_cluster_manager_worker_clusters_inflated{envoy_worker_id="0"}"#),
            ("envoy.overload_actions.reset_high_memory_stream.count", "envoy_envoy_overload_actions_reset_high_memory_stream_count{}"),
            ("workers.watchdog_miss", "envoy_workers_watchdog_miss{}"),
            ("vhost.vh.vcluster.other.upstream_rq_retry", r#"envoy_vhost_vcluster_upstream_rq_retry{envoy_virtual_host="vh",envoy_virtual_cluster="other"}"#),
        ];
        for (name, want) in table {
            assert_eq!(prom_line(name), want, "for {name}");
        }
    }

    #[test]
    fn g32_matches_printf() {
        assert_eq!(g32(23.678513356562135), "23.678513356562135072636010590941");
        assert_eq!(g32(2.0 * 28.0 * 29.0 / 57.0), "28.491228070175438347177987452596");
        assert_eq!(g32(2.0 * 1.0 * 1.1 / 2.1 * 3.0), "3.1428571428571432377907513000537");
        assert_eq!(g32(0.0), "0");
        assert_eq!(g32(2.1), "2.1000000000000000888178419700125");
        assert_eq!(g32(1e40), "1.0000000000000000303786028427004e+40");
        assert_eq!(g32(123456.0), "123456");
        assert_eq!(g32(17.5), "17.5");
        assert_eq!(g32(1e-7), "9.9999999999999995474811182588626e-08");
    }

    fn store() -> Store {
        let s = Store::new();
        s.gauge("server.state").set(0);
        s.counter("cluster.echo.upstream_rq_200").add(2);
        s.counter("cluster.echo.upstream_rq_503");
        s.gauge("server.live").set(1);
        s.histogram("server.initialization_time_ms").record(28.0);
        s.histogram("cluster.echo.upstream_cx_connect_ms");
        s.flush_histograms();
        s
    }

    #[test]
    fn text_sorts_and_filters() {
        let s = store();
        let all = text(&s, &StatsParams::default());
        assert_eq!(
            all,
            "cluster.echo.upstream_rq_200: 2\ncluster.echo.upstream_rq_503: 0\nserver.live: 1\nserver.state: 0\n\
             cluster.echo.upstream_cx_connect_ms: No recorded values\n\
             server.initialization_time_ms: P0(28.5,28.5) P25(28.5,28.5) P50(28.5,28.5) P75(28.5,28.5) P90(28.5,28.5) P95(28.5,28.5) P99(28.5,28.5) P99.5(28.5,28.5) P99.9(28.5,28.5) P100(28.5,28.5)\n"
        );
        let p = StatsParams { filter: Some(Regex::new("server.state").unwrap()), ..Default::default() };
        assert_eq!(text(&s, &p), "server.state: 0\n");
        let used = StatsParams { used_only: true, ..Default::default() };
        let t = text(&s, &used);
        assert!(!t.contains("upstream_rq_503") && !t.contains("connect_ms") && t.contains("upstream_rq_200: 2"));
        let counters = StatsParams { kind: StatsType::Counters, ..Default::default() };
        assert_eq!(text(&s, &counters), "cluster.echo.upstream_rq_200: 2\ncluster.echo.upstream_rq_503: 0\n");
        let inv = StatsParams {
            filter: Some(Regex::new("^cluster|init|state").unwrap()),
            invert_filter: true,
            ..Default::default()
        };
        assert_eq!(text(&s, &inv), "server.live: 1\n");
        // After another flush the interval is empty: nan.
        s.flush_histograms();
        let hp = StatsParams { filter: Some(Regex::new("initialization").unwrap()), ..Default::default() };
        assert!(text(&s, &hp).starts_with("server.initialization_time_ms: P0(nan,28.5) P25(nan,28.5)"));
    }

    #[test]
    fn json_shape_matches_envoy() {
        let s = store();
        let p = StatsParams { filter: Some(Regex::new("server").unwrap()), ..Default::default() };
        let j = json(&s, &p);
        let q = r#"{"cumulative":28.5,"interval":28.5}"#;
        let want = format!(
            r#"{{"stats":[{{"name":"server.live","value":1}},{{"name":"server.state","value":0}},{{"histograms":{{"supported_quantiles":[0,25,50,75,90,95,99,99.5,99.9,100],"computed_quantiles":[{{"name":"server.initialization_time_ms","values":[{}]}}]}}}}]}}"#,
            [q; 10].join(",")
        );
        assert_eq!(j, want);
        let p = StatsParams { filter: Some(Regex::new("connect_ms").unwrap()), ..Default::default() };
        assert!(json(&s, &p).contains(r#"{"cumulative":null,"interval":null}"#));
        let p = StatsParams { filter: Some(Regex::new("server.state").unwrap()), ..Default::default() };
        assert_eq!(json(&s, &p), r#"{"stats":[{"name":"server.state","value":0}]}"#);
    }

    #[test]
    fn prometheus_output_matches_envoy() {
        let s = store();
        let out = prometheus(&s, &StatsParams::default());
        let mut want = String::from(
            "# TYPE envoy_cluster_upstream_rq counter\n\
             envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"echo\"} 2\n\
             envoy_cluster_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"echo\"} 0\n\
             # TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n\
             # TYPE envoy_server_state gauge\nenvoy_server_state{} 0\n\
             # TYPE envoy_cluster_upstream_cx_connect_ms histogram\n",
        );
        for le in ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf"] {
            want.push_str(&format!("envoy_cluster_upstream_cx_connect_ms_bucket{{envoy_cluster_name=\"echo\",le=\"{le}\"}} 0\n"));
        }
        want.push_str("envoy_cluster_upstream_cx_connect_ms_sum{envoy_cluster_name=\"echo\"} 0\n");
        want.push_str("envoy_cluster_upstream_cx_connect_ms_count{envoy_cluster_name=\"echo\"} 0\n");
        want.push_str("# TYPE envoy_server_initialization_time_ms histogram\n");
        for (le, n) in [("0.5", 0), ("1", 0), ("5", 0), ("10", 0), ("25", 0), ("50", 1)] {
            want.push_str(&format!("envoy_server_initialization_time_ms_bucket{{le=\"{le}\"}} {n}\n"));
        }
        assert!(out.starts_with(&want), "{out}");
        assert!(out.contains("envoy_server_initialization_time_ms_bucket{le=\"+Inf\"} 1\n"));
        assert!(out.ends_with(
            "envoy_server_initialization_time_ms_sum{} 28.491228070175438347177987452596\n\
             envoy_server_initialization_time_ms_count{} 1\n"
        ));
        let p = StatsParams { filter: Some(Regex::new("server.state").unwrap()), ..Default::default() };
        assert_eq!(prometheus(&s, &p), "# TYPE envoy_server_state gauge\nenvoy_server_state{} 0\n");
    }
}
