//! `sluice proxy`: Envoy's command line, so scripts can swap the binary name.

use std::process::ExitCode;
use std::sync::Arc;

use crate::server::{self, Options};

/// Run the data plane from an Envoy v3 static bootstrap (YAML or JSON).
///
/// Flags follow Envoy's: `-c/--config-path`, `--concurrency`, `-l/--log-level`, `--mode`.
/// Envoy's hot-restart flags (`--base-id`, `--use-dynamic-base-id`, `--disable-hot-restart`,
/// `--drain-time-s`, `--parent-shutdown-time-s`) are accepted and have no effect: sluice has no
/// hot restart.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Path to the bootstrap file (`.json` is JSON, anything else YAML).
    #[arg(short = 'c', long = "config-path", value_name = "FILE")]
    pub config_path: Option<String>,
    /// Bootstrap as inline YAML (merged over --config-path, as Envoy does; alone it is the config).
    #[arg(long = "config-yaml", value_name = "YAML")]
    pub config_yaml: Option<String>,
    /// Worker threads (default: number of CPUs).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Log level: trace, debug, info, warning, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
    /// `serve` (default) or `validate` (check the config, print OK or the errors, exit 0/1).
    #[arg(long, default_value = "serve", value_parser = ["serve", "validate"])]
    pub mode: String,
    /// Accepted for Envoy compatibility (no hot restart in sluice).
    #[arg(long = "base-id", value_name = "N", hide = true)]
    pub base_id: Option<u64>,
    /// Accepted for Envoy compatibility.
    #[arg(long = "use-dynamic-base-id", hide = true)]
    pub use_dynamic_base_id: bool,
    /// Accepted for Envoy compatibility.
    #[arg(long = "disable-hot-restart", hide = true)]
    pub disable_hot_restart: bool,
    /// Accepted for Envoy compatibility.
    #[arg(long = "drain-time-s", hide = true)]
    pub drain_time_s: Option<u64>,
    /// Accepted for Envoy compatibility.
    #[arg(long = "parent-shutdown-time-s", hide = true)]
    pub parent_shutdown_time_s: Option<u64>,
    /// Accepted for Envoy compatibility (node.cluster).
    #[arg(long = "service-cluster", hide = true)]
    pub service_cluster: Option<String>,
    /// Accepted for Envoy compatibility (node.id).
    #[arg(long = "service-node", hide = true)]
    pub service_node: Option<String>,
    /// How often buffered access-log lines are written to their files (Envoy's default 10 s).
    #[arg(long = "file-flush-interval-msec", value_name = "MS", default_value_t = 10_000)]
    pub file_flush_interval_msec: u64,
    /// Buffered access-log bytes that trigger a write before the interval (KiB, Envoy's default 64).
    #[arg(long = "file-flush-min-size-kb", value_name = "KIB", default_value_t = 64)]
    pub file_flush_min_size_kb: usize,
}

fn init_logging(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // SLUICE_LOG (an EnvFilter directive) wins over -l and over run-time changes.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init();
        return;
    }
    let control = crate::admin::logging::control();
    let level = crate::admin::logging::envoy_level(level).unwrap_or("info");
    let (filter, handle) = tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new(
        level.replace("warning", "warn").replace("critical", "error"),
    ));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
        .try_init()
        .is_ok();
    if installed {
        // `/logging` changes levels at run time through this handle.
        control.install(
            level,
            Box::new(move |directives| {
                let filter = tracing_subscriber::EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            }),
        );
    }
}

fn load(args: &Args) -> Result<(String, sluice_config::Snapshot), String> {
    use sluice_config::{merge_tree, parse_tree, Format};
    let overlay = match &args.config_yaml {
        Some(yaml) => Some(parse_tree(yaml, Format::Yaml).map_err(|e| format!("--config-yaml: {e}"))?),
        None => None,
    };
    let (shown, tree) = match (&args.config_path, overlay) {
        (Some(path), overlay) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            let mut tree = parse_tree(&text, Format::from_path(std::path::Path::new(path))).map_err(|e| e.to_string())?;
            if let Some(o) = overlay {
                merge_tree(&mut tree, o);
            }
            (path.clone(), tree)
        }
        (None, Some(o)) => ("<config-yaml>".to_string(), o),
        (None, None) => return Err("no configuration: pass -c FILE (or --config-yaml)".to_string()),
    };
    sluice_config::from_tree(tree).map(|s| (shown, s)).map_err(|e| e.to_string())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    init_logging(&args.log_level);
    crate::access_log::set_flush_options(
        std::time::Duration::from_millis(args.file_flush_interval_msec),
        args.file_flush_min_size_kb.saturating_mul(1024),
    );
    let shown = args.config_path.clone().unwrap_or_else(|| "<config-yaml>".into());
    let (path, snapshot) = match load(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error initializing configuration '{shown}': {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let concurrency = args
        .concurrency
        .filter(|c| *c > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1));
    if args.mode == "validate" {
        return Ok(validate(&path, &snapshot));
    }
    // The control plane (DNS, admin, stats) runs here; the data plane on `concurrency` worker
    // threads that the server starts.
    let runtime = tokio::runtime::Builder::new_current_thread().thread_name("sluice-main").enable_all().build()?;
    let options = Options { config_path: path.clone(), concurrency, log_level: args.log_level.clone() };
    runtime.block_on(async move {
        let server = match server::start(Arc::new(snapshot), options).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error initializing configuration '{path}': {e:#}");
                return Ok(ExitCode::FAILURE);
            }
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("caught SIGINT"),
            _ = term.recv() => tracing::info!("caught SIGTERM"),
            _ = server.quit_requested() => tracing::info!("quit requested through admin"),
        }
        tracing::info!("shutting down server instance");
        server.shutdown();
        // Access-log lines still buffered go out before the process ends.
        crate::access_log::flush_now();
        Ok(ExitCode::SUCCESS)
    })
}

/// `--mode validate`: type and semantic checks, then build every listener (routes, TLS, filters)
/// against clusters whose discovery is never awaited — names need not resolve, as with Envoy.
fn validate(path: &str, snapshot: &sluice_config::Snapshot) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let stats = crate::stats::Store::new();
        let clusters = crate::upstream::ClusterManager::new(&snapshot.bootstrap, &stats)?;
        server::build_listeners(snapshot, &clusters, &stats).map(|_| ())
    });
    match result {
        Ok(()) => {
            println!("configuration '{path}' OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error initializing configuration '{path}': {e:#}");
            ExitCode::FAILURE
        }
    }
}
