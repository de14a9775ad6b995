//! Decision logs sent to a remote service (`decision_logs.service`), as OPA's decision log
//! plugin does: events are buffered (at most `reporting.buffer_size_limit_bytes`, the oldest
//! dropped first), limited to `reporting.max_decisions_per_second`, and uploaded every
//! `min_delay_seconds`…`max_delay_seconds` as gzip-compressed JSON arrays of at most
//! `upload_size_limit_bytes` (compressed) with `POST <service url><resource>`. A failed upload
//! keeps its events for the next attempt.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::Value as Json;
use tokio::sync::watch;

use crate::bundle_service::Service;

/// `decision_logs.service` and `decision_logs.reporting`.
#[derive(Clone, Debug)]
pub struct UploadConfig {
    /// The service.
    pub service: Service,
    /// `decision_logs.resource` (default `/logs`).
    pub resource: String,
    /// `reporting.buffer_size_limit_bytes` (default unlimited).
    pub buffer_limit: Option<usize>,
    /// `reporting.upload_size_limit_bytes` (default 32 KiB).
    pub upload_limit: usize,
    /// `reporting.max_decisions_per_second` (default unlimited).
    pub max_per_second: Option<f64>,
    /// `reporting.min_delay_seconds` / `max_delay_seconds` (default 300 / 600).
    pub min_delay: Duration,
    pub max_delay: Duration,
}

/// Parses `decision_logs` (besides `console`); `None` without a `service`.
pub fn from_config(tree: &Json) -> anyhow::Result<Option<UploadConfig>> {
    let Some(d) = tree.get("decision_logs") else { return Ok(None) };
    let Some(o) = d.as_object() else { bail!("decision_logs: expected an object") };
    for k in o.keys() {
        if !["console", "service", "resource", "reporting"].contains(&k.as_str()) {
            bail!("configuration key decision_logs.{k} is not supported by sluice");
        }
    }
    let Some(name) = o.get("service").and_then(Json::as_str) else {
        if o.contains_key("reporting") || o.contains_key("resource") {
            bail!("decision_logs.reporting/resource need decision_logs.service");
        }
        return Ok(None);
    };
    let services = crate::bundle_service::services_from_config(tree)?;
    let service = services.get(name).cloned().ok_or_else(|| anyhow!("decision_logs.service: unknown service {name:?}"))?;
    let mut c = UploadConfig {
        service,
        resource: o.get("resource").and_then(Json::as_str).unwrap_or("/logs").to_string(),
        buffer_limit: None,
        upload_limit: 32 * 1024,
        max_per_second: None,
        min_delay: Duration::from_secs(300),
        max_delay: Duration::from_secs(600),
    };
    if let Some(r) = o.get("reporting") {
        let r = r.as_object().ok_or_else(|| anyhow!("decision_logs.reporting: expected an object"))?;
        let num = |k: &str| -> anyhow::Result<Option<f64>> {
            match r.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|n| *n > 0.0)
                    .map(Some)
                    .ok_or_else(|| anyhow!("decision_logs.reporting.{k}: expected a positive number, got {v}")),
            }
        };
        for k in r.keys() {
            let known = ["buffer_size_limit_bytes", "upload_size_limit_bytes", "max_decisions_per_second", "min_delay_seconds", "max_delay_seconds"];
            if !known.contains(&k.as_str()) {
                bail!("configuration key decision_logs.reporting.{k} is not supported by sluice");
            }
        }
        c.buffer_limit = num("buffer_size_limit_bytes")?.map(|n| n as usize);
        if let Some(n) = num("upload_size_limit_bytes")? {
            c.upload_limit = n as usize;
        }
        c.max_per_second = num("max_decisions_per_second")?;
        if let Some(n) = num("min_delay_seconds")? {
            c.min_delay = Duration::from_secs_f64(n);
        }
        if let Some(n) = num("max_delay_seconds")? {
            c.max_delay = Duration::from_secs_f64(n);
        }
        if c.max_delay < c.min_delay {
            bail!("decision_logs.reporting: max_delay_seconds is smaller than min_delay_seconds");
        }
    }
    Ok(Some(c))
}

/// The buffer between decisions and the uploader.
#[derive(Debug)]
pub struct Uploader {
    config: UploadConfig,
    buffer: Mutex<(VecDeque<Vec<u8>>, usize)>,
    rate: Mutex<(Instant, f64)>,
    /// Events dropped (rate limit or buffer limit).
    pub dropped: AtomicU64,
    /// Events uploaded.
    pub uploaded: AtomicU64,
}

impl Uploader {
    /// A new, empty buffer.
    pub fn new(config: UploadConfig) -> Self {
        let tokens = config.max_per_second.unwrap_or(0.0);
        Uploader {
            config,
            buffer: Mutex::default(),
            rate: Mutex::new((Instant::now(), tokens)),
            dropped: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
        }
    }

    /// Queues one event (OPA's EventV1 as JSON).
    pub fn push(&self, event: &Json) {
        if let Some(max) = self.config.max_per_second {
            let mut r = self.rate.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            r.1 = (r.1 + now.duration_since(r.0).as_secs_f64() * max).min(max);
            r.0 = now;
            if r.1 < 1.0 {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            r.1 -= 1.0;
        }
        let bytes = serde_json::to_vec(event).unwrap_or_default();
        let mut b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        b.1 += bytes.len();
        b.0.push_back(bytes);
        if let Some(limit) = self.config.buffer_limit {
            while b.1 > limit {
                let Some(old) = b.0.pop_front() else { break };
                b.1 -= old.len();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes events for one upload: a gzip-compressed JSON array within the upload limit
    /// (at least one event).
    fn take_chunk(&self) -> Option<(Vec<Vec<u8>>, Vec<u8>)> {
        let mut b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if b.0.is_empty() {
            return None;
        }
        let mut events = Vec::new();
        let mut raw = 2usize;
        while let Some(front) = b.0.front() {
            // The compressed size is at most the raw size plus a small overhead: a raw bound
            // keeps a chunk under the limit without compressing twice.
            if !events.is_empty() && raw + front.len() + 1 > self.config.upload_limit.saturating_sub(64).max(1) {
                break;
            }
            raw += front.len() + 1;
            let e = b.0.pop_front().expect("front");
            b.1 -= e.len();
            events.push(e);
        }
        drop(b);
        let mut json = Vec::with_capacity(raw);
        json.push(b'[');
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend_from_slice(e);
        }
        json.push(b']');
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = gz.write_all(&json);
        Some((events, gz.finish().unwrap_or_default()))
    }

    fn put_back(&self, events: Vec<Vec<u8>>) {
        let mut b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        for e in events.into_iter().rev() {
            b.1 += e.len();
            b.0.push_front(e);
        }
    }

    /// Uploads everything buffered; stops at the first failure (its events stay buffered).
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let url = format!("{}{}", self.config.service.url.trim_end_matches('/'), self.config.resource);
        let mut sent = 0;
        while let Some((events, body)) = self.take_chunk() {
            let headers = [("content-type", "application/json".to_string()), ("content-encoding", "gzip".to_string())];
            match crate::bundle_service::request(http::Method::POST, &url, &self.config.service, &headers, body).await {
                Ok((status, _)) if status.is_success() => {
                    sent += events.len();
                    self.uploaded.fetch_add(events.len() as u64, Ordering::Relaxed);
                }
                Ok((status, _)) => {
                    self.put_back(events);
                    bail!("{url}: decision log upload answered {status}");
                }
                Err(e) => {
                    self.put_back(events);
                    return Err(e);
                }
            }
        }
        Ok(sent)
    }

    /// Uploads periodically until shutdown, then once more.
    pub(crate) async fn run(self: Arc<Self>, mut rx: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut n: u64 = 7;
        loop {
            n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let span = self.config.max_delay.saturating_sub(self.config.min_delay).as_millis() as u64;
            let delay = self.config.min_delay + Duration::from_millis(if span == 0 { 0 } else { (n >> 33) % (span + 1) });
            let stop = tokio::select! {
                _ = tokio::time::sleep(delay) => false,
                _ = async { let _ = rx.wait_for(|s| *s).await; } => true,
            };
            if let Err(e) = self.flush().await {
                tracing::warn!("decision log upload failed, the events stay buffered: {e:#}");
            }
            if stop {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> UploadConfig {
        UploadConfig {
            service: Service { url: "http://127.0.0.1:1".into(), headers: vec![], bearer: None },
            resource: "/logs".into(),
            buffer_limit: Some(100),
            upload_limit: 32 * 1024,
            max_per_second: None,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
        }
    }

    #[test]
    fn buffer_limit_drops_the_oldest() {
        let u = Uploader::new(cfg());
        for i in 0..10 {
            u.push(&serde_json::json!({"decision_id": format!("{i:020}")}));
        }
        assert!(u.dropped.load(Ordering::Relaxed) > 0);
        let (events, gz) = u.take_chunk().unwrap();
        let last: Json = serde_json::from_slice(events.last().unwrap()).unwrap();
        assert_eq!(last["decision_id"], format!("{:020}", 9));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
        assert!(text.starts_with('[') && text.ends_with(']'), "{text}");
    }

    #[test]
    fn rate_limit() {
        let u = Uploader::new(UploadConfig { max_per_second: Some(5.0), buffer_limit: None, ..cfg() });
        for _ in 0..20 {
            u.push(&serde_json::json!({}));
        }
        assert_eq!(u.dropped.load(Ordering::Relaxed), 15);
    }

    #[test]
    fn config_keys() {
        let tree = serde_json::json!({"services": {"s": {"url": "http://x:1"}}, "decision_logs": {"service": "s", "reporting": {"min_delay_seconds": 1, "max_delay_seconds": 2, "max_decisions_per_second": 10}}});
        let c = from_config(&tree).unwrap().unwrap();
        assert_eq!(c.max_per_second, Some(10.0));
        let bad = serde_json::json!({"services": {"s": {"url": "http://x:1"}}, "decision_logs": {"service": "s", "reporting": {"trigger": "manual"}}});
        assert!(from_config(&bad).unwrap_err().to_string().contains("decision_logs.reporting.trigger"));
    }
}
