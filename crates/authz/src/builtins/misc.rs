//! Strings, arrays, objects and `net.*` builtins that regorus lacks or gets wrong.

use std::cmp::Ordering;
use std::net::IpAddr;

use anyhow::{bail, Result};
use ipnet::IpNet;
use regorus::Value;

use super::args::{collection, int, string, type_name};
use super::Def;

pub(crate) fn defs(v: &mut Vec<Def>) {
    v.push(Def { name: "strings.count", arity: 2, f: strings_count });
    v.push(Def { name: "strings.split_n", arity: 3, f: strings_split_n });
    v.push(Def { name: "array.flatten", arity: 1, f: array_flatten });
    v.push(Def { name: "object.subset", arity: 2, f: object_subset });
    v.push(Def { name: "net.cidr_intersects", arity: 2, f: cidr_intersects });
    v.push(Def { name: "net.cidr_contains_matches", arity: 2, f: cidr_contains_matches });
    v.push(Def { name: "net.cidr_merge", arity: 1, f: cidr_merge });
    v.push(Def { name: "numbers.range", arity: 2, f: numbers_range });
    v.push(Def { name: "numbers.range_step", arity: 3, f: numbers_range_step });
    v.push(Def { name: "bits.lsh", arity: 2, f: bits_lsh });
    v.push(Def { name: "regex.template_match", arity: 4, f: template_match });
    v.push(Def { name: "glob.quote_meta", arity: 1, f: glob_quote_meta });
    v.push(Def { name: "upper", arity: 1, f: upper });
    v.push(Def { name: "sort", arity: 1, f: sort });
    v.push(Def { name: "json.match_schema", arity: 2, f: json_match_schema });
    v.push(Def { name: "strings.replace_n", arity: 2, f: strings_replace_n });
    v.push(Def { name: "json.marshal", arity: 1, f: json_marshal });
    v.push(Def { name: "lower", arity: 1, f: lower });
    v.push(Def { name: "trace", arity: 1, f: trace });
    // Deprecated builtins that OPA still provides (v0 policies use them).
    v.push(Def { name: "re_match", arity: 2, f: re_match });
    v.push(Def { name: "net.cidr_overlap", arity: 2, f: cidr_overlap });
    v.push(Def { name: "set_diff", arity: 2, f: set_diff });
    v.push(Def { name: "any", arity: 1, f: |a| any_all(a, true) });
    v.push(Def { name: "all", arity: 1, f: |a| any_all(a, false) });
    v.push(Def { name: "cast_array", arity: 1, f: cast_array });
    v.push(Def { name: "cast_set", arity: 1, f: cast_set });
    v.push(Def { name: "cast_string", arity: 1, f: |a| cast_same(a, "string", |v| matches!(v, Value::String(_))) });
    v.push(Def { name: "cast_boolean", arity: 1, f: |a| cast_same(a, "boolean", |v| matches!(v, Value::Bool(_))) });
    v.push(Def { name: "cast_null", arity: 1, f: |a| cast_same(a, "null", |v| matches!(v, Value::Null)) });
    v.push(Def { name: "cast_object", arity: 1, f: |a| cast_same(a, "object", |v| matches!(v, Value::Object(_))) });
}

fn re_match(a: &[Value]) -> Result<Value> {
    let pattern = string(a, 0, "re_match")?;
    let value = string(a, 1, "re_match")?;
    let re = regex::Regex::new(pattern).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Value::Bool(re.is_match(value)))
}

fn cidr_overlap(a: &[Value]) -> Result<Value> {
    let net = parse_cidr(string(a, 0, "net.cidr_overlap")?)?;
    let x = string(a, 1, "net.cidr_overlap")?;
    let Some(other) = parse_cidr_or_ip(x) else { bail!("invalid CIDR address: {x}") };
    Ok(Value::Bool(net.contains(&other.network()) && net.contains(&other.broadcast())))
}

fn set_diff(a: &[Value]) -> Result<Value> {
    match (&a[0], &a[1]) {
        (Value::Set(x), Value::Set(y)) => Ok(Value::from(x.iter().filter(|v| !y.contains(v)).cloned().collect::<std::collections::BTreeSet<_>>())),
        (x, y) => bail!("operands must be sets, got {} and {}", type_name(x), type_name(y)),
    }
}

fn any_all(a: &[Value], any: bool) -> Result<Value> {
    let items = collection(a, 0)?;
    let t = Value::Bool(true);
    Ok(Value::Bool(if any { items.contains(&t) } else { items.iter().all(|x| *x == t) }))
}

fn cast_array(a: &[Value]) -> Result<Value> {
    match &a[0] {
        Value::Array(_) => Ok(a[0].clone()),
        Value::Set(s) => Ok(Value::from(s.iter().cloned().collect::<Vec<_>>())),
        v => bail!("operand 1 must be one of {{array, set}} but got {}", type_name(v)),
    }
}

fn cast_set(a: &[Value]) -> Result<Value> {
    match &a[0] {
        Value::Set(_) => Ok(a[0].clone()),
        Value::Array(x) => Ok(Value::from(x.iter().cloned().collect::<std::collections::BTreeSet<_>>())),
        v => bail!("operand 1 must be one of {{array, set}} but got {}", type_name(v)),
    }
}

fn cast_same(a: &[Value], want: &str, ok: fn(&Value) -> bool) -> Result<Value> {
    if ok(&a[0]) {
        Ok(a[0].clone())
    } else {
        bail!("operand 1 must be {want} but got {}", type_name(&a[0]))
    }
}

/// `regex.template_match(template, value, start, end)`: the template's literal parts must
/// match the value exactly and each `{…}` part must match the regex between the delimiters.
/// (regorus slices the value by the template's offsets and panics when it is shorter.)
fn template_match(a: &[Value]) -> Result<Value> {
    let mut template = string(a, 0, "regex.template_match")?;
    let mut value = string(a, 1, "regex.template_match")?;
    let ds = string(a, 2, "regex.template_match")?;
    let de = string(a, 3, "regex.template_match")?;
    if ds.is_empty() || de.is_empty() {
        bail!("delimiters must not be empty");
    }
    while let (Some(start), Some(end)) = (template.find(ds), template.find(de)) {
        if start >= end {
            bail!("unbalanced delimiters in template {template:?}");
        }
        let literal = &template[..start];
        let Some(rest) = value.strip_prefix(literal) else { return Ok(Value::Bool(false)) };
        let pattern = &template[start + ds.len()..end];
        let re = regex::Regex::new(&format!("^(?:{pattern})")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(m) = re.find(rest) else { return Ok(Value::Bool(false)) };
        value = &rest[m.end()..];
        template = &template[end + de.len()..];
    }
    Ok(Value::Bool(template == value))
}

/// Go glob's `QuoteMeta`: every special character escaped.
fn glob_quote_meta(a: &[Value]) -> Result<Value> {
    let s = string(a, 0, "glob.quote_meta")?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "*?[]{}\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(Value::from(out))
}

/// Go's `strings.ToUpper`: simple (one character to one character) case mapping.
/// OPA's order of values of different types (`ast.Compare`): null, booleans, numbers,
/// strings, arrays, objects, sets. regorus orders sets before objects.
fn type_rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
        Value::Set(_) => 6,
        Value::Undefined => 7,
    }
}

/// OPA's total order on values: by type first, then arrays element-wise, objects by their
/// sorted keys and those keys' values, sets by their sorted elements, shorter first on a tie.
pub(crate) fn opa_cmp(a: &Value, b: &Value) -> Ordering {
    fn seq<'a>(x: impl Iterator<Item = &'a Value>, y: impl Iterator<Item = &'a Value>) -> Ordering {
        let (mut x, mut y) = (x, y);
        loop {
            match (x.next(), y.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some(p), Some(q)) => match opa_cmp(p, q) {
                    Ordering::Equal => {}
                    o => return o,
                },
            }
        }
    }
    fn sorted<'a>(it: impl Iterator<Item = &'a Value>) -> Vec<&'a Value> {
        let mut v: Vec<&Value> = it.collect();
        v.sort_by(|p, q| opa_cmp(p, q));
        v
    }
    match type_rank(a).cmp(&type_rank(b)) {
        Ordering::Equal => {}
        o => return o,
    }
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => seq(x.iter(), y.iter()),
        (Value::Set(x), Value::Set(y)) => seq(sorted(x.iter()).into_iter(), sorted(y.iter()).into_iter()),
        (Value::Object(x), Value::Object(y)) => {
            let kx = sorted(x.keys());
            let ky = sorted(y.keys());
            for (p, q) in kx.iter().zip(ky.iter()) {
                match opa_cmp(p, q) {
                    Ordering::Equal => {}
                    o => return o,
                }
                match opa_cmp(x.get(p).unwrap_or(&Value::Undefined), y.get(q).unwrap_or(&Value::Undefined)) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            kx.len().cmp(&ky.len())
        }
        _ => a.cmp(b),
    }
}

/// `strings.replace_n(patterns, s)`: Go's `strings.NewReplacer` over the patterns in key order,
/// as OPA does: one pass over `s`, at each position the first pattern (in key order) that
/// matches there is replaced and the text after it is scanned next, so replacements are never
/// replaced again (regorus applied the patterns one after another: `{"a": "b", "b": "c"}` made
/// "ab" into "cc" where OPA gives "bc"). An empty pattern matches once between characters.
fn strings_replace_n(a: &[Value]) -> Result<Value> {
    let patterns = match a.first() {
        Some(Value::Object(o)) => o,
        Some(v) => bail!("operand 1 must be object but got {}", type_name(v)),
        None => bail!("missing operand 1"),
    };
    let s = string(a, 1, "strings.replace_n")?;
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(patterns.len());
    for (k, v) in patterns.iter() {
        match (k, v) {
            (Value::String(k), Value::String(v)) => pairs.push((k, v)),
            (Value::String(_), other) => bail!("operand 1 must be object[string: string] but got value of type {}", type_name(other)),
            (other, _) => bail!("operand 1 must be object[string: string] but got key of type {}", type_name(other)),
        }
    }
    let empty = pairs.iter().find(|(k, _)| k.is_empty()).map(|(_, v)| *v);
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut after_empty = false;
    while i <= s.len() {
        let rest = &s[i..];
        if !after_empty {
            if let Some(new) = empty.filter(|_| pairs.first().is_some_and(|(k, _)| k.is_empty())) {
                out.push_str(new);
                after_empty = true;
                continue;
            }
        }
        after_empty = false;
        if let Some((old, new)) = pairs.iter().find(|(k, _)| !k.is_empty() && rest.starts_with(*k)) {
            out.push_str(new);
            i += old.len();
            continue;
        }
        match rest.chars().next() {
            Some(c) => {
                out.push(c);
                i += c.len_utf8();
            }
            None => break,
        }
    }
    Ok(Value::from(out))
}

/// `json.match_schema(document, schema)` with OPA's result shape: `[true, []]`, or `[false,
/// errors]` where each error is gojsonschema's `{"desc", "error", "field", "type"}` (regorus
/// answered the validator's message as one string). A string operand is JSON text. The field is
/// the instance path joined with dots, `(Root)` for the document itself; `type` and `desc` follow
/// gojsonschema for `type` and `required` violations, and for other keywords are the keyword's
/// name and the validator's message. Several errors come in the validator's order, which can
/// differ from gojsonschema's.
fn json_match_schema(a: &[Value]) -> Result<Value> {
    fn operand(a: &[Value], i: usize) -> Result<serde_json::Value> {
        match a.get(i) {
            Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| anyhow::anyhow!("operand {}: invalid JSON: {e}", i + 1)),
            Some(v @ Value::Object(_)) => Ok(serde_json::to_value(v)?),
            Some(v) => bail!("operand {} must be one of {{object, string}} but got {}", i + 1, type_name(v)),
            None => bail!("missing operand {}", i + 1),
        }
    }
    fn given(v: &serde_json::Value) -> &'static str {
        match v {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "boolean",
            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
            serde_json::Value::Number(_) => "number",
            serde_json::Value::String(_) => "string",
            serde_json::Value::Array(_) => "array",
            serde_json::Value::Object(_) => "object",
        }
    }
    let document = operand(a, 0)?;
    let schema = operand(a, 1)?;
    let validator = jsonschema::validator_for(&schema).map_err(|e| anyhow::anyhow!("invalid schema: {e}"))?;
    let mut errors = Vec::new();
    for e in validator.iter_errors(&document) {
        let pointer = e.instance_path().as_str();
        let segments: Vec<String> = pointer.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
        let field = if segments.is_empty() { "(Root)".to_string() } else { segments.join(".") };
        let instance = document.pointer(pointer).unwrap_or(&serde_json::Value::Null);
        let (kind, desc) = match e.kind() {
            jsonschema::error::ValidationErrorKind::Type { kind: jsonschema::error::TypeKind::Single(t) } => {
                ("invalid_type".to_string(), format!("Invalid type. Expected: {t}, given: {}", given(instance)))
            }
            jsonschema::error::ValidationErrorKind::Required { property } => {
                let name = property.as_str().map(str::to_string).unwrap_or_else(|| property.to_string());
                ("required".to_string(), format!("{name} is required"))
            }
            other => (other.keyword().to_string(), e.to_string()),
        };
        let mut o = std::collections::BTreeMap::new();
        o.insert(Value::from("desc"), Value::from(desc.clone()));
        o.insert(Value::from("error"), Value::from(format!("{field}: {desc}")));
        o.insert(Value::from("field"), Value::from(field));
        o.insert(Value::from("type"), Value::from(kind));
        errors.push(Value::from(o));
    }
    Ok(Value::from(vec![Value::Bool(errors.is_empty()), Value::from(errors)]))
}

/// `sort`: in OPA's order of values (regorus' order puts sets before objects).
fn sort(a: &[Value]) -> Result<Value> {
    let mut v = collection(a, 0)?;
    v.sort_by(opa_cmp);
    Ok(Value::from(v))
}

/// `json.marshal`: regorus writes numbers through serde_json without arbitrary precision, so an
/// integer beyond 64 bits became the nearest double (`1.2345678901234568e+29`); OPA writes its
/// digits. regorus also left `<`, `>` and `&` as they are, where Go's encoder (and so OPA)
/// escapes them as `\u003c`, `\u003e`, `\u0026`. Otherwise written as regorus does (compact,
/// object keys sorted, sets as arrays).
fn json_marshal(a: &[Value]) -> Result<Value> {
    fn write(v: &Value, out: &mut String) -> Result<()> {
        match v {
            Value::Number(n) => {
                let d = n.format_decimal();
                let exact_int = !d.is_empty() && d.trim_start_matches('-').bytes().all(|c| c.is_ascii_digit());
                if exact_int && d.parse::<i64>().is_err() && d.parse::<u64>().is_err() {
                    out.push_str(&d);
                } else {
                    out.push_str(&serde_json::to_string(v)?);
                }
            }
            Value::Array(x) => write_list(x.iter(), out)?,
            Value::Set(x) => write_list(x.iter(), out)?,
            Value::Object(o) => {
                out.push('{');
                for (i, (k, e)) in o.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    match k {
                        Value::String(_) => out.push_str(&serde_json::to_string(k)?),
                        other => {
                            let mut inner = String::new();
                            write(other, &mut inner)?;
                            out.push_str(&serde_json::to_string(&inner)?);
                        }
                    }
                    out.push(':');
                    write(e, out)?;
                }
                out.push('}');
            }
            Value::Undefined => bail!("json.marshal: undefined value"),
            other => out.push_str(&serde_json::to_string(other)?),
        }
        Ok(())
    }
    /// An array, or a set (written as an array, as OPA does).
    fn write_list<'v>(items: impl Iterator<Item = &'v Value>, out: &mut String) -> Result<()> {
        out.push('[');
        for (i, e) in items.enumerate() {
            if i > 0 {
                out.push(',');
            }
            write(e, out)?;
        }
        out.push(']');
        Ok(())
    }
    let v = a.first().ok_or_else(|| anyhow::anyhow!("missing operand 1"))?;
    let mut out = String::new();
    write(v, &mut out)?;
    Ok(Value::from(crate::decision_log::go_html_escape(out)))
}

fn upper(a: &[Value]) -> Result<Value> {
    let s = string(a, 0, "upper")?;
    Ok(Value::from(
        s.chars()
            .map(|c| {
                let mut u = c.to_uppercase();
                match (u.next(), u.next()) {
                    (Some(x), None) => x,
                    _ => c,
                }
            })
            .collect::<String>(),
    ))
}

/// Go's `strings.ToLower`.
fn lower(a: &[Value]) -> Result<Value> {
    let s = string(a, 0, "lower")?;
    Ok(Value::from(s.chars().map(|c| c.to_lowercase().next().unwrap_or(c)).collect::<String>()))
}

/// `trace(msg)` is true (sluice does not collect query explanations).
fn trace(a: &[Value]) -> Result<Value> {
    string(a, 0, "trace")?;
    Ok(Value::Bool(true))
}

/// Most elements a builtin may create from small arguments (regorus allocates the whole range
/// up front: `numbers.range(0, 1e17)` aborted the process).
pub const MAX_ELEMENTS: i64 = 1 << 20;
/// Largest left shift, in bits.
pub const MAX_SHIFT: i64 = 1024;

fn range_impl(name: &str, a: &[Value], step: i64) -> Result<Value> {
    let from = int(a, 0)?;
    let to = int(a, 1)?;
    if step <= 0 {
        bail!("step must be a positive integer");
    }
    let n = (i128::from(to) - i128::from(from)).unsigned_abs() / step as u128 + 1;
    if n > MAX_ELEMENTS as u128 {
        bail!(super::LimitExceeded(format!("{name}: the result would have {n} elements, more than sluice's limit of {MAX_ELEMENTS}")));
    }
    let mut out = Vec::with_capacity(n as usize);
    let mut v = i128::from(from);
    let (end, dir) = (i128::from(to), if to >= from { 1i128 } else { -1 });
    while (dir > 0 && v <= end) || (dir < 0 && v >= end) {
        out.push(Value::from(v as i64));
        v += dir * i128::from(step);
    }
    Ok(Value::from(out))
}

fn numbers_range(a: &[Value]) -> Result<Value> {
    range_impl("numbers.range", a, 1)
}

fn numbers_range_step(a: &[Value]) -> Result<Value> {
    let step = int(a, 2)?;
    range_impl("numbers.range_step", a, step)
}

fn bits_lsh(a: &[Value]) -> Result<Value> {
    let x = int(a, 0)?;
    let n = int(a, 1)?;
    if n < 0 {
        bail!("must be an unsigned integer number but got a negative integer");
    }
    if n > MAX_SHIFT {
        bail!(super::LimitExceeded(format!("bits.lsh: shift by {n} bits is more than sluice's limit of {MAX_SHIFT}")));
    }
    // Exact for results that fit in 127 bits; beyond that, through the number's decimal text.
    if n < 127 && (i128::from(x) << n) >> n == i128::from(x) {
        let r = i128::from(x) << n;
        return Ok(Value::from(r));
    }
    let shifted = num_shift(x, n as u32);
    Value::from_json_str(&shifted)
}

/// `x << n` as decimal text, by repeated doubling of a decimal digit string.
fn num_shift(x: i64, n: u32) -> String {
    let neg = x < 0;
    let mut digits: Vec<u8> = x.unsigned_abs().to_string().bytes().rev().map(|b| b - b'0').collect();
    for _ in 0..n {
        let mut carry = 0;
        for d in digits.iter_mut() {
            let v = *d * 2 + carry;
            *d = v % 10;
            carry = v / 10;
        }
        if carry > 0 {
            digits.push(carry);
        }
    }
    let s: String = digits.iter().rev().map(|d| (b'0' + d) as char).collect();
    if neg { format!("-{s}") } else { s }
}

/// Go's `strings.Count`: non-overlapping occurrences; an empty substring counts the places
/// between characters (characters + 1). regorus counts overlapping windows and panics on "".
fn strings_count(a: &[Value]) -> Result<Value> {
    let s = string(a, 0, "strings.count")?;
    let sub = string(a, 1, "strings.count")?;
    let n = if sub.is_empty() { s.chars().count() + 1 } else { s.matches(sub).count() };
    Ok(Value::from(n as u64))
}

/// Go's `strings.Split` (an empty separator splits into characters).
fn go_split<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    if sep.is_empty() {
        s.char_indices().map(|(i, c)| &s[i..i + c.len_utf8()]).collect()
    } else {
        s.split(sep).collect()
    }
}

/// OPA's `strings.split_n(s, sep, n)`: the first `n` parts of the split (`n < 0`: the last `-n`).
fn strings_split_n(a: &[Value]) -> Result<Value> {
    let s = string(a, 0, "strings.split_n")?;
    let sep = string(a, 1, "strings.split_n")?;
    let n = int(a, 2)?;
    let parts = go_split(s, sep);
    let len = parts.len() as i64;
    let (from, to) = if n >= 0 { (0, n.min(len)) } else { ((len + n).max(0), len) };
    Ok(Value::from(parts[from as usize..to as usize].iter().map(|p| Value::from(*p)).collect::<Vec<_>>()))
}

/// One level of nested arrays flattened into the outer array.
fn array_flatten(a: &[Value]) -> Result<Value> {
    let Some(Value::Array(items)) = a.first() else {
        bail!("operand 1 must be array but got {}", a.first().map(type_name).unwrap_or("nothing"))
    };
    let mut out = Vec::new();
    for x in items.iter() {
        match x {
            Value::Array(inner) => out.extend(inner.iter().cloned()),
            other => out.push(other.clone()),
        }
    }
    Ok(Value::from(out))
}

fn is_subset(sup: &Value, sub: &Value) -> bool {
    match (sup, sub) {
        (Value::Object(sup), Value::Object(sub)) => {
            sub.iter().all(|(k, vsub)| sup.get(k).is_some_and(|vsup| is_subset(vsup, vsub)))
        }
        (Value::Set(sup), Value::Set(sub)) => sub.is_subset(sup),
        (Value::Array(sup), Value::Array(sub)) => {
            sub.is_empty() || sup.as_slice().windows(sub.len()).any(|w| w == sub.as_slice())
        }
        (Value::Array(sup), Value::Set(sub)) => sub.iter().all(|x| sup.contains(x)),
        (sup, sub) => sup == sub,
    }
}

/// `object.subset`; regorus panics on an empty sub-array.
fn object_subset(a: &[Value]) -> Result<Value> {
    let (sup, sub) = (&a[0], &a[1]);
    let ok = matches!(
        (sup, sub),
        (Value::Object(_), Value::Object(_)) | (Value::Set(_), Value::Set(_)) | (Value::Array(_), Value::Array(_) | Value::Set(_))
    );
    if !ok {
        bail!("both arguments must be objects, sets, or arrays (or an array and a set), got {} and {}", type_name(sup), type_name(sub));
    }
    Ok(Value::Bool(is_subset(sup, sub)))
}

fn parse_cidr(s: &str) -> Result<IpNet> {
    s.parse::<IpNet>().map_err(|_| anyhow::anyhow!("invalid CIDR address: {s}"))
}

/// A CIDR or a plain address (a host network).
fn parse_cidr_or_ip(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn cidr_intersects(a: &[Value]) -> Result<Value> {
    let x = parse_cidr(string(a, 0, "net.cidr_intersects")?)?;
    let y = parse_cidr(string(a, 1, "net.cidr_intersects")?)?;
    let meet = match (x, y) {
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => {
            x.contains(&y.network()) || y.contains(&x.network())
        }
        _ => false,
    };
    Ok(Value::Bool(meet))
}

/// `(key, cidr-or-address)` pairs of an operand of `net.cidr_contains_matches`: a string, an
/// array or set (keys are indices / the elements), or an object; an element may itself be an
/// array whose first element is the address.
fn keyed(v: &Value, which: usize) -> Result<Vec<(Value, String)>> {
    fn addr(x: &Value, which: usize) -> Result<String> {
        match x {
            Value::String(s) => Ok(s.to_string()),
            Value::Array(a) => match a.first() {
                Some(Value::String(s)) => Ok(s.to_string()),
                _ => bail!("operand {which}: array elements must start with a string"),
            },
            other => bail!("operand {which}: unexpected {}", type_name(other)),
        }
    }
    Ok(match v {
        Value::String(s) => vec![(v.clone(), s.to_string())],
        Value::Array(a) => a.iter().enumerate().map(|(i, x)| Ok((Value::from(i as u64), addr(x, which)?))).collect::<Result<_>>()?,
        Value::Set(s) => s.iter().map(|x| Ok((x.clone(), addr(x, which)?))).collect::<Result<_>>()?,
        Value::Object(o) => o.iter().map(|(k, x)| Ok((k.clone(), addr(x, which)?))).collect::<Result<_>>()?,
        other => bail!("operand {which} must be one of {{string, array, set, object}} but got {}", type_name(other)),
    })
}

fn cidr_contains_matches(a: &[Value]) -> Result<Value> {
    let cidrs = keyed(&a[0], 1)?;
    let addrs = keyed(&a[1], 2)?;
    let mut out = std::collections::BTreeSet::new();
    for (ck, c) in &cidrs {
        let net = parse_cidr(c)?;
        for (ak, x) in &addrs {
            let Some(other) = parse_cidr_or_ip(x) else { bail!("invalid CIDR address: {x}") };
            let inside = match (net, other) {
                (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_)) => {
                    net.contains(&other.network()) && net.contains(&other.broadcast())
                }
                _ => false,
            };
            if inside {
                out.insert(Value::from(vec![ck.clone(), ak.clone()]));
            }
        }
    }
    Ok(Value::from(out))
}

/// Go's `net.IP.DefaultMask` prefix for a plain IPv4 address (classful).
fn default_prefix(ip: std::net::Ipv4Addr) -> Option<u8> {
    match ip.octets()[0] {
        0..=127 => Some(8),
        128..=191 => Some(16),
        192..=223 => Some(24),
        _ => None,
    }
}

fn cidr_merge(a: &[Value]) -> Result<Value> {
    let items = collection(a, 0)?;
    let mut nets = Vec::new();
    let mut plain = Vec::new();
    for x in &items {
        let Value::String(s) = x else { bail!("operand 1: elements must be strings, got {}", type_name(x)) };
        if let Ok(n) = s.parse::<IpNet>() {
            nets.push(n.trunc());
        } else if let Ok(ip) = s.parse::<IpAddr>() {
            // OPA keeps a plain address with its default (classful) mask, unmasked.
            match ip {
                IpAddr::V4(v4) => match default_prefix(v4) {
                    Some(p) => plain.push(format!("{v4}/{p}")),
                    None => bail!("IP address {s} has no default mask"),
                },
                IpAddr::V6(v6) => nets.push(IpNet::from(IpAddr::V6(v6))),
            }
        } else {
            bail!("invalid CIDR address: {s}");
        }
    }
    let mut out: Vec<String> = IpNet::aggregate(&nets).into_iter().map(|n| n.to_string()).collect();
    out.extend(plain);
    out.sort_by_key(|x| sort_key(x));
    Ok(Value::from(out.into_iter().map(Value::from).collect::<Vec<_>>()))
}

fn sort_key(s: &str) -> (u8, Vec<u8>, String) {
    let ip = s.split('/').next().unwrap_or(s);
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v)) => (0, v.octets().to_vec(), s.to_string()),
        Ok(IpAddr::V6(v)) => (1, v.octets().to_vec(), s.to_string()),
        Err(_) => (2, vec![], s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn opa_order_of_types_and_containers() {
        let j = |t: &str| Value::from_json_str(t).unwrap();
        let set = |v: Vec<Value>| Value::from(v.into_iter().collect::<std::collections::BTreeSet<_>>());
        // Objects before sets (regorus puts sets first), every type in OPA's rank.
        let sorted = sort(&[Value::from(vec![set(vec![j("2")]), j(r#"{"a":1}"#), j("[1]"), j(r#""s""#), j("1"), j("false"), j("null")])]).unwrap();
        assert_eq!(sorted, Value::from(vec![j("null"), j("false"), j("1"), j(r#""s""#), j("[1]"), j(r#"{"a":1}"#), set(vec![j("2")])]));
        // Within a type: arrays element-wise then shorter first; objects by sorted keys, then values.
        assert_eq!(opa_cmp(&j("[1,2]"), &j("[1,2,0]")), Ordering::Less);
        assert_eq!(opa_cmp(&j("[2]"), &j("[1,9]")), Ordering::Greater);
        assert_eq!(opa_cmp(&j(r#"{"a":2}"#), &j(r#"{"a":1,"b":0}"#)), Ordering::Greater);
        assert_eq!(opa_cmp(&j(r#"{"a":1}"#), &j(r#"{"a":1,"b":0}"#)), Ordering::Less);
        // Sets compare by their elements in OPA's order: {{"a":1}} < {{2}} because objects rank lower.
        assert_eq!(opa_cmp(&set(vec![j(r#"{"a":1}"#)]), &set(vec![set(vec![j("2")])])), Ordering::Less);
        assert!(sort(&[s("x")]).is_err());
    }

    #[test]
    fn replace_n_is_one_pass_like_go_replacer() {
        let j = |t: &str| Value::from_json_str(t).unwrap();
        let r = |p: &str, x: &str| strings_replace_n(&[j(p), s(x)]).unwrap();
        assert_eq!(r(r#"{"a":"b","b":"c"}"#, "ab"), s("bc"));
        // The first key (in order) matching at a position wins, not the longest.
        assert_eq!(r(r#"{"a":"1","ab":"2"}"#, "abab"), s("1b1b"));
        assert_eq!(r(r#"{"é":"e","ll":"L"}"#, "héllo"), s("heLo"));
        assert_eq!(r(r#"{"":"-"}"#, "ab"), s("-a-b-"));
        assert_eq!(r(r#"{}"#, "ab"), s("ab"));
        assert!(strings_replace_n(&[j(r#"{"a":1}"#), s("a")]).is_err());
        assert!(strings_replace_n(&[s("x"), s("a")]).is_err());
    }

    #[test]
    fn match_schema_errors_have_gojsonschema_shape() {
        let j = |t: &str| Value::from_json_str(t).unwrap();
        let schema = j(r#"{"type":"object","required":["a"],"properties":{"b":{"type":"object","properties":{"c":{"type":"integer"}}},"l":{"type":"array","items":{"type":"integer"}}}}"#);
        let r = json_match_schema(&[j(r#"{"b":{"c":1.5},"l":[1,"x"]}"#), schema.clone()]).unwrap();
        let want = j(r#"[false, [
            {"desc":"a is required","error":"(Root): a is required","field":"(Root)","type":"required"},
            {"desc":"Invalid type. Expected: integer, given: number","error":"b.c: Invalid type. Expected: integer, given: number","field":"b.c","type":"invalid_type"},
            {"desc":"Invalid type. Expected: integer, given: string","error":"l.1: Invalid type. Expected: integer, given: string","field":"l.1","type":"invalid_type"}]]"#);
        let (Value::Array(got), Value::Array(w)) = (&r, &want) else { panic!() };
        assert_eq!(got[0], w[0]);
        let mut g: Vec<Value> = got[1].as_array().unwrap().iter().cloned().collect();
        g.sort();
        let mut w1: Vec<Value> = w[1].as_array().unwrap().iter().cloned().collect();
        w1.sort();
        assert_eq!(g, w1);
        // Valid: [true, []]; JSON text operands are parsed; a bad schema is an error.
        assert_eq!(json_match_schema(&[s(r#"{"a":1}"#), schema.clone()]).unwrap(), j("[true, []]"));
        assert!(json_match_schema(&[j("{}"), j(r#"{"type":7}"#)]).is_err());
        assert!(json_match_schema(&[j("5"), schema]).is_err());
    }

    #[test]
    fn json_marshal_writes_wide_integers_exactly() {
        let j = |t: &str| Value::from_json_str(t).unwrap();
        let big = Value::from_numeric_string("123456789012345678901234567890").unwrap();
        let arr = Value::from(vec![big.clone(), j("1"), j("1.5"), j(r#""a<b""#), j("null")]);
        assert_eq!(json_marshal(&[big]).unwrap(), s("123456789012345678901234567890"));
        assert_eq!(json_marshal(&[arr]).unwrap(), s(r#"[123456789012345678901234567890,1,1.5,"a\u003cb",null]"#));
        assert_eq!(json_marshal(&[j(r#"{"b":{"c":[true]},"a":18446744073709551615}"#)]).unwrap(), s(r#"{"a":18446744073709551615,"b":{"c":[true]}}"#));
    }

    #[test]
    fn deprecated_builtins() {
        assert_eq!(re_match(&[s("^a+$"), s("aaa")]).unwrap(), Value::Bool(true));
        assert_eq!(cidr_overlap(&[s("10.0.0.0/8"), s("10.1.2.3")]).unwrap(), Value::Bool(true));
        let set = |v: Vec<u64>| Value::from(v.into_iter().map(Value::from).collect::<std::collections::BTreeSet<_>>());
        assert_eq!(set_diff(&[set(vec![1, 2, 3]), set(vec![2])]).unwrap(), set(vec![1, 3]));
        assert_eq!(any_all(&[Value::from(vec![Value::Bool(false), Value::Bool(true)])], true).unwrap(), Value::Bool(true));
        assert_eq!(any_all(&[Value::from(vec![Value::Bool(false), Value::Bool(true)])], false).unwrap(), Value::Bool(false));
        assert!(cast_array(&[s("x")]).is_err());
        assert_eq!(cast_array(&[set(vec![2, 1])]).unwrap(), Value::from(vec![Value::from(1u64), Value::from(2u64)]));
    }

    #[test]
    fn strings_count_like_go() {
        assert_eq!(strings_count(&[s("dummy"), s("")]).unwrap(), Value::from(6u64));
        assert_eq!(strings_count(&[s("héllo"), s("")]).unwrap(), Value::from(6u64));
        assert_eq!(strings_count(&[s("aaaa"), s("aa")]).unwrap(), Value::from(2u64));
        assert!(strings_count(&[s("a"), Value::from(1u64)]).is_err());
    }

    #[test]
    fn split_n_takes_parts_from_either_end() {
        let j = |v: Value| crate::decision_log::value_json(&v).to_string();
        assert_eq!(j(strings_split_n(&[s("a,b,c"), s(","), Value::from(2u64)]).unwrap()), r#"["a","b"]"#);
        assert_eq!(j(strings_split_n(&[s("a,b,c"), s(","), Value::from(-1i64)]).unwrap()), r#"["c"]"#);
        assert_eq!(j(strings_split_n(&[s("a,b,c"), s(","), Value::from(0u64)]).unwrap()), "[]");
        assert_eq!(j(strings_split_n(&[s("a,b"), s(""), Value::from(2u64)]).unwrap()), r#"["a",","]"#);
    }

    #[test]
    fn subset_of_empty_array_does_not_panic() {
        let arr = |v: Vec<u64>| Value::from(v.into_iter().map(Value::from).collect::<Vec<_>>());
        assert_eq!(object_subset(&[arr(vec![1, 2]), arr(vec![])]).unwrap(), Value::Bool(true));
        assert_eq!(object_subset(&[arr(vec![1, 2, 3]), arr(vec![2, 3])]).unwrap(), Value::Bool(true));
        assert_eq!(object_subset(&[arr(vec![1, 2, 3]), arr(vec![3, 2])]).unwrap(), Value::Bool(false));
    }

    #[test]
    fn cidr_functions() {
        assert_eq!(cidr_intersects(&[s("192.168.0.0/16"), s("192.168.1.0/24")]).unwrap(), Value::Bool(true));
        assert_eq!(cidr_intersects(&[s("192.168.0.0/16"), s("10.0.0.0/8")]).unwrap(), Value::Bool(false));
        assert!(cidr_intersects(&[s("bad"), s("10.0.0.0/8")]).is_err());
        let m = cidr_merge(&[Value::from(vec![s("192.0.128.0/24"), s("192.0.129.0/24"), s("10.0.0.1"), s("fe80::/64")])]).unwrap();
        assert_eq!(crate::decision_log::value_json(&m).to_string(), r#"["10.0.0.1/8","192.0.128.0/23","fe80::/64"]"#);
        let c = cidr_contains_matches(&[Value::from(vec![s("1.1.1.0/24"), s("1.1.2.0/24")]), s("1.1.1.128")]).unwrap();
        assert_eq!(crate::decision_log::value_json(&c).to_string(), r#"[[0,"1.1.1.128"]]"#);
    }
}
