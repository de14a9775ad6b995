//! The server: builds everything from a validated snapshot, binds listeners and admin, waits for
//! cluster warming, then serves until SIGTERM/SIGINT or `/quitquitquit`.
//!
//! Threading follows Envoy: `--concurrency` worker threads, each a single-threaded runtime that
//! owns its own socket per listener (`SO_REUSEPORT`, so the kernel spreads connections) and serves
//! every connection it accepts start to finish on that thread. The runtime that calls [`start`]
//! keeps the control plane: DNS discovery, admin, stats flushes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use sluice_config::Snapshot;
use tokio::net::TcpListener;

use crate::admin::{self, AdminContext, CommandLineOptions, ListenerInfo, ServerState, State};
use crate::listener::Listener;
use crate::stats::Store;
use crate::upstream::ClusterManager;

/// What the command line decided.
#[derive(Clone, Debug)]
pub struct Options {
    pub config_path: String,
    pub concurrency: u32,
    pub log_level: String,
}

/// A running proxy (in-process: tests start it on port 0 and read the bound addresses).
pub struct RunningServer {
    pub listeners: Vec<ListenerInfo>,
    pub admin: Option<SocketAddr>,
    pub state: Arc<ServerState>,
    pub stats: Store,
    pub clusters: Arc<ClusterManager>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop_workers: tokio::sync::watch::Sender<bool>,
}

impl RunningServer {
    /// Resolves when the server was asked to quit (`/quitquitquit`).
    pub async fn quit_requested(&self) {
        self.state.quit_requested().await;
    }
    pub fn shutdown(&self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.stop_workers.send(true);
        self.clusters.shutdown();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Build every listener (no binding): used by `--mode validate` too.
/// Each listener with its `enable_reuse_port` (default true, as Envoy).
pub fn build_listeners(snapshot: &Snapshot, clusters: &Arc<ClusterManager>, stats: &Store) -> anyhow::Result<Vec<(Listener, bool)>> {
    let mut out = Vec::new();
    for (i, l) in crate::bootstrap::settings(&snapshot.bootstrap).listeners.iter().enumerate() {
        let listener = Listener::build(l, clusters, stats)
            .map_err(|(p, e)| anyhow::anyhow!("static_resources.listeners[{i}].{p}: {e}"))?;
        let reuse_port = listener.reuse_port;
        out.push((listener, reuse_port));
    }
    Ok(out)
}

/// Start the proxy inside the current tokio runtime.
pub async fn start(snapshot: Arc<Snapshot>, options: Options) -> anyhow::Result<RunningServer> {
    let started = Instant::now();
    // Access-log filters read runtime keys from the static layers.
    crate::access_log::runtime::set_from_bootstrap(&snapshot.bootstrap);
    let stats = Store::new();
    let state = ServerState::new();
    admin::register_server_stats(&stats, options.concurrency);
    let clusters = ClusterManager::new(&snapshot.bootstrap, &stats)?;
    let listeners = build_listeners(&snapshot, &clusters, &stats)?;

    let mut tasks = Vec::new();
    let mut infos = Vec::new();
    // One socket per listener per worker; the first decides the port (port 0 in tests).
    let workers = options.concurrency.max(1) as usize;
    let mut per_worker: Vec<Vec<(Arc<Listener>, std::net::TcpListener)>> = (0..workers).map(|_| Vec::new()).collect();
    for (l, reuse_port) in listeners {
        let l = Arc::new(l);
        let bind_err = |e: std::io::Error| anyhow::anyhow!("cannot bind listener '{}' to {}: {e}", l.name, l.address);
        let first = bind(l.address, reuse_port, l.v6_only).await.map_err(bind_err)?;
        let local = first.local_addr()?;
        infos.push(ListenerInfo { name: l.name.clone(), address: local });
        let first = first.into_std()?;
        for (w, sockets) in per_worker.iter_mut().enumerate() {
            let socket = match w {
                0 => first.try_clone()?,
                // Without reuse_port the workers share one socket (a duplicate descriptor).
                _ if !reuse_port => first.try_clone()?,
                _ => bind(local, true, l.v6_only).await.map_err(bind_err)?.into_std()?,
            };
            sockets.push((l.clone(), socket));
        }
    }
    stats.counter("listener_manager.listener_added").add(infos.len() as u64);
    stats.gauge("listener_manager.total_listeners_active").set(infos.len() as i64);

    let settings = crate::bootstrap::settings(&snapshot.bootstrap);
    let admin_addr = match settings.admin {
        Some(a) => {
            let (addr, v6_only) = a.map_err(|e| anyhow::anyhow!("admin.address: {e}"))?;
            let socket = bind(addr, false, v6_only).await.map_err(|e| anyhow::anyhow!("cannot bind admin to {addr}: {e}"))?;
            Some((socket.local_addr()?, socket))
        }
        None => None,
    };
    let ctx = Arc::new(AdminContext {
        stats: stats.clone(),
        clusters: clusters.clone(),
        snapshot: snapshot.clone(),
        server: state.clone(),
        listeners: infos.clone(),
        options: CommandLineOptions {
            config_path: options.config_path.clone(),
            concurrency: options.concurrency,
            log_level: options.log_level.clone(),
            mode: "Serve".to_string(),
            base_id: 0,
            drain_time_s: 600,
            parent_shutdown_time_s: 900,
        },
    });
    let admin_local = match admin_addr {
        Some((local, socket)) => {
            tasks.push(tokio::spawn(admin::serve(socket, ctx.clone())));
            Some(local)
        }
        None => None,
    };
    tasks.push(admin::spawn_stats_flush(ctx.clone(), settings.stats_flush_interval));

    // Envoy's cluster warming: listeners accept only once every cluster had its first answer.
    state.set_state(State::Initializing);
    clusters.initialized().await;
    let (stop_workers, stop) = tokio::sync::watch::channel(false);
    for (w, sockets) in per_worker.into_iter().enumerate() {
        spawn_worker(w, sockets, &stats, stop.clone())?;
    }
    admin::mark_initialized(&stats, &state);
    tracing::info!(
        listeners = infos.len(),
        admin = ?admin_local,
        "all clusters initialized; serving ({} ms)",
        started.elapsed().as_millis()
    );
    Ok(RunningServer { listeners: infos, admin: admin_local, state, stats, clusters, tasks, stop_workers })
}

async fn bind(addr: SocketAddr, reuse_port: bool, v6_only: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if addr.is_ipv6() {
        // Envoy binds IPv6 addresses IPv6-only unless `ipv4_compat` is set.
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &v6_only).map_err(std::io::Error::from)?;
    }
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A worker thread: a single-threaded runtime serving its sockets until told to stop.
fn spawn_worker(
    index: usize,
    sockets: Vec<(Arc<Listener>, std::net::TcpListener)>,
    stats: &Store,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let sockets: Vec<_> = sockets.into_iter().map(|(l, s)| { let w = l.worker_stats(stats, index); (l, s, w) }).collect();
    std::thread::Builder::new().name(format!("sluice-worker-{index}")).spawn(move || {
        crate::upstream::bind_worker_thread(index);
        runtime.block_on(async move {
            for (listener, socket, worker) in sockets {
                match socket.set_nonblocking(true).and_then(|()| TcpListener::from_std(socket)) {
                    Ok(socket) => {
                        tokio::spawn(listener.serve(socket, worker));
                    }
                    Err(e) => tracing::error!(listener = %listener.name, "worker {index}: {e}"),
                }
            }
            tokio::spawn(timer_tick());
            // Stop on request, or when the server is gone.
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        });
        // Dropping the runtime cancels the connections it served.
        drop(runtime);
    })?;
    Ok(())
}

/// A worker's one-second tick. Tokio wakes its own driver (an eventfd write and an extra epoll
/// round) whenever a timer is registered earlier than the driver's next planned wake-up; with
/// nothing else pending that is every request's route timeout, on a lone keep-alive connection
/// once per request. With the tick the next wake-up is never more than a second away, so the
/// timers of requests (Envoy's default route timeout is 15 s) register without it.
async fn timer_tick() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}
