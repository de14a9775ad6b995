//! `rego.parse_module(filename, source)`: the module's syntax tree in OPA's AST JSON shape.
//!
//! The module is parsed by regorus (Rego v1, as OPA 1.x parses it) and its syntax tree is
//! rewritten into the shape OPA's parser produces and `rego.parse_module` returns: the package
//! as a `data`-rooted path, imports as refs, rules with `head` (`name`, `ref`, `key`, `args`,
//! `value`, `assign`), `body` (expressions with `index`, `terms`, `negated`, `with`), `default`
//! and the `else` chain; operators as calls of OPA's builtin names (`equal`, `plus`,
//! `internal.member_2`, …), wildcards renamed `$0`, `$1`, … in source order, object keys and
//! set members in OPA's term order, and the comments (text base64-encoded, as OPA's JSON
//! encoding of a byte slice). OPA leaves locations out of this builtin's result, and so do we.

use std::cmp::Ordering;

use anyhow::{anyhow, bail};
use base64::Engine as _;
use regorus::unstable::{
    ArithOp, AssignOp, BinOp, BoolOp, Expr, Import, Literal, LiteralStmt, Module, Parser, Query, Rule, RuleAssign,
    RuleBody, RuleHead, Source,
};
use regorus::Value;
use serde_json::{json, Map, Value as Json};

use super::Def;

pub(crate) fn defs(v: &mut Vec<Def>) {
    v.push(Def { name: "rego.parse_module", arity: 2, f: parse_module_builtin });
}

/// Largest module text accepted (bytes).
const MAX_SOURCE: usize = 1 << 20;
/// Deepest nesting of brackets (`[`, `{`, `(`) accepted in the module text: regorus' parser
/// backtracks at each level, so its time doubles with every level (16 levels take about 2 s,
/// 20 levels half a minute in a debug build); 12 levels parse in well under a second.
const MAX_NESTING: usize = 12;
/// Deepest nesting of expressions converted.
const MAX_DEPTH: usize = super::MAX_AST_DEPTH;

fn parse_module_builtin(args: &[Value]) -> anyhow::Result<Value> {
    let file = args[0].as_string().map_err(|_| anyhow!("operand 1 must be string but got {}", super::args::type_name(&args[0])))?;
    let src = args[1].as_string().map_err(|_| anyhow!("operand 2 must be string but got {}", super::args::type_name(&args[1])))?;
    let j = parse_module(file, src)?;
    Ok(Value::from(j))
}

/// Parses `src` (named `file`) and returns OPA's AST JSON of the module.
pub fn parse_module(file: &str, src: &str) -> anyhow::Result<Json> {
    if src.len() > MAX_SOURCE {
        bail!("{file}: module of {} bytes is larger than sluice's limit of {MAX_SOURCE} bytes", src.len());
    }
    let nesting = max_nesting(src);
    if nesting > MAX_NESTING {
        bail!("{file}: brackets nested {nesting} deep, deeper than sluice's limit of {MAX_NESTING} for rego.parse_module");
    }
    let source = Source::from_contents(file.to_string(), src.to_string()).map_err(|e| anyhow!("rego_parse_error: {e}"))?;
    let mut parser = Parser::new(&source).map_err(|e| anyhow!("rego_parse_error: {e}"))?;
    parser.enable_rego_v1().map_err(|e| anyhow!("rego_parse_error: {e}"))?;
    let module = parser.parse().map_err(|e| anyhow!("1 error occurred: rego_parse_error: {e}"))?;
    let mut c = Conv { wildcards: 0, depth: 0 };
    c.module(&module, file, src)
}

/// A rule body with the `else` bodies chained to it (each with its own `:=`/`=` value).
type BodyGroup<'a> = (Json, Vec<(Option<&'a RuleAssign>, Json)>);

struct Conv {
    wildcards: usize,
    depth: usize,
}

fn var(name: &str) -> Json {
    json!({"type": "var", "value": name})
}

fn string(s: &str) -> Json {
    json!({"type": "string", "value": s})
}

fn refterm(parts: Vec<Json>) -> Json {
    json!({"type": "ref", "value": parts})
}

/// The function reference of an operator or builtin name (`internal.member_2` → two parts).
fn op_ref(name: &str) -> Json {
    let mut it = name.split('.');
    let mut parts = vec![var(it.next().unwrap_or(name))];
    parts.extend(it.map(string));
    refterm(parts)
}

fn call(name: &str, args: Vec<Json>) -> Json {
    let mut v = vec![op_ref(name)];
    v.extend(args);
    json!({"type": "call", "value": v})
}

fn bool_op(op: &BoolOp) -> &'static str {
    match op {
        BoolOp::Lt => "lt",
        BoolOp::Le => "lte",
        BoolOp::Eq => "equal",
        BoolOp::Ge => "gte",
        BoolOp::Gt => "gt",
        BoolOp::Ne => "neq",
    }
}

fn arith_op(op: &ArithOp) -> &'static str {
    match op {
        ArithOp::Add => "plus",
        ArithOp::Sub => "minus",
        ArithOp::Mul => "mul",
        ArithOp::Div => "div",
        ArithOp::Mod => "rem",
    }
}

fn bin_op(op: &BinOp) -> &'static str {
    match op {
        BinOp::Union => "or",
        BinOp::Intersection => "and",
    }
}

fn assign_op(op: &AssignOp) -> &'static str {
    match op {
        AssignOp::Eq => "eq",
        AssignOp::ColEq => "assign",
    }
}

fn number(v: &Value) -> anyhow::Result<Json> {
    Ok(json!({"type": "number", "value": serde_json::to_value(v)?}))
}

impl Conv {
    fn module(&mut self, m: &Module, file: &str, src: &str) -> anyhow::Result<Json> {
        let mut out = Map::new();
        let mut path = vec![var("data")];
        match self.term(&m.package.refr)? {
            Json::Object(t) if t["type"] == "ref" => {
                let parts = t["value"].as_array().cloned().unwrap_or_default();
                for (i, p) in parts.into_iter().enumerate() {
                    // The package's first name is a var in the ref; OPA stores it as a string.
                    if i == 0 {
                        path.push(string(p["value"].as_str().unwrap_or_default()));
                    } else {
                        path.push(p);
                    }
                }
            }
            t => path.push(string(t["value"].as_str().unwrap_or_default())),
        }
        out.insert("package".into(), json!({"path": path}));
        if !m.imports.is_empty() {
            let imports = m.imports.iter().map(|i| self.import(i)).collect::<anyhow::Result<Vec<_>>>()?;
            out.insert("imports".into(), Json::Array(imports));
        }
        let mut rules = Vec::new();
        for r in &m.policy {
            self.rule(r, &mut rules)?;
        }
        if !rules.is_empty() {
            out.insert("rules".into(), Json::Array(rules));
        }
        let comments = comments(file, src);
        if !comments.is_empty() {
            out.insert("comments".into(), Json::Array(comments));
        }
        Ok(Json::Object(out))
    }

    fn import(&mut self, i: &Import) -> anyhow::Result<Json> {
        let mut path = self.term(&i.refr)?;
        if path["type"] == "var" {
            path = refterm(vec![path]);
        }
        let mut o = Map::new();
        o.insert("path".into(), path);
        if let Some(alias) = &i.r#as {
            o.insert("alias".into(), Json::String(alias.text().to_string()));
        }
        Ok(Json::Object(o))
    }

    /// The parts of a rule head's reference.
    fn head_ref(&mut self, e: &Expr) -> anyhow::Result<Vec<Json>> {
        let t = self.term(e)?;
        Ok(match t["type"].as_str() {
            Some("ref") => t["value"].as_array().cloned().unwrap_or_default(),
            _ => vec![t],
        })
    }

    fn rule(&mut self, r: &Rule, out: &mut Vec<Json>) -> anyhow::Result<()> {
        match r {
            Rule::Default { refr, args, op, value, .. } => {
                let refp = self.head_ref(refr)?;
                let args = args.iter().map(|a| self.term(a)).collect::<anyhow::Result<Vec<_>>>()?;
                let value = self.term(value)?;
                let mut head = value_head(refp, args, matches!(op, AssignOp::ColEq));
                head.insert("value".into(), value);
                out.push(json!({"body": true_body(), "default": true, "head": head}));
            }
            Rule::Spec { head, bodies, .. } => {
                let base = match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        let refp = self.head_ref(refr)?;
                        let mut h = value_head(refp, vec![], assign.as_ref().is_some_and(|a| matches!(a.op, AssignOp::ColEq)));
                        let v = match assign {
                            Some(a) => self.term(&a.value)?,
                            None => {
                                // `a.b if …`: OPA names no rule and keeps the key only when
                                // it is a variable.
                                if h.get("key").is_some() {
                                    h.remove("name");
                                    if h["key"]["type"] != "var" {
                                        h.remove("key");
                                    }
                                }
                                json!({"type": "boolean", "value": true})
                            }
                        };
                        h.insert("value".into(), v);
                        h
                    }
                    RuleHead::Set { refr, key, .. } => {
                        let refp = self.head_ref(refr)?;
                        let mut h = Map::new();
                        if refp.len() == 1 {
                            h.insert("name".into(), refp[0]["value"].clone());
                        }
                        h.insert("ref".into(), Json::Array(refp));
                        if let Some(k) = key {
                            h.insert("key".into(), self.term(k)?);
                        }
                        h
                    }
                    RuleHead::Func { refr, args, assign, .. } => {
                        let refp = self.head_ref(refr)?;
                        let args = args.iter().map(|a| self.term(a)).collect::<anyhow::Result<Vec<_>>>()?;
                        let mut h = value_head(refp, args, assign.as_ref().is_some_and(|a| matches!(a.op, AssignOp::ColEq)));
                        let v = match assign {
                            Some(a) => self.term(&a.value)?,
                            None => json!({"type": "boolean", "value": true}),
                        };
                        h.insert("value".into(), v);
                        h
                    }
                };
                if bodies.is_empty() {
                    out.push(json!({"body": true_body(), "head": base}));
                    return Ok(());
                }
                // Bodies not introduced by `else` are separate rules sharing the head; each
                // `else` chains onto the rule before it.
                let mut groups: Vec<BodyGroup> = Vec::new();
                for b in bodies {
                    let body = self.body(b)?;
                    if b.is_else {
                        match groups.last_mut() {
                            Some(g) => g.1.push((b.assign.as_ref(), body)),
                            None => bail!("rego_parse_error: else without a rule body"),
                        }
                    } else {
                        groups.push((body, Vec::new()));
                    }
                }
                let parent_assign = base.get("assign").is_some();
                for (body, elses) in groups {
                    let mut rule = Map::new();
                    rule.insert("body".into(), body);
                    rule.insert("head".into(), Json::Object(base.clone()));
                    // Build the else chain from its end.
                    let mut tail: Option<Json> = None;
                    let mut built = Vec::new();
                    for (assign, ebody) in elses {
                        let mut h = base.clone();
                        match assign {
                            Some(a) => {
                                h.insert("value".into(), self.term(&a.value)?);
                                if matches!(a.op, AssignOp::ColEq) {
                                    h.insert("assign".into(), Json::Bool(true));
                                } else {
                                    h.remove("assign");
                                }
                            }
                            None => {
                                h.insert("value".into(), json!({"type": "boolean", "value": true}));
                                if parent_assign {
                                    h.insert("assign".into(), Json::Bool(true));
                                }
                            }
                        }
                        built.push((h, ebody));
                    }
                    for (h, ebody) in built.into_iter().rev() {
                        let mut e = Map::new();
                        e.insert("body".into(), ebody);
                        e.insert("head".into(), Json::Object(h));
                        if let Some(t) = tail.take() {
                            e.insert("else".into(), t);
                        }
                        tail = Some(Json::Object(e));
                    }
                    if let Some(t) = tail {
                        rule.insert("else".into(), t);
                    }
                    out.push(Json::Object(rule));
                }
            }
        }
        Ok(())
    }

    fn body(&mut self, b: &RuleBody) -> anyhow::Result<Json> {
        self.query(&b.query)
    }

    fn query(&mut self, q: &Query) -> anyhow::Result<Json> {
        if q.stmts.is_empty() {
            return Ok(true_body());
        }
        let mut v = Vec::new();
        for (i, s) in q.stmts.iter().enumerate() {
            v.push(self.stmt(s, i)?);
        }
        Ok(Json::Array(v))
    }

    fn stmt(&mut self, s: &LiteralStmt, index: usize) -> anyhow::Result<Json> {
        let mut o = Map::new();
        o.insert("index".into(), json!(index));
        let terms = match &s.literal {
            Literal::SomeVars { vars, .. } => {
                let vars: Vec<Json> = vars.iter().map(|v| self.var_text(v.text())).collect();
                json!({"symbols": vars})
            }
            Literal::SomeIn { key, value, collection, .. } => {
                json!({"symbols": [self.membership(key.as_ref(), value, collection)?]})
            }
            Literal::Expr { expr, .. } => self.top(expr)?,
            Literal::NotExpr { expr, .. } => {
                o.insert("negated".into(), Json::Bool(true));
                self.top(expr)?
            }
            Literal::Every { key, value, domain, query, .. } => {
                let key = match key {
                    Some(k) => self.var_text(k.text()),
                    None => Json::Null,
                };
                let value = self.var_text(value.text());
                let domain = self.term(domain)?;
                let body = self.nested(|c| c.query(query))?;
                json!({"body": body, "domain": domain, "key": key, "value": value})
            }
        };
        o.insert("terms".into(), terms);
        if !s.with_mods.is_empty() {
            let mut w = Vec::new();
            for m in &s.with_mods {
                let target = self.term(&m.refr)?;
                w.push(json!({"target": target, "value": self.term(&m.r#as)?}));
            }
            o.insert("with".into(), Json::Array(w));
        }
        Ok(Json::Object(o))
    }

    fn var_text(&mut self, name: &str) -> Json {
        if name == "_" {
            let v = var(&format!("${}", self.wildcards));
            self.wildcards += 1;
            v
        } else {
            var(name)
        }
    }

    fn membership(&mut self, key: Option<&regorus::unstable::Ref<Expr>>, value: &Expr, coll: &Expr) -> anyhow::Result<Json> {
        Ok(match key {
            Some(k) => {
                let k = self.term(k)?;
                let v = self.term(value)?;
                call("internal.member_3", vec![k, v, self.term(coll)?])
            }
            None => {
                let v = self.term(value)?;
                call("internal.member_2", vec![v, self.term(coll)?])
            }
        })
    }

    /// An expression at the top of a literal: a call's terms are spread out.
    fn top(&mut self, e: &Expr) -> anyhow::Result<Json> {
        let t = self.term(e)?;
        Ok(match t {
            Json::Object(mut o) if o.get("type").and_then(Json::as_str) == Some("call") => o.remove("value").unwrap_or(Json::Null),
            t => t,
        })
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> anyhow::Result<T>) -> anyhow::Result<T> {
        if self.depth >= MAX_DEPTH {
            bail!("rego_parse_error: module nested deeper than sluice's limit of {MAX_DEPTH}");
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn term(&mut self, e: &Expr) -> anyhow::Result<Json> {
        self.nested(|c| c.term_inner(e))
    }

    fn term_inner(&mut self, e: &Expr) -> anyhow::Result<Json> {
        Ok(match e {
            Expr::String { value, .. } | Expr::RawString { value, .. } => {
                string(value.as_string().map_err(|_| anyhow!("string literal is not a string"))?)
            }
            Expr::Number { value, .. } => number(value)?,
            Expr::Bool { value, .. } => json!({"type": "boolean", "value": value.as_bool().map_err(|_| anyhow!("bad boolean"))?}),
            Expr::Null { .. } => json!({"type": "null", "value": {}}),
            Expr::Var { span, .. } => {
                let name = span.text();
                if name == "input" || name == "data" {
                    refterm(vec![var(name)])
                } else {
                    self.var_text(name)
                }
            }
            Expr::Array { items, .. } => {
                let v = items.iter().map(|i| self.term(i)).collect::<anyhow::Result<Vec<_>>>()?;
                json!({"type": "array", "value": v})
            }
            Expr::Set { items, .. } => {
                let mut v = items.iter().map(|i| self.term(i)).collect::<anyhow::Result<Vec<_>>>()?;
                v.sort_by(compare);
                v.dedup_by(|a, b| compare(a, b) == Ordering::Equal);
                json!({"type": "set", "value": v})
            }
            Expr::Object { fields, .. } => {
                let mut v = Vec::new();
                for (_, k, val) in fields {
                    let k = self.term(k)?;
                    let val = self.term(val)?;
                    v.push((k, val));
                }
                // A repeated key keeps its last value, as OPA's object insertion does.
                let mut uniq: Vec<(Json, Json)> = Vec::new();
                for (k, val) in v {
                    match uniq.iter_mut().find(|(k2, _)| compare(k2, &k) == Ordering::Equal) {
                        Some(slot) => slot.1 = val,
                        None => uniq.push((k, val)),
                    }
                }
                uniq.sort_by(|a, b| compare(&a.0, &b.0));
                let v: Vec<Json> = uniq.into_iter().map(|(k, v)| json!([k, v])).collect();
                json!({"type": "object", "value": v})
            }
            Expr::ArrayCompr { term, query, .. } => {
                let t = self.term(term)?;
                let body = self.nested(|c| c.query(query))?;
                json!({"type": "arraycomprehension", "value": {"body": body, "term": t}})
            }
            Expr::SetCompr { term, query, .. } => {
                let t = self.term(term)?;
                let body = self.nested(|c| c.query(query))?;
                json!({"type": "setcomprehension", "value": {"body": body, "term": t}})
            }
            Expr::ObjectCompr { key, value, query, .. } => {
                let k = self.term(key)?;
                let v = self.term(value)?;
                let body = self.nested(|c| c.query(query))?;
                json!({"type": "objectcomprehension", "value": {"body": body, "key": k, "value": v}})
            }
            Expr::Call { fcn, params, .. } => {
                let mut f = self.term(fcn)?;
                if f["type"] == "var" {
                    f = refterm(vec![f]);
                }
                let mut v = vec![f];
                for p in params {
                    v.push(self.term(p)?);
                }
                json!({"type": "call", "value": v})
            }
            Expr::UnaryExpr { expr, .. } => match expr.as_ref() {
                Expr::Number { value, .. } => {
                    let n = serde_json::to_value(value)?;
                    let neg = match (n.as_i64(), n.as_f64()) {
                        (Some(i), _) if i != i64::MIN => json!(-i),
                        (_, Some(f)) => json!(-f),
                        _ => bail!("rego_parse_error: number {n} cannot be negated"),
                    };
                    json!({"type": "number", "value": neg})
                }
                other => {
                    let t = self.term(other)?;
                    call("minus", vec![json!({"type": "number", "value": 0}), t])
                }
            },
            Expr::RefDot { refr, field, .. } => {
                let mut parts = self.ref_parts(refr)?;
                parts.push(string(field.1.as_string().map_err(|_| anyhow!("bad field"))?));
                refterm(parts)
            }
            Expr::RefBrack { refr, index, .. } => {
                let mut parts = self.ref_parts(refr)?;
                let i = self.term(index)?;
                // A root document inside brackets stays a ref term.
                parts.push(i);
                refterm(parts)
            }
            Expr::BinExpr { op, lhs, rhs, .. } => {
                let (l, r) = (self.term(lhs)?, self.term(rhs)?);
                call(bin_op(op), vec![l, r])
            }
            Expr::BoolExpr { op, lhs, rhs, .. } => {
                let (l, r) = (self.term(lhs)?, self.term(rhs)?);
                call(bool_op(op), vec![l, r])
            }
            Expr::ArithExpr { op, lhs, rhs, .. } => {
                let (l, r) = (self.term(lhs)?, self.term(rhs)?);
                call(arith_op(op), vec![l, r])
            }
            Expr::AssignExpr { op, lhs, rhs, .. } => {
                let (l, r) = (self.term(lhs)?, self.term(rhs)?);
                call(assign_op(op), vec![l, r])
            }
            Expr::Membership { key, value, collection, .. } => self.membership(key.as_ref(), value, collection)?,
            #[allow(unreachable_patterns)]
            _ => bail!("rego_parse_error: expression not supported by sluice's rego.parse_module"),
        })
    }

    /// The parts of the reference `e` is (a non-ref term becomes the reference's head).
    fn ref_parts(&mut self, e: &Expr) -> anyhow::Result<Vec<Json>> {
        if let Expr::Var { span, .. } = e {
            return Ok(vec![self.var_text(span.text())]);
        }
        let t = self.term(e)?;
        Ok(match t["type"].as_str() {
            Some("ref") => t["value"].as_array().cloned().unwrap_or_default(),
            _ => vec![t],
        })
    }
}

fn true_body() -> Json {
    json!([{"index": 0, "terms": {"type": "boolean", "value": true}}])
}

/// The head of a value-producing rule: `name` and `key` as OPA sets them from the reference.
fn value_head(refp: Vec<Json>, args: Vec<Json>, assign: bool) -> Map<String, Json> {
    let mut h = Map::new();
    if refp.len() <= 2 {
        h.insert("name".into(), refp[0]["value"].clone());
    }
    if refp.len() == 2 {
        h.insert("key".into(), refp[1].clone());
    }
    if !args.is_empty() {
        h.insert("args".into(), Json::Array(args));
    }
    if assign {
        h.insert("assign".into(), Json::Bool(true));
    }
    h.insert("ref".into(), Json::Array(refp));
    h
}

fn rank(t: &Json) -> u8 {
    match t["type"].as_str().unwrap_or("") {
        "null" => 0,
        "boolean" => 1,
        "number" => 2,
        "string" => 3,
        "var" => 4,
        "ref" => 5,
        "array" => 6,
        "object" => 7,
        "set" => 8,
        "arraycomprehension" => 9,
        "objectcomprehension" => 10,
        "setcomprehension" => 11,
        _ => 12,
    }
}

fn compare_seq(a: &[Json], b: &[Json]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let c = compare(x, y);
        if c != Ordering::Equal {
            return c;
        }
    }
    a.len().cmp(&b.len())
}

/// OPA's order of terms (`ast.Compare`): by kind, then by value.
fn compare(a: &Json, b: &Json) -> Ordering {
    let (ra, rb) = (rank(a), rank(b));
    if ra != rb {
        return ra.cmp(&rb);
    }
    let (va, vb) = (&a["value"], &b["value"]);
    match ra {
        0 => Ordering::Equal,
        1 => va.as_bool().cmp(&vb.as_bool()),
        2 => va.as_f64().unwrap_or(0.0).partial_cmp(&vb.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal),
        3 | 4 => va.as_str().cmp(&vb.as_str()),
        5 | 6 | 8 | 12 => compare_seq(va.as_array().map(Vec::as_slice).unwrap_or(&[]), vb.as_array().map(Vec::as_slice).unwrap_or(&[])),
        7 => {
            let pa = va.as_array().map(Vec::as_slice).unwrap_or(&[]);
            let pb = vb.as_array().map(Vec::as_slice).unwrap_or(&[]);
            for (x, y) in pa.iter().zip(pb) {
                let c = compare(&x[0], &y[0]);
                if c != Ordering::Equal {
                    return c;
                }
                let c = compare(&x[1], &y[1]);
                if c != Ordering::Equal {
                    return c;
                }
            }
            pa.len().cmp(&pb.len())
        }
        _ => va.to_string().cmp(&vb.to_string()),
    }
}

/// The deepest nesting of `[`, `{` and `(` outside strings and comments.
fn max_nesting(src: &str) -> usize {
    let b = src.as_bytes();
    let (mut i, mut depth, mut deepest) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'[' | b'{' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// The module's comments as OPA records them: the text after `#` (base64, as Go encodes a
/// byte slice) and the position of the `#` (row, byte column from 1).
fn comments(file: &str, src: &str) -> Vec<Json> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut row, mut line_start) = (0usize, 1usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'\n' => {
                row += 1;
                line_start = i + 1;
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    if b[i] == b'\n' {
                        row += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'#' => {
                let start = i + 1;
                let mut end = start;
                while end < b.len() && b[end] != b'\n' {
                    end += 1;
                }
                let mut text = &b[start..end];
                if text.last() == Some(&b'\r') {
                    text = &text[..text.len() - 1];
                }
                out.push(json!({
                    "Location": {"col": i - line_start + 1, "file": file, "row": row},
                    "Text": base64::engine::general_purpose::STANDARD.encode(text),
                }));
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_of_every_form() {
        let j = parse_module("f.rego", "package p\nimport rego.v1\nimport data.x.y as z\nimport input.a\nimport input\n").unwrap();
        let paths: Vec<String> = j["imports"].as_array().unwrap().iter().map(|i| i["path"].to_string()).collect();
        assert_eq!(paths.len(), 4, "{j}");
        assert_eq!(j["imports"][1]["alias"], "z");
    }

    #[test]
    fn comments_skip_strings_and_keep_positions() {
        let j = parse_module("m.rego", "package p # one\nx := \"#no\" # two\ny := `#\nno` #three\r\n").unwrap();
        let c = j["comments"].as_array().unwrap();
        assert_eq!(c.len(), 3, "{j}");
        assert_eq!(c[0]["Location"], json!({"col": 11, "file": "m.rego", "row": 1}));
        assert_eq!(c[1]["Location"]["row"], 2);
        assert_eq!(c[1]["Location"]["col"], 12);
        assert_eq!(c[2]["Location"]["row"], 4);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(c[0]["Text"], b64(" one"));
        assert_eq!(c[2]["Text"], b64("three"));
    }

    #[test]
    fn wildcards_are_numbered_in_source_order() {
        let j = parse_module("f.rego", "package p\nr if { input[_] == data.x[_] }\ns if input[_]\n").unwrap();
        let s = j.to_string();
        let (a, b, c) = (s.find("\"$0\"").unwrap(), s.find("\"$1\"").unwrap(), s.find("\"$2\"").unwrap());
        assert!(a < b && b < c, "{s}");
        assert!(!s.contains("\"_\""), "{s}");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for src in ["", "package", "package p\nx := ", "package p\nx := [1,", "package p\nf(", "\u{0}", "package p\n\"unterminated", "package p\nx := `raw"] {
            assert!(parse_module("f.rego", src).is_err(), "{src:?}");
        }
        assert!(parse_module("f.rego", &"#".repeat(MAX_SOURCE + 1)).is_err());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        for (open, close) in [("[", "]"), ("{", "}"), ("(", ")")] {
            let deep = format!("package p\nx := {}1{}\n", open.repeat(2000), close.repeat(2000));
            let t = std::time::Instant::now();
            let e = parse_module("f.rego", &deep).unwrap_err().to_string();
            assert!(e.contains("limit of 12"), "{e}");
            assert!(t.elapsed() < std::time::Duration::from_secs(1));
        }
        let ok = format!("package p\nx := {}1{}\n", "[".repeat(10), "]".repeat(10));
        assert!(parse_module("f.rego", &ok).is_ok());
        // Brackets inside strings and comments do not count.
        let quoted = format!("package p\nx := \"{}\" # {}\ny := `{}`\n", "[".repeat(40), "{".repeat(40), "(".repeat(40));
        assert!(parse_module("f.rego", &quoted).is_ok());
    }

    #[test]
    fn builtin_checks_argument_types() {
        assert!(parse_module_builtin(&[Value::from(1i64), Value::from("package p")]).is_err());
        assert!(parse_module_builtin(&[Value::from("f"), Value::Null]).is_err());
        let v = parse_module_builtin(&[Value::from("f"), Value::from("package a.b\n")]).unwrap();
        assert_eq!(v["package"]["path"][2]["value"], Value::from("b"));
    }

    #[test]
    fn object_keys_and_set_members_follow_opa_order() {
        let j = parse_module("f.rego", "package p\nx := {\"b\": 1, 2: 0, null: 1, \"a\": {\"z\", 3, false}}\n").unwrap();
        let o = &j["rules"][0]["head"]["value"]["value"];
        let keys: Vec<&Json> = o.as_array().unwrap().iter().map(|p| &p[0]["value"]).collect();
        assert_eq!(keys, vec![&json!({}), &json!(2), &json!("a"), &json!("b")]);
        let set = &o[2][1]["value"];
        assert_eq!(set, &json!([{"type": "boolean", "value": false}, {"type": "number", "value": 3}, {"type": "string", "value": "z"}]));
    }
}
