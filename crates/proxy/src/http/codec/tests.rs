//! The codec's rules, each with the exact bytes Envoy 1.40 was seen to produce (dates masked).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::conn::{serve, CodecStats, Config, ContinueSent, Service};
use super::parse::{parse_request, CodecError, Framing, Head, ParseConfig, Reject, Underscores};
use crate::body::Body;

// ---------------------------------------------------------------------------------------------
// The head parser.

fn parse(raw: &str) -> Result<Head, CodecError> {
    parse_with(raw, &ParseConfig::default())
}

fn parse_with(raw: &str, cfg: &ParseConfig) -> Result<Head, CodecError> {
    match parse_request(raw.as_bytes(), cfg) {
        Ok(Some((h, _))) => Ok(h),
        Ok(None) => panic!("incomplete: {raw:?}"),
        Err(e) => Err(e),
    }
}

fn reject(raw: &str) -> Reject {
    parse(raw).map(|_| ()).expect_err(raw).reject
}

fn names(h: &Head) -> Vec<String> {
    h.request.headers().iter().map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes()))).collect()
}

#[test]
fn a_plain_request() {
    let h = parse("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-B: 2\r\nx-a: 3\r\nX-B: 4\r\n\r\n").unwrap();
    assert_eq!(h.request.method(), Method::GET);
    assert_eq!(h.request.uri(), "/a?b=1");
    assert_eq!(h.request.version(), Version::HTTP_11);
    assert_eq!(names(&h), ["host: x", "x-b: 2", "x-b: 4", "x-a: 3"]);
    assert_eq!(h.framing, Framing::None);
    assert!(h.keep_alive && !h.expect_continue && !h.tunnel);
    let (_, n) = parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nNEXT", &ParseConfig::default()).unwrap().unwrap();
    assert_eq!(n, 27, "the head's length; the rest stays for the body or the next request");
}

#[test]
fn partial_heads_wait_and_oversized_ones_are_431() {
    let cfg = ParseConfig::default();
    assert!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n", &cfg).unwrap().is_none());
    assert!(parse_request(b"GET / HTTP/1.1\r\nX-Fold: a\r\n", &cfg).unwrap().is_none());
    let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(61 * 1024));
    assert_eq!(parse_request(big.as_bytes(), &cfg).unwrap_err().reject, Reject::TooLarge);
}

#[test]
fn obsolete_line_folding_is_unfolded() {
    // Envoy removes the line break and keeps the whitespace.
    let h = parse("GET / HTTP/1.1\r\nHost: x\r\nX-F: a\r\n  b\r\n\t c\r\nX-G: d\r\n\r\n").unwrap();
    assert_eq!(names(&h), ["host: x", "x-f: a  b\t c", "x-g: d"]);
    // A fold before any field is an error.
    assert_eq!(reject("GET / HTTP/1.1\r\n X: a\r\nHost: x\r\n\r\n"), Reject::BadRequest);
}

#[test]
fn request_line_leniencies_envoy_accepts() {
    for raw in [
        "GET  /a HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET\t/a HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /a HTTP/1.1 \r\nHost: x\r\n\r\n",
        "GET /a HTTP/1.1\nHost: x\n\n",
        "GET /a HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
        "\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let h = parse(raw).unwrap_or_else(|e| panic!("{raw:?}: {e:?}"));
        assert_eq!(h.request.uri(), "/a", "{raw:?}");
    }
}

#[test]
fn versions() {
    for raw in ["GET / HTTP/1.2\r\nHost: x\r\n\r\n", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", "GET /\r\nHost: x\r\n\r\n", "GET / HTTP/0.9\r\n\r\n"] {
        assert_eq!(reject(raw), Reject::UpgradeRequired, "{raw:?}");
    }
    for raw in ["GET / HTTP/1.10\r\nHost: x\r\n\r\n", "GET / http/1.1\r\nHost: x\r\n\r\n", "GET / HTTP/1\r\nHost: x\r\n\r\n"] {
        assert_eq!(reject(raw), Reject::BadRequest, "{raw:?}");
    }
    // HTTP/1.0: 426 unless accept_http_10; replies after a complete head say HTTP/1.0.
    assert_eq!(parse("GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap_err(), CodecError { reject: Reject::UpgradeRequired, http10: false });
    let cfg = ParseConfig { accept_http_10: true, ..Default::default() };
    let h = parse_with("GET / HTTP/1.0\r\nHost: x\r\n\r\n", &cfg).unwrap();
    assert_eq!(h.request.version(), Version::HTTP_10);
    assert!(!h.keep_alive);
    assert!(parse_with("GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", &cfg).unwrap().keep_alive);
    assert_eq!(parse_with("GET / HTTP/1.0\r\nHost: a b\r\n\r\n", &cfg).unwrap_err(), CodecError { reject: Reject::BadRequest, http10: true });
    // An error inside the header block is found before the version is known: HTTP/1.1.
    assert_eq!(parse_with("GET / HTTP/1.0\r\nHost: a\r\nX Y: 1\r\n\r\n", &cfg).unwrap_err(), CodecError { reject: Reject::BadRequest, http10: false });
}

#[test]
fn methods() {
    assert_eq!(reject("FOO / HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequest);
    assert_eq!(reject("get / HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequest);
    assert_eq!(parse("M-SEARCH / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().request.method().as_str(), "M-SEARCH");
}

#[test]
fn request_targets() {
    assert_eq!(reject("GET a/b HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequest);
    assert_eq!(reject("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequest);
    assert_eq!(parse("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().request.uri(), "*");
    let h = parse("GET http://abs.test/p?q HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(h.request.uri().authority().unwrap(), "abs.test");
    assert_eq!(parse("GET https://x HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().request.uri().path(), "/");
    assert_eq!(parse("GET http://u:p@x:81/e HTTP/1.1\r\nHost: y\r\n\r\n").unwrap().request.uri(), "http://x:81/e", "userinfo dropped");
    assert_eq!(reject("GET ftp://x/y HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequest);
    assert_eq!(reject("GET http://a{b/c HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequest);
    let no_abs = ParseConfig { allow_absolute_url: false, ..Default::default() };
    assert_eq!(parse_with("GET http://a/ HTTP/1.1\r\nHost: x\r\n\r\n", &no_abs).unwrap_err().reject, Reject::BadRequest);
    // Envoy's connection manager refuses a fragment, with an empty body.
    assert_eq!(reject("GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequestNoBody);
    assert_eq!(reject("GET /a?b#c HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequestNoBody);
    // Bytes Envoy refuses in a path.
    assert_eq!(parse_request(b"GET /a\x80b HTTP/1.1\r\nHost: x\r\n\r\n", &ParseConfig::default()).unwrap_err().reject, Reject::BadRequest);
    assert_eq!(parse_request(b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n", &ParseConfig::default()).unwrap_err().reject, Reject::BadRequest);
    // Characters Envoy forwards raw but `http::Uri` cannot carry: refused (documented).
    assert_eq!(reject("GET /a<b HTTP/1.1\r\nHost: x\r\n\r\n"), Reject::BadRequest);
    assert_eq!(parse("GET /a\"{}|^\\ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap().request.uri().path(), "/a\"{}|^\\");
}

#[test]
fn connect() {
    let h = parse("CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n").unwrap();
    assert!(h.tunnel);
    assert_eq!(h.request.uri().authority().unwrap(), "a.test:443");
    assert_eq!(reject("CONNECT a.test HTTP/1.1\r\nHost: a.test\r\n\r\n"), Reject::BadRequest);
    assert_eq!(reject("CONNECT /x HTTP/1.1\r\nHost: a:1\r\n\r\n"), Reject::BadRequest);
    assert_eq!(reject("CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 3\r\n\r\nabc"), Reject::BadRequest);
    assert!(parse("CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\nContent-Length: 0\r\n\r\n").is_ok());
}

#[test]
fn host_values() {
    for ok in ["a", "", "a@b", "a%b", "a:b:c", "[::1]:80", "a:99999", "a,b", "a_b", "*", "a;b", "a'b", "a(b)", "a!b$&+=~[]"] {
        assert!(parse(&format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n")).is_ok(), "{ok:?}");
    }
    for bad in ["a b", "a/b", "a#b", "a<b", "a>b", "a?b", "a\\b", "a\"b", "a{b", "a}b", "a\tb", "a^b", "a|b", "a`b"] {
        assert_eq!(reject(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")), Reject::BadRequest, "{bad:?}");
    }
    assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: a\x80b\r\n\r\n", &ParseConfig::default()).unwrap_err().reject, Reject::BadRequest);
    // Every value of a repeated Host is checked.
    assert_eq!(reject("GET / HTTP/1.1\r\nHost: a\r\nHost: b/c\r\n\r\n"), Reject::BadRequest);
}

#[test]
fn connection_naming_host_is_refused() {
    // Envoy strips what `Connection` names, finds no Host, answers 400 without a body.
    assert_eq!(reject("GET / HTTP/1.1\r\nHost: a\r\nConnection: x-a, Host\r\n\r\n"), Reject::BadRequestNoBody);
}

#[test]
fn header_bytes() {
    for raw in [&b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"[..], b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", b"GET / HTTP/1.1\r\nX: \x00\r\n\r\n", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"] {
        assert_eq!(parse_request(raw, &ParseConfig::default()).unwrap_err().reject, Reject::BadRequest, "{raw:?}");
    }
    let h = parse_request(b"GET / HTTP/1.1\r\nX: a\x80b\tc  \r\n\r\n", &ParseConfig::default()).unwrap().unwrap().0;
    assert_eq!(h.request.headers()["x"].as_bytes(), b"a\x80b\tc");
    for name in ["X Foo", "X@Foo", "X(Foo", "X/Foo", "", "X-Sp "] {
        assert_eq!(reject(&format!("GET / HTTP/1.1\r\n{name}: v\r\n\r\n")), Reject::BadRequest, "{name:?}");
    }
}

#[test]
fn content_length_rules() {
    for bad in ["3\r\nContent-Length: 3", "3, 3", "+3", "-3", "", "3 3", "18446744073709551616"] {
        assert_eq!(reject(&format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {bad}\r\n\r\nabc")), Reject::BadRequest, "{bad:?}");
    }
    assert_eq!(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0003\r\n\r\n").unwrap().framing, Framing::Length(3));
    assert_eq!(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").unwrap().framing, Framing::None);
    assert_eq!(parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n").unwrap().framing, Framing::Length(u64::MAX));
}

#[test]
fn transfer_encoding_rules() {
    for bad in ["identity", "gzip", "gzip, chunked", "chunked, chunked", "", "chunked\r\nTransfer-Encoding: chunked"] {
        assert_eq!(reject(&format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {bad}\r\n\r\n")), Reject::NotImplemented, "{bad:?}");
    }
    assert_eq!(parse("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED \r\n\r\n").unwrap().framing, Framing::Chunked);
    let te_cl = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(reject(te_cl), Reject::BadRequest);
    let cfg = ParseConfig { allow_chunked_length: true, ..Default::default() };
    let h = parse_with(te_cl, &cfg).unwrap();
    assert_eq!(h.framing, Framing::Chunked);
    assert_eq!(names(&h), ["host: x", "transfer-encoding: chunked"], "the length is dropped");
    // HTTP/1.0 may send a chunked body too.
    let cfg = ParseConfig { accept_http_10: true, ..Default::default() };
    assert_eq!(parse_with("POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", &cfg).unwrap().framing, Framing::Chunked);
}

#[test]
fn underscores() {
    let raw = "GET / HTTP/1.1\r\nHost: x\r\nX_A: 1\r\nX-B: 2\r\n\r\n";
    assert_eq!(names(&parse(raw).unwrap()), ["host: x", "x_a: 1", "x-b: 2"]);
    let drop = ParseConfig { underscores: Underscores::Drop, ..Default::default() };
    let h = parse_with(raw, &drop).unwrap();
    assert_eq!(names(&h), ["host: x", "x-b: 2"]);
    assert_eq!(h.dropped_underscores, 1);
    let rej = ParseConfig { underscores: Underscores::Reject, ..Default::default() };
    assert_eq!(parse_with(raw, &rej).unwrap_err().reject, Reject::Underscore);
}

#[test]
fn limits() {
    // Envoy counts the raw head (request line, fields, blank line) against the limit.
    let cfg = ParseConfig { max_head_bytes: 1024, max_headers: 5, ..Default::default() };
    let head = |n: usize| format!("GET /echo HTTP/1.1\r\nHost: a\r\nA: {}\r\n\r\n", "x".repeat(n));
    assert_eq!(head(988).len(), 1024);
    assert!(parse_with(&head(988), &cfg).is_ok());
    assert_eq!(parse_with(&head(989), &cfg).unwrap_err().reject, Reject::TooLarge);
    let fields = |n: usize| format!("GET / HTTP/1.1\r\n{}\r\n", (0..n).map(|i| format!("X{i}: 1\r\n")).collect::<String>());
    assert!(parse_with(&fields(5), &cfg).is_ok());
    assert_eq!(parse_with(&fields(6), &cfg).unwrap_err().reject, Reject::TooManyHeaders);
    assert!(parse(&fields(100)).is_ok());
    assert_eq!(reject(&fields(101)), Reject::TooManyHeaders);
    assert_eq!(reject(&fields(300)), Reject::TooManyHeaders);
    let many = ParseConfig { max_headers: 500, ..Default::default() };
    assert!(parse_with(&fields(300), &many).is_ok());
}

#[test]
fn connection_expect_and_upgrade() {
    assert!(!parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, CLOSE\r\n\r\n").unwrap().keep_alive);
    assert!(parse("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n\r\n").unwrap().expect_continue);
    assert!(!parse("POST / HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n").unwrap().expect_continue);
    assert!(parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap().tunnel);
    assert!(!parse("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n").unwrap().tunnel);
    assert!(!parse("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n").unwrap().tunnel);
}

// ---------------------------------------------------------------------------------------------
// The connection: exact bytes on the wire.

/// A service made of a closure.
struct FnService<F>(F);

impl<F, Fut> Service for FnService<F>
where
    F: Fn(Request<Body>) -> Fut + Sync,
    Fut: Future<Output = Response<Body>> + Send,
{
    fn call(&self, req: Request<Body>) -> impl Future<Output = Response<Body>> + Send {
        (self.0)(req)
    }
    fn codec_reply(&self, _: &super::CodecReply) {}
    fn tunnel(&self, _: bool) {}
    fn early_response(&self) {}
    fn header_timeout(&self) {}
}

fn config() -> Config {
    Config {
        parse: ParseConfig { accept_http_10: true, ..Default::default() },
        enable_trailers: false,
        idle_timeout: None,
        max_requests_per_connection: None,
        max_connection_duration: None,
        request_headers_timeout: None,
        drain_timeout: super::conn::DEFAULT_DRAIN_TIMEOUT,
        server_name: HeaderValue::from_static("envoy"),
        stats: CodecStats::default(),
    }
}

fn mask_dates(s: &str) -> String {
    let re = regex::Regex::new(r"date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT").unwrap();
    re.replace_all(s, "date: <date>").into_owned()
}

/// Answers `200` with `content-length` and the request body (read to its end), or with what the
/// path asks for.
async fn app(req: Request<Body>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let continued = req.extensions().get::<ContinueSent>().is_some();
    if path == "/early" {
        // Answers before reading the body.
        let mut r = Response::new(Body::full("early"));
        r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(5));
        return r;
    }
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    match path.as_str() {
        "/empty" => Response::new(Body::empty()),
        "/stream" => Response::new(Body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
            [Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"hello "))), Ok(http_body::Frame::data(Bytes::from_static(b"world")))],
        )))),
        "/teapot" => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::IM_A_TEAPOT;
            r
        }
        "/nocontent" => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r.headers_mut().insert("x-a", HeaderValue::from_static("1"));
            r
        }
        _ => {
            let mut r = Response::new(Body::full(body.clone()));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            if continued {
                r.headers_mut().insert("x-continued", HeaderValue::from_static("1"));
            }
            r
        }
    }
}

/// Serve one connection over an in-memory pipe; write `parts` (20 ms apart), half-close, and
/// return everything the codec wrote until it closed.
async fn wire_with(cfg: Config, parts: &[&[u8]]) -> String {
    let (mut client, server) = tokio::io::duplex(256 * 1024);
    let task = tokio::spawn(async move { serve(server, &cfg, &FnService(app)).await });
    for p in parts {
        if client.write_all(p).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.shutdown().await;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await.expect("codec closes").unwrap();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("serve ends").unwrap();
    mask_dates(&String::from_utf8_lossy(&out))
}

async fn wire(parts: &[&[u8]]) -> String {
    wire_with(config(), parts).await
}

const BAD_REQUEST: &str = "HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\ndate: <date>\r\nserver: envoy\r\nconnection: close\r\n\r\nBad Request";

#[tokio::test]
async fn codec_replies_are_envoys_bytes() {
    assert_eq!(wire(&[b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n"]).await, BAD_REQUEST);
    assert_eq!(
        wire(&[b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"]).await,
        "HTTP/1.1 426 Upgrade Required\r\ncontent-length: 16\r\ncontent-type: text/plain\r\ndate: <date>\r\nserver: envoy\r\nconnection: close\r\n\r\nUpgrade Required"
    );
    assert_eq!(
        wire(&[format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "a".repeat(70_000)).as_bytes()]).await,
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 31\r\ncontent-type: text/plain\r\ndate: <date>\r\nserver: envoy\r\nconnection: close\r\n\r\nRequest Header Fields Too Large"
    );
    assert_eq!(
        wire(&[b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n"]).await,
        "HTTP/1.1 501 Not Implemented\r\ncontent-length: 15\r\ncontent-type: text/plain\r\ndate: <date>\r\nserver: envoy\r\nconnection: close\r\n\r\nNot Implemented"
    );
    assert_eq!(
        wire(&[b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n"]).await,
        "HTTP/1.1 400 Bad Request\r\ndate: <date>\r\nserver: envoy\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(
        wire(&[b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n"]).await,
        "HTTP/1.0 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\ndate: <date>\r\nserver: envoy\r\nconnection: close\r\n\r\nBad Request"
    );
    // The connection is closed after the reply: a pipelined request is not answered.
    assert_eq!(wire(&[b"GET / HTTP/1.1\r\nHost: a b\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"]).await, BAD_REQUEST);
}

#[tokio::test]
async fn keep_alive_and_pipelining() {
    let out = wire(&[b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /teapot HTTP/1.1\r\nHost: a\r\n\r\n"]).await;
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n\
         HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nabc\
         HTTP/1.1 418 Unknown\r\ncontent-length: 0\r\n\r\n"
    );
    // A bad request after a good one: the first is answered, then the 400.
    let out = wire(&[b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a b\r\n\r\n"]).await;
    assert_eq!(out, format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n{BAD_REQUEST}"));
}

#[tokio::test]
async fn connection_close_goes_before_the_codecs_content_length() {
    assert_eq!(wire(&[b"GET /empty HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"]).await, "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
}

#[tokio::test]
async fn http10() {
    assert_eq!(wire(&[b"GET /empty HTTP/1.0\r\nHost: a\r\n\r\n"]).await, "HTTP/1.0 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(
        wire(&[b"GET /empty HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", b"GET /teapot HTTP/1.0\r\nHost: a\r\n\r\n"]).await,
        "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\nHTTP/1.0 418 Unknown\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    // No chunked encoding for HTTP/1.0: the body runs until the connection closes.
    assert_eq!(wire(&[b"GET /stream HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"]).await, "HTTP/1.0 200 OK\r\nconnection: close\r\n\r\nhello world");
}

#[tokio::test]
async fn response_framing() {
    assert_eq!(wire(&[b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n"]).await, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n");
    // HEAD: no body; without a length Envoy still says chunked.
    assert_eq!(wire(&[b"HEAD /stream HTTP/1.1\r\nHost: a\r\n\r\n"]).await, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(wire(&[b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n"]).await, "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(wire(&[b"GET /nocontent HTTP/1.1\r\nHost: a\r\n\r\n"]).await, "HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n");
}

#[tokio::test]
async fn request_bodies() {
    let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
    assert_eq!(wire(&[chunked]).await, "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nabcde");
    // Split anywhere.
    let parts: Vec<&[u8]> = chunked.chunks(7).collect();
    assert_eq!(wire(&parts).await, "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nabcde");
    // Malformed chunked framing: Envoy's 400 (the request never completes).
    assert_eq!(wire(&[b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"]).await, BAD_REQUEST);
    assert_eq!(wire(&[b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n"]).await, BAD_REQUEST);
    // The client leaves inside the body: no answer.
    assert_eq!(wire(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc"]).await, "");
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_codec() {
    let out = wire(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", b"abc"]).await;
    assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nx-continued: 1\r\n\r\nabc");
    let out = wire(&[b"GET /empty HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"]).await;
    assert_eq!(out, "HTTP/1.0 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
}

#[tokio::test]
async fn a_response_before_the_request_body_closes_the_connection() {
    let out = wire(&[b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n"]).await;
    assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly");
}

#[tokio::test]
async fn trailers_only_when_enabled() {
    // Request trailers reach the service only with enable_trailers (here: echoed as a header).
    async fn trailers_app(req: Request<Body>) -> Response<Body> {
        let c = req.into_body().collect().await.unwrap();
        let seen = c.trailers().and_then(|t| t.get("x-t")).cloned();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"ok"))),
            Ok(http_body::Frame::trailers({
                let mut t = http::HeaderMap::new();
                t.insert("x-r", HeaderValue::from_static("2"));
                t
            })),
        ]));
        let mut r = Response::new(Body::boxed(body));
        if let Some(v) = seen {
            r.headers_mut().insert("x-seen", v);
        }
        r
    }
    // (`Connection: close`: the client reads to the end; it must not half-close first, which
    // abandons the request as in Envoy.)
    let req: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n";
    for (enabled, want) in [
        (false, "HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
        (true, "HTTP/1.1 200 OK\r\nx-seen: 1\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-r: 2\r\n\r\n"),
    ] {
        let cfg = Config { enable_trailers: enabled, ..config() };
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { serve(server, &cfg, &FnService(trailers_app)).await });
        client.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await.unwrap().unwrap();
        task.await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out), want, "enable_trailers: {enabled}");
    }
}

#[tokio::test]
async fn max_requests_per_connection() {
    let cfg = Config { max_requests_per_connection: Some(2), ..config() };
    let out = wire_with(cfg, &[b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\nGET /empty HTTP/1.1\r\nHost: a\r\n\r\nGET /empty HTTP/1.1\r\nHost: a\r\n\r\n"]).await;
    assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_closed() {
    let cfg = Config { idle_timeout: Some(Duration::from_secs(3600)), ..config() };
    let (mut client, server) = tokio::io::duplex(1024);
    let task = tokio::spawn(async move { serve(server, &cfg, &FnService(app)).await });
    client.write_all(b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    tokio::time::sleep(Duration::from_secs(3601)).await;
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("closed after the idle timeout").unwrap();
}

/// A service whose requests never get an answer; counts the requests it dropped unanswered.
struct Hang(std::sync::Arc<std::sync::atomic::AtomicUsize>);

struct DropCount(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Service for Hang {
    fn call(&self, _: Request<Body>) -> impl Future<Output = Response<Body>> + Send {
        let guard = DropCount(self.0.clone());
        async move {
            let _guard = guard;
            std::future::pending().await
        }
    }
    fn codec_reply(&self, _: &super::CodecReply) {}
    fn tunnel(&self, _: bool) {}
    fn early_response(&self) {}
    fn header_timeout(&self) {}
}

#[tokio::test(start_paused = true)]
async fn a_client_that_closes_while_waiting_ends_its_request_at_once() {
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc = Hang(dropped.clone());
    let cfg = config();
    let (mut client, server) = tokio::io::duplex(1024);
    let task = tokio::spawn(async move { serve(server, &cfg, &svc).await });
    client.write_all(b"GET /wait HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 0, "still waiting for the upstream");
    client.shutdown().await.unwrap();
    let end = tokio::time::timeout(Duration::from_millis(10), task).await.expect("ended at once").unwrap();
    assert_eq!(end, super::ConnEnd::Remote { active_rq: true });
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 1, "the request was abandoned");
}

#[tokio::test(start_paused = true)]
async fn pipelined_bytes_that_arrive_while_waiting_are_kept() {
    let cfg = config();
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let svc = FnService(|req: Request<Body>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        app(req).await
    });
    let task = tokio::spawn(async move { serve(server, &cfg, &svc).await });
    client.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.write_all(b"GET /empty HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    task.await.unwrap();
    assert_eq!(
        mask_dates(&String::from_utf8_lossy(&out)),
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
}

#[tokio::test(start_paused = true)]
async fn a_head_that_comes_too_slowly_gets_envoys_408() {
    let cfg = Config { request_headers_timeout: Some(Duration::from_secs(1)), idle_timeout: Some(Duration::from_secs(3600)), ..config() };
    let (mut client, server) = tokio::io::duplex(1024);
    let task = tokio::spawn(async move { serve(server, &cfg, &FnService(app)).await });
    // An idle connection is not a slow head.
    tokio::time::sleep(Duration::from_secs(30)).await;
    client.write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    assert_eq!(
        mask_dates(&String::from_utf8_lossy(&out)),
        "HTTP/1.1 408 Request Timeout\r\ncontent-length: 22\r\ncontent-type: text/plain\r\ndate: <date>\r\nserver: envoy\r\nconnection: close\r\n\r\nrequest header timeout"
    );
    // The client never closed: the delayed close ran out.
    assert_eq!(task.await.unwrap(), super::ConnEnd::LocalDelayed { delayed_close_timeout: true });
}

#[tokio::test(start_paused = true)]
async fn max_connection_duration_drains_the_connection() {
    let cfg = Config { max_connection_duration: Some(Duration::from_secs(10)), drain_timeout: Duration::from_secs(5), ..config() };
    // A request after the duration is answered with `connection: close`.
    let (mut client, server) = tokio::io::duplex(4096);
    let c2 = Config { max_connection_duration: Some(Duration::from_secs(10)), drain_timeout: Duration::from_secs(5), ..config() };
    let task = tokio::spawn(async move { serve(server, &c2, &FnService(app)).await });
    client.write_all(b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    client.write_all(b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    assert_eq!(task.await.unwrap(), super::ConnEnd::MaxDuration);

    // An idle connection closes when the drain time after the duration is over.
    let (mut client, server) = tokio::io::duplex(4096);
    let t0 = tokio::time::Instant::now();
    let task = tokio::spawn(async move { serve(server, &cfg, &FnService(app)).await });
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    assert!(out.is_empty());
    assert_eq!(t0.elapsed(), Duration::from_secs(15));
    assert_eq!(task.await.unwrap(), super::ConnEnd::MaxDuration);
}
