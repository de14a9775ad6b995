//! An echo upstream: answers every request with what it received, as JSON.
//!
//! ```text
//! 200  x-upstream-id: <label>
//!      content-type: application/json
//! {"upstream":"<label>","method":"GET","path":"/a?b=1","headers":[["host","x"],…],"body_len":0,"version":"HTTP/1.1"}
//! ```
//! Behaviour by path prefix:
//! * `/slow/<ms>` — sleep, then echo;
//! * `/close` — close the connection without answering (HTTP/2: reset the stream);
//! * `/status/<code>` — echo with that status;
//! * `/big/<bytes>` — stream a body of that many bytes (`x` repeated, 16 KiB chunks);
//! * `/grpc` — `content-type: application/grpc`, the request body echoed back (or an empty
//!   message frame), then trailers `grpc-status: 0`, `grpc-message: OK`.
//!
//! One listener serves HTTP/1.1 and h2c prior knowledge ([`Protocol::Auto`]), or only one of them;
//! with TLS, ALPN picks the protocol. It counts accepted connections and requests, keeps the
//! last [`MAX_RECORDED`] requests, and stops on [`EchoUpstream::stop`] or drop (open connections are
//! closed too).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::certs::Pki;

/// How many requests [`EchoUpstream::recorded`] keeps.
pub const MAX_RECORDED: usize = 1000;

/// Which HTTP versions the listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN with TLS).
    #[default]
    Auto,
    Http1,
    Http2,
}

/// Options of [`EchoUpstream::start_with`].
#[derive(Clone, Default)]
pub struct EchoOptions {
    /// Value of `x-upstream-id`; default: the bound address (`127.0.0.1:40000`).
    pub label: Option<String>,
    pub protocol: Protocol,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// Which accepted connection (1-based, in accept order) carried it.
    pub connection: u64,
}

#[derive(Default)]
struct State {
    label: String,
    connections: AtomicU64,
    open: AtomicI64,
    requests: AtomicU64,
    recorded: Mutex<VecDeque<RecordedRequest>>,
}

/// A running echo server.
pub struct EchoUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for EchoUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoUpstream").field("addr", &self.addr).field("label", &self.state.label).finish()
    }
}

impl EchoUpstream {
    /// HTTP/1.1 + h2c on `addr` (port 0 picks one). Must be called inside a tokio runtime.
    pub async fn start(addr: SocketAddr) -> io::Result<EchoUpstream> {
        Self::start_with(addr, EchoOptions::default()).await
    }

    /// Like [`start`](Self::start) with an `x-upstream-id` label.
    pub async fn start_labeled(addr: SocketAddr, label: &str) -> io::Result<EchoUpstream> {
        Self::start_with(addr, EchoOptions { label: Some(label.into()), ..Default::default() }).await
    }

    /// HTTP/2 only (prior knowledge).
    pub async fn start_h2(addr: SocketAddr) -> io::Result<EchoUpstream> {
        Self::start_with(addr, EchoOptions { protocol: Protocol::Http2, ..Default::default() }).await
    }

    /// TLS with the PKI's server certificate, ALPN `h2`, `http/1.1`; no client certificate needed.
    pub async fn start_tls(addr: SocketAddr, pki: &Pki) -> io::Result<EchoUpstream> {
        let tls = pki.server_config(&["h2", "http/1.1"], false);
        Self::start_with(addr, EchoOptions { tls: Some(tls), ..Default::default() }).await
    }

    pub async fn start_with(addr: SocketAddr, opts: EchoOptions) -> io::Result<EchoUpstream> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::serve(listener, opts))
    }

    /// One echo server per IP, all on the same port (what a STRICT_DNS cluster with one port
    /// and several A records needs). Labels are the IPs unless `opts.label` is set (then
    /// `<label>-<i>`). Retries with another port if one is taken.
    pub async fn start_same_port(ips: &[IpAddr], opts: EchoOptions) -> io::Result<Vec<EchoUpstream>> {
        let mut last_err = None;
        'attempt: for _ in 0..20 {
            let first = TcpListener::bind(SocketAddr::new(ips[0], 0)).await?;
            let port = first.local_addr()?.port();
            let mut listeners = vec![first];
            for ip in &ips[1..] {
                match TcpListener::bind(SocketAddr::new(*ip, port)).await {
                    Ok(l) => listeners.push(l),
                    Err(e) => {
                        last_err = Some(e);
                        continue 'attempt;
                    }
                }
            }
            return Ok(listeners
                .into_iter()
                .enumerate()
                .map(|(i, l)| {
                    let label = match &opts.label {
                        Some(p) => format!("{p}-{i}"),
                        None => ips[i].to_string(),
                    };
                    Self::serve(l, EchoOptions { label: Some(label), ..opts.clone() })
                })
                .collect());
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no common free port")))
    }

    fn serve(listener: TcpListener, opts: EchoOptions) -> EchoUpstream {
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            label: opts.label.clone().unwrap_or_else(|| addr.to_string()),
            ..Default::default()
        });
        let (stop, stop_rx) = watch::channel(false);
        let st = state.clone();
        tokio::spawn(async move {
            let mut stop_rx2 = stop_rx.clone();
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue } },
                    _ = stop_rx2.changed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let conn_id = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
                st.open.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let opts = opts.clone();
                let mut stop_rx = stop_rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve_conn(tcp, opts, st.clone(), conn_id) => {}
                        _ = stop_rx.changed() => {}
                    }
                    st.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        EchoUpstream { addr, state, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    pub fn label(&self) -> &str {
        &self.state.label
    }
    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }
    /// Connections currently open.
    pub fn open_connections(&self) -> i64 {
        self.state.open.load(Ordering::SeqCst)
    }
    /// Requests received so far (counted when the request head arrives).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// The last requests received, oldest first.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.state.recorded.lock().unwrap().iter().cloned().collect()
    }
    /// Stop accepting and close every open connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve_conn(tcp: tokio::net::TcpStream, opts: EchoOptions, st: Arc<State>, conn_id: u64) {
    match &opts.tls {
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let proto = match opts.protocol {
                Protocol::Auto if h2 => Protocol::Http2,
                Protocol::Auto => Protocol::Http1,
                p => p,
            };
            serve_io(TokioIo::new(tls), proto, st, conn_id).await
        }
        None => serve_io(TokioIo::new(tcp), opts.protocol, st, conn_id).await,
    }
}

async fn serve_io<I>(io: I, proto: Protocol, st: Arc<State>, conn_id: u64)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(req, st.clone(), conn_id));
    let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    b.http1().keep_alive(true);
    let _ = match proto {
        Protocol::Auto => b.serve_connection(io, svc).await,
        Protocol::Http1 => b.http1_only().serve_connection(io, svc).await,
        Protocol::Http2 => b.http2_only().serve_connection(io, svc).await,
    };
}

#[derive(Debug)]
struct CloseConnection;
impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closing without an answer (/close)")
    }
}
impl std::error::Error for CloseConnection {}

fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "?",
    }
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<State>,
    conn_id: u64,
) -> Result<Response<EchoBody>, CloseConnection> {
    st.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let p = parts.uri.path();
    if p.starts_with("/close") {
        return Err(CloseConnection);
    }
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    {
        let mut rec = st.recorded.lock().unwrap();
        if rec.len() >= MAX_RECORDED {
            rec.pop_front();
        }
        rec.push_back(RecordedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            version: version_str(parts.version).into(),
            headers: headers.clone(),
            body_len: body.len(),
            connection: conn_id,
        });
    }
    let arg = |prefix: &str| p.strip_prefix(prefix).map(|r| r.split('/').next().unwrap_or("").to_string());
    if let Some(ms) = arg("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let id = HeaderValue::from_str(&st.label).unwrap_or(HeaderValue::from_static("?"));
    if p.starts_with("/grpc") {
        let msg = if body.is_empty() { Bytes::from_static(&[0, 0, 0, 0, 0]) } else { body };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("OK"));
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .header("x-upstream-id", id)
            .body(EchoBody { data: Some(msg), big: 0, trailers: Some(trailers) })
            .unwrap());
    }
    if let Some(n) = arg("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", n)
            .header("x-upstream-id", id)
            .body(EchoBody { data: None, big: n, trailers: None })
            .unwrap());
    }
    let status = arg("/status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let json = serde_json::json!({
        "upstream": st.label,
        "method": parts.method.as_str(),
        "path": path,
        "headers": headers,
        "body_len": body.len(),
        "version": version_str(parts.version),
    });
    let out = Bytes::from(serde_json::to_vec(&json).unwrap());
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream-id", id)
        .body(EchoBody { data: Some(out), big: 0, trailers: None })
        .unwrap())
}

/// Response body of the echo server: bytes, or `big` generated bytes, then optional trailers.
pub struct EchoBody {
    data: Option<Bytes>,
    big: usize,
    trailers: Option<HeaderMap>,
}

const CHUNK: usize = 16 * 1024;
static FILL: [u8; CHUNK] = [b'x'; CHUNK];

impl http_body::Body for EchoBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if self.big > 0 {
            let n = self.big.min(CHUNK);
            self.big -= n;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))));
        }
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        Poll::Ready(None)
    }
    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.big == 0 && self.trailers.is_none()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        if self.trailers.is_some() {
            return http_body::SizeHint::default();
        }
        http_body::SizeHint::with_exact((self.data.as_ref().map_or(0, |d| d.len()) + self.big) as u64)
    }
}
