//! The HTTP/1 codec, upgrades and CONNECT against real Envoy 1.40, byte for byte.
//!
//! Real Envoy and `sluice proxy` run the same config (listeners with the codec options under test)
//! in front of one in-test upstream that answers with the exact bytes it received. Each case
//! sends raw bytes (in parts, with pauses; `Shut` half-closes) and reads what comes back with
//! HTTP/1 framing; the two transcripts — status lines, headers in order, bodies (so the raw
//! request the upstream saw), tunnel bytes, and whether the connection then closed — must be
//! identical after masking dates, request ids and service times.
//!
//! Environment: `SLUICE_ENVOY` (real Envoy), `SLUICE_BIN` (the sluice binary), `DIFF_ONLY=substr`,
//! `DIFF_VERBOSE=1`. Every read has a deadline; both proxies are killed by PID when the test ends.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_testkit::env::{envoy_path, free_port, repo_root};

const STARTUP: Duration = Duration::from_secs(30);
const CASE_DEADLINE: Duration = Duration::from_secs(6);
const PAUSE: Duration = Duration::from_millis(150);

fn sluice_path() -> PathBuf {
    let p = std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/debug/sluice"));
    assert!(p.exists(), "sluice binary not found at {} (set SLUICE_BIN or `cargo build -p sluice`)", p.display());
    p
}

// ------------------------------------------------------------------------------------------------
// the upstream: answers with what it received

struct Upstream {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn start_upstream() -> Upstream {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((s, _)) => {
                    thread::spawn(move || {
                        let _ = upstream_conn(s);
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Upstream { port, stop }
}

/// Bytes hyper's HTTP/1 server writes for a request it cannot parse: an upstream body that looks
/// exactly like it must reach the client untouched.
const LOOKS_LIKE_A_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 22:04:59 GMT\r\n\r\n";

fn upstream_conn(mut s: TcpStream) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut buf: Vec<u8> = Vec::new();
    for _ in 0..100 {
        let Some(end) = read_until(&mut s, &mut buf, b"\r\n\r\n")? else { return Ok(()) };
        let head: Vec<u8> = buf.drain(..end + 4).collect();
        let text = String::from_utf8_lossy(&head).to_string();
        let first = text.lines().next().unwrap_or("").to_string();
        let path = first.split(' ').nth(1).unwrap_or("").to_string();
        let lower = text.to_ascii_lowercase();
        let mut raw = head.clone();
        if lower.contains("\r\ntransfer-encoding: chunked") {
            // Keep the chunked framing as received, up to the last chunk and its trailers.
            loop {
                let Some(line_end) = read_until(&mut s, &mut buf, b"\r\n")? else { return Ok(()) };
                let line: Vec<u8> = buf.drain(..line_end + 2).collect();
                raw.extend_from_slice(&line);
                let size = usize::from_str_radix(String::from_utf8_lossy(&line).trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
                if size == 0 {
                    loop {
                        let Some(e) = read_until(&mut s, &mut buf, b"\r\n")? else { return Ok(()) };
                        let l: Vec<u8> = buf.drain(..e + 2).collect();
                        raw.extend_from_slice(&l);
                        if l == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                fill(&mut s, &mut buf, size + 2)?;
                raw.extend(buf.drain(..size + 2));
            }
        } else if let Some(cl) = lower.split("\r\ncontent-length: ").nth(1) {
            let n: usize = cl.split("\r\n").next().unwrap_or("0").trim().parse().unwrap_or(0);
            fill(&mut s, &mut buf, n)?;
            raw.extend(buf.drain(..n));
        }
        let tunnel = |s: &mut TcpStream, buf: &mut Vec<u8>, prefix: &[u8]| -> io::Result<()> {
            if !buf.is_empty() {
                s.write_all(prefix)?;
                s.write_all(buf)?;
                buf.clear();
            }
            let mut tmp = [0u8; 4096];
            loop {
                let n = s.read(&mut tmp)?;
                if n == 0 {
                    return Ok(());
                }
                s.write_all(prefix)?;
                s.write_all(&tmp[..n])?;
            }
        };
        if first.starts_with("CONNECT ") {
            s.write_all(b"HTTP/1.1 200 OK\r\nx-up: connect\r\n\r\n")?;
            tunnel(&mut s, &mut buf, b"tunnel:")?;
            return Ok(());
        }
        if path.contains("/ws") {
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Up: 1\r\n\r\n")?;
            tunnel(&mut s, &mut buf, b"echo:")?;
            return Ok(());
        }
        if path.contains("/upclose") {
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbye")?;
            s.shutdown(Shutdown::Write)?;
            let mut tmp = [0u8; 64];
            while s.read(&mut tmp)? > 0 {}
            return Ok(());
        }
        let respond = |s: &mut TcpStream, bytes: &[u8]| s.write_all(bytes);
        if let Some(code) = path.split("/status/").nth(1).and_then(|c| c.get(..3)) {
            respond(&mut s, format!("HTTP/1.1 {code} Whatever\r\nContent-Length: 2\r\n\r\nok").as_bytes())?;
        } else if let Some(code) = path.split("/nobody/").nth(1).and_then(|c| c.get(..3)) {
            respond(&mut s, format!("HTTP/1.1 {code} Whatever\r\nX-A: 1\r\n\r\n").as_bytes())?;
        } else if let Some(code) = path.split("/1xx/").nth(1).and_then(|c| c.get(..3)) {
            respond(&mut s, format!("HTTP/1.1 {code} Interim\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").as_bytes())?;
        } else if path.contains("/trailers") {
            respond(&mut s, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-trailer: t\r\n\r\n")?;
        } else if path.contains("/clte") {
            respond(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")?;
        } else if path.contains("/dupcl") {
            respond(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello")?;
        } else if path.contains("/te-identity") {
            respond(&mut s, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhello")?;
            return Ok(());
        } else if path.contains("/short") {
            respond(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")?;
            return Ok(());
        } else if path.contains("/looks-like-400") {
            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", LOOKS_LIKE_A_400.len()).into_bytes();
            r.extend_from_slice(LOOKS_LIKE_A_400);
            respond(&mut s, &r)?;
        } else {
            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", raw.len()).into_bytes();
            r.extend_from_slice(&raw);
            respond(&mut s, &r)?;
        }
    }
    Ok(())
}

/// Read until `buf` holds `pat`; its offset, or `None` at EOF before it.
fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, pat: &[u8]) -> io::Result<Option<usize>> {
    for _ in 0..10_000 {
        if let Some(p) = buf.windows(pat.len()).position(|w| w == pat) {
            return Ok(Some(p));
        }
        let mut tmp = [0u8; 8192];
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Err(io::Error::other("too much data"))
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let mut tmp = [0u8; 8192];
    while buf.len() < n {
        let k = s.read(&mut tmp)?;
        if k == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&tmp[..k]);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// the proxies

/// Listener names; the config gives each its own port.
const LISTENERS: [&str; 9] = ["main", "ws", "limits", "http10", "connect", "http1", "http2", "wsoff", "chunked"];

fn config(ports: &[u16], admin: u16, upstream: u16) -> Value {
    let router = json!([{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]);
    let default_routes = json!([
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "up"}}
    ]);
    let listener = |name: &str, port: u16, extra: Value, routes: Value| {
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name, "codec_type": "AUTO", "http_filters": router,
            "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}]}
        });
        for (k, v) in extra.as_object().unwrap() {
            hcm[k] = v.clone();
        }
        json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
               "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]})
    };
    let d = || default_routes.clone();
    let listeners = vec![
        listener("main", ports[0], json!({}), d()),
        listener("ws", ports[1], json!({"upgrade_configs": [{"upgrade_type": "websocket"}]}), json!([
            {"match": {"prefix": "/nows"}, "route": {"cluster": "up", "upgrade_configs": [{"upgrade_type": "websocket", "enabled": false}]}},
            {"match": {"prefix": "/direct"}, "direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
            {"match": {"prefix": "/"}, "route": {"cluster": "up"}}
        ])),
        listener("limits", ports[2], json!({"max_request_headers_kb": 1, "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST", "max_headers_count": 5}}), d()),
        listener("http10", ports[3], json!({"common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"}, "http_protocol_options": {"accept_http_10": true}}), d()),
        listener("connect", ports[4], json!({"upgrade_configs": [{"upgrade_type": "CONNECT"}]}), json!([
            {"match": {"connect_matcher": {}, "headers": [{"name": "x-terminate", "present_match": true}]},
             "route": {"cluster": "up", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}},
            {"match": {"connect_matcher": {}}, "route": {"cluster": "up"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "up"}}
        ])),
        listener("http1", ports[5], json!({"codec_type": "HTTP1"}), d()),
        listener("http2", ports[6], json!({"codec_type": "HTTP2"}), d()),
        listener("wsoff", ports[7], json!({"upgrade_configs": [{"upgrade_type": "websocket", "enabled": false}]}), json!([
            {"match": {"prefix": "/yesws"}, "route": {"cluster": "up", "upgrade_configs": [{"upgrade_type": "websocket", "enabled": true}]}},
            {"match": {"prefix": "/"}, "route": {"cluster": "up"}}
        ])),
        listener("chunked", ports[8], json!({"http_protocol_options": {"allow_chunked_length": true, "enable_trailers": true}}), d()),
    ];
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": [{
            "name": "up", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}
        }]}
    })
}

struct Proxy {
    child: Child,
    ports: Vec<u16>,
    log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn port(&self, listener: &str) -> u16 {
        self.ports[LISTENERS.iter().position(|l| *l == listener).expect("listener")]
    }
}

fn start(label: &str, upstream: u16) -> Proxy {
    let ports: Vec<u16> = LISTENERS.iter().map(|_| free_port()).collect();
    let admin = free_port();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("codec-diff-{}-{label}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("envoy.json");
    std::fs::write(&cfg, config(&ports, admin, upstream).to_string()).unwrap();
    let log = dir.join("proxy.log");
    let mut cmd = if label == "envoy" {
        let mut c = Command::new(envoy_path());
        c.arg("--disable-hot-restart");
        c
    } else {
        let mut c = Command::new(sluice_path());
        c.arg("proxy");
        c
    };
    let f = std::fs::File::create(&log).unwrap();
    let child = cmd
        .arg("-c")
        .arg(&cfg)
        .args(["--concurrency", "1", "--log-level", "warning"])
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {label}: {e}"));
    let mut p = Proxy { child, ports, log };
    let t = Instant::now();
    loop {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("{label} exited at start ({status}): {}", std::fs::read_to_string(&p.log).unwrap_or_default());
        }
        if p.ports.iter().all(|port| TcpStream::connect(("127.0.0.1", *port)).is_ok()) {
            // Envoy accepts before its clusters are ready; give both the same short settle time.
            thread::sleep(Duration::from_millis(300));
            return p;
        }
        assert!(t.elapsed() < STARTUP, "{label} not ready: {}", std::fs::read_to_string(&p.log).unwrap_or_default());
        thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------------------------------------------
// the client

enum Part {
    Bytes(Vec<u8>),
    /// Half-close the client's side.
    Shut,
}

struct Case {
    name: &'static str,
    listener: &'static str,
    parts: Vec<Part>,
    /// The request(s) are HEAD (no response body).
    head: bool,
    /// Final responses to read before looking for the end of the connection.
    responses: usize,
}

fn case(name: &'static str, listener: &'static str, parts: &[&str]) -> Case {
    let parts = parts
        .iter()
        .map(|p| if *p == "<SHUT>" { Part::Shut } else { Part::Bytes(p.as_bytes().to_vec()) })
        .collect();
    Case { name, listener, parts, head: false, responses: 1 }
}

/// A reader of the proxy's answer with a deadline for the whole case.
struct Reader {
    s: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
    eof: bool,
}

impl Reader {
    fn more(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = self.s.set_read_timeout(Some(left.min(Duration::from_millis(1500))));
        let mut tmp = [0u8; 16384];
        match self.s.read(&mut tmp) {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                self.eof = true;
                false
            }
            Err(_) => false,
        }
    }
    fn take_until(&mut self, pat: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(p) = self.buf.windows(pat.len()).position(|w| w == pat) {
                return Some(self.buf.drain(..p + pat.len()).collect());
            }
            if !self.more() {
                return None;
            }
        }
    }
    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.more() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }
    fn rest(&mut self) -> Vec<u8> {
        while self.more() {}
        std::mem::take(&mut self.buf)
    }
}

/// Send the case to `port`; the transcript of what came back, framed as HTTP/1.
fn run(port: u16, c: &Case) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return "<connect refused>".into() };
    let _ = s.set_nodelay(true);
    let mut out = String::new();
    for (i, p) in c.parts.iter().enumerate() {
        if i > 0 {
            thread::sleep(PAUSE);
        }
        match p {
            Part::Bytes(b) => {
                if s.write_all(b).is_err() {
                    out.push_str("<write failed>");
                }
            }
            Part::Shut => {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
    }
    let mut r = Reader { s, buf: Vec::new(), deadline: Instant::now() + CASE_DEADLINE, eof: false };
    let mut finals = 0;
    let mut tunnel = false;
    while finals < c.responses {
        let Some(head) = r.take_until(b"\r\n\r\n") else { break };
        let text = String::from_utf8_lossy(&head).to_string();
        out.push_str(&text);
        let code: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            continue;
        }
        finals += 1;
        let lower = text.to_ascii_lowercase();
        if code == 101 || (code / 100 == 2 && c.parts.iter().any(|p| matches!(p, Part::Bytes(b) if b.starts_with(b"CONNECT")))) {
            tunnel = true;
            break;
        }
        if c.head || code == 204 || code == 304 {
            continue;
        }
        if let Some(cl) = lower.split("\r\ncontent-length: ").nth(1) {
            let n: usize = cl.split("\r\n").next().unwrap_or("0").trim().parse().unwrap_or(0);
            match r.take(n) {
                Some(b) => out.push_str(&String::from_utf8_lossy(&b)),
                None => break,
            }
        } else if lower.contains("\r\ntransfer-encoding: chunked") {
            loop {
                let Some(line) = r.take_until(b"\r\n") else { break };
                out.push_str(&String::from_utf8_lossy(&line));
                let size = usize::from_str_radix(String::from_utf8_lossy(&line).trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
                if size == 0 {
                    while let Some(t) = r.take_until(b"\r\n") {
                        out.push_str(&String::from_utf8_lossy(&t));
                        if t == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                match r.take(size + 2) {
                    Some(b) => out.push_str(&String::from_utf8_lossy(&b)),
                    None => break,
                }
            }
        } else {
            tunnel = true; // read to EOF
            break;
        }
    }
    if tunnel {
        out.push_str(&String::from_utf8_lossy(&r.rest()));
    } else {
        // Does the connection close now? After `connection: close` Envoy waits up to its
        // `delayed_close_timeout` (1 s) for the client to close first; otherwise a close follows
        // the response at once.
        // The client closes its side then (so Envoy need not wait it out) and sees whether the
        // proxy closes too.
        let wait = if out.to_ascii_lowercase().contains("\r\nconnection: close\r\n") {
            let _ = r.s.shutdown(Shutdown::Write);
            1500
        } else {
            300
        };
        r.deadline = r.deadline.min(Instant::now() + Duration::from_millis(wait));
        let extra = r.rest();
        out.push_str(&String::from_utf8_lossy(&extra));
    }
    out.push_str(if r.eof { "<EOF>" } else { "<open>" });
    out
}

fn mask(s: &str) -> String {
    let date = regex::Regex::new(r"(?i)date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT").unwrap();
    let rid = regex::Regex::new(r"x-request-id: [0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}").unwrap();
    let ust = regex::Regex::new(r"x-envoy-upstream-service-time: \d+").unwrap();
    let s = date.replace_all(s, "date: <date>");
    let s = rid.replace_all(&s, "x-request-id: <uuid>");
    ust.replace_all(&s, "x-envoy-upstream-service-time: <ms>").into_owned()
}

// ------------------------------------------------------------------------------------------------
// the cases

fn cases() -> Vec<Case> {
    let chunked = "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let ws = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let with_path = |p: &str| ws.replace("/ws", p);
    let mut v = vec![
        // --- request line and head
        case("head/obs-fold", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\nX-F: a\r\n  b\r\n\t c\r\n\r\n"]),
        case("head/obs-fold-first-line", "main", &["GET /echo HTTP/1.1\r\n X: a\r\nHost: a\r\n\r\n"]),
        case("head/two-spaces", "main", &["GET  /echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/tab-separator", "main", &["GET\t/echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/bare-lf", "main", &["GET /echo HTTP/1.1\nHost: a\n\n"]),
        case("head/leading-crlf", "main", &["\r\n\r\nGET /echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/trailing-space-after-version", "main", &["GET /echo HTTP/1.1 \r\nHost: a\r\n\r\n"]),
        case("head/426-http12", "main", &["GET /echo HTTP/1.2\r\nHost: a\r\n\r\n"]),
        case("head/426-no-version", "main", &["GET /echo\r\n\r\n"]),
        case("head/400-http1-10", "main", &["GET /echo HTTP/1.10\r\nHost: a\r\n\r\n"]),
        case("head/400-lowercase-method", "main", &["get /echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/400-get-star", "main", &["GET * HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/400-fragment-in-query", "main", &["GET /echo?a#b HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/400-space-before-colon", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n"]),
        case("head/400-ctl-in-value", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n"]),
        case("head/high-byte-in-value", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\nX: caf\u{e9}\r\n\r\n"]),
        case("head/absolute-https", "main", &["GET https://x/echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/absolute-no-path", "main", &["GET http://x HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/absolute-userinfo-dropped", "main", &["GET http://u@x/echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/400-absolute-ftp", "main", &["GET ftp://x/echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/400-absolute-bad-authority", "main", &["GET http://a{b/echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/path-with-quote-and-braces", "main", &["GET /a\"b{}|^\\ HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("head/431-101-fields", "main", &[&format!("GET /echo HTTP/1.1\r\nHost: a\r\n{}\r\n", (0..100).map(|i| format!("X{i}: 1\r\n")).collect::<String>())]),
        case("head/100-fields", "main", &[&format!("GET /echo HTTP/1.1\r\nHost: a\r\n{}\r\n", (0..99).map(|i| format!("X{i}: 1\r\n")).collect::<String>())]),
        // --- Host / :authority
        case("host/400-space", "main", &["GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n"]),
        case("host/400-slash", "main", &["GET /echo HTTP/1.1\r\nHost: a/b\r\n\r\n"]),
        case("host/400-hash", "main", &["GET /echo HTTP/1.1\r\nHost: a#b\r\n\r\n"]),
        case("host/400-angle", "main", &["GET /echo HTTP/1.1\r\nHost: a<b\r\n\r\n"]),
        case("host/400-second-value", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\nHost: b/c\r\n\r\n"]),
        case("host/sub-delims-and-at", "main", &["GET /echo HTTP/1.1\r\nHost: a@b!$&'()*+,;=~[]%:1\r\n\r\n"]),
        case("host/empty", "main", &["GET /echo HTTP/1.1\r\nHost:\r\n\r\n"]),
        case("host/connection-names-host", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\nConnection: host, x-a\r\nX-A: 1\r\n\r\n"]),
        // --- Content-Length / Transfer-Encoding
        case("framing/400-cl-list", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc"]),
        case("framing/400-cl-plus", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc"]),
        case("framing/400-cl-differs", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc"]),
        case("framing/cl-leading-zeros", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0003\r\n\r\nabc"]),
        case("framing/501-te-gzip", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc"]),
        case("framing/501-te-chunked-twice", "main", &[&format!("{}3\r\nabc\r\n0\r\n\r\n", chunked.replace("chunked\r\n\r\n", "chunked, chunked\r\n\r\n"))]),
        case("framing/501-te-two-headers", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]),
        case("framing/te-uppercase", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]),
        case("framing/te-and-cl-allowed", "chunked", &["POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]),
        case("framing/connection-names-content-length", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\nabc"]),
        // --- chunked request bodies
        case("chunked/extensions", "main", &[&format!("{chunked}3;foo=bar\r\nabc\r\n0;x\r\n\r\n")]),
        case("chunked/size-with-trailing-space", "main", &[&format!("{chunked}3 \r\nabc\r\n0\r\n\r\n")]),
        case("chunked/trailers-dropped", "main", &[&format!("{chunked}3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")]),
        case("chunked/trailers-with-enable-trailers", "chunked", &[&format!("{chunked}3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")]),
        case("chunked/split-across-writes", "main", &[chunked, "3\r\nab", "c\r\n0\r", "\n\r\n"]),
        case("chunked/400-bad-size", "main", &[&format!("{chunked}zz\r\nabc\r\n0\r\n\r\n")]),
        case("chunked/400-missing-crlf", "main", &[&format!("{chunked}3\r\nabcX0\r\n\r\n")]),
        case("chunked/400-leading-space", "main", &[&format!("{chunked} 3\r\nabc\r\n0\r\n\r\n")]),
        case("chunked/400-0x-prefix", "main", &[&format!("{chunked}0x3\r\nabc\r\n0\r\n\r\n")]),
        case("chunked/400-overflow", "main", &[&format!("{chunked}ffffffffffffffffff\r\nabc\r\n0\r\n\r\n")]),
        case("chunked/400-bad-trailer", "main", &[&format!("{chunked}3\r\nabc\r\n0\r\nbad trailer\r\n\r\n")]),
        case("chunked/400-lf-only-sizes", "main", &[&format!("{chunked}3\nabc\n0\n\n")]),
        case("body/client-leaves-inside-the-body", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc", "<SHUT>"]),
        // --- options on other listeners
        case("limits/underscore-rejected", "limits", &["GET /echo HTTP/1.1\r\nHost: a\r\nX_A: 1\r\n\r\n"]),
        case("limits/five-fields", "limits", &["GET /echo HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n"]),
        case("limits/431-six-fields", "limits", &["GET /echo HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n"]),
        case("limits/head-exactly-1024", "limits", &[&format!("GET /echo HTTP/1.1\r\nHost: a\r\nA: {}\r\n\r\n", "x".repeat(988))]),
        case("limits/431-head-1025", "limits", &[&format!("GET /echo HTTP/1.1\r\nHost: a\r\nA: {}\r\n\r\n", "x".repeat(989))]),
        case("http10/underscore-dropped", "http10", &["GET /echo HTTP/1.1\r\nHost: a\r\nX_A: 1\r\nX-B: 2\r\n\r\n"]),
        case("http10/proxied", "http10", &["GET /echo HTTP/1.0\r\nHost: a\r\n\r\n"]),
        case("http10/keep-alive", "http10", &["GET /echo HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"]),
        case("http10/no-host", "http10", &["GET /echo HTTP/1.0\r\n\r\n"]),
        case("http10/direct", "http10", &["GET /direct HTTP/1.0\r\nHost: a\r\n\r\n"]),
        case("http10/400-bad-host", "http10", &["GET /echo HTTP/1.0\r\nHost: a b\r\n\r\n"]),
        case("http10/400-bad-header-name", "http10", &["GET /echo HTTP/1.0\r\nHost: a\r\nX Y: 1\r\n\r\n"]),
        case("http10/400-fragment", "http10", &["GET /echo#x HTTP/1.0\r\nHost: a\r\n\r\n"]),
        case("http10/501-te-identity", "http10", &["GET /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"]),
        case("http10/chunked-request-body", "http10", &["POST /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]),
        case("http10/upstream-chunked-is-close-delimited", "http10", &["GET /trailers HTTP/1.0\r\nHost: a\r\n\r\n"]),
        case("http10/204", "http10", &["GET /nobody/204 HTTP/1.0\r\nHost: a\r\n\r\n"]),
        case("http10/expect-100", "http10", &["POST /echo HTTP/1.0\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", "abc"]),
        case("codec-type/http1-only-refuses-the-h2-preface", "http1", &["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]),
        case("codec-type/http2-only-closes-an-http1-client", "http2", &["GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("codec-type/auto-pri-http11-is-http1", "main", &["PRI * HTTP/1.1\r\nHost: a\r\n\r\n"]),
        // --- responses
        case("response/reason-418-unknown", "main", &["GET /status/418 HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("response/reason-425", "main", &["GET /status/425 HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("response/reason-599", "main", &["GET /status/599 HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("response/204-no-framing", "main", &["GET /nobody/204 HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("response/304-no-framing", "main", &["GET /nobody/304 HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("response/103-dropped", "main", &["GET /1xx/103 HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("response/upstream-trailers-dropped", "main", &["GET /trailers HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("response/looks-like-hypers-400-passes-through", "main", &["GET /looks-like-400 HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("response/connection-close-list", "main", &["GET /direct HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n"]),
        case("upstream/502-cl-and-te", "main", &["GET /clte HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("upstream/502-repeated-cl", "main", &["GET /dupcl HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("upstream/502-te-identity", "main", &["GET /te-identity HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("upstream/short-body-forwarded-then-closed", "main", &["GET /short HTTP/1.1\r\nHost: a\r\n\r\n"]),
        // --- connections
        case("conn/expect-100-without-body", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"]),
        case("conn/expect-other-forwarded", "main", &["POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: foo\r\n\r\nabc"]),
        case("conn/request-then-half-close", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\n\r\n", "<SHUT>"]),
        // --- upgrades
        case("ws/proxied-both-ways-client-closes", "ws", &[ws, "hello", "world", "<SHUT>"]),
        case("ws/upstream-closes", "ws", &[&with_path("/upclose")]),
        case("ws/upgrade-value-case-kept", "ws", &[&ws.replace("Upgrade: websocket", "Upgrade: WebSocket"), "x", "<SHUT>"]),
        case("ws/403-disabled-on-route", "ws", &[&with_path("/nows/ws")]),
        case("ws/403-not-configured", "main", &[ws]),
        case("ws/403-other-type", "ws", &[&ws.replace("websocket", "foo")]),
        case("ws/403-hcm-disabled", "wsoff", &[ws]),
        case("ws/route-enables", "wsoff", &[&with_path("/yesws/ws"), "hi", "<SHUT>"]),
        case("ws/upstream-answers-404", "ws", &[&with_path("/status/404")]),
        case("ws/upstream-answers-204", "ws", &[&with_path("/nobody/204")]),
        case("ws/direct-response-route", "ws", &[&with_path("/direct")]),
        case("ws/h2c-is-not-an-upgrade", "ws", &["GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"]),
        // --- CONNECT
        case("connect/proxied", "connect", &["CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n", "ping", "<SHUT>"]),
        case("connect/terminated", "connect", &["CONNECT x.test:443 HTTP/1.1\r\nHost: x.test:443\r\nX-Terminate: 1\r\n\r\n", "GET /inner HTTP/1.1\r\nHost: inner\r\n\r\n", "<SHUT>"]),
        case("connect/404-not-enabled", "ws", &["CONNECT x.test:443 HTTP/1.1\r\nHost: x.test:443\r\n\r\n"]),
        case("connect/400-no-port", "connect", &["CONNECT x.test HTTP/1.1\r\nHost: x.test\r\n\r\n"]),
        case("connect/400-with-body", "connect", &["CONNECT x.test:1 HTTP/1.1\r\nHost: x.test:1\r\nContent-Length: 3\r\n\r\nabc"]),
        case("connect/400-origin-form", "connect", &["CONNECT /x HTTP/1.1\r\nHost: x.test:1\r\n\r\n"]),
        case("connect/plain-get-on-a-connect-listener", "connect", &["GET /echo HTTP/1.1\r\nHost: a\r\n\r\n"]),
        // --- the safer rules (listed in KNOWN)
        case("known/bare-cr-in-a-value", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"]),
        case("known/raw-angle-brackets-in-the-path", "main", &["GET /a<b> HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("known/raw-quote-in-the-query", "main", &["GET /a?b=\"c\" HTTP/1.1\r\nHost: a\r\n\r\n"]),
        case("known/bare-lf-after-chunk-data", "main", &[&format!("{chunked}3\r\nabc\n0\r\n\r\n")]),
        case("known/upstream-chunk-size-case", "main", &[&format!("{chunked}a\r\n0123456789\r\n0\r\n\r\n")]),
    ];
    let mut pipelined = case("conn/pipelined-three", "main", &["GET /echo HTTP/1.1\r\nHost: a\r\n\r\nPOST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /direct HTTP/1.1\r\nHost: a\r\n\r\n"]);
    pipelined.responses = 3;
    v.push(pipelined);
    let mut bad_second = case("conn/pipelined-then-bad", "main", &["GET /direct HTTP/1.1\r\nHost: a\r\n\r\nGET /direct HTTP/1.1\r\nHost: a b\r\n\r\n"]);
    bad_second.responses = 2;
    v.push(bad_second);
    let mut ka10 = case("http10/keep-alive-then-close", "http10", &["GET /direct HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", "GET /direct HTTP/1.0\r\nHost: a\r\n\r\n"]);
    ka10.responses = 2;
    v.push(ka10);
    for (name, path) in [("head/direct", "/direct"), ("head/proxied-length-kept", "/echo"), ("head/no-length-says-chunked", "/nobody/200")] {
        let mut c = case(name, "main", &[&format!("HEAD {path} HTTP/1.1\r\nHost: a\r\n\r\n")]);
        c.head = true;
        v.push(c);
    }
    if let Ok(only) = std::env::var("DIFF_ONLY") {
        v.retain(|c| c.name.contains(&only));
    }
    v
}

/// Where sluice answers differently on purpose (the safer rule), with the reason. A listed case
/// that starts to match fails the test.
const KNOWN: &[(&str, &str)] = &[
    ("known/bare-cr-in-a-value", "a bare CR inside a header value is refused with 400 (RFC 9112 §2.2 allows either); Envoy deletes the CR and forwards the rest"),
    ("known/raw-angle-brackets-in-the-path", "a request target with characters RFC 3986 does not allow unencoded (`<` `>` `` ` `` in the path) is refused with 400; Envoy forwards them raw"),
    ("known/raw-quote-in-the-query", "likewise `\"` `<` `>` in the query: 400; Envoy forwards them raw"),
    ("known/bare-lf-after-chunk-data", "chunked framing needs CRLF after chunk data (RFC 9112 §7.1): a bare LF is a 400 (a smuggling vector when parsers disagree); Envoy accepts it"),
    ("known/upstream-chunk-size-case", "towards an HTTP/1 upstream, chunk sizes are written by hyper's client in upper-case hex (`A`), Envoy's in lower-case (`a`); the body is the same"),
];

#[test]
fn codec_differential_envoy_vs_sluice() {
    envoy_path();
    sluice_path();
    let up = start_upstream();
    let envoy = start("envoy", up.port);
    let sluice = start("sluice", up.port);
    let verbose = std::env::var_os("DIFF_VERBOSE").is_some();
    let cases = cases();
    assert!(!cases.is_empty(), "DIFF_ONLY matched nothing");
    let mut failures = Vec::new();
    let mut same = 0;
    for c in &cases {
        let a = mask(&run(envoy.port(c.listener), c)).replace(&envoy.port(c.listener).to_string(), "<port>");
        let b = mask(&run(sluice.port(c.listener), c)).replace(&sluice.port(c.listener).to_string(), "<port>");
        if verbose {
            eprintln!("=== {}\n{}", c.name, a.escape_debug());
        }
        let known = KNOWN.iter().find(|(n, _)| *n == c.name).map(|(_, why)| *why);
        match (a == b, known) {
            (true, None) => same += 1,
            (true, Some(_)) => failures.push(format!("{}: listed as a known difference but now identical", c.name)),
            (false, Some(why)) => eprintln!("KNOWN {} ({why})", c.name),
            (false, None) => failures.push(format!("{}:\n  envoy:  {}\n  sluice: {}", c.name, a.escape_debug(), b.escape_debug())),
        }
    }
    // Both must still be running: a crash mid-run is a failure of its own.
    for (p, label) in [(envoy, "envoy"), (sluice, "sluice")] {
        let mut p = p;
        if let Ok(Some(status)) = p.child.try_wait() {
            failures.push(format!("{label} exited during the run ({status}): {}", std::fs::read_to_string(&p.log).unwrap_or_default()));
        }
    }
    eprintln!("{same} of {} cases identical", cases.len());
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
