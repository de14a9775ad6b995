//! The one body type that flows through the proxy, downstream and upstream: nothing, bytes in
//! memory, hyper's bodies (HTTP/2 downstream, upstream responses), the HTTP/1 codec's request
//! body, or any other body (boxed).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: nothing, bytes in memory, a streaming body from a connection, or
/// any other body (boxed).
pub struct Body {
    kind: Kind,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    /// A request body read by sluice's HTTP/1 codec.
    H1(crate::http::codec::body::RequestBody),
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    pub fn empty() -> Self {
        Body { kind: Kind::Empty }
    }
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            Self::empty()
        } else {
            Body { kind: Kind::Full(Some(bytes)) }
        }
    }
    pub fn incoming(body: Incoming) -> Self {
        Body { kind: Kind::Incoming(body) }
    }
    pub fn h1(body: crate::http::codec::body::RequestBody) -> Self {
        Body { kind: Kind::H1(body) }
    }
    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Body { kind: Kind::Boxed(body.map_err(Into::into).boxed_unsync()) }
    }
}

impl Body {
    /// The bytes of an in-memory body (`None` for streaming bodies).
    pub fn full_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Empty => None,
            Kind::Full(b) => b.as_ref(),
            _ => None,
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full(_) => "full",
            Kind::Incoming(_) => "incoming",
            Kind::H1(_) => "h1",
            Kind::Boxed(_) => "boxed",
        };
        f.debug_struct("Body").field("kind", &kind).finish()
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::full(b)
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::full(s)
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::full(Bytes::from_static(s.as_bytes()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Kind::H1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Incoming(b) => b.is_end_stream(),
            Kind::H1(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Incoming(b) => b.size_hint(),
            Kind::H1(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}
