//! The admin interface (Envoy's `admin:` listener): `/stats`, `/stats/prometheus`, `/clusters`,
//! `/ready`, `/server_info`, `/config_dump`, `/listeners`, `/certs`, `/runtime`, `/memory`,
//! `/hot_restart_version`, `/help`, and the POST-only `/healthcheck/fail|ok`, `/quitquitquit`,
//! `/reset_counters`, `/drain_listeners`, in Envoy 1.40's formats.
//!
//! Also owns the process-wide [`ServerState`] and the periodic stats flush
//! ([`spawn_stats_flush`]), which updates `server.*` gauges and closes histogram intervals.
//!
//! The formats are pure functions in the submodules ([`stats`], [`clusters`], [`info`],
//! [`json`]); this file is the HTTP/1.1 server around them.

pub mod clusters;
pub mod fuzzing;
pub mod help;
pub mod info;
pub mod json;
pub mod logging;
pub mod stats;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use regex::Regex;
use tokio::sync::Notify;

pub use clusters::{ClusterSource, ClusterView, HostStatsView, HostView, StaticClusters, ThresholdsView};

use crate::access_log::connection::Counted;
use crate::stats::{Counter, Gauge, Histogram, Store};

// ---------------------------------------------------------------------------------------------
// Server state

/// Envoy's server states, with the numbers `server.state` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Live = 0,
    Draining = 1,
    PreInitializing = 2,
    Initializing = 3,
}

impl State {
    /// `LIVE`, `DRAINING`, `PRE_INITIALIZING`, `INITIALIZING` (the `/ready` body).
    pub fn name(self) -> &'static str {
        match self {
            State::Live => "LIVE",
            State::Draining => "DRAINING",
            State::PreInitializing => "PRE_INITIALIZING",
            State::Initializing => "INITIALIZING",
        }
    }
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Live,
            1 => State::Draining,
            3 => State::Initializing,
            _ => State::PreInitializing,
        }
    }
}

/// Process-wide server state, shared by the server, admin and stats flush.
#[derive(Debug)]
pub struct ServerState {
    state: AtomicU8,
    healthcheck_failed: AtomicBool,
    started: Instant,
    started_at: SystemTime,
    quit: AtomicBool,
    quit_notify: Notify,
    drain: AtomicBool,
    drain_notify: Notify,
}

impl ServerState {
    /// A new state, `PRE_INITIALIZING` until the server calls [`set_state`](Self::set_state)
    /// (or [`mark_initialized`]).
    pub fn new() -> Arc<Self> {
        Arc::new(ServerState {
            state: AtomicU8::new(State::PreInitializing as u8),
            healthcheck_failed: AtomicBool::new(false),
            started: Instant::now(),
            started_at: SystemTime::now(),
            quit: AtomicBool::new(false),
            quit_notify: Notify::new(),
            drain: AtomicBool::new(false),
            drain_notify: Notify::new(),
        })
    }

    /// Set the initialization state (`Draining` also fails health checks, as Envoy's
    /// `/healthcheck/fail` does).
    pub fn set_state(&self, s: State) {
        if s == State::Draining {
            self.healthcheck_failed.store(true, Ordering::SeqCst);
        } else {
            self.state.store(s as u8, Ordering::SeqCst);
        }
    }

    /// `DRAINING` while health checks are failed, else the initialization state.
    pub fn state(&self) -> State {
        if self.healthcheck_failed() {
            State::Draining
        } else {
            State::from_u8(self.state.load(Ordering::SeqCst))
        }
    }

    pub fn healthcheck_failed(&self) -> bool {
        self.healthcheck_failed.load(Ordering::SeqCst)
    }

    /// `/healthcheck/fail` (true) and `/healthcheck/ok` (false).
    pub fn set_healthcheck_failed(&self, failed: bool) {
        self.healthcheck_failed.store(failed, Ordering::SeqCst);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Wall-clock start time (the `last_updated` of static resources in `/config_dump`).
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Ask the server to exit (`/quitquitquit`).
    pub fn request_quit(&self) {
        self.quit.store(true, Ordering::SeqCst);
        self.quit_notify.notify_waiters();
    }

    pub fn is_quit_requested(&self) -> bool {
        self.quit.load(Ordering::SeqCst)
    }

    /// Resolves once [`request_quit`](Self::request_quit) was called (immediately if it already was).
    pub async fn quit_requested(&self) {
        loop {
            let notified = self.quit_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_quit_requested() {
                return;
            }
            notified.await;
        }
    }

    /// Ask the listeners to drain (`/drain_listeners`).
    pub fn request_drain_listeners(&self) {
        self.drain.store(true, Ordering::SeqCst);
        self.drain_notify.notify_waiters();
    }

    pub fn is_drain_requested(&self) -> bool {
        self.drain.load(Ordering::SeqCst)
    }

    /// Resolves once `/drain_listeners` was called.
    pub async fn drain_listeners_requested(&self) {
        loop {
            let notified = self.drain_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_drain_requested() {
                return;
            }
            notified.await;
        }
    }
}

/// A listener as `/listeners` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    /// The config name, or a generated UUID for unnamed listeners (as Envoy does).
    pub name: String,
    pub address: SocketAddr,
}

impl ListenerInfo {
    /// A listener's entry: its config name, or a random UUID when it has none (Envoy names
    /// unnamed listeners that way, e.g. `c7e7c86e-76ba-4a92-a617-4877ad8ad613`).
    pub fn new(name: Option<&str>, address: SocketAddr) -> ListenerInfo {
        let name = match name {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => uuid::Uuid::new_v4().to_string(),
        };
        ListenerInfo { name, address }
    }
}

/// The process options `/server_info` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLineOptions {
    pub config_path: String,
    pub concurrency: u32,
    pub log_level: String,
    /// `Serve` or `Validate`.
    pub mode: String,
    pub base_id: u64,
    pub drain_time_s: u64,
    pub parent_shutdown_time_s: u64,
}

impl Default for CommandLineOptions {
    fn default() -> Self {
        CommandLineOptions {
            config_path: String::new(),
            concurrency: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            log_level: "info".into(),
            mode: "Serve".into(),
            base_id: 0,
            drain_time_s: 600,
            parent_shutdown_time_s: 900,
        }
    }
}

/// Everything the admin interface reads.
pub struct AdminContext {
    pub stats: Store,
    /// Usually the cluster manager; [`StaticClusters`] builds a view from the config alone.
    pub clusters: Arc<dyn ClusterSource>,
    pub snapshot: Arc<sluice_config::Snapshot>,
    pub server: Arc<ServerState>,
    pub listeners: Vec<ListenerInfo>,
    pub options: CommandLineOptions,
}

// ---------------------------------------------------------------------------------------------
// Server stats

/// Create the `server.*`, `listener_manager.*` and `runtime.*` stats Envoy has from the start.
/// `server.state`, `server.live`, `server.uptime` … are then kept up to date by the stats flush.
pub fn register_server_stats(store: &Store, concurrency: u32) {
    for c in [
        "server.debug_assertion_failures",
        "server.dropped_stat_flushes",
        "server.dynamic_unknown_fields",
        "server.envoy_bug_failures",
        "server.envoy_notifications",
        "server.static_unknown_fields",
        "server.wip_protos",
        "listener_manager.listener_added",
        "listener_manager.listener_create_failure",
        "listener_manager.listener_create_success",
        "listener_manager.listener_in_place_updated",
        "listener_manager.listener_modified",
        "listener_manager.listener_removed",
        "listener_manager.listener_stopped",
        "runtime.deprecated_feature_use",
        "runtime.load_error",
        "runtime.load_success",
        "runtime.override_dir_exists",
        "runtime.override_dir_not_exists",
    ] {
        store.counter(c);
    }
    for g in [
        "server.compilation_settings.fips_mode",
        "server.days_until_first_cert_expiring",
        "server.hot_restart_epoch",
        "server.live",
        "server.memory_allocated",
        "server.memory_heap_size",
        "server.memory_physical_size",
        "server.parent_connections",
        "server.seconds_until_first_ocsp_response_expiring",
        "server.state",
        "server.stats_recent_lookups",
        "server.total_connections",
        "server.uptime",
        "server.version",
        "listener_manager.total_filter_chains_draining",
        "listener_manager.total_listeners_active",
        "listener_manager.total_listeners_draining",
        "listener_manager.total_listeners_warming",
        "listener_manager.workers_started",
        "runtime.admin_overrides_active",
        "runtime.deprecated_feature_seen_since_process_start",
        "runtime.num_keys",
        "runtime.num_layers",
    ] {
        store.gauge(g);
    }
    store.gauge("server.concurrency").set(i64::from(concurrency));
    store.gauge("server.hot_restart_generation").set(1);
    store.gauge("server.state").set(State::PreInitializing as i64);
    store.gauge("server.days_until_first_cert_expiring").set(i64::from(u32::MAX));
    store.counter("runtime.load_success").inc();
    store.histogram("server.initialization_time_ms");
}

/// The server finished initializing: state `LIVE`, `server.initialization_time_ms` recorded,
/// `server.state`/`server.live`/`listener_manager.workers_started` set.
pub fn mark_initialized(store: &Store, server: &ServerState) {
    server.set_state(State::Live);
    store.histogram("server.initialization_time_ms").record(server.uptime().as_secs_f64() * 1000.0);
    store.gauge("server.state").set(server.state() as i64);
    store.gauge("server.live").set(i64::from(server.state() == State::Live));
    store.gauge("listener_manager.workers_started").set(1);
}

/// One stats flush: `server.state` (only changes here, like Envoy), `server.live`,
/// `server.uptime`, memory and certificate gauges, runtime gauges; closes the histogram
/// interval.
pub fn flush_stats(ctx: &AdminContext) {
    let s = &ctx.stats;
    let state = ctx.server.state();
    s.gauge("server.state").set(state as i64);
    s.gauge("server.live").set(i64::from(state == State::Live));
    s.gauge("server.uptime").set(ctx.server.uptime().as_secs() as i64);
    if let Some((rss, shared, data)) = info::process_memory() {
        s.gauge("server.memory_allocated").set(rss.saturating_sub(shared) as i64);
        s.gauge("server.memory_heap_size").set(data as i64);
        s.gauge("server.memory_physical_size").set(rss as i64);
    }
    let days = info::days_until_first_cert_expiring(&ctx.snapshot.bootstrap, SystemTime::now());
    s.gauge("server.days_until_first_cert_expiring").set(days as i64);
    let (keys, layers) = info::runtime_counts(&ctx.snapshot.bootstrap);
    s.gauge("runtime.num_keys").set(keys as i64);
    s.gauge("runtime.num_layers").set(layers as i64);
    s.flush_histograms();
}

/// Periodic stats flush (bootstrap `stats_flush_interval`, default 5 s) until quit.
pub fn spawn_stats_flush(ctx: Arc<AdminContext>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = interval.max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => flush_stats(&ctx),
                _ = ctx.server.quit_requested() => break,
            }
        }
    })
}

/// Handles of the admin listener's own stats (`http.admin.*`, `listener.admin.*`).
struct AdminStats {
    cx_total: [Counter; 3],
    cx_active: [Gauge; 3],
    cx_destroy: [Counter; 2],
    cx_destroy_remote: Counter,
    cx_http1_total: Counter,
    cx_http1_active: Gauge,
    cx_length: [Histogram; 2],
    rx_bytes: Counter,
    tx_bytes: Counter,
    rq_total: Counter,
    rq_http1_total: Counter,
    rq_active: Gauge,
    rq_completed: [Counter; 2],
    rq_xx: [[Counter; 5]; 2],
    rq_time: Histogram,
}

impl AdminStats {
    fn register(s: &Store) -> AdminStats {
        let h = |n: &str| format!("http.admin.{n}");
        let l = |n: &str| format!("listener.admin.{n}");
        for c in [
            "downstream_cx_delayed_close_timeout",
            "downstream_cx_destroy_active_rq",
            "downstream_cx_destroy_local",
            "downstream_cx_destroy_local_active_rq",
            "downstream_cx_destroy_remote_active_rq",
            "downstream_cx_drain_close",
            "downstream_cx_http2_total",
            "downstream_cx_idle_timeout",
            "downstream_cx_protocol_error",
            "downstream_cx_ssl_total",
            "downstream_rq_http2_total",
            "downstream_rq_timeout",
            "downstream_rq_too_large",
            "downstream_cx_max_duration_reached",
            "downstream_cx_max_requests_reached",
            "downstream_cx_upgrades_total",
            "downstream_rq_failed_path_normalization",
            "downstream_rq_header_timeout",
            "downstream_rq_idle_timeout",
            "downstream_rq_max_duration_reached",
            "downstream_rq_non_relative_path",
            "downstream_rq_response_before_rq_complete",
            "downstream_rq_rx_reset",
            "downstream_rq_tx_reset",
            "downstream_rq_ws_on_non_ws_route",
            "rs_too_large",
        ] {
            s.counter(h(c));
        }
        for g in [
            "downstream_cx_http2_active",
            "downstream_cx_ssl_active",
            "downstream_cx_upgrades_active",
        ] {
            s.gauge(h(g));
        }
        for c in ["downstream_cx_overflow", "no_filter_chain_match", "downstream_global_cx_overflow"] {
            s.counter(l(c));
        }
        let xx = |prefix: &dyn Fn(&str) -> String| {
            [1, 2, 3, 4, 5].map(|n| s.counter(prefix(&format!("downstream_rq_{n}xx"))))
        };
        AdminStats {
            cx_total: [
                s.counter(h("downstream_cx_total")),
                s.counter(l("downstream_cx_total")),
                s.counter(l("main_thread.downstream_cx_total")),
            ],
            cx_active: [
                s.gauge(h("downstream_cx_active")),
                s.gauge(l("downstream_cx_active")),
                s.gauge(l("main_thread.downstream_cx_active")),
            ],
            cx_destroy: [s.counter(h("downstream_cx_destroy")), s.counter(l("downstream_cx_destroy"))],
            cx_destroy_remote: s.counter(h("downstream_cx_destroy_remote")),
            cx_http1_total: s.counter(h("downstream_cx_http1_total")),
            cx_http1_active: s.gauge(h("downstream_cx_http1_active")),
            cx_length: [s.histogram(h("downstream_cx_length_ms")), s.histogram(l("downstream_cx_length_ms"))],
            rx_bytes: s.counter(h("downstream_cx_rx_bytes_total")),
            tx_bytes: s.counter(h("downstream_cx_tx_bytes_total")),
            rq_total: s.counter(h("downstream_rq_total")),
            rq_http1_total: s.counter(h("downstream_rq_http1_total")),
            rq_active: s.gauge(h("downstream_rq_active")),
            rq_completed: [
                s.counter(h("downstream_rq_completed")),
                s.counter(l("http.admin.downstream_rq_completed")),
            ],
            rq_xx: [xx(&h), xx(&|n: &str| l(&format!("http.admin.{n}")))],
            rq_time: s.histogram(h("downstream_rq_time")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// An admin response body: sent chunked, as Envoy's admin does.
pub struct AdminBody(Option<Bytes>);

impl Body for AdminBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b))))
    }
}

const TEXT: &str = "text/plain; charset=UTF-8";
const JSON: &str = "application/json";

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut r = Response::new(AdminBody(Some(body.into())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_str(content_type).expect("static"));
    h.insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache, max-age=0"));
    h.insert("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    if let Ok(d) = http::HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
        h.insert(http::header::DATE, d);
    }
    h.insert(http::header::SERVER, http::HeaderValue::from_static("envoy"));
    r
}

/// An error some handlers (`/config_dump`) answer in Envoy's other layout: `text/plain`
/// without a charset, with `x-content-type-options` first (and again after `cache-control`).
fn plain_error(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    let mut r = reply(status, "text/plain", body);
    let old = std::mem::take(r.headers_mut());
    let h = r.headers_mut();
    h.append("x-content-type-options", http::HeaderValue::from_static("nosniff"));
    for (name, value) in old {
        if let Some(name) = name {
            h.append(name, value);
        }
    }
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AdminBody> {
    reply(status, TEXT, body)
}

fn json_reply(v: &serde_json::Value) -> Response<AdminBody> {
    reply(StatusCode::OK, JSON, json::pretty(v))
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Query parameters, percent-decoded (the last value of a repeated name wins).
pub fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn stats_params(q: &[(String, String)]) -> Result<stats::StatsParams, String> {
    let filter = match param(q, "filter") {
        Some(f) if !f.is_empty() => Some(Regex::new(f).map_err(|_| "Invalid re2 regex".to_string())?),
        _ => None,
    };
    let kind = match param(q, "type") {
        None | Some("") => stats::StatsType::All,
        Some(t) => stats::StatsType::parse(t).ok_or_else(|| format!("invalid type={t}"))?,
    };
    Ok(stats::StatsParams {
        filter,
        invert_filter: param(q, "invert_filter").is_some(),
        used_only: param(q, "usedonly").is_some(),
        kind,
    })
}

/// Answer one admin request (pure apart from the side effects of the POST endpoints).
pub fn handle(ctx: &AdminContext, method: &Method, path: &str, query: Option<&str>) -> Response<AdminBody> {
    let q = parse_query(query);
    let endpoint = help::find(path);
    if let Some(e) = endpoint {
        if e.post && method != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, format!("Method {method} not allowed, POST required."));
        }
    }
    match path {
        "/" | "/help" => text(StatusCode::OK, help::help_text()),
        "/stats" => {
            let p = match stats_params(&q) {
                Ok(p) => p,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            match param(&q, "format") {
                Some("json") => reply(StatusCode::OK, JSON, stats::json(&ctx.stats, &p)),
                Some("prometheus") => text(StatusCode::OK, stats::prometheus(&ctx.stats, &p)),
                _ => text(StatusCode::OK, stats::text(&ctx.stats, &p)),
            }
        }
        "/stats/prometheus" => match stats_params(&q) {
            Ok(p) => text(StatusCode::OK, stats::prometheus(&ctx.stats, &p)),
            Err(e) => text(StatusCode::BAD_REQUEST, e),
        },
        "/clusters" => {
            let filter = match param(&q, "filter") {
                Some(f) if !f.is_empty() => match Regex::new(f) {
                    Ok(re) => Some(re),
                    Err(_) => return text(StatusCode::BAD_REQUEST, "Invalid re2 regex"),
                },
                _ => None,
            };
            let views = ctx.clusters.cluster_views();
            if param(&q, "format") == Some("json") {
                json_reply(&clusters::json(&views, filter.as_ref()))
            } else {
                text(StatusCode::OK, clusters::text(&views, filter.as_ref()))
            }
        }
        "/ready" => {
            let state = ctx.server.state();
            let status = if state == State::Live { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, format!("{}\n", state.name()))
        }
        "/server_info" => json_reply(&info::server_info(
            &ctx.snapshot.bootstrap,
            &ctx.snapshot.source,
            ctx.server.state(),
            ctx.server.uptime().as_secs(),
            &ctx.options,
        )),
        "/config_dump" => {
            let name_regex = match param(&q, "name_regex") {
                Some(r) if !r.is_empty() => match Regex::new(r) {
                    Ok(re) => Some(re),
                    Err(_) => return text(StatusCode::BAD_REQUEST, "Invalid regex"),
                },
                _ => None,
            };
            let dump = info::config_dump(&ctx.snapshot.bootstrap, &ctx.snapshot.redacted_source(), ctx.server.started_at());
            match info::config_dump_query(dump, param(&q, "resource"), param(&q, "mask"), name_regex.as_ref()) {
                Ok(v) => json_reply(&v),
                Err((404, m)) => plain_error(StatusCode::NOT_FOUND, m),
                Err((_, m)) => plain_error(StatusCode::BAD_REQUEST, m),
            }
        }
        "/listeners" => {
            if param(&q, "format") == Some("json") {
                json_reply(&info::listeners_json(&ctx.listeners))
            } else {
                text(StatusCode::OK, info::listeners_text(&ctx.listeners))
            }
        }
        "/certs" => json_reply(&info::certs_json(&ctx.snapshot.bootstrap, SystemTime::now())),
        "/runtime" => json_reply(&info::runtime_json(&ctx.snapshot.bootstrap)),
        "/memory" => json_reply(&info::memory_json()),
        "/hot_restart_version" => text(StatusCode::OK, info::HOT_RESTART_VERSION),
        "/healthcheck/fail" => {
            ctx.server.set_healthcheck_failed(true);
            ctx.clusters.set_healthcheck_failed(true);
            ctx.stats.gauge("server.live").set(0);
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" => {
            ctx.server.set_healthcheck_failed(false);
            ctx.clusters.set_healthcheck_failed(false);
            ctx.stats.gauge("server.live").set(i64::from(ctx.server.state() == State::Live));
            text(StatusCode::OK, "OK\n")
        }
        "/logging" => {
            let control = logging::control();
            match control.apply(&q) {
                Ok(()) => text(StatusCode::OK, control.listing()),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("error: {e}\n\n{}{}", logging::USAGE, control.listing())),
            }
        }
        "/reopen_logs" => {
            crate::access_log::reopen();
            text(StatusCode::OK, "OK\n")
        }
        "/reset_counters" => {
            ctx.stats.reset_counters();
            text(StatusCode::OK, "OK\n")
        }
        "/drain_listeners" => {
            ctx.server.request_drain_listeners();
            text(StatusCode::OK, "OK\n")
        }
        "/quitquitquit" => {
            // Answer first; the server goes away right after.
            let server = ctx.server.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                server.request_quit();
            });
            text(StatusCode::OK, "OK\n")
        }
        _ if endpoint.is_some() => text(StatusCode::NOT_IMPLEMENTED, format!("{path} is not supported by sluice\n")),
        _ => text(StatusCode::NOT_FOUND, format!("invalid path. {}", help::help_text())),
    }
}

/// Serve the admin API on an already-bound listener until the server quits.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<AdminContext>) {
    let stats = Arc::new(AdminStats::register(&ctx.stats));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.server.quit_requested() => break,
        };
        let Ok((stream, _peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let opened = Instant::now();
            for c in &stats.cx_total {
                c.inc();
            }
            for g in &stats.cx_active {
                g.inc();
            }
            stats.cx_http1_total.inc();
            stats.cx_http1_active.inc();
            let svc_stats = stats.clone();
            let svc_ctx = ctx.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let ctx = svc_ctx.clone();
                let stats = svc_stats.clone();
                async move {
                    let start = Instant::now();
                    stats.rq_total.inc();
                    stats.rq_http1_total.inc();
                    stats.rq_active.inc();
                    let resp = handle(&ctx, req.method(), req.uri().path(), req.uri().query());
                    let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
                    for i in 0..2 {
                        stats.rq_xx[i][class].inc();
                        stats.rq_completed[i].inc();
                    }
                    stats.rq_active.dec();
                    stats.rq_time.record(start.elapsed().as_secs_f64() * 1000.0);
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(Counted::new(stream, None, stats.rx_bytes.clone(), stats.tx_bytes.clone())), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = ctx.server.quit_requested() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                }
            }
            for g in &stats.cx_active {
                g.dec();
            }
            stats.cx_http1_active.dec();
            for c in &stats.cx_destroy {
                c.inc();
            }
            stats.cx_destroy_remote.inc();
            let ms = opened.elapsed().as_secs_f64() * 1000.0;
            for h in &stats.cx_length {
                h.record(ms);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ctx_from_yaml(yaml: &str) -> AdminContext {
        fuzzing::context(yaml)
    }

    fn body(r: Response<AdminBody>) -> (u16, String) {
        let s = r.status().as_u16();
        let b = r.into_body().0.unwrap_or_default();
        (s, String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn state_transitions_and_ready() {
        let ctx = ctx_from_yaml("{}");
        let get = |p: &str| body(handle(&ctx, &Method::GET, p, None));
        assert_eq!(get("/ready"), (503, "PRE_INITIALIZING\n".into()));
        ctx.server.set_state(State::Initializing);
        assert_eq!(get("/ready"), (503, "INITIALIZING\n".into()));
        mark_initialized(&ctx.stats, &ctx.server);
        assert_eq!(get("/ready"), (200, "LIVE\n".into()));
        assert_eq!(body(handle(&ctx, &Method::GET, "/stats", Some("filter=server.state"))).1, "server.state: 0\n");
        assert_eq!(body(handle(&ctx, &Method::POST, "/healthcheck/fail", None)), (200, "OK\n".into()));
        assert_eq!(get("/ready"), (503, "DRAINING\n".into()));
        // server.live drops at once, server.state only at the next flush.
        assert_eq!(ctx.stats.gauge("server.live").value(), 0);
        assert_eq!(ctx.stats.gauge("server.state").value(), 0);
        flush_stats(&ctx);
        assert_eq!(ctx.stats.gauge("server.state").value(), 1);
        assert_eq!(body(handle(&ctx, &Method::POST, "/healthcheck/ok", None)), (200, "OK\n".into()));
        assert_eq!(get("/ready"), (200, "LIVE\n".into()));
        flush_stats(&ctx);
        assert_eq!(ctx.stats.gauge("server.state").value(), 0);
        assert_eq!(ctx.stats.gauge("server.live").value(), 1);
    }

    #[test]
    fn post_only_endpoints_refuse_get() {
        let ctx = ctx_from_yaml("{}");
        for p in ["/healthcheck/fail", "/healthcheck/ok", "/quitquitquit", "/reset_counters", "/drain_listeners", "/logging"] {
            let (s, b) = body(handle(&ctx, &Method::GET, p, None));
            assert_eq!((s, b.as_str()), (405, "Method GET not allowed, POST required."), "{p}");
        }
        assert!(!ctx.server.healthcheck_failed());
        assert!(!ctx.server.is_drain_requested());
    }

    #[test]
    fn unknown_path_is_404_with_help() {
        let ctx = ctx_from_yaml("{}");
        let (s, b) = body(handle(&ctx, &Method::GET, "/nonexistent", None));
        assert_eq!(s, 404);
        assert!(b.starts_with("invalid path. admin commands are:\n  /: Admin home page\n"));
        assert_eq!(b, format!("invalid path. {}", help::help_text()));
        assert!(b.ends_with("  /stats/recentlookups/enable (POST): enable recording of reset stat-name lookup names\n"));
    }

    #[test]
    fn unnamed_listeners_get_a_uuid() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(ListenerInfo::new(Some("http"), a).name, "http");
        let n = ListenerInfo::new(None, a).name;
        assert_eq!(n.len(), 36);
        assert_eq!(n.matches('-').count(), 4);
        assert_ne!(n, ListenerInfo::new(Some(""), a).name);
    }

    #[test]
    fn query_decoding() {
        let q = parse_query(Some("filter=%5Eserver%5C.state%24&usedonly&type=Gauges"));
        assert_eq!(param(&q, "filter"), Some("^server\\.state$"));
        assert_eq!(param(&q, "usedonly"), Some(""));
        assert_eq!(param(&q, "type"), Some("Gauges"));
        assert_eq!(percent_decode("a%2"), "a%2");
        // A '%' before a multi-byte character used to slice inside it and panic.
        assert_eq!(param(&parse_query(Some("filter=%aé")), "filter"), Some("%aé"));
        assert_eq!(percent_decode("%e9%"), "\u{fffd}%");
    }

    #[test]
    fn any_query_decodes_without_panicking() {
        // A bounded sweep of generated queries mixing escapes, separators and multi-byte text.
        let pieces = ["%", "%a", "%zz", "%41", "%e9", "é", "字", "=", "&", "a", "", "+", "%%", "%f0%9f"];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut q = String::new();
            for _ in 0..(seed % 8) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                q.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let parsed = parse_query(Some(&q));
            assert!(parsed.len() <= q.len() + 1);
        }
    }
}
