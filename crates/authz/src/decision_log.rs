//! Decision logs in the shape OPA's console decision logger prints (`decision_logs.console=true`).
//!
//! Each decision becomes one JSON object with keys in sorted order:
//! `decision_id`, `error` (instead of `result` on failure), `input`, `labels {id, version}`,
//! `level` (`info`), `metrics {timer_rego_query_compile_ns (first decision after a load),
//! timer_rego_query_eval_ns, timer_server_handler_ns}`, `msg` (`Decision Log`), `path`,
//! `req_id`/`requested_by` (REST API decisions only), `result`, `time` (RFC 3339, seconds),
//! `timestamp` (RFC 3339 with nanoseconds) and `type` (`openpolicyagent.org/decision_logs`).
//! Strings are HTML-escaped as Go's encoder does (`<` → `\u003c`, `>` → `\u003e`, `&` →
//! `\u0026`). [`LogFormat::JsonPretty`] prints it with a 2-space indent, otherwise one line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use regorus::Value;
use serde_json::{Map, Value as Json};

use crate::input::{rfc3339_nano, rfc3339_seconds};

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable text logs; decision logs are still JSON, one per line.
    Text,
    /// One JSON object per line (OPA's default).
    #[default]
    Json,
    /// Indented JSON objects (what the guide uses).
    JsonPretty,
}

/// A writer shared with the caller, e.g. a test capturing the decision log.
pub type SharedWriter = Arc<Mutex<dyn Write + Send>>;

/// Where decision logs go.
#[derive(Clone, Default)]
pub enum DecisionLogSink {
    /// No decision logging.
    #[default]
    Off,
    /// Standard output (`--decision-log=console`, or `--set=decision_logs.console=true`).
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// An injected writer (library use and tests).
    Writer(SharedWriter),
}

impl std::fmt::Debug for DecisionLogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecisionLogSink::Off => f.write_str("Off"),
            DecisionLogSink::Stdout => f.write_str("Stdout"),
            DecisionLogSink::File(p) => write!(f, "File({})", p.display()),
            DecisionLogSink::Writer(_) => f.write_str("Writer(..)"),
        }
    }
}

enum Out {
    Stdout,
    Writer(SharedWriter),
}

/// Formats and writes decision log entries. Formatting happens outside any lock; only the
/// final write of one entry is serialised.
pub struct DecisionLogger {
    out: Option<Out>,
    pretty: bool,
    instance_id: String,
    version: String,
    labels: Vec<(String, String)>,
    remote: Option<std::sync::Arc<crate::decision_upload::Uploader>>,
}

/// One decision, as handed to [`DecisionLogger::log`].
pub struct Entry<'a> {
    /// `(bundle, revision)` of the active bundles.
    pub bundles: &'a [(String, String)],
    /// The decision id (also in the response's dynamic metadata).
    pub decision_id: &'a str,
    /// The input document.
    pub input: Option<&'a Value>,
    /// The decision, or the error text.
    pub result: Result<&'a Value, &'a str>,
    /// The decision path (`envoy/authz/allow`).
    pub path: &'a str,
    /// Evaluation time.
    pub eval_ns: u64,
    /// Whole handler time.
    pub handler_ns: u64,
    /// Compile time, on the first decision after a load.
    pub compile_ns: Option<u64>,
    /// REST API: the client address.
    pub requested_by: Option<String>,
    /// REST API: a request counter.
    pub req_id: Option<u64>,
    /// The value of `data.system.log.mask` for this event, if the policies define it.
    pub mask: Option<Json>,
}

/// Applies a `data.system.log.mask` result to an event: each string is a JSON pointer to
/// remove (listed in `erased`); each `{"op": "remove"|"upsert", "path", "value"}` removes or
/// sets (listed in `erased` / `masked`). Only paths under `/input` and `/result` are touched.
pub fn apply_mask(event: &mut Map<String, Json>, mask: &Json) {
    let mut ops: Vec<(String, String, Option<Json>)> = Vec::new();
    for m in mask.as_array().into_iter().flatten() {
        match m {
            Json::String(p) => ops.push(("remove".into(), p.clone(), None)),
            Json::Object(o) => {
                let op = o.get("op").and_then(Json::as_str).unwrap_or("remove").to_string();
                if let Some(p) = o.get("path").and_then(Json::as_str) {
                    ops.push((op, p.to_string(), o.get("value").cloned()));
                }
            }
            _ => {}
        }
    }
    let (mut erased, mut masked) = (Vec::new(), Vec::new());
    let mut doc = Json::Object(std::mem::take(event));
    for (op, path, value) in ops {
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        if segs.is_empty() || (segs[0] != "input" && segs[0] != "result") {
            continue;
        }
        let (last, parents) = segs.split_last().expect("non-empty");
        let parent_ptr: String = parents.iter().map(|s| format!("/{s}")).collect();
        let last = last.replace("~1", "/").replace("~0", "~");
        let Some(Json::Object(parent)) = doc.pointer_mut(&parent_ptr) else { continue };
        match (op.as_str(), value) {
            ("remove", _) if parent.remove(&last).is_some() => erased.push(path),
            ("upsert", Some(v)) => {
                parent.insert(last, v);
                masked.push(path);
            }
            _ => {}
        }
    }
    if let Json::Object(o) = doc {
        *event = o;
    }
    if !erased.is_empty() {
        event.insert("erased".into(), erased.into());
    }
    if !masked.is_empty() {
        event.insert("masked".into(), masked.into());
    }
}

impl DecisionLogger {
    /// Opens the sink (creating/appending a file if asked).
    pub fn new(sink: &DecisionLogSink, format: LogFormat, instance_id: String, version: String) -> anyhow::Result<Self> {
        let out = match sink {
            DecisionLogSink::Off => None,
            DecisionLogSink::Stdout => Some(Out::Stdout),
            DecisionLogSink::File(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| anyhow::anyhow!("decision log file {}: {e}", p.display()))?;
                Some(Out::Writer(Arc::new(Mutex::new(f))))
            }
            DecisionLogSink::Writer(w) => Some(Out::Writer(w.clone())),
        };
        Ok(DecisionLogger { out, pretty: format == LogFormat::JsonPretty, instance_id, version, labels: Vec::new(), remote: None })
    }

    /// Extra labels (OPA's `labels` configuration), next to `id` and `version`.
    pub fn set_labels(&mut self, labels: Vec<(String, String)>) {
        self.labels = labels;
    }

    /// Sends every entry to a decision log service too.
    pub fn set_remote(&mut self, u: std::sync::Arc<crate::decision_upload::Uploader>) {
        self.remote = Some(u);
    }

    /// Whether entries are written at all (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.out.is_some() || self.remote.is_some()
    }

    /// Builds the JSON object of one entry (exposed for tests).
    pub fn entry_json(&self, e: &Entry<'_>) -> Json {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut m = Map::new();
        if !e.bundles.is_empty() {
            let b: Map<String, Json> = e.bundles.iter().map(|(n, r)| (n.clone(), serde_json::json!({ "revision": r }))).collect();
            m.insert("bundles".into(), Json::Object(b));
        }
        m.insert("decision_id".into(), e.decision_id.into());
        let masking = e.mask.is_some();
        if let Err(msg) = e.result {
            m.insert("error".into(), serde_json::json!({ "message": msg }));
        }
        if let Some(input) = e.input {
            m.insert("input".into(), value_json(input));
        }
        let mut labels: std::collections::BTreeMap<String, Json> = self.labels.iter().map(|(k, v)| (k.clone(), v.as_str().into())).collect();
        labels.insert("id".into(), self.instance_id.as_str().into());
        labels.insert("version".into(), self.version.as_str().into());
        m.insert("labels".into(), Json::Object(labels.into_iter().collect()));
        m.insert("level".into(), "info".into());
        let mut metrics = Map::new();
        if let Some(c) = e.compile_ns {
            metrics.insert("timer_rego_query_compile_ns".into(), c.into());
        }
        metrics.insert("timer_rego_query_eval_ns".into(), e.eval_ns.into());
        metrics.insert("timer_server_handler_ns".into(), e.handler_ns.into());
        m.insert("metrics".into(), Json::Object(metrics));
        m.insert("msg".into(), "Decision Log".into());
        m.insert("path".into(), e.path.into());
        if let Some(id) = e.req_id {
            m.insert("req_id".into(), id.into());
        }
        if let Some(by) = &e.requested_by {
            m.insert("requested_by".into(), by.as_str().into());
        }
        if let Ok(v) = e.result {
            m.insert("result".into(), value_json(v));
        }
        m.insert("time".into(), format!("{}Z", rfc3339_seconds(now.as_secs() as i64)).into());
        m.insert("timestamp".into(), rfc3339_nano(now.as_secs() as i64, now.subsec_nanos()).into());
        m.insert("type".into(), "openpolicyagent.org/decision_logs".into());
        if masking {
            if let Some(mask) = &e.mask {
                apply_mask(&mut m, mask);
            }
            // Keep the keys sorted as OPA's console logger prints them.
            let mut items: Vec<(String, Json)> = std::mem::take(&mut m).into_iter().collect();
            items.sort_by(|a, b| a.0.cmp(&b.0));
            m = items.into_iter().collect();
        }
        Json::Object(m)
    }

    /// Formats and writes one entry. Write errors are logged, not returned.
    pub fn log(&self, e: &Entry<'_>) {
        if self.out.is_none() && self.remote.is_none() {
            return;
        }
        let j = self.entry_json(e);
        if let Some(r) = &self.remote {
            // The service gets OPA's EventV1: without the console logger's own keys.
            let mut ev = j.clone();
            if let Some(o) = ev.as_object_mut() {
                for k in ["level", "msg", "time", "type"] {
                    o.remove(k);
                }
            }
            r.push(&ev);
        }
        let Some(out) = &self.out else { return };
        let mut text = if self.pretty {
            serde_json::to_string_pretty(&j)
        } else {
            serde_json::to_string(&j)
        }
        .unwrap_or_default();
        text = go_html_escape(text);
        text.push('\n');
        let res = match out {
            Out::Stdout => {
                let mut so = std::io::stdout().lock();
                so.write_all(text.as_bytes()).and_then(|_| so.flush())
            }
            Out::Writer(w) => match w.lock() {
                Ok(mut w) => w.write_all(text.as_bytes()).and_then(|_| w.flush()),
                Err(_) => Ok(()),
            },
        };
        if let Err(err) = res {
            tracing::warn!("decision log write failed: {err}");
        }
    }
}

/// A regorus value as JSON (sets become arrays, objects keep their sorted key order).
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::Undefined => Json::Null,
        _ => serde_json::to_value(v).unwrap_or_else(|_| lossless_json(v)),
    }
}

/// The JSON of a value holding integers beyond f64's range (RSA moduli from the X.509
/// builtins, …), which serde_json cannot write without its `arbitrary_precision` feature
/// (regorus then fails the whole value): such integers become their decimal digits as a
/// string (OPA prints them as numbers); everything else is as [`value_json`]. (Integers wider
/// than 64 bits but within f64's range are written by regorus as the nearest double.)
fn lossless_json(v: &Value) -> Json {
    match v {
        Value::Number(n) => {
            let d = n.format_decimal();
            serde_json::from_str::<Json>(&d).ok().filter(Json::is_number).unwrap_or(Json::String(d))
        }
        Value::Array(a) => Json::Array(a.iter().map(lossless_json).collect()),
        Value::Set(s) => Json::Array(s.iter().map(lossless_json).collect()),
        Value::Object(o) => Json::Object(
            o.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::String(s) => s.to_string(),
                        other => serde_json::to_string(&lossless_json(other)).unwrap_or_default(),
                    };
                    (key, lossless_json(v))
                })
                .collect(),
        ),
        Value::Undefined => Json::Null,
        other => serde_json::to_value(other).unwrap_or(Json::Null),
    }
}

/// Go's `encoding/json` escapes `<`, `>`, `&`, U+2028 and U+2029 inside strings. In serialized
/// JSON these characters can only appear inside strings, so a plain replacement is exact.
pub fn go_html_escape(s: String) -> String {
    if !s.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return s;
    }
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_integers_are_kept_as_digits() {
        // Beyond f64's range (an RSA-2048 modulus has 617 digits): serde_json cannot write it.
        let digits = format!("1{}", "0".repeat(400));
        let big = Value::from_numeric_string(&digits).unwrap();
        let v = Value::from(vec![big, Value::from(7i64), Value::from("x")]);
        assert_eq!(value_json(&v), serde_json::json!([digits, 7, "x"]));
        assert_eq!(value_json(&Value::from(3.5f64)), serde_json::json!(3.5));
    }

    #[test]
    fn masks_remove_and_upsert() {
        let mut ev: Map<String, Json> = serde_json::from_value(serde_json::json!({
            "input": {"password": "x", "user": {"token": "t", "name": "n"}}, "result": true, "path": "p"
        }))
        .unwrap();
        apply_mask(&mut ev, &serde_json::json!(["/input/password", {"op": "upsert", "path": "/input/user/token", "value": "**"}, "/path", "/input/missing"]));
        assert_eq!(ev["input"], serde_json::json!({"user": {"token": "**", "name": "n"}}));
        assert_eq!(ev["erased"], serde_json::json!(["/input/password"]));
        assert_eq!(ev["masked"], serde_json::json!(["/input/user/token"]));
        assert_eq!(ev["path"], "p");
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pretty_sorted_escaped() {
        let buf = Buf::default();
        let sink = DecisionLogSink::Writer(Arc::new(Mutex::new(buf.clone())));
        let l = DecisionLogger::new(&sink, LogFormat::JsonPretty, "inst".into(), "v".into()).unwrap();
        let input = Value::from_json_str(r#"{"b":1,"a":"<&>"}"#).unwrap();
        let result = Value::from(true);
        l.log(&Entry {
            mask: None,
            bundles: &[],
            decision_id: "d1",
            input: Some(&input),
            result: Ok(&result),
            path: "envoy/authz/allow",
            eval_ns: 5,
            handler_ns: 9,
            compile_ns: None,
            requested_by: None,
            req_id: None,
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("{\n  \"decision_id\": \"d1\",\n  \"input\": {\n    \"a\": \"\\u003c\\u0026\\u003e\""), "{text}");
        let j: Json = serde_json::from_str(&text).unwrap();
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(j["input"]["a"], "<&>");
        assert_eq!(j["type"], "openpolicyagent.org/decision_logs");
        assert!(j["time"].as_str().unwrap().ends_with('Z'));
    }
}
