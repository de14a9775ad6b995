//! Per-host connection pools.
//!
//! **Shared, not per worker.** sluice runs one multi-threaded tokio runtime whose tasks migrate
//! between worker threads, so a per-worker pool would need thread-locals that tasks may leave
//! mid-request. Instead each host has one pool guarded by a short `std::sync::Mutex` held only to
//! push or pop an idle HTTP/1.1 sender or to clone the shared HTTP/2 sender (no `.await` while
//! held). A test (`upstream_pool::pool_lock_cost`) measures the overhead at a few hundred
//! nanoseconds per request under contention from concurrent tasks on 2 cores, small against the
//! ~50-100 µs of a loopback HTTP round trip. A shared pool also reuses connections better than
//! Envoy's per-worker pools (fewer upstream connections for the same load).
//!
//! * HTTP/1.1: a LIFO stack of idle `SendRequest`s. A connection goes back when its response body
//!   has ended (see `cluster::UpstreamBody`); on checkout a closed sender is discarded and a
//!   not-yet-ready one is awaited briefly.
//! * HTTP/2: one multiplexed connection per host, shared by cloning its `SendRequest`; replaced
//!   when closed (GOAWAY, reset, upstream gone). A per-host async mutex serialises reconnects so
//!   a burst of requests opens one connection, not one each.

use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::{http1, http2};

use crate::body::Body;

/// How long checkout waits for a pooled HTTP/1.1 connection that is not yet marked ready (its
/// connection task has not run since the previous response ended).
const READY_WAIT: Duration = Duration::from_millis(250);

#[derive(Default)]
pub(crate) struct HostPool {
    h1_idle: Mutex<Vec<http1::SendRequest<Body>>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    pub(crate) h2_connect: tokio::sync::Mutex<()>,
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
    pub(crate) async fn take_h1(&self) -> Option<http1::SendRequest<Body>> {
        loop {
            let mut s = lock(&self.h1_idle).pop()?;
            if s.is_closed() {
                continue;
            }
            if s.is_ready() {
                return Some(s);
            }
            match tokio::time::timeout(READY_WAIT, s.ready()).await {
                Ok(Ok(())) => return Some(s),
                _ => continue,
            }
        }
    }

    pub(crate) fn put_h1(&self, s: http1::SendRequest<Body>) {
        if !s.is_closed() {
            lock(&self.h1_idle).push(s);
        }
    }

    pub(crate) fn idle_h1_count(&self) -> usize {
        lock(&self.h1_idle).len()
    }

    /// The shared HTTP/2 connection, if open.
    pub(crate) fn h2(&self) -> Option<http2::SendRequest<Body>> {
        let g = lock(&self.h2);
        match &*g {
            Some(s) if !s.is_closed() && s.is_ready() => Some(s.clone()),
            _ => None,
        }
    }

    pub(crate) fn set_h2(&self, s: http2::SendRequest<Body>) {
        *lock(&self.h2) = Some(s);
    }

    /// Drop idle connections (host removed): HTTP/1.1 idle connections close now; the HTTP/2
    /// connection closes when its in-flight streams end.
    pub(crate) fn close_idle(&self) {
        lock(&self.h1_idle).clear();
        *lock(&self.h2) = None;
    }
}
