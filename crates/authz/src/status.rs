//! OPA's status plugin (`status` in the configuration): the same report as `GET /v1/status`
//! (labels, bundles, plugins) logged to the console (`status.console: true`) and/or sent with
//! `POST <service url>/status[/<partition_name>]` (`status.service`), once at start and again
//! whenever the report changes (a bundle activated, …), as OPA does. A failed upload is retried
//! on the next check (once a second). `prometheus`, `trigger` and `plugin` are refused at load.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::Value as Json;
use tokio::sync::watch;

use crate::bundle_service::Service;
use crate::server::Authorizer;

/// `status` of the configuration.
#[derive(Clone, Debug)]
pub struct StatusConfig {
    /// Upload target (`status.service`), if any.
    pub service: Option<Service>,
    /// `status.partition_name`: appended to the upload path.
    pub partition: Option<String>,
    /// `status.console`: log each report.
    pub console: bool,
}

/// Parses `status`; `None` when absent or when it neither logs nor uploads.
pub fn from_config(tree: &Json) -> anyhow::Result<Option<StatusConfig>> {
    let Some(s) = tree.get("status") else { return Ok(None) };
    let Some(o) = s.as_object() else { bail!("status: expected an object") };
    for k in o.keys() {
        match k.as_str() {
            "service" | "partition_name" | "console" => {}
            "prometheus" | "trigger" | "plugin" => bail!("status.{k}: not supported by sluice"),
            other => bail!("configuration key status.{other} is not supported by sluice"),
        }
    }
    let console = match o.get("console") {
        None => false,
        Some(Json::Bool(b)) => *b,
        Some(v) => bail!("status.console: expected true or false, got {v}"),
    };
    let service = match o.get("service") {
        None => None,
        Some(Json::String(name)) => {
            let services = crate::bundle_service::services_from_config(tree)?;
            Some(services.get(name).cloned().ok_or_else(|| anyhow!("status.service: unknown service {name:?}"))?)
        }
        Some(v) => bail!("status.service: expected a service name, got {v}"),
    };
    let partition = match o.get("partition_name") {
        None => None,
        Some(Json::String(p)) if !p.is_empty() && !p.contains(['/', '?', '#']) => Some(p.clone()),
        Some(v) => bail!("status.partition_name: expected a name without '/', got {v}"),
    };
    if partition.is_some() && service.is_none() {
        bail!("status.partition_name needs status.service");
    }
    if service.is_none() && !console {
        return Ok(None);
    }
    Ok(Some(StatusConfig { service, partition, console }))
}

/// The upload URL of a configuration.
pub fn url(c: &StatusConfig) -> Option<String> {
    let s = c.service.as_ref()?;
    let mut u = format!("{}/status", s.url.trim_end_matches('/'));
    if let Some(p) = &c.partition {
        u.push('/');
        u.push_str(p);
    }
    Some(u)
}

async fn send(c: &StatusConfig, report: &Json) -> anyhow::Result<()> {
    let (Some(url), Some(service)) = (url(c), c.service.as_ref()) else { return Ok(()) };
    let headers = [("content-type", "application/json".to_string())];
    let body = serde_json::to_vec(report)?;
    match crate::bundle_service::request(http::Method::POST, &url, service, &headers, body).await? {
        (status, _) if status.is_success() => Ok(()),
        (status, _) => bail!("{url}: status upload answered {status}"),
    }
}

/// Reports at start and on every change until shutdown (checked every `every`).
pub(crate) async fn run(a: Arc<Authorizer>, c: StatusConfig, every: Duration, mut rx: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut logged: Option<Json> = None;
    let mut uploaded: Option<Json> = None;
    loop {
        let report = crate::api::status_report(&a);
        if c.console && logged.as_ref() != Some(&report) {
            tracing::info!(target: "status", report = %report, "Status Log");
            logged = Some(report.clone());
        }
        if c.service.is_some() && uploaded.as_ref() != Some(&report) {
            match send(&c, &report).await {
                Ok(()) => uploaded = Some(report),
                Err(e) => tracing::warn!("status upload failed, retrying: {e:#}"),
            }
        }
        let stop = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = async { let _ = rx.wait_for(|s| *s).await; } => true,
        };
        if stop {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        let tree = serde_json::json!({"services": {"s": {"url": "http://127.0.0.1:1/api/"}}, "status": {"service": "s", "partition_name": "edge"}});
        let c = from_config(&tree).unwrap().unwrap();
        assert_eq!(url(&c).unwrap(), "http://127.0.0.1:1/api/status/edge");
        assert!(!c.console);
        let c = from_config(&serde_json::json!({"status": {"console": true}})).unwrap().unwrap();
        assert!(c.console && c.service.is_none());
        assert!(from_config(&serde_json::json!({"status": {"console": false}})).unwrap().is_none());
        let e = from_config(&serde_json::json!({"status": {"prometheus": true}})).unwrap_err();
        assert!(e.to_string().contains("status.prometheus: not supported by sluice"), "{e}");
        assert!(from_config(&serde_json::json!({"status": {"service": "nope"}})).is_err());
        assert!(from_config(&serde_json::json!({"status": {"console": "yes"}})).is_err());
        assert!(from_config(&serde_json::json!({"status": {"wat": 1}})).is_err());
    }
}
