//! Interop of the guide's front proxy and policy server, as child processes:
//!
//! (a) real Envoy 1.40 (`SLUICE_ENVOY`, else `<repo>/.venv/bin/envoy`, installed by `scripts/test`)
//!     with ext_authz gRPC to `sluice authz` (OPA's command line, the guide's `policy.rego`);
//! (b) `sluice proxy` with the same config and the same `sluice authz`.
//!
//! Both run the guide's flows against an echo upstream (instead of the sidecar chain):
//! GET over HTTP → 200 and the upstream sees `x-current-user: OPA`; POST over HTTP → 403 with an
//! empty body; POST over HTTPS → 200. The decision log on `sluice authz`'s stdout must show the
//! input Envoy sends (`:scheme`, `x-forwarded-proto`, `x-request-id`, `destination.principal`).

use sluice_testkit::env::{envoy_path, free_port, repo_root};
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_testkit::certs::ServerIdentity;
use sluice_testkit::{EchoUpstream, KeyKind, Pki};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");




/// A child process killed (by PID) when dropped; its stdout/stderr are collected.
struct ChildGuard {
    name: &'static str,
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl ChildGuard {
    fn spawn(name: &'static str, cmd: &mut Command) -> ChildGuard {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let collect = |r: Box<dyn Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(r);
                let mut chunk = [0u8; 8192];
                loop {
                    match r.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => b
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&chunk[..n])),
                    }
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        ChildGuard {
            name,
            child,
            stdout,
            stderr,
        }
    }
    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
    fn describe(&self) -> String {
        let tail = |s: String| {
            s.chars()
                .rev()
                .take(3000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        };
        format!(
            "--- {} stdout (tail) ---\n{}\n--- {} stderr (tail) ---\n{}",
            self.name,
            tail(self.stdout()),
            self.name,
            tail(self.stderr())
        )
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until `addr` accepts TCP connections (bounded); the child must stay alive.
async fn wait_listening(addr: SocketAddr, child: &mut ChildGuard, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.exited() {
            panic!(
                "{} exited early ({status})\n{}",
                child.name,
                child.describe()
            );
        }
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} did not listen on {addr} within {limit:?}\n{}",
                child.name,
                child.describe()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client (one request per connection, `connection: close`).

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    method: &str,
    host: &str,
    path: &str,
    body: &str,
) -> Resp {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: interop/1\r\naccept: */*\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("response timed out");
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..text_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[text_end + 4..].to_vec();
    if let Some((_, len)) = headers.iter().find(|(k, _)| k == "content-length") {
        body.truncate(len.parse().unwrap());
    }
    Resp {
        status,
        headers,
        body,
    }
}

async fn plain(addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    exchange(
        tcp,
        method,
        &format!("127.0.0.1:{}", addr.port()),
        path,
        body,
    )
    .await
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// HTTPS like `curl -k` (the certificate has no SAN, so it cannot be verified by name).
async fn tls(addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("front-envoy".to_string()).unwrap();
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .unwrap()
    .expect("TLS handshake");
    exchange(s, method, &format!("127.0.0.1:{}", addr.port()), path, body).await
}

// ---------------------------------------------------------------------------------------------
// The setup.

fn indent(pem: &str, n: usize) -> String {
    pem.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect()
}

/// The guide's front config on 127.0.0.1 ports, an echo upstream for /service/1.
fn front_config(
    http: u16,
    https: u16,
    admin: u16,
    authz: u16,
    upstream: SocketAddr,
    pki: &Pki,
) -> String {
    let hcm = |prefix: &str| {
        format!(
            r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          codec_type: AUTO
          route_config:
            name: front_routes
            virtual_hosts:
            - name: services
              domains: ["*"]
              routes:
              - match: {{prefix: "/service/1"}}
                route: {{cluster: service1-envoy}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service:
                envoy_grpc: {{cluster_name: ext_authz-opa-service}}
                timeout: 0.250s
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
        )
    };
    format!(
        r#"static_resources:
  listeners:
  - name: http
    address:
      socket_address: {{address: 127.0.0.1, port_value: {http}}}
    filter_chains:
    - filters:
{hcm_http}  - name: https
    address:
      socket_address: {{address: 127.0.0.1, port_value: {https}}}
    filter_chains:
    - filters:
{hcm_https}      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain:
                inline_string: |
{cert}              private_key:
                inline_string: |
{key}  clusters:
  - name: service1-envoy
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: service1-envoy
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: {up_ip}, port_value: {up_port}}}
  - name: ext_authz-opa-service
    type: STATIC
    lb_policy: ROUND_ROBIN
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: ext_authz-opa-service
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {authz}}}
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin}}}
"#,
        hcm_http = hcm("ingress_http"),
        hcm_https = hcm("ingress_https"),
        cert = indent(&pki.server_cert, 18),
        key = indent(&pki.server_key, 18),
        up_ip = upstream.ip(),
        up_port = upstream.port(),
    )
}

#[derive(Clone, Copy, Debug)]
enum Proxy {
    Envoy,
    Sluice,
}

fn start_authz(grpc: u16) -> ChildGuard {
    let policy = repo_root().join("examples/guide/policy.rego");
    assert!(policy.exists(), "{} missing", policy.display());
    ChildGuard::spawn(
        "sluice authz",
        Command::new(SLUICE)
            .arg("authz")
            .arg("run")
            .arg("--server")
            .arg("--log-format=json-pretty")
            .arg(format!(
                "--set=plugins.envoy_ext_authz_grpc.addr=127.0.0.1:{grpc}"
            ))
            .arg("--set=decision_logs.console=true")
            .arg(format!("--addr=127.0.0.1:{}", free_port()))
            .arg(policy),
    )
}

fn start_proxy(kind: Proxy, config: &Path) -> ChildGuard {
    match kind {
        Proxy::Envoy => ChildGuard::spawn(
            "envoy",
            Command::new(envoy_path()).arg("-c").arg(config).args([
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "--log-level",
                "warning",
            ]),
        ),
        Proxy::Sluice => ChildGuard::spawn(
            "sluice proxy",
            Command::new(SLUICE)
                .arg("proxy")
                .arg("-c")
                .arg(config)
                .args(["--concurrency", "1", "--log-level", "warning"]),
        ),
    }
}

/// The JSON documents on the authz server's stdout (json-pretty: one object after another).
fn decision_logs(stdout: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut it = serde_json::Deserializer::from_str(stdout).into_iter::<Value>();
    while let Some(Ok(v)) = it.next() {
        if v.get("input").is_some() {
            out.push(v);
        }
    }
    out
}

async fn guide_flows(kind: Proxy) {
    let pki = Pki::generate(
        KeyKind::Ecdsa,
        &ServerIdentity {
            common_name: Some("front-envoy".into()),
            sans: vec![],
        },
    );
    let echo = EchoUpstream::start_labeled("127.0.0.1:0".parse().unwrap(), "service1")
        .await
        .unwrap();
    let (http, https, admin, grpc) = (free_port(), free_port(), free_port(), free_port());
    let dir = std::env::temp_dir().join(format!(
        "sluice-interop-authz-{}-{kind:?}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("front-envoy.yaml");
    std::fs::write(
        &config,
        front_config(http, https, admin, grpc, echo.addr(), &pki),
    )
    .unwrap();

    let mut authz = start_authz(grpc);
    wait_listening(
        SocketAddr::from(([127, 0, 0, 1], grpc)),
        &mut authz,
        Duration::from_secs(20),
    )
    .await;
    let mut proxy = start_proxy(kind, &config);
    let http_addr = SocketAddr::from(([127, 0, 0, 1], http));
    let https_addr = SocketAddr::from(([127, 0, 0, 1], https));
    wait_listening(http_addr, &mut proxy, Duration::from_secs(30)).await;
    wait_listening(https_addr, &mut proxy, Duration::from_secs(10)).await;
    let ctx = |what: &str| {
        format!(
            "{kind:?}: {what}\n{}\n{}",
            proxy.describe(),
            authz.describe()
        )
    };

    // GET over HTTP: allowed, with x-current-user: OPA upstream.
    let r = plain(http_addr, "GET", "/service/1", "").await;
    assert_eq!(r.status, 200, "{}", ctx(&format!("GET http: {r:?}")));
    let up = echo.recorded().pop().expect("upstream got nothing");
    assert!(
        up.headers
            .iter()
            .any(|(k, v)| k == "x-current-user" && v == "OPA"),
        "{kind:?}: upstream headers {:?}",
        up.headers
    );
    // POST over HTTP: denied, empty 403.
    let n = echo.requests();
    let r = plain(http_addr, "POST", "/service/1", "nick=x").await;
    assert_eq!(r.status, 403, "{}", ctx(&format!("POST http: {r:?}")));
    assert!(r.body.is_empty(), "{kind:?}: {r:?}");
    // (`connection: close` answers the client's own `connection: close`.)
    let names: Vec<&str> = r
        .headers
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| *k != "connection")
        .collect();
    assert_eq!(
        names,
        ["date", "server", "content-length"],
        "{kind:?}: {r:?}"
    );
    assert_eq!(
        echo.requests(),
        n,
        "{kind:?}: a denied request reached the upstream"
    );
    // POST over HTTPS: allowed.
    let r = tls(https_addr, "POST", "/service/1", "nick=x").await;
    assert_eq!(r.status, 200, "{}", ctx(&format!("POST https: {r:?}")));

    // The decision log shows what the proxy sent.
    let deadline = Instant::now() + Duration::from_secs(5);
    let logs = loop {
        let logs = decision_logs(&authz.stdout());
        if logs.len() >= 3 || Instant::now() >= deadline {
            break logs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        logs.len() >= 3,
        "{}",
        ctx(&format!("{} decision logs", logs.len()))
    );
    let https_post = logs
        .iter()
        .find(|l| l["input"]["attributes"]["request"]["http"]["headers"][":scheme"] == "https")
        .unwrap_or_else(|| panic!("{}", ctx("no decision with :scheme https")));
    let input = &https_post["input"]["attributes"];
    let hd = &input["request"]["http"]["headers"];
    assert_eq!(hd["x-forwarded-proto"], "https", "{input:#}");
    assert_eq!(hd[":method"], "POST", "{input:#}");
    assert_eq!(
        hd["x-request-id"].as_str().map(str::len),
        Some(36),
        "{input:#}"
    );
    assert_eq!(
        input["destination"]["principal"], "CN=front-envoy",
        "{input:#}"
    );
    assert!(
        input["request"]["http"]["id"]
            .as_str()
            .is_some_and(|id| id.parse::<u64>().is_ok()),
        "{input:#}"
    );
    assert_eq!(https_post["result"]["allowed"], true, "{https_post:#}");
    let http_post = logs
        .iter()
        .find(|l| {
            l["input"]["attributes"]["request"]["http"]["method"] == "POST"
                && l["input"]["attributes"]["request"]["http"]["headers"][":scheme"] == "http"
        })
        .unwrap_or_else(|| panic!("{}", ctx("no decision for the http POST")));
    assert_eq!(
        http_post["input"]["attributes"]["request"]["http"]["headers"]["x-forwarded-proto"],
        "http"
    );
    assert_eq!(http_post["result"], false, "{http_post:#}");
    drop(proxy);
    drop(authz);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_flows_real_envoy_with_sluice_authz() {
    let _ = envoy_path();
    tokio::time::timeout(Duration::from_secs(90), guide_flows(Proxy::Envoy))
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_flows_sluice_proxy_with_sluice_authz() {
    tokio::time::timeout(Duration::from_secs(90), guide_flows(Proxy::Sluice))
        .await
        .expect("test timed out");
}
