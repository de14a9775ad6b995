//! `rego.metadata.rule()` and `rego.metadata.chain()`: OPA's METADATA annotations.
//!
//! regorus does not read annotations, so sluice parses the `# METADATA` comment blocks from
//! the source text itself (the YAML after the `#`s), attaches each block to the statement that
//! follows it (a package or a rule), and at load replaces every call of the two functions
//! inside a rule by `json.unmarshal("<the answer>")` — the answer only depends on where the call
//! is, so it is known at load. The replacement stays on the call's line (positions after it on
//! that line shift). A call outside any rule (a query) is OPA's error. Rule heads are found as
//! lines that start at column 0 (as `opa fmt` writes them); a call belongs to the last head
//! above it.
//!
//! Supported annotation fields: `scope` (`rule`, `document`, `package`, `subpackages`),
//! `title`, `description`, `organizations`, `related_resources`, `authors`, `custom` and
//! `entrypoint`; OPA's normalisation is applied (`"Name <mail>"` authors become
//! `{name, email}`, string resources become `{ref}`). `schemas` is refused at load (sluice
//! has no type checker to apply them); other keys are ignored, as OPA does.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use regorus::Value;
use serde_json::{json, Map, Value as Json};

use super::Def;

pub(crate) fn defs(v: &mut Vec<Def>) {
    v.push(Def { name: "rego.metadata.rule", arity: 0, f: |_| outside("rego.metadata.rule") });
    v.push(Def { name: "rego.metadata.chain", arity: 0, f: |_| outside("rego.metadata.chain") });
}

fn outside(name: &str) -> Result<Value> {
    bail!("the {name} function must only be called within the scope of a rule")
}

/// One annotation block with its scope.
#[derive(Debug, Clone)]
struct Block {
    scope: String,
    json: Json,
}

/// Annotations of every loaded file.
#[derive(Debug, Default)]
pub struct Index {
    /// Package path → package-scoped annotations.
    package: BTreeMap<Vec<String>, Json>,
    /// Package path → subpackages-scoped annotations.
    subpackages: BTreeMap<Vec<String>, Json>,
    /// Rule path → document-scoped annotations.
    document: BTreeMap<Vec<String>, Json>,
}

/// A rule head found in a file: its first line, its path, its rule-scoped annotations.
#[derive(Debug)]
struct Head {
    line: usize,
    path: Vec<String>,
    annotations: Option<Json>,
}

#[derive(Debug)]
struct FileInfo {
    heads: Vec<Head>,
}

fn normalise(yaml: &str, at: &str, default_scope: &str) -> Result<Block> {
    let v: Json = if yaml.trim().is_empty() {
        Json::Object(Map::new())
    } else {
        serde_yaml_ng::from_str(yaml).map_err(|e| anyhow!("{at}: rego_parse_error: yaml: {e}"))?
    };
    let Json::Object(o) = v else { bail!("{at}: rego_parse_error: METADATA block is not a YAML map") };
    let mut out = Map::new();
    let scope = match o.get("scope") {
        None => default_scope.to_string(),
        Some(Json::String(s)) if ["rule", "document", "package", "subpackages"].contains(&s.as_str()) => s.clone(),
        Some(s) => bail!("{at}: rego_parse_error: invalid annotation scope {s}"),
    };
    for (k, v) in o {
        match k.as_str() {
            "scope" => {}
            "title" | "description" => {
                let Json::String(_) = v else { bail!("{at}: rego_parse_error: {k} must be a string") };
                out.insert(k, v);
            }
            "organizations" => {
                let ok = v.as_array().is_some_and(|a| a.iter().all(Json::is_string));
                if !ok {
                    bail!("{at}: rego_parse_error: organizations must be a list of strings");
                }
                out.insert(k, v);
            }
            "custom" => {
                if !v.is_object() {
                    bail!("{at}: rego_parse_error: custom must be a map");
                }
                out.insert(k, v);
            }
            "entrypoint" => {
                if v == Json::Bool(true) {
                    out.insert(k, v);
                }
            }
            "related_resources" => {
                let items = v.as_array().ok_or_else(|| anyhow!("{at}: rego_parse_error: related_resources must be a list"))?;
                let mut list = Vec::new();
                for r in items {
                    list.push(match r {
                        Json::String(s) => json!({"ref": s}),
                        Json::Object(m) if m.get("ref").is_some_and(Json::is_string) => {
                            let mut e = Map::new();
                            e.insert("ref".into(), m["ref"].clone());
                            if let Some(d) = m.get("description").filter(|d| d.as_str().is_some_and(|s| !s.is_empty())) {
                                e.insert("description".into(), d.clone());
                            }
                            Json::Object(e)
                        }
                        _ => bail!("{at}: rego_parse_error: invalid related resource"),
                    });
                }
                out.insert(k, Json::Array(list));
            }
            "authors" => {
                let items = v.as_array().ok_or_else(|| anyhow!("{at}: rego_parse_error: authors must be a list"))?;
                let mut list = Vec::new();
                for a in items {
                    list.push(match a {
                        Json::String(s) => author(s).ok_or_else(|| anyhow!("{at}: rego_parse_error: invalid author {s:?}"))?,
                        Json::Object(m) => {
                            let mut e = Map::new();
                            for f in ["name", "email"] {
                                if let Some(x) = m.get(f).filter(|x| x.as_str().is_some_and(|s| !s.is_empty())) {
                                    e.insert(f.into(), x.clone());
                                }
                            }
                            if e.is_empty() {
                                bail!("{at}: rego_parse_error: an author needs a name or an email");
                            }
                            Json::Object(e)
                        }
                        _ => bail!("{at}: rego_parse_error: invalid author"),
                    });
                }
                out.insert(k, Json::Array(list));
            }
            "schemas" => bail!("{at}: METADATA schemas are not supported by sluice (regorus has no type checker to apply them)"),
            _ => {}
        }
    }
    out.insert("scope".into(), Json::String(scope.clone()));
    Ok(Block { scope, json: Json::Object(out) })
}

/// `"Jane Doe <jane@example.com>"` → `{name, email}`.
fn author(s: &str) -> Option<Json> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(open) = s.rfind('<') {
        if s.ends_with('>') {
            let email = s[open + 1..s.len() - 1].trim();
            let name = s[..open].trim();
            let mut e = Map::new();
            if !name.is_empty() {
                e.insert("name".into(), json!(name));
            }
            if !email.is_empty() {
                e.insert("email".into(), json!(email));
            }
            return Some(Json::Object(e));
        }
    }
    Some(json!({"name": s}))
}

/// The path of a rule head line (`default p := …`, `p contains x if`, `a.b[x] := …`, `f(x) := …`).
fn head_path(line: &str) -> Option<Vec<String>> {
    let l = line.trim_start();
    let l = l.strip_prefix("default ").unwrap_or(l).trim_start();
    let end = l.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).unwrap_or(l.len());
    let name = &l[..end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) || ["package", "import", "else"].contains(&name) {
        return None;
    }
    Some(name.split('.').map(str::to_string).collect())
}

fn is_head(line: &str) -> bool {
    line.starts_with(|c: char| c.is_alphabetic() || c == '_') && head_path(line).is_some()
}

fn package_of(text: &str) -> Vec<String> {
    for l in text.lines() {
        if let Some(p) = l.trim_start().strip_prefix("package ") {
            let p = p.split('#').next().unwrap_or("").trim();
            return p.split('.').map(|s| s.trim_matches('"').to_string()).collect();
        }
    }
    vec![]
}

/// Reads one file's blocks into `index`; returns its rule heads.
fn scan(text: &str, file: &str, index: &mut Index) -> Result<FileInfo> {
    let lines: Vec<&str> = text.lines().collect();
    let pkg = package_of(text);
    let mut heads = Vec::new();
    let mut pending: Option<(String, usize)> = None; // YAML text, line of `# METADATA`
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_start();
        if l.starts_with('#') && l[1..].trim() == "METADATA" {
            if let Some((_, at)) = &pending {
                bail!("{file}:{}: rego_parse_error: METADATA block not followed by a rule or package", at + 1);
            }
            let start = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim_start().starts_with('#') {
                body.push(&lines[i].trim_start()[1..]);
                i += 1;
            }
            let indent = body.iter().filter(|b| !b.trim().is_empty()).map(|b| b.len() - b.trim_start().len()).min().unwrap_or(0);
            let yaml: Vec<&str> = body.iter().map(|b| b.get(indent..).unwrap_or("")).collect();
            pending = Some((yaml.join("\n"), start));
            continue;
        }
        if l.is_empty() || l.starts_with('#') {
            i += 1;
            continue;
        }
        let at_col0 = lines[i].starts_with(|c: char| !c.is_whitespace());
        if l.starts_with("package ") {
            if let Some((yaml, at)) = pending.take() {
                let b = normalise(&yaml, &format!("{file}:{}", at + 1), "package")?;
                let map = if b.scope == "subpackages" { &mut index.subpackages } else { &mut index.package };
                if map.insert(pkg.clone(), b.json).is_some() {
                    bail!("{file}:{}: rego_type_error: package annotation redeclared", at + 1);
                }
            }
        } else if at_col0 && is_head(lines[i]) {
            let path: Vec<String> = pkg.iter().cloned().chain(head_path(lines[i]).unwrap_or_default()).collect();
            let mut annotations = None;
            if let Some((yaml, at)) = pending.take() {
                let b = normalise(&yaml, &format!("{file}:{}", at + 1), "rule")?;
                match b.scope.as_str() {
                    "document" => {
                        if index.document.insert(path.clone(), b.json).is_some() {
                            bail!("{file}:{}: rego_type_error: document annotation redeclared", at + 1);
                        }
                    }
                    "rule" => annotations = Some(b.json),
                    s => bail!("{file}:{}: rego_type_error: annotation scope '{s}' must be applied to package", at + 1),
                }
            }
            heads.push(Head { line: i, path, annotations });
        } else if pending.is_some() && !l.starts_with("import ") {
            pending = None;
        }
        i += 1;
    }
    Ok(FileInfo { heads })
}

/// Reads the annotations of every policy text (all files first: package and subpackage
/// annotations apply across files).
pub fn index(texts: &[(String, &str)]) -> Result<Index> {
    let mut idx = Index::default();
    for (file, text) in texts {
        if text.contains("METADATA") {
            scan(text, file, &mut idx)?;
        }
    }
    Ok(idx)
}

fn rule_answer(head: &Head) -> Json {
    head.annotations.clone().unwrap_or_else(|| Json::Object(Map::new()))
}

fn chain_answer(head: &Head, pkg: &[String], idx: &Index) -> Json {
    let mut out = Vec::new();
    let mut first = json!({"path": head.path});
    if let Some(a) = &head.annotations {
        first["annotations"] = a.clone();
    }
    out.push(first);
    if let Some(a) = idx.document.get(&head.path) {
        out.push(json!({"path": head.path, "annotations": a}));
    }
    if let Some(a) = idx.package.get(pkg) {
        out.push(json!({"path": pkg, "annotations": a}));
    }
    for n in (1..=pkg.len()).rev() {
        if let Some(a) = idx.subpackages.get(&pkg[..n]) {
            out.push(json!({"path": &pkg[..n], "annotations": a}));
        }
    }
    Json::Array(out)
}

/// Replaces the calls in `text` (outside comments and strings) by their answers.
pub fn rewrite(text: &str, file: &str, idx: &Index) -> Result<String> {
    if !text.contains("rego.metadata.") {
        return Ok(text.to_string());
    }
    let mut scratch = Index::default();
    let info = scan(text, file, &mut scratch)?;
    let pkg = package_of(text);
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let code_end = code_length(line);
        let (code, rest) = line.split_at(code_end);
        let mut code = code.to_string();
        for (call, rule) in [("rego.metadata.rule()", true), ("rego.metadata.chain()", false)] {
            if !code.contains(call) {
                continue;
            }
            let Some(head) = info.heads.iter().rev().find(|h| h.line <= n) else {
                // Not inside a rule: left for the builtin's own error.
                continue;
            };
            let answer = if rule { rule_answer(head) } else { chain_answer(head, &pkg, idx) };
            let lit = serde_json::to_string(&answer.to_string())?;
            code = replace_outside_strings(&code, call, &format!("json.unmarshal({lit})"));
        }
        out.push_str(&code);
        out.push_str(rest);
    }
    Ok(out)
}

/// `code` with every `pat` outside string literals replaced by `rep`.
fn replace_outside_strings(code: &str, pat: &str, rep: &str) -> String {
    let b = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let (mut in_str, mut raw, mut i, mut copied) = (false, false, 0, 0);
    while i < b.len() {
        if !in_str && !raw && code[i..].starts_with(pat) {
            out.push_str(&code[copied..i]);
            out.push_str(rep);
            i += pat.len();
            copied = i;
            continue;
        }
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' if !raw => in_str = !in_str,
            b'`' if !in_str => raw = !raw,
            _ => {}
        }
        i += 1;
    }
    out.push_str(&code[copied.min(code.len())..]);
    out
}

/// Bytes of `line` before a comment (a `#` outside a string).
fn code_length(line: &str) -> usize {
    let b = line.as_bytes();
    let (mut in_str, mut raw, mut i) = (false, false, 0);
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' if !raw => in_str = !in_str,
            b'`' if !in_str => raw = !raw,
            b'#' if !in_str && !raw => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_attach_and_rewrite() {
        let src = "# METADATA\n# title: P\n# authors:\n# - Jane Doe <jane@x.io>\npackage a.b\n\n# METADATA\n# title: R\n# related_resources:\n# - https://r.example\nr := rego.metadata.rule()\n\nc := rego.metadata.chain() # rego.metadata.rule()\ns := \"rego.metadata.rule()\"\n";
        let idx = index(&[("a.rego".into(), src)]).unwrap();
        let out = rewrite(src, "a.rego", &idx).unwrap();
        assert_eq!(out.lines().count(), src.lines().count());
        let line = |n: usize| out.lines().nth(n).unwrap().to_string();
        assert!(line(10).starts_with("r := json.unmarshal("), "{out}");
        assert!(line(10).contains(r#"\"title\":\"R\""#) && line(10).contains(r#"\"ref\":\"https://r.example\""#), "{}", line(10));
        assert!(line(12).contains("# rego.metadata.rule()"), "comments untouched: {}", line(12));
        assert!(line(12).contains(r#"\"email\":\"jane@x.io\""#), "{}", line(12));
        assert_eq!(line(13), src.lines().nth(13).unwrap(), "strings untouched");
    }

    #[test]
    fn errors() {
        assert!(index(&[("a.rego".into(), "package a\n# METADATA\n# schemas:\n# - input: schema.x\np := 1\n")]).unwrap_err().to_string().contains("not supported by sluice"));
        assert!(index(&[("a.rego".into(), "package a\n# METADATA\n# title: [\np := 1\n")]).is_err());
        assert!(index(&[("a.rego".into(), "package a\n# METADATA\n# scope: document\np := 1\n# METADATA\n# scope: document\np := 2\n")]).is_err());
        assert_eq!(author("Bob"), Some(json!({"name": "Bob"})));
    }
}
