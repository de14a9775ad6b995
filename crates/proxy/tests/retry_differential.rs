//! Retries and per-try timeouts, differential: real Envoy 1.40 and `sluice proxy` run the same
//! config in front of the same scripted upstream, and every case is sent to both. Per case the
//! test compares the final status, how many attempts the upstream saw, `x-envoy-attempt-count`
//! (response, and on the last upstream request), the access log's `%RESPONSE_FLAGS%` and
//! `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`, and the deltas of the cluster's retry stats.
//!
//! The scripted upstream reads the case from the request path: `/<route>/<proxy>/<case>?fail=N&mode=M`
//! answers the first N requests of that path with mode M (503, 409, reset, hang, grpc14, …)
//! and every later one with 200. Paths differ per proxy, so both share one upstream.
//!
//! `SLUICE_ENVOY` (real Envoy 1.40) is needed; without it the test says SKIPPED. `SLUICE_BIN`:
//! the `sluice` binary (default `<repo>/target/debug/sluice`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_testkit::env::{free_port, repo_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn envoy() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_ENVOY") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            println!("SKIPPED: SLUICE_ENVOY is not set (real Envoy 1.40 is needed for the differential tests)");
            None
        }
    }
}

fn sluice() -> PathBuf {
    let p = std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/debug/sluice"));
    assert!(p.exists(), "sluice binary not found at {} (set SLUICE_BIN)", p.display());
    p
}

/// What the scripted upstream saw per path: request count and the last request's headers.
#[derive(Default)]
struct Seen {
    count: HashMap<String, u32>,
    last_headers: HashMap<String, Vec<(String, String)>>,
}

/// The scripted upstream (HTTP/1.1, one request per connection).
async fn scripted_upstream() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else { continue };
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    if buf.len() > 65536 {
                        return;
                    }
                    match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.split("\r\n");
                let target = lines.next().unwrap_or("").split(' ').nth(1).unwrap_or("/").to_string();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
                while buf.len() < head_end + len {
                    match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let q: HashMap<&str, &str> = query.split('&').filter_map(|kv| kv.split_once('=')).collect();
                let fail: u32 = q.get("fail").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mode = q.get("mode").copied().unwrap_or("ok").to_string();
                let n = {
                    let mut seen = s.lock().unwrap();
                    let c = seen.count.entry(path.to_string()).or_default();
                    *c += 1;
                    let n = *c;
                    seen.last_headers.insert(path.to_string(), headers);
                    n
                };
                let mode = if n <= fail { mode.as_str() } else { "ok" };
                let (status, extra) = match mode {
                    "reset" => {
                        // A zero linger makes the close a reset (it never blocks).
                        #[allow(deprecated)]
                        let _ = tcp.set_linger(Some(Duration::ZERO));
                        return;
                    }
                    "hang" => {
                        let _ = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut chunk)).await;
                        return;
                    }
                    "grpc14" => (200, "content-type: application/grpc\r\ngrpc-status: 14\r\n"),
                    "ratelimited" => (429, "x-envoy-ratelimited: true\r\n"),
                    "429ra" => (429, "retry-after: 1\r\n"),
                    "429long" => (429, "retry-after: 60\r\n"),
                    "hdr" => (200, "x-retry-me: yes\r\n"),
                    "slowbody" => {
                        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab").await;
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        let _ = tcp.write_all(b"cd").await;
                        return;
                    }
                    "ok" => (200, ""),
                    m => (m.parse().unwrap_or(500), ""),
                };
                let resp = format!("HTTP/1.1 {status} X\r\n{extra}content-length: 2\r\nconnection: close\r\n\r\nok");
                let _ = tcp.write_all(resp.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    (addr, seen)
}

/// A proxy process; killed by PID and reaped on drop.
struct Proxy {
    name: &'static str,
    child: Child,
    listen: u16,
    admin: u16,
    log: PathBuf,
    access_log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    async fn start(name: &'static str, bin: &PathBuf, is_envoy: bool, config: &str) -> Proxy {
        let (listen, admin) = (free_port(), free_port());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("diff-retry-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let access_log = dir.join("access.log");
        let _ = std::fs::remove_file(&access_log);
        let path = dir.join("config.yaml");
        let cfg = config
            .replace("@LISTEN@", &listen.to_string())
            .replace("@ADMIN@", &admin.to_string())
            .replace("@ACCESS_LOG@", &access_log.display().to_string());
        std::fs::write(&path, cfg).unwrap();
        let log = dir.join("proxy.log");
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        if is_envoy {
            cmd.arg("--disable-hot-restart");
        } else {
            cmd.arg("proxy");
        }
        cmd.arg("-c").arg(&path).args(["--concurrency", "1", "--log-level", "warning", "--file-flush-interval-msec", "50"]);
        let child = cmd.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
        let mut p = Proxy { name, child, listen, admin, log, access_log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("{name} exited ({st}): {}", std::fs::read_to_string(&p.log).unwrap_or_default());
            }
            let ready = sluice_testkit::client::get(&format!("http://127.0.0.1:{admin}/ready")).await.is_ok_and(|r| r.status == 200);
            if ready && std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok() {
                return p;
            }
            assert!(Instant::now() < deadline, "{name} not ready: {}", std::fs::read_to_string(&p.log).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Counters of the cluster `c` that a retry touches.
    async fn retry_stats(&self, c: &str) -> BTreeMap<String, u64> {
        let text = sluice_testkit::client::get(&format!("http://127.0.0.1:{}/stats", self.admin)).await.map(|r| r.text()).unwrap_or_default();
        let prefix = format!("cluster.{c}.");
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v.parse::<u64>().ok()?)))
            .filter(|(k, _)| {
                k.starts_with("upstream_rq_retry")
                    || k.starts_with("retry.")
                    || k.starts_with("upstream_rq_per_try")
                    || k == "upstream_rq_timeout"
                    || k == "upstream_cx_connect_fail"
                    || k == "retry_or_shadow_abandoned"
                    || k.starts_with("upstream_rq_5")
                    || k.starts_with("upstream_rq_2")
            })
            .collect()
    }

    /// The access-log line of `path` (bounded wait for the flush).
    async fn log_line(&self, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.ends_with(&format!(" {path}"))) {
                return l.to_string();
            }
            if Instant::now() > deadline {
                return format!("(no log line for {path})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const CONFIG: &str = r#"admin: {address: {socket_address: {address: 127.0.0.1, port_value: @ADMIN@}}}
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: @LISTEN@}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: d
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: "@ACCESS_LOG@"
              log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %RESPONSE_CODE_DETAILS% %REQ(:PATH)%\n"}}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              include_request_attempt_count: true
              include_attempt_count_in_response: true
              retry_policy: {retry_on: 5xx, num_retries: 1}
              routes:
              - match: {prefix: "/r5xx/"}
                route: {cluster: up, retry_policy: {retry_on: 5xx, num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/gw/"}
                route: {cluster: up, retry_policy: {retry_on: gateway-error, num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/r4xx/"}
                route: {cluster: up, retry_policy: {retry_on: retriable-4xx, num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/codes/"}
                route: {cluster: up, retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [418], num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/hdrs/"}
                route: {cluster: up, retry_policy: {retry_on: retriable-headers, retriable_headers: [{name: x-retry-me}], num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/reset/"}
                route: {cluster: up, retry_policy: {retry_on: reset, num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/rbr/"}
                route: {cluster: up, retry_policy: {retry_on: reset-before-request, num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/cfonly/"}
                route: {cluster: up, retry_policy: {retry_on: connect-failure, num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/grpc/"}
                route: {cluster: up, retry_policy: {retry_on: "unavailable,cancelled", num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/rl/"}
                route: {cluster: up, retry_policy: {retry_on: "envoy-ratelimited,5xx", num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/rl5xx/"}
                route: {cluster: up, retry_policy: {retry_on: "5xx,retriable-4xx", num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/pertry/"}
                route: {cluster: up, retry_policy: {retry_on: 5xx, num_retries: 1, per_try_timeout: 0.3s, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/pertrycf/"}
                route: {cluster: up, retry_policy: {retry_on: connect-failure, num_retries: 1, per_try_timeout: 0.3s}}
              - match: {prefix: "/global/"}
                route: {cluster: up, timeout: 0.5s, retry_policy: {retry_on: 5xx, num_retries: 5, per_try_timeout: 0.3s, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/dead/"}
                route: {cluster: dead, retry_policy: {retry_on: connect-failure, num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/deadnoretry/"}
                route: {cluster: dead, retry_policy: {retry_on: retriable-4xx, num_retries: 2}}
              - match: {prefix: "/reqhdr/"}
                route: {cluster: up, retry_policy: {retry_on: 5xx, num_retries: 2, retriable_request_headers: [{name: x-may-retry}], retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/addhdr/"}
                route: {cluster: up2}
                request_headers_to_add:
                - header: {key: x-envoy-retry-on, value: 5xx}
                - header: {key: x-envoy-max-retries, value: "3"}
              - match: {prefix: "/addtmo/"}
                route: {cluster: up2, timeout: 2s}
                request_headers_to_add:
                - header: {key: x-envoy-upstream-rq-timeout-ms, value: "300"}
                - header: {key: x-envoy-upstream-rq-per-try-timeout-ms, value: "200"}
              - match: {prefix: "/addpt/"}
                route: {cluster: up2, timeout: 1s}
                request_headers_to_add:
                - header: {key: x-envoy-upstream-rq-per-try-timeout-ms, value: "200"}
              - match: {prefix: "/slowbody/"}
                route: {cluster: up2, timeout: 0.5s}
              - match: {prefix: "/rlbo/"}
                route: {cluster: up, retry_policy: {retry_on: retriable-status-codes, retriable_status_codes: [429], num_retries: 1, retry_back_off: {base_interval: 0.001s}, rate_limited_retry_back_off: {reset_headers: [{name: x-missing}, {name: Retry-After, format: SECONDS}], max_interval: 5s}}}
              - match: {prefix: "/budget/"}
                route: {cluster: budget, retry_policy: {retry_on: 5xx, num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/overflow/"}
                route: {cluster: tiny, retry_policy: {retry_on: 5xx, num_retries: 2, retry_back_off: {base_interval: 0.001s}}}
              - match: {prefix: "/vh/"}
                route: {cluster: up}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: up, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @UP@}}}}]}]}
  - name: up2
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: up2, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @UP@}}}}]}]}
  - name: tiny
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: {thresholds: [{max_retries: 0}]}
    load_assignment: {cluster_name: tiny, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @UP@}}}}]}]}
  - name: budget
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: {thresholds: [{max_retries: 0, retry_budget: {budget_percent: {value: 10}, min_retry_concurrency: 1}}]}
    load_assignment: {cluster_name: budget, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @UP@}}}}]}]}
  - name: dead
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: dead, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @DEAD@}}}}]}]}
"#;

/// One case: route prefix, cluster, fail count and mode, extra request headers, what sluice
/// must answer (status, attempts the upstream saw).
struct Case {
    route: &'static str,
    cluster: &'static str,
    fail: u32,
    mode: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    attempts: u32,
}

const fn case(route: &'static str, cluster: &'static str, fail: u32, mode: &'static str, status: u16, attempts: u32) -> Case {
    Case { route, cluster, fail, mode, headers: &[], status, attempts }
}

const CASES: &[Case] = &[
    case("r5xx", "up", 1, "503", 200, 2),
    case("r5xx", "up", 5, "500", 500, 3),
    case("gw", "up", 5, "500", 500, 1),
    case("gw", "up", 2, "502", 200, 3),
    case("gw", "up", 5, "504", 504, 3),
    case("r4xx", "up", 1, "409", 200, 2),
    case("r4xx", "up", 1, "503", 503, 1),
    case("codes", "up", 2, "418", 200, 3),
    case("codes", "up", 1, "417", 417, 1),
    case("hdrs", "up", 1, "hdr", 200, 2),
    case("reset", "up", 1, "reset", 200, 2),
    case("reset", "up", 5, "reset", 503, 3),
    case("r5xx", "up", 5, "reset", 503, 3),
    case("rbr", "up", 5, "reset", 503, 1),
    case("cfonly", "up", 5, "reset", 503, 1),
    case("grpc", "up", 1, "grpc14", 200, 2),
    case("rl", "up", 1, "ratelimited", 200, 2),
    case("rl5xx", "up", 1, "ratelimited", 429, 1),
    case("pertry", "up", 1, "hang", 200, 2),
    case("pertry", "up", 5, "hang", 504, 2),
    case("pertrycf", "up", 5, "hang", 504, 1),
    case("global", "up", 5, "hang", 504, 2),
    case("dead", "dead", 0, "ok", 503, 0),
    case("deadnoretry", "dead", 0, "ok", 503, 0),
    case("reqhdr", "up", 1, "503", 503, 1),
    Case { route: "reqhdr", cluster: "up", fail: 1, mode: "503", headers: &[("x-may-retry", "1")], status: 200, attempts: 2 },
    // A client's x-envoy-* control headers are stripped (every request is external).
    Case { route: "vh", cluster: "up", fail: 5, mode: "503", headers: &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "3")], status: 503, attempts: 2 },
    case("vh", "up", 1, "503", 200, 2),
    case("addhdr", "up2", 5, "503", 503, 4),
    case("overflow", "tiny", 5, "503", 503, 1),
    // rate_limited_retry_back_off: Retry-After (1 s) sets the back-off; 60 s is over max_interval,
    // so the exponential back-off applies (the stats tell which).
    case("rlbo", "up", 1, "429ra", 200, 2),
    case("rlbo", "up", 1, "429long", 200, 2),
    // A retry budget replaces max_retries (0 here): at least min_retry_concurrency (1) retry.
    case("budget", "budget", 5, "503", 503, 3),
    case("addtmo", "up2", 0, "ok", 200, 1),
    case("addpt", "up2", 5, "hang", 504, 1),
    // The route timeout covers the response body: the stream is cut (status 0 here: the client
    // sees a truncated body), logged as 200 UT response_timeout.
    case("slowbody", "up2", 1, "slowbody", 0, 1),
];

#[derive(Debug, PartialEq, Eq, Clone)]
struct Outcome {
    status: u16,
    attempts: u32,
    attempt_header: Option<String>,
    upstream_attempt_header: Option<String>,
    upstream_saw_control: Vec<String>,
    /// `x-envoy-expected-rq-timeout-ms` when there was one attempt (later ones depend on time).
    expected_timeout: Option<String>,
    log: String,
    stats: BTreeMap<String, i64>,
}

async fn run_case(p: &Proxy, c: &Case, i: usize, seen: &Arc<Mutex<Seen>>) -> Outcome {
    let path = format!("/{}/{}/{i}", c.route, p.name);
    let url = format!("http://127.0.0.1:{}{path}?fail={}&mode={}", p.listen, c.fail, c.mode);
    let before = p.retry_stats(c.cluster).await;
    let r = tokio::time::timeout(Duration::from_secs(10), sluice_testkit::client::request("GET", &url, c.headers, ""))
        .await
        .expect("request bounded")
        .ok();
    let after = p.retry_stats(c.cluster).await;
    let stats = after
        .iter()
        .map(|(k, v)| (k.clone(), *v as i64 - before.get(k).copied().unwrap_or(0) as i64))
        .filter(|(_, d)| *d != 0)
        .collect();
    let (attempts, last) = {
        let s = seen.lock().unwrap();
        (s.count.get(&path).copied().unwrap_or(0), s.last_headers.get(&path).cloned().unwrap_or_default())
    };
    let log = p.log_line(&format!("{path}?fail={}&mode={}", c.fail, c.mode)).await;
    Outcome {
        status: r.as_ref().map_or(0, |r| r.status.as_u16()),
        attempts,
        attempt_header: r.as_ref().and_then(|r| r.header("x-envoy-attempt-count")).map(str::to_string),
        upstream_attempt_header: last.iter().find(|(k, _)| k == "x-envoy-attempt-count").map(|(_, v)| v.clone()),
        upstream_saw_control: last
            .iter()
            .filter(|(k, _)| k.starts_with("x-envoy-retry") || k == "x-envoy-max-retries" || k.starts_with("x-envoy-upstream-rq"))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect(),
        expected_timeout: last.iter().find(|(k, _)| k == "x-envoy-expected-rq-timeout-ms" && attempts == 1).map(|(_, v)| v.clone()),
        log: log.split(' ').take(4).collect::<Vec<_>>().join(" "),
        stats,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_match_envoy() {
    let Some(envoy_bin) = envoy() else { return };
    let (up, seen) = scripted_upstream().await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = CONFIG.replace("@UP@", &up.port().to_string()).replace("@DEAD@", &dead.to_string());
    let envoy = Proxy::start("envoy", &envoy_bin, true, &cfg).await;
    let sluice = Proxy::start("sluice", &sluice(), false, &cfg).await;
    let mut identical = 0;
    let mut differences = Vec::new();
    let mut wrong = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let e = run_case(&envoy, c, i, &seen).await;
        let s = run_case(&sluice, c, i, &seen).await;
        let name = format!("#{i} /{}/ fail={} mode={} headers={:?}", c.route, c.fail, c.mode, c.headers);
        println!("{name}\n  envoy:  {e:?}\n  sluice: {s:?}");
        if (s.status, s.attempts) != (c.status, c.attempts) {
            wrong.push(format!("{name}: sluice {} after {} attempts, expected {} after {}", s.status, s.attempts, c.status, c.attempts));
        }
        if e == s {
            identical += 1;
        } else {
            differences.push(name);
        }
    }
    println!("retry differential: {identical}/{} cases identical", CASES.len());
    for d in &differences {
        println!("DIFFERENT: {d}");
    }
    assert!(wrong.is_empty(), "sluice answered unexpectedly: {wrong:#?}");
    assert!(differences.is_empty(), "{} cases differ from Envoy: {differences:#?}", differences.len());
}
