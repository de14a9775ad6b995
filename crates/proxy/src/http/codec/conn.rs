//! One downstream HTTP/1 connection: read a head, hand the request to the connection manager,
//! write its response, repeat (keep-alive, pipelining), or switch to a tunnel.
//!
//! At steady state a request without a body costs one read (head), one parse, and one write
//! (head and body together, vectored). The connection task owns the socket: while a response
//! is on its way it also feeds the request body (see [`super::body`]).
//!
//! Envoy's connection rules kept here:
//! - `Expect: 100-continue`: `100 Continue` is sent as soon as the head is parsed.
//! - A response whose head is ready before the request was fully received carries
//!   `connection: close` and the connection closes after it (Envoy's
//!   `downstream_rq_response_before_rq_complete`); so does a non-`101` answer to an upgrade.
//! - HTTP/1.0: `HTTP/1.0` status line; `connection: keep-alive` only when asked, else `close`.
//! - Framing: the response's own `content-length`; `content-length: 0` when the response ends
//!   with its head; else `transfer-encoding: chunked` (HTTP/1.1) or close-delimited (HTTP/1.0).
//!   No body for `HEAD`, 1xx, 204, 304; a `HEAD` response without length says
//!   `transfer-encoding: chunked` (Envoy does).
//! - Closing: after the last response the write side is shut down and the connection drained
//!   for up to a second, so the client reads the response instead of a reset. After a codec
//!   reply (a refused request) the connection is kept, drained, until the client closes or a
//!   second passes, then closed: Envoy's delayed close, counted as it counts it.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::body::{self, BodyError, Decoder, Feeder};
use super::encode::{self, WriteQueue};
use super::parse::{self, CodecError, Framing, Head, ParseConfig, Reject, Scratch};
use super::tunnel::{self, UpstreamTunnel};
use crate::body::Body;
use crate::http::local_reply::LocalReply;
use crate::stats::Counter;

/// Read-buffer growth step.
const READ_CHUNK: usize = 8 * 1024;
/// Queued output past which the codec writes before taking more of the response body.
const FLUSH_AT: usize = 64 * 1024;
/// Envoy's default `delayed_close_timeout`.
const DELAYED_CLOSE: Duration = Duration::from_secs(1);
/// Envoy's default `drain_timeout`.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The codec's settings, built once per filter chain.
pub struct Config {
    pub parse: ParseConfig,
    /// `http_protocol_options.enable_trailers`: request trailers are delivered and response
    /// trailers written (else both are dropped).
    pub enable_trailers: bool,
    /// `common_http_protocol_options.idle_timeout` (Envoy's default one hour; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_requests_per_connection`.
    pub max_requests_per_connection: Option<u32>,
    /// `common_http_protocol_options.max_connection_duration` (`None`: off): then the connection
    /// drains: the response in flight (or the next one within `drain_timeout`) says
    /// `connection: close`; an idle connection closes `drain_timeout` later.
    pub max_connection_duration: Option<Duration>,
    /// `request_headers_timeout` (`None`: off): from a head's first byte to its blank line.
    pub request_headers_timeout: Option<Duration>,
    /// The connection manager's `drain_timeout` (Envoy's default 5 s).
    pub drain_timeout: Duration,
    /// The connection manager's `server_name`, for the codec's own replies.
    pub server_name: HeaderValue,
    pub stats: CodecStats,
}

/// Envoy's `http1.*` codec counters.
#[derive(Clone, Default)]
pub struct CodecStats {
    pub dropped_headers_with_underscores: Option<Counter>,
    pub requests_rejected_with_underscores_in_headers: Option<Counter>,
}

/// What the codec needs from the connection manager.
pub trait Service {
    /// Handle one request (the connection manager's `handle`).
    fn call(&self, req: Request<Body>) -> impl Future<Output = Response<Body>> + Send;
    /// A reply the codec made itself (response-code stats, access logs).
    fn codec_reply(&self, reply: &CodecReply);
    /// The connection switched to a tunnel (`open`), or its tunnel ended.
    fn tunnel(&self, open: bool);
    /// A response was ready before the request's body had all arrived
    /// (`downstream_rq_response_before_rq_complete`).
    fn early_response(&self);
    /// A head did not arrive within `request_headers_timeout` (`downstream_rq_header_timeout`).
    fn header_timeout(&self);
}

/// A reply the codec made itself (a refused head, a head that came too slowly).
#[derive(Debug, Clone)]
pub struct CodecReply {
    pub status: u16,
    /// Envoy's `%RESPONSE_CODE_DETAILS%`.
    pub details: &'static str,
    /// Envoy flags it `DPE` (every codec reply but the header timeout).
    pub protocol_error: bool,
    /// The reply body's length (`%BYTES_SENT%`).
    pub body_bytes: u64,
    pub http10: bool,
    /// When the refused request began (its first byte).
    pub started: std::time::Instant,
    /// The connection manager had the request (its body was refused) and logs it.
    pub logged: bool,
}

/// A request extension: set when the codec refused the request's body half-way (the
/// connection manager then logs the request as the codec's `400`).
#[derive(Clone, Debug)]
pub struct BodyRefused(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

/// How a connection ended, for the connection manager's `downstream_cx_*` stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEnd {
    /// The peer closed or reset it; `active_rq`: while a request was in flight.
    Remote { active_rq: bool },
    /// sluice closed it after a response (`connection: close`, HTTP/1.0, a refused upgrade…).
    Local,
    /// `idle_timeout` without a request.
    IdleTimeout,
    /// The codec refused a request (`downstream_cx_protocol_error`); `delayed_close_timeout`:
    /// the client did not close within the delayed-close time after the reply.
    ProtocolError { delayed_close_timeout: bool },
    /// `max_requests_per_connection` reached.
    MaxRequests,
    /// `max_connection_duration` reached (and the connection drained).
    MaxDuration,
    /// sluice closed it after a response made before the request was whole (or after a
    /// request header timeout), with Envoy's delayed close; `delayed_close_timeout`: the
    /// client did not close within that time.
    LocalDelayed { delayed_close_timeout: bool },
    /// It became a tunnel, which has ended.
    Upgraded,
}

/// A request extension: the codec already answered `Expect: 100-continue`.
#[derive(Debug, Clone, Copy)]
pub struct ContinueSent;

/// Serve one HTTP/1 connection to its end; says how it ended.
pub async fn serve<I, S>(io: I, cfg: &Config, svc: &S) -> ConnEnd
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
    S: Service,
{
    let expires = cfg.max_connection_duration.map(|d| tokio::time::Instant::now() + d);
    let mut conn = Conn { io, rbuf: BytesMut::with_capacity(READ_CHUNK), out: WriteQueue::with_capacity(1024), scratch: Scratch::default(), cfg, ended_by: None, expires, head_started: None };
    match conn.run(svc).await {
        End::Gone { active_rq } => ConnEnd::Remote { active_rq },
        End::Close(ConnEnd::ProtocolError { .. }) => ConnEnd::ProtocolError { delayed_close_timeout: conn.close_delayed().await },
        End::Close(ConnEnd::LocalDelayed { .. }) => ConnEnd::LocalDelayed { delayed_close_timeout: conn.close_delayed().await },
        End::Close(why) => {
            conn.close().await;
            why
        }
        End::Tunnel(up) => {
            let Conn { io, rbuf, .. } = conn;
            if let Ok(Ok(up)) = tokio::time::timeout(Duration::from_secs(30), up).await {
                svc.tunnel(true);
                tunnel::splice(io, rbuf.freeze(), up).await;
                svc.tunnel(false);
            }
            ConnEnd::Upgraded
        }
    }
}

enum End {
    /// The peer went away (or the connection failed): nothing more to write.
    Gone { active_rq: bool },
    /// Close after what was written (shut down, drain).
    Close(ConnEnd),
    Tunnel(tunnel::TunnelFuture),
}

/// What a timer in [`Conn::read_head`] means when it fires.
enum Wake {
    Idle,
    HeaderTimeout,
    Expired,
}

enum Next {
    KeepAlive,
    End(End),
}

struct Conn<'c, I> {
    io: I,
    rbuf: BytesMut,
    out: WriteQueue,
    scratch: Scratch,
    cfg: &'c Config,
    /// Why `read_head` ended without a head, when sluice ended the wait (idle timeout, end of
    /// the drain after `max_connection_duration`).
    ended_by: Option<ConnEnd>,
    /// When `max_connection_duration` ends (`None`: never).
    expires: Option<tokio::time::Instant>,
    /// When the head being read began (its first byte).
    head_started: Option<tokio::time::Instant>,
}

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Writer {
    /// No body bytes (HEAD, 1xx, 204, 304, or an empty body).
    Skip,
    Length(u64),
    Chunked,
    /// HTTP/1.0 without length: the body ends when the connection closes.
    UntilClose,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send> Conn<'_, I> {
    async fn run<S: Service>(&mut self, svc: &S) -> End {
        let mut served: u32 = 0;
        loop {
            let n = match self.read_head().await {
                Ok(Some(n)) => n,
                Ok(None) => match self.ended_by.take() {
                    Some(why) => return End::Close(why),
                    None => return End::Gone { active_rq: false },
                },
                Err(e) => return self.reject(svc, e, false).await,
            };
            let head_bytes = self.rbuf.split_to(n).freeze();
            let head = match parse::build(head_bytes, &self.cfg.parse, &mut self.scratch) {
                Ok(h) => h,
                Err(e) => return self.reject(svc, e, false).await,
            };
            if head.dropped_underscores > 0 {
                if let Some(c) = &self.cfg.stats.dropped_headers_with_underscores {
                    c.add(u64::from(head.dropped_underscores));
                }
            }
            served = served.saturating_add(1);
            let last = self.cfg.max_requests_per_connection.is_some_and(|m| m > 0 && served >= m);
            match self.exchange(svc, head, last).await {
                Next::KeepAlive => {}
                Next::End(e) => return e,
            }
        }
    }

    /// Read until `rbuf` starts with a complete head; `Ok(None)`: the connection ended (or idled
    /// out) first.
    async fn read_head(&mut self) -> Result<Option<usize>, CodecError> {
        // Bytes of `rbuf` already known to hold no end of head: a head arriving in pieces is
        // parsed again only once its blank line may have arrived.
        let mut seen = 0usize;
        self.head_started = None;
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            if !self.rbuf.is_empty() {
                let max = self.cfg.parse.max_head_bytes;
                if seen == 0 || self.rbuf.len() > max || has_head_end(&self.rbuf[seen.saturating_sub(3)..]) {
                    if let Some(n) = parse::scan(&self.rbuf, &self.cfg.parse, &mut self.scratch)? {
                        return Ok(Some(n));
                    }
                }
                seen = self.rbuf.len();
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let now = tokio::time::Instant::now();
            if !self.rbuf.is_empty() && self.head_started.is_none() {
                self.head_started = Some(now);
            }
            // The first of the timers that apply now.
            let mut wake: Option<(tokio::time::Instant, Wake)> = None;
            let mut consider = |at: Option<tokio::time::Instant>, w: Wake| {
                if let Some(at) = at {
                    if wake.as_ref().is_none_or(|(t, _)| at < *t) {
                        wake = Some((at, w));
                    }
                }
            };
            if self.rbuf.is_empty() {
                consider(self.cfg.idle_timeout.map(|d| *idle_since.get_or_insert(now) + d), Wake::Idle);
                consider(self.expires.map(|e| if e > now { e } else { e + self.cfg.drain_timeout }), Wake::Expired);
            } else {
                consider(self.cfg.request_headers_timeout.zip(self.head_started).map(|(d, t)| t + d), Wake::HeaderTimeout);
            }
            let read = self.io.read_buf(&mut self.rbuf);
            let n = match wake {
                Some((at, w)) => match tokio::time::timeout_at(at, read).await {
                    Ok(r) => r,
                    Err(_) => match w {
                        Wake::Idle => {
                            self.ended_by = Some(ConnEnd::IdleTimeout);
                            return Ok(None);
                        }
                        Wake::HeaderTimeout => return Err(CodecError { reject: Reject::HeaderTimeout, http10: false }),
                        // The duration ended: drain (a request now gets `connection: close`),
                        // then close when the drain time is over.
                        Wake::Expired if self.expires.is_some_and(|e| tokio::time::Instant::now() < e + self.cfg.drain_timeout) => continue,
                        Wake::Expired => {
                            self.ended_by = Some(ConnEnd::MaxDuration);
                            return Ok(None);
                        }
                    },
                },
                None => read.await,
            };
            match n {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Answer a request the codec refuses, then close.
    /// `logged`: the connection manager had the request and logs it itself.
    async fn reject<S: Service>(&mut self, svc: &S, e: CodecError, logged: bool) -> End {
        let status = e.reject.status();
        svc.codec_reply(&CodecReply {
            status,
            details: e.reject.details(),
            protocol_error: e.reject != Reject::HeaderTimeout,
            body_bytes: e.reject.body().map_or(0, |b| b.len() as u64),
            http10: e.http10,
            started: self.head_started.take().map_or_else(std::time::Instant::now, tokio::time::Instant::into_std),
            logged,
        });
        if e.reject == Reject::HeaderTimeout {
            svc.header_timeout();
        }
        // The request had begun (Envoy made its stream at the first byte) and is answered
        // before it is complete.
        svc.early_response();
        if e.reject == Reject::Underscore {
            if let Some(c) = &self.cfg.stats.requests_rejected_with_underscores_in_headers {
                c.inc();
            }
        }
        let mut r = LocalReply::new(status).close();
        if let Some(b) = e.reject.body() {
            r = r.body(b);
        }
        let resp = r.build(&self.cfg.server_name);
        let no_length = resp.headers().get(CONTENT_LENGTH).is_none();
        let (parts, mut body_bytes) = resp.into_parts();
        let extra: &[&[u8]] = if no_length { &[b"content-length: 0\r\n"] } else { &[] };
        self.out.put_with(|b| encode::encode_head(b, e.http10, parts.status, &parts.headers, extra));
        while let Some(Ok(frame)) = poll_fn(|cx| Pin::new(&mut body_bytes).poll_frame(cx)).await {
            if let Ok(d) = frame.into_data() {
                self.out.put_data(d);
            }
        }
        match self.flush().await {
            Ok(()) if e.reject == Reject::HeaderTimeout => End::Close(ConnEnd::LocalDelayed { delayed_close_timeout: false }),
            Ok(()) => End::Close(ConnEnd::ProtocolError { delayed_close_timeout: false }),
            Err(_) => End::Gone { active_rq: false },
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let Conn { io, out, .. } = self;
        poll_fn(|cx| out.poll_flush(io, cx)).await
    }

    /// One request/response exchange.
    async fn exchange<S: Service>(&mut self, svc: &S, head: Head, last: bool) -> Next {
        let Head { mut request, framing, keep_alive, expect_continue, tunnel, .. } = head;
        let http10 = request.version() == Version::HTTP_10;
        let is_head = request.method() == Method::HEAD;
        let is_connect = request.method() == Method::CONNECT;
        if expect_continue {
            self.out.put(if http10 { b"HTTP/1.0 100 Continue\r\n\r\n" } else { b"HTTP/1.1 100 Continue\r\n\r\n" });
            if self.flush().await.is_err() {
                return Next::End(End::Gone { active_rq: true });
            }
            request.extensions_mut().insert(ContinueSent);
        }
        let (body, mut feeder) = match framing {
            Framing::None => (Body::empty(), None),
            Framing::Length(n) => {
                let (b, f) = body::channel(Decoder::length(n), Some(n));
                (Body::h1(b), Some(f))
            }
            Framing::Chunked => {
                let (b, f) = body::channel(Decoder::chunked(), None);
                (Body::h1(b), Some(f))
            }
        };
        // A body the codec refuses half-way (bad chunking) ends a request the connection
        // manager already has: it logs that request as the codec's 400, not as `DC`.
        let refused = feeder.is_some().then(|| std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)));
        if let Some(r) = &refused {
            request.extensions_mut().insert(BodyRefused(r.clone()));
        }
        let req = request.map(|()| body);
        let feed = Feed {
            max_trailer_bytes: self.cfg.parse.max_head_bytes,
            keep_trailers: self.cfg.enable_trailers,
        };

        // The handler runs until its response head is ready; meanwhile the request body is fed.
        // The handler is polled before any body byte is decoded: a response made right away
        // (a direct response) comes before the body, as in Envoy.
        // Once the request is complete the socket is still watched: a client that closes
        // while the upstream works ends the request at once (Envoy resets the stream and logs
        // `DC`); bytes of a pipelined request are kept, up to one head's worth.
        let resp = {
            let mut fut = pin!(svc.call(req));
            let Conn { io, rbuf, cfg, .. } = self;
            let keep_at_most = cfg.parse.max_head_bytes;
            poll_fn(|cx| {
                if let Poll::Ready(resp) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Ok(resp));
                }
                let complete = match feeder.as_mut() {
                    Some(f) => match feed.poll(f, io, rbuf, cx) {
                        Poll::Ready(Err(e)) => {
                            if let (BodyError::Malformed, Some(r)) = (&e, &refused) {
                                r.store(true, std::sync::atomic::Ordering::Release);
                            }
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(())) => true,
                        Poll::Pending => false,
                    },
                    None => true,
                };
                if complete && poll_closed(io, rbuf, keep_at_most, cx).is_ready() {
                    return Poll::Ready(Err(BodyError::Aborted));
                }
                Poll::Pending
            })
            .await
        };
        let mut resp = match resp {
            Ok(r) => r,
            Err(BodyError::Malformed) => {
                drop(feeder);
                let e = CodecError { reject: Reject::BadRequest, http10 };
                return Next::End(self.reject(svc, e, true).await);
            }
            Err(BodyError::Aborted) => return Next::End(End::Gone { active_rq: true }),
        };

        let request_complete = feeder.as_ref().is_none_or(Feeder::is_done);
        if !request_complete {
            svc.early_response();
        }
        let status = resp.status();
        let upgraded = tunnel && (status == StatusCode::SWITCHING_PROTOCOLS || (is_connect && status.is_success()));
        let resp_close = has_token(resp.headers(), b"close");
        let expired = self.expires.is_some_and(|e| tokio::time::Instant::now() >= e);
        let mut close = !keep_alive || last || resp_close || !request_complete || (tunnel && !upgraded) || expired;
        let length = resp.headers().get(CONTENT_LENGTH).map(|v| parse_length(v.as_bytes()));
        let no_body_status = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        // A switched connection carries no HTTP body: whatever the upstream sends after its head
        // (even under a content-length, as an upstream may answer a CONNECT) is tunnel data.
        let (framing_line, mut writer): (Option<&[u8]>, Writer) = if upgraded || no_body_status {
            (None, Writer::Skip)
        } else if let Some(len) = length {
            match len {
                _ if is_head => (None, Writer::Skip),
                Some(n) => (None, Writer::Length(n)),
                None => {
                    close = true;
                    (None, Writer::UntilClose)
                }
            }
        } else if is_head {
            (if http10 { None } else { Some(b"transfer-encoding: chunked\r\n") }, Writer::Skip)
        } else if resp.body().is_end_stream() {
            (Some(b"content-length: 0\r\n"), Writer::Skip)
        } else if http10 {
            close = true;
            (None, Writer::UntilClose)
        } else {
            (Some(b"transfer-encoding: chunked\r\n"), Writer::Chunked)
        };
        let conn_line: Option<&[u8]> = if upgraded {
            None
        } else if close {
            (!resp_close).then_some(b"connection: close\r\n")
        } else if http10 {
            Some(b"connection: keep-alive\r\n")
        } else {
            None
        };
        let tunnel_up = if upgraded { resp.extensions_mut().remove::<UpstreamTunnel>().and_then(|t| t.take()) } else { None };
        let (parts, mut body) = resp.into_parts();
        {
            let mut extra: [&[u8]; 2] = [b"", b""];
            let mut k = 0;
            for line in [conn_line, framing_line].into_iter().flatten() {
                extra[k] = line;
                k += 1;
            }
            self.out.put_with(|b| encode::encode_head(b, http10, parts.status, &parts.headers, &extra[..k]));
        }
        drop(parts);

        // The body, while the request body (if still arriving) keeps being fed.
        let keep_trailers = self.cfg.enable_trailers;
        let written = {
            let Conn { io, rbuf, out, .. } = self;
            let mut trailers: Option<HeaderMap> = None;
            let mut done = false;
            poll_fn(|cx| loop {
                if let Some(f) = feeder.as_mut() {
                    if let Poll::Ready(Err(_)) = feed.poll(f, io, rbuf, cx) {
                        return Poll::Ready(false);
                    }
                }
                if done {
                    return match out.poll_flush(io, cx) {
                        Poll::Ready(r) => Poll::Ready(r.is_ok()),
                        Poll::Pending => Poll::Pending,
                    };
                }
                // A full queue is written before more of the body is taken (backpressure
                // towards the upstream).
                if out.pending() >= FLUSH_AT {
                    match out.poll_flush(io, cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => return Poll::Ready(false),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(data) => match &mut writer {
                                Writer::Skip => {}
                                Writer::Length(left) => {
                                    if data.len() as u64 > *left {
                                        // More than announced: the framing cannot hold it.
                                        return Poll::Ready(false);
                                    }
                                    *left -= data.len() as u64;
                                    out.put_data(data);
                                }
                                Writer::Chunked => {
                                    if !data.is_empty() {
                                        out.put_with(|b| encode::chunk_line(b, data.len()));
                                        out.put_data(data);
                                        out.put(b"\r\n");
                                    }
                                }
                                Writer::UntilClose => out.put_data(data),
                            },
                            Err(frame) => {
                                if let Ok(t) = frame.into_trailers() {
                                    trailers = Some(t);
                                }
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        match writer {
                            Writer::Chunked => {
                                let t = if keep_trailers { trailers.as_ref() } else { None };
                                out.put_with(|b| encode::last_chunk(b, t));
                            }
                            // Shorter than announced: the client must not wait for the rest.
                            Writer::Length(left) if left > 0 => {
                                let _ = poll_flush_now(out, io, cx);
                                return Poll::Ready(false);
                            }
                            _ => {}
                        }
                        done = true;
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // The upstream failed mid-body: what arrived is delivered, then the
                        // connection closes without completing the framing.
                        let _ = poll_flush_now(out, io, cx);
                        return Poll::Ready(false);
                    }
                    Poll::Pending => {
                        return match out.poll_flush(io, cx) {
                            Poll::Ready(Err(_)) => Poll::Ready(false),
                            _ => Poll::Pending,
                        };
                    }
                }
            })
            .await
        };
        drop(body);
        if !written {
            return Next::End(End::Gone { active_rq: true });
        }
        if upgraded {
            return match tunnel_up {
                Some(up) if request_complete => Next::End(End::Tunnel(up)),
                _ => Next::End(End::Close(ConnEnd::Local)),
            };
        }
        if close {
            let why = if last {
                ConnEnd::MaxRequests
            } else if !request_complete {
                // Envoy flushes, then waits for the client to close first.
                ConnEnd::LocalDelayed { delayed_close_timeout: false }
            } else if expired && keep_alive && !resp_close {
                ConnEnd::MaxDuration
            } else {
                ConnEnd::Local
            };
            return Next::End(End::Close(why));
        }
        Next::KeepAlive
    }

    /// Shut the write side down, then drain what the client still sends (bounded), so the
    /// client reads the last response instead of a reset.
    /// After a codec reply, Envoy's delayed close: keep the connection (draining what the client
    /// sends) until the client closes or the delayed-close time passes, then close. Whether the
    /// time ran out (`downstream_cx_delayed_close_timeout`).
    async fn close_delayed(&mut self) -> bool {
        let timed_out = tokio::time::timeout(DELAYED_CLOSE, async {
            let mut sink = [0u8; 4096];
            for _ in 0..256 {
                match self.io.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_err();
        let _ = tokio::time::timeout(DELAYED_CLOSE, self.io.shutdown()).await;
        timed_out
    }

    /// Whether the peer was still there when the drain gave up.
    async fn close(&mut self) -> bool {
        tokio::time::timeout(DELAYED_CLOSE, async {
            if self.io.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 4096];
            for _ in 0..256 {
                match self.io.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_err()
    }
}

/// How the request body is fed while the exchange runs.
#[derive(Clone, Copy)]
struct Feed {
    max_trailer_bytes: usize,
    keep_trailers: bool,
}

impl Feed {
    /// Decode what is buffered, reading more while the body needs it. `Ready(Ok(()))`: the
    /// body is complete; `Pending`: waiting for bytes or for the consumer.
    fn poll<I: AsyncRead + Unpin>(self, f: &mut Feeder, io: &mut I, rbuf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        if f.is_done() {
            return Poll::Ready(Ok(()));
        }
        for _ in 0..64 {
            match f.feed(cx, rbuf, self.max_trailer_bytes, self.keep_trailers) {
                Poll::Ready(Ok(true)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(false)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
                rbuf.reserve(READ_CHUNK);
            }
            let read = pin!(io.read_buf(rbuf)).poll(cx);
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    f.fail(BodyError::Aborted);
                    return Poll::Ready(Err(BodyError::Aborted));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
        // Plenty was read in one go: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Read what the client sends after a complete request, into `rbuf` (kept for the next
/// request) while it holds fewer than `keep_at_most` bytes; `Ready`: the client closed (or the
/// connection failed). A full buffer stops the reading (and the watching) until it is consumed.
fn poll_closed<I: AsyncRead + Unpin>(io: &mut I, rbuf: &mut BytesMut, keep_at_most: usize, cx: &mut Context<'_>) -> Poll<()> {
    while rbuf.len() < keep_at_most {
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 2 {
            rbuf.reserve(READ_CHUNK);
        }
        match pin!(io.read_buf(rbuf)).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(_)) => {}
        }
    }
    Poll::Pending
}

fn poll_flush_now<I: AsyncWrite + Unpin>(out: &mut WriteQueue, io: &mut I, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
    out.poll_flush(io, cx)
}

/// Whether `buf` holds the blank line that ends a head (`\n\r\n` or `\n\n`).
fn has_head_end(buf: &[u8]) -> bool {
    buf.windows(2).enumerate().any(|(i, w)| w[0] == b'\n' && (w[1] == b'\n' || (w[1] == b'\r' && buf.get(i + 2) == Some(&b'\n'))))
}

/// Whether a `Connection` header of `h` lists `token`.
fn has_token(h: &HeaderMap, token: &[u8]) -> bool {
    h.get_all(CONNECTION)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token)))
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

