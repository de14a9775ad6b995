//! Upgrades and CONNECT: once the upstream switched protocols, bytes flow both ways until either
//! side closes. Envoy 1.40 does not keep half-closed tunnels open: when one side ends (EOF or
//! error) what was read is delivered, both connections are shut down and closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A byte stream of either side of a tunnel.
pub trait TunnelIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> TunnelIo for T {}

pub type BoxIo = Box<dyn TunnelIo>;
pub type TunnelFuture = Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send>>;

/// A response extension set by the connection manager on a `101` (or a `2xx` to `CONNECT`):
/// the upstream side of the tunnel, ready when the upstream connection has been handed over.
/// (Extensions must be `Clone`; the future is taken once.)
#[derive(Clone)]
pub struct UpstreamTunnel(Arc<Mutex<Option<TunnelFuture>>>);

impl UpstreamTunnel {
    pub fn new(fut: TunnelFuture) -> Self {
        UpstreamTunnel(Arc::new(Mutex::new(Some(fut))))
    }
    /// Wrap an already connected stream.
    pub fn ready(io: BoxIo) -> Self {
        Self::new(Box::pin(async move { Ok(io) }))
    }
    pub fn take(&self) -> Option<TunnelFuture> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for UpstreamTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamTunnel")
    }
}

/// Copy both ways between `down` and `up` until either side ends; `early` (bytes the client
/// sent after the request head) goes upstream first. Returns the bytes moved (down→up, up→down).
/// How long the upstream may still answer after the client ended its side.
const UPSTREAM_LAST_WORDS: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn splice<D, U>(down: D, early: Bytes, up: U) -> (u64, u64)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut down_r, mut down_w) = tokio::io::split(down);
    let (mut up_r, mut up_w) = tokio::io::split(up);
    let mut sent = 0u64;
    let mut received = 0u64;
    if !early.is_empty() {
        if up_w.write_all(&early).await.is_err() {
            return (0, 0);
        }
        sent += early.len() as u64;
    }
    {
        let mut a = Box::pin(pump(&mut down_r, &mut up_w, &mut sent));
        let mut b = Box::pin(pump(&mut up_r, &mut down_w, &mut received));
        let client_done = tokio::select! {
            _ = &mut a => true,
            _ = &mut b => false,
        };
        drop(a);
        if client_done {
            // The client is done sending: the upstream hears the end, and what it still
            // answers (an echo of the last bytes) reaches the client, for a bounded time.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), up_w.shutdown()).await;
            let _ = tokio::time::timeout(UPSTREAM_LAST_WORDS, &mut b).await;
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = up_w.shutdown().await;
        let _ = down_w.shutdown().await;
    })
    .await;
    (sent, received)
}

/// Read → write until EOF or an error; each chunk is written (and flushed) before the next read.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, w: &mut W, count: &mut u64) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
            return;
        }
        *count += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_and_either_close_ends_both() {
        let (client, down) = tokio::io::duplex(1024);
        let (up, server) = tokio::io::duplex(1024);
        let task = tokio::spawn(splice(down, Bytes::from_static(b"early:"), up));
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut sr, mut sw) = tokio::io::split(server);
        cw.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 10];
        sr.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early:ping");
        sw.write_all(b"pong").await.unwrap();
        let mut got = [0u8; 4];
        cr.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        // The client half-closes: the upstream sees EOF, its last answer still reaches the
        // client, and then the client's side is closed too.
        cw.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), sr.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert!(rest.is_empty());
        sw.write_all(b"bye").await.unwrap();
        let mut got = [0u8; 3];
        cr.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"bye");
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), cr.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert_eq!(task.await.unwrap(), (10, 7));
    }
}
