//! The guide's walkthrough, end to end, against `sluice up` with the built-in topology:
//! front proxy (HTTP + HTTPS), ext_authz policy server, two sidecars, two services.
//!
//! Needs `sluice proxy` and `sluice authz` to work; HTTPS steps use the `curl` binary.
//! Set `SLUICE_PROXY_EXE` to run the proxies with real Envoy instead of `sluice proxy`.

use sluice_testkit::env::free_port;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");


struct Response {
    status: u16,
    headers: String,
    body: String,
}

fn http(addr: SocketAddr, method: &str, path: &str, json: Option<&str>) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = json.unwrap_or("");
    let ct = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("full answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Response {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

struct Up {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Up {
    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
    fn wait_for(&self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no {needle:?} within {secs}s:\n{}", self.output());
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scale(state: &Path, spec: &str) {
    let out = Command::new(SLUICE)
        .args(["scale", spec, "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn guide_walkthrough() {
    let pid = std::process::id();
    let state = std::env::temp_dir().join(format!("sluice-walkthrough-{pid}"));
    let _ = std::fs::remove_dir_all(&state);
    let (p_http, p_https, p_admin) = (free_port(), free_port(), free_port());
    let subnet = format!("127.{}.{}.0", 150 + pid % 50, 200 + pid / 50 % 50);

    // 1. Bring the mesh up.
    let mut child = Command::new(SLUICE)
        .args([
            "up",
            "--no-color",
            "--subnet",
            &subnet,
            "--dns-refresh-rate",
            "1s",
            "--state-dir",
        ])
        .arg(&state)
        .env("PORT_PROXY", p_http.to_string())
        .env("PORT_HTTPS", p_https.to_string())
        .env("PORT_STATS", p_admin.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    for s in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(s).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        });
    }
    let up = Up { child, lines };
    up.wait_for("is up", 90);
    let front: SocketAddr = format!("127.0.0.1:{p_http}").parse().unwrap();
    let https = format!("https://localhost:{p_https}");

    // Admin.
    let r = http(
        format!("127.0.0.1:{p_admin}").parse().unwrap(),
        "GET",
        "/ready",
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.body.contains("LIVE"), "{}", r.body); // may be chunked

    // 2. GET over HTTP and HTTPS, both services.
    for n in ["1", "2"] {
        let r = http(front, "GET", &format!("/service/{n}"), None);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.headers.contains("server: envoy"), "{}", r.headers);
        assert!(
            r.headers.contains("x-envoy-upstream-service-time"),
            "{}",
            r.headers
        );
        let lines: Vec<&str> = r.body.lines().collect();
        assert_eq!(lines.len(), 3, "{}", r.body);
        assert_eq!(
            lines[0],
            format!("Hello Anonymous OPA from behind Envoy {n}!")
        );
        assert_eq!(lines[1], format!("hostname service{n}-1"));
        assert!(lines[2].starts_with(&format!(
            "resolved 127.{}",
            subnet.split('.').nth(1).unwrap()
        )));
        assert!(r.body.ends_with('\n'));

        let (body, verbose) = curl(&["-k", "-v", &format!("{https}/service/{n}")]);
        assert!(
            body.starts_with(&format!("Hello Anonymous OPA from behind Envoy {n}!\n")),
            "{body}\n{verbose}"
        );
        assert!(verbose.contains("TLSv1.3"), "{verbose}");
        assert!(verbose.contains("CN=front-envoy"), "{verbose}");
    }

    // 3. Scale service1 to 3: the sidecar re-resolves and sees 3 addresses.
    scale(&state, "service1=3");
    // Within one DNS refresh (1 s here) plus start-up margin, three replicas answer.
    let deadline = Instant::now() + Duration::from_millis(1000 + 3000);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 && Instant::now() < deadline {
        let r = http(front, "GET", "/service/1", None);
        assert_eq!(r.status, 200, "{}", r.body);
        seen.insert(r.body.lines().nth(2).unwrap_or_default().to_string());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen.len(), 3, "distinct `resolved` lines after scaling: {seen:?}");

    // 4. Count: 200 sequential GETs → 67/67/66.
    let out = Command::new(SLUICE)
        .args([
            "lb-count",
            &format!("http://localhost:{p_http}/service/1"),
            "-n",
            "200",
            "--no-progress",
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let counts: Vec<u64> = table
        .lines()
        .filter(|l| l.trim_start().starts_with("127."))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    let mut sorted = counts.clone();
    sorted.sort();
    assert_eq!(sorted, vec![66, 67, 67], "{table}");

    // 5. Authorization: POST over HTTP → 403 empty; over HTTPS → 200.
    let r = http(front, "POST", "/service/1", Some(r#"{"nickname": "bob"}"#));
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "");
    let (body, _) = curl(&[
        "-k",
        &format!("{https}/service/1"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"nickname": "bob"}"#,
    ]);
    assert_eq!(body, "Hello, bob-1!");
    up.wait_for("decision_id", 5);
    // The front proxy's access log (Envoy's default format, flushed every 10 s as Envoy does).
    up.wait_for("\"POST /service/1 HTTP/1.1\" 403 UAEX", 15);
    up.wait_for("\"GET /service/2 HTTP/1.1\" 200 - 0", 15);
    let log = up.output();
    assert!(
        log.contains("x-forwarded-proto"),
        "decision log has the input"
    );
    assert!(
        log.contains("CN=front-envoy"),
        "decision log has the destination principal"
    );

    // 6. Only the replica that took the POST knows bob.
    let mut bob = 0;
    let mut anon = 0;
    for _ in 0..30 {
        let r = http(front, "GET", "/service/1", None);
        assert_eq!(r.status, 200);
        if r.body.starts_with("Hello bob-1 OPA from behind Envoy 1!") {
            bob += 1;
        } else if r
            .body
            .starts_with("Hello Anonymous OPA from behind Envoy 1!")
        {
            anon += 1;
        }
    }
    assert_eq!(bob + anon, 30);
    assert!(bob >= 1 && anon >= 1, "bob {bob}, anonymous {anon}");

    // 7. Scale back to 1 while a client keeps sending: no request fails.
    let before = ps(&state);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut sent, mut failed) = (0u32, Vec::new());
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && sent < 5000
                && started.elapsed() < Duration::from_secs(40)
            {
                sent += 1;
                match std::panic::catch_unwind(|| http(front, "GET", "/service/1", None)) {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failed.push(format!("{} {}", r.status, r.body)),
                    Err(_) => failed.push("connection error".to_string()),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (sent, failed)
        })
    };
    scale(&state, "service1=1");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = ps(&state);
        let live: Vec<&str> = now
            .replicas
            .iter()
            .filter(|r| r.component == "service1" && !r.state.starts_with("exited"))
            .map(|r| r.state.as_str())
            .collect();
        if live.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "service1 did not scale down to 1: {:?}", now.replicas);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500)); // one more DNS refresh of traffic
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = client.join().unwrap();
    assert!(sent > 20, "the client sent only {sent} requests");
    assert!(failed.is_empty(), "{} of {sent} requests failed while scaling down: {failed:?}", failed.len());
    let mut after = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = http(front, "GET", "/service/1", None);
        after.insert(r.body.lines().nth(2).unwrap_or_default().to_string());
    }
    assert_eq!(after.len(), 1, "one replica left: {after:?}");

    // Down.
    let out = Command::new(SLUICE)
        .args(["down", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shutdown leaves no process behind: neither `up` nor any replica it ever started.
    let up_pid = up.child.id();
    drop(up);
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in before.replicas.iter().map(|r| r.pid).chain([up_pid]) {
        while alive(pid) {
            assert!(Instant::now() < deadline, "process {pid} survived `sluice down`");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_dir_all(&state);
}

/// The running mesh as `sluice ps --json` reports it.
fn ps(state: &Path) -> sluice_mesh::up::PsReport {
    let out = Command::new(SLUICE).args(["ps", "--json", "--state-dir"]).arg(state).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    sluice_mesh::up::PsReport::parse(&out.stdout).expect("ps --json")
}

/// A pid that exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}
