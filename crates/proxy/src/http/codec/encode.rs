//! Response serialisation: the status line (Envoy's reason phrases, `HTTP/1.0` for HTTP/1.0
//! requests), the headers in the order the connection manager built them, then the framing
//! headers the codec decides; and the output queue written with vectored writes.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::TRANSFER_ENCODING;
use http::{HeaderMap, StatusCode};
use tokio::io::AsyncWrite;

use super::reason::reason;

/// Body pieces up to this size are copied next to the head (one contiguous write); larger
/// ones are written from their own buffer.
const COPY_MAX: usize = 2048;
/// Slices per vectored write.
const MAX_SLICES: usize = 32;
/// Size of the shared buffer past which its written front is dropped.
const COMPACT_AT: usize = 16 * 1024;

/// Write the status line and headers; `extra` are complete header lines the codec adds at the
/// end (`connection`, then the framing header). A `transfer-encoding` in `headers` is left out:
/// the codec decides the framing.
pub fn encode_head(out: &mut Vec<u8>, http10: bool, status: StatusCode, headers: &HeaderMap, extra: &[&[u8]]) {
    out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status.as_u16()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for line in extra {
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\r\n");
}

/// `{size:x}\r\n`.
pub fn chunk_line(out: &mut Vec<u8>, size: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = size;
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with trailers when given.
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(t) = trailers {
        for (name, value) in t {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

enum Piece {
    /// `buf[start..end]`.
    Buf(usize, usize),
    Data(Bytes),
}

/// Bytes waiting to be written: small parts gathered in one reused buffer, large body pieces
/// by reference.
#[derive(Default)]
pub struct WriteQueue {
    buf: Vec<u8>,
    pieces: VecDeque<Piece>,
    /// Bytes of the first piece already written.
    off: usize,
    pending: usize,
}

impl WriteQueue {
    pub fn with_capacity(n: usize) -> Self {
        WriteQueue { buf: Vec::with_capacity(n), ..Default::default() }
    }

    /// Append small bytes through `f`, which writes into the shared buffer.
    pub fn put_with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.buf.len() >= COMPACT_AT {
            self.compact();
        }
        let start = self.buf.len();
        f(&mut self.buf);
        let end = self.buf.len();
        if end == start {
            return;
        }
        self.pending += end - start;
        if let Some(Piece::Buf(_, e)) = self.pieces.back_mut() {
            if *e == start {
                *e = end;
                return;
            }
        }
        self.pieces.push_back(Piece::Buf(start, end));
    }

    pub fn put(&mut self, bytes: &[u8]) {
        self.put_with(|b| b.extend_from_slice(bytes));
    }

    pub fn put_data(&mut self, data: Bytes) {
        if data.len() <= COPY_MAX {
            self.put(&data);
        } else {
            self.pending += data.len();
            self.pieces.push_back(Piece::Data(data));
        }
    }

    /// Bytes not yet written.
    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Write everything queued, then flush the transport.
    pub fn poll_flush<W: AsyncWrite + Unpin>(&mut self, io: &mut W, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pieces.is_empty() {
            let n = {
                let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
                let mut k = 0;
                for (i, p) in self.pieces.iter().enumerate().take(MAX_SLICES) {
                    let s: &[u8] = match p {
                        Piece::Buf(a, b) => &self.buf[*a..*b],
                        Piece::Data(d) => d,
                    };
                    slices[k] = io::IoSlice::new(if i == 0 { &s[self.off..] } else { s });
                    k += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        self.buf.clear();
        Pin::new(io).poll_flush(cx)
    }

    /// Drop the already written front of the shared buffer (a long response whose queue
    /// never fully drains would otherwise keep growing it).
    fn compact(&mut self) {
        // The first byte of `buf` still to be written (the front piece may be partly written).
        let mut from = self.buf.len();
        let mut front_is_buf = false;
        for (i, p) in self.pieces.iter().enumerate() {
            if let Piece::Buf(a, _) = p {
                front_is_buf = i == 0;
                from = if front_is_buf { a + self.off } else { *a };
                break;
            }
        }
        if from == 0 {
            return;
        }
        self.buf.drain(..from);
        if front_is_buf {
            self.off = 0;
        }
        for p in &mut self.pieces {
            if let Piece::Buf(a, b) = p {
                *a = a.saturating_sub(from);
                *b -= from;
            }
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.pending -= n;
        while n > 0 {
            let Some(front) = self.pieces.front() else { return };
            let len = match front {
                Piece::Buf(a, b) => b - a,
                Piece::Data(d) => d.len(),
            } - self.off;
            if n < len {
                self.off += n;
                return;
            }
            n -= len;
            self.off = 0;
            self.pieces.pop_front();
        }
    }

    /// Everything queued, as one contiguous copy (tests).
    #[cfg(test)]
    pub fn contents(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, p) in self.pieces.iter().enumerate() {
            let s: &[u8] = match p {
                Piece::Buf(a, b) => &self.buf[*a..*b],
                Piece::Data(d) => d,
            };
            v.extend_from_slice(if i == 0 { &s[self.off..] } else { s });
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn status_line_and_header_order() {
        let mut h = HeaderMap::new();
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_head(&mut out, false, StatusCode::IM_A_TEAPOT, &h, &[b"connection: close\r\n", b"content-length: 0\r\n"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 418 Unknown\r\nx-b: 1\r\nx-a: 2\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_head(&mut out, true, StatusCode::OK, &HeaderMap::new(), &[]);
        assert_eq!(out, b"HTTP/1.0 200 OK\r\n\r\n");
    }

    #[test]
    fn chunk_lines() {
        let mut out = Vec::new();
        chunk_line(&mut out, 0x1a2b);
        chunk_line(&mut out, 10);
        last_chunk(&mut out, None);
        assert_eq!(out, b"1a2b\r\na\r\n0\r\n\r\n");
    }

    #[test]
    fn a_queue_that_never_drains_stays_bounded() {
        let mut q = WriteQueue::default();
        for i in 0..10_000u32 {
            q.put(&i.to_be_bytes());
            q.put_data(Bytes::from(vec![b'a'; 100]));
            // Half of what is queued gets written each time.
            let n = q.pending() / 2;
            q.advance(n);
        }
        assert!(q.buf.len() < 2 * COMPACT_AT + 1024, "{}", q.buf.len());
        let rest = q.contents();
        assert_eq!(rest.len(), q.pending());
    }

    #[tokio::test]
    async fn queue_writes_pieces_in_order_across_partial_writes() {
        use tokio::io::AsyncReadExt;
        let (mut a, mut b) = tokio::io::duplex(7);
        let mut q = WriteQueue::default();
        q.put(b"head\r\n");
        q.put_data(Bytes::from(vec![b'x'; 5000]));
        q.put(b"\r\n");
        q.put_data(Bytes::from_static(b"small"));
        assert_eq!(q.pending(), 5013);
        let want = q.contents();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        std::future::poll_fn(|cx| q.poll_flush(&mut a, cx)).await.unwrap();
        assert!(q.is_empty());
        drop(a);
        assert_eq!(reader.await.unwrap(), want);
    }
}
