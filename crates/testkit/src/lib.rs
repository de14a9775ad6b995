//! Dev-only helpers for sluice's tests: in-process upstreams on port 0, generated certificates,
//! a test DNS server and a small HTTP client. Nothing here is used by the shipped binary.
//!
//! * [`echo::EchoUpstream`] — HTTP/1.1 + h2c (+TLS) echo server with behaviour switches by path;
//! * [`certs::Pki`] — CA, server and client certificates (ECDSA or RSA) as PEM;
//! * [`dns`] — the embedded authoritative DNS server of `sluice-mesh` (mutable zone, silent/SERVFAIL);
//! * [`client`] — `get`, `request`, `request_h2`, and keep-alive [`client::Conn`].

pub mod certs;
pub mod client;
pub mod echo;
pub mod env;

pub use certs::{KeyKind, Pki};
pub use echo::{EchoOptions, EchoUpstream, Protocol};
pub use sluice_mesh::dns;

use std::time::{Duration, Instant};

/// Poll `cond` every 10 ms until it is true or `limit` passed; returns whether it became true.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
