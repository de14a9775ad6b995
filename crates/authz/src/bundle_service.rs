//! Bundles downloaded from an HTTP bundle service (OPA's `services` + `bundles` config):
//! polled every `min_delay_seconds`…`max_delay_seconds` with `If-None-Match` (a `304` keeps
//! the active bundle), verified, compiled with the other policies and swapped in atomically;
//! a download, verification or compile failure is logged and the last good bundle keeps serving.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value as Json;
use tokio::sync::watch;

use crate::bundle::{Bundle, Verification};
use crate::server::Authorizer;

/// One entry of `services`.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// `url`: `http://host:port[/prefix]`.
    pub url: String,
    /// `headers`: sent with every request.
    pub headers: Vec<(String, String)>,
    /// `credentials.bearer.token`: sent as `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
}

/// One entry of `bundles`.
#[derive(Clone, Debug)]
pub struct RemoteBundle {
    /// The bundle's name (decision logs, `/v1/status`).
    pub name: String,
    /// Its service.
    pub service: Service,
    /// `resource` (default `bundles/<name>`).
    pub resource: String,
    /// `polling.min_delay_seconds` (default 60).
    pub min_delay: Duration,
    /// `polling.max_delay_seconds` (default 120).
    pub max_delay: Duration,
    /// How its signatures are verified.
    pub verification: Verification,
}

impl RemoteBundle {
    /// The URL downloaded.
    pub fn url(&self) -> String {
        format!("{}/{}", self.service.url.trim_end_matches('/'), self.resource.trim_start_matches('/'))
    }
}

fn obj<'a>(v: &'a Json, path: &str) -> anyhow::Result<&'a serde_json::Map<String, Json>> {
    v.as_object().ok_or_else(|| anyhow!("{path}: expected an object"))
}

fn check_keys(o: &serde_json::Map<String, Json>, path: &str, known: &[&str]) -> anyhow::Result<()> {
    for k in o.keys() {
        if !known.contains(&k.as_str()) {
            bail!("configuration key {path}.{k} is not supported by sluice");
        }
    }
    Ok(())
}

fn seconds(v: Option<&Json>, path: &str, default: u64) -> anyhow::Result<Duration> {
    match v {
        None => Ok(Duration::from_secs(default)),
        Some(x) => x
            .as_f64()
            .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
            .filter(|f| *f > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| anyhow!("{path}: expected a positive number of seconds, got {x}")),
    }
}

/// Parses `services` and `bundles` from an OPA configuration document. Every key sluice does
/// not implement is an error naming it.
pub fn from_config(tree: &Json, verification: &Verification) -> anyhow::Result<Vec<RemoteBundle>> {
    let services = services_from_config(tree)?;
    bundles_from_config(tree, &services, verification)
}

/// Parses `services` (an object of named services, or OPA's list form with `name`).
pub fn services_from_config(tree: &Json) -> anyhow::Result<std::collections::BTreeMap<String, Service>> {
    let mut services = std::collections::BTreeMap::new();
    if let Some(s) = tree.get("services") {
        // OPA accepts a list of services with `name` too.
        let entries: Vec<(String, Json)> = match s {
            Json::Object(o) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Json::Array(a) => a
                .iter()
                .map(|v| Ok((v.get("name").and_then(Json::as_str).ok_or_else(|| anyhow!("services[]: name missing"))?.to_string(), v.clone())))
                .collect::<anyhow::Result<_>>()?,
            _ => bail!("services: expected an object"),
        };
        for (name, v) in entries {
            let path = format!("services.{name}");
            let o = obj(&v, &path)?;
            check_keys(o, &path, &["name", "url", "headers", "credentials"])?;
            let url = o.get("url").and_then(Json::as_str).ok_or_else(|| anyhow!("{path}.url: missing"))?.to_string();
            if !url.starts_with("http://") {
                bail!("{path}.url: {url:?}: only http:// bundle services are supported by sluice");
            }
            let mut headers = Vec::new();
            if let Some(h) = o.get("headers") {
                for (k, v) in obj(h, &format!("{path}.headers"))? {
                    headers.push((k.clone(), v.as_str().ok_or_else(|| anyhow!("{path}.headers.{k}: expected a string"))?.to_string()));
                }
            }
            let mut bearer = None;
            if let Some(c) = o.get("credentials") {
                let c = obj(c, &format!("{path}.credentials"))?;
                check_keys(c, &format!("{path}.credentials"), &["bearer"])?;
                if let Some(b) = c.get("bearer") {
                    let b = obj(b, &format!("{path}.credentials.bearer"))?;
                    check_keys(b, &format!("{path}.credentials.bearer"), &["token", "scheme"])?;
                    let scheme = b.get("scheme").and_then(Json::as_str).unwrap_or("Bearer");
                    let token = b.get("token").and_then(Json::as_str).ok_or_else(|| anyhow!("{path}.credentials.bearer.token: missing"))?;
                    bearer = Some(format!("{scheme} {token}"));
                }
            }
            services.insert(name, Service { url, headers, bearer });
        }
    }
    Ok(services)
}

fn bundles_from_config(
    tree: &Json,
    services: &std::collections::BTreeMap<String, Service>,
    verification: &Verification,
) -> anyhow::Result<Vec<RemoteBundle>> {
    let mut out = Vec::new();
    if let Some(b) = tree.get("bundles") {
        for (name, v) in obj(b, "bundles")? {
            let path = format!("bundles.{name}");
            let o = obj(v, &path)?;
            check_keys(o, &path, &["service", "resource", "polling", "signing"])?;
            let service_name = match o.get("service").and_then(Json::as_str) {
                Some(s) => s.to_string(),
                None if services.len() == 1 => services.keys().next().expect("one").clone(),
                None => bail!("{path}.service: missing"),
            };
            let service = services.get(&service_name).cloned().ok_or_else(|| anyhow!("{path}.service: unknown service {service_name:?}"))?;
            let resource = o.get("resource").and_then(Json::as_str).map(str::to_string).unwrap_or_else(|| format!("bundles/{name}"));
            let (mut min_delay, mut max_delay) = (Duration::from_secs(60), Duration::from_secs(120));
            if let Some(p) = o.get("polling") {
                let p = obj(p, &format!("{path}.polling"))?;
                check_keys(p, &format!("{path}.polling"), &["min_delay_seconds", "max_delay_seconds"])?;
                min_delay = seconds(p.get("min_delay_seconds"), &format!("{path}.polling.min_delay_seconds"), 60)?;
                max_delay = seconds(p.get("max_delay_seconds"), &format!("{path}.polling.max_delay_seconds"), 120)?;
                if max_delay < min_delay {
                    bail!("{path}.polling: max_delay_seconds is smaller than min_delay_seconds");
                }
            }
            let mut verification = verification.clone();
            if let Some(s) = o.get("signing") {
                let s = obj(s, &format!("{path}.signing"))?;
                check_keys(s, &format!("{path}.signing"), &["scope"])?;
                verification.scope = s.get("scope").and_then(Json::as_str).map(str::to_string);
            }
            out.push(RemoteBundle { name: name.clone(), service, resource, min_delay, max_delay, verification });
        }
    }
    Ok(out)
}

/// What one download brought.
pub enum Fetched {
    /// `304 Not Modified`.
    NotModified,
    /// A new bundle and its ETag.
    Bundle(Vec<u8>, Option<String>),
}

/// Largest bundle download.
pub const MAX_DOWNLOAD: usize = 64 << 20;

/// `(host:port, authority, path)` of an `http://` URL.
pub(crate) fn split_url(url: &str) -> anyhow::Result<(String, String, String)> {
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("{url}: not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    Ok((hostport, authority.to_string(), path.to_string()))
}

/// One HTTP/1.1 request on a fresh connection, bounded to 30 s: (status, body).
pub(crate) async fn request(
    method: http::Method,
    url: &str,
    service: &Service,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> anyhow::Result<(http::StatusCode, Vec<u8>)> {
    let (hostport, authority, path) = split_url(url)?;
    let work = async {
        let stream = tokio::net::TcpStream::connect(&hostport).await.with_context(|| format!("connecting to {hostport}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::builder().method(method).uri(path.as_str()).header("host", authority.as_str());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        if let Some(b) = &service.bearer {
            req = req.header("authorization", b);
        }
        for (k, v) in &service.headers {
            req = req.header(k, v);
        }
        let resp = sender.send_request(req.body(http_body_util::Full::new(Bytes::from(body)))?).await?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_DOWNLOAD).collect().await.map_err(|e| anyhow!("{url}: {e}"))?;
        Ok((status, body.to_bytes().to_vec()))
    };
    tokio::time::timeout(Duration::from_secs(30), work).await.map_err(|_| anyhow!("{url}: no answer within 30 s"))?
}

/// One `GET` of the bundle, with `If-None-Match` when an ETag is known. Bounded to 30 s.
pub async fn fetch(rb: &RemoteBundle, etag: Option<&str>) -> anyhow::Result<Fetched> {
    let url = rb.url();
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow!("{url}: not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let work = async {
        let stream = tokio::net::TcpStream::connect(&hostport).await.with_context(|| format!("connecting to {hostport}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::get(path).header("host", authority).header("accept", "application/vnd.openpolicyagent.bundles,application/gzip");
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        if let Some(b) = &rb.service.bearer {
            req = req.header("authorization", b);
        }
        for (k, v) in &rb.service.headers {
            req = req.header(k, v);
        }
        let resp = sender.send_request(req.body(Empty::<Bytes>::new())?).await?;
        let status = resp.status();
        if status == http::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            bail!("{url}: server answered {status}");
        }
        let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = http_body_util::Limited::new(resp.into_body(), MAX_DOWNLOAD).collect().await.map_err(|e| anyhow!("{url}: {e}"))?;
        Ok(Fetched::Bundle(body.to_bytes().to_vec(), etag))
    };
    tokio::time::timeout(Duration::from_secs(30), work).await.map_err(|_| anyhow!("{url}: no answer within 30 s"))?
}

/// Polls one bundle until shutdown.
pub(crate) async fn poll(a: Arc<Authorizer>, rb: RemoteBundle, mut rx: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut etag: Option<String> = None;
    let mut n: u64 = 0;
    loop {
        match fetch(&rb, etag.as_deref()).await {
            Ok(Fetched::NotModified) => tracing::debug!(bundle = %rb.name, "bundle not modified"),
            Ok(Fetched::Bundle(bytes, new_etag)) => {
                let name = rb.name.clone();
                let v = rb.verification.clone();
                let a2 = a.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let b = Bundle::from_tar_gz(&name, &bytes, &v)?;
                    a2.activate_remote(b)
                })
                .await
                .map_err(|e| anyhow!("{e}"))
                .and_then(|r| r);
                match r {
                    Ok(revision) => {
                        tracing::info!(bundle = %rb.name, %revision, "bundle activated");
                        etag = new_etag;
                    }
                    Err(e) => tracing::error!(bundle = %rb.name, "bundle not activated, the last good one keeps serving: {e:#}"),
                }
            }
            Err(e) => tracing::warn!(bundle = %rb.name, "bundle download failed: {e:#}"),
        }
        // A delay between min and max, spread by a cheap counter-based jitter.
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let span = rb.max_delay.saturating_sub(rb.min_delay).as_millis() as u64;
        let delay = rb.min_delay + Duration::from_millis(if span == 0 { 0 } else { (n >> 33) % (span + 1) });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = async { let _ = rx.wait_for(|s| *s).await; } => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parsing() {
        let tree: Json = serde_json::json!({
            "services": {"acme": {"url": "http://127.0.0.1:1/api", "credentials": {"bearer": {"token": "t"}}}},
            "bundles": {"authz": {"service": "acme", "resource": "b.tar.gz", "polling": {"min_delay_seconds": 1, "max_delay_seconds": 2}}}
        });
        let b = from_config(&tree, &Verification::default()).unwrap();
        assert_eq!(b[0].url(), "http://127.0.0.1:1/api/b.tar.gz");
        assert_eq!(b[0].service.bearer.as_deref(), Some("Bearer t"));
        assert_eq!((b[0].min_delay, b[0].max_delay), (Duration::from_secs(1), Duration::from_secs(2)));
        let bad = serde_json::json!({"services": {"a": {"url": "http://x"}}, "bundles": {"b": {"polling": {"long_polling_timeout_seconds": 5}}}});
        assert!(from_config(&bad, &Verification::default()).unwrap_err().to_string().contains("bundles.b.polling.long_polling_timeout_seconds"));
        let tls = serde_json::json!({"services": {"a": {"url": "https://x"}}});
        assert!(from_config(&tls, &Verification::default()).is_err());
    }
}
