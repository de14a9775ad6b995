//! Envoy's replies to requests the HTTP/1 codec cannot parse.
//!
//! hyper answers an unparsable request itself, with an empty body (`HTTP/1.1 400 Bad Request`,
//! `content-length: 0`, `date`), before any handler runs. Envoy answers `400` with the body
//! `Bad Request` (and `431 Request Header Fields Too Large` for an oversized head), `content-type:
//! text/plain`, `server` and `connection: close`. This transport wrapper recognises hyper's
//! automatic reply — it is the only response whose head is exactly a status line, `content-length:
//! 0` and `date` (every response of ours carries `server`) — and writes Envoy's bytes instead.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Called with the status of each codec-level reply (for stats).
pub type OnCodecReply = Box<dyn Fn(u16) + Send + Sync>;

/// Wraps a downstream HTTP/1 transport.
pub struct CodecErrorRewrite<T> {
    inner: T,
    server: String,
    on_reply: Option<OnCodecReply>,
    /// A replacement being written: (bytes, written so far, length reported to hyper).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<T> CodecErrorRewrite<T> {
    pub fn new(inner: T, server: &str) -> Self {
        CodecErrorRewrite { inner, server: server.to_string(), on_reply: None, pending: None }
    }
    /// Report each rewritten codec reply's status.
    pub fn on_reply(mut self, f: OnCodecReply) -> Self {
        self.on_reply = Some(f);
        self
    }
    fn replaced(&mut self, original: &[u8], reply: Vec<u8>) {
        // An HTTP/1.0 status-line fix is not a codec reply of its own.
        if !original.starts_with(b"HTTP/1.0 ") {
            if let (Some(f), Some(code)) = (&self.on_reply, std::str::from_utf8(&reply[9..12]).ok().and_then(|c| c.parse().ok())) {
                f(code);
            }
        }
        self.pending = Some((reply, 0, original.len()));
    }
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

/// If `buf` is hyper's automatic error reply, Envoy's equivalent; a response head hyper wrote
/// as `HTTP/1.0` (for an HTTP/1.0 request) gets Envoy's `HTTP/1.1` status line.
pub fn envoy_reply_for(buf: &[u8], server: &str) -> Option<Vec<u8>> {
    // Cheap rejection first: this runs on every write.
    if buf.starts_with(b"HTTP/1.0 ") {
        let mut out = buf.to_vec();
        out[7] = b'1';
        return Some(out);
    }
    if buf.len() > 200 || !buf.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let text = std::str::from_utf8(buf).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 ")?;
    let (status_line, headers) = rest.split_once("\r\n")?;
    let code = status_line.get(..3)?;
    let headers = headers.strip_prefix("connection: close\r\n").unwrap_or(headers);
    let date_line = headers.strip_prefix("content-length: 0\r\ndate: ")?;
    let date = date_line.strip_suffix("\r\n\r\n")?;
    if date.contains('\r') || date.len() != 29 {
        return None;
    }
    let (status, body) = match code {
        "400" => ("400 Bad Request", "Bad Request"),
        "431" | "414" => ("431 Request Header Fields Too Large", "Request Header Fields Too Large"),
        _ => return None,
    };
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\ndate: {date}\r\nserver: {server}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for CodecErrorRewrite<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> CodecErrorRewrite<T> {
    fn drain_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, written, reported)) = &mut self.pending {
            if *written == bytes.len() {
                let n = *reported;
                self.pending = None;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CodecErrorRewrite<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match envoy_reply_for(buf, &this.server) {
                Some(reply) => this.replaced(buf, reply),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.drain_pending(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            // Only the first slice can be a response head; a partial write of just that slice
            // is a valid answer to a vectored write.
            let first = bufs.iter().find(|b| !b.is_empty());
            match first.and_then(|f| envoy_reply_for(f, &this.server).map(|r| (f, r))) {
                Some((f, r)) => this.replaced(f, r),
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        this.drain_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_hypers_automatic_reply() {
        let auto = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 22:04:59 GMT\r\n\r\n";
        let out = String::from_utf8(envoy_reply_for(auto, "envoy").unwrap()).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\ndate: Tue, 24 Nov 2026 22:04:59 GMT\r\nserver: envoy\r\nconnection: close\r\n\r\nBad Request"
        );
        let ours = b"HTTP/1.1 400 Bad Request\r\ndate: Tue, 24 Nov 2026 22:04:59 GMT\r\nserver: envoy\r\ncontent-length: 0\r\n\r\n";
        assert!(envoy_reply_for(ours, "envoy").is_none());
        let proxied = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 22:04:59 GMT\r\nx-envoy-upstream-service-time: 1\r\n\r\n";
        assert!(envoy_reply_for(proxied, "envoy").is_none());
        let with_close = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 22:04:59 GMT\r\n\r\n";
        assert!(envoy_reply_for(with_close, "envoy").unwrap().ends_with(b"Bad Request"));
        let http10 = b"HTTP/1.0 426 Upgrade Required\r\ncontent-length: 16\r\n\r\nUpgrade Required";
        assert!(envoy_reply_for(http10, "envoy").unwrap().starts_with(b"HTTP/1.1 426 "));
        let big = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 22:04:59 GMT\r\n\r\n";
        assert!(String::from_utf8(envoy_reply_for(big, "envoy").unwrap()).unwrap().ends_with("\r\n\r\nRequest Header Fields Too Large"));
    }

    #[tokio::test]
    async fn writes_the_replacement_through() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(4096);
        let mut w = CodecErrorRewrite::new(a, "envoy");
        let auto = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 22:04:59 GMT\r\n\r\n";
        let n = w.write(auto).await.unwrap();
        assert_eq!(n, auto.len());
        w.shutdown().await.unwrap();
        let mut got = String::new();
        b.read_to_string(&mut got).await.unwrap();
        assert!(got.ends_with("connection: close\r\n\r\nBad Request"), "{got}");
    }
}
