//! Differential tests of the substitution formatter against real Envoy 1.40: the same config and
//! the same requests go to Envoy and to `sluice proxy` (child processes, killed by PID at the
//! end of each test, also on panic), in front of one echo upstream. Compared, after masking times,
//! durations, ids and ports:
//!
//! * the access log lines (Envoy's default format, a custom text format with filters, a typed
//!   JSON format with `omit_empty_values`, a listener access log);
//! * the requests the upstream saw (formatted `request_headers_to_add`) and the responses
//!   (formatted `response_headers_to_add`, `local_reply_config` text and JSON bodies).
//!
//! Environment: `SLUICE_ENVOY` (real Envoy; without it every test here says so and skips),
//! `SLUICE_BIN` (the built `sluice`, default `<repo>/target/debug/sluice`).
//!
//! Each test prints `identical / total`; a difference listed in its `known` table (with its
//! reason) must still differ, anything else must be identical.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use sluice_testkit::env::{free_port, repo_root};
use sluice_testkit::EchoUpstream;

const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const LOG_DEADLINE: Duration = Duration::from_secs(15);
const READ_TIMEOUT: Duration = Duration::from_secs(5);

fn envoy() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_ENVOY") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("SLUICE_ENVOY is not set: skipping the access-log differential test (scripts/test sets it)");
            None
        }
    }
}

fn sluice() -> PathBuf {
    let p = std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/debug/sluice"));
    assert!(p.exists(), "sluice binary not found at {} (set SLUICE_BIN or run `cargo build -p sluice`)", p.display());
    p
}

/// A proxy process; killed by PID and reaped when dropped.
struct Proxy {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("proxy.out")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The lines of one access log file, once it has `n` of them (bounded wait).
    fn log_lines(&self, file: &str, n: usize) -> Vec<String> {
        let path = self.dir.join(file);
        let deadline = Instant::now() + LOG_DEADLINE;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn start(envoy_bin: Option<&Path>, label: &str, config: &str, upstream: u16) -> Proxy {
    let port = free_port();
    let admin = free_port();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("access-log-{}-{label}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = config
        .replace("@LISTEN@", &port.to_string())
        .replace("@ADMIN@", &admin.to_string())
        .replace("@UPSTREAM@", &upstream.to_string())
        .replace("@REFUSED@", &refused_port().to_string())
        .replace("@DIR@", dir.to_str().unwrap());
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    let out = std::fs::File::create(dir.join("proxy.out")).unwrap();
    let mut cmd = match envoy_bin {
        Some(e) => {
            let mut c = Command::new(e);
            c.arg("--disable-hot-restart");
            c
        }
        None => {
            let mut c = Command::new(sluice());
            c.arg("proxy");
            c
        }
    };
    cmd.args(["--file-flush-interval-msec", "100"]);
    cmd.arg("-c").arg(&path).args(["--concurrency", "1", "--log-level", "warning"]);
    cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {label}: {e}"));
    let mut proxy = Proxy { child, port, dir };
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!("{label} exited at start ({status}):\n{}", proxy.log_tail());
        }
        let ready = request(admin, "GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").is_ok_and(|r| r.starts_with("HTTP/1.1 200"));
        // No probe of the listener itself: a listener access log would log the probe.
        if ready {
            return proxy;
        }
        assert!(Instant::now() < deadline, "{label} not ready:\n{}", proxy.log_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port nothing listens on (the same for both proxies of a run).
fn refused_port() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(free_port)
}

/// Send one request on a new connection and read until the server closes it. An empty
/// request is a connection closed at once; `ABORT <request>` closes 300 ms after sending.
fn request(port: u16, raw: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    if let Some(rest) = raw.strip_prefix("ABORT ") {
        // The client goes away before the response.
        s.write_all(rest.as_bytes())?;
        std::thread::sleep(Duration::from_millis(300));
        s.shutdown(std::net::Shutdown::Both)?;
        std::thread::sleep(Duration::from_millis(300));
        return Ok(String::new());
    }
    if raw.is_empty() {
        s.shutdown(std::net::Shutdown::Both)?;
        // Let the proxy see the close before the next connection (log lines keep their order).
        std::thread::sleep(Duration::from_millis(300));
        return Ok(String::new());
    }
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.write_all(raw.as_bytes())?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = Instant::now() + READ_TIMEOUT;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Times, durations, ids and ports out.
fn mask(s: &str) -> String {
    let rules: &[(&str, &str)] = &[
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", "TIME"),
        (r"(?i)date: [A-Za-z]{3}, \d\d [A-Za-z]{3} \d{4} \d\d:\d\d:\d\d GMT", "date: DATE"),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:PORT"),
        (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "UUID"),
        (r"(x-envoy-upstream-service-time: )\d+", "${1}N"),
        (r#"("(?:dur|rqd|rsd|ust|cid|port)":)\d+"#, "${1}N"),
        (r"\b(dur|rqd|rsd|ust|cid)=\d+", "${1}=N"),
        // Default format: `<code> <flags> <rx> <tx> <duration> <upstream service time>`.
        (r#"(" \d{1,3} \S+ \d+ \d+) \d+ \d+ ""#, r#"$1 N N ""#),
        (r#"(" \d{1,3} \S+ \d+ \d+) \d+ - ""#, r#"$1 N - ""#),
    ];
    let mut out = s.to_string();
    for (re, with) in rules {
        out = Regex::new(re).unwrap().replace_all(&out, *with).into_owned();
    }
    out
}

/// One compared item: a name and the two masked texts.
struct Item {
    name: String,
    envoy: String,
    sluice: String,
}

/// Compare; `known` lists the names that differ on purpose (or for a recorded reason).
fn verdict(test: &str, items: &[Item], known: &[(&str, &str)]) {
    let mut failures = Vec::new();
    let mut identical = 0;
    for it in items {
        let why = known.iter().find(|(n, _)| *n == it.name).map(|(_, w)| *w);
        match (it.envoy == it.sluice, why) {
            (true, None) => identical += 1,
            (true, Some(_)) => failures.push(format!("{}: listed as a known difference but identical now", it.name)),
            (false, Some(why)) => eprintln!("KNOWN {}: {why}\n  envoy : {}\n  sluice: {}", it.name, it.envoy, it.sluice),
            (false, None) => failures.push(format!("{}:\n  envoy : {}\n  sluice: {}", it.name, it.envoy, it.sluice)),
        }
    }
    eprintln!("{test}: {identical} / {} identical", items.len());
    assert!(failures.is_empty(), "{test}: {} difference(s):\n{}", failures.len(), failures.join("\n"));
}

/// Run `requests` through both proxies; compare the responses and the lines of `logs`
/// (file name, expected line count).
fn run(test: &str, config: &str, requests: &[(&str, String)], logs: &[(&str, usize)], known: &[(&str, &str)]) {
    let Some(envoy_bin) = envoy() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let echo = rt.block_on(EchoUpstream::start("127.0.0.1:0".parse().unwrap())).unwrap();
    let e = start(Some(&envoy_bin), &format!("{test}-envoy"), config, echo.port());
    let s = start(None, &format!("{test}-sluice"), config, echo.port());
    let mut items = Vec::new();
    for (name, raw) in requests {
        let re = request(e.port, raw).unwrap_or_else(|err| format!("error: {err}"));
        let rs = request(s.port, raw).unwrap_or_else(|err| format!("error: {err}"));
        items.push(Item { name: format!("response {name}"), envoy: mask(&re), sluice: mask(&rs) });
    }
    for (file, n) in logs {
        let le = e.log_lines(file, *n);
        let ls = s.log_lines(file, *n);
        assert_eq!(le.len(), *n, "Envoy wrote {} lines to {file}, expected {n}:\n{}", le.len(), le.join("\n"));
        for i in 0..le.len().max(ls.len()) {
            let get = |v: &Vec<String>| v.get(i).map(|l| mask(l)).unwrap_or_else(|| "<missing line>".into());
            items.push(Item { name: format!("{file} line {}", i + 1), envoy: get(&le), sluice: get(&ls) });
        }
    }
    drop(s);
    drop(e);
    drop(echo);
    verdict(test, &items, known);
}

/// Known differences, each with its reason.
const KNOWN_204_BODY: &str = "Envoy sends a body_format body on a 204 (and counts it in %BYTES_SENT%); sluice's codec \
keeps RFC 9110's rule that a 204 has no body (the safer rule: a client reads the next response from those bytes)";
fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: diff.test\r\nUser-Agent: difftest/1\r\nConnection: close\r\n{extra}\r\n")
}

const HEAD: &str = r#"
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: @ADMIN@}}
static_resources:
  clusters:
  - name: echo
    connect_timeout: 1s
    load_assignment: {cluster_name: echo, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @UPSTREAM@}}}}]}]}
  - name: empty
    connect_timeout: 1s
    load_assignment: {cluster_name: empty, endpoints: []}
  - name: refused
    connect_timeout: 1s
    load_assignment: {cluster_name: refused, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: @REFUSED@}}}}]}]}
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: @LISTEN@}}
"#;

const HCM: &str = r#"
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: diff
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"#;

const ROUTES: &str = r#"
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - name: direct
                match: {prefix: "/direct"}
                direct_response: {status: 200, body: {inline_string: "hello"}}
              - match: {prefix: "/redirect"}
                redirect: {path_redirect: "/elsewhere"}
              - match: {prefix: "/none-healthy"}
                route: {cluster: empty}
              - match: {prefix: "/refused"}
                route: {cluster: refused}
              - match: {prefix: "/slow"}
                route: {cluster: echo}
              - match: {prefix: "/no-content"}
                direct_response: {status: 204}
              - name: echo
                match: {prefix: "/echo"}
                route: {cluster: echo}
"#;

fn config(hcm_extra: &str) -> String {
    format!("{HEAD}{HCM}{hcm_extra}{ROUTES}")
}

fn common_requests() -> Vec<(&'static str, String)> {
    vec![
        ("direct", get("/direct", "x-request-id: 00000001-0000-4000-8000-000000000001\r\n")),
        ("echo GET", get("/echo/a?q=1", "x-request-id: 00000002-0000-4000-8000-000000000002\r\nX-Forwarded-For: 10.0.0.1\r\n")),
        (
            "echo POST",
            "POST /echo/post HTTP/1.1\r\nHost: diff.test\r\nUser-Agent: difftest/1\r\nConnection: close\r\nContent-Length: 5\r\nx-request-id: 00000003-0000-4000-8000-000000000003\r\n\r\nhello"
                .to_string(),
        ),
        ("no route", get("/nothing", "x-request-id: 00000004-0000-4000-8000-000000000004\r\n")),
        ("upstream 503", get("/echo/status/503", "x-request-id: 00000005-0000-4000-8000-000000000005\r\n")),
        ("redirect", get("/redirect", "x-request-id: 00000006-0000-4000-8000-000000000006\r\n")),
        ("no healthy upstream", get("/none-healthy", "x-request-id: 00000007-0000-4000-8000-000000000007\r\n")),
        ("HEAD direct", "HEAD /direct HTTP/1.1\r\nHost: diff.test\r\nConnection: close\r\nx-request-id: 00000008-0000-4000-8000-000000000008\r\n\r\n".to_string()),
    ]
}

#[test]
fn default_format_lines_match_envoy() {
    let cfg = config(
        r#"
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/access.log
"#,
    );
    let mut requests = common_requests();
    requests.push(("connection refused", get("/refused", "x-request-id: 00000009-0000-4000-8000-000000000009\r\n")));
    requests.push(("client gone", format!("ABORT {}", get("/slow/2000", "x-request-id: 0000000b-0000-4000-8000-00000000000b\r\n"))));
    requests.push((
        "connection refused, body",
        "POST /refused HTTP/1.1\r\nHost: diff.test\r\nConnection: close\r\nContent-Length: 3\r\nx-request-id: 0000000a-0000-4000-8000-00000000000a\r\n\r\nabc".to_string(),
    ));
    run(
        "default_format",
        &cfg,
        &requests,
        &[("access.log", 11)],
        &[],
    );
}

#[test]
fn custom_text_format_and_filters_match_envoy() {
    let cfg = config(
        r#"
          access_log:
          - name: text
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/text.log
              log_format:
                text_format_source:
                  inline_string: "%REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %REQ(:SCHEME)% p=%PROTOCOL% c=%RESPONSE_CODE% d=%RESPONSE_CODE_DETAILS% f=%RESPONSE_FLAGS% fl=%RESPONSE_FLAGS_LONG% br=%BYTES_RECEIVED% bs=%BYTES_SENT% uh=%UPSTREAM_HOST% uc=%UPSTREAM_CLUSTER% ula=%UPSTREAM_LOCAL_ADDRESS% rn=%ROUTE_NAME% att=%UPSTREAM_REQUEST_ATTEMPT_COUNT% dra=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% dla=%DOWNSTREAM_LOCAL_ADDRESS% sid=%STREAM_ID% xff=%REQ(X-FORWARDED-FOR?USER-AGENT)% t=%REQ(USER-AGENT):4% ct=%RESP(CONTENT-TYPE)% st=%RESP(:STATUS)% loc=%RESP(LOCATION)% env=%ENVIRONMENT(SLUICE_DIFF_UNSET)% pct=%% rsn=%REQUESTED_SERVER_NAME% t2=%START_TIME(%Y)% dur=%DURATION%\n"
          - name: errors only
            filter: {status_code_filter: {comparison: {op: GE, value: {default_value: 400, runtime_key: diff.errors}}}}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/errors.log
              log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%\n"}}
          - name: flags and headers
            filter:
              or_filter:
                filters:
                - response_flag_filter: {flags: [NR, UH]}
                - and_filter:
                    filters:
                    - header_filter: {header: {name: x-request-id, string_match: {prefix: "00000002"}}}
                    - not_health_check_filter: {}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/selected.log
              log_format: {text_format: "%REQ(:PATH)% %RESPONSE_FLAGS%\n"}
          - name: sampled by request id
            filter: {runtime_filter: {runtime_key: diff.sample, percent_sampled: {numerator: 50}}}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/sampled.log
              log_format: {text_format_source: {inline_string: "%REQ(X-REQUEST-ID)%\n"}}
"#,
    );
    let mut requests = common_requests();
    // x-request-id 00000063… is 99 % 100: not sampled; 00000031… (49) is.
    requests.push(("sampled out", get("/direct", "x-request-id: 00000063-0000-4000-8000-000000000009\r\n")));
    requests.push(("sampled in", get("/direct", "x-request-id: 00000031-0000-4000-8000-000000000010\r\n")));
    run(
        "custom_text",
        &cfg,
        &requests,
        &[("text.log", 10), ("errors.log", 2), ("selected.log", 3), ("sampled.log", 9)],
        &[],
    );
}

#[test]
fn json_format_with_typed_values_matches_envoy() {
    let cfg = config(
        r#"
          access_log:
          - name: json
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/json.log
              log_format:
                json_format:
                  start: "%START_TIME%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                  code: "%RESPONSE_CODE%"
                  flags: "%RESPONSE_FLAGS%"
                  details: "%RESPONSE_CODE_DETAILS%"
                  rx: "%BYTES_RECEIVED%"
                  tx: "%BYTES_SENT%"
                  dur: "%DURATION%"
                  upstream: {host: "%UPSTREAM_HOST%", cluster: "%UPSTREAM_CLUSTER%", attempts: "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"}
                  missing: "%REQ(X-NOT-SENT)%"
                  mixed: "code=%RESPONSE_CODE% ua=%REQ(USER-AGENT)% none=%REQ(X-NOT-SENT)%"
                  port: "%DOWNSTREAM_LOCAL_PORT%"
                  list: ["%PROTOCOL%", "%REQ(X-NOT-SENT)%", 7, true, null]
                  literal: "plain"
                  percent: "%%"
          - name: omit empty
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/omit.log
              log_format:
                omit_empty_values: true
                json_format:
                  code: "%RESPONSE_CODE%"
                  upstream: {host: "%UPSTREAM_HOST%"}
                  missing: "%REQ(X-NOT-SENT)%"
                  mixed: "a=%REQ(X-NOT-SENT)%"
                  list: ["%REQ(X-NOT-SENT)%", "%PROTOCOL%"]
                  empty: {}
"#,
    );
    run("json", &cfg, &common_requests(), &[("json.log", 8), ("omit.log", 8)], &[]);
}

#[test]
fn formatted_header_values_match_envoy() {
    let cfg = format!(
        "{HEAD}{HCM}{}",
        r#"
          route_config:
            name: local
            request_headers_to_add:
            - header: {key: x-table, value: "%PROTOCOL% %REQ(:METHOD)%"}
            virtual_hosts:
            - name: all
              domains: ["*"]
              request_headers_to_add:
              - header: {key: x-vhost, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
              response_headers_to_add:
              - header: {key: x-vhost-resp, value: "%RESPONSE_CODE% %UPSTREAM_CLUSTER%"}
              routes:
              - name: formatted
                match: {prefix: "/echo"}
                route: {cluster: echo, prefix_rewrite: "/rewritten"}
                request_headers_to_add:
                - header: {key: x-path, value: "%REQ(:PATH)% from %REQ(X-ENVOY-ORIGINAL-PATH)%"}
                - header: {key: x-client, value: "%REQ(X-CLIENT?USER-AGENT)%"}
                - header: {key: x-missing, value: "%REQ(X-NOT-SENT)%"}
                - header: {key: x-kept, value: "%REQ(X-NOT-SENT)%"}
                  keep_empty_value: true
                - header: {key: x-mixed, value: "a%REQ(X-NOT-SENT)%b"}
                - header: {key: x-flags, value: "%RESPONSE_FLAGS% %RESPONSE_CODE%"}
                - header: {key: x-cluster, value: "%UPSTREAM_CLUSTER% %ROUTE_NAME% %UPSTREAM_REQUEST_ATTEMPT_COUNT%"}
                - header: {key: x-host-not-yet, value: "%UPSTREAM_HOST%"}
                - header: {key: x-literal, value: "100%% literal"}
                - header: {key: x-over, value: "%REQ(X-OVER)%-new"}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                - header: {key: x-env, value: "%ENVIRONMENT(SLUICE_DIFF_UNSET)%"}
                - header: {key: x-year, value: "%START_TIME(%Y)%"}
                response_headers_to_add:
                - header: {key: x-resp, value: "%RESPONSE_CODE% %UPSTREAM_HOST% %RESP(X-UPSTREAM-ID)% %REQ(X-CLIENT)%"}
                - header: {key: x-details, value: "%RESPONSE_CODE_DETAILS%"}
              - match: {prefix: "/direct"}
                direct_response: {status: 200, body: {inline_string: "direct"}}
                response_headers_to_add:
                - header: {key: x-direct, value: "%RESPONSE_CODE% %REQ(:PATH)%"}
              - match: {prefix: "/weighted"}
                route:
                  weighted_clusters:
                    clusters:
                    - name: echo
                      weight: 1
                      request_headers_to_add:
                      - header: {key: x-order, value: "weighted %UPSTREAM_CLUSTER%"}
                      response_headers_to_add:
                      - header: {key: x-order-resp, value: "weighted %RESPONSE_CODE%"}
                request_headers_to_add:
                - header: {key: x-order, value: "route"}
                response_headers_to_add:
                - header: {key: x-order-resp, value: "route"}
"#
    );
    let requests = vec![
        ("formatted upstream request", get("/echo/x?y=1", "x-request-id: 00000001-0000-4000-8000-000000000001\r\nx-client: c1\r\nx-over: old\r\n")),
        ("alternate header", get("/echo/z", "x-request-id: 00000002-0000-4000-8000-000000000002\r\n")),
        ("direct response headers", get("/direct/q", "x-request-id: 00000003-0000-4000-8000-000000000003\r\n")),
        ("weighted cluster headers", get("/weighted", "x-request-id: 00000004-0000-4000-8000-000000000004\r\n")),
    ];
    run("headers", &cfg, &requests, &[], &[]);
}

#[test]
fn local_reply_config_text_and_json_match_envoy() {
    let cfg = config(
        r#"
          access_log:
          - name: local replies
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/local.log
              log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_SENT% %RESP(CONTENT-TYPE)% [%LOCAL_REPLY_BODY%]\n"}}
          local_reply_config:
            mappers:
            - filter: {status_code_filter: {comparison: {op: EQ, value: {default_value: 404, runtime_key: diff.nr}}}}
              status_code: 410
              body: {inline_string: "gone %REQ(:PATH)%"}
              headers_to_add:
              - header: {key: x-mapped, value: "%RESPONSE_CODE% %REQ(:PATH)%"}
                append_action: OVERWRITE_IF_EXISTS_OR_ADD
            - filter: {header_filter: {header: {name: x-want-json, present_match: true}}}
              body_format_override:
                json_format: {code: "%RESPONSE_CODE%", body: "%LOCAL_REPLY_BODY%", path: "%REQ(:PATH)%", flags: "%RESPONSE_FLAGS%"}
            - filter: {response_flag_filter: {flags: [UH]}}
              body_format_override:
                text_format_source: {inline_string: "unavailable (%RESPONSE_FLAGS%): %LOCAL_REPLY_BODY%"}
                content_type: "text/x-unavailable"
            body_format:
              text_format: "[%LOCAL_REPLY_BODY%] code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS%\n"
"#,
    );
    let mut requests = common_requests();
    requests.push(("json override", get("/direct", "x-want-json: 1\r\nx-request-id: 00000009-0000-4000-8000-000000000009\r\n")));
    requests.push(("json override on no route", get("/nothing", "x-want-json: 1\r\n")));
    requests.push(("body format on 204", get("/no-content", "x-request-id: 0000000b-0000-4000-8000-00000000000b\r\n")));
    requests.push(("connection refused", get("/refused", "x-request-id: 0000000c-0000-4000-8000-00000000000c\r\n")));
    run(
        "local_reply",
        &cfg,
        &requests,
        &[("local.log", 12)],
        &[
            ("response body format on 204", KNOWN_204_BODY),
            ("local.log line 11", KNOWN_204_BODY),
        ],
    );
}

#[test]
fn listener_access_log_matches_envoy() {
    let cfg = format!(
        "{HEAD}{}{HCM}{ROUTES}",
        r#"
    access_log:
    - name: listener
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: @DIR@/listener.log
        log_format: {text_format_source: {inline_string: "%REQ(:METHOD)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% rx=%BYTES_RECEIVED% tx=%BYTES_SENT% %UPSTREAM_HOST% %DOWNSTREAM_LOCAL_ADDRESS%\n"}}
"#
    );
    let requests = vec![
        ("direct", get("/direct", "x-request-id: 00000001-0000-4000-8000-000000000001\r\n")),
        ("connection closed at once", String::new()),
        ("no route", get("/nothing", "x-request-id: 00000002-0000-4000-8000-000000000002\r\n")),
    ];
    run("listener", &cfg, &requests, &[("listener.log", 3)], &[]);
}

/// `sluice proxy --mode validate` on a config with one bad piece: the error names its path.
fn validate_error(hcm_extra: &str, routes: &str) -> String {
    let cfg = format!("{HEAD}{HCM}{hcm_extra}{routes}")
        .replace("@LISTEN@", "0")
        .replace("@ADMIN@", "0")
        .replace("@UPSTREAM@", "1")
        .replace("@REFUSED@", "2")
        .replace("@DIR@", env!("CARGO_TARGET_TMPDIR"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("access-log-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:x}.yaml", cfg.len() * 31 + cfg.bytes().map(usize::from).sum::<usize>()));
    std::fs::write(&path, &cfg).unwrap();
    let out = Command::new(sluice()).args(["proxy", "--mode", "validate", "-c"]).arg(&path).output().unwrap();
    assert!(!out.status.success(), "accepted:\n{cfg}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const HCM_PATH: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";

#[test]
fn config_errors_name_the_path() {
    let log = |extra: &str| {
        format!(
            r#"
          access_log:
          - name: a
            {extra}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/validate.log
              log_format: {{text_format_source: {{inline_string: "%RESPONSE_CODE%\n"}}}}
"#
        )
    };
    let cases: Vec<(String, String, String)> = vec![
        (
            r#"
          access_log:
          - name: a
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: @DIR@/validate.log
              log_format: {text_format_source: {inline_string: "%NOPE%"}}
"#
            .into(),
            ROUTES.into(),
            format!("{HCM_PATH}.access_log[0].typed_config.log_format.text_format_source: Not supported field in StreamInfo: NOPE"),
        ),
        (
            r#"
          access_log:
          - name: a
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {json_format: {a: {b: "%REQ(x):abc%"}}}
"#
            .into(),
            ROUTES.into(),
            format!("{HCM_PATH}.access_log[0].typed_config.log_format.json_format.a.b: Incorrect configuration: %REQ(x):abc%. Couldn't find valid command at position 0"),
        ),
        (
            log("filter: {response_flag_filter: {flags: [NR, XX]}}"),
            ROUTES.into(),
            format!("{HCM_PATH}.access_log[0].filter.response_flag_filter.flags[1]: value must be in list [LH UH UT LR UR UF UC UO NR DI FI RL UAEX RLSE DC URX SI IH DPE UMSDR RFCF NFCF DT UPE NC OM DF DO DR UDO]"),
        ),
        (
            log("filter: {traceable_filter: {}}"),
            ROUTES.into(),
            format!("{HCM_PATH}.access_log[0].filter.traceable_filter: recognised but not supported by sluice"),
        ),
        (
            log("filter: {and_filter: {filters: [{not_health_check_filter: {}}]}}"),
            ROUTES.into(),
            format!("{HCM_PATH}.access_log[0].filter.and_filter.filters: value must contain at least 2 item(s)"),
        ),
        (
            log("filter: {status_code_filter: {comparison: {op: EQ}}}"),
            ROUTES.into(),
            format!("{HCM_PATH}.access_log[0].filter.status_code_filter.comparison.value: value is required"),
        ),
        (
            r#"
          local_reply_config:
            mappers:
            - status_code: 410
"#
            .into(),
            ROUTES.into(),
            format!("{HCM_PATH}.local_reply_config.mappers[0].filter: value is required"),
        ),
        (
            r#"
          local_reply_config:
            body_format: {text_format: "%START_TIME:3%"}
"#
            .into(),
            ROUTES.into(),
            format!("{HCM_PATH}.local_reply_config.body_format.text_format: START_TIME does not allow length to be specified."),
        ),
        (
            String::new(),
            r#"
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: echo}
                request_headers_to_add:
                - header: {key: x-ok, value: "fine"}
                - header: {key: x-bad, value: "100%"}
"#
            .into(),
            format!("{HCM_PATH}.route_config.virtual_hosts[0].routes[0].request_headers_to_add[1].header.value: Incorrect configuration: 100%. Couldn't find valid command at position 3"),
        ),
        (
            r#"
          access_log:
          - name: a
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
"#
            .into(),
            ROUTES.into(),
            format!("{HCM_PATH}.access_log[0].typed_config.@type: type \"type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig\" is not supported by sluice"),
        ),
    ];
    for (extra, routes, want) in cases {
        let err = validate_error(&extra, &routes);
        assert!(err.contains(&want), "want `{want}` in:\n{err}");
    }
}
