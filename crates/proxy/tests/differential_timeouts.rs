//! The connection manager's timeouts and connection limits, side by side with real Envoy 1.40
//! on the same config: `request_headers_timeout`, `request_timeout`, `max_stream_duration`
//! (before and after the response started), `max_connection_duration` with `drain_timeout`,
//! and on HTTP/2 `idle_timeout`, `max_requests_per_connection`, `max_headers_count` and
//! `headers_with_underscores_action`. Compared: the bytes each client reads (dates masked),
//! when the connection ends (coarse phases, not timings), the stats, and access-log lines
//! (including the codec's own replies).
//!
//! Needs `SLUICE_ENVOY` (skipped without it) and the `sluice` binary (`SLUICE_BIN`).

mod diff_proxy;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use diff_proxy::{envoy, sluice, Proxy};
use sluice_testkit::echo::EchoUpstream;
use sluice_testkit::env::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONFIG: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: @ADMIN@}}
static_resources:
  clusters:
  - name: echo
    connect_timeout: 1s
    load_assignment: {cluster_name: echo, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @ECHO@}}}}]}]}
  - name: drip
    connect_timeout: 1s
    load_assignment: {cluster_name: drip, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @DRIP@}}}}]}]}
  listeners:
  - name: timeouts
    address: {socket_address: {address: 127.0.0.1, port_value: @LISTEN@}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: timeouts
          request_headers_timeout: 0.8s
          request_timeout: 1.5s
          drain_timeout: 1s
          common_http_protocol_options:
            max_stream_duration: 2.5s
            max_connection_duration: 3.5s
            max_headers_count: 20
            headers_with_underscores_action: REJECT_REQUEST
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/timeouts.log
              log_format: {text_format_source: {inline_string: "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_SENT%\n"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/drip"}
                route: {cluster: drip, timeout: 0s}
              - match: {prefix: "/stall"}
                route: {cluster: drip, timeout: 0s, idle_timeout: 1s}
              - match: {prefix: "/ptidle"}
                route:
                  cluster: echo
                  timeout: 0s
                  prefix_rewrite: "/slow/2000"
                  retry_policy: {retry_on: "5xx", num_retries: 1, per_try_idle_timeout: 0.4s}
              - match: {prefix: "/"}
                route: {cluster: echo, timeout: 0s}
  - name: h2limits
    address: {socket_address: {address: 127.0.0.1, port_value: @LISTEN2@}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: h2limits
          common_http_protocol_options: {idle_timeout: 1s, max_requests_per_connection: 2}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                direct_response: {status: 200, body: {inline_string: "ok"}}
"#;

/// An upstream that answers with a chunked body, one chunk every 200 ms, 20 chunks; on a path
/// with `stall`, two chunks, then nothing for 3 s.
async fn drip_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await.is_err() {
                    return;
                }
                let stall = String::from_utf8_lossy(&buf).contains("stall");
                for i in 0..20 {
                    if stall && i == 2 {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if s.write_all(format!("6\r\ndrip{i:02}\r\n").as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            });
        }
    });
    port
}

fn mask(s: &str) -> String {
    let date = regex::Regex::new(r"date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT").unwrap();
    let server = regex::Regex::new(r"(?m)^x-envoy-upstream-service-time: \d+\r\n").unwrap();
    server.replace_all(&date.replace_all(s, "date: <date>"), "").into_owned()
}

/// What a client reads on one connection.
struct Read {
    text: String,
    /// The connection ended (EOF or reset) within the wait.
    ended: bool,
    /// Seconds from the start of the read until the connection ended.
    ended_after: Option<f64>,
}

/// Read until the connection ends, or until `wait` passed without a byte.
async fn read_all(s: &mut TcpStream, wait: Duration) -> Read {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Read { text: mask(&String::from_utf8_lossy(&out)), ended: true, ended_after: Some(start.elapsed().as_secs_f64()) }
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return Read { text: mask(&String::from_utf8_lossy(&out)), ended: false, ended_after: None },
        }
    }
}

/// Read one response with a `content-length` body.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return mask(&String::from_utf8_lossy(&out));
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return format!("{}[ended]", mask(&String::from_utf8_lossy(&out))),
        }
    }
}

/// The phase in which a connection ended, in the units of the config's timers.
fn phase(r: &Read, edges: &[(f64, &'static str)], last: &'static str) -> &'static str {
    match r.ended_after {
        None => "still open",
        Some(t) => edges.iter().find(|(edge, _)| t < *edge).map_or(last, |(_, name)| *name),
    }
}

/// Everything one proxy did, as text, in a fixed order.
async fn scenario(listen: u16, listen2: u16) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    let connect = || async move { TcpStream::connect(("127.0.0.1", listen)).await.unwrap() };

    // The time-bound scenarios run at once; each has its own connection.
    let header_timeout = async {
        let mut s = connect().await;
        s.write_all(b"GET /slow/0 HTTP/1.1\r\nHost: t\r\n").await.unwrap();
        let r = read_all(&mut s, Duration::from_secs(5)).await;
        format!("{}\n[{}]", r.text, phase(&r, &[(0.5, "before the header timeout"), (2.0, "at the header timeout")], "later"))
    };
    let request_timeout = async {
        let mut s = connect().await;
        s.write_all(b"POST /slow/0 HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc").await.unwrap();
        let r = read_all(&mut s, Duration::from_secs(5)).await;
        format!("{}\n[{}]", r.text, phase(&r, &[(1.0, "before the request timeout"), (2.4, "at the request timeout")], "later"))
    };
    let stream_duration = async {
        let mut s = connect().await;
        s.write_all(b"GET /slow/4000 HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let first = read_response(&mut s).await;
        // The connection is kept: a second request on it.
        s.write_all(b"GET /slow/0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
        let second = read_all(&mut s, Duration::from_secs(5)).await;
        let body_start = second.text.find("\r\n\r\n").map_or(second.text.len(), |i| i + 4);
        format!("{first}\n--- then\n{}", &second.text[..body_start])
    };
    let stream_cut = async {
        let mut s = connect().await;
        s.write_all(b"GET /drip HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let r = read_all(&mut s, Duration::from_secs(6)).await;
        let head_end = r.text.find("\r\n\r\n").map_or(r.text.len(), |i| i + 4);
        // How many chunks came before the cut depends on timing; the head, that the body was
        // cut (no last chunk) and that the connection ended do not.
        format!(
            "{}[body complete: {}] [connection ended: {}]",
            &r.text[..head_end],
            r.text.ends_with("0\r\n\r\n"),
            r.ended
        )
    };
    let stream_idle = async {
        let mut s = connect().await;
        s.write_all(b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let r = read_all(&mut s, Duration::from_secs(4)).await;
        let head_end = r.text.find("\r\n\r\n").map_or(r.text.len(), |i| i + 4);
        format!(
            "{}{}[body complete: {}] [connection ended: {}]",
            &r.text[..head_end],
            &r.text[head_end..].replace("\r\n", "|"),
            r.text.ends_with("0\r\n\r\n"),
            r.ended
        )
    };
    let per_try_idle = async {
        let mut s = connect().await;
        s.write_all(b"GET /ptidle HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.unwrap();
        read_all(&mut s, Duration::from_secs(5)).await.text
    };
    let connection_duration = async {
        // A request at once keeps the connection; one after max_connection_duration is
        // answered with `connection: close`.
        let mut s = connect().await;
        s.write_all(b"GET /slow/0 HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let first = read_response(&mut s).await;
        tokio::time::sleep(Duration::from_millis(3900)).await;
        s.write_all(b"GET /slow/0 HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let r = read_all(&mut s, Duration::from_secs(3)).await;
        let heads: Vec<String> = [first, r.text]
            .iter()
            .map(|t| t.lines().filter(|l| l.starts_with("HTTP/") || l.starts_with("connection")).collect::<Vec<_>>().join(" | "))
            .collect();
        format!("{}\n[second ended: {}]", heads.join("\n"), r.ended)
    };
    let connection_drained = async {
        // An idle connection closes after max_connection_duration and the drain time.
        let mut s = connect().await;
        s.write_all(b"GET /slow/0 HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let _ = read_response(&mut s).await;
        let r = read_all(&mut s, Duration::from_secs(8)).await;
        phase(&r, &[(3.4, "before max_connection_duration"), (6.0, "after max_connection_duration and the drain time")], "later").to_string()
    };
    let (a, b, c, d, e, f, g, h) =
        tokio::join!(header_timeout, request_timeout, stream_duration, stream_cut, connection_duration, connection_drained, stream_idle, per_try_idle);
    out.insert("route idle_timeout while the body streams", g);
    out.insert("per_try_idle_timeout", h);
    out.insert("request_headers_timeout", a);
    out.insert("request_timeout", b);
    out.insert("max_stream_duration before the response", c);
    out.insert("max_stream_duration during the body", d);
    out.insert("max_connection_duration, a request after it", e);
    out.insert("max_connection_duration, an idle connection", f);

    // The codec's own replies (access-logged as Envoy logs them).
    for (name, raw) in [
        ("codec: bad header", "GET /a HTTP/1.1\r\nHost: t\r\nBad Header: y\r\n\r\n"),
        ("codec: transfer-encoding", "GET /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n"),
        ("codec: underscore", "GET /a HTTP/1.1\r\nHost: t\r\na_b: 1\r\n\r\n"),
        ("codec: too many headers", &format!("GET /a HTTP/1.1\r\nHost: t\r\n{}\r\n", (0..20).map(|i| format!("h{i}: 1\r\n")).collect::<String>())),
    ] {
        let mut s = connect().await;
        s.write_all(raw.as_bytes()).await.unwrap();
        out.insert(name, read_all(&mut s, Duration::from_secs(3)).await.text);
    }

    // HTTP/2: the same header rules, on streams.
    let h2 = format!("http://127.0.0.1:{listen}/slow/0");
    let many: Vec<(String, String)> = (0..17).map(|i| (format!("h{i}"), "1".to_string())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (name, headers) in [("h2: underscore", vec![("a_b", "1")]), ("h2: too many headers", many.clone()), ("h2: at the header limit", many[..16].to_vec())] {
        let r = sluice_testkit::client::request_h2("GET", &h2, &headers, "").await;
        out.insert(name, r.map_or_else(|_| "stream reset".to_string(), |r| format!("{}", r.status.as_u16())));
    }

    // HTTP/2 connection limits on the second listener.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], listen2));
    let url = format!("http://127.0.0.1:{listen2}/");
    let mut c = sluice_testkit::client::Conn::connect_h2(addr).await.unwrap();
    let mut results = Vec::new();
    for _ in 0..3 {
        results.push(c.get(&url).await.map_or_else(|_| "failed".to_string(), |r| r.status.as_u16().to_string()));
    }
    out.insert("h2: max_requests_per_connection 2, three requests", results.join(" "));
    let mut c = sluice_testkit::client::Conn::connect_h2(addr).await.unwrap();
    let first = c.get(&url).await.map_or_else(|_| "failed".to_string(), |r| r.status.as_u16().to_string());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let after_idle = c.get(&url).await.map_or_else(|_| "failed".to_string(), |r| r.status.as_u16().to_string());
    out.insert("h2: idle_timeout 1s, a request after 1.6 s idle", format!("{first} then {after_idle}"));
    out
}

const STATS: &[&str] = &[
    "http.timeouts.downstream_rq_header_timeout",
    "http.timeouts.downstream_rq_timeout",
    "http.timeouts.downstream_rq_max_duration_reached",
    "http.timeouts.downstream_rq_idle_timeout",
    "cluster.echo.upstream_rq_per_try_idle_timeout",
    "cluster.echo.upstream_rq_retry",
    "http.timeouts.downstream_cx_max_duration_reached",
    "http.timeouts.downstream_rq_response_before_rq_complete",
    "http.timeouts.downstream_rq_408",
    "http.timeouts.downstream_rq_4xx",
    "http.timeouts.downstream_rq_5xx",
    "http.h2limits.downstream_cx_idle_timeout",
    "http.h2limits.downstream_cx_max_requests_reached",
    "http2.header_overflow",
    "http2.requests_rejected_with_underscores_in_headers",
    "http1.requests_rejected_with_underscores_in_headers",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_and_connection_limits_match_envoy() {
    let Some(envoy_bin) = envoy() else { return };
    let echo = EchoUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let drip = drip_upstream().await;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("timeouts-{}", std::process::id()));
    let config = |name: &str, listen2: u16| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        CONFIG
            .replace("@ECHO@", &echo.port().to_string())
            .replace("@DRIP@", &drip.to_string())
            .replace("@LISTEN2@", &listen2.to_string())
            .replace("@DIR@", d.to_str().unwrap())
    };
    let (e2, s2) = (free_port(), free_port());
    let e = Proxy::start("envoy", &envoy_bin, true, "timeouts", &config("envoy", e2)).await;
    let s = Proxy::start("sluice", &sluice(), false, "timeouts", &config("sluice", s2)).await;
    let (re, rs) = tokio::join!(scenario(e.listen, e2), scenario(s.listen, s2));
    // Let the last connections end and the access logs flush.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut identical = 0;
    let mut failures = Vec::new();
    let mut compare = |name: String, a: &str, b: &str| {
        if a == b {
            identical += 1;
        } else {
            failures.push(format!("{name}:\n  envoy : {a:?}\n  sluice: {b:?}"));
        }
    };
    for (name, a) in &re {
        compare(name.to_string(), a, &rs[name]);
    }
    let (se, ss) = (e.stats("").await, s.stats("").await);
    for name in STATS {
        let get = |m: &BTreeMap<String, String>| m.get(*name).cloned().unwrap_or_else(|| "<absent>".into());
        compare(format!("stat {name}"), &get(&se), &get(&ss));
    }
    let log = |name: &str| {
        let mut lines: Vec<String> = std::fs::read_to_string(dir.join(name).join("timeouts.log"))
            .unwrap_or_default()
            .lines()
            // The cut stream's bytes depend on timing.
            .map(|l| if l.starts_with("GET /drip ") { l.rsplit_once(' ').map_or(l, |(a, _)| a).to_string() } else { l.to_string() })
            .collect();
        lines.sort();
        lines
    };
    let (le, ls) = (log("envoy"), log("sluice"));
    assert!(!le.is_empty(), "Envoy wrote no access log lines");
    for i in 0..le.len().max(ls.len()) {
        let get = |v: &Vec<String>| v.get(i).cloned().unwrap_or_else(|| "<missing line>".into());
        compare(format!("access log line {}", i + 1), &get(&le), &get(&ls));
    }
    let total = identical + failures.len();
    eprintln!("timeouts: {identical} / {total} identical");
    assert!(failures.is_empty(), "{} difference(s) from Envoy:\n{}", failures.len(), failures.join("\n"));
}
