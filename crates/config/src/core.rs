//! Shared message types (`envoy.config.core.v3`, `envoy.type.matcher.v3`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::de::Error as _;
use serde::{Deserialize, Serialize};

use crate::de::NotSupported;

/// A protobuf `Duration` written as a string with an `s` suffix (`"0.250s"`, `"5s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub fn as_std(self) -> std::time::Duration {
        self.0
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

/// protobuf's range of a `google.protobuf.Duration`: ±10,000 years of seconds.
pub const MAX_PROTO_DURATION_SECONDS: i64 = 315_576_000_000;
/// Envoy's own bound on every duration of a config: its nanoseconds fit an int64, less a second.
pub const MAX_ENVOY_DURATION_SECONDS: i64 = 9_223_372_035;

/// Parse `"1.5s"`, `"0.250s"`, `"5s"` (proto3 JSON) into a duration, with Envoy's checks: the
/// grammar of protobuf's JSON parser (an integer part is required, at most 9 fractional digits),
/// then [`check_duration`].
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (seconds, nanos) = parse_proto_duration(s)?;
    check_duration(seconds, nanos)
}

/// The string form of a protobuf `Duration` as protobuf's JSON parser reads it: signed seconds
/// and nanoseconds (the sign applies to both).
fn parse_proto_duration(s: &str) -> Result<(i64, i64), String> {
    let bad = || {
        format!("invalid duration \"{s}\": expected seconds with an \"s\" suffix, e.g. \"0.250s\"")
    };
    let num = s.strip_suffix('s').ok_or_else(bad)?;
    let (negative, num) = match num.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, num),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f) || f.len() > 9) {
        return Err(bad());
    }
    let out_of_range = || format!("invalid duration \"{s}\": duration out of range");
    let seconds: i64 = int.parse().map_err(|_| out_of_range())?;
    if seconds > MAX_PROTO_DURATION_SECONDS {
        return Err(out_of_range());
    }
    let nanos: i64 = match frac {
        Some(f) => format!("{f:0<9}").parse().map_err(|_| bad())?,
        None => 0,
    };
    Ok(if negative {
        (-seconds, -nanos)
    } else {
        (seconds, nanos)
    })
}

/// Envoy's checks of every `Duration` in a config (after protobuf's parse), in Envoy's order and
/// words: non-negative, within protobuf's range, within Envoy's bound.
pub fn check_duration(seconds: i64, nanos: i64) -> Result<std::time::Duration, String> {
    if seconds < 0 || nanos < 0 {
        return Err("Invalid duration: Expected positive duration".into());
    }
    if seconds > MAX_PROTO_DURATION_SECONDS || nanos > 999_999_999 {
        return Err("Invalid duration: Duration out-of-range according to Protobuf".into());
    }
    if seconds > MAX_ENVOY_DURATION_SECONDS {
        return Err("Invalid duration: Duration out-of-range".into());
    }
    // Both are in range now: no overflow is possible.
    Ok(std::time::Duration::new(seconds as u64, nanos as u32))
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => {
                parse_duration(&s).map(Duration).map_err(D::Error::custom)
            }
            serde_json::Value::Object(map) => {
                // The message form `{seconds, nanos}` (int64 seconds, int32 nanos).
                let mut seconds: i64 = 0;
                let mut nanos: i64 = 0;
                for (k, v) in &map {
                    match k.as_str() {
                        "seconds" => {
                            seconds = crate::de::integer_in_range::<i64>(v, "int64")
                                .map_err(|e| crate::de::nested_error("seconds", e))?
                        }
                        "nanos" => {
                            nanos = crate::de::integer_in_range::<i32>(v, "int32")
                                .map_err(|e| crate::de::nested_error("nanos", e))?
                                .into()
                        }
                        other => {
                            return Err(D::Error::custom(format!("unknown field \"{other}\"")))
                        }
                    }
                }
                check_duration(seconds, nanos)
                    .map(Duration)
                    .map_err(D::Error::custom)
            }
            other => Err(D::Error::custom(format!(
                "invalid duration {other}: expected a string with an \"s\" suffix, e.g. \"0.250s\""
            ))),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            let frac = format!("{:09}", d.subsec_nanos());
            s.serialize_str(&format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0')))
        }
    }
}

/// Where bytes come from (`envoy.config.core.v3.DataSource`): exactly one of the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
    /// Base64 in JSON/YAML, as proto3 `bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_bytes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_variable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_directory: Option<NotSupported>,
}

impl DataSource {
    /// Number of specifiers set (valid sources have exactly one).
    pub fn specifier_count(&self) -> usize {
        [
            self.filename.is_some(),
            self.inline_string.is_some(),
            self.inline_bytes.is_some(),
            self.environment_variable.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    /// Read the bytes.
    pub fn load(&self) -> Result<Vec<u8>, String> {
        if let Some(f) = &self.filename {
            return std::fs::read(f).map_err(|e| format!("cannot read \"{f}\": {e}"));
        }
        if let Some(s) = &self.inline_string {
            return Ok(s.as_bytes().to_vec());
        }
        if let Some(b) = &self.inline_bytes {
            return base64_decode(b).ok_or_else(|| "inline_bytes is not valid base64".to_string());
        }
        if let Some(v) = &self.environment_variable {
            return std::env::var(v)
                .map(String::into_bytes)
                .map_err(|_| format!("environment variable \"{v}\" is not set"));
        }
        Err(
            "data source has no filename, inline_string, inline_bytes or environment_variable"
                .into(),
        )
    }

    /// How `/certs` and logs name this source: the file path, or `<inline>`.
    pub fn display_path(&self) -> String {
        match &self.filename {
            Some(f) => f.clone(),
            None => "<inline>".to_string(),
        }
    }
}

/// Standard base64 (with or without padding), as proto3 JSON `bytes`.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' | b'\n' | b'\r' | b' ' => continue,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// `envoy.config.core.v3.Address`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_address: Option<SocketAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipe: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_internal_address: Option<NotSupported>,
}

/// `envoy.config.core.v3.SocketAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SocketAddress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<SocketProtocol>,
    pub address: String,
    #[serde(default)]
    pub port_value: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver_name: Option<NotSupported>,
    #[serde(default)]
    pub ipv4_compat: bool,
}

impl SocketAddress {
    /// The address as an IP socket address, when `address` is an IP literal.
    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self
            .address
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?;
        Some(SocketAddr::new(ip, u16::try_from(self.port_value).ok()?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SocketProtocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
}

/// `envoy.config.core.v3.HeaderValueOption`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOption {
    pub header: HeaderValue,
    /// Deprecated in favour of `append_action`, still widely used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_action: Option<HeaderAppendAction>,
    #[serde(default)]
    pub keep_empty_value: bool,
}

impl HeaderValueOption {
    /// The effective action: `append: true` or absent (Envoy's default for header mutations) appends.
    pub fn action(&self) -> HeaderAppendAction {
        match (self.append_action, self.append) {
            (Some(a), _) => a,
            (None, Some(false)) => HeaderAppendAction::OverwriteIfExistsOrAdd,
            (None, _) => HeaderAppendAction::AppendIfExistsOrAdd,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HeaderAppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

/// `envoy.type.matcher.v3.RegexMatcher`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google_re2: Option<serde_json::Value>,
    pub regex: String,
}

/// `envoy.type.matcher.v3.StringMatcher`: exactly one of the match fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<RegexMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<NotSupported>,
    #[serde(default)]
    pub ignore_case: bool,
}

/// The one pattern of a [`StringMatcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringPattern<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    Contains(&'a str),
    Regex(&'a str),
}

impl StringMatcher {
    pub fn pattern(&self) -> Option<StringPattern<'_>> {
        let mut found = None;
        let mut n = 0;
        if let Some(s) = &self.exact {
            found = Some(StringPattern::Exact(s));
            n += 1;
        }
        if let Some(s) = &self.prefix {
            found = Some(StringPattern::Prefix(s));
            n += 1;
        }
        if let Some(s) = &self.suffix {
            found = Some(StringPattern::Suffix(s));
            n += 1;
        }
        if let Some(s) = &self.contains {
            found = Some(StringPattern::Contains(s));
            n += 1;
        }
        if let Some(r) = &self.safe_regex {
            found = Some(StringPattern::Regex(&r.regex));
            n += 1;
        }
        if n == 1 {
            found
        } else {
            None
        }
    }
}

/// `envoy.type.matcher.v3.ListStringMatcher`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListStringMatcher {
    pub patterns: Vec<StringMatcher>,
}

/// `envoy.config.core.v3.Locality`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub sub_zone: String,
}

/// `envoy.config.core.v3.Node`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<Locality>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent_name: Option<String>,
}

/// `envoy.config.core.v3.TypedExtensionConfig`, with the config resolved to `T` by `@type`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TypedExtensionConfig<T> {
    pub name: String,
    pub typed_config: T,
}

/// `envoy.type.v3.FractionalPercent`-free `Percent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

/// Free-form metadata (`envoy.config.core.v3.Metadata`), kept as JSON.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    #[serde(default)]
    pub filter_metadata: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typed_filter_metadata: Option<NotSupported>,
}

/// `envoy.config.core.v3.Http1ProtocolOptions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http1ProtocolOptions {
    #[serde(default)]
    pub accept_http_10: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_host_for_http_10: Option<String>,
    #[serde(default)]
    pub allow_absolute_url: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_key_format: Option<NotSupported>,
    #[serde(default)]
    pub enable_trailers: bool,
    #[serde(default)]
    pub allow_chunked_length: bool,
}

/// `envoy.config.core.v3.Http2ProtocolOptions` (the subset sluice applies).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_stream_window_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_connection_window_size: Option<u32>,
    #[serde(default)]
    pub allow_connect: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_keepalive: Option<KeepaliveSettings>,
}

/// `envoy.config.core.v3.KeepaliveSettings`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HeadersWithUnderscoresAction {
    #[default]
    Allow,
    RejectRequest,
    DropHeader,
}

/// `envoy.config.core.v3.HttpProtocolOptions` (the "common" options).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommonHttpProtocolOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers_count: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_with_underscores_action: Option<HeadersWithUnderscoresAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("0.250s").unwrap(),
            std::time::Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("5s").unwrap(),
            std::time::Duration::from_secs(5)
        );
        assert_eq!(parse_duration("0s").unwrap(), std::time::Duration::ZERO);
        for bad in [
            "5",
            "s",
            "-1s",
            "1.2.3s",
            "abc",
            "1ms",
            "1.0000000001s",
            ".5s",
            "1.s",
            "+1s",
            "1e1s",
            "1 s",
            "-0.5s",
            "315576000001s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(
            parse_duration("01.50s").unwrap(),
            std::time::Duration::from_millis(1500)
        );
    }

    #[test]
    fn duration_serializes_like_protobuf_json() {
        let d = Duration(std::time::Duration::from_millis(250));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"0.25s\"");
        let d = Duration(std::time::Duration::from_secs(5));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"5s\"");
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert!(base64_decode("a$b").is_none());
    }

    #[test]
    fn string_matcher_needs_exactly_one_pattern() {
        let m = StringMatcher {
            exact: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(m.pattern(), Some(StringPattern::Exact("a")));
        let m = StringMatcher {
            exact: Some("a".into()),
            prefix: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(m.pattern(), None);
    }
}
