//! The guide's demo web service (`sluice service`).
//!
//! - `GET /{kind}/{n}` → 200 `text/plain; charset=utf-8`, three lines:
//!   `Hello {nickname} {x-current-user or None} from behind Envoy {n}!`, `hostname {host}`,
//!   `resolved {ip}`; 404 when `n` is not this service's name.
//! - `POST /{kind}/{n}` with `{"nickname": "bob"}` → stores `bob-{n}` for `{kind}` (per process) and
//!   answers 200 `Hello, bob-{n}!`; bad JSON or a missing/non-string field → 400.
//!
//! The resolved address is computed once at start: `--resolved` if given; else with `--hostname`
//! the `--listen` IP (when it is a specific address); else the host name is resolved with hickory
//! (hosts file, then DNS), falling back to the listen IP or 127.0.0.1. The libc resolver is not used.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Arguments of `sluice service`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The service's name (`1`, `2`, …): the `{n}` it answers for.
    #[arg(long, env = "SERVICE_NAME")]
    pub name: String,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Host name to report (default: this machine's host name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Address to report on the `resolved` line (default: see the crate docs).
    #[arg(long)]
    pub resolved: Option<IpAddr>,
    /// Do not print an access log line per request.
    #[arg(long)]
    pub quiet: bool,
}

/// What the service reports about itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// The service's name (`{n}` in the paths it answers).
    pub name: String,
    /// The `hostname` line.
    pub hostname: String,
    /// The `resolved` line.
    pub resolved: IpAddr,
    /// Print one access-log line per request on stdout.
    pub access_log: bool,
}

impl Config {
    /// A config for tests: no access log.
    pub fn new(name: impl Into<String>, hostname: impl Into<String>, resolved: IpAddr) -> Config {
        Config {
            name: name.into(),
            hostname: hostname.into(),
            resolved,
            access_log: false,
        }
    }
}

/// The service's state: its config and the nicknames stored per `{kind}`.
#[derive(Debug)]
pub struct Service {
    config: Config,
    nicknames: Mutex<HashMap<String, String>>,
}

const TEXT: &str = "text/plain; charset=utf-8";
const MAX_BODY: usize = 64 * 1024;

impl Service {
    /// A fresh service (every nickname `Anonymous`).
    pub fn new(config: Config) -> Arc<Service> {
        Arc::new(Service {
            config,
            nicknames: Mutex::new(HashMap::new()),
        })
    }

    /// The config the service reports.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Answers one request whose body was already read.
    pub fn respond(
        &self,
        method: &Method,
        path: &str,
        current_user: Option<&str>,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let path = path.split('?').next().unwrap_or("");
        let segs: Vec<&str> = path.strip_prefix('/').unwrap_or("").split('/').collect();
        let (kind, n) = match segs.as_slice() {
            [kind, n] if !kind.is_empty() && !n.is_empty() => (*kind, *n),
            _ => return text(StatusCode::NOT_FOUND, "404: Not Found".into()),
        };
        if *method != Method::GET && *method != Method::POST && *method != Method::HEAD {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "405: Method Not Allowed".into(),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD,POST"));
            return r;
        }
        if n != self.config.name {
            return text(StatusCode::NOT_FOUND, "404: Not Found".into());
        }
        if *method == Method::POST {
            let nickname = match parse_nickname(body) {
                Ok(nick) => format!("{nick}-{n}"),
                Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
            };
            self.nicknames
                .lock()
                .unwrap()
                .insert(kind.to_string(), nickname.clone());
            return text(StatusCode::OK, format!("Hello, {nickname}!"));
        }
        let nickname = self
            .nicknames
            .lock()
            .unwrap()
            .get(kind)
            .cloned()
            .unwrap_or_else(|| "Anonymous".to_string());
        let user = current_user.unwrap_or("None");
        let body = format!(
            "Hello {nickname} {user} from behind Envoy {n}!\nhostname {}\nresolved {}\n",
            self.config.hostname, self.config.resolved
        );
        text(StatusCode::OK, body)
    }

    /// Serves HTTP/1.1 (and h2c) on `listener` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
                    };
                    let _ = stream.set_nodelay(true);
                    let svc = self.clone();
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let svc = svc.clone();
                            async move { Ok::<_, Infallible>(svc.handle(req, peer).await) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        // Give in-flight connections a moment, then drop them.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        Ok(())
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let version = req.version();
        let user = req
            .headers()
            .get("x-current-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "413: Request Entity Too Large".into(),
                )
            }
        };
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut resp = self.respond(&method, path, user.as_deref(), &body);
        if method == Method::HEAD {
            *resp.body_mut() = Full::new(Bytes::new());
        }
        if self.config.access_log {
            println!(
                "{} \"{} {} {:?}\" {}",
                peer.ip(),
                method,
                path,
                version,
                resp.status().as_u16()
            );
        }
        resp
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT));
    r
}

fn parse_nickname(body: &[u8]) -> Result<String, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("400: Bad Request: invalid JSON: {e}"))?;
    match v.get("nickname") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err("400: Bad Request: \"nickname\" must be a string".into()),
        None => Err("400: Bad Request: missing \"nickname\"".into()),
    }
}

/// This machine's host name, without libc: `/proc/sys/kernel/hostname`, `$HOSTNAME`,
/// `/etc/hostname`, else `localhost`.
pub fn machine_hostname() -> String {
    let candidates = [
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
        std::env::var("HOSTNAME").ok(),
        std::fs::read_to_string("/etc/hostname").ok(),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(|s| s.trim().to_string())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Resolves `host` with hickory (hosts file, then the system's DNS servers), within 2 s.
pub async fn resolve_hostname(host: &str) -> Option<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip);
    }
    let resolver = hickory_resolver::TokioResolver::builder_tokio()
        .ok()?
        .build()
        .ok()?;
    let lookup = tokio::time::timeout(Duration::from_secs(2), resolver.lookup_ip(host))
        .await
        .ok()?
        .ok()?;
    let ips: Vec<IpAddr> = lookup.iter().collect();
    ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied()
}

/// Works out the config from the command line (see the crate docs for the resolved address).
pub async fn config_from_args(args: &Args) -> Config {
    let listen_ip = Some(args.listen.ip()).filter(|ip| !ip.is_unspecified());
    let hostname = args.hostname.clone().unwrap_or_else(machine_hostname);
    let resolved = match (args.resolved, &args.hostname, listen_ip) {
        (Some(ip), _, _) => ip,
        (None, Some(_), Some(ip)) => ip,
        _ => match resolve_hostname(&hostname).await {
            Some(ip) => ip,
            None => listen_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        },
    };
    Config {
        name: args.name.clone(),
        hostname,
        resolved,
        access_log: !args.quiet,
    }
}

/// `sluice service`: runs until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
        let config = config_from_args(&args).await;
        println!(
            "service {} listening on http://{} (hostname {}, resolved {})",
            config.name,
            listener.local_addr()?,
            config.hostname,
            config.resolved
        );
        Service::new(config)
            .serve(listener, shutdown_signal())
            .await?;
        println!("service stopped");
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Arc<Service> {
        Service::new(Config::new(
            "1",
            "service1-1",
            "127.0.10.1".parse().unwrap(),
        ))
    }

    fn body(r: &Response<Full<Bytes>>) -> String {
        // Full<Bytes> of a known value: rebuild via futures-free path.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = r.body().clone();
        rt.block_on(async {
            String::from_utf8(b.collect().await.unwrap().to_bytes().to_vec()).unwrap()
        })
    }

    #[test]
    fn get_default() {
        let r = svc().respond(&Method::GET, "/service/1", None, b"");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], TEXT);
        assert_eq!(
            body(&r),
            "Hello Anonymous None from behind Envoy 1!\nhostname service1-1\nresolved 127.0.10.1\n"
        );
    }

    #[test]
    fn post_then_get() {
        let s = svc();
        let r = s.respond(&Method::POST, "/service/1", None, br#"{"nickname": "bob"}"#);
        assert_eq!(
            (r.status().as_u16(), body(&r)),
            (200, "Hello, bob-1!".to_string())
        );
        let r = s.respond(&Method::GET, "/service/1", Some("OPA"), b"");
        assert!(body(&r).starts_with("Hello bob-1 OPA from behind Envoy 1!\n"));
        // Per kind.
        let r = s.respond(&Method::GET, "/other/1", None, b"");
        assert!(body(&r).starts_with("Hello Anonymous None"));
    }

    #[test]
    fn errors() {
        let s = svc();
        assert_eq!(
            s.respond(&Method::GET, "/service/2", None, b"").status(),
            404
        );
        assert_eq!(s.respond(&Method::GET, "/", None, b"").status(), 404);
        assert_eq!(s.respond(&Method::GET, "/a/b/c", None, b"").status(), 404);
        assert_eq!(
            s.respond(&Method::POST, "/service/1", None, b"{").status(),
            400
        );
        assert_eq!(
            s.respond(&Method::POST, "/service/1", None, b"{}").status(),
            400
        );
        assert_eq!(
            s.respond(&Method::POST, "/service/1", None, br#"{"nickname":1}"#)
                .status(),
            400
        );
        assert_eq!(
            s.respond(&Method::DELETE, "/service/1", None, b"").status(),
            405
        );
    }
}
