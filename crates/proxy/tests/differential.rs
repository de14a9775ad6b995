//! Differential test: the same requests go to real Envoy 1.40 and to `sluice proxy`, both started from
//! one Envoy v3 config (`tests/differential/envoy.yaml`), in front of one in-test echo upstream that
//! answers with what it received (method, path, version, headers in order, body) as JSON.
//! Status line, response headers (names in order, values with random parts masked), body, and the
//! request the upstream saw must be identical.
//!
//! Environment:
//! * `SLUICE_ENVOY`  real Envoy binary (default `<repo>/.venv/bin/envoy`; `scripts/test` installs it).
//! * `SLUICE_BIN`    sluice binary (default `<repo>/target/debug/sluice`; `cargo build -p sluice`).
//! * `DIFF_AGAINST=envoy`  compare Envoy with a second Envoy (proves the harness; must pass).
//! * `DIFF_ONLY=substr`    run only the cases whose name contains `substr`.
//! * `DIFF_VERBOSE=1`      print every rendered answer.
//! * `DIFF_RECORD=1`       rewrite `tests/differential/envoy-answers.txt` from Envoy's answers.
//!
//! Everything is bounded: each read has a timeout, each request a deadline, start-up a deadline, and
//! both proxy processes are killed by PID when the test ends (also on panic, via `ChildGuard`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use sluice_testkit::env::{envoy_path, free_port, repo_root};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const CONFIG_TEMPLATE: &str = include_str!("differential/envoy.yaml");
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between the parts of a multi-part request (e.g. headers, then body after `Expect`).
const PART_PAUSE: Duration = Duration::from_millis(300);
/// How long the echo upstream sleeps on a path containing `/slow` (routes under test time out at 0.5 s).
const SLOW_UPSTREAM: Duration = Duration::from_millis(1500);
/// Budget for all cases together; past it the remaining cases are reported as not run (a failure).
const RUN_BUDGET: Duration = Duration::from_secs(150);
/// Fixed Host used by most cases, so the proxies' different ports never show up in answers.
const HOST: &str = "diff.test";

// ------------------------------------------------------------------------------------------------
// locating binaries



fn sluice_path() -> PathBuf {
    let p = std::env::var_os("SLUICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/sluice"));
    assert!(
        p.exists(),
        "sluice binary not found at {} (set SLUICE_BIN, or run `cargo build -p sluice` first; \
         `scripts/test` does). Use DIFF_AGAINST=envoy to test the harness against Envoy alone.",
        p.display()
    );
    p
}


// ------------------------------------------------------------------------------------------------
// child processes

/// Owns a spawned proxy; kills it by PID and reaps it when dropped (normal end or panic).
struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Proxy {
    guard: ChildGuard,
    listen_port: u16,
    /// The second listener (`edge_listener`: via, use_remote_address, request ids in responses).
    edge_port: u16,
    admin_port: u16,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Envoy,
    Sluice,
}

fn start_proxy(kind: Kind, label: &str, upstream_port: u16, refused_port: u16) -> Proxy {
    let listen_port = free_port();
    let edge_port = free_port();
    let admin_port = free_port();
    let config = CONFIG_TEMPLATE
        .replace("@ADMIN_PORT@", &admin_port.to_string())
        .replace("@LISTEN_PORT@", &listen_port.to_string())
        .replace("@EDGE_PORT@", &edge_port.to_string())
        .replace("@UPSTREAM_PORT@", &upstream_port.to_string())
        .replace("@REFUSED_PORT@", &refused_port.to_string());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("differential-{}-{label}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("envoy.yaml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.join("proxy.log");
    let log_file = std::fs::File::create(&log).unwrap();

    let mut cmd = match kind {
        Kind::Envoy => {
            let mut c = Command::new(envoy_path());
            // Several Envoys on one host: no shared-memory hot-restart state at all.
            c.arg("--disable-hot-restart");
            c
        }
        Kind::Sluice => {
            let mut c = Command::new(sluice_path());
            c.arg("proxy");
            c
        }
    };
    cmd.arg("-c")
        .arg(&config_path)
        .args(["--concurrency", "1", "--log-level", "warning"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {label}: {e}"));
    let mut guard = ChildGuard {
        name: label.to_string(),
        child,
        log,
    };

    // Ready = admin `/ready` answers 200 and the listener accepts connections.
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!(
                "{label} exited during start-up ({status}); log:\n{}",
                guard.log_tail()
            );
        }
        let ready = send(
            admin_port,
            &[text("GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n")],
            false,
        )
        .map(|r| r.status_code() == 200)
        .unwrap_or(false);
        if ready
            && TcpStream::connect(("127.0.0.1", listen_port)).is_ok()
            && TcpStream::connect(("127.0.0.1", edge_port)).is_ok()
        {
            break;
        }
        if start.elapsed() > STARTUP_DEADLINE {
            panic!(
                "{label} not ready after {STARTUP_DEADLINE:?}; log:\n{}",
                guard.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    Proxy {
        guard,
        listen_port,
        edge_port,
        admin_port,
    }
}

// ------------------------------------------------------------------------------------------------
// echo upstream

/// Loopback HTTP/1.1 server that answers every request with a JSON description of what it received.
/// Special paths (substring match): `/close` closes without answering, `/slow` sleeps first,
/// `/status/NNN` answers NNN, `/date` sends its own old `Date`, `/chunked` answers chunked,
/// `/nocl` answers without length and closes.
struct Echo {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn start_echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    thread::spawn(move || {
                        let _ = echo_conn(s);
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    Echo { port, stop }
}

fn echo_conn(stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut conn = Conn::new(stream, Instant::now() + Duration::from_secs(300));
    for _ in 0..1000 {
        let Some(head) = conn.read_head()? else {
            return Ok(());
        };
        let (start, headers) = parse_head(&head);
        let mut parts = start.splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        let body = conn.read_body(&headers, false, false)?;
        if path.contains("/close") {
            let _ = conn.stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        if path.contains("/garbage") {
            conn.stream.write_all(b"HELLO WORLD\r\n\r\n")?;
            let _ = conn.stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        if path.contains("/slow") {
            thread::sleep(SLOW_UPSTREAM);
        }
        if path.contains("/early100") {
            conn.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if path.contains("/nocontent") {
            conn.stream.write_all(
                b"HTTP/1.1 204 No Content\r\nServer: echo-upstream\r\nX-Up-Keep: 1\r\n\r\n",
            )?;
            continue;
        }
        let status: u16 = path
            .split("/status/")
            .nth(1)
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let json = serde_json::json!({
            "method": method,
            "path": path,
            "version": version,
            "headers": headers.iter().map(|(n, v)| vec![n.clone(), v.clone()]).collect::<Vec<_>>(),
            "body": String::from_utf8_lossy(&body),
        });
        let out = serde_json::to_vec(&json).unwrap();
        let http_version = if path.contains("/http10") {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        let mut resp = format!("{http_version} {status} {}\r\n", reason(status));
        if !path.contains("/noserver") {
            resp.push_str("Server: echo-upstream\r\n");
        }
        resp.push_str(
            "Content-Type: application/json\r\n\
             X-Up-Keep: 1\r\nX-Up-Rc-Remove: 1\r\nX-Up-Vh-Remove: 1\r\nX-Up-Route-Remove: 1\r\n",
        );
        if path.contains("/multi") {
            resp.push_str(
                "Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Multi: 1\r\nX-Multi: 2\r\n\
                 Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Envoy-Foo: 1\r\n\
                 X-Envoy-Upstream-Service-Time: from-upstream\r\nX-Envoy-Degraded: 1\r\nX-Envoy-Overloaded: true\r\n",
            );
        }
        if path.contains("/date") {
            resp.push_str("Date: Mon, 01 Jan 2001 00:00:00 GMT\r\n");
        }
        if path.contains("/chunked") {
            resp.push_str("Transfer-Encoding: chunked\r\n\r\n");
            let mut bytes = resp.into_bytes();
            for chunk in out.chunks(100) {
                bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                bytes.extend_from_slice(chunk);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
            conn.stream.write_all(&bytes)?;
        } else if path.contains("/nocl") || path.contains("/http10") {
            resp.push_str("Connection: close\r\n\r\n");
            conn.stream.write_all(resp.as_bytes())?;
            conn.stream.write_all(&out)?;
            return Ok(());
        } else {
            resp.push_str(&format!("Content-Length: {}\r\n\r\n", out.len()));
            let mut bytes = resp.into_bytes();
            bytes.extend_from_slice(&out);
            conn.stream.write_all(&bytes)?;
        }
    }
    Ok(())
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        418 => "I'm a teapot",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

// ------------------------------------------------------------------------------------------------
// a minimal HTTP/1.1 wire reader, shared by the client and the echo upstream

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
    eof: bool,
}

impl Conn {
    fn new(stream: TcpStream, deadline: Instant) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
            deadline,
            eof: false,
        }
    }

    /// Reads more bytes into `buf`; returns how many (0 at EOF).
    fn fill(&mut self) -> io::Result<usize> {
        if Instant::now() > self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request deadline passed",
            ));
        }
        let mut tmp = [0u8; 16384];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// The next header block (up to and without the blank line); `None` on a clean EOF before it.
    fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                let head = self.buf[..pos].to_vec();
                self.buf.drain(..pos + 4);
                return Ok(Some(head));
            }
            if self.buf.len() > 1 << 20 {
                return Err(io::Error::other("header block over 1 MiB"));
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a header block",
                ));
            }
        }
    }

    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line = self.buf[..pos].to_vec();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a line",
                ));
            }
        }
    }

    fn read_n(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a body",
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Body per HTTP/1.1 framing. `to_eof_allowed`: a response without length runs to EOF.
    fn read_body(
        &mut self,
        headers: &[(String, String)],
        no_body: bool,
        to_eof_allowed: bool,
    ) -> io::Result<Vec<u8>> {
        if no_body {
            return Ok(Vec::new());
        }
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        };
        if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked")) {
            let mut body = Vec::new();
            for _ in 0..100_000 {
                let line = self.read_line()?;
                let size_hex = String::from_utf8_lossy(&line);
                let size_hex = size_hex.split(';').next().unwrap_or("").trim().to_string();
                let size = usize::from_str_radix(&size_hex, 16)
                    .map_err(|_| io::Error::other(format!("bad chunk size {size_hex:?}")))?;
                if size == 0 {
                    for _ in 0..100 {
                        if self.read_line()?.is_empty() {
                            break;
                        }
                    }
                    return Ok(body);
                }
                body.extend(self.read_n(size)?);
                self.read_line()?;
            }
            return Err(io::Error::other("too many chunks"));
        }
        if let Some(len) = get("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::other(format!("bad content-length {len:?}")))?;
            return self.read_n(len);
        }
        if to_eof_allowed {
            for _ in 0..100_000 {
                if self.fill()? == 0 {
                    break;
                }
            }
            return Ok(std::mem::take(&mut self.buf));
        }
        Ok(Vec::new())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits a header block into its first line and `(name, value)` pairs in wire order.
fn parse_head(head: &[u8]) -> (String, Vec<(String, String)>) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        })
        .collect();
    (start, headers)
}

// ------------------------------------------------------------------------------------------------
// client

#[derive(Debug, Default)]
struct Response {
    interim: Vec<String>,
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Set when the exchange did not complete (reset, timeout, EOF before a full response).
    error: Option<String>,
}

impl Response {
    fn status_code(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// Sends `parts` (pausing between them) on a fresh connection and reads one response.
fn send(port: u16, parts: &[Vec<u8>], head_request: bool) -> io::Result<Response> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut conn = Conn::new(stream, Instant::now() + REQUEST_DEADLINE);
    let mut resp = Response::default();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            thread::sleep(PART_PAUSE);
        }
        if let Err(e) = conn.stream.write_all(part) {
            // The proxy may answer and close before reading everything; go on and read the answer.
            resp.error = Some(format!("write: {}", e.kind()));
            break;
        }
    }
    let result = (|| -> io::Result<()> {
        for _ in 0..10 {
            let Some(head) = conn.read_head()? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed without a response",
                ));
            };
            let (start, headers) = parse_head(&head);
            let code: u16 = start
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if (100..200).contains(&code) && code != 101 {
                resp.interim.push(start);
                continue;
            }
            let no_body = head_request || code == 204 || code == 304;
            resp.status_line = start;
            resp.body = conn.read_body(&headers, no_body, true)?;
            resp.headers = headers;
            return Ok(());
        }
        Err(io::Error::other("too many interim responses"))
    })();
    if let Err(e) = result {
        let kind = match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout".to_string(),
            io::ErrorKind::ConnectionReset => "connection reset".to_string(),
            _ => e.to_string(),
        };
        resp.error = Some(match resp.error.take() {
            Some(w) => format!("{w}; read: {kind}"),
            None => format!("read: {kind}"),
        });
    } else if resp
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with("write"))
    {
        // A full answer arrived although the request could not be fully written; that is fine.
        resp.error = None;
    }
    Ok(resp)
}

// ------------------------------------------------------------------------------------------------
// normalisation and rendering

fn is_imf_date(v: &str) -> bool {
    regex::Regex::new(r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$")
        .unwrap()
        .is_match(v)
}

fn is_uuid_v4(v: &str) -> bool {
    regex::Regex::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
        .unwrap()
        .is_match(v)
}

/// Masks values that legitimately differ between two runs, keeping their shape checked.
fn mask_header(name: &str, value: &str) -> String {
    let lname = name.to_ascii_lowercase();
    if lname == "date" && is_imf_date(value) && !value.contains(" 2001 ") {
        return "<date>".into();
    }
    if lname == "x-envoy-upstream-service-time"
        && !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
    {
        return "<ms>".into();
    }
    if lname == "x-request-id" && is_uuid_v4(value) {
        return "<uuid-v4>".into();
    }
    value.to_string()
}

fn render_text(bytes: &[u8]) -> String {
    const SHOWN: usize = 4000;
    let s = String::from_utf8_lossy(bytes);
    let escaped: String = s.escape_debug().collect();
    if escaped.len() <= SHOWN {
        return escaped;
    }
    // Long bodies: the head, plus length and a hash of the whole so a late difference still shows.
    let mut cut = SHOWN;
    while !escaped.is_char_boundary(cut) {
        cut -= 1;
    }
    let fnv = bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    });
    format!(
        "{}… ({} bytes, fnv1a64 {fnv:016x})",
        &escaped[..cut],
        bytes.len()
    )
}

/// A stable, line-oriented rendering; two proxies agree iff their renderings are equal.
fn render(resp: &Response) -> String {
    let mut out = String::new();
    for i in &resp.interim {
        writeln!(out, "interim: {i}").unwrap();
    }
    if !resp.status_line.is_empty() {
        writeln!(out, "status: {}", resp.status_line).unwrap();
    }
    for (n, v) in &resp.headers {
        writeln!(out, "  {n}: {}", mask_header(n, v)).unwrap();
    }
    let echoed = resp
        .headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("content-type") && v == "application/json")
        && resp
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("x-up-keep"));
    match serde_json::from_slice::<serde_json::Value>(&resp.body) {
        Ok(v) if echoed && v.get("headers").is_some() => {
            writeln!(
                out,
                "upstream saw: {} {} {}",
                v["method"].as_str().unwrap_or("?"),
                v["path"].as_str().unwrap_or("?"),
                v["version"].as_str().unwrap_or("?")
            )
            .unwrap();
            for h in v["headers"].as_array().into_iter().flatten() {
                let n = h[0].as_str().unwrap_or("?");
                let val = h[1].as_str().unwrap_or("?");
                writeln!(out, "    {n}: {}", mask_header(n, val)).unwrap();
            }
            writeln!(
                out,
                "  upstream body: {}",
                render_text(v["body"].as_str().unwrap_or("").as_bytes())
            )
            .unwrap();
        }
        _ => {
            writeln!(out, "body: {}", render_text(&resp.body)).unwrap();
        }
    }
    if let Some(e) = &resp.error {
        writeln!(out, "error: {e}").unwrap();
    }
    out
}

// ------------------------------------------------------------------------------------------------
// the cases

struct Case {
    name: &'static str,
    /// Raw bytes to send, in parts (sent with a pause between them).
    parts: Vec<Vec<u8>>,
    head: bool,
    /// Sent to the admin listener instead of the HTTP listener.
    admin: bool,
    /// Sent to the edge listener instead of the main HTTP listener.
    edge: bool,
    /// Sent as HTTP/2 (h2c, prior knowledge) instead of the raw `parts`.
    h2: Option<H2Request>,
}

struct H2Request {
    method: &'static str,
    path: &'static str,
    authority: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static [u8],
}

fn h2(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &[(&'static str, &'static str)],
    body: &'static [u8],
) -> Case {
    Case {
        h2: Some(H2Request {
            method,
            path,
            authority: HOST,
            headers: headers.to_vec(),
            body,
        }),
        ..case(name, Vec::new())
    }
}

/// One HTTP/2 request over a fresh h2c (prior knowledge) connection, with hyper's client.
/// Header order is the order hyper's `HeaderMap` keeps (wire order, repeated names grouped).
fn send_h2(port: u16, r: &H2Request) -> Response {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        tokio::time::timeout(REQUEST_DEADLINE, async {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await?;
            tokio::spawn(conn);
            let mut req = http::Request::builder()
                .method(r.method)
                .uri(format!("http://{}{}", r.authority, r.path));
            for (n, v) in &r.headers {
                req = req.header(*n, *v);
            }
            let req = req.body(http_body_util::Full::new(bytes::Bytes::from_static(r.body)))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.into_body().collect().await?.to_bytes().to_vec();
            anyhow::Ok(Response {
                status_line: format!("HTTP/2 {}", status.as_u16()),
                headers,
                body,
                ..Default::default()
            })
        })
        .await
    });
    match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => Response {
            error: Some(format!("h2: {e:#}")),
            ..Default::default()
        },
        Err(_) => Response {
            error: Some("h2: timeout".into()),
            ..Default::default()
        },
    }
}

/// `METHOD path HTTP/1.1`, `Host: diff.test`, extra header lines, blank line.
fn req(method: &str, path: &str, extra: &[&str]) -> Vec<u8> {
    req_host(method, path, HOST, extra)
}

fn req_host(method: &str, path: &str, host: &str, extra: &[&str]) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn case(name: &'static str, bytes: Vec<u8>) -> Case {
    Case {
        name,
        parts: vec![bytes],
        head: false,
        admin: false,
        edge: false,
        h2: None,
    }
}

/// A case sent to the edge listener.
fn edge(name: &'static str, bytes: Vec<u8>) -> Case {
    Case { edge: true, ..case(name, bytes) }
}

fn admin(name: &'static str, path: &str) -> Case {
    Case {
        admin: true,
        ..case(name, req_host("GET", path, "admin", &[]))
    }
}

/// Percent-encodes everything but unreserved characters (for admin query values).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn raw(name: &'static str, s: &str) -> Case {
    case(name, text(s))
}

fn text(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn cases() -> Vec<Case> {
    let get = |path: &str| req("GET", path, &[]);
    let v = vec![
        // --- route matching
        case("route/prefix", get("/echo/hello?x=1")),
        case("route/prefix-no-segment-boundary", get("/echoes")),
        case("route/path-exact-with-query", get("/exact?x=1")),
        case("route/path-trailing-slash-404", get("/exact/")),
        case("route/path-separated-prefix-exact", get("/seg")),
        case("route/path-separated-prefix-child", get("/seg/child")),
        case("route/path-separated-prefix-query", get("/seg?q=1")),
        case("route/path-separated-prefix-no-match-404", get("/segment")),
        case("route/safe-regex-with-query", get("/re/123?x=1")),
        case("route/safe-regex-no-match-404", get("/re/12a")),
        case("route/case-insensitive-prefix", get("/CI/Path")),
        case("route/case-sensitive-default-404", get("/ECHO/x")),
        case("route/percent-encoding-not-decoded-404", get("/%65cho/x")),
        case("route/header-match", req("GET", "/hdr", &["X-Match: yes"])),
        case("route/header-no-match", req("GET", "/hdr", &["X-Match: no"])),
        case("route/query-match", get("/qp?a=2&debug=1")),
        case("route/query-no-match", get("/qp?debug=2")),
        // --- virtual hosts
        case("vhost/exact", req_host("GET", "/direct", "exact.test", &[])),
        case("vhost/exact-case-insensitive", req_host("GET", "/direct", "EXACT.Test", &[])),
        case("vhost/exact-with-port-falls-to-star", req_host("GET", "/direct", "exact.test:8080", &[])),
        case("vhost/suffix", req_host("GET", "/direct", "x.wild.test", &[])),
        case("vhost/suffix-longest-wins", req_host("GET", "/direct", "x.a.wild.test", &[])),
        case("vhost/suffix-not-bare-domain", req_host("GET", "/direct", "wild.test", &[])),
        case("vhost/suffix-with-port-falls-to-star", req_host("GET", "/direct", "b.wild.test:80", &[])),
        case("vhost/prefix", req_host("GET", "/direct", "pre.foo", &[])),
        case("vhost/prefix-swallows-port", req_host("GET", "/direct", "pre.foo:1234", &[])),
        case("vhost/domain-with-port", req_host("GET", "/direct", "port.test:8080", &[])),
        case("vhost/domain-with-port-needs-port", req_host("GET", "/direct", "port.test", &[])),
        // --- rewrites
        case("rewrite/prefix", get("/rw/abc?q=1")),
        case("rewrite/regex", get("/rx/abc?q=1")),
        case("rewrite/host-literal", get("/hostrw/x")),
        // --- redirects
        case("redirect/https", get("/redir/https/x?a=1")),
        case("redirect/https-keeps-port", req_host("GET", "/redir/https/x", "diff.test:8080", &[])),
        case("redirect/https-drops-port-80", req_host("GET", "/redir/https/x", "diff.test:80", &[])),
        case("redirect/host-path-found", get("/redir/host/x?a=1")),
        case("redirect/prefix-rewrite-307", get("/redir/prefix/tail?a=1")),
        // --- direct responses
        case("direct/body", get("/direct")),
        case("direct/no-body-503", get("/direct/empty")),
        Case { name: "direct/head", parts: vec![req("HEAD", "/direct", &[])], head: true, admin: false, edge: false, h2: None },
        case("direct/post-with-unread-body", req("POST", "/direct", &["Content-Length: 3"]).into_iter().chain(*b"abc").collect()),
        // --- local replies
        case("local/404-no-route", get("/nothing")),
        case("local/503-no-healthy-upstream", get("/empty")),
        case("local/503-connection-refused", get("/refused")),
        case("local/503-connection-termination", get("/echo/close")),
        case("local/504-upstream-timeout", get("/timeout/slow")),
        raw("local/400-relative-target", "GET service/1 HTTP/1.1\r\nHost: diff.test\r\n\r\n"),
        raw("local/400-missing-host", "GET /echo/x HTTP/1.1\r\n\r\n"),
        raw("local/400-fragment", "GET /echo/x#frag HTTP/1.1\r\nHost: diff.test\r\n\r\n"),
        raw("local/400-unknown-method", "FOO /echo/x HTTP/1.1\r\nHost: diff.test\r\n\r\n"),
        raw("local/400-header-without-colon", "GET /echo/x HTTP/1.1\r\nHost: diff.test\r\nbad header\r\n\r\n"),
        raw("local/400-duplicate-content-length", "POST /echo/x HTTP/1.1\r\nHost: diff.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        raw("local/400-te-and-cl", "POST /echo/x HTTP/1.1\r\nHost: diff.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        raw("local/501-te-gzip", "POST /echo/x HTTP/1.1\r\nHost: diff.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        raw("local/426-http10", "GET /echo/x HTTP/1.0\r\nHost: diff.test\r\n\r\n"),
        case("local/431-big-header", req("GET", "/echo/x", &[&format!("X-Big: {}", "a".repeat(70_000))])),
        case("local/403-websocket", req("GET", "/echo/ws", &["Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])),
        raw("local/404-options-star", "OPTIONS * HTTP/1.1\r\nHost: diff.test\r\n\r\n"),
        // --- headers towards upstream and back
        case("headers/three-levels", req("GET", "/echo/levels", &[
            "X-Route-Remove: 1", "X-Vh-Remove: 1", "X-Rc-Remove: 1", "X-Appended: client", "X-If-Absent: client", "X-If-Exists: client", "X-Overwritten: client",
        ])),
        case("headers/x-forwarded-proto-kept", req("GET", "/echo/xfp", &["X-Forwarded-Proto: https"])),
        case("headers/x-request-id-kept", req("GET", "/echo/rid", &["X-Request-Id: my-own-id"])),
        case("headers/x-envoy-control-stripped", req("GET", "/echo/strip", &[
            "X-Envoy-Retry-On: 5xx", "X-Envoy-Max-Retries: 3", "X-Envoy-Upstream-Rq-Timeout-Ms: 1",
            "X-Envoy-Upstream-Rq-Per-Try-Timeout-Ms: 1", "X-Envoy-Expected-Rq-Timeout-Ms: 1", "X-Envoy-Internal: true",
            "X-Envoy-Force-Trace: 1", "X-Envoy-Foo: kept", "X-Envoy-Original-Path: /client", "X-Envoy-Attempt-Count: 9",
            "X-Forwarded-Client-Cert: x", "X-Forwarded-For: 1.2.3.4", "Via: 1.1 client",
        ])),
        case("headers/hop-by-hop", req("GET", "/echo/hop", &[
            "Connection: keep-alive, x-hop", "X-Hop: 1", "Keep-Alive: timeout=5", "Proxy-Connection: keep-alive", "TE: trailers",
        ])),
        case("headers/underscore-and-case", req("GET", "/echo/under", &["x_under: 1", "X-Mixed-Case: Value"])),
        case("headers/duplicate-host-joined", text("GET /echo/dup HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n")),
        case("headers/obs-fold", text("GET /echo/fold HTTP/1.1\r\nHost: diff.test\r\nX-Fold: a\r\n b\r\n\r\n")),
        case("headers/absolute-form-uri-wins", text("GET http://abs.test/echo/abs?q=1 HTTP/1.1\r\nHost: diff.test\r\n\r\n")),
        case("headers/expected-timeout-route", get("/timeout/fast")),
        case("headers/no-expected-timeout-when-0s", get("/notimeout/x")),
        case("headers/upstream-date-kept", get("/echo/date")),
        case("headers/upstream-status-passthrough", get("/echo/status/503")),
        case("headers/upstream-chunked-response", get("/echo/chunked")),
        case("headers/upstream-no-length-response", get("/echo/nocl")),
        // --- bodies
        case("body/content-length", req("POST", "/echo/post", &["Content-Length: 5"]).into_iter().chain(*b"hello").collect()),
        case("body/chunked", text("POST /echo/chunked-req HTTP/1.1\r\nHost: diff.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")),
        Case {
            name: "body/expect-100-continue",
            parts: vec![req("POST", "/echo/expect", &["Content-Length: 3", "Expect: 100-continue"]), b"abc".to_vec()],
            head: false,
            admin: false,
            edge: false,
            h2: None,
        },
        // --- connection handling and more parsing
        case("conn/close-request-proxied", req("GET", "/echo/conn", &["Connection: close"])),
        case("conn/close-request-local-404", req("GET", "/nothing", &["Connection: close"])),
        case("conn/close-request-direct", req("GET", "/direct", &["Connection: close"])),
        case("headers/duplicates-not-joined", req("GET", "/echo/dups", &["Cookie: a=1", "Cookie: b=2", "X-Dup: 1", "X-Dup: 2"])),
        case("headers/empty-value", req("GET", "/echo/empty", &["X-Empty:"])),
        case("headers/host-with-port-kept", req_host("GET", "/echo/hostport", "diff.test:80", &[])),
        case("body/get-content-length-0", req("GET", "/echo/cl0", &["Content-Length: 0"])),
        raw("local/400-lowercase-method", "get /echo/x HTTP/1.1\r\nHost: diff.test\r\n\r\n"),
        raw("local/400-lowercase-version", "GET /echo/x http/1.1\r\nHost: diff.test\r\n\r\n"),
        raw("local/400-space-before-colon", "GET /echo/x HTTP/1.1\r\nHost: diff.test\r\nX-Sp : v\r\n\r\n"),
        case("route/double-slash-not-merged-404", get("//echo/x")),
        case("route/dot-segments-verbatim", get("/echo/../echo/x")),
        case("upgrade/h2c-ignored", req("GET", "/echo/h2c", &["Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"])),
        case("upgrade/websocket-without-connection-header", req("GET", "/echo/ws2", &["Upgrade: websocket"])),
        case("upgrade/websocket-no-route-404", req("GET", "/nothing", &["Connection: Upgrade", "Upgrade: websocket"])),
        case("upgrade/websocket-direct-route-403", req("GET", "/direct", &["Connection: Upgrade", "Upgrade: websocket"])),
        case("headers/te-non-trailers-dropped", req("GET", "/echo/te", &["TE: gzip"])),
        raw("local/501-te-identity", "GET /echo/x HTTP/1.1\r\nHost: diff.test\r\nTransfer-Encoding: identity\r\n\r\n"),
        raw("body/get-chunked-empty", "GET /echo/chunked-empty HTTP/1.1\r\nHost: diff.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        case("rewrite/client-original-path-overwritten-in-place", req("GET", "/rw/x", &["X-Envoy-Original-Path: /client", "X-After: 1"])),
        case("rewrite/client-original-host-overwritten-in-place", req("GET", "/hostrw/x", &["X-Envoy-Original-Host: client", "X-After: 1"])),
        case("upstream/garbage-503-protocol-error", get("/echo/garbage")),
        case("upstream/100-continue-from-upstream", get("/echo/early100")),
        case("upstream/204-no-content", get("/echo/nocontent")),
        case("upstream/multi-headers-and-envoy-headers", get("/echo/multi")),
        case("upstream/no-server-header", get("/echo/noserver")),
        case("upstream/http10-response", get("/echo/http10")),
        // --- pseudo-header matchers, `location` on 201/3xx direct responses, a configured type
        case("route/pseudo-method", req("POST", "/pseudo", &["Content-Length: 0"])),
        case("route/pseudo-authority", req_host("GET", "/pseudo", "auth.test", &[])),
        case("route/pseudo-path", get("/pseudo?x=1")),
        case("route/pseudo-scheme", get("/pseudo")),
        case("direct/201-location", get("/location/201?q=1")),
        case("direct/301-location-not-body", get("/location/301")),
        case("direct/302-no-body-location", get("/location/302")),
        case("direct/configured-content-type", get("/typed")),
        // --- a body-less request of a method that carries a body gets `content-length: 0`
        case("body/post-without-body", req("POST", "/echo/nobody", &[])),
        case("body/put-without-body", req("PUT", "/echo/nobody", &[])),
        case("body/options-without-body", req("OPTIONS", "/echo/nobody", &[])),
        case("body/patch-without-body", req("PATCH", "/echo/nobody", &[])),
        case("body/delete-without-body", req("DELETE", "/echo/nobody", &[])),
        case("body/trace-without-body", req("TRACE", "/echo/nobody", &[])),
        // --- the edge listener: via, x-forwarded-for with a trusted hop, request ids, PASS_THROUGH
        edge("edge/proxied", get("/echo/edge")),
        edge("edge/via-joined", req("GET", "/echo/via", &["Via: 1.0 a", "Via: 1.1 b"])),
        edge("edge/xff-one-hop", req("GET", "/echo/xff", &["X-Forwarded-For: 1.2.3.4"])),
        edge("edge/xff-two-hops", req("GET", "/echo/xff", &["X-Forwarded-For: 1.2.3.4, 5.6.7.8"])),
        edge("edge/external-address-overwritten", req("GET", "/echo/xea", &["X-Envoy-External-Address: 9.9.9.9"])),
        edge("edge/direct-local-reply", get("/direct")),
        edge("edge/404-local-reply", get("/nothing")),
        edge("edge/upstream-server-passed-through", get("/echo/noserver")),
        // --- HTTP/2 (h2c prior knowledge) downstream
        h2("h2/proxied", "GET", "/echo/h2?x=1", &[("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers"), ("x-request-id", "h2-id")], b""),
        h2("h2/proxied-post-body", "POST", "/echo/h2post", &[("content-type", "text/plain")], b"hello"),
        h2("h2/404-no-route", "GET", "/nothing", &[], b""),
        h2("h2/direct-body", "GET", "/direct", &[], b""),
        h2("h2/direct-no-body", "GET", "/direct/empty", &[], b""),
        h2("h2/redirect", "GET", "/redir/https/x?a=1", &[], b""),
        h2("h2/503-no-healthy-upstream", "GET", "/empty", &[], b""),
        h2("h2/503-connection-termination", "GET", "/echo/close", &[], b""),
        h2("h2/504-upstream-timeout", "GET", "/timeout/slow", &[], b""),
        h2("h2/upstream-chunked-response", "GET", "/echo/chunked", &[], b""),
        // --- gRPC requests get gRPC local replies (trailers-only, grpc-status from the HTTP status)
        h2("grpc/404-unimplemented", "POST", "/nothing", &[("content-type", "application/grpc")], b""),
        h2("grpc/503-unavailable", "POST", "/empty", &[("content-type", "application/grpc"), ("te", "trailers")], b""),
        h2("grpc/504-timeout", "POST", "/timeout/slow", &[("content-type", "application/grpc")], b""),
        h2("grpc/direct-200-unknown", "POST", "/direct", &[("content-type", "application/grpc+proto")], b""),
        case("grpc/http1-404", req("POST", "/nothing", &["Content-Type: application/grpc", "Content-Length: 0"])),
        // --- admin (last: the stats counters reflect all the requests above)
        admin("admin/ready", "/ready"),
        admin("admin/listeners", "/listeners"),
        admin("admin/listeners-json", "/listeners?format=json"),
        admin("admin/stats-filter-server-state", "/stats?filter=server.state"),
        admin("admin/stats-filter-json", "/stats?filter=server.state&format=json"),
        admin(
            "admin/stats-http-counters",
            &format!(
                "/stats?filter={}",
                pct(r"^http\.diff_http\.(downstream_rq_[1-5]xx|downstream_rq_total|no_route|rq_direct_response|rq_redirect|rq_total)$")
            ),
        ),
        admin(
            "admin/stats-cluster-counters",
            &format!(
                "/stats?filter={}",
                pct(r"^cluster\.(echo|empty|refused)\.(upstream_rq_total|upstream_rq_[0-9]+|upstream_cx_none_healthy|upstream_cx_connect_fail|upstream_rq_timeout)$")
            ),
        ),
        admin("admin/get-on-post-endpoint-405", "/healthcheck/fail"),
        admin("admin/config-dump-resource-masked", "/config_dump?resource=static_clusters&mask=cluster.name,cluster.type"),
        admin("admin/config-dump-name-regex", "/config_dump?resource=static_clusters&name_regex=%5Ee&mask=cluster.name"),
        admin("admin/config-dump-unknown-resource-404", "/config_dump?resource=nonsense"),
        admin("admin/config-dump-empty-resource", "/config_dump?resource=dynamic_active_clusters"),
        admin("admin/config-dump-mask-only", "/config_dump?mask=static_route_configs.route_config.name"),
    ];
    // Known differences run last, after the admin cases, so the stats comparisons above count
    // only requests both proxies handle the same way.
    let (known, mut v): (Vec<Case>, Vec<Case>) =
        v.into_iter().partition(|c| known_difference(c.name).is_some());
    v.extend(known);
    if let Ok(only) = std::env::var("DIFF_ONLY") {
        v.retain(|c| c.name.contains(&only));
    }
    v
}

/// Cases where sluice knowingly answers differently from Envoy, with the reason. A listed case
/// that starts to match fails the test, so the list stays true.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    ("headers/three-levels", "a header appended to an existing name is written next to its first value (hyper's HeaderMap groups values by name); Envoy writes it at the end"),
    ("admin/config-dump-unknown-resource-404", "Envoy sends x-content-type-options twice, before content-type and after cache-control; an http::HeaderMap keeps one line per name in the place of its first line"),
    ("admin/config-dump-mask-only", "Envoy sends x-content-type-options twice, before content-type and after cache-control; an http::HeaderMap keeps one line per name in the place of its first line"),
];

fn known_difference(name: &str) -> Option<&'static str> {
    KNOWN_DIFFERENCES.iter().find(|(n, _)| *n == name).map(|(_, why)| *why)
}

// ------------------------------------------------------------------------------------------------
// the test

/// Renders `answer` with each proxy's own ports masked (a few answers may mention them).
fn render_for(proxy: &Proxy, resp: &Response) -> String {
    render(resp)
        .replace(&proxy.listen_port.to_string(), "<listen-port>")
        .replace(&proxy.edge_port.to_string(), "<edge-port>")
        .replace(&proxy.admin_port.to_string(), "<admin-port>")
}

#[test]
fn differential_envoy_vs_sluice() {
    let against = match std::env::var("DIFF_AGAINST").as_deref() {
        Ok("envoy") => Kind::Envoy,
        Ok("sluice") | Err(_) => Kind::Sluice,
        Ok(other) => panic!("DIFF_AGAINST must be `envoy` or `sluice`, not {other:?}"),
    };
    // Fail early and clearly when a binary is missing.
    envoy_path();
    if against == Kind::Sluice {
        sluice_path();
    }
    let echo = start_echo();
    let refused_port = free_port();
    let mut reference = start_proxy(Kind::Envoy, "envoy", echo.port, refused_port);
    let other_label = if against == Kind::Envoy {
        "envoy-2"
    } else {
        "sluice"
    };
    let mut other = start_proxy(against, other_label, echo.port, refused_port);

    let cases = cases();
    assert!(!cases.is_empty(), "DIFF_ONLY matched no case");
    let verbose = std::env::var_os("DIFF_VERBOSE").is_some();
    let mut record = String::from(
        "# Envoy 1.40 answers to the differential cases (normalised: <date>, <ms>, <uuid-v4>).\n\
         # Regenerate: DIFF_AGAINST=envoy DIFF_RECORD=1 cargo test -p sluice-proxy --test differential\n",
    );
    let mut failures: BTreeMap<&str, String> = BTreeMap::new();
    let started = Instant::now();
    for (i, c) in cases.iter().enumerate() {
        if started.elapsed() > RUN_BUDGET {
            let left: Vec<&str> = cases[i..].iter().map(|c| c.name).collect();
            failures.insert(
                "(time budget)",
                format!(
                    "{RUN_BUDGET:?} spent; {} cases not run: {}\n",
                    left.len(),
                    left.join(", ")
                ),
            );
            break;
        }
        let port = |p: &Proxy| {
            if c.admin {
                p.admin_port
            } else if c.edge {
                p.edge_port
            } else {
                p.listen_port
            }
        };
        let (a, b) = if let Some(r) = &c.h2 {
            (send_h2(port(&reference), r), send_h2(port(&other), r))
        } else {
            let a = send(port(&reference), &c.parts, c.head)
                .unwrap_or_else(|e| panic!("{}: cannot reach Envoy: {e}", c.name));
            let b = send(port(&other), &c.parts, c.head).unwrap_or_else(|e| Response {
                error: Some(format!("connect: {e}")),
                ..Default::default()
            });
            (a, b)
        };
        let (ra, rb) = (render_for(&reference, &a), render_for(&other, &b));
        write!(record, "\n=== {}\n{ra}", c.name).unwrap();
        if verbose {
            eprintln!("=== {}\n{ra}", c.name);
        }
        let known = if against == Kind::Sluice { known_difference(c.name) } else { None };
        match (ra == rb, known) {
            (true, None) => eprintln!("same  {}", c.name),
            (false, None) => {
                eprintln!("DIFF  {}", c.name);
                failures.insert(c.name, line_diff(&ra, &rb, other_label));
            }
            (false, Some(why)) => eprintln!("KNOWN {} ({why})", c.name),
            (true, Some(_)) => {
                failures.insert(
                    c.name,
                    "listed in KNOWN_DIFFERENCES but now answers like Envoy: remove it from the list\n".to_string(),
                );
            }
        }
    }
    eprintln!(
        "{} cases in {:.1}s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );

    // Envoy's own answers must match the committed recording: catches a different Envoy build, and
    // keeps envoy-answers.txt (which people read as the reference) true.
    let answers_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential/envoy-answers.txt");
    if std::env::var_os("DIFF_ONLY").is_none() {
        if std::env::var_os("DIFF_RECORD").is_some() {
            std::fs::write(&answers_path, &record).unwrap();
            eprintln!("recorded Envoy's answers in {}", answers_path.display());
        } else {
            let recorded = std::fs::read_to_string(&answers_path).unwrap_or_default();
            if recorded != record {
                failures.insert(
                    "(recording)",
                    format!(
                        "live Envoy answers differ from {} (after adding or changing a case, regenerate with \
                         DIFF_AGAINST=envoy DIFF_RECORD=1 cargo test -p sluice-proxy --test differential); - recorded, + live:\n{}",
                        answers_path.display(),
                        compact(&line_diff(&recorded, &record, "live envoy"))
                    ),
                );
            }
        }
    }
    // Both processes must still be alive: a crash mid-run is a failure of its own.
    for p in [&mut reference, &mut other] {
        if let Ok(Some(status)) = p.guard.child.try_wait() {
            failures.insert(
                "(process)",
                format!(
                    "{} exited during the run ({status})\n{}",
                    p.guard.name,
                    p.guard.log_tail()
                ),
            );
        }
    }
    drop(echo);

    if !failures.is_empty() {
        let mut msg = format!(
            "{} of {} cases differ between Envoy and {other_label} (or other problems below):\n",
            failures.len(),
            cases.len()
        );
        for (name, diff) in &failures {
            write!(msg, "\n--- {name}\n{diff}").unwrap();
        }
        if against == Kind::Sluice {
            let bin = sluice_path();
            let age = std::fs::metadata(&bin)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map_or("?".to_string(), |d| format!("{}s", d.as_secs()));
            write!(
                msg,
                "\n(sluice binary {} was built {age} ago; rebuild with `cargo build -p sluice`)\n",
                bin.display()
            )
            .unwrap();
        }
        let names: Vec<&str> = failures.keys().copied().collect();
        write!(msg, "\ndiffering: {}\n", names.join(" ")).unwrap();
        write!(msg, "\n{other_label} log tail:\n{}", other.guard.log_tail()).unwrap();
        panic!("{msg}");
    }
}

/// Keeps only the changed lines of a `line_diff`, each group under its `=== case` line.
fn compact(diff: &str) -> String {
    let mut out = String::new();
    let mut context = "";
    for line in diff.lines() {
        if line.starts_with("  === ") {
            context = line;
        } else if line.starts_with("+ ") || line.starts_with("- ") {
            if !context.is_empty() {
                writeln!(out, "{context}").unwrap();
                context = "";
            }
            writeln!(out, "{line}").unwrap();
        }
    }
    out
}

/// Line-by-line comparison: `  ` same, `- ` Envoy only, `+ ` other only (simple LCS).
fn line_diff(a: &str, b: &str, other: &str) -> String {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0usize; y.len() + 1]; x.len() + 1];
    for i in (0..x.len()).rev() {
        for j in (0..y.len()).rev() {
            lcs[i][j] = if x[i] == y[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!("(- envoy, + {other})\n");
    let (mut i, mut j) = (0, 0);
    while i < x.len() || j < y.len() {
        if i < x.len() && j < y.len() && x[i] == y[j] {
            writeln!(out, "  {}", x[i]).unwrap();
            i += 1;
            j += 1;
        } else if j < y.len() && (i == x.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            writeln!(out, "+ {}", y[j]).unwrap();
            j += 1;
        } else {
            writeln!(out, "- {}", x[i]).unwrap();
            i += 1;
        }
    }
    out
}

#[test]
fn harness_renderings_tell_answers_apart() {
    let base = Response {
        status_line: "HTTP/1.1 404 Not Found".into(),
        headers: vec![
            ("date".into(), "Tue, 24 Nov 2026 22:04:59 GMT".into()),
            ("server".into(), "envoy".into()),
            ("content-length".into(), "0".into()),
        ],
        ..Default::default()
    };
    let same_shape = Response {
        headers: vec![
            ("date".into(), "Wed, 25 Nov 2026 01:00:00 GMT".into()),
            ("server".into(), "envoy".into()),
            ("content-length".into(), "0".into()),
        ],
        status_line: base.status_line.clone(),
        ..Default::default()
    };
    assert_eq!(render(&base), render(&same_shape), "dates are masked");
    let reordered = Response {
        headers: vec![
            base.headers[1].clone(),
            base.headers[0].clone(),
            base.headers[2].clone(),
        ],
        status_line: base.status_line.clone(),
        ..Default::default()
    };
    assert_ne!(render(&base), render(&reordered), "header order matters");
    let other_status = Response {
        status_line: "HTTP/1.1 404 Not found".into(),
        headers: base.headers.clone(),
        ..Default::default()
    };
    assert_ne!(
        render(&base),
        render(&other_status),
        "reason phrase matters"
    );
    let bad_date = Response {
        headers: vec![
            ("date".into(), "2026-11-24".into()),
            base.headers[1].clone(),
            base.headers[2].clone(),
        ],
        status_line: base.status_line.clone(),
        ..Default::default()
    };
    assert_ne!(
        render(&base),
        render(&bad_date),
        "a date of the wrong shape is not masked"
    );
    assert_eq!(
        mask_header("x-request-id", "655128e4-3e1e-43b2-ba19-ee2a8aa02859"),
        "<uuid-v4>"
    );
    assert_eq!(mask_header("x-request-id", "my-own-id"), "my-own-id");
    assert_eq!(mask_header("x-envoy-upstream-service-time", "12"), "<ms>");
    let d = line_diff("a\nb\nc\n", "a\nc\nd\n", "x");
    assert!(
        d.contains("- b") && d.contains("+ d") && d.contains("  a"),
        "{d}"
    );
}

// ------------------------------------------------------------------------------------------------
// `--mode validate`

struct Validated {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `<bin> [proxy] --mode validate -c <file>` with a time limit; kills it by PID if it hangs.
fn run_validate(kind: Kind, config: &Path) -> Validated {
    let mut cmd = match kind {
        Kind::Envoy => Command::new(envoy_path()),
        Kind::Sluice => {
            let mut c = Command::new(sluice_path());
            c.arg("proxy");
            c
        }
    };
    let dir = config.parent().unwrap();
    let (out, err) = (
        dir.join(format!("{kind:?}.stdout")),
        dir.join(format!("{kind:?}.stderr")),
    );
    let mut child = ChildGuard {
        name: format!("{kind:?} validate"),
        child: cmd
            .args(["--mode", "validate", "-c"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {kind:?} --mode validate: {e}")),
        log: err.clone(),
    };
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(30) {
            break None; // the guard kills it
        }
        thread::sleep(Duration::from_millis(20));
    };
    drop(child);
    Validated {
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// `--mode validate` on the differential config and on broken variants of it: same exit code, same
/// stdout (`configuration '<path>' OK` on success, nothing on failure), and on failure stderr must hold
/// `error initializing configuration '<path>': ` and the stable fragments of Envoy's reason (compared
/// whitespace-collapsed: protobuf messages carry random whitespace).
#[test]
fn validate_mode_matches_envoy() {
    let against = match std::env::var("DIFF_AGAINST").as_deref() {
        Ok("envoy") => Kind::Envoy,
        _ => Kind::Sluice,
    };
    envoy_path();
    if against == Kind::Sluice {
        sluice_path();
    }
    let good = CONFIG_TEMPLATE
        .replace("@ADMIN_PORT@", "19001")
        .replace("@LISTEN_PORT@", "19000")
        .replace("@EDGE_PORT@", "19004")
        .replace("@UPSTREAM_PORT@", "19002")
        .replace("@REFUSED_PORT@", "19003");
    let bad = |from: &str, to: &str| {
        assert!(
            good.contains(from),
            "variant anchor {from:?} missing from the config"
        );
        good.replacen(from, to, 1)
    };
    // (name, config, fragments that must appear in stderr; empty for a valid config). Envoy's own
    // messages are required word for word; for errors worded by a library (protobuf JSON, RE2,
    // yaml-cpp) only the offending token is required.
    let variants: Vec<(&str, String, Vec<&str>)> = vec![
        ("valid", good.clone(), vec![]),
        (
            "unknown-field",
            bad("stat_prefix: diff_http", "stat_prefix: diff_http\n          bogus_field: 1"),
            vec!["bogus_field"],
        ),
        ("bad-enum", bad("codec_type: AUTO", "codec_type: HTTP9"), vec!["HTTP9"]),
        (
            "duplicate-domain",
            bad(r#"domains: ["pre.*"]"#, r#"domains: ["exact.test"]"#),
            vec!["Only unique values for domains are permitted. Duplicate entry of domain exact.test in route diff_routes"],
        ),
        (
            "two-wildcards",
            bad(r#"domains: ["pre.*"]"#, r#"domains: ["*"]"#),
            vec!["Only a single wildcard domain is permitted in route diff_routes"],
        ),
        (
            "unknown-cluster",
            bad("route: { cluster: empty }", "route: { cluster: does-not-exist }"),
            vec!["route: unknown cluster 'does-not-exist'"],
        ),
        (
            "duplicate-cluster",
            format!("{good}  - name: echo\n    type: STATIC\n    connect_timeout: 1s\n"),
            vec!["cluster manager: duplicate cluster 'echo'"],
        ),
        ("bad-regex", bad("^/re/[0-9]+$", "^/re/[0-9+$"), vec!["[0-9+$"]),
        ("yaml-syntax", bad("codec_type: AUTO", "codec_type: [AUTO"), vec!["line 24"]),
    ];
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("validate-{}", std::process::id()));
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut problems = Vec::new();
    for (name, config, fragments) in &variants {
        let case_dir = dir.join(name);
        std::fs::create_dir_all(&case_dir).unwrap();
        let path = case_dir.join("envoy.yaml");
        std::fs::write(&path, config).unwrap();
        let e = run_validate(Kind::Envoy, &path);
        let o = run_validate(against, &path);
        let prefix = format!("error initializing configuration '{}': ", path.display());
        let mut fragments: Vec<&str> = fragments.clone();
        if !fragments.is_empty() {
            fragments.push(&prefix);
        }
        // The harness's own expectations about Envoy (so a changed Envoy is noticed).
        let want_code = if fragments.is_empty() { 0 } else { 1 };
        assert_eq!(
            e.code,
            Some(want_code),
            "{name}: Envoy exit code; stderr:\n{}",
            e.stderr
        );
        for f in &fragments {
            assert!(
                squash(&e.stderr).contains(f),
                "{name}: Envoy stderr lacks {f:?}:\n{}",
                e.stderr
            );
        }
        if o.code != e.code {
            problems.push(format!(
                "{name}: exit code {:?}, Envoy {:?}; stderr:\n{}",
                o.code, e.code, o.stderr
            ));
        }
        if o.stdout != e.stdout {
            problems.push(format!(
                "{name}: stdout {:?}, Envoy {:?}",
                o.stdout, e.stdout
            ));
        }
        for f in &fragments {
            if !squash(&o.stderr).contains(f) {
                problems.push(format!(
                    "{name}: stderr lacks {f:?} (Envoy's has it); stderr:\n{}",
                    o.stderr
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "`--mode validate` differs from Envoy:\n{}",
        problems.join("\n")
    );
}
