//! Access logs (`access_log` of the HTTP connection manager and of listeners): Envoy's file,
//! stdout and stderr loggers, their filters, and the formats of [`crate::formatter`].
//!
//! A request is logged once, when it ends: its response body finished (or was cut off), or the
//! request was abandoned. The connection manager keeps a [`StreamInfo`] per request; when access
//! logs are configured it also keeps the request head and wraps the response body in a
//! [`LoggedBody`] that counts the bytes sent and writes the lines at the end. Without access
//! logs none of this exists: no formatting, no copy, no wrapping.
//!
//! Lines are formatted on the worker into a reused buffer and handed to [`writer`], which
//! buffers them per worker and writes them from its own thread.

pub mod connection;
pub mod filter;
pub mod runtime;
pub mod writer;

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Frame, SizeHint};
use sluice_config::access_log::{AccessLog, AccessLoggerConfig, FileAccessLog, StreamAccessLog};

use crate::body::{Body, BoxError};
use crate::config_audit::without_effect;
use crate::formatter::substitution::FormatString;
use crate::formatter::{Context, RequestHead, ResponseView};
use crate::stats::Store;
use crate::stream_info::{ResponseFlags, StreamInfo};

pub use filter::Filter;
pub use writer::{flush_now, reopen, set_flush_options};

/// One configured logger.
struct Logger {
    filter: Option<Filter>,
    format: FormatString,
    sink: Arc<writer::LogFile>,
}

/// The access logs of a connection manager or a listener.
pub struct AccessLogs {
    loggers: Box<[Logger]>,
}

impl std::fmt::Debug for AccessLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogs").field("loggers", &self.loggers.len()).finish()
    }
}

/// A build error: (path relative to the `access_log` list, message).
pub type BuildError = (String, String);

impl AccessLogs {
    /// Build the loggers of an `access_log` list; `None` when the list is empty.
    pub fn build(cfgs: &[AccessLog], store: &Store) -> Result<Option<Arc<AccessLogs>>, BuildError> {
        if cfgs.is_empty() {
            return Ok(None);
        }
        let mut loggers = Vec::with_capacity(cfgs.len());
        for (i, cfg) in cfgs.iter().enumerate() {
            let at = |(p, e): BuildError| (if p.is_empty() { format!("[{i}]") } else { format!("[{i}].{p}") }, e);
            loggers.push(Logger::build(cfg, store).map_err(at)?);
        }
        Ok(Some(Arc::new(AccessLogs { loggers: loggers.into_boxed_slice() })))
    }

    /// Write the lines of every logger whose filter passes.
    pub fn log(&self, ctx: &Context<'_>) {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            for logger in self.loggers.iter() {
                if logger.filter.as_ref().is_some_and(|f| !f.evaluate(ctx)) {
                    continue;
                }
                line.clear();
                logger.format.write(ctx, &mut line);
                logger.sink.write(&line);
            }
            if line.capacity() > 64 * 1024 {
                *line = Vec::with_capacity(512);
            }
        });
    }
}

impl Logger {
    fn build(cfg: &AccessLog, store: &Store) -> Result<Logger, BuildError> {
        let AccessLog { name, filter, typed_config } = cfg;
        without_effect(name, "the logger is chosen by its typed_config");
        let filter = match filter {
            Some(f) => Some(Filter::build(f).map_err(|(p, e)| (join("filter", &p), e))?),
            None => None,
        };
        let (dest, format) = match typed_config {
            AccessLoggerConfig::File(f) => {
                let FileAccessLog { path, format, json_format, typed_json_format, log_format } = f;
                if path.is_empty() {
                    return Err(("typed_config.path".into(), "value length must be at least 1 characters".into()));
                }
                let set = [format.is_some(), json_format.is_some(), typed_json_format.is_some(), log_format.is_some()];
                if set.iter().filter(|b| **b).count() > 1 {
                    return Err((
                        "typed_config".into(),
                        "at most one of format, json_format, typed_json_format, log_format".into(),
                    ));
                }
                let fmt = if let Some(text) = format {
                    FormatString::text(text, false).map_err(|e| ("typed_config.format".to_string(), e))?
                } else if let Some(map) = json_format {
                    FormatString::json(map, false, "typed_config.json_format")?
                } else if let Some(map) = typed_json_format {
                    FormatString::json(map, false, "typed_config.typed_json_format")?
                } else if let Some(lf) = log_format {
                    FormatString::build(lf).map_err(|(p, e)| (join("typed_config.log_format", &p), e))?
                } else {
                    FormatString::default_access_log()
                };
                (writer::Destination::path(path), fmt)
            }
            AccessLoggerConfig::Stdout(s) | AccessLoggerConfig::Stderr(s) => {
                let StreamAccessLog { log_format } = s;
                let fmt = match log_format {
                    Some(lf) => FormatString::build(lf).map_err(|(p, e)| (join("typed_config.log_format", &p), e))?,
                    None => FormatString::default_access_log(),
                };
                let dest = if matches!(typed_config, AccessLoggerConfig::Stdout(_)) {
                    writer::Destination::Stdout
                } else {
                    writer::Destination::Stderr
                };
                (dest, fmt)
            }
        };
        let sink = writer::open(dest, store).map_err(|e| {
            let path = match typed_config {
                AccessLoggerConfig::File(f) => f.path.clone(),
                _ => String::new(),
            };
            ("typed_config.path".to_string(), format!("cannot open access log '{path}': {e}"))
        })?;
        Ok(Logger { filter, format, sink })
    }
}

fn join(a: &str, b: &str) -> String {
    if b.is_empty() {
        a.to_string()
    } else if b.starts_with('[') {
        format!("{a}{b}")
    } else {
        format!("{a}.{b}")
    }
}

/// Request body bytes counted by [`CountedBody`], shared with the log.
#[derive(Debug, Default)]
pub struct RequestBodyCount {
    bytes: AtomicU64,
    /// Microseconds after the request start when the body ended (+1; 0 = not yet).
    done_us: AtomicU64,
}

/// A request body that counts its bytes for `%BYTES_RECEIVED%` and `%REQUEST_DURATION%`.
pub struct CountedBody {
    inner: Body,
    count: Arc<RequestBodyCount>,
    start: Instant,
}

impl CountedBody {
    pub fn wrap(inner: Body, start: Instant) -> (Body, Arc<RequestBodyCount>) {
        let count = Arc::new(RequestBodyCount::default());
        let body = Body::boxed(CountedBody { inner, count: count.clone(), start });
        (body, count)
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.count.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if http_body::Body::is_end_stream(&this.inner) {
                    this.mark_done();
                }
            }
            Poll::Ready(None) => this.mark_done(),
            _ => {}
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

/// A body dropped before its end (the request failed upstream, or never went there) still
/// counts what had already arrived: Envoy counts the bytes its codec read, forwarded or not.
impl Drop for CountedBody {
    fn drop(&mut self) {
        if self.count.done_us.load(Ordering::Relaxed) > 0 {
            return;
        }
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        // Only what is ready now; a bounded number of frames.
        for _ in 0..64 {
            match http_body::Body::poll_frame(Pin::new(&mut self.inner), &mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        self.count.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                }
                _ => return,
            }
        }
    }
}

impl CountedBody {
    fn mark_done(&self) {
        let us = self.start.elapsed().as_micros() as u64 + 1;
        let _ = self.count.done_us.compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl RequestBodyCount {
    fn apply(&self, info: &mut StreamInfo) {
        info.bytes_received = self.bytes.load(Ordering::Relaxed);
        let done = self.done_us.load(Ordering::Relaxed);
        if done > 0 {
            info.last_downstream_rx = Some(Duration::from_micros(done - 1));
        }
    }
}

/// What the connection manager keeps about a request for its access logs.
pub struct PendingLog {
    pub logs: Arc<AccessLogs>,
    pub info: StreamInfo,
    pub request: Option<RequestHead>,
    pub request_body: Option<Arc<RequestBodyCount>>,
}

impl PendingLog {
    /// Log now (the request ended without a response body to wait for).
    pub fn log(mut self, status: Option<u16>, response: Option<&HeaderMap>, trailers: Option<&HeaderMap>) {
        if let Some(c) = &self.request_body {
            c.apply(&mut self.info);
        }
        if self.info.last_downstream_tx.is_none() {
            self.info.last_downstream_tx = Some(self.info.elapsed());
        }
        let mut ctx = Context::new(&self.info);
        ctx.request = self.request.as_ref().map(RequestHead::view);
        if let (Some(status), Some(headers)) = (status, response) {
            ctx.response = Some(ResponseView { status, headers });
        }
        ctx.trailers = trailers;
        self.logs.log(&ctx);
    }

    /// Wrap a response body: the lines are written when it ends (or is dropped unfinished:
    /// the downstream went away, `DC`). `no_body` marks responses that have no body on the
    /// wire (HEAD, 204, 304), whose body is never read.
    pub fn attach(self, resp: Response<Body>, no_body: bool) -> Response<Body> {
        let (parts, body) = resp.into_parts();
        let headers = parts.headers.clone();
        let status = parts.status.as_u16();
        let logged = LoggedBody { inner: body, state: Some(Box::new(BodyState { pending: self, headers, status, trailers: None, no_body })) };
        Response::from_parts(parts, Body::boxed(logged))
    }
}

struct BodyState {
    pending: PendingLog,
    headers: HeaderMap,
    status: u16,
    trailers: Option<HeaderMap>,
    no_body: bool,
}

/// A response body that counts `%BYTES_SENT%` and writes the access log at its end.
pub struct LoggedBody {
    inner: Body,
    state: Option<Box<BodyState>>,
}

impl LoggedBody {
    fn finish(&mut self, cut_off: bool) {
        let Some(state) = self.state.take() else { return };
        let BodyState { mut pending, headers, status, trailers, no_body: _ } = *state;
        if cut_off {
            pending.info.set_flag(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
        }
        pending.info.last_downstream_tx = Some(pending.info.elapsed());
        pending.log(Some(status), Some(&headers), trailers.as_ref());
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(state) = this.state.as_mut() {
                    if let Some(d) = frame.data_ref() {
                        // A HEAD answer (or a 204/304) carries no body on the wire, even when
                        // the codec drains one: Envoy's %BYTES_SENT% is 0 there.
                        if !state.no_body {
                            state.pending.info.bytes_sent += d.len() as u64;
                        }
                    } else if let Some(t) = frame.trailers_ref() {
                        state.trailers = Some(t.clone());
                    }
                }
                if http_body::Body::is_end_stream(&this.inner) {
                    this.finish(false);
                }
            }
            Poll::Ready(None) => this.finish(false),
            Poll::Ready(Some(Err(e))) if e.is::<crate::upstream::RouteTimeout>() => {
                // The route timeout cut the response (Envoy: `UT`, `response_timeout`).
                if let Some(state) = this.state.as_mut() {
                    state.pending.info.set_flag(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                    state.pending.info.response_code_details = Some("response_timeout".into());
                }
                this.finish(false);
            }
            Poll::Ready(Some(Err(e))) if e.is::<crate::upstream::StreamIdleTimeout>() => {
                // The route's idle timeout cut the response (Envoy: `SI`, `stream_idle_timeout`).
                if let Some(state) = this.state.as_mut() {
                    state.pending.info.set_flag(ResponseFlags::STREAM_IDLE_TIMEOUT);
                    state.pending.info.response_code_details = Some("stream_idle_timeout".into());
                }
                this.finish(false);
            }
            Poll::Ready(Some(Err(e))) if e.is::<crate::upstream::PerTryIdleTimeout>() => {
                if let Some(state) = this.state.as_mut() {
                    state.pending.info.set_flag(ResponseFlags::UPSTREAM_REQUEST_TIMEOUT);
                    state.pending.info.response_code_details = Some("upstream_per_try_idle_timeout".into());
                }
                this.finish(false);
            }
            Poll::Ready(Some(Err(e))) if e.is::<crate::http::stream_timers::DurationReached>() => {
                // `max_stream_duration` cut the response (Envoy: no flag, `max_duration_timeout`).
                if let Some(state) = this.state.as_mut() {
                    state.pending.info.response_code_details = Some("max_duration_timeout".into());
                }
                this.finish(false);
            }
            Poll::Ready(Some(Err(_))) => this.finish(true),
            Poll::Pending => {}
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            let complete = state.no_body || http_body::Body::is_end_stream(&self.inner);
            self.finish(!complete);
        }
    }
}

/// The connection manager's record of one request: its [`StreamInfo`], and, when something
/// formats after the request went upstream (access logs, `local_reply_config`, formatted
/// response headers), a copy of the request head. Dropped before the request finished (the
/// downstream went away), it writes the access log with `DC`, as Envoy does.
pub struct StreamRecord<'a> {
    pub info: StreamInfo,
    pub request: Option<RequestHead>,
    /// Whether [`StreamRecord::keep_request`] keeps a copy and string facts (route and cluster
    /// names) are recorded.
    pub full: bool,
    /// The weighted cluster picked for the request (its header mutations apply).
    pub weighted_cluster: Option<usize>,
    /// The connection manager appended `server` to the upstream's response (it sent none): the
    /// filters' response headers go before it, as Envoy adds `server` after its filters.
    pub server_appended: bool,
    logs: Option<&'a Arc<AccessLogs>>,
    request_body: Option<Arc<RequestBodyCount>>,
    head_request: bool,
    done: bool,
    /// Set by the HTTP/1 codec when it refused the request's body half-way.
    body_refused: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl<'a> StreamRecord<'a> {
    pub fn new(info: StreamInfo, logs: Option<&'a Arc<AccessLogs>>, full: bool, head_request: bool) -> Self {
        StreamRecord {
            info,
            request: None,
            full: full || logs.is_some(),
            weighted_cluster: None,
            server_appended: false,
            logs,
            request_body: None,
            head_request,
            done: false,
            body_refused: None,
        }
    }

    /// The codec's flag for a request body it refuses half-way (see [`Drop`]).
    pub fn watch_body_refusal(&mut self, flag: Arc<std::sync::atomic::AtomicBool>) {
        if self.logs.is_some() {
            self.body_refused = Some(flag);
        }
    }

    /// Whether access logs are configured.
    pub fn logging(&self) -> bool {
        self.logs.is_some()
    }

    /// Keep a copy of the request head as it is now (when anything will need it).
    pub fn keep_request<B>(&mut self, req: &http::Request<B>) {
        if self.full {
            self.request = Some(RequestHead::of(req));
        }
    }

    /// With access logs, count the request body (`%BYTES_RECEIVED%`, `%REQUEST_DURATION%`).
    pub fn count_request_body(&mut self, body: Body) -> Body {
        if self.logs.is_none() {
            return body;
        }
        let (body, count) = CountedBody::wrap(body, self.info.start);
        self.request_body = Some(count);
        body
    }

    /// The request is over on our side: with access logs the response body is wrapped and the
    /// log written at its end; otherwise the response is returned as is.
    pub fn finish(mut self, resp: Response<Body>) -> Response<Body> {
        self.done = true;
        let Some(logs) = self.logs else {
            return resp;
        };
        let status = resp.status().as_u16();
        let no_body = self.head_request || status == 204 || status == 304;
        let pending = PendingLog {
            logs: logs.clone(),
            info: take_info(&mut self.info),
            request: self.request.take(),
            request_body: self.request_body.take(),
        };
        pending.attach(resp, no_body)
    }
}

/// Move the info out, leaving a cheap stand-in behind.
fn take_info(info: &mut StreamInfo) -> StreamInfo {
    let stand_in = StreamInfo::starting(info.stream_id, info.protocol, info.conn.clone(), info.start);
    std::mem::replace(info, stand_in)
}

impl Drop for StreamRecord<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(logs) = self.logs else { return };
        let mut info = take_info(&mut self.info);
        if self.body_refused.as_ref().is_some_and(|f| f.load(Ordering::Acquire)) {
            // The codec refused the body (bad chunking) and answers 400 itself, as Envoy.
            let reject = crate::http::codec::parse::Reject::BadRequest;
            info.response_code = Some(reject.status());
            info.response_code_details = Some(reject.details().into());
            info.bytes_sent = reject.body().map_or(0, |b| b.len() as u64);
            info.set_flag(ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR);
        } else {
            // The request was abandoned before its response: the downstream went away.
            info.response_code = None;
            info.response_code_details = Some("downstream_remote_disconnect".into());
            info.set_flag(ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION);
        }
        let pending = PendingLog { logs: logs.clone(), info, request: self.request.take(), request_body: self.request_body.take() };
        pending.log(None, None, None);
    }
}
