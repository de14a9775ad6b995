//! The connection manager's per-stream timers that are off unless configured:
//! `request_timeout` (the whole request must arrive in time, unless the response started) and
//! `max_stream_duration` (the whole exchange, response body included).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::Notify;

use crate::body::{Body, BoxError};
use crate::stats::Counter;

/// Whether the request has arrived whole.
#[derive(Default)]
pub struct Arrival {
    done: AtomicBool,
    notify: Notify,
}

impl Arrival {
    pub fn set(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves once the request has arrived whole.
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }

    /// A request body that marks the request arrived at its end.
    pub fn watch(self: &Arc<Self>, inner: Body) -> Body {
        Body::boxed(Watched { inner, arrival: self.clone() })
    }
}

struct Watched {
    inner: Body,
    arrival: Arc<Arrival>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.arrival.set();
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

/// `request_timeout`: resolves when `d` passed before the request arrived whole (never once
/// it has).
pub async fn request_timeout(d: Duration, arrival: &Arrival) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = arrival.wait() => std::future::pending().await,
    }
}

/// A response body cut off at the stream's `max_stream_duration` deadline: the stream is then
/// reset (an error ends the HTTP/1 connection, or resets the HTTP/2 stream), as Envoy does.
pub struct Deadline {
    inner: Body,
    timer: Pin<Box<tokio::time::Sleep>>,
    counter: Option<Counter>,
}

impl Deadline {
    pub fn wrap(inner: Body, at: tokio::time::Instant, counter: Counter) -> Body {
        if inner.is_end_stream() {
            return inner;
        }
        Body::boxed(Deadline { inner, timer: Box::pin(tokio::time::sleep_until(at)), counter: Some(counter) })
    }
}

/// The error that ends a response body at `max_stream_duration`.
#[derive(Debug)]
pub struct DurationReached;

impl std::fmt::Display for DurationReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("max_stream_duration reached")
    }
}

impl std::error::Error for DurationReached {}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.timer.as_mut().poll(cx).is_ready() {
            if let Some(c) = self.counter.take() {
                c.inc();
            }
            return Poll::Ready(Some(Err(Box::new(DurationReached))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn request_timeout_fires_only_while_the_request_is_arriving() {
        let a = Arc::new(Arrival::default());
        let t0 = tokio::time::Instant::now();
        request_timeout(Duration::from_secs(2), &a).await;
        assert_eq!(t0.elapsed(), Duration::from_secs(2));

        let a = Arc::new(Arrival::default());
        let a2 = a.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            a2.set();
        });
        let r = tokio::time::timeout(Duration::from_secs(60), request_timeout(Duration::from_secs(2), &a)).await;
        assert!(r.is_err(), "an arrived request never times out");
    }

    #[tokio::test(start_paused = true)]
    async fn a_watched_body_marks_arrival_at_its_end() {
        let a = Arc::new(Arrival::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let body = a.watch(Body::boxed(http_body_util::StreamBody::new(tokio_stream_from(rx))));
        let reader = tokio::spawn(async move { body.collect().await.map(|c| c.to_bytes()) });
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab")))).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!a.done.load(Ordering::Acquire));
        drop(tx);
        assert_eq!(reader.await.unwrap().unwrap(), Bytes::from_static(b"ab"));
        assert!(a.done.load(Ordering::Acquire));
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_a_streaming_body() {
        let counter = Counter::default();
        let body = Body::boxed(http_body_util::StreamBody::new(futures_util::stream::pending::<Result<Frame<Bytes>, BoxError>>()));
        let at = tokio::time::Instant::now() + Duration::from_secs(3);
        let r = Deadline::wrap(body, at, counter.clone()).collect().await;
        assert!(r.is_err());
        assert_eq!(counter.value(), 1);
        assert_eq!(tokio::time::Instant::now() - (at - Duration::from_secs(3)), Duration::from_secs(3));
    }
}
