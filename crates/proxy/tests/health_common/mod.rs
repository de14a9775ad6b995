//! A controllable upstream for the health-checking and outlier-detection tests: what its health
//! check path (`/hc…`) and its other paths answer can be switched while it runs, and it counts
//! what it receives. HTTP/1.1 and h2c; `POST /grpc.health.v1.Health/Check` answers the gRPC
//! health protocol. `stop` closes the listener and every open connection.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

/// What the upstream answers and what it saw.
#[derive(Debug)]
pub struct Control {
    pub label: String,
    /// Status of health checks (`/hc…`).
    pub hc_status: AtomicU16,
    /// Status of everything else.
    pub status: AtomicU16,
    /// Add `x-envoy-immediate-health-check-fail: true` to non-health-check answers.
    pub immediate_fail: AtomicBool,
    /// Add `x-envoy-degraded` to health-check answers.
    pub degraded: AtomicBool,
    /// gRPC health answer: SERVING (true) or NOT_SERVING.
    pub grpc_serving: AtomicBool,
    pub hc_requests: AtomicU64,
    pub requests: AtomicU64,
    /// Connections open now.
    pub open: AtomicI64,
    /// Milliseconds health checks wait before they are answered.
    pub hc_delay_ms: AtomicU64,
    /// Headers of the last health check, in order.
    pub last_hc: Mutex<Vec<(String, String)>>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub ctl: Arc<Control>,
    stop: watch::Sender<bool>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A response body with optional trailers (gRPC).
struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

fn answer(ctl: &Control, req: &Request<Incoming>) -> Response<GrpcBody> {
    let path = req.uri().path();
    if path == "/grpc.health.v1.Health/Check" {
        ctl.hc_requests.fetch_add(1, Ordering::Relaxed);
        let status = if ctl.grpc_serving.load(Ordering::Relaxed) { 1 } else { 2 };
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let mut r = Response::new(GrpcBody { data: Some(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status])), trailers: Some(t) });
        r.headers_mut().insert("content-type", HeaderValue::from_static("application/grpc"));
        return r;
    }
    let hc = path.starts_with("/hc");
    let status = if hc {
        ctl.hc_requests.fetch_add(1, Ordering::Relaxed);
        *ctl.last_hc.lock().unwrap() = req.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
        ctl.hc_status.load(Ordering::Relaxed)
    } else {
        ctl.requests.fetch_add(1, Ordering::Relaxed);
        ctl.status.load(Ordering::Relaxed)
    };
    let mut r = Response::new(GrpcBody { data: Some(Bytes::from(ctl.label.clone())), trailers: None });
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    let h = r.headers_mut();
    h.insert("x-upstream-id", HeaderValue::from_str(&ctl.label).unwrap());
    if hc && ctl.degraded.load(Ordering::Relaxed) {
        h.insert("x-envoy-degraded", HeaderValue::from_static(""));
    }
    if !hc && ctl.immediate_fail.load(Ordering::Relaxed) {
        h.insert("x-envoy-immediate-health-check-fail", HeaderValue::from_static("true"));
    }
    r
}

impl Upstream {
    /// Serve on `addr` (port 0 picks one); retries the bind for a while (a restart on the port a
    /// stopped upstream used).
    pub async fn start(addr: SocketAddr, label: &str) -> Upstream {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let ctl = Arc::new(Control {
            label: label.to_string(),
            hc_status: AtomicU16::new(200),
            status: AtomicU16::new(200),
            immediate_fail: AtomicBool::new(false),
            degraded: AtomicBool::new(false),
            grpc_serving: AtomicBool::new(true),
            hc_requests: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            open: AtomicI64::new(0),
            hc_delay_ms: AtomicU64::new(0),
            last_hc: Mutex::new(Vec::new()),
        });
        let (stop, rx) = watch::channel(false);
        let c = ctl.clone();
        tokio::spawn(async move {
            let mut rx2 = rx.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = rx2.changed() => return,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let c = c.clone();
                let mut rx3 = rx.clone();
                c.open.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let open = c.clone();
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let delay = if req.uri().path().starts_with("/hc") { c.hc_delay_ms.load(Ordering::Relaxed) } else { 0 };
                        let r = answer(&c, &req);
                        async move {
                            if delay > 0 {
                                tokio::time::sleep(Duration::from_millis(delay)).await;
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = rx3.changed() => {}
                    }
                    open.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Upstream { addr, ctl, stop }
    }

    /// Close the listener and all connections.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    pub fn set_hc(&self, status: u16) {
        self.ctl.hc_status.store(status, Ordering::Relaxed);
    }

    pub fn set_status(&self, status: u16) {
        self.ctl.status.store(status, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.ctl.requests.load(Ordering::Relaxed)
    }

    pub fn hc_requests(&self) -> u64 {
        self.ctl.hc_requests.load(Ordering::Relaxed)
    }
}

/// `- endpoint: …` lines for a load assignment.
pub fn endpoints(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n", a.ip(), a.port()))
        .collect()
}

/// Poll `cond` every 10 ms up to `limit`; the time it took, or `None`.
pub async fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond().then(|| start.elapsed())
}
