//! JSON as Envoy's admin prints it: pretty with a one-space indent (`{\n "key": value`), or
//! compact (`/stats?format=json`); `<` and `>` escaped as protobuf's JSON printer does; whole
//! floats without a fraction (`0`, not `0.0`).

use serde_json::Value;

/// Pretty form with a trailing newline, as every JSON admin endpoint but `/stats` ends.
pub fn pretty(v: &Value) -> String {
    let mut out = String::new();
    write(v, Some(0), &mut out);
    out.push('\n');
    out
}

/// Single-line form without spaces.
pub fn compact(v: &Value) -> String {
    let mut out = String::new();
    write(v, None, &mut out);
    out
}

fn indent(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push(' ');
    }
}

fn write(v: &Value, level: Option<usize>, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.is_f64() {
                out.push_str(&number(n.as_f64().unwrap_or(0.0)));
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Some(l) = level {
                    indent(out, l + 1);
                }
                write(item, level.map(|l| l + 1), out);
            }
            if let Some(l) = level {
                indent(out, l);
            }
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Some(l) = level {
                    indent(out, l + 1);
                }
                string(k, out);
                out.push(':');
                if level.is_some() {
                    out.push(' ');
                }
                write(item, level.map(|l| l + 1), out);
            }
            if let Some(l) = level {
                indent(out, l);
            }
            out.push('}');
        }
    }
}

/// A float as Envoy prints it in JSON: shortest round-trip digits, whole values without `.0`,
/// NaN as `null`.
pub fn number(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_string();
    }
    if f.fract() == 0.0 && f.abs() < 1e15 {
        return format!("{}", f as i64);
    }
    format!("{f}")
}

fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pretty_uses_one_space_and_envoy_escapes() {
        let v = json!({"certificates": [{"path": "<inline>", "n": 1, "f": 0.0, "e": [], "o": {}}]});
        assert_eq!(
            pretty(&v),
            "{\n \"certificates\": [\n  {\n   \"path\": \"\\u003cinline\\u003e\",\n   \"n\": 1,\n   \"f\": 0,\n   \"e\": [],\n   \"o\": {}\n  }\n ]\n}\n"
        );
        assert_eq!(pretty(&json!({"certificates": []})), "{\n \"certificates\": []\n}\n");
    }

    #[test]
    fn compact_has_no_spaces() {
        let v = json!({"stats": [{"name": "a", "value": 1}, {"x": [0.0, 1.05, null]}]});
        assert_eq!(compact(&v), r#"{"stats":[{"name":"a","value":1},{"x":[0,1.05,null]}]}"#);
        assert_eq!(number(f64::NAN), "null");
        assert_eq!(number(1033.3333333333333), "1033.3333333333333");
    }
}
