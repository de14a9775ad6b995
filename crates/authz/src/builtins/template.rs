//! `strings.render_template`: the part of Go's `text/template` that policies use — fields
//! (`{{.a.b}}`, `{{.}}`, `{{$v}}`), `if`/`else`/`end`, `range` (with `$i, $v :=`), `len`, and
//! `{{-`/`-}}` whitespace trimming. Any other action is an error naming it (never a silent
//! empty output). Values print as OPA prints them: strings raw, numbers as written, `null` and
//! missing keys as `<undefined>`, arrays as `[a b]`, objects as `map[k:v]`.

use anyhow::{anyhow, bail, Result};
use serde_json::Value as Json;

use super::args::{string, type_name};
use super::Def;
use crate::decision_log::value_json;
use regorus::Value;

pub(crate) fn defs(v: &mut Vec<Def>) {
    v.push(Def { name: "strings.render_template", arity: 2, f: render_template });
}

enum Node {
    Text(String),
    Print(String),
    If(String, Vec<Node>, Vec<Node>),
    Range(Option<String>, Option<String>, String, Vec<Node>, Vec<Node>),
}

enum Tok {
    Text(String),
    Action(String),
}

fn lex(src: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("{{") {
        let mut text = rest[..i].to_string();
        let after = &rest[i + 2..];
        let (trim_left, after) = match after.strip_prefix("- ") {
            Some(a) => (true, a),
            None => (false, after),
        };
        if trim_left {
            text = text.trim_end().to_string();
        }
        out.push(Tok::Text(text));
        let Some(j) = after.find("}}") else { bail!("template: template:1: unclosed action") };
        let mut action = &after[..j];
        let mut next = &after[j + 2..];
        if let Some(a) = action.strip_suffix(" -") {
            action = a;
            next = next.trim_start();
        }
        out.push(Tok::Action(action.trim().to_string()));
        rest = next;
    }
    out.push(Tok::Text(rest.to_string()));
    Ok(out)
}

/// Parses until `end` (or `else`); returns the nodes and how the block ended.
fn parse(toks: &[Tok], pos: &mut usize) -> Result<(Vec<Node>, Option<String>)> {
    let mut nodes = Vec::new();
    while *pos < toks.len() {
        let t = &toks[*pos];
        *pos += 1;
        match t {
            Tok::Text(s) if !s.is_empty() => nodes.push(Node::Text(s.clone())),
            Tok::Text(_) => {}
            Tok::Action(a) if a == "end" || a == "else" => return Ok((nodes, Some(a.clone()))),
            Tok::Action(a) if a.starts_with("/*") => {}
            Tok::Action(a) => {
                if let Some(cond) = a.strip_prefix("if ") {
                    let (then, how) = parse(toks, pos)?;
                    let els = match how.as_deref() {
                        Some("else") => {
                            let (e, how) = parse(toks, pos)?;
                            if how.as_deref() != Some("end") {
                                bail!("template: unexpected EOF in if");
                            }
                            e
                        }
                        Some("end") => vec![],
                        _ => bail!("template: unexpected EOF in if"),
                    };
                    nodes.push(Node::If(cond.trim().to_string(), then, els));
                } else if let Some(spec) = a.strip_prefix("range ") {
                    let (vars, pipe) = match spec.split_once(":=") {
                        Some((v, p)) => (Some(v.trim().to_string()), p.trim().to_string()),
                        None => (None, spec.trim().to_string()),
                    };
                    let (iv, vv) = match vars {
                        None => (None, None),
                        Some(v) => match v.split_once(',') {
                            Some((i, x)) => (Some(i.trim().to_string()), Some(x.trim().to_string())),
                            None => (None, Some(v)),
                        },
                    };
                    let (body, how) = parse(toks, pos)?;
                    let els = match how.as_deref() {
                        Some("else") => {
                            let (e, how) = parse(toks, pos)?;
                            if how.as_deref() != Some("end") {
                                bail!("template: unexpected EOF in range");
                            }
                            e
                        }
                        Some("end") => vec![],
                        _ => bail!("template: unexpected EOF in range"),
                    };
                    nodes.push(Node::Range(iv, vv, pipe, body, els));
                } else {
                    nodes.push(Node::Print(a.clone()));
                }
            }
        }
    }
    Ok((nodes, None))
}

struct Scope<'a> {
    dot: Json,
    vars: Vec<(String, Json)>,
    root: &'a Json,
}

fn lookup(path: &str, base: &Json) -> Option<Json> {
    let mut cur = base.clone();
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        cur = cur.as_object()?.get(seg)?.clone();
    }
    Some(cur)
}

fn eval(expr: &str, sc: &Scope<'_>) -> Result<Option<Json>> {
    let e = expr.trim();
    if let Some(arg) = e.strip_prefix("len ") {
        return match eval(arg, sc)? {
            Some(Json::Array(a)) => Ok(Some(Json::from(a.len()))),
            Some(Json::Object(o)) => Ok(Some(Json::from(o.len()))),
            Some(Json::String(s)) => Ok(Some(Json::from(s.len()))),
            other => bail!("template: error calling len: len of {}", other.map(|v| v.to_string()).unwrap_or("nil".into())),
        };
    }
    if e == "." {
        return Ok(Some(sc.dot.clone()));
    }
    if let Some(path) = e.strip_prefix('.') {
        if path.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            return Ok(lookup(path, &sc.dot));
        }
    }
    if let Some(var) = e.strip_prefix('$') {
        let (name, path) = var.split_once('.').unwrap_or((var, ""));
        let name = format!("${name}");
        if name == "$" {
            return Ok(lookup(path, sc.root));
        }
        if let Some((_, v)) = sc.vars.iter().rev().find(|(n, _)| *n == name) {
            return Ok(lookup(path, v));
        }
        bail!("template: undefined variable \"{name}\"");
    }
    Err(anyhow!("unsupported template action {{{{{e}}}}} (sluice implements fields, variables, if/else, range and len)"))
}

fn truthy(v: &Option<Json>) -> bool {
    match v {
        None | Some(Json::Null) | Some(Json::Bool(false)) => false,
        Some(Json::Number(n)) => n.as_f64() != Some(0.0),
        Some(Json::String(s)) => !s.is_empty(),
        Some(Json::Array(a)) => !a.is_empty(),
        Some(Json::Object(o)) => !o.is_empty(),
        _ => true,
    }
}

fn print(v: &Option<Json>, out: &mut String) {
    match v {
        None | Some(Json::Null) => out.push_str("<undefined>"),
        Some(Json::String(s)) => out.push_str(s),
        Some(Json::Array(a)) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print(&Some(x.clone()), out);
            }
            out.push(']');
        }
        Some(Json::Object(o)) => {
            out.push_str("map[");
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                print(&Some(o[*k].clone()), out);
            }
            out.push(']');
        }
        Some(other) => out.push_str(&other.to_string()),
    }
}

fn exec(nodes: &[Node], sc: &mut Scope<'_>, out: &mut String) -> Result<()> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Print(e) => {
                let v = eval(e, sc)?;
                print(&v, out);
            }
            Node::If(c, then, els) => {
                let branch = if truthy(&eval(c, sc)?) { then } else { els };
                exec(branch, sc, out)?;
            }
            Node::Range(iv, vv, pipe, body, els) => {
                let items: Vec<(Json, Json)> = match eval(pipe, sc)? {
                    Some(Json::Array(a)) => a.into_iter().enumerate().map(|(i, x)| (Json::from(i), x)).collect(),
                    Some(Json::Object(o)) => {
                        let mut kv: Vec<(String, Json)> = o.into_iter().collect();
                        kv.sort_by(|a, b| a.0.cmp(&b.0));
                        kv.into_iter().map(|(k, x)| (Json::from(k), x)).collect()
                    }
                    None | Some(Json::Null) => vec![],
                    Some(other) => bail!("template: range can't iterate over {other}"),
                };
                if items.is_empty() {
                    exec(els, sc, out)?;
                }
                for (i, x) in items {
                    let saved_dot = std::mem::replace(&mut sc.dot, x.clone());
                    let n = sc.vars.len();
                    if let Some(iv) = iv {
                        sc.vars.push((iv.clone(), i));
                    }
                    if let Some(vv) = vv {
                        sc.vars.push((vv.clone(), x));
                    }
                    let r = exec(body, sc, out);
                    sc.vars.truncate(n);
                    sc.dot = saved_dot;
                    r?;
                }
            }
        }
    }
    Ok(())
}

fn render_template(a: &[Value]) -> Result<Value> {
    let src = string(a, 0, "strings.render_template")?;
    let vars = match a.get(1) {
        Some(v @ Value::Object(_)) => value_json(v),
        Some(v) => bail!("operand 2 must be object but got {}", type_name(v)),
        None => bail!("missing operand 2"),
    };
    let toks = lex(src)?;
    let mut pos = 0;
    let (nodes, how) = parse(&toks, &mut pos)?;
    if let Some(h) = how {
        bail!("template: template:1: unexpected {{{{{h}}}}}");
    }
    let mut out = String::new();
    exec(&nodes, &mut Scope { dot: vars.clone(), vars: vec![], root: &vars }, &mut out)?;
    Ok(Value::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: &str, v: Json) -> Result<String> {
        match render_template(&[Value::from(t), Value::from(v)])? {
            Value::String(s) => Ok(s.to_string()),
            other => bail!("{other:?}"),
        }
    }

    #[test]
    fn like_opa() {
        let v = serde_json::json!({"a": 1, "b": 2.5, "c": true, "d": [1, "x"], "e": {"k": "v", "a": 1}, "f": null});
        assert_eq!(r("{{.a}} {{.b}} {{.c}} {{.d}} {{.e}} {{.f}} {{.missing}}", v).unwrap(), "1 2.5 true [1 x] map[a:1 k:v] <undefined> <undefined>");
        assert_eq!(r("{{if .ok}}yes{{else}}no{{end}}-{{range .xs}}[{{.}}]{{end}}", serde_json::json!({"ok": false, "xs": [1, 2]})).unwrap(), "no-[1][2]");
        assert_eq!(r("{{- .a -}}  {{ .a }}", serde_json::json!({"a": "x"})).unwrap(), "xx");
        assert_eq!(r("{{range $i, $v := .xs}}{{$i}}={{$v}};{{end}}", serde_json::json!({"xs": ["a", "b"]})).unwrap(), "0=a;1=b;");
        assert_eq!(r("{{len .xs}}", serde_json::json!({"xs": ["a", "b"]})).unwrap(), "2");
        assert!(r("{{.a", serde_json::json!({})).unwrap_err().to_string().contains("unclosed action"));
        assert!(r("{{printf \"%d\" .a}}", serde_json::json!({"a": 1})).unwrap_err().to_string().contains("unsupported template action"));
    }
}
