//! Parser and operator tests; the expected strings were observed on real Envoy 1.40.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Method, Uri, Version};

use super::substitution::FormatString;
use super::*;
use crate::filters::{ConnectionInfo, TlsInfo};
use crate::stream_info::{ResponseFlags, StreamInfo};

fn conn(tls: Option<TlsInfo>) -> Arc<ConnectionInfo> {
    let peer: SocketAddr = "127.0.0.1:54210".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:47000".parse().unwrap();
    let mut c = ConnectionInfo::new(peer, local, tls.map(Arc::new));
    c.id = 7;
    Arc::new(c)
}

fn info() -> StreamInfo {
    let mut si = StreamInfo::new(3, Version::HTTP_11, conn(None));
    si.start_time = UNIX_EPOCH + Duration::new(1_796_139_751, 633_381_000);
    si
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

fn req(path: &str, pairs: &[(&str, &str)]) -> Req {
    Req { method: Method::GET, uri: Uri::try_from(path).unwrap(), headers: headers(pairs) }
}

impl Req {
    fn view(&self) -> RequestView<'_> {
        RequestView { method: &self.method, uri: &self.uri, headers: &self.headers }
    }
}

fn text(fmt: &str, ctx: &Context<'_>) -> String {
    let f = Format::parse(fmt).unwrap_or_else(|e| panic!("{fmt}: {e}"));
    let mut out = Vec::new();
    f.write_text(ctx, b"-", &mut out);
    String::from_utf8(out).unwrap()
}

fn err(fmt: &str) -> String {
    Format::parse(fmt).expect_err(fmt)
}

#[test]
fn parse_errors_are_envoys() {
    assert_eq!(err("%FOO%"), "Not supported field in StreamInfo: FOO");
    assert_eq!(err("%REQ%"), "REQ requires parameters");
    assert_eq!(err("%REQ()%"), "REQ requires parameters");
    assert_eq!(err("%REQ(a?b?c)%"), "More than 1 alternative header specified in token: a?b?c");
    assert_eq!(err("%PROTOCOL(x)%"), "PROTOCOL does not take any parameters or length");
    assert_eq!(err("%RESPONSE_CODE:3%"), "RESPONSE_CODE does not take any parameters or length");
    assert_eq!(err("%START_TIME:3%"), "START_TIME does not allow length to be specified.");
    assert_eq!(err("%REQ(x):abc%"), "Incorrect configuration: %REQ(x):abc%. Couldn't find valid command at position 0");
    assert_eq!(err("%START_TIME(%Y"), "Incorrect configuration: %START_TIME(%Y. Couldn't find valid command at position 0");
    assert_eq!(err("%"), "Incorrect configuration: %. Couldn't find valid command at position 0");
    assert_eq!(err("abc %"), "Incorrect configuration: abc %. Couldn't find valid command at position 4");
    assert_eq!(err("100%"), "Incorrect configuration: 100%. Couldn't find valid command at position 3");
    assert_eq!(err("%req(x)%"), "Incorrect configuration: %req(x)%. Couldn't find valid command at position 0");
    assert_eq!(err("%DURATION%x%"), "Incorrect configuration: %DURATION%x%. Couldn't find valid command at position 11");
    assert_eq!(err("%%%"), "Incorrect configuration: %%%. Couldn't find valid command at position 2");
    assert_eq!(err("%DYNAMIC_METADATA()%"), "DYNAMIC_METADATA requires parameters");
    assert_eq!(err("%ENVIRONMENT()%"), "ENVIRONMENT requires parameters");
    assert_eq!(err("%START_TIME(%n)%"), "Invalid header configuration. Format string contains newline.");
    assert_eq!(err("%REQ(x):99999999999999999999999%"), "Length must be an integer, given: 99999999999999999999999");
    assert_eq!(err("%FILTER_STATE(a)%"), "%FILTER_STATE%: recognised but not supported by sluice");
    assert!(Format::parse("%UPSTREAM_HOST%%RESPONSE_CODE%").is_ok());
    assert!(Format::parse("%PROTOCOL()%").is_ok(), "an empty argument is no argument");
}

#[test]
fn literals_and_percent() {
    let si = info();
    let ctx = Context::new(&si);
    assert_eq!(text("plain", &ctx), "plain");
    assert_eq!(text("100%% sure %%", &ctx), "100% sure %");
    assert_eq!(Format::parse("a%%b").unwrap().literal(), Some(&b"a%b"[..]));
    assert_eq!(Format::parse("").unwrap().literal(), Some(&b""[..]));
    assert_eq!(Format::parse("%PROTOCOL%").unwrap().literal(), None);
}

#[test]
fn request_response_and_trailer_headers() {
    let mut si = info();
    si.response_code = Some(201);
    let r = req("/up/x?q=1", &[("host", "diff.test"), ("x-b", "bbbb"), ("x-dup", "a"), ("x-dup", "b"), ("x-empty", "")]);
    let resp = headers(&[("content-type", "text/plain")]);
    let trailers = headers(&[("grpc-status", "0")]);
    let mut ctx = Context::new(&si).with_request(r.view()).with_response(ResponseView { status: 201, headers: &resp });
    ctx.trailers = Some(&trailers);
    assert_eq!(text("%REQ(:METHOD)% %REQ(:PATH)% %REQ(:AUTHORITY)% %REQ(HOST)% %REQ(:SCHEME)%", &ctx), "GET /up/x?q=1 diff.test diff.test http");
    assert_eq!(text("%REQ(X-A?X-B)% %REQ(X-A?X-B):2% %REQ(x-nope)% %REQ(X-DUP)%", &ctx), "bbbb bb - a", "the first value, as Envoy");
    assert_eq!(text("[%REQ(X-EMPTY)%|%REQ(X-B):0%]", &ctx), "[-|-]", "empty values are missing in text");
    assert_eq!(text("%RESP(CONTENT-TYPE)% %RESP(:STATUS)% %RESP(x)% %TRAILER(GRPC-STATUS)%", &ctx), "text/plain 201 - 0");
    let f = Format::parse("%REQ(X-EMPTY)%").unwrap();
    assert_eq!(f.typed(&ctx, b"-"), Typed::Bytes(Cow::Borrowed(b"")), "typed: present but empty is a string");
    let f = Format::parse("%REQ(X-NOPE)%").unwrap();
    assert_eq!(f.typed(&ctx, b"-"), Typed::Null);
    // Without a request (codec-level replies) the request operators are missing.
    let bare = Context::new(&si);
    assert_eq!(text("%REQ(:PATH)% %REQ(:METHOD)%", &bare), "- -");
}

#[test]
fn stream_info_operators() {
    let mut si = info();
    si.response_code = Some(503);
    si.response_code_details = Some("upstream_reset_before_response_started{remote_connection_failure}".into());
    si.set_flag(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
    si.set_flag(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
    si.bytes_received = 3;
    si.bytes_sent = 98;
    si.last_downstream_rx = Some(Duration::from_micros(1500));
    si.first_upstream_rx = Some(Duration::from_millis(4));
    si.last_downstream_tx = Some(Duration::from_millis(9));
    si.upstream.host = Some("127.0.0.1:47099".parse().unwrap());
    si.upstream.cluster = Some("dead".into());
    si.upstream.transport_failure_reason = Some("delayed connect error: Connection refused".into());
    si.upstream.protocol = Some(Version::HTTP_2);
    si.route_name = Some("r-up".into());
    si.attempt_count = 1;
    let r = req("/", &[("x-request-id", "c0124ead-bc4b-4993-af89-7d5dad9c523a")]);
    let ctx = Context::new(&si).with_request(r.view());
    assert_eq!(
        text("p=%PROTOCOL% up=%UPSTREAM_PROTOCOL% c=%RESPONSE_CODE% d=%RESPONSE_CODE_DETAILS% f=%RESPONSE_FLAGS% fl=%RESPONSE_FLAGS_LONG%", &ctx),
        "p=HTTP/1.1 up=HTTP/2 c=503 d=upstream_reset_before_response_started{remote_connection_failure} f=UF,URX fl=UpstreamConnectionFailure,UpstreamRetryLimitExceeded"
    );
    assert_eq!(
        text("br=%BYTES_RECEIVED% bs=%BYTES_SENT% rqd=%REQUEST_DURATION% rsd=%RESPONSE_DURATION% rtx=%RESPONSE_TX_DURATION% d=%DURATION% qtx=%REQUEST_TX_DURATION%", &ctx),
        "br=3 bs=98 rqd=1 rsd=4 rtx=5 d=9 qtx=-"
    );
    assert_eq!(
        text("uh=%UPSTREAM_HOST% ura=%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% urp=%UPSTREAM_REMOTE_PORT% uc=%UPSTREAM_CLUSTER% ula=%UPSTREAM_LOCAL_ADDRESS% utf=%UPSTREAM_TRANSPORT_FAILURE_REASON% att=%UPSTREAM_REQUEST_ATTEMPT_COUNT%", &ctx),
        "uh=127.0.0.1:47099 ura=127.0.0.1 urp=47099 uc=dead ula=- utf=delayed_connect_error:_Connection_refused att=1"
    );
    assert_eq!(
        text("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_REMOTE_PORT% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS%", &ctx),
        "127.0.0.1:54210 127.0.0.1 54210 127.0.0.1:47000 127.0.0.1 47000 127.0.0.1:54210"
    );
    assert_eq!(
        text("rn=%ROUTE_NAME% cid=%CONNECTION_ID% sid=%STREAM_ID% rsn=%REQUESTED_SERVER_NAME% vc=%VIRTUAL_CLUSTER_NAME% lrb=[%LOCAL_REPLY_BODY%]", &ctx),
        "rn=r-up cid=7 sid=c0124ead-bc4b-4993-af89-7d5dad9c523a rsn=- vc=- lrb=[]"
    );
    assert_eq!(text("%START_TIME% %START_TIME(%s.%3f)%", &ctx), "2026-12-01T15:42:31.633Z 1796139751.633");
    // No flags print as `-`, a value (not a missing one).
    let plain = info();
    let ctx = Context::new(&plain);
    assert_eq!(text("%RESPONSE_FLAGS% %RESPONSE_FLAGS_LONG% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %ROUTE_NAME%", &ctx), "- - 0 - -");
    assert_eq!(Format::parse("%RESPONSE_FLAGS%").unwrap().to_bytes(&ctx), b"-");
    assert_eq!(Format::parse("a%ROUTE_NAME%b").unwrap().to_bytes(&ctx), b"ab", "header values: missing is nothing");
}

#[test]
fn ipv6_addresses() {
    let peer: SocketAddr = "[::1]:5000".parse().unwrap();
    let c = Arc::new(ConnectionInfo::new(peer, peer, None));
    let si = StreamInfo::new(1, Version::HTTP_2, c);
    let ctx = Context::new(&si);
    assert_eq!(text("%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %PROTOCOL%", &ctx), "[::1]:5000 ::1 HTTP/2");
}

#[test]
fn environment_hostname_and_metadata() {
    // SAFETY: tests of this module read these variables only here.
    unsafe {
        std::env::set_var("SLUICE_FMT_TEST_ENV", "value-of-env");
    }
    let mut si = info();
    si.set_metadata("ns", "key", serde_json::json!("v"));
    si.set_metadata("ns", "num", serde_json::json!(1.5));
    si.set_metadata("ns", "obj", serde_json::json!({"z": 1, "a": [true, "x"]}));
    let ctx = Context::new(&si);
    assert_eq!(text("%ENVIRONMENT(SLUICE_FMT_TEST_ENV)% %ENVIRONMENT(SLUICE_FMT_TEST_ENV):5% %ENVIRONMENT(SLUICE_FMT_NOPE)%", &ctx), "value-of-env value -");
    assert_eq!(
        text("%DYNAMIC_METADATA(ns:key)% %DYNAMIC_METADATA(ns:num)% %DYNAMIC_METADATA(ns:obj)% %DYNAMIC_METADATA(ns:obj):5% %DYNAMIC_METADATA(ns:nope)% %DYNAMIC_METADATA(other)%", &ctx),
        "v 1.5 {\"a\":[true,\"x\"],\"z\":1} {\"a\": - -"
    );
    let whole = Format::parse("%DYNAMIC_METADATA(ns)%").unwrap();
    assert!(matches!(whole.typed(&ctx, b"-"), Typed::Json(_)));
    let h = Format::parse("%HOSTNAME%").unwrap().to_bytes(&ctx);
    assert!(!h.is_empty());
    // ENVIRONMENT of an unset variable is the string "-" (not a missing value).
    let f = Format::parse("%ENVIRONMENT(SLUICE_FMT_NOPE)%").unwrap();
    assert_eq!(f.typed(&ctx, b"-"), Typed::Bytes(Cow::Borrowed(b"-")));
}

#[test]
fn typed_values() {
    let mut si = info();
    si.response_code = Some(200);
    let ctx = Context::new(&si);
    let t = |f: &str| Format::parse(f).unwrap().typed(&ctx, b"-").into_owned();
    assert_eq!(t("%RESPONSE_CODE%"), Typed::Number(200.0));
    assert_eq!(t("%DURATION%"), Typed::Number(0.0));
    assert_eq!(t("%RESPONSE_DURATION%"), Typed::Null);
    assert_eq!(t("%DOWNSTREAM_LOCAL_PORT%"), Typed::Number(47000.0));
    assert_eq!(t("%DOWNSTREAM_LOCAL_ADDRESS%"), Typed::Bytes(Cow::Owned(b"127.0.0.1:47000".to_vec())));
    assert_eq!(t("%CONNECTION_ID%"), Typed::Number(7.0));
    assert_eq!(t("%UPSTREAM_HOST%"), Typed::Null);
    assert_eq!(t("%RESPONSE_FLAGS%"), Typed::Bytes(Cow::Borrowed(b"-")));
    assert_eq!(t("%START_TIME%"), Typed::Bytes(Cow::Owned(b"2026-12-01T15:42:31.633Z".to_vec())));
    assert_eq!(t("c=%RESPONSE_CODE% m=%ROUTE_NAME%"), Typed::Bytes(Cow::Owned(b"c=200 m=-".to_vec())));
    assert_eq!(t("%%"), Typed::Bytes(Cow::Borrowed(b"%")));
    assert_eq!(t(""), Typed::Bytes(Cow::Borrowed(b"")));
}

fn json_line(map: serde_json::Value, omit: bool, ctx: &Context<'_>) -> String {
    let f = FormatString::json(map.as_object().unwrap(), omit, "json_format").unwrap();
    String::from_utf8(f.format(ctx)).unwrap()
}

#[test]
fn json_format_sorts_types_and_omits() {
    let mut si = info();
    si.response_code = Some(200);
    si.bytes_sent = 18;
    si.response_code_details = Some("direct_response".into());
    let r = req("/", &[("user-agent", "curl/8"), ("x-empty", "")]);
    let ctx = Context::new(&si).with_request(r.view());
    let cfg = serde_json::json!({
        "code": "%RESPONSE_CODE%", "a_proto": "%PROTOCOL%", "missing": "%REQ(X-NOPE)%",
        "txt": "c=%RESPONSE_CODE% m=%REQ(X-NOPE)%", "nested": {"flags": "%RESPONSE_FLAGS%", "bytes": "%BYTES_SENT%", "up": "%UPSTREAM_HOST%"},
        "num": 42, "lst": ["%RESPONSE_CODE%", "x"], "trunc": "%REQ(USER-AGENT):3%", "t": true, "n": null, "obj": {}, "l1": [],
        "details": "%RESPONSE_CODE_DETAILS%", "empty": "", "e2": "%REQ(X-EMPTY)%"
    });
    assert_eq!(
        json_line(cfg.clone(), false, &ctx),
        "{\"a_proto\":\"HTTP/1.1\",\"code\":200,\"details\":\"direct_response\",\"e2\":\"\",\"empty\":\"\",\"l1\":[],\"lst\":[200,\"x\"],\"missing\":null,\"n\":null,\"nested\":{\"bytes\":18,\"flags\":\"-\",\"up\":null},\"num\":42,\"obj\":{},\"t\":true,\"trunc\":\"cur\",\"txt\":\"c=200 m=-\"}\n"
    );
    let omit = serde_json::json!({
        "zeta": "%REQ(X-EMPTY)%", "mix": "a=%REQ(X-NOPE)%", "list": ["%RESPONSE_CODE%", "%REQ(X-NOPE)%"],
        "nest": {"x": "%REQ(X-NOPE)%"}, "o1": {}, "o2": {"a": {"b": "%REQ(X-NOPE)%"}}, "l1": [], "n": null, "k\"e y": "v"
    });
    assert_eq!(json_line(omit, true, &ctx), "{\"k\\\"e y\":\"v\",\"l1\":[],\"list\":[200],\"mix\":\"a=\",\"zeta\":\"\"}\n");
    assert_eq!(json_line(serde_json::json!({"a": "%REQ(X-NOPE)%"}), true, &ctx), "{}\n");
}

#[test]
fn text_omit_empty_values() {
    let si = info();
    let ctx = Context::new(&si);
    let f = FormatString::text("[%REQ(X-A)%|%RESPONSE_FLAGS%|%ENVIRONMENT(SLUICE_FMT_NOPE2)%|%UPSTREAM_HOST%]\n", true).unwrap();
    assert_eq!(String::from_utf8(f.format(&ctx)).unwrap(), "[|-|-|]\n");
    assert_eq!(f.content_type(), "text/plain");
}

#[test]
fn default_access_log_format() {
    let mut si = info();
    si.response_code = Some(200);
    si.bytes_sent = 324;
    si.last_downstream_tx = Some(Duration::from_millis(5));
    si.upstream.host = Some("127.0.0.1:47081".parse().unwrap());
    let r = req("/up/a", &[("host", "localhost:47000"), ("user-agent", "curl/8"), ("x-request-id", "7e65ef33-e1dc-4121-88fd-37c6d67a04cc")]);
    let resp = headers(&[("x-envoy-upstream-service-time", "4")]);
    let ctx = Context::new(&si).with_request(r.view()).with_response(ResponseView { status: 200, headers: &resp });
    let line = FormatString::default_access_log().format(&ctx);
    assert_eq!(
        String::from_utf8(line).unwrap(),
        "[2026-12-01T15:42:31.633Z] \"GET /up/a HTTP/1.1\" 200 - 0 324 5 4 \"-\" \"curl/8\" \"7e65ef33-e1dc-4121-88fd-37c6d67a04cc\" \"localhost:47000\" \"127.0.0.1:47081\"\n"
    );
}

#[test]
fn tls_operators() {
    let pki = sluice_testkit::Pki::new();
    let der = |pem: &str| sluice_testkit::certs::parse_certs(pem).remove(0).as_ref().to_vec();
    let client = der(&pki.client_cert);
    let server = der(&pki.server_cert);
    let tls = TlsInfo {
        sni: Some("front.test".into()),
        version: Some("TLSv1.3"),
        cipher: Some("TLS_AES_128_GCM_SHA256"),
        peer_certificate: Some(client.clone()),
        local_certificate: Some(server.into()),
        ..Default::default()
    };
    let si = StreamInfo::new(1, Version::HTTP_11, conn(Some(tls)));
    let ctx = Context::new(&si);
    assert_eq!(text("%DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% %REQUESTED_SERVER_NAME%", &ctx), "TLSv1.3 TLS_AES_128_GCM_SHA256 front.test");
    assert_eq!(text("%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_PEER_DNS_SAN%", &ctx), "spiffe://sluice.test/client -");
    assert_eq!(text("%DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_PEER_ISSUER%", &ctx), "CN=sluice-test-client CN=sluice-test-ca");
    assert_eq!(text("%DOWNSTREAM_LOCAL_DNS_SAN% %DOWNSTREAM_LOCAL_IP_SAN%", &ctx), "localhost,upstream.test,*.test 127.0.0.1");
    let fp = text("%DOWNSTREAM_PEER_FINGERPRINT_256%", &ctx);
    assert_eq!(fp.len(), 64);
    assert!(fp.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(text("%DOWNSTREAM_PEER_CERT%", &ctx).starts_with("-----BEGIN%20CERTIFICATE-----%0A"));
    assert_eq!(text("%DOWNSTREAM_LOCAL_SUBJECT%", &ctx), "CN=sluice-test-server");
    assert_ne!(text("%DOWNSTREAM_PEER_CERT_V_START(%s)%", &ctx), "-");
    // A plaintext connection has none of them.
    let plain = info();
    let ctx = Context::new(&plain);
    assert_eq!(text("%DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_LOCAL_URI_SAN%", &ctx), "- - -");
}
