//! Per-host connection pools, one per worker thread.
//!
//! **Per worker, like Envoy.** The proxy serves each downstream connection start to finish on one
//! worker thread (a single-threaded runtime, see `server`), so each worker keeps its own idle
//! HTTP/1.1 connections and its own HTTP/2 connection per host: a connection's task and every
//! request that uses it stay on one thread, with no cross-thread wake-ups on the request path.
//! Threads that are not workers (in-process callers, tests) share slot 0. The per-slot mutexes
//! are only ever taken by their own thread on the request path, so they are uncontended.
//!
//! * HTTP/1.1: a LIFO stack of idle `SendRequest`s. A connection goes back when its response body
//!   has ended (see `cluster::UpstreamBody`); on checkout a closed sender is discarded and a
//!   not-yet-ready one is awaited briefly.
//! * HTTP/2: one multiplexed connection per host and worker, shared by cloning its `SendRequest`;
//!   replaced when closed (GOAWAY, reset, upstream gone). A per-host async mutex serialises
//!   reconnects so a burst of requests opens one connection, not one each.
//!
//! **Connection life (Envoy's upstream limits).** Each connection has a [`ConnState`] shared by
//! its pool entry, the requests on it ([`ConnUse`]) and its connection task ([`drive`]): the task
//! closes the connection after `idle_timeout` without requests (default 1 h), drains it at
//! `max_connection_duration`, and a connection that took `max_requests_per_connection` requests
//! drains too. A draining connection takes no new request and closes when its last one ends.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use hyper::client::conn::{http1, http2};

use crate::body::Body;
use crate::stats::Counter;

/// How long checkout waits for a pooled HTTP/1.1 connection that is not yet marked ready (its
/// connection task has not run since the previous response ended).
const READY_WAIT: Duration = Duration::from_millis(250);

/// Slots: 0 for non-worker threads, then one per worker (workers beyond share by modulo).
const SLOTS: usize = 17;

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Mark the current thread as worker `index` (called once by each worker thread).
pub fn bind_worker_thread(index: usize) {
    SLOT.with(|s| s.set(1 + index % (SLOTS - 1)));
}

fn slot() -> usize {
    SLOT.with(|s| s.get())
}

/// An idle HTTP/1.1 connection: its sender, local address and state.
pub(crate) type IdleH1 = (http1::SendRequest<Body>, Option<SocketAddr>, Arc<ConnState>);
/// A host's HTTP/2 connection of one worker.
pub(crate) type SharedH2 = (http2::SendRequest<Body>, Option<SocketAddr>, Arc<ConnState>);

pub(crate) struct HostPool {
    /// Idle connections with their local addresses.
    h1_idle: [Mutex<Vec<IdleH1>>; SLOTS],
    h2: [Mutex<Option<SharedH2>>; SLOTS],
    pub(crate) h2_connect: tokio::sync::Mutex<()>,
}

impl Default for HostPool {
    fn default() -> Self {
        HostPool {
            h1_idle: std::array::from_fn(|_| Mutex::new(Vec::new())),
            h2: std::array::from_fn(|_| Mutex::new(None)),
            h2_connect: tokio::sync::Mutex::new(()),
        }
    }
}

impl std::fmt::Debug for HostPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPool").field("h1_idle", &self.idle_h1_count()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HostPool {
    /// An idle HTTP/1.1 connection ready for a request, if any, with the request started on it.
    pub(crate) async fn take_h1(&self, limits: &ConnLimits) -> Option<(http1::SendRequest<Body>, Option<SocketAddr>, Started)> {
        loop {
            let (mut s, local, state) = lock(&self.h1_idle[slot()]).pop()?;
            if s.is_closed() {
                continue;
            }
            if !s.is_ready() && !matches!(tokio::time::timeout(READY_WAIT, s.ready()).await, Ok(Ok(()))) {
                continue;
            }
            if let Some(started) = state.try_begin(limits) {
                return Some((s, local, started));
            }
        }
    }

    pub(crate) fn put_h1(&self, s: http1::SendRequest<Body>, local: Option<SocketAddr>, state: Arc<ConnState>) {
        if !s.is_closed() && !state.is_draining() {
            lock(&self.h1_idle[slot()]).push((s, local, state));
        }
    }

    pub(crate) fn idle_h1_count(&self) -> usize {
        self.h1_idle.iter().map(|m| lock(m).len()).sum()
    }

    /// The shared HTTP/2 connection, if open and not draining, with the request started on it.
    pub(crate) fn h2(&self, limits: &ConnLimits) -> Option<(http2::SendRequest<Body>, Option<SocketAddr>, Started)> {
        let g = lock(&self.h2[slot()]);
        match &*g {
            Some((s, local, state)) if !s.is_closed() && s.is_ready() => {
                let started = state.try_begin(limits)?;
                Some((s.clone(), *local, started))
            }
            _ => None,
        }
    }

    pub(crate) fn set_h2(&self, s: http2::SendRequest<Body>, local: Option<SocketAddr>, state: Arc<ConnState>) {
        *lock(&self.h2[slot()]) = Some((s, local, state));
    }

    /// Drop idle connections (host removed): HTTP/1.1 idle connections close now; the HTTP/2
    /// connection closes when its in-flight streams end.
    pub(crate) fn close_idle(&self) {
        for m in &self.h1_idle {
            lock(m).clear();
        }
        for m in &self.h2 {
            if let Some((_, _, state)) = lock(m).take() {
                state.drain();
            }
        }
    }
}

/// Limits on an upstream connection's life, from the cluster's HTTP protocol options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnLimits {
    /// `common_http_protocol_options.idle_timeout`: default 1 h; `0s` disables it.
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration` (unset: none).
    pub max_duration: Option<Duration>,
    /// `max_requests_per_connection` (unset or 0: unlimited).
    pub max_requests: Option<NonZeroU32>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits { idle_timeout: Some(Duration::from_secs(3600)), max_duration: None, max_requests: None }
    }
}

/// One upstream connection's use, shared by its pool entry, its requests and its task.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// Requests in flight (until their response body ended or was dropped).
    active: AtomicU32,
    /// Requests started on the connection.
    served: AtomicU32,
    /// Takes no new request; closes when `active` reaches 0.
    draining: AtomicBool,
    /// The task is closing the idle connection (a request starting meanwhile goes elsewhere).
    closing: AtomicBool,
    /// Handed over to a tunnel (`101`, CONNECT): its task no longer applies the limits.
    switched: AtomicBool,
    /// When `active` last became 0.
    idle_since: Mutex<Instant>,
    /// Wakes the connection task (idle again, draining).
    wake: tokio::sync::Notify,
}

/// A request started on a connection: [`ConnUse`] ends it; `reached_max_requests` is set for
/// the request that used up `max_requests_per_connection` (Envoy's `upstream_cx_max_requests`).
#[derive(Debug)]
pub(crate) struct Started {
    pub conn: ConnUse,
    pub reached_max_requests: bool,
}

impl ConnState {
    pub(crate) fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            active: AtomicU32::new(0),
            served: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            switched: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Start a request on the connection; `None` when it is draining. The request that reaches
    /// `max_requests` starts and drains the connection.
    pub(crate) fn try_begin(self: &Arc<Self>, limits: &ConnLimits) -> Option<Started> {
        // Counted first, then the flags checked: the task closing an idle connection sets
        // `closing` first, then checks the count (SeqCst both ways), so one of them yields.
        self.active.fetch_add(1, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) || self.closing.load(Ordering::SeqCst) {
            drop(ConnUse(self.clone()));
            return None;
        }
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let reached_max_requests = limits.max_requests.is_some_and(|m| served == m.get());
        if reached_max_requests {
            self.draining.store(true, Ordering::SeqCst);
        }
        Some(Started { conn: ConnUse(self.clone()), reached_max_requests })
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// No new requests; the connection closes once idle.
    pub(crate) fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The connection now belongs to a tunnel.
    pub(crate) fn switch(&self) {
        self.switched.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    #[cfg(test)]
    pub(crate) fn requests_served(&self) -> u32 {
        self.served.load(Ordering::Relaxed)
    }
}

/// One request's use of a connection; dropping it ends the request there.
#[derive(Debug)]
pub(crate) struct ConnUse(Arc<ConnState>);

impl ConnUse {
    pub(crate) fn state(&self) -> &Arc<ConnState> {
        &self.0
    }
}

impl Drop for ConnUse {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            *lock(&self.0.idle_since) = Instant::now();
            self.0.wake.notify_one();
        }
    }
}

/// The counters a connection task charges (`cluster.<name>.*`).
#[derive(Debug, Clone, Default)]
pub(crate) struct LifeStats {
    pub idle_timeout: Counter,
    pub max_duration_reached: Counter,
    pub destroy_local: Counter,
}

/// Why [`drive`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The connection future finished on its own (peer closed, error, tunnel hand-off).
    Finished,
    /// Closed here: idle for `idle_timeout`.
    IdleTimeout,
    /// Closed here: drained (`max_requests_per_connection`, `max_connection_duration`, host
    /// removed) and its last request ended.
    Drained,
}

/// Run a connection future under `limits`: it is dropped (the socket closes) when the
/// connection has been idle for `idle_timeout`, or when it drains and its last request ends.
/// `opened`: when the connection was established (the start of `max_connection_duration`).
// Not an `async fn`: the explicit `Send` future lets connection tasks be spawned (an `async fn`
// here trips the compiler's higher-ranked `Send` check at the spawn sites).
#[allow(clippy::manual_async_fn)]
pub(crate) fn drive<F>(conn: F, state: Arc<ConnState>, limits: ConnLimits, opened: Instant, stats: LifeStats) -> impl Future<Output = Ended> + Send
where
    F: Future + Send,
{
    async move {
        tokio::pin!(conn);
        let mut duration_end = limits.max_duration.map(|d| opened + d);
        loop {
            let wake = state.wake.notified();
            if state.switched.load(Ordering::SeqCst) {
                conn.as_mut().await;
                return Ended::Finished;
            }
            let idle = state.active.load(Ordering::SeqCst) == 0;
            if idle && state.is_draining() {
                stats.destroy_local.inc();
                return Ended::Drained;
            }
            let idle_end = if idle { limits.idle_timeout.map(|t| *lock(&state.idle_since) + t) } else { None };
            let next = match (idle_end, duration_end) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                _ = conn.as_mut() => {
                    if state.is_draining() && state.active.load(Ordering::SeqCst) == 0 {
                        stats.destroy_local.inc();
                        return Ended::Drained;
                    }
                    return Ended::Finished;
                }
                _ = wake => {}
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    if duration_end.is_some_and(|d| now >= d) {
                        duration_end = None;
                        stats.max_duration_reached.inc();
                        state.draining.store(true, Ordering::SeqCst);
                        continue;
                    }
                    if idle_end.is_some_and(|d| now >= d) {
                        // Claim the connection: a request starting now sees the flag and goes
                        // elsewhere; one that started first keeps it.
                        state.closing.store(true, Ordering::SeqCst);
                        if state.active.load(Ordering::SeqCst) == 0 {
                            stats.idle_timeout.inc();
                            stats.destroy_local.inc();
                            return Ended::IdleTimeout;
                        }
                        state.closing.store(false, Ordering::SeqCst);
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(idle: Option<u64>, duration: Option<u64>, requests: u32) -> ConnLimits {
        ConnLimits {
            idle_timeout: idle.map(Duration::from_secs),
            max_duration: duration.map(Duration::from_secs),
            max_requests: NonZeroU32::new(requests),
        }
    }

    /// A connection task over a future that never ends on its own (an open connection).
    fn spawn(state: &Arc<ConnState>, l: ConnLimits, stats: &LifeStats) -> tokio::task::JoinHandle<Ended> {
        let (state, stats) = (state.clone(), stats.clone());
        tokio::spawn(async move { drive(std::future::pending::<()>(), state, l, Instant::now(), stats).await })
    }

    async fn advance(secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_from_the_last_request_end() {
        let stats = LifeStats::default();
        let state = ConnState::new();
        let l = limits(Some(60), None, 0);
        let used = state.try_begin(&l).unwrap();
        let task = spawn(&state, l, &stats);
        // Busy for two minutes: not idle.
        advance(120).await;
        assert!(!task.is_finished());
        drop(used);
        advance(59).await;
        assert!(!task.is_finished());
        // A request in between restarts the idle period.
        drop(state.try_begin(&l).unwrap());
        advance(59).await;
        assert!(!task.is_finished());
        advance(2).await;
        assert_eq!(task.await.unwrap(), Ended::IdleTimeout);
        assert_eq!((stats.idle_timeout.value(), stats.destroy_local.value()), (1, 1));
        assert_eq!(stats.max_duration_reached.value(), 0);
        // Closed: no request starts on it any more.
        assert!(state.try_begin(&l).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn default_limits_close_after_an_hour_and_zero_never() {
        let stats = LifeStats::default();
        let state = ConnState::new();
        let task = spawn(&state, ConnLimits::default(), &stats);
        advance(3599).await;
        assert!(!task.is_finished());
        advance(2).await;
        assert_eq!(task.await.unwrap(), Ended::IdleTimeout);
        let state = ConnState::new();
        let task = spawn(&state, limits(None, None, 0), &stats);
        advance(100 * 3600).await;
        assert!(!task.is_finished());
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn max_duration_drains_and_closes_after_the_last_request() {
        let stats = LifeStats::default();
        let state = ConnState::new();
        let l = limits(Some(3600), Some(10), 0);
        let used = state.try_begin(&l).unwrap();
        let task = spawn(&state, l, &stats);
        advance(11).await;
        // Reached: counted, draining, but the request in flight keeps it open.
        assert_eq!(stats.max_duration_reached.value(), 1);
        assert!(state.is_draining());
        assert!(state.try_begin(&l).is_none());
        assert!(!task.is_finished());
        advance(100).await;
        assert!(!task.is_finished());
        drop(used);
        assert_eq!(task.await.unwrap(), Ended::Drained);
        assert_eq!((stats.destroy_local.value(), stats.idle_timeout.value(), stats.max_duration_reached.value()), (1, 0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn max_duration_closes_an_idle_connection_at_once() {
        let stats = LifeStats::default();
        let state = ConnState::new();
        let task = spawn(&state, limits(Some(3600), Some(5), 0), &stats);
        advance(6).await;
        assert_eq!(task.await.unwrap(), Ended::Drained);
        assert_eq!((stats.max_duration_reached.value(), stats.destroy_local.value()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn max_requests_drains_after_the_last_allowed_request() {
        let stats = LifeStats::default();
        let state = ConnState::new();
        let l = limits(Some(3600), None, 3);
        let task = spawn(&state, l, &stats);
        let a = state.try_begin(&l).unwrap();
        let b = state.try_begin(&l).unwrap();
        assert!(!a.reached_max_requests && !b.reached_max_requests);
        let c = state.try_begin(&l).unwrap();
        assert!(c.reached_max_requests);
        assert!(state.try_begin(&l).is_none());
        assert_eq!(state.requests_served(), 3);
        drop((a, b));
        advance(1).await;
        assert!(!task.is_finished());
        drop(c);
        assert_eq!(task.await.unwrap(), Ended::Drained);
        assert_eq!((stats.destroy_local.value(), stats.idle_timeout.value()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ends_itself_or_is_switched_is_left_alone() {
        let stats = LifeStats::default();
        // The peer closed: finished, nothing counted.
        let state = ConnState::new();
        let ended = drive(async {}, state, limits(Some(1), None, 0), Instant::now(), stats.clone()).await;
        assert_eq!(ended, Ended::Finished);
        // Handed to a tunnel: no idle timeout, no drain; it ends with the tunnel hand-off.
        let state = ConnState::new();
        let l = limits(Some(1), Some(2), 1);
        let used = state.try_begin(&l).unwrap();
        state.switch();
        drop(used);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (st, s) = (state.clone(), stats.clone());
        let task = tokio::spawn(async move { drive(rx, st, l, Instant::now(), s).await });
        advance(10).await;
        assert!(!task.is_finished());
        tx.send(()).unwrap();
        assert_eq!(task.await.unwrap(), Ended::Finished);
        assert_eq!((stats.destroy_local.value(), stats.idle_timeout.value(), stats.max_duration_reached.value()), (0, 0, 0));
    }
}
