//! `sluice lb-count`: send N requests and tally which replica answered (the guide's counting
//! script). HTTP/1.1 keep-alive connections, `-c` of them in parallel.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Arguments of `sluice lb-count`.
#[derive(clap::Args, Debug, Clone)]
pub struct LbCountArgs {
    /// URL to request (http only).
    #[arg(default_value = "http://localhost:8080/service/1")]
    pub url: String,
    /// Number of requests.
    #[arg(short = 'n', long = "requests", default_value_t = 200)]
    pub requests: u64,
    /// Number of connections sending requests in parallel.
    #[arg(short = 'c', long = "concurrency", default_value_t = 1)]
    pub concurrency: u64,
    /// What to tally: `resolved` (the body's `resolved` line), `header:NAME` (a response
    /// header), `regex:RE` (first capture group, or the whole match, in the body).
    #[arg(long, default_value = "resolved")]
    pub key: String,
    /// Request method.
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body (sent with every request).
    #[arg(short = 'd', long = "data")]
    pub data: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// What to tally per answer.
#[derive(Debug, Clone)]
pub enum Key {
    /// The body's `resolved …` line.
    Resolved,
    /// A response header.
    Header(HeaderName),
    /// First capture group (or whole match) of a regex over the body.
    Regex(regex::Regex),
}

impl std::str::FromStr for Key {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Key> {
        if s == "resolved" {
            Ok(Key::Resolved)
        } else if let Some(h) = s.strip_prefix("header:") {
            Ok(Key::Header(
                HeaderName::try_from(h.trim()).context("bad header name")?,
            ))
        } else if let Some(r) = s.strip_prefix("regex:") {
            Ok(Key::Regex(regex::Regex::new(r).context("bad regex")?))
        } else {
            bail!("--key must be `resolved`, `header:NAME` or `regex:RE`, not {s:?}")
        }
    }
}

impl Key {
    fn label(&self) -> String {
        match self {
            Key::Resolved => "resolved".into(),
            Key::Header(h) => format!("header {h}"),
            Key::Regex(r) => format!("regex {}", r.as_str()),
        }
    }

    /// The tally key of one answer.
    pub fn extract(&self, headers: &http::HeaderMap, body: &[u8]) -> String {
        match self {
            Key::Resolved => String::from_utf8_lossy(body)
                .lines()
                .find_map(|l| l.strip_prefix("resolved ").map(|v| v.trim().to_string()))
                .unwrap_or_else(|| "(no resolved line)".into()),
            Key::Header(h) => headers
                .get(h)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_else(|| format!("(no {h} header)")),
            Key::Regex(r) => {
                let text = String::from_utf8_lossy(body);
                match r.captures(&text) {
                    Some(c) => c
                        .get(1)
                        .or(c.get(0))
                        .map(|m| m.as_str().to_string())
                        .unwrap(),
                    None => "(no match)".into(),
                }
            }
        }
    }
}

/// The options of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target URL (http).
    pub url: Uri,
    /// Number of requests.
    pub requests: u64,
    /// Parallel connections.
    pub concurrency: u64,
    /// What to tally.
    pub key: Key,
    /// Request method.
    pub method: Method,
    /// Extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Request body.
    pub body: Bytes,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Options {
    /// From the command line.
    pub fn from_args(a: &LbCountArgs) -> anyhow::Result<Options> {
        let url: Uri = a
            .url
            .parse()
            .with_context(|| format!("bad URL {:?}", a.url))?;
        match url.scheme_str() {
            Some("http") => {}
            Some(s) => bail!("only http:// URLs are supported (got {s}://)"),
            None => bail!("URL needs a scheme: {}", a.url),
        }
        let mut headers = Vec::new();
        for h in &a.headers {
            let (n, v) = h
                .split_once(':')
                .ok_or_else(|| anyhow!("header {h:?} needs `Name: value`"))?;
            headers.push((
                HeaderName::try_from(n.trim())?,
                HeaderValue::try_from(v.trim())?,
            ));
        }
        if a.requests == 0 || a.concurrency == 0 {
            bail!("-n and -c must be at least 1");
        }
        Ok(Options {
            url,
            requests: a.requests,
            concurrency: a.concurrency.min(a.requests),
            key: a.key.parse()?,
            method: Method::from_bytes(a.method.as_bytes())?,
            headers,
            body: Bytes::from(a.data.clone().unwrap_or_default()),
            timeout: Duration::from_secs_f64(a.timeout.max(0.001)),
        })
    }
}

/// The counts of one run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// 2xx answers per key.
    pub keys: BTreeMap<String, u64>,
    /// Non-2xx answers per status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer, per error text.
    pub errors: BTreeMap<String, u64>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Tally {
    /// Number of 2xx answers.
    pub fn ok(&self) -> u64 {
        self.keys.values().sum()
    }
    /// Number of requests sent.
    pub fn total(&self) -> u64 {
        self.ok() + self.statuses.values().sum::<u64>() + self.errors.values().sum::<u64>()
    }

    /// The report: a table of keys with counts, percentages and bars, then failures.
    pub fn render(&self, opts: &Options) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let total = self.total();
        let secs = self.elapsed.as_secs_f64();
        let _ = writeln!(
            out,
            "{total} requests to {} in {secs:.2}s ({:.1} req/s), tallied by {}",
            opts.url,
            if secs > 0.0 { total as f64 / secs } else { 0.0 },
            opts.key.label()
        );
        let width = self
            .keys
            .keys()
            .map(|k| k.chars().count())
            .max()
            .unwrap_or(0)
            .max(8);
        let max = self.keys.values().copied().max().unwrap_or(0);
        let ok = self.ok();
        if !self.keys.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "  {:<width$}  {:>6}  {:>6}",
                opts.key.label(),
                "count",
                "%"
            );
            for (k, n) in &self.keys {
                let pct = 100.0 * *n as f64 / total.max(1) as f64;
                let _ = writeln!(
                    out,
                    "  {k:<width$}  {n:>6}  {pct:>5.1}%  {}",
                    bar(*n, max, 40)
                );
            }
        }
        if !self.statuses.is_empty() {
            let _ = writeln!(out, "\n  non-2xx answers");
            for (s, n) in &self.statuses {
                let reason = http::StatusCode::from_u16(*s)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or("");
                let pct = 100.0 * *n as f64 / total.max(1) as f64;
                let _ = writeln!(
                    out,
                    "  {:<width$}  {n:>6}  {pct:>5.1}%",
                    format!("{s} {reason}")
                );
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\n  errors (no answer)");
            for (e, n) in &self.errors {
                let _ = writeln!(out, "  {e:<width$}  {n:>6}");
            }
        }
        let _ = writeln!(out, "\n  {ok} of {total} answered 2xx");
        out
    }
}

/// A bar of `width` cells max, with eighth-cell resolution.
fn bar(n: u64, max: u64, width: usize) -> String {
    if max == 0 {
        return String::new();
    }
    let eighths = (n as f64 / max as f64 * width as f64 * 8.0).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    const PART: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    s.push_str(PART[eighths % 8]);
    s
}

/// Resolves the URL's host: IP literals, `localhost` → 127.0.0.1 (no libc), else the system.
pub async fn target_addr(url: &Uri) -> anyhow::Result<SocketAddr> {
    let host = url.host().ok_or_else(|| anyhow!("URL has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(80);
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| anyhow!("{host} did not resolve"))
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Sender> {
    let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect timeout"))??;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn short_error(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    if s.contains("Connection refused") {
        "connection refused".into()
    } else if s.contains("timeout") || s.contains("timed out") {
        "timeout".into()
    } else if s.contains("connection closed") || s.contains("reset") {
        "connection closed".into()
    } else {
        s.chars().take(60).collect()
    }
}

/// Sends the requests and tallies the answers. `on_done` is called after each request.
pub async fn count(
    opts: &Options,
    on_done: impl Fn() + Send + Sync + 'static,
) -> anyhow::Result<Tally> {
    let addr = target_addr(&opts.url).await?;
    let authority = opts
        .url
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let path = opts
        .url
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or("/".into());
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let on_done = Arc::new(on_done);
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..opts.concurrency {
        let (next, tally, on_done, opts) =
            (next.clone(), tally.clone(), on_done.clone(), opts.clone());
        let (authority, path) = (authority.clone(), path.clone());
        workers.spawn(async move {
            let mut sender: Option<Sender> = None;
            while next.fetch_add(1, Ordering::Relaxed) < opts.requests {
                let result: anyhow::Result<(u16, String)> = async {
                    if sender.as_ref().map(|s| s.is_closed()).unwrap_or(true) {
                        sender = Some(connect(addr, opts.timeout).await?);
                    }
                    let s = sender.as_mut().unwrap();
                    tokio::time::timeout(opts.timeout, s.ready())
                        .await
                        .map_err(|_| anyhow!("timeout"))??;
                    let mut req = Request::builder()
                        .method(opts.method.clone())
                        .uri(path.as_str())
                        .header(http::header::HOST, authority.as_str());
                    for (n, v) in &opts.headers {
                        req = req.header(n, v);
                    }
                    let req = req.body(Full::new(opts.body.clone()))?;
                    let fut = async {
                        let resp = s.send_request(req).await?;
                        let (parts, body) = resp.into_parts();
                        let body = body.collect().await?.to_bytes();
                        anyhow::Ok((parts, body))
                    };
                    let (parts, body) = tokio::time::timeout(opts.timeout, fut)
                        .await
                        .map_err(|_| anyhow!("timeout"))??;
                    let status = parts.status.as_u16();
                    Ok((status, opts.key.extract(&parts.headers, &body)))
                }
                .await;
                {
                    let mut t = tally.lock().unwrap();
                    match result {
                        Ok((status, key)) if (200..300).contains(&status) => {
                            *t.keys.entry(key).or_default() += 1
                        }
                        Ok((status, _)) => *t.statuses.entry(status).or_default() += 1,
                        Err(e) => {
                            sender = None;
                            *t.errors.entry(short_error(&e)).or_default() += 1
                        }
                    }
                }
                on_done();
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let mut t = tally.lock().unwrap().clone();
    t.elapsed = start.elapsed();
    Ok(t)
}

/// `sluice lb-count`.
pub fn run(args: LbCountArgs) -> anyhow::Result<ExitCode> {
    let opts = Options::from_args(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pb = if args.no_progress {
        indicatif::ProgressBar::hidden()
    } else {
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(opts.requests),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
        ) {
            pb.set_style(style);
        }
        pb
    };
    let pb2 = pb.clone();
    let tally = rt.block_on(count(&opts, move || pb2.inc(1)))?;
    pb.finish_and_clear();
    print!("{}", tally.render(&opts));
    Ok(if tally.ok() == tally.total() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let body =
            b"Hello Anonymous OPA from behind Envoy 1!\nhostname service1-2\nresolved 127.0.10.2\n";
        let mut h = http::HeaderMap::new();
        h.insert("x-served-by", HeaderValue::from_static("a"));
        assert_eq!(Key::Resolved.extract(&h, body), "127.0.10.2");
        assert_eq!(
            "header:X-Served-By"
                .parse::<Key>()
                .unwrap()
                .extract(&h, body),
            "a"
        );
        assert_eq!(
            "header:nope".parse::<Key>().unwrap().extract(&h, body),
            "(no nope header)"
        );
        assert_eq!(
            "regex:hostname (\\S+)"
                .parse::<Key>()
                .unwrap()
                .extract(&h, body),
            "service1-2"
        );
        assert_eq!(
            "regex:Envoy \\d".parse::<Key>().unwrap().extract(&h, body),
            "Envoy 1"
        );
        assert_eq!(Key::Resolved.extract(&h, b"nothing"), "(no resolved line)");
        assert!("bogus".parse::<Key>().is_err());
    }

    #[test]
    fn bars() {
        assert_eq!(bar(10, 10, 4), "████");
        assert_eq!(bar(5, 10, 4), "██");
        assert_eq!(bar(0, 10, 4), "");
        assert_eq!(bar(1, 16, 2), "▏");
    }

    #[test]
    fn args() {
        let a = LbCountArgs {
            url: "https://x/".into(),
            requests: 1,
            concurrency: 1,
            key: "resolved".into(),
            method: "GET".into(),
            headers: vec![],
            data: None,
            timeout: 1.0,
            no_progress: true,
        };
        assert!(Options::from_args(&a).is_err());
        let a = LbCountArgs {
            url: "http://localhost:9/service/1".into(),
            concurrency: 9,
            ..a
        };
        let o = Options::from_args(&a).unwrap();
        assert_eq!(o.concurrency, 1);
    }

    #[tokio::test]
    async fn localhost_without_libc() {
        let a = target_addr(&"http://LOCALHOST:8080/x".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(a, "127.0.0.1:8080".parse().unwrap());
        let a = target_addr(&"http://[::1]/x".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(a, "[::1]:80".parse().unwrap());
    }
}
