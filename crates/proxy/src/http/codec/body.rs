//! Request bodies: the framing decoder (Content-Length, chunked with trailers) and the body the
//! connection manager receives.
//!
//! The connection task owns the socket. It decodes body bytes from its read buffer (split off
//! as `Bytes`, no copy) into a small queue shared with the [`RequestBody`] held by whoever
//! consumes the body (a filter, or the upstream connection's task). The connection reads
//! ahead up to [`HIGH_WATER`] bytes whether or not anyone polls the body, as Envoy reads a
//! request to its end while the response is on its way; past that it waits for the consumer.
//! A request without a body never creates any of this.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};

/// The connection stops reading a body that nobody consumes once this much is queued
/// (Envoy's default per-connection buffer limit).
pub const HIGH_WATER: usize = 1024 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a request body ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Bad chunked framing: Envoy answers `400` (if the response has not started) and closes.
    Malformed,
    /// The client closed the connection (or it failed) inside the body.
    Aborted,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyError::Malformed => "malformed request body framing",
            BodyError::Aborted => "downstream closed inside the request body",
        })
    }
}

impl std::error::Error for BodyError {}

/// One decoding step.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete; the bytes after it belong to the next request.
    End,
    NeedMore,
}

/// Content-Length or chunked decoding over the connection's read buffer.
#[derive(Debug)]
pub enum Decoder {
    Length(u64),
    Chunked(Chunk),
    Done,
}

#[derive(Debug, Clone, Copy)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Decoder {
    pub fn length(n: u64) -> Decoder {
        if n == 0 {
            Decoder::Done
        } else {
            Decoder::Length(n)
        }
    }
    pub fn chunked() -> Decoder {
        Decoder::Chunked(Chunk::Size)
    }
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// Take the next piece of the body from the front of `buf`. `max_trailer_bytes` bounds the
    /// trailer section; `keep_trailers` delivers them (else they are read and dropped).
    pub fn decode(&mut self, buf: &mut BytesMut, max_trailer_bytes: usize, keep_trailers: bool) -> Result<Decoded, BodyError> {
        loop {
            match self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Decoder::Done;
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                Decoder::Chunked(Chunk::Size) => {
                    let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
                        return if buf.len() > MAX_CHUNK_LINE { Err(BodyError::Malformed) } else { Ok(Decoded::NeedMore) };
                    };
                    if nl == 0 || buf[nl - 1] != b'\r' || nl > MAX_CHUNK_LINE {
                        return Err(BodyError::Malformed);
                    }
                    let size = chunk_size(&buf[..nl - 1]).ok_or(BodyError::Malformed)?;
                    buf.advance(nl + 1);
                    *self = Decoder::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                }
                Decoder::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        *self = Decoder::Chunked(Chunk::DataEnd);
                    }
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    // Strict CRLF after chunk data (Envoy also takes a bare LF; a framing
                    // leniency sluice does not copy).
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(BodyError::Malformed);
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::Malformed);
                    }
                    buf.advance(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] == b"\r\n" {
                        buf.advance(2);
                        *self = Decoder::Done;
                        return Ok(Decoded::End);
                    }
                    let Some(end) = find(buf, b"\r\n\r\n") else {
                        return if buf.len() > max_trailer_bytes { Err(BodyError::Malformed) } else { Ok(Decoded::NeedMore) };
                    };
                    if end + 4 > max_trailer_bytes {
                        return Err(BodyError::Malformed);
                    }
                    let section = buf.split_to(end + 4).freeze();
                    *self = Decoder::Done;
                    let trailers = parse_trailers(&section)?;
                    if keep_trailers && !trailers.is_empty() {
                        return Ok(Decoded::Trailers(trailers));
                    }
                    return Ok(Decoded::End);
                }
            }
        }
    }
}

/// `1*HEXDIG *(SP / HTAB) [ ";" extension ]`, the value within `u64`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return None;
    }
    let mut n: u64 = 0;
    for b in &line[..digits] {
        let d = (*b as char).to_digit(16)? as u64;
        n = n.checked_mul(16)?.checked_add(d)?;
    }
    let rest = &line[digits..];
    let ws = rest.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    let rest = &rest[ws..];
    match rest.first() {
        None | Some(b';') => Some(n),
        Some(_) => None,
    }
}

fn parse_trailers(section: &Bytes) -> Result<HeaderMap, BodyError> {
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let (_, parsed) = match httparse::parse_headers(section, &mut raw) {
        Ok(httparse::Status::Complete(x)) => x,
        _ => return Err(BodyError::Malformed),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| BodyError::Malformed)?;
        let value = http::HeaderValue::from_maybe_shared(section.slice_ref(h.value)).map_err(|_| BodyError::Malformed)?;
        map.append(name, value);
    }
    Ok(map)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What the connection and the body's consumer share.
#[derive(Default)]
struct State {
    queue: VecDeque<Frame<Bytes>>,
    queued: usize,
    /// The decoder reached the end of the body (the queue may still hold frames).
    end: bool,
    error: Option<BodyError>,
    /// The error was handed to the consumer; further polls end the body.
    failed: bool,
    reader: Option<Waker>,
    feeder: Option<Waker>,
    reader_gone: bool,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The body of an HTTP/1 request, as the connection manager and the upstream see it.
pub struct RequestBody {
    shared: Arc<Shared>,
    /// Bytes still to come for a Content-Length body (`None`: chunked).
    remaining: Option<u64>,
    /// The end was delivered (a chunked body reports its end only once it was polled, so an
    /// empty chunked body is still forwarded as chunked, as Envoy does).
    seen_end: bool,
}

/// The connection's side of a [`RequestBody`].
pub struct Feeder {
    shared: Arc<Shared>,
    decoder: Decoder,
}

/// A body for a request framed as `Length(n)` (n > 0) or chunked.
pub fn channel(decoder: Decoder, length: Option<u64>) -> (RequestBody, Feeder) {
    let shared = Arc::new(Shared { state: Mutex::new(State::default()) });
    (
        RequestBody { shared: shared.clone(), remaining: length, seen_end: false },
        Feeder { shared, decoder },
    )
}

impl Feeder {
    /// The whole body was decoded.
    pub fn is_done(&self) -> bool {
        self.decoder.is_done()
    }

    /// Decode what `buf` holds into the body; `Ready(Ok(true))`: the body is complete;
    /// `Ready(Ok(false))`: `buf` needs more bytes; `Pending`: the consumer's queue is full (the
    /// connection is woken when it drains).
    pub fn feed(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut, max_trailer_bytes: usize, keep_trailers: bool) -> Poll<Result<bool, BodyError>> {
        let mut wake = None;
        let result = loop {
            if self.decoder.is_done() {
                let mut st = self.shared.lock();
                st.end = true;
                if let Some(w) = st.reader.take() {
                    wake = Some(w);
                }
                break Poll::Ready(Ok(true));
            }
            {
                let mut st = self.shared.lock();
                if !st.reader_gone && st.queued >= HIGH_WATER {
                    st.feeder = Some(cx.waker().clone());
                    if let Some(w) = st.reader.take() {
                        wake = Some(w);
                    }
                    break Poll::Pending;
                }
            }
            match self.decoder.decode(buf, max_trailer_bytes, keep_trailers) {
                Ok(Decoded::Data(b)) => self.push(Frame::data(b), &mut wake),
                Ok(Decoded::Trailers(t)) => self.push(Frame::trailers(t), &mut wake),
                Ok(Decoded::End) => {}
                Ok(Decoded::NeedMore) => break Poll::Ready(Ok(false)),
                Err(e) => {
                    self.fail(e);
                    return Poll::Ready(Err(e));
                }
            }
        };
        if let Some(w) = wake {
            w.wake();
        }
        result
    }

    fn push(&self, frame: Frame<Bytes>, wake: &mut Option<Waker>) {
        let mut st = self.shared.lock();
        if st.reader_gone {
            return;
        }
        if let Some(d) = frame.data_ref() {
            st.queued += d.len();
        }
        st.queue.push_back(frame);
        if let Some(w) = st.reader.take() {
            *wake = Some(w);
        }
    }

    /// End the body with an error (bad framing, or the client went away).
    pub fn fail(&mut self, e: BodyError) {
        self.decoder = Decoder::Done;
        let w = {
            let mut st = self.shared.lock();
            st.error = Some(e);
            st.reader.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        // The connection went away before the body ended: the consumer sees an error.
        if !self.decoder.is_done() {
            self.fail(BodyError::Aborted);
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let mut st = this.shared.lock();
        if let Some(frame) = st.queue.pop_front() {
            if let Some(d) = frame.data_ref() {
                st.queued -= d.len();
                if let Some(r) = &mut this.remaining {
                    *r = r.saturating_sub(d.len() as u64);
                }
            }
            let feeder = if st.queued < HIGH_WATER / 2 { st.feeder.take() } else { None };
            drop(st);
            if let Some(w) = feeder {
                w.wake();
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        if st.failed {
            return Poll::Ready(None);
        }
        if let Some(e) = st.error.take() {
            st.failed = true;
            return Poll::Ready(Some(Err(e)));
        }
        if st.end {
            this.seen_end = true;
            return Poll::Ready(None);
        }
        if !st.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.reader = Some(cx.waker().clone());
        }
        // The connection may be parked on a full queue that a previous poll drained.
        let feeder = st.feeder.take();
        drop(st);
        if let Some(w) = feeder {
            w.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        // A Content-Length body ends with its last byte.
        self.seen_end || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let w = {
            let mut st = self.shared.lock();
            st.reader_gone = true;
            st.queue.clear();
            st.queued = 0;
            st.feeder.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody").field("remaining", &self.remaining).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(mut d: Decoder, input: &[u8], keep: bool) -> Result<(Vec<u8>, Option<HeaderMap>, usize), BodyError> {
        let mut buf = BytesMut::from(input);
        let mut body = Vec::new();
        let mut trailers = None;
        for _ in 0..10_000 {
            match d.decode(&mut buf, 1024, keep)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((body, trailers, buf.len())),
                Decoded::NeedMore => return Err(BodyError::Aborted),
            }
        }
        unreachable!("bounded")
    }

    #[test]
    fn content_length_stops_at_its_end() {
        let (body, _, left) = decode_all(Decoder::length(3), b"abcGET /", false).unwrap();
        assert_eq!(body, b"abc");
        assert_eq!(left, 5, "the next request stays in the buffer");
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let input = b"3;foo=bar\r\nabc\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (body, trailers, left) = decode_all(Decoder::chunked(), input, true).unwrap();
        assert_eq!(body, b"abc0123456789");
        assert_eq!(trailers.unwrap()["x-t"], "1");
        assert_eq!(left, 4);
        let (_, trailers, _) = decode_all(Decoder::chunked(), input, false).unwrap();
        assert!(trailers.is_none(), "trailers are dropped unless enable_trailers");
    }

    #[test]
    fn chunked_framing_errors() {
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b" 3\r\nabc\r\n0\r\n\r\n",
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b"3\nabc\n0\n\n",
            b"3\r\nabcX0\r\n\r\n",
            b"3\r\nabc\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
        ] {
            assert_eq!(decode_all(Decoder::chunked(), bad, false).unwrap_err(), BodyError::Malformed, "{:?}", String::from_utf8_lossy(bad));
        }
        // Accepted as Envoy does: size followed by whitespace, long zero-padded sizes.
        assert!(decode_all(Decoder::chunked(), b"3 \t\r\nabc\r\n0\r\n\r\n", false).is_ok());
        assert!(decode_all(Decoder::chunked(), b"00000000000000003\r\nabc\r\n0\r\n\r\n", false).is_ok());
    }

    #[test]
    fn partial_input_waits() {
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::from(&b"5\r\nab"[..]);
        assert_eq!(d.decode(&mut buf, 1024, false).unwrap(), Decoded::Data(Bytes::from_static(b"ab")));
        assert_eq!(d.decode(&mut buf, 1024, false).unwrap(), Decoded::NeedMore);
        buf.extend_from_slice(b"cde\r");
        assert_eq!(d.decode(&mut buf, 1024, false).unwrap(), Decoded::Data(Bytes::from_static(b"cde")));
        assert_eq!(d.decode(&mut buf, 1024, false).unwrap(), Decoded::NeedMore);
        buf.extend_from_slice(b"\n0\r\n\r\n");
        assert_eq!(d.decode(&mut buf, 1024, false).unwrap(), Decoded::End);
    }
}
