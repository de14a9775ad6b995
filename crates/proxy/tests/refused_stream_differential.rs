//! HTTP/2 upstream stream resets, side by side with real Envoy 1.40: `REFUSED_STREAM` (retried by
//! `refused-stream` and by the conditions that retry resets) and other `RST_STREAM` codes
//! (`remote reset`). Compared: status, body, the access-log line (flags and details) and the
//! cluster's reset and retry stats.
//!
//! Needs `SLUICE_ENVOY` (skipped without it) and the `sluice` binary (`SLUICE_BIN`).

mod diff_proxy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use diff_proxy::{envoy, sluice, Proxy};
use tokio::net::TcpListener;

const CONFIG: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: @ADMIN@}}
static_resources:
  clusters:
  - name: h2up
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment: {cluster_name: h2up, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @UP@}}}}]}]}
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: @LISTEN@}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: rs
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/access.log
              log_format: {text_format_source: {inline_string: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %RESPONSE_CODE_DETAILS%\n"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/on-refused/"}
                route: {cluster: h2up, retry_policy: {retry_on: refused-stream, num_retries: 1}}
              - match: {prefix: "/on-reset/"}
                route: {cluster: h2up, retry_policy: {retry_on: reset, num_retries: 1}}
              - match: {prefix: "/"}
                route: {cluster: h2up}
"#;

/// An HTTP/2 upstream: `/…/refuse/N` refuses the first N streams of that path
/// (`REFUSED_STREAM`), then answers 200; `/…/reset` resets every stream (`INTERNAL_ERROR`).
async fn h2_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else { return };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let path = req.uri().path().to_string();
                    let n = {
                        let mut m = seen.lock().unwrap();
                        let c = m.entry(path.clone()).or_default();
                        *c += 1;
                        *c
                    };
                    let refuse = path.rsplit_once("/refuse/").and_then(|(_, k)| k.parse::<usize>().ok());
                    if path.ends_with("/reset") {
                        respond.send_reset(h2::Reason::INTERNAL_ERROR);
                    } else if refuse.is_some_and(|k| n <= k) {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else {
                        let resp = http::Response::builder().status(200).header("content-length", "2").body(()).unwrap();
                        if let Ok(mut body) = respond.send_response(resp, false) {
                            let _ = body.send_data(Bytes::from_static(b"ok"), true);
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_stream_resets_match_envoy() {
    let Some(envoy_bin) = envoy() else { return };
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("refused-{}", std::process::id()));
    let config = |name: &str, up: u16| {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        CONFIG.replace("@UP@", &up.to_string()).replace("@DIR@", d.to_str().unwrap())
    };
    let (eu, su) = (h2_upstream().await, h2_upstream().await);
    let e = Proxy::start("envoy", &envoy_bin, true, "refused", &config("envoy", eu)).await;
    let s = Proxy::start("sluice", &sluice(), false, "refused", &config("sluice", su)).await;
    let paths = [
        "/on-refused/refuse/1",
        "/on-refused/refuse/9",
        "/on-refused/reset",
        "/on-reset/refuse/9",
        "/on-reset/reset",
        "/plain/refuse/1",
        "/plain/reset",
    ];
    let mut identical = 0;
    let mut failures = Vec::new();
    let mut compare = |what: String, a: String, b: String| {
        if a == b {
            identical += 1;
        } else {
            failures.push(format!("{what}:\n  envoy : {a}\n  sluice: {b}"));
        }
    };
    for path in paths {
        let get = |port: u16| async move {
            match sluice_testkit::client::get(&format!("http://127.0.0.1:{port}{path}")).await {
                Ok(r) => format!("{} {}", r.status.as_u16(), r.text()),
                Err(err) => format!("error: {err}"),
            }
        };
        let (a, b) = (get(e.listen).await, get(s.listen).await);
        compare(format!("GET {path}"), a, b);
    }
    for stat in ["upstream_rq_rx_reset", "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded", "upstream_rq_503"] {
        let name = format!("cluster.h2up.{stat}");
        let (a, b) = (e.stats(&name).await.get(&name).cloned(), s.stats(&name).await.get(&name).cloned());
        compare(format!("stat {name}"), format!("{a:?}"), format!("{b:?}"));
    }
    // The access logs (both flush their files on a timer): wait for every line, bounded.
    let log = |name: &str| std::fs::read_to_string(dir.join(name).join("access.log")).unwrap_or_default();
    for _ in 0..100 {
        if log("envoy").lines().count() >= paths.len() && log("sluice").lines().count() >= paths.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (le, ls) = (log("envoy"), log("sluice"));
    assert_eq!(le.lines().count(), paths.len(), "Envoy's access log:\n{le}");
    for (i, (a, b)) in le.lines().zip(ls.lines().chain(std::iter::repeat("<missing line>"))).enumerate() {
        compare(format!("access log line {}", i + 1), a.to_string(), b.to_string());
    }
    eprintln!("upstream stream resets: {identical} / {} identical", identical + failures.len());
    assert!(failures.is_empty(), "{} difference(s) from Envoy:\n{}", failures.len(), failures.join("\n"));
}
