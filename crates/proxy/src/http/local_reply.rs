//! Envoy-generated responses ("local replies"), byte-compatible with Envoy 1.40: header order
//! `content-length, content-type, date, server` when there is a body, `date, server,
//! content-length: 0` when there is none; `connection: close` for codec-level errors.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, DATE, SERVER};
use http::{Response, StatusCode};

use crate::body::Body;

/// The IMF-fixdate of now, cached per second and per thread.
pub fn http_date() -> HeaderValue {
    thread_local! {
        static CACHE: RefCell<(u64, HeaderValue)> = RefCell::new((0, HeaderValue::from_static("")));
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            let v = HeaderValue::from_str(&httpdate::fmt_http_date(now)).unwrap_or(HeaderValue::from_static(""));
            *c = (secs, v);
        }
        c.1.clone()
    })
}

/// A local reply under construction.
pub struct LocalReply {
    pub status: StatusCode,
    pub body: Option<Bytes>,
    pub close: bool,
    /// Headers that go first (e.g. `location`), then the route's response headers.
    pub leading: Vec<(HeaderName, HeaderValue)>,
}

impl LocalReply {
    pub fn new(status: u16) -> Self {
        LocalReply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body: None,
            close: false,
            leading: Vec::new(),
        }
    }
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        let b: Bytes = body.into();
        self.body = (!b.is_empty()).then_some(b);
        self
    }
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.leading.push((name, value));
        self
    }

    /// Build the response; `server` is the HCM's server name.
    pub fn build(self, server: &HeaderValue) -> Response<Body> {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        for (k, v) in self.leading {
            h.append(k, v);
        }
        match self.body {
            Some(body) => {
                h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                h.insert(DATE, http_date());
                h.insert(SERVER, server.clone());
                if self.close {
                    h.insert(CONNECTION, HeaderValue::from_static("close"));
                }
                *resp.body_mut() = Body::full(body);
            }
            None => {
                h.insert(DATE, http_date());
                h.insert(SERVER, server.clone());
                if self.close {
                    h.insert(CONNECTION, HeaderValue::from_static("close"));
                }
                h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
            }
        }
        resp
    }
}

/// Bodies of Envoy's upstream-failure replies.
pub const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
pub const UPSTREAM_TIMEOUT: &str = "upstream request timeout";
pub const STREAM_TIMEOUT: &str = "stream timeout";

pub fn reset_body(reason: &str) -> String {
    format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(r: &Response<Body>) -> Vec<String> {
        r.headers().keys().map(|k| k.as_str().to_string()).collect()
    }

    #[test]
    fn header_layouts_match_envoy() {
        let server = HeaderValue::from_static("envoy");
        let r = LocalReply::new(503).body(NO_HEALTHY_UPSTREAM).build(&server);
        assert_eq!(names(&r), ["content-length", "content-type", "date", "server"]);
        assert_eq!(r.headers()["content-length"], "19");
        let r = LocalReply::new(404).build(&server);
        assert_eq!(names(&r), ["date", "server", "content-length"]);
        let r = LocalReply::new(400).close().build(&server);
        assert_eq!(names(&r), ["date", "server", "connection", "content-length"]);
        let r = LocalReply::new(301)
            .header(http::header::LOCATION, HeaderValue::from_static("https://a/"))
            .build(&server);
        assert_eq!(names(&r), ["location", "date", "server", "content-length"]);
        assert_eq!(reset_body("connection timeout").len(), 91);
    }
}
