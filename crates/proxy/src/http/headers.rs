//! Request/response header rules of the connection manager (what Envoy adds, strips, keeps).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers never forwarded (plus every header named in `Connection:`).
const HOP_BY_HOP: [&str; 5] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"];

/// `x-envoy-*` control headers a client may not set (the request is external): Envoy 1.40
/// strips exactly these, and keeps other `x-envoy-*` names.
const ENVOY_CONTROL: [&str; 19] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-internal",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-upstream-stream-duration-ms",
    "x-forwarded-client-cert",
    "x-envoy-decorator-operation-override",
    "x-envoy-is-timeout-retry-override",
];

/// Remove every header for which `remove` is true, keeping the others in their order
/// (`HeaderMap::remove` moves the last entry into the hole; Envoy keeps arrival order).
pub fn remove_ordered(headers: &mut HeaderMap, mut remove: impl FnMut(&HeaderName) -> bool) {
    if !headers.keys().any(&mut remove) {
        return;
    }
    let old = std::mem::take(headers);
    headers.reserve(old.len());
    let mut current: Option<HeaderName> = None;
    let mut keep = true;
    for (name, value) in old {
        if let Some(n) = name {
            keep = !remove(&n);
            current = Some(n);
        }
        if keep {
            if let Some(n) = &current {
                headers.append(n.clone(), value);
            }
        }
    }
}

/// Remove hop-by-hop headers, headers listed in `Connection:`, `te` other than `trailers`, and
/// `expect: 100-continue` (Envoy answers the expectation itself). An upgrade request keeps its
/// `Connection` and `Upgrade` headers where they are (`keep_upgrade`). `Host` is never removed,
/// whatever `Connection` names (the HTTP/1 codec refuses such a request, as Envoy does).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s != "close" && s != "keep-alive" && s != "te" && s != "host")
        .filter(|s| !(keep_upgrade && s == "upgrade"))
        .collect();
    let drop_te = headers.get(http::header::TE).is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let drop_expect = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    remove_ordered(headers, |n| {
        let n = n.as_str();
        (HOP_BY_HOP.contains(&n) && !(keep_upgrade && (n == "connection" || n == "upgrade")))
            || listed.iter().any(|l| l == n)
            || (drop_te && n == "te")
            || (drop_expect && n == "expect")
    });
}

/// Strip the control headers an external client may not set.
pub fn strip_envoy_control(headers: &mut HeaderMap) {
    remove_ordered(headers, |n| {
        let n = n.as_str();
        n.starts_with("x-") && ENVOY_CONTROL.contains(&n)
    });
}

/// Remove hop-by-hop headers from an upstream response before it goes downstream; a `101`
/// keeps its `Connection` and `Upgrade` (`switching`).
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap, switching: bool) {
    remove_ordered(headers, |n| {
        let n = n.as_str();
        HOP_BY_HOP.contains(&n) && !(switching && (n == "connection" || n == "upgrade"))
    });
}

/// Envoy's upstream HTTP/1 framing: a request that has a body but no `content-length` (chunked
/// from the client, HTTP/2 without a length, or a length named in `Connection`) goes upstream
/// chunked, `transfer-encoding: chunked` written after every other header. An empty chunked
/// body stays chunked (`0\r\n\r\n`), as with Envoy.
pub fn frame_request_body<B: http_body::Body>(req: &mut http::Request<B>) {
    let h = req.headers();
    if !req.body().is_end_stream() && !h.contains_key(http::header::CONTENT_LENGTH) && !h.contains_key(http::header::TRANSFER_ENCODING) {
        req.headers_mut().insert(http::header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
}

/// A new UUIDv4 request id.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// Size of the header block as Envoy counts it against `max_request_headers_kb`.
pub fn header_bytes(headers: &HeaderMap, method: &str, path: &str) -> usize {
    let mut n = method.len() + path.len();
    for (k, v) in headers {
        n += k.as_str().len() + v.len();
    }
    n
}

/// `normalize_path` (RFC 3986 dot-segment removal) and `merge_slashes`.
pub fn normalize(path: &str, normalize: bool, merge_slashes: bool) -> String {
    let mut p = path.to_string();
    if merge_slashes {
        let mut out = String::with_capacity(p.len());
        let mut prev_slash = false;
        for c in p.chars() {
            if c == '/' && prev_slash {
                continue;
            }
            prev_slash = c == '/';
            out.push(c);
        }
        p = out;
    }
    if normalize {
        let mut segs: Vec<&str> = Vec::new();
        let trailing = p.ends_with('/') || p.ends_with("/.") || p.ends_with("/..");
        for seg in p.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    segs.pop();
                }
                s => segs.push(s),
            }
        }
        let mut out = String::from("/");
        out.push_str(&segs.join("/"));
        if trailing && out.len() > 1 {
            out.push('/');
        }
        p = out;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("expect", HeaderValue::from_static("100-continue"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert("x-last", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "x-keep", "x-last"], "order is kept");
    }

    #[test]
    fn upgrades_keep_connection_and_upgrade_and_host_is_never_stripped() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a"));
        h.insert("connection", HeaderValue::from_static("Upgrade, host, x-hop"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut h, true);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "connection", "upgrade", "x-keep"]);
        strip_hop_by_hop(&mut plain, false);
        let names: Vec<&str> = plain.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "x-keep"]);
    }

    #[test]
    fn strips_only_control_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-envoy-retry-on", HeaderValue::from_static("5xx"));
        h.insert("x-envoy-foo", HeaderValue::from_static("1"));
        h.insert("x-envoy-original-path", HeaderValue::from_static("/a"));
        strip_envoy_control(&mut h);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-envoy-foo", "x-envoy-original-path"]);
    }

    #[test]
    fn path_normalization() {
        assert_eq!(normalize("//service/./1/../2", true, true), "/service/2");
        assert_eq!(normalize("/service/1/../2", false, false), "/service/1/../2");
        assert_eq!(normalize("/a//b", false, true), "/a/b");
        assert_eq!(normalize("/a/b/", true, false), "/a/b/");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
    }
}
