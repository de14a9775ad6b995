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

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::{http1, http2};

use crate::body::Body;

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

pub(crate) struct HostPool {
    /// Idle connections with their local addresses.
    h1_idle: [Mutex<Vec<(http1::SendRequest<Body>, Option<SocketAddr>)>>; SLOTS],
    h2: [Mutex<Option<(http2::SendRequest<Body>, Option<SocketAddr>)>>; SLOTS],
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
    /// An idle HTTP/1.1 connection ready for a request, if any.
    pub(crate) async fn take_h1(&self) -> Option<(http1::SendRequest<Body>, Option<SocketAddr>)> {
        loop {
            let (mut s, local) = lock(&self.h1_idle[slot()]).pop()?;
            if s.is_closed() {
                continue;
            }
            if s.is_ready() {
                return Some((s, local));
            }
            match tokio::time::timeout(READY_WAIT, s.ready()).await {
                Ok(Ok(())) => return Some((s, local)),
                _ => continue,
            }
        }
    }

    pub(crate) fn put_h1(&self, s: http1::SendRequest<Body>, local: Option<SocketAddr>) {
        if !s.is_closed() {
            lock(&self.h1_idle[slot()]).push((s, local));
        }
    }

    pub(crate) fn idle_h1_count(&self) -> usize {
        self.h1_idle.iter().map(|m| lock(m).len()).sum()
    }

    /// The shared HTTP/2 connection, if open.
    pub(crate) fn h2(&self) -> Option<(http2::SendRequest<Body>, Option<SocketAddr>)> {
        let g = lock(&self.h2[slot()]);
        match &*g {
            Some((s, local)) if !s.is_closed() && s.is_ready() => Some((s.clone(), *local)),
            _ => None,
        }
    }

    pub(crate) fn set_h2(&self, s: http2::SendRequest<Body>, local: Option<SocketAddr>) {
        *lock(&self.h2[slot()]) = Some((s, local));
    }

    /// Drop idle connections (host removed): HTTP/1.1 idle connections close now; the HTTP/2
    /// connection closes when its in-flight streams end.
    pub(crate) fn close_idle(&self) {
        for m in &self.h1_idle {
            lock(m).clear();
        }
        for m in &self.h2 {
            *lock(m) = None;
        }
    }
}
