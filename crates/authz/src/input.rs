//! Building the policy `input` from an Envoy v3 `CheckRequest`.
//!
//! The shape follows OPA's `envoy_ext_authz_grpc` plugin as shipped in OPA 0.63 (the guide's
//! image), which marshals the request with protojson and decodes it again:
//!
//! * field names are the proto JSON names (lowerCamelCase: `metadataContext`, `socketAddress`,
//!   `portValue`, `rawBody`, …);
//! * fields at their zero value are left out (empty strings, `0`, `false`, empty maps, unset
//!   messages), except messages that are set (Envoy always sets `metadataContext`, so it shows
//!   up as `{}`);
//! * 64-bit integers (`size`) are strings, bytes (`rawBody`, `rawValue`) are base64, and
//!   `request.time` is an RFC 3339 string in UTC with a `Z`;
//! * the plugin adds `parsed_path`, `parsed_query`, `parsed_body`, `truncated_body` and
//!   `version` beside `attributes`.
//!
//! The [`Value`] is built directly from the prost message: there is no JSON text in between
//! (except for a JSON request body, which has to be parsed anyway).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, HeaderMap, Metadata};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf as pbw;
use regorus::value::Object;
use regorus::Value;

/// An error while building the input (OPA's `request_parse_error` / `input_parse_error`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

fn s(v: &str) -> Value {
    Value::from(v)
}

/// FNV-1a: the key caches below hash short strings; SipHash would cost more than it saves.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FnvMap<K> = HashMap<K, Value, std::hash::BuildHasherDefault<Fnv>>;

/// Most distinct header names remembered per thread (names beyond it are allocated each time).
const HEADER_NAME_CACHE: usize = 512;

thread_local! {
    /// Field names of the input document as shared string values: a clone is a reference
    /// count increment instead of an allocation per key per request.
    static FIELD_KEYS: std::cell::RefCell<FnvMap<&'static str>> = std::cell::RefCell::new(FnvMap::default());
    /// The same for header names, which repeat from request to request.
    static HEADER_KEYS: std::cell::RefCell<FnvMap<Box<str>>> = std::cell::RefCell::new(FnvMap::default());
}

fn field(k: &'static str) -> Value {
    FIELD_KEYS.with(|m| m.borrow_mut().entry(k).or_insert_with(|| s(k)).clone())
}

fn header_name(k: &str) -> Value {
    HEADER_KEYS.with(|m| {
        let mut m = m.borrow_mut();
        if let Some(v) = m.get(k) {
            return v.clone();
        }
        let v = s(k);
        if m.len() < HEADER_NAME_CACHE {
            m.insert(k.into(), v.clone());
        }
        v
    })
}

/// A small object builder that leaves out zero values, as protojson does.
struct Obj(Object);

impl Obj {
    fn new() -> Self {
        Obj(Object::new())
    }
    fn set(&mut self, k: &'static str, v: Value) {
        self.0.insert(field(k), v);
    }
    fn str(&mut self, k: &'static str, v: &str) {
        if !v.is_empty() {
            self.set(k, s(v));
        }
    }
    fn bytes(&mut self, k: &'static str, v: &[u8]) {
        if !v.is_empty() {
            self.set(k, Value::from(base64_std(v)));
        }
    }
    fn map(&mut self, k: &'static str, m: &HashMap<String, String>) {
        if !m.is_empty() {
            self.set(k, string_map(m));
        }
    }
    fn done(self) -> Value {
        self.0.into_value()
    }
}

fn string_map(m: &HashMap<String, String>) -> Value {
    let mut o = Object::new();
    for (k, v) in m {
        o.insert(header_name(k), s(v));
    }
    o.into_value()
}

/// Builds the full OPA input document for a v3 `CheckRequest`.
pub fn build_input(req: &CheckRequest) -> Result<Value, InputError> {
    build_input_with(req, false)
}

/// [`build_input`]; with `skip_body_parse` (the plugin's `skip-request-body-parse`) the input has
/// no `parsed_body` and no `truncated_body`.
pub fn build_input_with(req: &CheckRequest, skip_body_parse: bool) -> Result<Value, InputError> {
    build_input_opts(req, skip_body_parse, false)
}

/// [`build_input_with`]; `v2`: the request came through the ext_authz v2 API.
pub fn build_input_opts(req: &CheckRequest, skip_body_parse: bool, v2: bool) -> Result<Value, InputError> {
    build_input_full(req, skip_body_parse, v2, None)
}

/// [`build_input_opts`]; `protos`: the plugin's `proto-descriptor` set, with which gRPC
/// request bodies (`raw_body`) are decoded into `parsed_body`.
pub fn build_input_full(
    req: &CheckRequest,
    skip_body_parse: bool,
    v2: bool,
    protos: Option<&prost_reflect::DescriptorPool>,
) -> Result<Value, InputError> {
    let mut top = Obj::new();
    let mut path = "";
    let mut headers: Option<&HashMap<String, String>> = None;
    let mut body = "";
    let mut raw_body: &[u8] = &[];
    if let Some(attrs) = &req.attributes {
        top.set("attributes", attributes(attrs));
        if let Some(http) = attrs.request.as_ref().and_then(|r| r.http.as_ref()) {
            path = &http.path;
            headers = Some(&http.headers);
            body = &http.body;
            raw_body = &http.raw_body;
        }
    }
    // (protojson of an empty CheckRequest is `{}`: no attributes key at all.)
    let (parsed_path, parsed_query) = parse_path_and_query(path)?;
    top.set("parsed_path", parsed_path);
    top.set("parsed_query", parsed_query);
    if !skip_body_parse {
        let empty = HashMap::new();
        let headers = headers.unwrap_or(&empty);
        let grpc = headers.get("content-type").is_some_and(|ct| !ct.contains("application/json") && ct.contains("application/grpc"));
        let (parsed_body, truncated) = if grpc { grpc_body(raw_body, path, protos)? } else { parse_body(headers, body, raw_body)? };
        top.set("parsed_body", parsed_body);
        top.set("truncated_body", Value::from(truncated));
    }
    let mut version = Obj::new();
    version.set("encoding", s("protojson"));
    version.set("ext_authz", s(if v2 { "v2" } else { "v3" }));
    top.set("version", version.done());
    Ok(top.done())
}

fn attributes(a: &AttributeContext) -> Value {
    let mut o = Obj::new();
    if let Some(p) = &a.source {
        o.set("source", peer(p));
    }
    if let Some(p) = &a.destination {
        o.set("destination", peer(p));
    }
    if let Some(r) = &a.request {
        o.set("request", request(r));
    }
    o.map("contextExtensions", &a.context_extensions);
    if let Some(m) = &a.metadata_context {
        o.set("metadataContext", metadata(m));
    }
    if let Some(m) = &a.route_metadata_context {
        o.set("routeMetadataContext", metadata(m));
    }
    if let Some(t) = &a.tls_session {
        let mut t2 = Obj::new();
        t2.str("sni", &t.sni);
        o.set("tlsSession", t2.done());
    }
    o.done()
}

fn peer(p: &Peer) -> Value {
    let mut o = Obj::new();
    if let Some(a) = &p.address {
        o.set("address", address_value(a));
    }
    o.str("service", &p.service);
    o.map("labels", &p.labels);
    o.str("principal", &p.principal);
    o.str("certificate", &p.certificate);
    o.done()
}

fn address_value(a: &Address) -> Value {
    let mut o = Obj::new();
    match &a.address {
        Some(address::Address::SocketAddress(sa)) => {
            let mut so = Obj::new();
            if sa.protocol == 1 {
                so.set("protocol", s("UDP"));
            }
            so.str("address", &sa.address);
            match &sa.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => {
                    so.set("portValue", Value::from(u64::from(*p)))
                }
                Some(socket_address::PortSpecifier::NamedPort(n)) => {
                    so.set("namedPort", s(n))
                }
                None => {}
            }
            so.str("resolverName", &sa.resolver_name);
            if sa.ipv4_compat {
                so.set("ipv4Compat", Value::from(true));
            }
            so.str("networkNamespaceFilepath", &sa.network_namespace_filepath);
            o.set("socketAddress", so.done());
        }
        Some(address::Address::Pipe(p)) => {
            let mut po = Obj::new();
            po.str("path", &p.path);
            if p.mode != 0 {
                po.set("mode", Value::from(u64::from(p.mode)));
            }
            o.set("pipe", po.done());
        }
        Some(address::Address::EnvoyInternalAddress(e)) => {
            use envoy_types::pb::envoy::config::core::v3::envoy_internal_address::AddressNameSpecifier;
            let mut eo = Obj::new();
            if let Some(AddressNameSpecifier::ServerListenerName(n)) = &e.address_name_specifier {
                eo.set("serverListenerName", s(n));
            }
            eo.str("endpointId", &e.endpoint_id);
            o.set("envoyInternalAddress", eo.done());
        }
        None => {}
    }
    o.done()
}

fn request(r: &Request) -> Value {
    let mut o = Obj::new();
    if let Some(t) = &r.time {
        o.set("time", s(&rfc3339_proto(t.seconds, t.nanos)));
    }
    if let Some(h) = &r.http {
        o.set("http", http_request(h));
    }
    o.done()
}

fn http_request(h: &HttpRequest) -> Value {
    let mut o = Obj::new();
    o.str("id", &h.id);
    o.str("method", &h.method);
    o.map("headers", &h.headers);
    if let Some(hm) = &h.header_map {
        o.set("headerMap", header_map(hm));
    }
    o.str("path", &h.path);
    o.str("host", &h.host);
    o.str("scheme", &h.scheme);
    o.str("query", &h.query);
    o.str("fragment", &h.fragment);
    if h.size != 0 {
        o.set("size", Value::from(h.size.to_string()));
    }
    o.str("protocol", &h.protocol);
    o.str("body", &h.body);
    o.bytes("rawBody", &h.raw_body);
    o.done()
}

fn header_map(hm: &HeaderMap) -> Value {
    let mut o = Obj::new();
    if !hm.headers.is_empty() {
        let items: Vec<Value> = hm
            .headers
            .iter()
            .map(|h| {
                let mut ho = Obj::new();
                ho.str("key", &h.key);
                ho.str("value", &h.value);
                ho.bytes("rawValue", &h.raw_value);
                ho.done()
            })
            .collect();
        o.set("headers", Value::from(items));
    }
    o.done()
}

fn metadata(m: &Metadata) -> Value {
    let mut o = Obj::new();
    if !m.filter_metadata.is_empty() {
        let mut fm = Object::new();
        for (k, v) in &m.filter_metadata {
            fm.insert(s(k), struct_to_value(v));
        }
        o.set("filterMetadata", fm.into_value());
    }
    if !m.typed_filter_metadata.is_empty() {
        // protojson would resolve the Any; we keep the type URL and the base64 payload.
        let mut tm = Object::new();
        for (k, v) in &m.typed_filter_metadata {
            let mut a = Obj::new();
            a.set("@type", s(&v.type_url));
            a.bytes("value", &v.value);
            tm.insert(s(k), a.done());
        }
        o.set("typedFilterMetadata", tm.into_value());
    }
    o.done()
}

/// `google.protobuf.Struct` → object.
pub fn struct_to_value(st: &pbw::Struct) -> Value {
    let mut o = Object::new();
    for (k, v) in &st.fields {
        o.insert(s(k), pb_value(v));
    }
    o.into_value()
}

fn pb_value(v: &pbw::Value) -> Value {
    use pbw::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => Value::from(*n),
        Some(Kind::StringValue(x)) => s(x),
        Some(Kind::BoolValue(b)) => Value::from(*b),
        Some(Kind::StructValue(st)) => struct_to_value(st),
        Some(Kind::ListValue(l)) => Value::from(l.values.iter().map(pb_value).collect::<Vec<_>>()),
    }
}

/// `parsed_path` and `parsed_query` from an HTTP `:path` (as Go's `url.Parse` + `Query()`).
pub fn parse_path_and_query(path: &str) -> Result<(Value, Value), InputError> {
    let no_frag = path.split_once('#').map_or(path, |(p, _)| p);
    let (p, q) = match no_frag.split_once('?') {
        Some((p, q)) => (p, q),
        None => (no_frag, ""),
    };
    let decoded = percent_decode(p, false)
        .ok_or_else(|| InputError(format!("parse {path:?}: invalid URL escape")))?;
    let parts: Vec<Value> = decoded.trim_start_matches('/').split('/').map(s).collect();
    Ok((Value::from(parts), form_values(q, false)?))
}

/// Parses `a=1&b=2&a=3` into `{"a": ["1", "3"], "b": ["2"]}`. With `strict`, a bad escape is an
/// error (`url.ParseQuery` on a form body); otherwise bad pairs are skipped (`URL.Query()`).
fn form_values(q: &str, strict: bool) -> Result<Value, InputError> {
    let mut map: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for pair in q.split('&') {
        if pair.is_empty() {
            continue;
        }
        if pair.contains(';') {
            if strict {
                return Err(InputError("invalid semicolon separator in query".into()));
            }
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (percent_decode(k, true), percent_decode(v, true)) {
            (Some(k), Some(v)) => map.entry(k).or_default().push(Value::from(v)),
            _ if strict => return Err(InputError(format!("invalid URL escape in {pair:?}"))),
            _ => continue,
        }
    }
    let mut o = Object::new();
    for (k, vs) in map {
        o.insert(Value::from(k), Value::from(vs));
    }
    Ok(o.into_value())
}

fn percent_decode(x: &str, plus_is_space: bool) -> Option<String> {
    if !(x.contains('%') || plus_is_space && x.contains('+')) {
        return Some(x.to_owned());
    }
    let b = x.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let hi = b.get(i + 1).copied().and_then(hex)?;
                let lo = b.get(i + 2).copied().and_then(hex)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Reads a `proto-descriptor` file: a serialized `FileDescriptorSet` (`protoc
/// --descriptor_set_out --include_imports`).
pub fn load_descriptors(bytes: &[u8]) -> Result<prost_reflect::DescriptorPool, InputError> {
    prost_reflect::DescriptorPool::decode(bytes).map_err(|e| InputError(format!("not a valid FileDescriptorSet: {e}")))
}

/// A gRPC request body as the plugin decodes it with its `proto-descriptor`: the first
/// length-prefixed message of `raw_body`, decoded as the input type of the method named by
/// the path (`/package.Service/Method`), in protojson form. No descriptor set, no raw body, a
/// compressed message, an unknown service or method, or a client-streaming method: no
/// `parsed_body`. A message longer than the body: truncated.
pub fn grpc_body(raw_body: &[u8], path: &str, protos: Option<&prost_reflect::DescriptorPool>) -> Result<(Value, bool), InputError> {
    let Some(pool) = protos else { return Ok((Value::Null, false)) };
    if raw_body.is_empty() {
        return Ok((Value::Null, false));
    }
    let (parsed_path, _) = parse_path_and_query(path)?;
    let segs: Vec<String> = match &parsed_path {
        Value::Array(a) => a.iter().map(|v| v.as_string().map(|s| s.to_string()).unwrap_or_default()).collect(),
        _ => vec![],
    };
    let [service, method] = segs.as_slice() else { return Err(InputError("invalid parsed path".into())) };
    if raw_body.len() < 5 {
        return Err(InputError("less than 5 bytes".into()));
    }
    if raw_body[0] != 0 {
        return Ok((Value::Null, false));
    }
    let size = u32::from_be_bytes([raw_body[1], raw_body[2], raw_body[3], raw_body[4]]) as usize;
    if size > raw_body.len() - 5 {
        return Ok((Value::Null, true));
    }
    let Some(svc) = pool.get_service_by_name(service) else { return Ok((Value::Null, false)) };
    let Some(m) = svc.methods().find(|m| m.name() == method) else { return Ok((Value::Null, false)) };
    if m.is_client_streaming() {
        return Ok((Value::Null, false));
    }
    let msg = prost_reflect::DynamicMessage::decode(m.input(), &raw_body[5..5 + size])
        .map_err(|e| InputError(format!("proto: cannot parse gRPC body as {}: {e}", m.input().full_name())))?;
    let json = serde_json::to_string(&msg).map_err(|e| InputError(format!("protojson: {e}")))?;
    let v = Value::from_json_str(&json).map_err(|e| InputError(format!("protojson: {e}")))?;
    Ok((v, false))
}

/// `parsed_body` and `truncated_body`, following the plugin: only JSON and form bodies are
/// parsed (chosen by a substring match on `content-type`); a body shorter than
/// `content-length` is reported as truncated and left unparsed.
pub fn parse_body(
    headers: &HashMap<String, String>,
    body: &str,
    raw_body: &[u8],
) -> Result<(Value, bool), InputError> {
    let Some(ct) = headers.get("content-type") else {
        return Ok((Value::Null, false));
    };
    let is_json = ct.contains("application/json");
    let is_form = ct.contains("application/x-www-form-urlencoded");
    let is_multipart = ct.contains("multipart/form-data");
    if !is_json && !is_form && !is_multipart {
        return Ok((Value::Null, false));
    }
    let text: std::borrow::Cow<'_, str> = if body.is_empty() {
        if raw_body.is_empty() {
            return Ok((Value::Null, false));
        }
        String::from_utf8_lossy(raw_body)
    } else {
        body.into()
    };
    if let Some(cl) = headers.get("content-length") {
        let n: i64 = cl
            .trim()
            .parse()
            .map_err(|_| InputError(format!("strconv.ParseInt: parsing {cl:?}: invalid syntax")))?;
        if n > text.len() as i64 {
            return Ok((Value::Null, true));
        }
    }
    if is_json {
        let v = Value::from_json_str(&text)
            .map_err(|e| InputError(format!("body is not valid JSON: {e}")))?;
        Ok((v, false))
    } else if is_form {
        Ok((form_values(&text, true)?, false))
    } else {
        Ok((multipart_values(ct, &text)?, false))
    }
}

/// A `multipart/form-data` body as the plugin reads it: each named part's content under its
/// name (an array, parts of the same name in order); a part whose content type is JSON is
/// decoded, others are strings; parts without a name are skipped.
pub fn multipart_values(content_type: &str, body: &str) -> Result<Value, InputError> {
    let boundary = content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| InputError("mime: no boundary in multipart/form-data content type".into()))?;
    let delim = format!("--{boundary}");
    let mut out: std::collections::BTreeMap<String, Vec<Value>> = std::collections::BTreeMap::new();
    let Some(start) = body.find(&delim) else {
        return Err(InputError("multipart: NextPart: EOF".into()));
    };
    let mut rest = &body[start + delim.len()..];
    loop {
        if rest.starts_with("--") {
            break;
        }
        let rest_part = rest.strip_prefix("\r\n").or_else(|| rest.strip_prefix('\n')).ok_or_else(|| InputError("multipart: malformed part".into()))?;
        let next = rest_part.find(&format!("\r\n{delim}")).map(|i| (i, 2)).or_else(|| rest_part.find(&format!("\n{delim}")).map(|i| (i, 1)));
        let Some((end, nl)) = next else {
            return Err(InputError("multipart: NextPart: EOF".into()));
        };
        let part = &rest_part[..end];
        rest = &rest_part[end + nl + delim.len()..];
        let (head, content) = part.split_once("\r\n\r\n").or_else(|| part.split_once("\n\n")).unwrap_or((part, ""));
        let mut name = None;
        let mut json = false;
        for line in head.lines() {
            let Some((k, v)) = line.split_once(':') else { continue };
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                name = v
                    .split(';')
                    .skip(1)
                    .filter_map(|p| p.trim().split_once('='))
                    .find(|(k, _)| k.trim() == "name")
                    .map(|(_, v)| v.trim().trim_matches('"').to_string());
            } else if k.trim().eq_ignore_ascii_case("content-type") {
                json = v.contains("application/json");
            }
        }
        let Some(name) = name.filter(|n| !n.is_empty()) else { continue };
        let value = if json {
            Value::from_json_str(content).map_err(|e| InputError(format!("multipart part {name:?} is not valid JSON: {e}")))?
        } else {
            Value::from(content)
        };
        out.entry(name).or_default().push(value);
    }
    let mut o = regorus::value::Object::new();
    for (k, v) in out {
        o.insert(Value::from(k), Value::from(v));
    }
    Ok(o.into_value())
}

/// RFC 3339 in UTC the way protojson prints a `Timestamp`: 0, 3, 6 or 9 fractional digits.
pub fn rfc3339_proto(seconds: i64, nanos: i32) -> String {
    let base = rfc3339_seconds(seconds);
    let n = nanos.clamp(0, 999_999_999) as u32;
    if n == 0 {
        format!("{base}Z")
    } else if n.is_multiple_of(1_000_000) {
        format!("{base}.{:03}Z", n / 1_000_000)
    } else if n.is_multiple_of(1000) {
        format!("{base}.{:06}Z", n / 1000)
    } else {
        format!("{base}.{n:09}Z")
    }
}

/// RFC 3339 in UTC with Go's `RFC3339Nano` rule: trailing zeros of the fraction trimmed.
pub fn rfc3339_nano(seconds: i64, nanos: u32) -> String {
    let base = rfc3339_seconds(seconds);
    if nanos == 0 {
        return format!("{base}Z");
    }
    let frac = format!("{nanos:09}");
    format!("{base}.{}Z", frac.trim_end_matches('0'))
}

/// `YYYY-MM-DDTHH:MM:SS` (no zone) for Unix seconds.
pub fn rfc3339_seconds(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Standard base64 with padding (protojson's encoding of `bytes`).
pub fn base64_std(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies() {
        let ct = "multipart/form-data; boundary=XyZ";
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\none\r\n--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\ntwo\r\n--XyZ\r\nContent-Disposition: form-data; name=\"j\"\r\nContent-Type: application/json\r\n\r\n{\"k\": [1]}\r\n--XyZ\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--XyZ--\r\n";
        let v = multipart_values(ct, body).unwrap();
        assert_eq!(crate::decision_log::value_json(&v), serde_json::json!({"a": ["one", "two"], "j": [{"k": [1]}]}));
        assert!(multipart_values("multipart/form-data", body).is_err());
        let bad = "--XyZ\r\nContent-Disposition: form-data; name=\"j\"\r\nContent-Type: application/json\r\n\r\n{nope\r\n--XyZ--";
        assert!(multipart_values(ct, bad).is_err());
        let mut h = HashMap::new();
        h.insert("content-type".to_string(), ct.to_string());
        let (v, truncated) = parse_body(&h, body, &[]).unwrap();
        assert!(!truncated && v != Value::Null);
    }
    use envoy_types::pb::envoy::config::core::v3::SocketAddress;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context;

    fn json(v: &Value) -> serde_json::Value {
        serde_json::from_str(&v.to_json_str().unwrap()).unwrap()
    }

    #[test]
    fn time_formats() {
        assert_eq!(rfc3339_proto(1_711_965_600, 0), "2024-04-01T10:00:00Z");
        assert_eq!(rfc3339_proto(1_711_965_600, 905_478_000), "2024-04-01T10:00:00.905478Z");
        assert_eq!(rfc3339_proto(1_711_965_600, 5_000_000), "2024-04-01T10:00:00.005Z");
        assert_eq!(rfc3339_proto(0, 1), "1970-01-01T00:00:00.000000001Z");
        assert_eq!(rfc3339_nano(951_782_400, 120_000_000), "2000-02-29T00:00:00.12Z");
    }

    #[test]
    fn base64() {
        assert_eq!(base64_std(b""), "");
        assert_eq!(base64_std(b"f"), "Zg==");
        assert_eq!(base64_std(b"fo"), "Zm8=");
        assert_eq!(base64_std(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn path_and_query() {
        let (p, q) = parse_path_and_query("/").unwrap();
        assert_eq!(json(&p), serde_json::json!([""]));
        assert_eq!(json(&q), serde_json::json!({}));
        let (p, q) = parse_path_and_query("/a%20b/c?lang=en&id=1&id=2&x=a+b#frag").unwrap();
        assert_eq!(json(&p), serde_json::json!(["a b", "c"]));
        assert_eq!(json(&q), serde_json::json!({"lang":["en"],"id":["1","2"],"x":["a b"]}));
        assert!(parse_path_and_query("/bad%zz").is_err());
    }

    #[test]
    fn bodies() {
        let mut h = HashMap::new();
        assert_eq!(parse_body(&h, "{}", b"").unwrap(), (Value::Null, false));
        h.insert("content-type".to_string(), "application/json; charset=utf-8".to_string());
        let (v, t) = parse_body(&h, r#"{"a":[1,"x"]}"#, b"").unwrap();
        assert_eq!(json(&v), serde_json::json!({"a":[1,"x"]}));
        assert!(!t);
        let (v, _) = parse_body(&h, "", br#"{"raw":true}"#).unwrap();
        assert_eq!(json(&v), serde_json::json!({"raw":true}));
        assert!(parse_body(&h, "{nope", b"").is_err());
        h.insert("content-length".to_string(), "100".to_string());
        assert_eq!(parse_body(&h, "{}", b"").unwrap(), (Value::Null, true));
        let mut f = HashMap::new();
        f.insert("content-type".to_string(), "application/x-www-form-urlencoded".to_string());
        let (v, _) = parse_body(&f, "a=1&b=x+y&a=2", b"").unwrap();
        assert_eq!(json(&v), serde_json::json!({"a":["1","2"],"b":["x y"]}));
    }

    #[test]
    fn protojson_shape() {
        let mut headers = HashMap::new();
        headers.insert(":method".to_string(), "GET".to_string());
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(attribute_context::Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "10.0.0.1".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(5000)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                }),
                request: Some(attribute_context::Request {
                    time: Some(pbw::Timestamp { seconds: 1_711_965_600, nanos: 0 }),
                    http: Some(attribute_context::HttpRequest {
                        id: "42".into(),
                        method: "GET".into(),
                        headers,
                        path: "/people?x=1".into(),
                        size: 197,
                        ..Default::default()
                    }),
                }),
                metadata_context: Some(Metadata::default()),
                ..Default::default()
            }),
        };
        let v = json(&build_input(&req).unwrap());
        assert_eq!(
            v,
            serde_json::json!({
                "attributes": {
                    "source": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 5000}}},
                    "request": {"time": "2024-04-01T10:00:00Z", "http": {
                        "id": "42", "method": "GET", "headers": {":method": "GET"},
                        "path": "/people?x=1", "size": "197"}},
                    "metadataContext": {}
                },
                "parsed_path": ["people"],
                "parsed_query": {"x": ["1"]},
                "parsed_body": null,
                "truncated_body": false,
                "version": {"encoding": "protojson", "ext_authz": "v3"}
            })
        );
    }
}

#[cfg(test)]
mod grpc_body_tests {
    use super::*;
    use prost::Message;
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto};

    fn field(name: &str, number: i32, ty: Type, label: Label) -> FieldDescriptorProto {
        FieldDescriptorProto { name: Some(name.into()), number: Some(number), r#type: Some(ty as i32), label: Some(label as i32), ..Default::default() }
    }

    /// `test.v1.Greeter` with `SayHello(HelloRequest)` and a client-streaming `Upload`.
    fn descriptor_set() -> Vec<u8> {
        let file = FileDescriptorProto {
            name: Some("greeter.proto".into()),
            package: Some("test.v1".into()),
            syntax: Some("proto3".into()),
            message_type: vec![DescriptorProto {
                name: Some("HelloRequest".into()),
                field: vec![
                    field("user_name", 1, Type::String, Label::Optional),
                    field("count", 2, Type::Int64, Label::Optional),
                    field("tags", 3, Type::String, Label::Repeated),
                ],
                ..Default::default()
            }],
            service: vec![ServiceDescriptorProto {
                name: Some("Greeter".into()),
                method: vec![
                    MethodDescriptorProto { name: Some("SayHello".into()), input_type: Some(".test.v1.HelloRequest".into()), output_type: Some(".test.v1.HelloRequest".into()), ..Default::default() },
                    MethodDescriptorProto { name: Some("Upload".into()), input_type: Some(".test.v1.HelloRequest".into()), output_type: Some(".test.v1.HelloRequest".into()), client_streaming: Some(true), ..Default::default() },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        FileDescriptorSet { file: vec![file] }.encode_to_vec()
    }

    /// A gRPC frame around a HelloRequest.
    fn frame(pool: &prost_reflect::DescriptorPool) -> Vec<u8> {
        let desc = pool.get_message_by_name("test.v1.HelloRequest").unwrap();
        let mut m = prost_reflect::DynamicMessage::new(desc);
        m.set_field_by_name("user_name", prost_reflect::Value::String("ann".into()));
        m.set_field_by_name("count", prost_reflect::Value::I64(5));
        m.set_field_by_name("tags", prost_reflect::Value::List(vec![prost_reflect::Value::String("a".into()), prost_reflect::Value::String("b".into())]));
        let body = m.encode_to_vec();
        let mut f = vec![0u8];
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn decodes_like_the_plugin() {
        let pool = load_descriptors(&descriptor_set()).unwrap();
        let f = frame(&pool);
        let (v, t) = grpc_body(&f, "/test.v1.Greeter/SayHello", Some(&pool)).unwrap();
        assert!(!t);
        assert_eq!(v, Value::from_json_str(r#"{"userName": "ann", "count": "5", "tags": ["a", "b"]}"#).unwrap(), "protojson names and int64 strings");
        // Truncated, compressed, unknown method, client streaming, no descriptors.
        assert_eq!(grpc_body(&f[..f.len() - 1], "/test.v1.Greeter/SayHello", Some(&pool)).unwrap(), (Value::Null, true));
        let mut c = f.clone();
        c[0] = 1;
        assert_eq!(grpc_body(&c, "/test.v1.Greeter/SayHello", Some(&pool)).unwrap(), (Value::Null, false));
        assert_eq!(grpc_body(&f, "/test.v1.Greeter/Nope", Some(&pool)).unwrap(), (Value::Null, false));
        assert_eq!(grpc_body(&f, "/test.v1.Other/SayHello", Some(&pool)).unwrap(), (Value::Null, false));
        assert_eq!(grpc_body(&f, "/test.v1.Greeter/Upload", Some(&pool)).unwrap(), (Value::Null, false));
        assert_eq!(grpc_body(&f, "/test.v1.Greeter/SayHello", None).unwrap(), (Value::Null, false));
        // Errors: a path that is not /Service/Method, a short frame, bytes that are not the message.
        assert!(grpc_body(&f, "/a/b/c", Some(&pool)).is_err());
        assert!(grpc_body(&[0, 0], "/test.v1.Greeter/SayHello", Some(&pool)).is_err());
        assert!(grpc_body(&[0, 0, 0, 0, 2, 0xff, 0xff], "/test.v1.Greeter/SayHello", Some(&pool)).is_err());
        assert!(load_descriptors(b"\xff\xff").is_err());
    }

    #[test]
    fn input_has_the_decoded_body() {
        let pool = load_descriptors(&descriptor_set()).unwrap();
        let mut headers = HashMap::new();
        headers.insert("content-type".to_string(), "application/grpc".to_string());
        let req = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest { path: "/test.v1.Greeter/SayHello".into(), headers, raw_body: frame(&pool), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let v = build_input_full(&req, false, false, Some(&pool)).unwrap();
        assert_eq!(v["parsed_body"]["userName"], Value::from("ann"));
        assert_eq!(v["truncated_body"], Value::from(false));
        let v = build_input_full(&req, false, false, None).unwrap();
        assert_eq!(v["parsed_body"], Value::Null, "without proto-descriptor the body is not parsed");
    }
}
