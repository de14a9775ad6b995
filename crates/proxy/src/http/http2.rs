//! One downstream HTTP/2 connection: hyper's server, with the connection manager's common
//! protocol options applied as Envoy's HTTP/2 codec applies them.
//!
//! - `headers_with_underscores_action`: `REJECT_REQUEST` resets the stream (hyper answers a
//!   service error with `RST_STREAM(INTERNAL_ERROR)`, as Envoy does), `DROP_HEADER` removes the
//!   header; counted in `http2.requests_rejected_with_underscores_in_headers` /
//!   `http2.dropped_headers_with_underscores`.
//! - `max_headers_count`: counts the pseudo-headers too (Envoy's header map holds them); a
//!   request over the limit is reset and counted in `http2.header_overflow`.
//! - `idle_timeout`: with no stream open for that long the connection is drained (`GOAWAY`)
//!   and closed (`downstream_cx_idle_timeout`).
//! - `max_requests_per_connection`: the request that reaches it is served, then the connection
//!   is drained (`downstream_cx_max_requests_reached`).
//! - `max_connection_duration`: when it ends, and `drain_timeout` after (Envoy's time between
//!   its drain notice and its last `GOAWAY`), the connection is drained
//!   (`downstream_cx_max_duration_reached`).

use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;

use super::codec::{ConnEnd, Underscores};
use super::conn_manager::{ConnContext, HttpConnectionManager};
use crate::body::Body;
use crate::stats::{Counter, Store};

/// Envoy's `http2.*` codec counters, made when the first HTTP/2 connection arrives (Envoy
/// creates them with its first HTTP/2 codec).
struct CodecStats {
    requests_rejected_with_underscores_in_headers: Counter,
    dropped_headers_with_underscores: Counter,
    header_overflow: Counter,
}

/// The HTTP/2 server settings of a connection manager: `http2_protocol_options`, and the
/// `common_http_protocol_options` that apply to every codec.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub protocol: crate::listener::H2Settings,
    pub limits: Limits,
}

/// The common protocol options, as the HTTP/2 server applies them.
#[derive(Clone, Default)]
pub struct Limits {
    pub max_headers: usize,
    pub underscores: Underscores,
    /// `None`: never.
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    /// `max_connection_duration` (`None`: off), then `drain_timeout` before the `GOAWAY`.
    pub max_connection_duration: Option<Duration>,
    pub drain_timeout: Duration,
    store: Store,
    stats: Arc<OnceLock<CodecStats>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("max_headers", &self.max_headers)
            .field("underscores", &self.underscores)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_requests_per_connection", &self.max_requests_per_connection)
            .field("max_connection_duration", &self.max_connection_duration)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl Limits {
    pub fn new(
        max_headers: usize,
        underscores: Underscores,
        idle_timeout: Option<Duration>,
        max_requests_per_connection: Option<u32>,
        max_connection_duration: Option<Duration>,
        drain_timeout: Duration,
        store: &Store,
    ) -> Limits {
        Limits {
            max_headers,
            underscores,
            idle_timeout,
            max_requests_per_connection,
            max_connection_duration,
            drain_timeout,
            store: store.clone(),
            stats: Arc::default(),
        }
    }

    fn stats(&self) -> &CodecStats {
        self.stats.get_or_init(|| CodecStats {
            requests_rejected_with_underscores_in_headers: self.store.counter("http2.requests_rejected_with_underscores_in_headers"),
            dropped_headers_with_underscores: self.store.counter("http2.dropped_headers_with_underscores"),
            header_overflow: self.store.counter("http2.header_overflow"),
        })
    }

    /// Apply the header rules to a request; `Err`: reset its stream.
    fn screen<B>(&self, req: &mut http::Request<B>) -> Result<(), StreamRejected> {
        let pseudo = 2 + usize::from(req.uri().scheme().is_some()) + usize::from(req.uri().authority().is_some());
        if req.headers().len() + pseudo > self.max_headers {
            self.stats().header_overflow.inc();
            return Err(StreamRejected("http2.too_many_headers"));
        }
        if self.underscores != Underscores::Allow && req.headers().keys().any(|k| k.as_str().contains('_')) {
            if self.underscores == Underscores::Reject {
                self.stats().requests_rejected_with_underscores_in_headers.inc();
                return Err(StreamRejected("http2.unexpected_underscore"));
            }
            let names: Vec<_> = req.headers().keys().filter(|k| k.as_str().contains('_')).cloned().collect();
            for n in names {
                let dropped = req.headers().get_all(&n).iter().count();
                req.headers_mut().remove(&n);
                self.stats().dropped_headers_with_underscores.add(dropped as u64);
            }
        }
        Ok(())
    }
}

/// A request the codec refused (Envoy's details): hyper resets its stream.
#[derive(Debug)]
struct StreamRejected(&'static str);

impl std::fmt::Display for StreamRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request refused by the HTTP/2 codec's header limits")
    }
}

impl std::error::Error for StreamRejected {}

/// Open streams and served requests of one connection, for the idle timeout and the request
/// limit.
#[derive(Default)]
struct Streams {
    open: AtomicUsize,
    served: AtomicU32,
    limit_reached: std::sync::atomic::AtomicBool,
    changed: Notify,
}

impl Streams {
    fn close_one(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.changed.notify_one();
        }
    }
}

/// Ends its stream's count when the response body is done (or dropped).
struct Tracked {
    inner: Body,
    streams: Option<Arc<Streams>>,
}

impl Tracked {
    fn end(&mut self) {
        if let Some(s) = self.streams.take() {
            s.close_one();
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.end();
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.end();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serve one HTTP/2 connection to its end; says how it ended.
pub async fn serve<I>(io: I, hcm: Arc<HttpConnectionManager>, ctx: Arc<ConnContext>) -> ConnEnd
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let settings = hcm.h2.protocol.clone();
    let limits = hcm.h2.limits.clone();
    let streams = Arc::new(Streams::default());
    let svc = {
        let streams = streams.clone();
        let limits = limits.clone();
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let hcm = hcm.clone();
            let ctx = ctx.clone();
            let streams = streams.clone();
            let mut req = req.map(Body::incoming);
            let screened = limits.screen(&mut req);
            if let Err(StreamRejected(details)) = &screened {
                hcm.record_refused_stream(details, &ctx);
            }
            if screened.is_ok() {
                streams.open.fetch_add(1, Ordering::AcqRel);
                let served = streams.served.fetch_add(1, Ordering::AcqRel) + 1;
                if limits.max_requests_per_connection.is_some_and(|m| m > 0 && served >= m)
                    && !streams.limit_reached.swap(true, Ordering::AcqRel)
                {
                    streams.changed.notify_one();
                }
            }
            // The request's future is boxed: hyper spawns every stream as a task and the
            // runtime moves the task's future (and later its output) around by value; a
            // pointer is cheaper to move than the whole request state machine.
            Box::pin(async move {
                screened?;
                let mut tracked = Tracked { inner: Body::empty(), streams: Some(streams) };
                let resp = hcm.handle(req, &ctx).await;
                Ok::<_, StreamRejected>(if resp.body().is_end_stream() {
                    drop(tracked);
                    resp
                } else {
                    resp.map(|b| {
                        tracked.inner = b;
                        Body::boxed(tracked)
                    })
                })
            })
        })
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_concurrent_streams(Some(settings.max_concurrent_streams.unwrap_or(1024)));
    if let Some(w) = settings.initial_stream_window_size {
        builder.initial_stream_window_size(w);
    }
    if let Some(w) = settings.initial_connection_window_size {
        builder.initial_connection_window_size(w);
    }
    if let Some((interval, timeout)) = settings.keepalive {
        builder.keep_alive_interval(interval).keep_alive_timeout(timeout);
    }
    if settings.allow_connect {
        builder.enable_connect_protocol();
    }
    let expires = limits.max_connection_duration.map(|d| tokio::time::Instant::now() + d + limits.drain_timeout);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(io), svc));
    let mut drained: Option<ConnEnd> = None;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            why = drain_reason(&streams, limits.idle_timeout, expires), if drained.is_none() => {
                drained = Some(why);
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    match result {
        Ok(()) => drained.unwrap_or(ConnEnd::Remote { active_rq: false }),
        Err(e) => {
            tracing::debug!("HTTP/2 connection ended with error: {e}");
            // hyper reports a peer that vanished mid-stream as an I/O or incomplete error;
            // anything else is a protocol violation sluice closed the connection for.
            if e.is_parse() || e.is_user() {
                ConnEnd::ProtocolError { delayed_close_timeout: false }
            } else {
                ConnEnd::Remote { active_rq: e.is_incomplete_message() }
            }
        }
    }
}

/// Resolves when the connection should be drained: the request limit was reached, no stream
/// was open for `idle`, or the connection's time is over.
async fn drain_reason(streams: &Streams, idle: Option<Duration>, expires: Option<tokio::time::Instant>) -> ConnEnd {
    let expired = async {
        match expires {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        why = drain_when_idle_or_limited(streams, idle) => why,
        () = expired => ConnEnd::MaxDuration,
    }
}

async fn drain_when_idle_or_limited(streams: &Streams, idle: Option<Duration>) -> ConnEnd {
    loop {
        // Registered before the state is read: a change in between is not missed.
        let changed = streams.changed.notified();
        if streams.limit_reached.load(Ordering::Acquire) {
            return ConnEnd::MaxRequests;
        }
        match idle {
            Some(d) if streams.open.load(Ordering::Acquire) == 0 => {
                if tokio::time::timeout(d, changed).await.is_err() && streams.open.load(Ordering::Acquire) == 0 {
                    return ConnEnd::IdleTimeout;
                }
            }
            _ => changed.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_headers: usize, underscores: Underscores) -> Limits {
        Limits::new(max_headers, underscores, None, None, None, Duration::from_secs(5), &Store::default())
    }

    fn request(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().uri("http://a.test/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn header_count_includes_the_pseudo_headers() {
        // :method, :scheme, :authority, :path + 4 = 8.
        let l = limits(8, Underscores::Allow);
        assert!(l.screen(&mut request(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")])).is_ok());
        assert!(l.screen(&mut request(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")])).is_err());
        assert_eq!(l.store.counter("http2.header_overflow").value(), 1);
    }

    #[test]
    fn underscores_are_rejected_or_dropped() {
        let reject = limits(100, Underscores::Reject);
        assert!(reject.screen(&mut request(&[("a_b", "1")])).is_err());
        assert_eq!(reject.store.counter("http2.requests_rejected_with_underscores_in_headers").value(), 1);
        let drop = limits(100, Underscores::Drop);
        let mut r = request(&[("a_b", "1"), ("a_b", "2"), ("ok", "1")]);
        assert!(drop.screen(&mut r).is_ok());
        assert!(r.headers().get("a_b").is_none());
        assert_eq!(r.headers().get("ok").unwrap(), "1");
        assert_eq!(drop.store.counter("http2.dropped_headers_with_underscores").value(), 2);
        let allow = limits(100, Underscores::Allow);
        assert!(allow.screen(&mut request(&[("a_b", "1")])).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn drains_after_idle_time_without_streams() {
        let s = Streams::default();
        let t0 = tokio::time::Instant::now();
        assert_eq!(drain_reason(&s, Some(Duration::from_secs(5)), None).await, ConnEnd::IdleTimeout);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_holds_off_the_idle_timeout() {
        let s = Arc::new(Streams::default());
        s.open.store(1, Ordering::Release);
        let s2 = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            s2.close_one();
        });
        let t0 = tokio::time::Instant::now();
        assert_eq!(drain_reason(&s, Some(Duration::from_secs(5)), None).await, ConnEnd::IdleTimeout);
        assert_eq!(t0.elapsed(), Duration::from_secs(65));
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_duration_drains_even_with_open_streams() {
        let s = Streams::default();
        s.open.store(1, Ordering::Release);
        let t0 = tokio::time::Instant::now();
        let at = t0 + Duration::from_secs(12);
        assert_eq!(drain_reason(&s, Some(Duration::from_secs(5)), Some(at)).await, ConnEnd::MaxDuration);
        assert_eq!(t0.elapsed(), Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_limit_drains_at_once() {
        let s = Streams::default();
        s.open.store(1, Ordering::Release);
        s.limit_reached.store(true, Ordering::Release);
        assert_eq!(drain_reason(&s, None, None).await, ConnEnd::MaxRequests);
    }
}
