//! `sluice-bench`: the load-generator helpers of `bench/run` that no Debian package provides.
//!
//! - `authz`: gRPC `envoy.service.auth.v3.Authorization/Check` load against an ext_authz server
//!   (`sluice authz`), N concurrent in-flight calls over M HTTP/2 connections, bounded by a
//!   duration and a request count. Prints one JSON object: checks/s, p50/p99/max latency, errors.
//! - `startup`: spawns a proxy command, polls a URL with a tight HTTP/1.1 client loop until the
//!   first 200 (bounded in time and attempts), waits an idle period, reads the child's RSS/peak
//!   RSS/CPU from /proc, stops it (SIGTERM, then SIGKILL) and prints one JSON object.
//!
//! Every loop here is bounded in time and in count; traffic goes only where it is told (the bench
//! uses loopback addresses only).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use serde_json::json;

#[derive(Parser)]
#[command(name = "sluice-bench", about = "bench/run's load generator helpers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// gRPC ext_authz Check load; prints a JSON result.
    Authz(AuthzArgs),
    /// Start a command, time it to the first HTTP 200 on a URL, then report its idle footprint.
    Startup(StartupArgs),
}

#[derive(clap::Args)]
struct AuthzArgs {
    /// ext_authz gRPC address (host:port).
    #[arg(long)]
    addr: String,
    /// Concurrent in-flight Check calls (HTTP/2 streams).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Measured duration (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before the measured duration.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Hard cap on the number of Check calls sent (warm-up included).
    #[arg(long, default_value_t = 5_000_000)]
    max_requests: u64,
    /// Request path put in the CheckRequest.
    #[arg(long, default_value = "/service/1")]
    path: String,
    /// HTTP method put in the CheckRequest.
    #[arg(long, default_value = "GET")]
    method: String,
    /// gRPC client: `h2` (the request encoded once, sent on raw HTTP/2 streams: the cheapest
    /// client, so the load generator is not the bottleneck) or `tonic` (a generated tonic client).
    #[arg(long, default_value = "h2", value_parser = ["h2", "tonic"])]
    client: String,
}

#[derive(clap::Args)]
struct StartupArgs {
    /// URL to poll (http://IP:PORT/path; plain HTTP/1.1 only).
    #[arg(long)]
    url: String,
    /// Give up after this long without a 200.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Idle time after the first 200, before reading the footprint.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    idle: Duration,
    /// Most attempts before giving up.
    #[arg(long, default_value_t = 200_000)]
    max_attempts: u64,
    /// File the child's stdout and stderr go to (default: discarded).
    #[arg(long)]
    log: Option<std::path::PathBuf>,
    /// The command to start (after `--`).
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().map_err(|_| format!("bad duration {s:?} (use 10s, 500ms)"))?;
    if !(0.0..1e6).contains(&v) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Authz(a) => authz(a),
        Cmd::Startup(a) => startup(a),
    };
    match result {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------------------------- authz

fn socket(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

/// A CheckRequest shaped like the one Envoy's ext_authz filter sends for a plain GET.
fn check_request(method: &str, path: &str) -> CheckRequest {
    let host = "127.0.66.2:20080";
    let headers: HashMap<String, String> = [
        (":authority", host),
        (":method", method),
        (":path", path),
        (":scheme", "http"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f1c9a8e-2b1d-4c7e-9f3a-0d5e8b7a6c41"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer { address: socket("127.0.0.1", 40000), ..Default::default() }),
            destination: Some(Peer { address: socket("127.0.66.2", 20080), ..Default::default() }),
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    id: "1234567890".into(),
                    method: method.into(),
                    headers,
                    path: path.into(),
                    host: host.into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

fn authz(a: AuthzArgs) -> anyhow::Result<serde_json::Value> {
    if a.concurrency == 0 || a.connections == 0 {
        bail!("--concurrency and --connections must be > 0");
    }
    // One thread: the bench pins the load generator to one core.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let uri = format!("http://{}", a.addr);
        let req = check_request(&a.method, &a.path);
        let mut clients = Vec::new();
        for _ in 0..a.connections {
            clients.push(CheckClient::connect(&a.client, &a.addr, &req).await.with_context(|| format!("connecting to {uri}"))?);
        }
        let sent = Arc::new(AtomicU64::new(0));
        let cpu0 = self_cpu_ms();
        let start = Instant::now();
        let measure_from = start + a.warmup;
        let end = measure_from + a.duration;
        let mut tasks = Vec::new();
        for i in 0..a.concurrency {
            let mut client = clients[i % clients.len()].clone();
            let req = req.clone();
            let sent = sent.clone();
            let max = a.max_requests;
            tasks.push(tokio::spawn(async move {
                let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
                let (mut ok, mut denied, mut errors) = (0u64, 0u64, 0u64);
                let mut last_done = measure_from;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end || sent.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                    let res = client.check(&req).await;
                    let t1 = Instant::now();
                    if t0 < measure_from {
                        continue;
                    }
                    last_done = t1;
                    lat.push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                    match res {
                        Ok(true) => ok += 1,
                        Ok(false) => denied += 1,
                        Err(_) => errors += 1,
                    }
                }
                (lat, ok, denied, errors, last_done)
            }));
        }
        let mut all = Vec::new();
        let (mut ok, mut denied, mut errors) = (0u64, 0u64, 0u64);
        let mut last = measure_from;
        for t in tasks {
            let (l, o, d, e, ld) = t.await?;
            all.extend(l);
            ok += o;
            denied += d;
            errors += e;
            last = last.max(ld);
        }
        let client_cpu_ms = self_cpu_ms() - cpu0;
        all.sort_unstable();
        let secs = (last - measure_from).as_secs_f64().max(1e-9);
        let n = all.len() as u64;
        Ok(json!({
            "requests": n,
            "ok": ok,
            "denied": denied,
            "errors": errors,
            "duration_s": secs,
            "rps": n as f64 / secs,
            "p50_us": percentile(&all, 50.0),
            "p99_us": percentile(&all, 99.0),
            "max_us": all.last().copied().unwrap_or(0),
            "concurrency": a.concurrency,
            "connections": a.connections,
            "client": a.client,
            "client_cpu_ms": client_cpu_ms,
        }))
    })
}

/// user+sys CPU time of this process so far, in ms (to show whether the client is the bottleneck).
fn self_cpu_ms() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// A Check client over one HTTP/2 connection; clones share the connection.
#[derive(Clone)]
enum CheckClient {
    /// Raw HTTP/2: the gRPC message (5-byte prefix + protobuf) is encoded once and re-sent.
    H2 { send: h2::client::SendRequest<Bytes>, uri: http::Uri, body: Bytes },
    Tonic(AuthorizationClient<tonic::transport::Channel>),
}

impl CheckClient {
    async fn connect(kind: &str, addr: &str, req: &CheckRequest) -> anyhow::Result<CheckClient> {
        if kind == "tonic" {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .connect()
                .await?;
            return Ok(CheckClient::Tonic(AuthorizationClient::new(ch)));
        }
        let tcp = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 24)
            .handshake::<_, Bytes>(tcp)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let msg = prost::Message::encode_to_vec(req);
        let mut body = Vec::with_capacity(msg.len() + 5);
        body.push(0u8);
        body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        body.extend_from_slice(&msg);
        Ok(CheckClient::H2 { send, uri: format!("http://{addr}{CHECK_PATH}").parse()?, body: Bytes::from(body) })
    }

    /// One Check: Ok(true) when allowed (status code 0), Ok(false) when denied.
    async fn check(&mut self, req: &CheckRequest) -> anyhow::Result<bool> {
        match self {
            CheckClient::Tonic(c) => Ok(c.check(req.clone()).await?.into_inner().status.is_some_and(|s| s.code == 0)),
            CheckClient::H2 { send, uri, body } => {
                let request = http::Request::post(uri.clone())
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())?;
                let mut ready = send.clone().ready().await?;
                let (response, mut stream) = ready.send_request(request, false)?;
                stream.send_data(body.clone(), true)?;
                let response = response.await?;
                if response.status() != http::StatusCode::OK {
                    bail!("HTTP status {}", response.status());
                }
                let headers_status = response.headers().get("grpc-status").cloned();
                let mut recv = response.into_body();
                let mut data = Vec::new();
                while let Some(chunk) = recv.data().await {
                    let chunk = chunk?;
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                let trailers = recv.trailers().await?;
                let status = trailers.as_ref().and_then(|t| t.get("grpc-status").cloned()).or(headers_status);
                if status.as_ref().map(|v| v.as_bytes()) != Some(b"0") {
                    bail!("grpc-status {status:?}");
                }
                if data.len() < 5 {
                    bail!("short gRPC message");
                }
                let resp: envoy_types::pb::envoy::service::auth::v3::CheckResponse = prost::Message::decode(&data[5..])?;
                Ok(resp.status.is_some_and(|s| s.code == 0))
            }
        }
    }
}

// ------------------------------------------------------------------------------------- startup

struct ProcStat {
    rss_kb: u64,
    hwm_kb: u64,
    cpu_ms: f64,
}

fn proc_stat(pid: u32) -> anyhow::Result<ProcStat> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = &stat[stat.rfind(')').context("bad /proc/pid/stat")? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?; // utime + stime
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ProcStat { rss_kb: field("VmRSS:"), hwm_kb: field("VmHWM:"), cpu_ms: ticks as f64 * 1000.0 / hz })
}

fn parse_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = hostport.to_socket_addrs()?.next().context("address does not resolve")?;
    Ok((addr, hostport.to_string(), path.to_string()))
}

/// One attempt: connect, send a GET, read the status code. None when not answering yet.
fn try_get(addr: &SocketAddr, host: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(addr, Duration::from_millis(200)).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-bench\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => return None,
            Ok(k) => n += k,
        }
    }
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.get(9..12)?.parse().ok()
}

fn startup(a: StartupArgs) -> anyhow::Result<serde_json::Value> {
    let (addr, host, path) = parse_url(&a.url)?;
    let (out, err) = match &a.log {
        Some(p) => {
            let f = std::fs::File::create(p)?;
            (Stdio::from(f.try_clone()?), Stdio::from(f))
        }
        None => (Stdio::null(), Stdio::null()),
    };
    let t0 = Instant::now();
    let mut child = Command::new(&a.command[0])
        .args(&a.command[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {:?}", a.command))?;
    let pid = child.id();
    let result = (|| -> anyhow::Result<serde_json::Value> {
        let mut attempts = 0u64;
        let mut last_status = None;
        let first_200 = loop {
            if t0.elapsed() > a.timeout || attempts >= a.max_attempts {
                bail!("no 200 from {} after {:?} and {attempts} attempts (last status {last_status:?})", a.url, t0.elapsed());
            }
            if let Some(st) = child.try_wait()? {
                bail!("the command exited before answering 200: {st}");
            }
            attempts += 1;
            match try_get(&addr, &host, &path) {
                Some(200) => break t0.elapsed(),
                Some(code) => {
                    last_status = Some(code);
                    std::thread::sleep(Duration::from_micros(500));
                }
                None => std::thread::sleep(Duration::from_micros(250)),
            }
        };
        std::thread::sleep(a.idle);
        let st = proc_stat(pid)?;
        Ok(json!({
            "first_200_ms": first_200.as_secs_f64() * 1000.0,
            "attempts": attempts,
            "idle_rss_kb": st.rss_kb,
            "peak_rss_kb": st.hwm_kb,
            "cpu_ms": st.cpu_ms,
            "pid": pid,
        }))
    })();
    // Stop the child we started: SIGTERM, then SIGKILL after 5 s.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }

    #[test]
    fn urls() {
        let (a, h, p) = parse_url("http://127.0.0.1:8080/service/1").unwrap();
        assert_eq!(a.port(), 8080);
        assert_eq!(h, "127.0.0.1:8080");
        assert_eq!(p, "/service/1");
        assert!(parse_url("https://x/").is_err());
    }
}
