//! Listener access logs: one line per downstream connection when it closes, as Envoy writes
//! them (`"- - HTTP/1.1" 0 - <bytes received> <bytes sent> <duration> …`, the connection's
//! plaintext byte counts and lifetime), or at once with `NR` when no filter chain matched.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use http::Version;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::AccessLogs;
use crate::filters::ConnectionInfo;
use crate::formatter::Context;
use crate::stats::Counter;
use crate::stream_info::{ResponseFlags, StreamInfo};

/// Bytes a connection received and sent.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    rx: AtomicU64,
    tx: AtomicU64,
}

/// A transport that counts its bytes into the connection manager's
/// `downstream_cx_{rx,tx}_bytes_total` and, when `counts` is set (listener access logs), into
/// the connection's own record.
pub struct Counted<T> {
    inner: T,
    counts: Option<Arc<ConnectionCounts>>,
    rx_total: Counter,
    tx_total: Counter,
}

impl<T> Counted<T> {
    pub fn new(inner: T, counts: Option<Arc<ConnectionCounts>>, rx_total: Counter, tx_total: Counter) -> Self {
        Counted { inner, counts, rx_total, tx_total }
    }
    fn sent(&self, n: usize) {
        self.tx_total.add(n as u64);
        if let Some(c) = &self.counts {
            c.tx.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let n = (buf.filled().len() - before) as u64;
            self.rx_total.add(n);
            if let Some(c) = &self.counts {
                c.rx.fetch_add(n, Ordering::Relaxed);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent(*n);
        }
        r
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.sent(*n);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The access log of one downstream connection (when the listener has `access_log`).
pub struct ConnectionLog {
    logs: Arc<AccessLogs>,
    start: Instant,
    start_time: std::time::SystemTime,
    counts: Arc<ConnectionCounts>,
}

impl ConnectionLog {
    /// Start recording a connection; `None` without listener access logs.
    pub fn start(logs: Option<&Arc<AccessLogs>>) -> Option<ConnectionLog> {
        Some(ConnectionLog {
            logs: logs?.clone(),
            start: Instant::now(),
            start_time: std::time::SystemTime::now(),
            counts: Arc::new(ConnectionCounts::default()),
        })
    }

    /// The counters to give the connection's transport ([`Counted`]).
    pub fn counts(&self) -> Arc<ConnectionCounts> {
        self.counts.clone()
    }

    /// Write the line: the connection closed (`protocol` is what it spoke, if anything), or was
    /// refused (`NR`: no filter chain matched).
    pub fn finish(self, conn: Arc<ConnectionInfo>, protocol: Option<Version>, flags: ResponseFlags) {
        let mut info = StreamInfo::starting(0, protocol.unwrap_or(Version::HTTP_11), conn, self.start);
        info.protocol_unset = protocol.is_none();
        info.start_time = self.start_time;
        info.set_flag(flags);
        info.bytes_received = self.counts.rx.load(Ordering::Relaxed);
        info.bytes_sent = self.counts.tx.load(Ordering::Relaxed);
        info.last_downstream_tx = Some(if flags.is_empty() { self.start.elapsed() } else { std::time::Duration::ZERO });
        self.logs.log(&Context::new(&info));
    }
}
