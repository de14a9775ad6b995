//! The gRPC listener: tonic's generated services served by hyper's HTTP/2 server, with every
//! request stream of a connection driven *inside that connection's task*.
//!
//! tonic's own server (like hyper's default executor) spawns one tokio task per request
//! stream. A `Check` never waits (it is evaluated synchronously), so each of those tasks
//! finishes in one poll and wakes the connection task, which tokio runs next (its LIFO slot)
//! and which then flushes: one `writev` per response. Under load that was a third of the
//! server's CPU. Here the connection future polls its own streams: every request that came
//! in one read is answered before the connection flushes, so the responses leave in one
//! `writev`, and no task is spawned per request. Connections still run on any worker thread,
//! so several connections (Envoy opens one per worker) use every core.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::service::Routes;

type BoxFut = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for one connection: request streams are queued here and polled by the
/// connection's [`Driver`], never spawned.
#[derive(Clone, Default)]
struct InlineExec(Arc<Mutex<Vec<BoxFut>>>);

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for InlineExec {
    fn execute(&self, fut: F) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(Box::pin(fut));
    }
}

/// tonic's router as a hyper service.
#[derive(Clone)]
struct HyperRoutes(Routes);

impl hyper::service::Service<http::Request<Incoming>> for HyperRoutes {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = <Routes as tonic::codegen::Service<http::Request<Incoming>>>::Future;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let mut r = self.0.clone();
        tonic::codegen::Service::call(&mut r, req)
    }
}

/// Where the gRPC server listens: TCP, or a Unix domain socket (`unix:///path`, `unix://@name`
/// for an abstract socket), as the plugin's `addr` allows.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }

    /// Binds a Unix socket: an existing socket file is removed first; `@name` is an abstract
    /// socket (Linux).
    pub(crate) fn bind_unix(path: &str) -> std::io::Result<Listener> {
        if let Some(name) = path.strip_prefix('@') {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                let l = std::os::unix::net::UnixListener::bind_addr(&addr)?;
                l.set_nonblocking(true)?;
                return Ok(Listener::Unix(tokio::net::UnixListener::from_std(l)?));
            }
            #[cfg(not(target_os = "linux"))]
            return Err(std::io::Error::other(format!("abstract socket {name}: only on Linux")));
        }
        if let Ok(md) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if md.file_type().is_socket() {
                std::fs::remove_file(path)?;
            }
        }
        Ok(Listener::Unix(tokio::net::UnixListener::bind(path)?))
    }
}

/// A TCP or Unix connection.
pub(crate) enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

type Conn = hyper::server::conn::http2::Connection<TokioIo<Stream>, HyperRoutes, InlineExec>;

/// Drives one HTTP/2 connection and the request streams it started.
struct Driver {
    conn: Pin<Box<Conn>>,
    exec: InlineExec,
    streams: FuturesUnordered<BoxFut>,
}

/// Rounds of (connection, streams) per poll before yielding to other tasks.
const ROUNDS_PER_POLL: usize = 16;

impl Future for Driver {
    type Output = Result<(), hyper::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        for _ in 0..ROUNDS_PER_POLL {
            // Reads frames, starts streams (queued in `exec`), writes what the streams produced.
            if let Poll::Ready(r) = this.conn.as_mut().poll(cx) {
                // The connection is closed: streams still running cannot answer any more.
                return Poll::Ready(r);
            }
            let mut progressed = false;
            {
                let mut q = this.exec.0.lock().unwrap_or_else(|p| p.into_inner());
                for f in q.drain(..) {
                    this.streams.push(f);
                    progressed = true;
                }
            }
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {
                progressed = true;
            }
            if !progressed {
                return Poll::Pending;
            }
            // Some streams answered or started: poll the connection again so the responses
            // are written (all of them in one go) and new frames are read.
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn http2_builder(exec: InlineExec) -> hyper::server::conn::http2::Builder<InlineExec> {
    let mut b = hyper::server::conn::http2::Builder::new(exec);
    // The same settings tonic's server used: no stream limit, hyper's default windows.
    b.timer(TokioTimer::new()).max_concurrent_streams(None);
    b
}

/// Serves `routes` on `listener` until `shutdown` turns true, then closes connections
/// gracefully (at most 5 s).
pub(crate) async fn serve(listener: Listener, routes: Routes, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let svc = HyperRoutes(routes);
    let mut conns = JoinSet::new();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("gRPC accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let svc = svc.clone();
        let mut rx = shutdown.clone();
        conns.spawn(async move {
            let exec = InlineExec::default();
            let conn = http2_builder(exec.clone()).serve_connection(TokioIo::new(stream), svc);
            let mut d = Driver { conn: Box::pin(conn), exec, streams: FuturesUnordered::new() };
            tokio::select! {
                r = &mut d => {
                    if let Err(e) = r {
                        tracing::debug!("gRPC connection: {e}");
                    }
                    return;
                }
                _ = async { let _ = rx.wait_for(|s| *s).await; } => d.conn.as_mut().graceful_shutdown(),
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    Ok(())
}
