//! Real Envoy 1.40 and `sluice proxy` as child processes on the same config, for the differential
//! tests: each listens on its own `@LISTEN@` and `@ADMIN@` ports, is killed by PID and reaped on drop.
//!
//! Environment: `SLUICE_ENVOY` (real Envoy 1.40; [`envoy`] says the test is skipped when unset) and
//! `SLUICE_BIN` (the `sluice` binary, default `<repo>/target/debug/sluice`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_testkit::env::{free_port, repo_root};

pub fn envoy() -> Option<PathBuf> {
    match std::env::var_os("SLUICE_ENVOY") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            println!("SKIPPED: SLUICE_ENVOY is not set (real Envoy 1.40 is needed for the differential tests)");
            None
        }
    }
}

pub fn sluice() -> PathBuf {
    let p = std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/debug/sluice"));
    assert!(p.exists(), "sluice binary not found at {} (set SLUICE_BIN, or `cargo build -p sluice`)", p.display());
    p
}

/// A proxy process; killed by PID and reaped on drop.
pub struct Proxy {
    pub child: Child,
    pub listen: u16,
    pub admin: u16,
    pub log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    pub async fn start(name: &'static str, bin: &PathBuf, is_envoy: bool, test: &str, config: &str) -> Proxy {
        let (listen, admin) = (free_port(), free_port());
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("diff-{}-{test}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(&path, config.replace("@LISTEN@", &listen.to_string()).replace("@ADMIN@", &admin.to_string())).unwrap();
        let log = dir.join("proxy.log");
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        if is_envoy {
            cmd.arg("--disable-hot-restart");
        } else {
            cmd.arg("proxy");
        }
        cmd.arg("-c").arg(&path).args(["--concurrency", "1", "--log-level", "warning"]);
        let child = cmd.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap();
        let mut p = Proxy { child, listen, admin, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("{name} exited ({st}): {}", std::fs::read_to_string(&p.log).unwrap_or_default());
            }
            let ready = p.admin_get("/ready").await.is_some_and(|(s, _)| s == 200);
            if ready && std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok() {
                return p;
            }
            assert!(Instant::now() < deadline, "{name} not ready: {}", std::fs::read_to_string(&p.log).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let r = sluice_testkit::client::get(&format!("http://127.0.0.1:{}{path}", self.admin)).await.ok()?;
        Some((r.status.as_u16(), r.text()))
    }

    pub async fn admin_post(&self, path: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        sluice_testkit::client::request("POST", &url, &[], "").await.map(|r| r.status.as_u16()).unwrap_or(0)
    }

    /// `/stats` lines under `prefix`: name → value.
    pub async fn stats(&self, prefix: &str) -> BTreeMap<String, String> {
        let text = self.admin_get("/stats").await.map(|r| r.1).unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.split_once(": ").map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    }
}
