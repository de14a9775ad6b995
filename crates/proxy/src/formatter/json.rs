//! JSON as Envoy writes it in access logs and JSON local reply bodies: object keys sorted,
//! no spaces, numbers printed as C++'s shortest `std::to_chars` (`200`, `1.5`, `1e+05`), and
//! strings escaped in one of two ways:
//!
//! * valid UTF-8: `"` `\` `\b` `\f` `\n` `\r` `\t` escaped, other control characters as `\u00XX`,
//!   everything else (DEL, non-ASCII, `/`, U+2028) as is;
//! * anything else (a header value with obs-text bytes): every byte that is not printable
//!   ASCII, and `"` and `\`, as `\u00XX` — a tab too.

use serde_json::Value;

/// Append `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    if std::str::from_utf8(s).is_ok() {
        for &b in s {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0x08 => out.extend_from_slice(b"\\b"),
                0x0c => out.extend_from_slice(b"\\f"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..=0x1f => push_u00(out, b),
                _ => out.push(b),
            }
        }
    } else {
        for &b in s {
            match b {
                b'"' | b'\\' => push_u00(out, b),
                0x20..=0x7e => out.push(b),
                _ => push_u00(out, b),
            }
        }
    }
    out.push(b'"');
}

fn push_u00(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u00");
    out.push(HEX[(b >> 4) as usize]);
    out.push(HEX[(b & 0xf) as usize]);
}

/// Append a number the way Envoy writes one (C++'s shortest `std::to_chars`): the shorter of
/// the fixed and the scientific form that reads back as the same value, fixed on a tie (`200`,
/// `1.5`, `1e+15`, `1e-04`, `1e+05`, `12345678901234567168`).
pub fn write_number(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(format_number(v).as_bytes());
}

/// See [`write_number`].
pub fn format_number(v: f64) -> String {
    if v.is_nan() {
        return "\"NaN\"".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" }.to_string();
    }
    // Fixed: integers print their exact value, other numbers their shortest digits.
    let fixed = if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v}") };
    // Scientific, C style: at least two exponent digits, with a sign.
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let sci = format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.unsigned_abs());
    if sci.len() < fixed.len() {
        sci
    } else {
        fixed
    }
}

/// Append a JSON value with sorted keys and Envoy's number format.
pub fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(out, n.as_f64().unwrap_or(0.0)),
        Value::String(s) => write_str(out, s.as_bytes()),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k.as_bytes());
                out.push(b':');
                write_value(out, &map[k]);
            }
            out.push(b'}');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(bytes: &[u8]) -> String {
        let mut out = Vec::new();
        write_str(&mut out, bytes);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn numbers_print_like_protobuf() {
        for (v, want) in [
            (200.0, "200"),
            (1.5, "1.5"),
            (-3.0, "-3"),
            (-0.0, "-0"),
            (3.0, "3"),
            (0.1, "0.1"),
            (1e300, "1e+300"),
            (1e21, "1e+21"),
            (10000.0, "10000"),
            (100000.0, "1e+05"),
            (324.0, "324"),
            (12345678901234.0, "12345678901234"),
            (1e15, "1e+15"),
            (123456789012345.0, "123456789012345"),
            (1234567890123456.0, "1234567890123456"),
            (12345678901234567890.0, "12345678901234567168"),
            (0.0001, "1e-04"),
            (0.00001, "1e-05"),
            (0.001, "0.001"),
            (1.0 / 3.0, "0.3333333333333333"),
        ] {
            assert_eq!(format_number(v), want, "{v}");
        }
    }

    #[test]
    fn strings_escape_as_envoy() {
        assert_eq!(s("a\u{1}b\nc\"d\re\u{8}f\u{c}f\u{7f}g/h\u{2028}i\\j<>&'\t".as_bytes()), "\"a\\u0001b\\nc\\\"d\\re\\bf\\ff\u{7f}g/h\u{2028}i\\\\j<>&'\\t\"");
        assert_eq!(s("é".as_bytes()), "\"é\"");
        // Not UTF-8: every byte outside printable ASCII, and the quote and backslash, as \u00XX.
        assert_eq!(s(b"\xff\"\\\x7f\t\x01a\xc3\xa9"), "\"\\u00ff\\u0022\\u005c\\u007f\\u0009\\u0001a\\u00c3\\u00a9\"");
    }

    #[test]
    fn values_sort_keys() {
        let v: Value = serde_json::from_str(r#"{"z":1,"a":{"y":[true,null,2.5],"b":"x"}}"#).unwrap();
        let mut out = Vec::new();
        write_value(&mut out, &v);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":{"b":"x","y":[true,null,2.5]},"z":1}"#);
    }
}
