//! Builtins that sluice adds to regorus (through regorus' extension mechanism, which is
//! consulted before regorus' own builtins): OPA builtins regorus lacks (`io.jwt.*`,
//! `crypto.*`, more of `net.*`, …), corrections of regorus builtins that differ from OPA or
//! panic (`strings.count`, `object.subset`), and the load-time check of function calls
//! ([`check_calls`]): a call to an unknown function is an error, and OPA builtins sluice does
//! not provide (`http.send`, `graphql.*`, …) are refused at load with the reason.
//!
//! Builtin errors follow OPA: by default an erroring builtin makes its expression undefined;
//! in strict mode (`--strict-builtin-errors`) the error ends the evaluation. The mode is
//! per evaluation ([`StrictMode`]).

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use regorus::{Engine, Value};

pub mod crypto;
pub mod der;
pub mod globs;
pub mod jwt;
pub mod metadata;
pub mod misc;
pub mod parse_module;
pub mod template;
pub mod x509;

/// A builtin function: takes the evaluated arguments, returns a value (`Value::Undefined` for
/// an undefined result) or an error (a builtin error in OPA's sense).
pub type BuiltinFn = Arc<dyn Fn(&[Value]) -> anyhow::Result<Value> + Send + Sync>;

/// A builtin registered by a library user (OPA's custom builtins).
#[derive(Clone)]
pub struct CustomBuiltin {
    /// Dotted name, e.g. `acme.lookup`.
    pub name: String,
    /// Number of arguments.
    pub arity: u8,
    /// The implementation.
    pub f: BuiltinFn,
}

impl std::fmt::Debug for CustomBuiltin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomBuiltin({}/{})", self.name, self.arity)
    }
}

thread_local! {
    static STRICT: Cell<bool> = const { Cell::new(false) };
}

/// Sets this thread's builtin error mode for the duration of one evaluation.
pub struct StrictMode {
    previous: bool,
}

impl StrictMode {
    /// Enters `strict` mode until the returned guard is dropped.
    pub fn enter(strict: bool) -> StrictMode {
        StrictMode { previous: STRICT.with(|s| s.replace(strict)) }
    }
}

impl Drop for StrictMode {
    fn drop(&mut self) {
        let p = self.previous;
        STRICT.with(|s| s.set(p));
    }
}

fn strict() -> bool {
    STRICT.with(|s| s.get())
}

/// One builtin of sluice's table.
pub(crate) struct Def {
    pub name: &'static str,
    pub arity: u8,
    pub f: fn(&[Value]) -> anyhow::Result<Value>,
}

fn all_defs() -> Vec<Def> {
    let mut v = Vec::new();
    misc::defs(&mut v);
    parse_module::defs(&mut v);
    crypto::defs(&mut v);
    globs::defs(&mut v);
    jwt::defs(&mut v);
    metadata::defs(&mut v);
    template::defs(&mut v);
    x509::defs(&mut v);
    v
}

/// The names of every builtin sluice adds or replaces.
pub fn names() -> BTreeSet<&'static str> {
    all_defs().into_iter().map(|d| d.name).collect()
}

/// A builtin exceeded one of sluice's size limits: an evaluation error whatever the builtin
/// error mode (so that `not f(x)` cannot turn it into true).
#[derive(Debug)]
pub struct LimitExceeded(pub String);

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LimitExceeded {}

/// Marks the text of a [`LimitExceeded`] error once regorus has turned it into a string.
pub const LIMIT_MARK: &str = "exceeds sluice's limit: ";

fn wrap(name: String, f: BuiltinFn) -> impl FnMut(Vec<Value>) -> anyhow::Result<Value> + Clone + Send + Sync {
    move |args: Vec<Value>| match f(&args) {
        Ok(v) => Ok(v),
        Err(e) if e.downcast_ref::<LimitExceeded>().is_some() => Err(anyhow!("{LIMIT_MARK}{e}")),
        Err(e) if strict() => Err(anyhow!("{name}: {e}")),
        Err(_) => Ok(Value::Undefined),
    }
}

/// Registers sluice's builtins and `custom` on `engine`.
pub fn register(engine: &mut Engine, custom: &[CustomBuiltin]) -> anyhow::Result<()> {
    for c in custom {
        engine.add_extension(c.name.clone(), c.arity, Box::new(wrap(c.name.clone(), c.f.clone())))?;
    }
    for d in all_defs() {
        if custom.iter().any(|c| c.name == d.name) {
            continue;
        }
        let f: BuiltinFn = Arc::new(d.f);
        engine.add_extension(d.name.to_string(), d.arity, Box::new(wrap(d.name.to_string(), f)))?;
    }
    Ok(())
}

/// regorus 0.14's own builtins (its `BUILTINS` table is private).
const REGORUS_BUILTINS: &[&str] = &[
    "abs", "all", "any", "array.concat", "array.reverse", "array.slice", "base64.decode", "base64.encode",
    "base64.is_valid", "base64url.decode", "base64url.encode", "base64url.encode_no_pad", "bits.and", "bits.lsh",
    "bits.negate", "bits.or", "bits.rsh", "bits.xor", "ceil", "concat", "contains", "count", "endswith", "floor",
    "format_int", "glob.match", "glob.quote_meta", "graph.reachable", "graph.reachable_paths", "hex.decode",
    "hex.encode", "indexof", "indexof_n", "intersection", "is_array", "is_boolean", "is_null", "is_number",
    "is_object", "is_set", "is_string", "json.filter", "json.is_valid", "json.marshal", "json.marshal_with_options",
    "json.match_schema", "json.patch", "json.remove", "json.unmarshal", "json.verify_schema", "lower", "max", "min",
    "net.cidr_contains", "net.cidr_expand", "net.cidr_is_valid", "numbers.range", "numbers.range_step",
    "object.filter", "object.get", "object.keys", "object.remove", "object.subset", "object.union",
    "object.union_n", "opa.runtime", "product", "rand.intn", "regex.find_n",
    "regex.is_valid", "regex.match", "regex.replace", "regex.split", "regex.template_match", "replace", "round",
    "semver.compare", "semver.is_valid", "sort", "split", "sprintf", "startswith", "strings.any_prefix_match",
    "strings.any_suffix_match", "strings.count", "strings.replace_n", "strings.reverse", "substring", "sum",
    "test.sleep", "time.add_date", "time.clock", "time.date", "time.diff", "time.format", "time.now_ns",
    "time.parse_duration_ns", "time.parse_ns", "time.parse_rfc3339_ns", "time.weekday", "to_number", "trace",
    "trim", "trim_left", "trim_prefix", "trim_right", "trim_space", "trim_suffix", "type_name", "union",
    "units.parse", "units.parse_bytes", "upper", "urlquery.decode", "urlquery.decode_object", "urlquery.encode",
    "urlquery.encode_object", "uuid.parse", "uuid.rfc4122", "walk", "yaml.is_valid", "yaml.marshal",
    "yaml.unmarshal", "print",
];

/// OPA builtins that sluice refuses at load, with the reason.
const REFUSED: &[(&str, &str)] = &[
    ("http.send", "sluice makes no outbound HTTP calls from policies; pass the data in input or data instead"),
    ("net.lookup_ip_addr", "sluice does no DNS lookups from policies"),
    ("providers.aws.sign_req", "AWS request signing is not implemented"),
    ("graphql.", "no maintained GraphQL parser is wired into sluice"),
];

/// Deepest syntax tree accepted (JSON nesting of regorus' AST): evaluation and analysis
/// recurse along it.
pub const MAX_AST_DEPTH: usize = 400;

/// The loaded modules' syntax trees as JSON, after checking their depth without recursion.
pub fn ast_json(engine: &Engine) -> anyhow::Result<serde_json::Value> {
    let text = engine.get_ast_as_json()?;
    let (mut depth, mut deepest, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for c in text.bytes() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_AST_DEPTH {
        bail!("an expression is nested too deeply: its syntax tree is {deepest} levels deep, more than sluice's bound of {MAX_AST_DEPTH} (split long operator chains or deep nesting into rules)");
    }
    let mut de = serde_json::Deserializer::from_str(&text);
    de.disable_recursion_limit();
    Ok(serde::Deserialize::deserialize(&mut de)?)
}

/// Checks every function call in the loaded policies: refused OPA builtins and unknown
/// functions are load errors naming `file:line:col`, as OPA's compiler reports them.
pub fn check_calls(engine: &Engine, custom: &[CustomBuiltin]) -> anyhow::Result<()> {
    let ast = ast_json(engine)?;
    let ours = names();
    let Some(modules) = ast.as_array() else { bail!("unexpected syntax tree") };
    // Names of every rule and function defined anywhere (their last path segment).
    let mut defined = BTreeSet::new();
    let mut calls = Vec::new();
    for m in modules {
        let file = m["source"]["file"].as_str().unwrap_or("").to_string();
        let text = m["source"]["contents"].as_str().unwrap_or("");
        collect(&m["ast"], text, &file, &mut defined, &mut calls);
    }
    for (file, line, col, name) in calls {
        if let Some((_, why)) = REFUSED.iter().find(|(n, why)| !why.is_empty() && (name == *n || (n.ends_with('.') && name.starts_with(n)))) {
            if !ours.contains(name.as_str()) {
                bail!("{file}:{line}:{col}: {name} is not supported by sluice: {why}");
            }
        }
        let last = name.rsplit('.').next().unwrap_or(&name).to_string();
        let known = ours.contains(name.as_str())
            || REGORUS_BUILTINS.contains(&name.as_str())
            || custom.iter().any(|c| c.name == name)
            || defined.contains(&last);
        if !known {
            bail!("{file}:{line}:{col}: rego_type_error: undefined function {name}");
        }
    }
    Ok(())
}

/// References of every rule whose name starts with `prefix` (duplicates removed, file order).
pub fn rules_with_prefix(engine: &Engine, prefix: &str) -> Vec<String> {
    let Ok(ast) = ast_json(engine) else { return vec![] };
    let mut out = Vec::new();
    for m in ast.as_array().into_iter().flatten() {
        let src = m["source"]["contents"].as_str().unwrap_or("");
        let pkg = m["ast"]["package"]["refr"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|inner| span_text(&inner["span"], src))
            .map(|t| t.chars().filter(|c| !c.is_whitespace()).collect::<String>())
            .unwrap_or_default();
        let mut names: Vec<String> = Vec::new();
        for r in m["ast"]["rules"].as_array().into_iter().flatten() {
            let mut one = BTreeSet::new();
            let mut calls = Vec::new();
            collect(r, src, "", &mut one, &mut calls);
            for n in one {
                if n.starts_with(prefix) && !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        for n in names {
            let r = format!("data.{pkg}.{n}");
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

/// Longest chain of rules that refer to each other (`a := b`, `b := c`, …), by name, and the
/// rule it starts at. Evaluation recurses once per link, so a bound on this keeps evaluation
/// within the thread's stack (a chain of a thousand rules overflowed a 2 MiB stack).
/// Depths are counted up to `cap` (anything longer reports `cap`), which also bounds this
/// function's own recursion.
pub fn rule_chain_depth(engine: &Engine, cap: usize) -> (usize, String) {
    let Ok(ast) = ast_json(engine) else { return (0, String::new()) };
    let mut edges: std::collections::BTreeMap<String, BTreeSet<String>> = std::collections::BTreeMap::new();
    for m in ast.as_array().into_iter().flatten() {
        let src = m["source"]["contents"].as_str().unwrap_or("");
        for r in m["ast"]["rules"].as_array().into_iter().flatten() {
            let mut heads = BTreeSet::new();
            let mut calls = Vec::new();
            collect(r, src, "", &mut heads, &mut calls);
            let mut refs = BTreeSet::new();
            names_in(r, src, &mut refs);
            for h in heads {
                let e = edges.entry(h.clone()).or_default();
                e.extend(refs.iter().filter(|n| **n != h).cloned());
            }
        }
    }
    let mut memo: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let names: Vec<String> = edges.keys().cloned().collect();
    let mut best = (0, String::new());
    for n in names {
        let d = depth_of(&n, &edges, &mut memo, &mut BTreeSet::new(), cap);
        if d > best.0 {
            best = (d, n);
        }
    }
    best
}

fn depth_of(
    n: &str,
    edges: &std::collections::BTreeMap<String, BTreeSet<String>>,
    memo: &mut std::collections::BTreeMap<String, usize>,
    path: &mut BTreeSet<String>,
    cap: usize,
) -> usize {
    if let Some(d) = memo.get(n) {
        return *d;
    }
    if path.len() >= cap {
        return cap;
    }
    if !path.insert(n.to_string()) {
        return 0; // a cycle: regorus reports recursion itself
    }
    let mut d = 1;
    if let Some(next) = edges.get(n) {
        for m in next {
            if edges.contains_key(m) {
                d = d.max((1 + depth_of(m, edges, memo, path, cap)).min(cap));
            }
        }
    }
    path.remove(n);
    memo.insert(n.to_string(), d);
    d
}

/// Variable names and `.field` names referenced in a syntax tree.
fn names_in(v: &serde_json::Value, text: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(var) = o.get("Var") {
                if let Some(t) = span_text(&var["span"], text) {
                    out.insert(t.to_string());
                }
            }
            if let Some(f) = o.get("RefDot").and_then(|r| r.get("field")).and_then(|f| f.get(0)) {
                if let Some(t) = span_text(f, text) {
                    out.insert(t.to_string());
                }
            }
            for x in o.values() {
                names_in(x, text, out);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                names_in(x, text, out);
            }
        }
        _ => {}
    }
}

fn span_text<'a>(span: &serde_json::Value, text: &'a str) -> Option<&'a str> {
    let s = span["start"].as_u64()? as usize;
    let e = span["end"].as_u64()? as usize;
    text.get(s..e)
}

fn collect(
    v: &serde_json::Value,
    text: &str,
    file: &str,
    defined: &mut BTreeSet<String>,
    calls: &mut Vec<(String, u64, u64, String)>,
) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(call) = o.get("Call") {
                let fcn = &call["fcn"];
                if let Some((_, inner)) = fcn.as_object().and_then(|f| f.iter().next()) {
                    if let Some(t) = span_text(&inner["span"], text) {
                        let name: String = t.chars().filter(|c| !c.is_whitespace()).collect();
                        let start = inner["span"]["start"].as_u64().unwrap_or(0) as usize;
                        let before = text.get(..start).unwrap_or("");
                        let line = before.matches('\n').count() as u64 + 1;
                        let col = before.rsplit('\n').next().unwrap_or("").chars().count() as u64 + 1;
                        calls.push((file.to_string(), line, col, name));
                    }
                }
            }
            for key in ["Func", "Compr", "Set"] {
                if let Some(refr) = o.get(key).and_then(|h| h.get("refr")) {
                    if let Some((_, inner)) = refr.as_object().and_then(|f| f.iter().next()) {
                        if let Some(t) = span_text(&inner["span"], text) {
                            let t: String = t.chars().filter(|c| !c.is_whitespace()).collect();
                            let head = t.split('[').next().unwrap_or(&t);
                            defined.insert(head.rsplit('.').next().unwrap_or(head).to_string());
                        }
                    }
                }
            }
            for x in o.values() {
                collect(x, text, file, defined, calls);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                collect(x, text, file, defined, calls);
            }
        }
        _ => {}
    }
}

/// Names of every builtin (regorus' and sluice's).
pub fn is_builtin(name: &str) -> bool {
    REGORUS_BUILTINS.contains(&name) || names().contains(name)
}

/// A `with T as B` in a module where `B` names a builtin: regorus only accepts a value or a
/// user function there, so sluice rewrites `B` to a generated wrapper function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithBuiltin {
    /// The generated function's name in package `__sluice_with`.
    pub wrapper: String,
    /// The builtin called by the wrapper.
    pub builtin: String,
    /// The function being replaced (its calls give the wrapper's arity).
    pub target: String,
}

/// Package of the wrappers generated for [`rewrite_with_builtins`].
pub const WITH_PACKAGE: &str = "__sluice_with";

/// Rewrites `with T as B` (B a builtin, T not `input`/`data`) to `with T as
/// data.__sluice_with.<B mangled>` outside strings and comments; the replacement keeps the line
/// count (only that line's columns shift).
pub fn rewrite_with_builtins(src: &str) -> (String, Vec<WithBuiltin>) {
    let b = src.as_bytes();
    let mut words: Vec<(usize, usize)> = Vec::new(); // byte ranges of dotted words
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == b'`' {
            i += 1;
            while i < b.len() && b[i] != b'`' {
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            words.push((st, i));
        } else {
            i += 1;
        }
    }
    let text = |r: &(usize, usize)| &src[r.0..r.1];
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut found = Vec::new();
    for w in words.windows(4) {
        if text(&w[0]) != "with" || text(&w[2]) != "as" {
            continue;
        }
        let (target, value) = (text(&w[1]), text(&w[3]));
        if target == "input" || target.starts_with("input.") || target == "data" || target.starts_with("data.") {
            continue;
        }
        // A call (`as f(x)`) or a reference into the value (`as x[0]`) is not a bare name.
        if matches!(b.get(w[3].1), Some(b'(') | Some(b'[')) || !is_builtin(value) {
            continue;
        }
        let wrapper = format!("b_{}", value.replace('.', "_"));
        edits.push((w[3].0, w[3].1, format!("data.{WITH_PACKAGE}.{wrapper}")));
        let wb = WithBuiltin { wrapper, builtin: value.to_string(), target: target.to_string() };
        if !found.contains(&wb) {
            found.push(wb);
        }
    }
    let mut out = src.to_string();
    for (st, en, rep) in edits.into_iter().rev() {
        out.replace_range(st..en, &rep);
    }
    (out, found)
}

/// The number of arguments at the first call of `name(` in `src` (outside strings/comments
/// is not checked: a best effort for the wrapper's arity).
pub fn call_arity(src: &str, name: &str) -> Option<usize> {
    let pat = format!("{name}(");
    let mut from = 0;
    while let Some(i) = src[from..].find(&pat) {
        let at = from + i;
        from = at + pat.len();
        let before = src[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let (mut depth, mut args, mut any) = (0i32, 1usize, false);
        let mut in_str = false;
        for c in src[from..].chars() {
            if in_str {
                if c == '"' {
                    in_str = false;
                }
                continue;
            }
            match c {
                '"' => {
                    in_str = true;
                    any = true;
                }
                '(' | '[' | '{' => {
                    depth += 1;
                    any = true;
                }
                ')' if depth == 0 => return Some(if any { args } else { 0 }),
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => args += 1,
                c if !c.is_whitespace() => any = true,
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod with_tests {
    use super::*;

    #[test]
    fn with_builtin_rewrites() {
        let src = "p if { x := upper(\"a\") with upper as lower; y := f(1, [2, 3]) with f as count }\n# with upper as lower\nq := 1 with input as lower\n";
        let (out, found) = rewrite_with_builtins(src);
        assert!(out.contains("with upper as data.__sluice_with.b_lower;"), "{out}");
        assert!(out.contains("with f as data.__sluice_with.b_count }"), "{out}");
        assert!(out.contains("# with upper as lower"), "comments untouched: {out}");
        assert!(out.contains("with input as lower"), "input targets untouched: {out}");
        assert_eq!(found.len(), 2);
        assert_eq!(call_arity(src, "upper"), Some(1));
        assert_eq!(call_arity(src, "f"), Some(2));
        assert_eq!(call_arity("g()", "g"), Some(0));
    }
}

/// Argument helpers shared by the families.
pub(crate) mod args {
    use anyhow::{bail, Result};
    use regorus::Value;

    pub fn string<'a>(args: &'a [Value], i: usize, name: &str) -> Result<&'a str> {
        match args.get(i) {
            Some(Value::String(s)) => Ok(s.as_ref()),
            Some(v) => bail!("operand {} must be string but got {}", i + 1, type_name(v)),
            None => bail!("{name}: missing operand {}", i + 1),
        }
    }

    pub fn type_name(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Set(_) => "set",
            Value::Object(_) => "object",
            Value::Undefined => "undefined",
        }
    }

    pub fn int(args: &[Value], i: usize) -> Result<i64> {
        match args.get(i) {
            Some(v @ Value::Number(n)) => match n.as_i64() {
                Some(x) => Ok(x),
                None => bail!("operand {} must be integer number but got floating-point number: {v}", i + 1),
            },
            Some(v) => bail!("operand {} must be number but got {}", i + 1, type_name(v)),
            None => bail!("missing operand {}", i + 1),
        }
    }

    /// An array or set's elements.
    pub fn collection(args: &[Value], i: usize) -> Result<Vec<Value>> {
        match args.get(i) {
            Some(Value::Array(a)) => Ok(a.iter().cloned().collect()),
            Some(Value::Set(s)) => Ok(s.iter().cloned().collect()),
            Some(v) => bail!("operand {} must be one of {{array, set}} but got {}", i + 1, type_name(v)),
            None => bail!("missing operand {}", i + 1),
        }
    }
}
