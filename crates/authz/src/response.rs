//! Mapping a policy decision onto an Envoy `CheckResponse`, as OPA's envoy plugin does.
//!
//! | decision | `status.code` | `http_response` |
//! |---|---|---|
//! | `true` | OK | none |
//! | `false` | PERMISSION_DENIED | none (Envoy answers 403, empty body) |
//! | `{"allowed": true, …}` | OK | `OkResponse{headers, headers_to_remove, response_headers_to_add, query_parameters_to_set, query_parameters_to_remove}` |
//! | `{"allowed": false, …}` | PERMISSION_DENIED | `DeniedResponse{status: http_status (default 403), body, headers}` |
//!
//! Object keys: `headers` and `response_headers_to_add` are an object of name → string or
//! array of strings, or an array of such objects (one `HeaderValueOption` per value, `append`
//! unset, names kept as written); `request_headers_to_remove` and `query_parameters_to_remove`
//! are arrays of strings; `query_parameters_to_set` is an object of name → string or array of
//! strings; `http_status` must be a status code known to Envoy's `StatusCode` enum; `body` must
//! be a string; `dynamic_metadata` must be an object. Any other shape is an error, which the
//! server returns as a gRPC `UNKNOWN` error. `decision_id` is always added to
//! `dynamic_metadata`.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::envoy::service::auth::v3::{
    check_response::HttpResponse, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf as pbw;
use envoy_types::pb::google::rpc::Status;
use regorus::Value;

use crate::builtins::args::type_name;

/// gRPC code OK.
pub const CODE_OK: i32 = 0;
/// gRPC code PERMISSION_DENIED.
pub const CODE_PERMISSION_DENIED: i32 = 7;

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(o) => o.get(&Value::from(key)).filter(|x| !matches!(x, Value::Undefined)),
        _ => None,
    }
}

/// OPA's `IsAllowed`: a boolean, or an object with a boolean `allowed`.
pub fn is_allowed(decision: &Value) -> Result<bool, String> {
    match decision {
        Value::Bool(b) => Ok(*b),
        Value::Object(_) => match get(decision, "allowed") {
            Some(Value::Bool(b)) => Ok(*b),
            _ => Err("'allowed' key missing or not a boolean in the policy decision".into()),
        },
        other => Err(format!("illegal value for policy evaluation result: {}", type_name(other))),
    }
}

/// Builds the `CheckResponse` for a decision; `Err` is the message of a gRPC UNKNOWN error.
pub fn check_response(decision: &Value, decision_id: &str) -> Result<CheckResponse, String> {
    let allowed = is_allowed(decision)?;
    let code = if allowed { CODE_OK } else { CODE_PERMISSION_DENIED };
    let mut resp = CheckResponse {
        status: Some(Status { code, message: String::new(), details: vec![] }),
        dynamic_metadata: None,
        http_response: None,
    };
    let mut metadata = pbw::Struct::default();
    if let Value::Object(_) = decision {
        let headers = header_options(get(decision, "headers"), "headers")?;
        if allowed {
            let ok = OkHttpResponse {
                headers,
                headers_to_remove: string_list(get(decision, "request_headers_to_remove"), "request_headers_to_remove")?,
                response_headers_to_add: header_options(
                    get(decision, "response_headers_to_add"),
                    "response_headers_to_add",
                )?,
                query_parameters_to_set: query_params(get(decision, "query_parameters_to_set"))?,
                query_parameters_to_remove: string_list(
                    get(decision, "query_parameters_to_remove"),
                    "query_parameters_to_remove",
                )?,
                ..Default::default()
            };
            resp.http_response = Some(HttpResponse::OkResponse(ok));
        } else {
            let body = match get(decision, "body") {
                None => String::new(),
                Some(Value::String(s)) => s.to_string(),
                Some(o) => {
                    return Err(format!(
                        "type assertion error, expected body to be of type 'string' but got '{}'",
                        type_name(o)
                    ))
                }
            };
            let status = http_status(get(decision, "http_status"))?;
            resp.http_response = Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: status }),
                headers,
                body,
            }));
        }
        match get(decision, "dynamic_metadata") {
            None => {}
            Some(Value::Object(o)) => {
                for (k, v) in o.iter() {
                    metadata.fields.insert(key_string(k), to_pb_value(v));
                }
            }
            Some(o) => {
                return Err(format!(
                    "type assertion error, expected dynamic_metadata to be of type 'object' but got '{}'",
                    type_name(o)
                ))
            }
        }
    }
    metadata.fields.insert(
        "decision_id".into(),
        pbw::Value { kind: Some(pbw::value::Kind::StringValue(decision_id.to_string())) },
    );
    resp.dynamic_metadata = Some(metadata);
    Ok(resp)
}

fn key_string(k: &Value) -> String {
    match k {
        Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_default(),
    }
}

fn http_status(v: Option<&Value>) -> Result<i32, String> {
    let Some(v) = v else { return Ok(403) };
    let n = match v {
        Value::Number(_) => v.as_i64().ok().filter(|n| v.as_f64().ok() == Some(*n as f64)),
        _ => {
            return Err(format!(
                "type assertion error, expected http_status to be of type 'number' but got '{}'",
                type_name(v)
            ))
        }
    };
    match n.and_then(|n| i32::try_from(n).ok()) {
        Some(code) if code != 0 && StatusCode::try_from(code).is_ok() => Ok(code),
        _ => Err(format!("Invalid HTTP status code {}", v.to_json_str().unwrap_or_default())),
    }
}

fn header_options(v: Option<&Value>, what: &str) -> Result<Vec<HeaderValueOption>, String> {
    let mut out = Vec::new();
    let Some(v) = v else { return Ok(out) };
    let mut take = |obj: &Value| -> Result<(), String> {
        let Value::Object(o) = obj else {
            return Err(format!(
                "type assertion error, expected {what} to be of type 'object' but got '{}'",
                type_name(obj)
            ));
        };
        for (k, val) in o.iter() {
            let name = key_string(k);
            let mut push = |value: &str| {
                out.push(HeaderValueOption {
                    header: Some(HeaderValue { key: name.clone(), value: value.to_string(), raw_value: vec![] }),
                    ..Default::default()
                })
            };
            match val {
                Value::String(s) => push(s),
                Value::Array(a) => {
                    for x in a.iter() {
                        match x {
                            Value::String(s) => push(s),
                            _ => return Err(format!("invalid value type for header '{name}'")),
                        }
                    }
                }
                _ => return Err(format!("invalid value type for header '{name}'")),
            }
        }
        Ok(())
    };
    match v {
        Value::Array(a) => {
            for x in a.iter() {
                take(x)?;
            }
        }
        other => take(other)?,
    }
    Ok(out)
}

fn string_list(v: Option<&Value>, what: &str) -> Result<Vec<String>, String> {
    let Some(v) = v else { return Ok(vec![]) };
    let err = || format!("type assertion error, expected {what} to be of type '[]string' but got '{}'", type_name(v));
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Set(s) => s.iter().collect(),
        _ => return Err(err()),
    };
    items
        .into_iter()
        .map(|x| match x {
            Value::String(s) => Ok(s.to_string()),
            _ => Err(err()),
        })
        .collect()
}

fn query_params(v: Option<&Value>) -> Result<Vec<QueryParameter>, String> {
    let Some(v) = v else { return Ok(vec![]) };
    let Value::Object(o) = v else {
        return Err(format!(
            "type assertion error, expected query_parameters_to_set to be of type 'object' but got '{}'",
            type_name(v)
        ));
    };
    let mut out = Vec::new();
    for (k, val) in o.iter() {
        let key = key_string(k);
        match val {
            Value::String(s) => out.push(QueryParameter { key, value: s.to_string() }),
            Value::Array(a) => {
                for x in a.iter() {
                    match x {
                        Value::String(s) => out.push(QueryParameter { key: key.clone(), value: s.to_string() }),
                        _ => return Err(format!("invalid value type for query parameter '{key}'")),
                    }
                }
            }
            _ => return Err(format!("invalid value type for query parameter '{key}'")),
        }
    }
    Ok(out)
}

/// A regorus value as a `google.protobuf.Value` (numbers become doubles, sets lists).
pub fn to_pb_value(v: &Value) -> pbw::Value {
    use pbw::value::Kind;
    let kind = match v {
        Value::Null | Value::Undefined => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(_) => Kind::NumberValue(v.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.to_string()),
        Value::Array(a) => Kind::ListValue(pbw::ListValue { values: a.iter().map(to_pb_value).collect() }),
        Value::Set(s) => Kind::ListValue(pbw::ListValue { values: s.iter().map(to_pb_value).collect() }),
        Value::Object(o) => {
            let fields: HashMap<String, pbw::Value> = o.iter().map(|(k, v)| (key_string(k), to_pb_value(v))).collect();
            Kind::StructValue(pbw::Struct { fields })
        }
    };
    pbw::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(j: &str) -> Value {
        Value::from_json_str(j).unwrap()
    }

    #[allow(deprecated)]
    fn hdrs(h: &[HeaderValueOption]) -> Vec<(String, String)> {
        h.iter().map(|o| {
            let h = o.header.as_ref().unwrap();
            assert!(o.append.is_none());
            (h.key.clone(), h.value.clone())
        }).collect()
    }

    #[test]
    fn booleans() {
        let r = check_response(&v("true"), "id1").unwrap();
        assert_eq!(r.status.unwrap().code, CODE_OK);
        assert!(r.http_response.is_none());
        let md = r.dynamic_metadata.unwrap();
        assert_eq!(md.fields["decision_id"].kind, Some(pbw::value::Kind::StringValue("id1".into())));
        let r = check_response(&v("false"), "id2").unwrap();
        assert_eq!(r.status.unwrap().code, CODE_PERMISSION_DENIED);
        assert!(r.http_response.is_none());
        assert!(r.dynamic_metadata.unwrap().fields.contains_key("decision_id"));
    }

    #[test]
    fn allowed_object() {
        let r = check_response(
            &v(r#"{"allowed":true,"headers":[{"a":"1"},{"b":["2","3"]}],
                  "request_headers_to_remove":["x-rm"],
                  "response_headers_to_add":{"x-resp":"yes"},
                  "query_parameters_to_set":{"q":"1","r":["2","3"]},
                  "query_parameters_to_remove":["old"],
                  "dynamic_metadata":{"user":"bob","n":2}}"#),
            "id",
        )
        .unwrap();
        assert_eq!(r.status.unwrap().code, CODE_OK);
        let Some(HttpResponse::OkResponse(ok)) = r.http_response else { panic!() };
        assert_eq!(hdrs(&ok.headers), vec![("a".into(), "1".into()), ("b".into(), "2".into()), ("b".into(), "3".into())]);
        assert_eq!(ok.headers_to_remove, vec!["x-rm"]);
        assert_eq!(hdrs(&ok.response_headers_to_add), vec![("x-resp".into(), "yes".into())]);
        assert_eq!(ok.query_parameters_to_set.len(), 3);
        assert_eq!(ok.query_parameters_to_remove, vec!["old"]);
        let md = r.dynamic_metadata.unwrap();
        assert_eq!(md.fields.len(), 3);
        assert_eq!(md.fields["n"].kind, Some(pbw::value::Kind::NumberValue(2.0)));
    }

    #[test]
    fn denied_object() {
        let r = check_response(&v(r#"{"allowed":false,"http_status":401,"body":"no","headers":{"www-authenticate":"Basic"}}"#), "id").unwrap();
        assert_eq!(r.status.unwrap().code, CODE_PERMISSION_DENIED);
        let Some(HttpResponse::DeniedResponse(d)) = r.http_response else { panic!() };
        assert_eq!(d.status.unwrap().code, 401);
        assert_eq!(d.body, "no");
        assert_eq!(hdrs(&d.headers), vec![("www-authenticate".into(), "Basic".into())]);
        let r = check_response(&v(r#"{"allowed":false}"#), "id").unwrap();
        let Some(HttpResponse::DeniedResponse(d)) = r.http_response else { panic!() };
        assert_eq!(d.status.unwrap().code, 403);
        assert_eq!(d.body, "");
    }

    #[test]
    fn errors() {
        for bad in [
            r#""yes""#,
            "1",
            r#"{"headers":{}}"#,
            r#"{"allowed":"true"}"#,
            r#"{"allowed":false,"http_status":999}"#,
            r#"{"allowed":false,"http_status":418}"#,
            r#"{"allowed":false,"http_status":"401"}"#,
            r#"{"allowed":false,"body":{}}"#,
            r#"{"allowed":true,"headers":{"a":1}}"#,
            r#"{"allowed":true,"headers":"a"}"#,
            r#"{"allowed":true,"request_headers_to_remove":"a"}"#,
            r#"{"allowed":true,"dynamic_metadata":[1]}"#,
        ] {
            assert!(check_response(&v(bad), "id").is_err(), "{bad} should be an error");
        }
    }
}
