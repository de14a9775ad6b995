//! Shared by the proxy's integration tests.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sluice_proxy::server::{Options, RunningServer};

/// Parse `cfg` (an Envoy bootstrap as JSON) and start the proxy in-process with one worker;
/// `config_path` is what the admin API reports as the config file.
pub async fn start_proxy(cfg: &Value, config_path: &str) -> RunningServer {
    let snapshot = sluice_config::parse(&cfg.to_string(), sluice_config::Format::Json)
        .unwrap_or_else(|e| panic!("config rejected: {e}\n{cfg:#}"));
    let options = Options { config_path: config_path.into(), concurrency: 1, log_level: "warning".into() };
    tokio::time::timeout(Duration::from_secs(10), sluice_proxy::server::start(Arc::new(snapshot), options))
        .await
        .expect("server start timed out")
        .expect("server start")
}
