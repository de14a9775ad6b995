//! The request head: `httparse` on the common path, Envoy 1.40's rules around it.
//!
//! Parsing is two steps so header values can point into the connection's read buffer:
//! [`scan`] finds a complete head in the bytes read so far and records where each part is;
//! [`build`] turns the split-off head (`Bytes`) into an `http::Request<()>` plus what the
//! connection needs to know (body framing, keep-alive, `Expect`, upgrade), checking what Envoy's
//! codec checks. Anything Envoy answers itself comes back as a [`CodecError`].
//!
//! The common path is one `httparse` call. A head `httparse` refuses goes through a slow path
//! that applies Envoy's leniencies (obsolete line folding is unfolded; tabs and trailing
//! whitespace in the request line are accepted) and tells a bad version (`426`) from a bad
//! request (`400`).
//!
//! Where Envoy is more lenient than the RFCs in a way that can desynchronise a chain of parsers,
//! sluice keeps the strict rule (each one is listed in README's "Known differences"):
//! a bare CR inside a header value is refused (Envoy deletes it), and a request target with
//! characters `http::Uri` cannot carry (`<`, `>`, `` ` `` in the path; `"`, `<`, `>` in the
//! query) is refused instead of forwarded raw.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, Method, Request, Uri, Version};

/// Methods Envoy's HTTP/1 codec accepts; any other is `400`.
pub const KNOWN_METHODS: [&str; 34] = [
    "DELETE", "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE", "COPY", "LOCK", "MKCOL", "MOVE",
    "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY",
    "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR",
    "LINK", "UNLINK", "SOURCE",
];

/// `headers_with_underscores_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    #[default]
    Allow,
    Reject,
    Drop,
}

/// The parser's settings (from the connection manager's config).
#[derive(Debug, Clone)]
pub struct ParseConfig {
    /// `max_request_headers_kb` in bytes: the whole head (request line, header lines, blank line).
    pub max_head_bytes: usize,
    /// `max_headers_count` (Envoy's default 100).
    pub max_headers: usize,
    pub underscores: Underscores,
    pub accept_http_10: bool,
    /// `allow_chunked_length`: `Transfer-Encoding: chunked` with `Content-Length` drops the length
    /// instead of `400`.
    pub allow_chunked_length: bool,
    /// `allow_absolute_url` (default true).
    pub allow_absolute_url: bool,
}

impl Default for ParseConfig {
    fn default() -> Self {
        ParseConfig {
            max_head_bytes: 60 * 1024,
            max_headers: 100,
            underscores: Underscores::Allow,
            accept_http_10: false,
            allow_chunked_length: false,
            allow_absolute_url: true,
        }
    }
}

/// A reply the codec makes itself (the request never reaches the connection manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// `400` with the body `Bad Request` (Envoy's codec errors).
    BadRequest,
    /// `400` with no body: what Envoy's connection manager answers for a `#fragment` in the
    /// target or a `Connection` header naming `host`.
    BadRequestNoBody,
    /// `400 Bad Request`: a header name with `_` under `REJECT_REQUEST` (counted on its own).
    Underscore,
    /// `431`: the head is over `max_request_headers_kb`.
    TooLarge,
    /// `431`: the head has more than `max_headers_count` fields.
    TooManyHeaders,
    /// `426`: HTTP/1.0 without `accept_http_10`, or a version other than 1.0/1.1.
    UpgradeRequired,
    /// `501`: a `Transfer-Encoding` other than exactly `chunked`.
    NotImplemented,
    /// `408 request header timeout`: the head did not arrive within `request_headers_timeout`.
    HeaderTimeout,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest | Reject::BadRequestNoBody | Reject::Underscore => 400,
            Reject::TooLarge | Reject::TooManyHeaders => 431,
            Reject::UpgradeRequired => 426,
            Reject::NotImplemented => 501,
            Reject::HeaderTimeout => 408,
        }
    }
    /// Envoy's `%RESPONSE_CODE_DETAILS%` for the reply.
    pub fn details(self) -> &'static str {
        match self {
            Reject::BadRequest | Reject::BadRequestNoBody => "http1.codec_error",
            Reject::Underscore => "http1.unexpected_underscore",
            Reject::TooLarge => "http1.headers_too_large",
            Reject::TooManyHeaders => "http1.too_many_headers",
            Reject::UpgradeRequired => "low_version",
            Reject::NotImplemented => "http1.invalid_transfer_encoding",
            Reject::HeaderTimeout => "request_header_timeout",
        }
    }
    /// The reply body (`None`: an empty body).
    pub fn body(self) -> Option<&'static str> {
        match self {
            Reject::BadRequest | Reject::Underscore => Some("Bad Request"),
            Reject::BadRequestNoBody => None,
            Reject::TooLarge | Reject::TooManyHeaders => Some("Request Header Fields Too Large"),
            Reject::UpgradeRequired => Some("Upgrade Required"),
            Reject::NotImplemented => Some("Not Implemented"),
            Reject::HeaderTimeout => Some("request header timeout"),
        }
    }
}

/// A codec-level reply and the version of its status line: Envoy answers `HTTP/1.0` only to an
/// HTTP/1.0 request whose whole head it parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecError {
    pub reject: Reject,
    pub http10: bool,
}

impl CodecError {
    fn new(reject: Reject) -> Self {
        CodecError { reject, http10: false }
    }
}

impl From<Reject> for CodecError {
    fn from(r: Reject) -> Self {
        CodecError::new(r)
    }
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no length, or `Content-Length: 0`).
    None,
    Length(u64),
    Chunked,
}

/// Where the parts of a complete head are (offsets into the scanned bytes, or into
/// [`Scratch::normalized`] when the slow path rewrote the head).
#[derive(Debug, Default)]
pub struct Scratch {
    method: Range<usize>,
    target: Range<usize>,
    http10: bool,
    /// The version is well-formed but neither 1.0 nor 1.1 (or missing): `426`.
    bad_version: bool,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// The head rewritten by the slow path (unfolded lines, normalised request line).
    pub normalized: Option<Vec<u8>>,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// The connection stays open after this exchange (`Connection: close` / HTTP/1.0 rules).
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the codec sends `100 Continue` itself.
    pub expect_continue: bool,
    /// An upgrade (`Upgrade` + `Connection: upgrade`, not `h2c`) or a `CONNECT`: bytes after the
    /// head belong to the tunnel, not to a next request.
    pub tunnel: bool,
    /// Header fields dropped under `DROP_HEADER`.
    pub dropped_underscores: u32,
}

const STACK_HEADERS: usize = 128;

/// Look for a complete head at the start of `buf`. `Ok(Some(n))`: the head is `buf[..n]`
/// (or `scratch.normalized` when set); `Ok(None)`: more bytes are needed.
pub fn scan(buf: &[u8], cfg: &ParseConfig, scratch: &mut Scratch) -> Result<Option<usize>, CodecError> {
    scratch.normalized = None;
    scratch.bad_version = false;
    let slots = cfg.max_headers.saturating_add(1);
    let result = if slots <= STACK_HEADERS {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        fast(buf, buf, &mut headers[..slots], scratch)
    } else {
        let mut headers: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::with_capacity(slots);
        headers.resize_with(slots, MaybeUninit::uninit);
        fast(buf, buf, &mut headers, scratch)
    };
    match result {
        Ok(Some(n)) => {
            if n > cfg.max_head_bytes {
                return Err(Reject::TooLarge.into());
            }
            if scratch.headers.len() > cfg.max_headers {
                return Err(Reject::TooManyHeaders.into());
            }
            Ok(Some(n))
        }
        Ok(None) if buf.len() > cfg.max_head_bytes => Err(Reject::TooLarge.into()),
        Ok(None) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Reject::TooManyHeaders.into()),
        Err(_) => slow(buf, cfg, scratch),
    }
}

fn parser_config() -> httparse::ParserConfig {
    let mut c = httparse::ParserConfig::default();
    c.allow_multiple_spaces_in_request_line_delimiters(true);
    c
}

/// One `httparse` pass over `buf`; offsets are recorded relative to `base` (the same buffer).
fn fast<'b>(
    buf: &'b [u8],
    base: &[u8],
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
    scratch: &mut Scratch,
) -> Result<Option<usize>, httparse::Error> {
    let mut req = httparse::Request::new(&mut []);
    let n = match parser_config().parse_request_with_uninit_headers(&mut req, buf, headers)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base.as_ptr() as usize;
        start..start + s.len()
    };
    let target = req.path.unwrap_or_default().as_bytes();
    // httparse takes UTF-8 in the target; Envoy refuses any byte above 0x7e there.
    if !target.is_ascii() {
        return Err(httparse::Error::Token);
    }
    scratch.method = at(req.method.unwrap_or_default().as_bytes());
    scratch.target = at(target);
    scratch.http10 = req.version == Some(0);
    scratch.headers.clear();
    for h in req.headers.iter() {
        scratch.headers.push((at(h.name.as_bytes()), at(h.value)));
    }
    Ok(Some(n))
}

/// Envoy's leniencies for heads `httparse` refuses. Works on a copy; rare.
fn slow(buf: &[u8], cfg: &ParseConfig, scratch: &mut Scratch) -> Result<Option<usize>, CodecError> {
    let bad = || Err(Reject::BadRequest.into());
    // Leading empty lines (CRLF or LF) are skipped, as httparse does; a lone CR is an error.
    let mut start = 0;
    loop {
        match &buf[start..] {
            [b'\r', b'\n', ..] => start += 2,
            [b'\n', ..] => start += 1,
            [b'\r'] => return Ok(None),
            [b'\r', ..] => return bad(),
            _ => break,
        }
    }
    let rest = &buf[start..];
    let Some(line_end) = memchr(b'\n', rest) else {
        return if buf.len() > cfg.max_head_bytes { Err(Reject::TooLarge.into()) } else { Ok(None) };
    };
    let line = strip_cr(&rest[..line_end]);
    let mut tokens = line.split(|b| *b == b' ' || *b == b'\t').filter(|t| !t.is_empty());
    let (Some(method), Some(target)) = (tokens.next(), tokens.next()) else {
        return bad();
    };
    let version = tokens.next();
    if tokens.next().is_some() || line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return bad();
    }
    if !method.iter().all(|b| is_tchar(*b)) || !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return bad();
    }
    let (version_text, bad_version): (&[u8], bool) = match version {
        Some(b"HTTP/1.1") => (b"HTTP/1.1", false),
        Some(b"HTTP/1.0") => (b"HTTP/1.0", false),
        Some([b'H', b'T', b'T', b'P', b'/', major, b'.', minor]) if major.is_ascii_digit() && minor.is_ascii_digit() => {
            (b"HTTP/1.1", true)
        }
        // No version at all (HTTP/0.9 style): Envoy answers 426 too.
        None => (b"HTTP/1.1", true),
        Some(_) => return bad(),
    };
    // The header section: up to the first empty line.
    let headers_start = start + line_end + 1;
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut pos = headers_start;
    let end = loop {
        let Some(nl) = memchr(b'\n', &buf[pos..]) else {
            return if buf.len() > cfg.max_head_bytes { Err(Reject::TooLarge.into()) } else { Ok(None) };
        };
        let line = &buf[pos..pos + nl + 1];
        pos += nl + 1;
        if line == b"\r\n" || line == b"\n" {
            break pos;
        }
        lines.push(line);
    };
    if end > cfg.max_head_bytes {
        return Err(Reject::TooLarge.into());
    }
    // Unfold: a line starting with SP/HTAB continues the previous field (its line break is
    // removed, its whitespace kept); on the first field line it is an error.
    let mut out = Vec::with_capacity(end + 16);
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.push(b' ');
    out.extend_from_slice(version_text);
    out.extend_from_slice(b"\r\n");
    for (i, line) in lines.iter().enumerate() {
        let folded = line[0] == b' ' || line[0] == b'\t';
        if folded {
            if i == 0 {
                return bad();
            }
            // Replace the previous line's terminator (the CRLF written below).
            out.truncate(out.len() - 2);
        }
        out.extend_from_slice(strip_line_end(line));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let slots = cfg.max_headers.saturating_add(1);
    let mut headers: Vec<MaybeUninit<httparse::Header<'_>>> = Vec::with_capacity(slots);
    headers.resize_with(slots, MaybeUninit::uninit);
    match fast(&out, &out, &mut headers, scratch) {
        Ok(Some(_)) => {}
        Ok(None) => return bad(),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::TooManyHeaders.into()),
        Err(_) => return bad(),
    }
    drop(headers);
    if scratch.headers.len() > cfg.max_headers {
        return Err(Reject::TooManyHeaders.into());
    }
    scratch.bad_version = bad_version;
    scratch.normalized = Some(out);
    Ok(Some(end))
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    strip_cr(line)
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|b| *b == needle)
}

/// RFC 9110 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Characters Envoy accepts in `Host` / `:authority` (RFC 3986 authority characters:
/// unreserved, sub-delims, `:`, `@`, `%`, `[`, `]`).
pub fn is_authority_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@%[]".contains(&b)
}

/// Build the request from the head found by [`scan`]: `head` holds exactly the scanned bytes
/// (ignored when the slow path normalised them into `scratch.normalized`).
pub fn build(head: Bytes, cfg: &ParseConfig, scratch: &mut Scratch) -> Result<Head, CodecError> {
    let head = match scratch.normalized.take() {
        Some(n) => Bytes::from(n),
        None => head,
    };
    let mut err = CodecError::new(Reject::BadRequest);
    let fail = |r: Reject, http10: bool| CodecError { reject: r, http10 };
    let version = if scratch.http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    let method_bytes = &head[scratch.method.clone()];
    if !KNOWN_METHODS.iter().any(|m| m.as_bytes() == method_bytes) {
        return Err(err);
    }
    let method = Method::from_bytes(method_bytes).map_err(|_| err)?;
    if scratch.bad_version || (version == Version::HTTP_10 && !cfg.accept_http_10) {
        return Err(Reject::UpgradeRequired.into());
    }
    // From here the whole head is parsed: replies to HTTP/1.0 say HTTP/1.0.
    let http10 = version == Version::HTTP_10;
    err.http10 = http10;

    let target = &head[scratch.target.clone()];
    if target.iter().any(|b| !(0x21..0x7f).contains(b)) {
        return Err(err);
    }
    if target.contains(&b'#') {
        return Err(fail(Reject::BadRequestNoBody, http10));
    }
    let uri = parse_target(&method, head.slice(scratch.target.clone()), cfg).ok_or(err)?;

    let mut headers = HeaderMap::with_capacity(scratch.headers.len());
    let mut content_length: Option<u64> = None;
    let mut cl_count = 0usize;
    let mut cl_bad = false;
    let mut te_count = 0usize;
    let mut te_chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut upgrade_token = false;
    let mut upgrade_h2c = false;
    let mut has_upgrade = false;
    let mut expect_continue = false;
    let mut dropped = 0u32;
    for (name_r, value_r) in &scratch.headers {
        let raw_name = &head[name_r.clone()];
        if raw_name.contains(&b'_') {
            match cfg.underscores {
                Underscores::Allow => {}
                Underscores::Reject => return Err(fail(Reject::Underscore, http10)),
                Underscores::Drop => {
                    dropped += 1;
                    continue;
                }
            }
        }
        let name = HeaderName::from_bytes(raw_name).map_err(|_| err)?;
        let value_bytes = &head[value_r.clone()];
        // httparse refuses CTLs other than HTAB; DEL and a bare CR are refused here.
        let value = HeaderValue::from_maybe_shared(head.slice(value_r.clone())).map_err(|_| err)?;
        if name == CONTENT_LENGTH {
            cl_count += 1;
            match parse_length(value_bytes) {
                Some(n) => content_length = Some(n),
                None => cl_bad = true,
            }
        } else if name == TRANSFER_ENCODING {
            te_count += 1;
            te_chunked = value_bytes.eq_ignore_ascii_case(b"chunked");
        } else if name == CONNECTION {
            for token in value_bytes.split(|b| *b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    upgrade_token = true;
                } else if token.eq_ignore_ascii_case(b"host") {
                    // Envoy strips the headers `Connection` names, then finds no Host.
                    return Err(fail(Reject::BadRequestNoBody, http10));
                }
            }
        } else if name == HOST {
            if !value_bytes.iter().all(|b| is_authority_char(*b)) {
                return Err(err);
            }
        } else if name == EXPECT {
            expect_continue |= value_bytes.eq_ignore_ascii_case(b"100-continue");
        } else if name == UPGRADE {
            has_upgrade = true;
            upgrade_h2c = value_bytes.eq_ignore_ascii_case(b"h2c");
        }
        headers.append(name, value);
    }
    if te_count > 0 {
        if te_count > 1 || !te_chunked {
            return Err(fail(Reject::NotImplemented, http10));
        }
        if cl_count > 0 {
            if !cfg.allow_chunked_length {
                return Err(err);
            }
            crate::http::headers::remove_ordered(&mut headers, |n| n == CONTENT_LENGTH);
            cl_count = 0;
            content_length = None;
            cl_bad = false;
        }
    }
    if cl_count > 1 || cl_bad {
        return Err(err);
    }
    let framing = if te_count > 0 {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    let connect = method == Method::CONNECT;
    if connect && framing != Framing::None {
        return Err(err);
    }
    let keep_alive = if http10 { keep_alive_token && !close } else { !close };
    let tunnel = connect || (has_upgrade && upgrade_token && !upgrade_h2c);

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Head { request, framing, keep_alive, expect_continue, tunnel, dropped_underscores: dropped })
}

/// The request target as a `Uri`: origin-form, absolute-form (`http`/`https`, a valid
/// authority), authority-form for `CONNECT` (a port is required), `*` for `OPTIONS`.
fn parse_target(method: &Method, target: Bytes, cfg: &ParseConfig) -> Option<Uri> {
    if *method == Method::CONNECT {
        let uri = Uri::from_maybe_shared(target).ok()?;
        let a = uri.authority()?;
        if uri.scheme().is_some() || uri.path_and_query().is_some() || a.port().is_none() {
            return None;
        }
        if !a.as_str().bytes().all(is_authority_char) {
            return None;
        }
        return Some(uri);
    }
    match target.first()? {
        b'/' => Uri::from_maybe_shared(target).ok(),
        b'*' if target.len() == 1 && *method == Method::OPTIONS => Uri::from_maybe_shared(target).ok(),
        _ => {
            if !cfg.allow_absolute_url {
                return None;
            }
            let uri = Uri::from_maybe_shared(target).ok()?;
            let scheme = uri.scheme_str()?;
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return None;
            }
            let a = uri.authority()?;
            if !a.as_str().bytes().all(is_authority_char) {
                return None;
            }
            // Envoy drops the userinfo of an absolute URL (`http://u@x/` is for host `x`).
            if let Some((_, hostport)) = a.as_str().rsplit_once('@') {
                let mut parts = uri.clone().into_parts();
                parts.authority = Some(hostport.parse().ok()?);
                return Uri::from_parts(parts).ok();
            }
            Some(uri)
        }
    }
}

/// A `Content-Length` value: digits only, within `u64`.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|b| *b != b' ' && *b != b'\t').map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// What [`scan`] found, as owned bytes (fuzzing and tests compare it with a reference parser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHead {
    pub len: usize,
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    /// `Some(true)`: HTTP/1.0, `Some(false)`: HTTP/1.1, `None`: another version (426).
    pub http10: Option<bool>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

/// [`scan`] with its findings copied out.
pub fn scan_raw(buf: &[u8], cfg: &ParseConfig) -> Result<Option<RawHead>, CodecError> {
    let mut scratch = Scratch::default();
    let Some(len) = scan(buf, cfg, &mut scratch)? else {
        return Ok(None);
    };
    let src: &[u8] = scratch.normalized.as_deref().unwrap_or(buf);
    Ok(Some(RawHead {
        len,
        method: src[scratch.method.clone()].to_vec(),
        target: src[scratch.target.clone()].to_vec(),
        http10: (!scratch.bad_version).then_some(scratch.http10),
        headers: scratch.headers.iter().map(|(n, v)| (src[n.clone()].to_vec(), src[v.clone()].to_vec())).collect(),
    }))
}

/// [`scan`] then [`build`] over a copy of `buf` (tests, fuzzing): the head and its length.
pub fn parse_request(buf: &[u8], cfg: &ParseConfig) -> Result<Option<(Head, usize)>, CodecError> {
    let mut scratch = Scratch::default();
    let Some(n) = scan(buf, cfg, &mut scratch)? else {
        return Ok(None);
    };
    let head = build(Bytes::copy_from_slice(&buf[..n]), cfg, &mut scratch)?;
    Ok(Some((head, n)))
}
