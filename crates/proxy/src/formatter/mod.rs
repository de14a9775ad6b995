//! Envoy's substitution formatter: `%COMMAND(ARG):LENGTH%` operators parsed once at config load
//! into a compiled [`Format`]; the same compiled form serves header values
//! (`request_headers_to_add` …), access logs, `local_reply_config` bodies and mapper headers.
//!
//! A format reads a [`Context`]: the request's [`StreamInfo`], the request and response heads,
//! the response trailers and the local reply body. It writes bytes (a header value or a log
//! line may carry any byte a header carries):
//!
//! * as text ([`Format::write_text`]): a missing value becomes `-` (access logs), or nothing
//!   (header values, `omit_empty_values`); `:LENGTH` truncates;
//! * typed ([`Format::typed`]) for JSON: a format that is exactly one operator keeps the type of
//!   its value (`%RESPONSE_CODE%` is a number, a missing header is `null`); anything else is a
//!   string.
//!
//! Parsing follows Envoy 1.40 to the letter, errors included: `%%` is a literal `%`; any other
//! `%` must start `%NAME%`, `%NAME(ARG)%`, `%NAME(ARG):N%` with `NAME` of `A-Z`, `0-9`, `_`
//! (`Incorrect configuration: <format>. Couldn't find valid command at position <n>`); an
//! unknown name is `Not supported field in StreamInfo: <NAME>`; a command that takes no
//! argument refuses one (`<NAME> does not take any parameters or length`). Operators Envoy knows
//! but sluice has no data for are refused at load as `recognised but not supported by sluice`.

pub mod json;
pub mod substitution;
pub mod time;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HOST};
use http::{Method, Request, Uri};

use crate::stream_info::{protocol_str, StreamInfo};
pub use time::TimeFormat;

/// The request as a format sees it.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    pub fn of<B>(req: &'a Request<B>) -> Self {
        RequestView { method: req.method(), uri: req.uri(), headers: req.headers() }
    }
}

/// A request head kept for formatting after the request itself went upstream (access logs,
/// local reply rewriting).
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl RequestHead {
    pub fn of<B>(req: &Request<B>) -> Self {
        RequestHead { method: req.method().clone(), uri: req.uri().clone(), headers: req.headers().clone() }
    }
    pub fn view(&self) -> RequestView<'_> {
        RequestView { method: &self.method, uri: &self.uri, headers: &self.headers }
    }
}

/// The response as a format sees it.
#[derive(Clone, Copy, Debug)]
pub struct ResponseView<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
}

/// Everything a format reads.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub info: &'a StreamInfo,
    pub request: Option<RequestView<'a>>,
    pub response: Option<ResponseView<'a>>,
    pub trailers: Option<&'a HeaderMap>,
    /// `%LOCAL_REPLY_BODY%` (empty outside local replies).
    pub local_reply_body: &'a [u8],
}

impl<'a> Context<'a> {
    pub fn new(info: &'a StreamInfo) -> Self {
        Context { info, request: None, response: None, trailers: None, local_reply_body: b"" }
    }
    pub fn with_request(mut self, request: RequestView<'a>) -> Self {
        self.request = Some(request);
        self
    }
    pub fn with_response(mut self, response: ResponseView<'a>) -> Self {
        self.response = Some(response);
        self
    }
}

/// A value with its type, for JSON output.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed<'a> {
    Null,
    Bytes(Cow<'a, [u8]>),
    Number(f64),
    Bool(bool),
    Json(Cow<'a, serde_json::Value>),
}

impl Typed<'_> {
    pub fn into_owned(self) -> Typed<'static> {
        match self {
            Typed::Null => Typed::Null,
            Typed::Bytes(b) => Typed::Bytes(Cow::Owned(b.into_owned())),
            Typed::Number(n) => Typed::Number(n),
            Typed::Bool(b) => Typed::Bool(b),
            Typed::Json(v) => Typed::Json(Cow::Owned(v.into_owned())),
        }
    }
}

/// A compiled format string.
#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    segments: Box<[Segment]>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(Box<[u8]>),
    Op(Op),
}

/// How `%…_ADDRESS%` operators print an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrPart {
    WithPort,
    WithoutPort,
    Port,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrSource {
    UpstreamHost,
    UpstreamLocal,
    DownstreamLocal,
    DownstreamRemote,
    DownstreamDirectRemote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DurationField {
    Request,
    RequestTx,
    Response,
    ResponseTx,
    Total,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumField {
    BytesReceived,
    BytesSent,
    ResponseCode,
    ConnectionId,
    AttemptCount,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrField {
    Protocol,
    UpstreamProtocol,
    Details,
    Flags,
    FlagsLong,
    UpstreamCluster,
    UpstreamTransportFailureReason,
    RequestedServerName,
    RouteName,
    StreamId,
    /// Envoy's virtual clusters and connection termination details: sluice has none, always
    /// missing.
    AlwaysMissing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsField {
    Version,
    Cipher,
    PeerSubject,
    PeerIssuer,
    PeerSerial,
    PeerUriSan,
    PeerDnsSan,
    PeerIpSan,
    PeerFingerprint256,
    PeerFingerprint1,
    PeerCert,
    LocalSubject,
    LocalUriSan,
    LocalDnsSan,
    LocalIpSan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderKey {
    Method,
    Path,
    Authority,
    Scheme,
    Status,
    Name(HeaderName),
    /// A name no header can have.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HeaderOp {
    main: HeaderKey,
    alt: Option<HeaderKey>,
    max: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Req(HeaderOp),
    Resp(HeaderOp),
    Trailer(HeaderOp),
    StartTime(TimeFormat),
    PeerCertStart(TimeFormat),
    PeerCertEnd(TimeFormat),
    Duration(DurationField),
    Num(NumField),
    Str(StrField),
    Addr(AddrSource, AddrPart),
    Tls(TlsField),
    /// Resolved at load.
    Hostname(Option<Box<str>>),
    /// Resolved (and truncated) at load; `-` when unset.
    Environment(Box<[u8]>),
    DynamicMetadata { namespace: Box<str>, path: Box<[Box<str>]>, max: Option<usize> },
    LocalReplyBody,
}

/// Syntax classes of Envoy's command parser.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    CommandOnly,
    ParamsRequired { length: bool },
    ParamsOptional,
}

/// Operators Envoy 1.40 knows that sluice has no data for: refused at load.
const NOT_SUPPORTED: &[&str] = &[
    "BYTES_RETRANSMITTED",
    "PACKETS_RETRANSMITTED",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "ROUNDTRIP_DURATION",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_PEER_DNS_SAN",
    "UPSTREAM_PEER_IP_SAN",
    "UPSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_LOCAL_DNS_SAN",
    "UPSTREAM_LOCAL_IP_SAN",
    "UPSTREAM_LOCAL_SUBJECT",
    "UPSTREAM_PEER_CERT_V_START",
    "UPSTREAM_PEER_CERT_V_END",
    "UPSTREAM_FILTER_STATE",
    "UPSTREAM_METADATA",
    "UPSTREAM_CONNECTION_ID",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_LOCAL_PORT",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
    "DOWNSTREAM_PEER_CHAIN_SERIALS",
    "FILTER_CHAIN_NAME",
    "TLS_JA3_FINGERPRINT",
    "TLS_JA4_FINGERPRINT",
    "FILTER_STATE",
    "CLUSTER_METADATA",
    "UPSTREAM_HOST_METADATA",
    "ROUTE_METADATA",
    "VIRTUAL_HOST_METADATA",
    "LISTENER_METADATA",
    "METADATA",
    "GRPC_STATUS",
    "GRPC_STATUS_NUMBER",
    "TRACE_ID",
    "REQ_WITHOUT_QUERY",
    "REQUEST_HEADERS_BYTES",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
    "ACCESS_LOG_TYPE",
    "COMMON_DURATION",
    "CUSTOM_FLAGS",
    "UNIQUE_ID",
    "QUERY_PARAM",
    "PATH",
    "UPSTREAM_DETECTED_OUTLIER",
    "UPSTREAM_CLUSTER_RAW",
    "VIRTUAL_HOST_NAME",
    "REQUESTED_SERVER_NAME_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_DNS_SAN_LIST",
];

impl Format {
    /// Compile a format string; errors are Envoy's messages.
    pub fn parse(format: &str) -> Result<Format, String> {
        let b = format.as_bytes();
        let mut segments = Vec::new();
        let mut literal: Vec<u8> = Vec::new();
        let mut pos = 0;
        while pos < b.len() {
            if b[pos] != b'%' {
                literal.push(b[pos]);
                pos += 1;
                continue;
            }
            if b.get(pos + 1) == Some(&b'%') {
                literal.push(b'%');
                pos += 2;
                continue;
            }
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal).into_boxed_slice()));
            }
            let bad = || format!("Incorrect configuration: {format}. Couldn't find valid command at position {pos}");
            let (command, arg, length, used) = match_command(&b[pos..]).ok_or_else(bad)?;
            let max = match length {
                Some(l) => Some(l.parse::<usize>().map_err(|_| format!("Length must be an integer, given: {l}"))?),
                None => None,
            };
            segments.push(Segment::Op(build_op(command, arg.unwrap_or(""), max)?));
            pos += used;
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal.into_boxed_slice()));
        }
        Ok(Format { segments: segments.into_boxed_slice() })
    }

    /// The format's text when it has no operator.
    pub fn literal(&self) -> Option<&[u8]> {
        match &*self.segments {
            [] => Some(b""),
            [Segment::Literal(l)] => Some(l),
            _ => None,
        }
    }

    /// Write as text; a missing value becomes `missing`.
    pub fn write_text(&self, ctx: &Context<'_>, missing: &[u8], out: &mut Vec<u8>) {
        for seg in self.segments.iter() {
            match seg {
                Segment::Literal(l) => out.extend_from_slice(l),
                Segment::Op(op) => {
                    if !op.write(ctx, out) {
                        out.extend_from_slice(missing);
                    }
                }
            }
        }
    }

    /// The text, with nothing for missing values (header values).
    pub fn to_bytes(&self, ctx: &Context<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_text(ctx, b"", &mut out);
        out
    }

    /// The typed value (JSON): one operator keeps its type; anything else is a string, with
    /// `missing` for missing values.
    pub fn typed<'c>(&'c self, ctx: &Context<'c>, missing: &[u8]) -> Typed<'c> {
        match &*self.segments {
            [] => Typed::Bytes(Cow::Borrowed(b"")),
            [Segment::Literal(l)] => Typed::Bytes(Cow::Borrowed(l)),
            [Segment::Op(op)] => op.typed(ctx),
            _ => {
                let mut out = Vec::new();
                self.write_text(ctx, missing, &mut out);
                Typed::Bytes(Cow::Owned(out))
            }
        }
    }
}

/// `%NAME(ARG):LEN%` at the start of `b` (which starts with `%`): name, argument, length and
/// the bytes used. Envoy's pattern: `^%([A-Z]|[0-9]|_)+(\([^\)]*\))?(:[0-9]+)?(%)`.
fn match_command(b: &[u8]) -> Option<(&str, Option<&str>, Option<&str>, usize)> {
    let mut i = 1;
    while b.get(i).is_some_and(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_') {
        i += 1;
    }
    if i == 1 {
        return None;
    }
    let name = std::str::from_utf8(&b[1..i]).ok()?;
    let mut arg = None;
    if b.get(i) == Some(&b'(') {
        let close = b[i + 1..].iter().position(|c| *c == b')')? + i + 1;
        arg = Some(std::str::from_utf8(&b[i + 1..close]).ok()?);
        i = close + 1;
    }
    let mut length = None;
    if b.get(i) == Some(&b':') {
        let start = i + 1;
        let mut j = start;
        while b.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j == start {
            return None;
        }
        length = Some(std::str::from_utf8(&b[start..j]).ok()?);
        i = j;
    }
    if b.get(i) != Some(&b'%') {
        return None;
    }
    Some((name, arg, length, i + 1))
}

fn check_syntax(name: &str, syntax: Syntax, arg: &str, max: Option<usize>) -> Result<(), String> {
    if syntax == Syntax::CommandOnly && (!arg.is_empty() || max.is_some()) {
        return Err(format!("{name} does not take any parameters or length"));
    }
    if matches!(syntax, Syntax::ParamsRequired { .. }) && arg.is_empty() {
        return Err(format!("{name} requires parameters"));
    }
    let length_allowed = matches!(syntax, Syntax::ParamsRequired { length: true });
    if !length_allowed && max.is_some() {
        return Err(format!("{name} does not allow length to be specified."));
    }
    Ok(())
}

fn build_op(name: &str, arg: &str, max: Option<usize>) -> Result<Op, String> {
    use AddrPart::*;
    use AddrSource::*;
    let only = |op: Op| check_syntax(name, Syntax::CommandOnly, arg, max).map(|()| op);
    let addr = |source, part| only(Op::Addr(source, part));
    let tls = |f| only(Op::Tls(f));
    match name {
        "REQ" | "RESP" | "TRAILER" => {
            check_syntax(name, Syntax::ParamsRequired { length: true }, arg, max)?;
            let h = header_op(arg, max)?;
            Ok(match name {
                "REQ" => Op::Req(h),
                "RESP" => Op::Resp(h),
                _ => Op::Trailer(h),
            })
        }
        "START_TIME" | "DOWNSTREAM_PEER_CERT_V_START" | "DOWNSTREAM_PEER_CERT_V_END" => {
            check_syntax(name, Syntax::ParamsOptional, arg, max)?;
            if has_newline_specifier(arg) {
                return Err("Invalid header configuration. Format string contains newline.".into());
            }
            let t = TimeFormat::parse(arg);
            Ok(match name {
                "START_TIME" => Op::StartTime(t),
                "DOWNSTREAM_PEER_CERT_V_START" => Op::PeerCertStart(t),
                _ => Op::PeerCertEnd(t),
            })
        }
        "REQUEST_DURATION" => only(Op::Duration(DurationField::Request)),
        "REQUEST_TX_DURATION" => only(Op::Duration(DurationField::RequestTx)),
        "RESPONSE_DURATION" => only(Op::Duration(DurationField::Response)),
        "RESPONSE_TX_DURATION" => only(Op::Duration(DurationField::ResponseTx)),
        "DURATION" => only(Op::Duration(DurationField::Total)),
        "BYTES_RECEIVED" => only(Op::Num(NumField::BytesReceived)),
        "BYTES_SENT" => only(Op::Num(NumField::BytesSent)),
        "RESPONSE_CODE" => only(Op::Num(NumField::ResponseCode)),
        "CONNECTION_ID" => only(Op::Num(NumField::ConnectionId)),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => only(Op::Num(NumField::AttemptCount)),
        "PROTOCOL" => only(Op::Str(StrField::Protocol)),
        "UPSTREAM_PROTOCOL" => only(Op::Str(StrField::UpstreamProtocol)),
        "RESPONSE_CODE_DETAILS" => only(Op::Str(StrField::Details)),
        "RESPONSE_FLAGS" => only(Op::Str(StrField::Flags)),
        "RESPONSE_FLAGS_LONG" => only(Op::Str(StrField::FlagsLong)),
        "UPSTREAM_CLUSTER" => only(Op::Str(StrField::UpstreamCluster)),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => only(Op::Str(StrField::UpstreamTransportFailureReason)),
        "REQUESTED_SERVER_NAME" => only(Op::Str(StrField::RequestedServerName)),
        "ROUTE_NAME" => only(Op::Str(StrField::RouteName)),
        "STREAM_ID" => only(Op::Str(StrField::StreamId)),
        "VIRTUAL_CLUSTER_NAME" | "CONNECTION_TERMINATION_DETAILS" => only(Op::Str(StrField::AlwaysMissing)),
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => addr(UpstreamHost, WithPort),
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => addr(UpstreamHost, WithoutPort),
        "UPSTREAM_REMOTE_PORT" => addr(UpstreamHost, Port),
        "UPSTREAM_LOCAL_ADDRESS" => addr(UpstreamLocal, WithPort),
        "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => addr(UpstreamLocal, WithoutPort),
        "UPSTREAM_LOCAL_PORT" => addr(UpstreamLocal, Port),
        "DOWNSTREAM_LOCAL_ADDRESS" => addr(DownstreamLocal, WithPort),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => addr(DownstreamLocal, WithoutPort),
        "DOWNSTREAM_LOCAL_PORT" => addr(DownstreamLocal, Port),
        "DOWNSTREAM_REMOTE_ADDRESS" => addr(DownstreamRemote, WithPort),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => addr(DownstreamRemote, WithoutPort),
        "DOWNSTREAM_REMOTE_PORT" => addr(DownstreamRemote, Port),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => addr(DownstreamDirectRemote, WithPort),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => addr(DownstreamDirectRemote, WithoutPort),
        "DOWNSTREAM_DIRECT_REMOTE_PORT" => addr(DownstreamDirectRemote, Port),
        "DOWNSTREAM_TLS_VERSION" => tls(TlsField::Version),
        "DOWNSTREAM_TLS_CIPHER" => tls(TlsField::Cipher),
        "DOWNSTREAM_PEER_SUBJECT" => tls(TlsField::PeerSubject),
        "DOWNSTREAM_PEER_ISSUER" => tls(TlsField::PeerIssuer),
        "DOWNSTREAM_PEER_SERIAL" => tls(TlsField::PeerSerial),
        "DOWNSTREAM_PEER_URI_SAN" => tls(TlsField::PeerUriSan),
        "DOWNSTREAM_PEER_DNS_SAN" => tls(TlsField::PeerDnsSan),
        "DOWNSTREAM_PEER_IP_SAN" => tls(TlsField::PeerIpSan),
        "DOWNSTREAM_PEER_FINGERPRINT_256" => tls(TlsField::PeerFingerprint256),
        "DOWNSTREAM_PEER_FINGERPRINT_1" => tls(TlsField::PeerFingerprint1),
        "DOWNSTREAM_PEER_CERT" => tls(TlsField::PeerCert),
        "DOWNSTREAM_LOCAL_SUBJECT" => tls(TlsField::LocalSubject),
        "DOWNSTREAM_LOCAL_URI_SAN" => tls(TlsField::LocalUriSan),
        "DOWNSTREAM_LOCAL_DNS_SAN" => tls(TlsField::LocalDnsSan),
        "DOWNSTREAM_LOCAL_IP_SAN" => tls(TlsField::LocalIpSan),
        "HOSTNAME" => only(Op::Hostname(hostname().map(Into::into))),
        "LOCAL_REPLY_BODY" => only(Op::LocalReplyBody),
        "ENVIRONMENT" => {
            check_syntax(name, Syntax::ParamsRequired { length: true }, arg, max)?;
            let mut v = match std::env::var_os(arg) {
                Some(v) => {
                    use std::os::unix::ffi::OsStrExt;
                    v.as_bytes().to_vec()
                }
                None => b"-".to_vec(),
            };
            if let Some(m) = max {
                v.truncate(m);
            }
            Ok(Op::Environment(v.into_boxed_slice()))
        }
        "DYNAMIC_METADATA" => {
            check_syntax(name, Syntax::ParamsRequired { length: true }, arg, max)?;
            let mut parts = arg.split(':');
            let namespace = parts.next().unwrap_or("").into();
            let path = parts.map(Into::into).collect();
            Ok(Op::DynamicMetadata { namespace, path, max })
        }
        _ if NOT_SUPPORTED.contains(&name) => Err(format!("%{name}%: recognised but not supported by sluice")),
        _ => Err(format!("Not supported field in StreamInfo: {name}")),
    }
}

/// Envoy refuses a time format that can print a newline (`%n`, with flags).
fn has_newline_specifier(f: &str) -> bool {
    let b = f.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let mut j = i + 1;
            while j < b.len() && matches!(b[j], b'-' | b'_' | b'0' | b'^' | b'#') {
                j += 1;
            }
            while j < b.len() && matches!(b[j], b'1'..=b'9') {
                j += 1;
            }
            if j < b.len() && matches!(b[j], b'E' | b'O') {
                j += 1;
            }
            if b.get(j) == Some(&b'n') {
                return true;
            }
        }
        i += 1;
    }
    false
}

fn header_op(arg: &str, max: Option<usize>) -> Result<HeaderOp, String> {
    let mut parts = arg.split('?');
    let main = parts.next().unwrap_or("");
    let alt = parts.next();
    if parts.next().is_some() {
        return Err(format!("More than 1 alternative header specified in token: {arg}"));
    }
    let invalid = |s: &str| s.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n');
    if invalid(main) || alt.is_some_and(invalid) {
        return Err("Invalid header configuration. Format string contains null or newline.".into());
    }
    Ok(HeaderOp { main: header_key(main), alt: alt.map(header_key), max })
}

fn header_key(name: &str) -> HeaderKey {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        ":method" => HeaderKey::Method,
        ":path" => HeaderKey::Path,
        ":authority" | "host" => HeaderKey::Authority,
        ":scheme" => HeaderKey::Scheme,
        ":status" => HeaderKey::Status,
        _ => HeaderName::from_bytes(lower.as_bytes()).map(HeaderKey::Name).unwrap_or(HeaderKey::Never),
    }
}

/// This host's name (`gethostname`), read once.
fn hostname() -> Option<String> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return None;
        }
        let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..len]).into_owned())
    })
    .clone()
}

fn request_header<'c>(key: &HeaderKey, ctx: &Context<'c>) -> Option<Cow<'c, [u8]>> {
    let req = ctx.request?;
    match key {
        HeaderKey::Method => Some(Cow::Borrowed(req.method.as_str().as_bytes())),
        HeaderKey::Path => req.uri.path_and_query().map(|p| Cow::Borrowed(p.as_str().as_bytes())),
        HeaderKey::Authority => match req.headers.get(HOST) {
            Some(h) => Some(Cow::Borrowed(h.as_bytes())),
            None => req.uri.authority().map(|a| Cow::Borrowed(a.as_str().as_bytes())),
        },
        HeaderKey::Scheme => Some(Cow::Borrowed(match req.uri.scheme_str() {
            Some("https") => b"https".as_slice(),
            Some("http") => b"http".as_slice(),
            _ if ctx.info.conn.tls.is_some() => b"https".as_slice(),
            _ => b"http".as_slice(),
        })),
        HeaderKey::Status | HeaderKey::Never => None,
        // The first value, as Envoy's header map gives it.
        HeaderKey::Name(n) => req.headers.get(n).map(|v| Cow::Borrowed(v.as_bytes())),
    }
}

fn map_header<'c>(key: &HeaderKey, headers: &'c HeaderMap, status: Option<u16>) -> Option<Cow<'c, [u8]>> {
    match key {
        HeaderKey::Status => status.map(|s| Cow::Owned(s.to_string().into_bytes())),
        HeaderKey::Name(n) => headers.get(n).map(|v| Cow::Borrowed(v.as_bytes())),
        _ => None,
    }
}

impl HeaderOp {
    fn value<'c>(&self, which: u8, ctx: &Context<'c>) -> Option<Cow<'c, [u8]>> {
        let get = |key: &HeaderKey| -> Option<Cow<'c, [u8]>> {
            match which {
                0 => request_header(key, ctx),
                1 => ctx.response.and_then(|r| map_header(key, r.headers, Some(r.status))),
                _ => ctx.trailers.and_then(|t| map_header(key, t, None)),
            }
        };
        let v = get(&self.main).or_else(|| self.alt.as_ref().and_then(get))?;
        Some(match (self.max, v) {
            (Some(m), Cow::Borrowed(b)) if b.len() > m => Cow::Borrowed(&b[..m]),
            (Some(m), Cow::Owned(mut o)) if o.len() > m => {
                o.truncate(m);
                Cow::Owned(o)
            }
            (_, v) => v,
        })
    }
}

fn millis(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

impl Op {
    /// Write the text of the value; `false` (nothing written) when it is missing.
    fn write(&self, ctx: &Context<'_>, out: &mut Vec<u8>) -> bool {
        let info = ctx.info;
        match self {
            Op::Req(h) | Op::Resp(h) | Op::Trailer(h) => {
                let which = match self {
                    Op::Req(_) => 0,
                    Op::Resp(_) => 1,
                    _ => 2,
                };
                match h.value(which, ctx) {
                    Some(v) if !v.is_empty() => {
                        out.extend_from_slice(&v);
                        true
                    }
                    _ => false,
                }
            }
            Op::StartTime(t) => {
                t.write(info.start_time, out);
                true
            }
            Op::PeerCertStart(t) | Op::PeerCertEnd(t) => {
                let start = matches!(self, Op::PeerCertStart(_));
                match crate::formatter::tls_validity(info, start) {
                    Some(time) => {
                        t.write(time, out);
                        true
                    }
                    None => false,
                }
            }
            Op::Duration(f) => match duration(info, *f) {
                Some(ms) => {
                    push_u64(out, ms);
                    true
                }
                None => false,
            },
            Op::Num(f) => {
                push_u64(out, number(info, *f));
                true
            }
            Op::Str(f) => match string(ctx, *f) {
                Some(s) => {
                    out.extend_from_slice(&s);
                    true
                }
                None => false,
            },
            Op::Addr(src, part) => match address(info, *src) {
                Some(a) => {
                    write_addr(out, a, *part);
                    true
                }
                None => false,
            },
            Op::Tls(f) => match tls_value(info, *f) {
                Some(v) if !v.is_empty() => {
                    out.extend_from_slice(v.as_bytes());
                    true
                }
                _ => false,
            },
            Op::Hostname(h) => match h {
                Some(h) => {
                    out.extend_from_slice(h.as_bytes());
                    true
                }
                None => false,
            },
            Op::Environment(v) => {
                out.extend_from_slice(v);
                true
            }
            Op::LocalReplyBody => {
                out.extend_from_slice(ctx.local_reply_body);
                true
            }
            Op::DynamicMetadata { namespace, path, max } => match metadata(info, namespace, path) {
                Some(v) => {
                    let start = out.len();
                    match v {
                        serde_json::Value::String(s) => out.extend_from_slice(s.as_bytes()),
                        other => json::write_value(out, other),
                    }
                    if let Some(m) = max {
                        out.truncate(start + (*m).min(out.len() - start));
                    }
                    true
                }
                None => false,
            },
        }
    }

    fn typed<'c>(&'c self, ctx: &Context<'c>) -> Typed<'c> {
        let info = ctx.info;
        let bytes = |v: Option<Cow<'c, [u8]>>| v.map_or(Typed::Null, Typed::Bytes);
        match self {
            Op::Req(h) => bytes(h.value(0, ctx)),
            Op::Resp(h) => bytes(h.value(1, ctx)),
            Op::Trailer(h) => bytes(h.value(2, ctx)),
            Op::Duration(f) => duration(info, *f).map_or(Typed::Null, |ms| Typed::Number(ms as f64)),
            Op::Num(f) => Typed::Number(number(info, *f) as f64),
            Op::Str(f) => bytes(string(ctx, *f)),
            Op::Addr(src, AddrPart::Port) => address(info, *src).map_or(Typed::Null, |a| Typed::Number(a.port() as f64)),
            Op::Tls(f) => match tls_value(info, *f) {
                Some(v) if !v.is_empty() => Typed::Bytes(Cow::Owned(v.into_bytes())),
                _ => Typed::Null,
            },
            Op::Hostname(None) => Typed::Null,
            Op::DynamicMetadata { namespace, path, max } => match metadata(info, namespace, path) {
                None => Typed::Null,
                Some(serde_json::Value::String(s)) => {
                    let mut b = s.as_bytes().to_vec();
                    if let Some(m) = max {
                        b.truncate(*m);
                    }
                    Typed::Bytes(Cow::Owned(b))
                }
                Some(v) => Typed::Json(Cow::Owned(v.clone())),
            },
            _ => {
                let mut out = Vec::new();
                if self.write(ctx, &mut out) {
                    Typed::Bytes(Cow::Owned(out))
                } else {
                    Typed::Null
                }
            }
        }
    }
}

fn push_u64(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn duration(info: &StreamInfo, f: DurationField) -> Option<u64> {
    match f {
        DurationField::Request => info.last_downstream_rx.map(millis),
        DurationField::RequestTx => info.first_upstream_tx.map(millis),
        DurationField::Response => info.first_upstream_rx.map(millis),
        DurationField::ResponseTx => match (info.last_downstream_tx, info.first_upstream_rx) {
            (Some(tx), Some(rx)) => Some(millis(tx.saturating_sub(rx))),
            _ => None,
        },
        DurationField::Total => Some(millis(info.last_downstream_tx.unwrap_or_else(|| info.elapsed()))),
    }
}

fn number(info: &StreamInfo, f: NumField) -> u64 {
    match f {
        NumField::BytesReceived => info.bytes_received,
        NumField::BytesSent => info.bytes_sent,
        NumField::ResponseCode => info.response_code.unwrap_or(0) as u64,
        NumField::ConnectionId => info.conn.id,
        NumField::AttemptCount => info.attempt_count as u64,
    }
}

fn string<'c>(ctx: &Context<'c>, f: StrField) -> Option<Cow<'c, [u8]>> {
    let info = ctx.info;
    let b = |s: &'c str| Some(Cow::Borrowed(s.as_bytes()));
    match f {
        StrField::Protocol if info.protocol_unset => None,
        StrField::Protocol => b(protocol_str(info.protocol)),
        StrField::UpstreamProtocol => info.upstream.protocol.and_then(|p| b(protocol_str(p))),
        StrField::Details => info.response_code_details.as_deref().and_then(b),
        StrField::Flags | StrField::FlagsLong => {
            if info.response_flags.is_empty() {
                return b("-");
            }
            let names = info.flag_names(f == StrField::FlagsLong);
            Some(Cow::Owned(names.join(",").into_bytes()))
        }
        StrField::UpstreamCluster => info.upstream.cluster.as_deref().filter(|c| !c.is_empty()).and_then(b),
        StrField::UpstreamTransportFailureReason => info
            .upstream
            .transport_failure_reason
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(|r| Cow::Owned(r.replace(' ', "_").into_bytes())),
        StrField::RequestedServerName => info.conn.tls.as_ref().and_then(|t| t.sni.as_deref()).filter(|s| !s.is_empty()).and_then(b),
        StrField::RouteName => info.route_name.as_deref().filter(|r| !r.is_empty()).and_then(b),
        StrField::StreamId => ctx
            .request
            .and_then(|r| r.headers.get("x-request-id"))
            .map(|v| Cow::Borrowed(v.as_bytes())),
        StrField::AlwaysMissing => None,
    }
}

fn address(info: &StreamInfo, src: AddrSource) -> Option<SocketAddr> {
    match src {
        AddrSource::UpstreamHost => info.upstream.host,
        AddrSource::UpstreamLocal => info.upstream.local_address,
        AddrSource::DownstreamLocal => Some(info.conn.local),
        AddrSource::DownstreamRemote => Some(info.downstream_remote.unwrap_or(info.conn.peer)),
        AddrSource::DownstreamDirectRemote => Some(info.conn.peer),
    }
}

fn write_addr(out: &mut Vec<u8>, a: SocketAddr, part: AddrPart) {
    use std::io::Write;
    let _ = match part {
        AddrPart::WithPort => write!(out, "{a}"),
        AddrPart::WithoutPort => write!(out, "{}", a.ip()),
        AddrPart::Port => write!(out, "{}", a.port()),
    };
}

fn metadata<'c>(info: &'c StreamInfo, namespace: &str, path: &[Box<str>]) -> Option<&'c serde_json::Value> {
    let mut v = info.dynamic_metadata.as_ref()?.get(namespace)?;
    for key in path {
        v = v.as_object()?.get(&**key)?;
    }
    Some(v)
}

fn tls_value(info: &StreamInfo, f: TlsField) -> Option<String> {
    let tls = info.conn.tls.as_deref()?;
    tls.field(f)
}

fn tls_validity(info: &StreamInfo, start: bool) -> Option<std::time::SystemTime> {
    let tls = info.conn.tls.as_deref()?;
    tls.peer_validity(start)
}

mod tls_fields;
use tls_fields::TlsFieldAccess;
pub use tls_fields::{cipher_name, tls_version_name};

#[cfg(test)]
mod tests;
