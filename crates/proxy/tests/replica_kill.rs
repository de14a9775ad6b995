//! A replica dies under load: three `sluice service` processes behind one STATIC cluster, a
//! route with `retry_policy` (connect-failure, reset, 5xx; 3 retries; previous_hosts) and
//! outlier detection plus active health checks on the cluster. A bounded load (200 requests/s
//! for 6 s, 1200 requests at most) runs while one replica is SIGKILLed after 2 s. sluice must
//! answer every request with 200. With `SLUICE_ENVOY` set, the same config and load run against
//! real Envoy 1.40 and both failure counts are printed side by side. The killed replica is then
//! restarted on its port and the test prints how long until it gets traffic again.
//!
//! `SLUICE_BIN`: the `sluice` binary (default `<repo>/target/debug/sluice`); it runs the
//! replicas (`sluice service`) and the proxy (`sluice proxy`). Every child is killed by PID on
//! drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_testkit::env::{free_port, repo_root};

fn sluice() -> PathBuf {
    let p = std::env::var_os("SLUICE_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target/debug/sluice"));
    assert!(p.exists(), "sluice binary not found at {} (set SLUICE_BIN)", p.display());
    p
}

/// A child process killed (SIGKILL) by PID and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start replica `label` on `port` and wait (bounded) until it answers.
async fn replica(port: u16, label: &str) -> Proc {
    let child = Command::new(sluice())
        .args(["service", "--name", "1", "--quiet", "--hostname", label, "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice service");
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if sluice_testkit::client::get(&format!("http://127.0.0.1:{port}/service/1")).await.is_ok_and(|r| r.status == 200) {
            return p;
        }
        assert!(Instant::now() < deadline, "replica {label} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(listen: u16, admin: u16, ports: &[u16]) -> String {
    let endpoints: String = ports
        .iter()
        .map(|p| format!("        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}\n"))
        .collect();
    format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}
static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: replicas
                  timeout: 5s
                  retry_policy:
                    retry_on: connect-failure,reset,5xx
                    num_retries: 3
                    per_try_timeout: 1s
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config: {{"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}
                    host_selection_retry_max_attempts: 3
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: replicas
    type: STATIC
    connect_timeout: 0.25s
    lb_policy: ROUND_ROBIN
    outlier_detection:
      consecutive_5xx: 3
      consecutive_gateway_failure: 3
      interval: 0.5s
      base_ejection_time: 10s
      max_ejection_percent: 50
    health_checks:
    - timeout: 0.25s
      interval: 0.25s
      unhealthy_threshold: 2
      healthy_threshold: 1
      no_traffic_interval: 0.25s
      http_health_check: {{path: /service/1}}
    load_assignment:
      cluster_name: replicas
      endpoints:
      - lb_endpoints:
{endpoints}"#
    )
}

/// A proxy process started on a config, ready when its admin says so and its listener accepts.
async fn proxy(bin: &PathBuf, envoy: bool, name: &str, cfg: &str, listen: u16, admin: u16) -> Proc {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("replica-kill-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.join("proxy.log")).unwrap();
    let mut cmd = Command::new(bin);
    if envoy {
        cmd.arg("--disable-hot-restart");
    } else {
        cmd.arg("proxy");
    }
    cmd.arg("-c").arg(&path).args(["--concurrency", "1", "--log-level", "error"]);
    let child = cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("spawn proxy");
    let mut p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = p.0.try_wait() {
            panic!("{name} exited ({st}): {}", std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default());
        }
        let ready = sluice_testkit::client::get(&format!("http://127.0.0.1:{admin}/ready")).await.is_ok_and(|r| r.status == 200);
        if ready && sluice_testkit::client::get(&format!("http://127.0.0.1:{listen}/service/1")).await.is_ok_and(|r| r.status == 200) {
            return p;
        }
        assert!(Instant::now() < deadline, "{name} not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct RunResult {
    sent: u64,
    failed: u64,
    failures: Vec<String>,
    back_after: Option<Duration>,
}

/// The load with a replica killed mid-run, then the restart.
async fn run(name: &str, bin: &PathBuf, envoy: bool) -> RunResult {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut replicas = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        replicas.push(Some(replica(*p, &format!("r{i}")).await));
    }
    let (listen, admin) = (free_port(), free_port());
    let _proxy = proxy(bin, envoy, name, &config(listen, admin, &ports), listen, admin).await;
    let url = format!("http://127.0.0.1:{listen}/service/1");
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut tasks = Vec::new();
    let mut killed = false;
    // 200 requests/s for 6 s: at most 1200 requests, and never longer than 8 s of sending.
    for _ in 0..1200 {
        tick.tick().await;
        if start.elapsed() > Duration::from_secs(8) {
            break;
        }
        if !killed && start.elapsed() >= Duration::from_secs(2) {
            replicas[1] = None; // SIGKILL r1
            killed = true;
        }
        let (url, sent, failed, failures) = (url.clone(), sent.clone(), failed.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            sent.fetch_add(1, Ordering::Relaxed);
            let r = tokio::time::timeout(Duration::from_secs(10), sluice_testkit::client::get(&url)).await;
            let problem = match r {
                Ok(Ok(r)) if r.status == 200 => None,
                Ok(Ok(r)) => Some(format!("{} {}", r.status, r.text().lines().next().unwrap_or(""))),
                Ok(Err(e)) => Some(format!("error {e}")),
                Err(_) => Some("no answer in 10 s".to_string()),
            };
            if let Some(p) = problem {
                failed.fetch_add(1, Ordering::Relaxed);
                failures.lock().unwrap().push(p);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    assert!(killed, "the replica was killed during the load");
    // Restart r1 on its port; how long until it answers through the proxy again?
    let restarted = Instant::now();
    replicas[1] = Some(replica(ports[1], "r1").await);
    let mut back_after = None;
    for _ in 0..3000 {
        if restarted.elapsed() > Duration::from_secs(30) {
            break;
        }
        if let Ok(r) = sluice_testkit::client::get(&url).await {
            if r.text().contains("hostname r1") {
                back_after = Some(restarted.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failures = failures.lock().unwrap().clone();
    RunResult { sent: sent.load(Ordering::Relaxed), failed: failed.load(Ordering::Relaxed), failures, back_after }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_load_fails_no_request() {
    let ours = run("sluice", &sluice(), false).await;
    let theirs = match std::env::var_os("SLUICE_ENVOY") {
        Some(e) => Some(run("envoy", &PathBuf::from(e), true).await),
        None => {
            println!("real Envoy not run: SLUICE_ENVOY is not set");
            None
        }
    };
    let show = |d: Option<Duration>| d.map_or("not within 30 s".to_string(), |d| format!("{} ms", d.as_millis()));
    println!("replica kill: sluice {} failed of {} sent; killed replica back in traffic after {}", ours.failed, ours.sent, show(ours.back_after));
    if let Some(t) = &theirs {
        println!("replica kill: envoy  {} failed of {} sent; killed replica back in traffic after {}", t.failed, t.sent, show(t.back_after));
        if !t.failures.is_empty() {
            println!("envoy failures (first 5): {:?}", &t.failures[..t.failures.len().min(5)]);
        }
    }
    assert!(ours.sent >= 1000, "the load ran ({} sent)", ours.sent);
    assert_eq!(ours.failed, 0, "sluice failed requests: {:?}", &ours.failures[..ours.failures.len().min(10)]);
    assert!(ours.back_after.is_some(), "the restarted replica never got traffic again");
}
