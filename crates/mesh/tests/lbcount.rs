//! lb-count against a loopback server that rotates its `resolved` line like a round-robin mesh.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sluice_mesh::lbcount::{count, LbCountArgs, Options};

/// Answers `resolved 127.0.10.{1,2,3}` in turn; every 10th request gets a 503. Counts connections.
async fn rotating_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let n = Arc::new(AtomicUsize::new(0));
    let c2 = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            c2.fetch_add(1, Ordering::SeqCst);
            let n = n.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: Request<hyper::body::Incoming>| {
                        let i = n.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let mut r = Response::new(Full::new(Bytes::from(format!(
                            "Hello Anonymous OPA from behind Envoy 1!\nhostname h\nresolved 127.0.10.{}\n",
                            i % 3 + 1
                        ))));
                            r.headers_mut()
                                .insert("x-replica", (i % 2).to_string().parse().unwrap());
                            if i % 10 == 9 {
                                *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, conns)
}

fn args(url: String, n: u64, c: u64, key: &str) -> LbCountArgs {
    LbCountArgs {
        url,
        requests: n,
        concurrency: c,
        key: key.into(),
        method: "GET".into(),
        headers: vec![],
        data: None,
        timeout: 5.0,
        no_progress: true,
    }
}

#[tokio::test]
async fn tallies_resolved_lines_over_one_keepalive_connection() {
    let (addr, conns) = rotating_server().await;
    let opts =
        Options::from_args(&args(format!("http://{addr}/service/1"), 30, 1, "resolved")).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let d2 = done.clone();
    let t = count(&opts, move || {
        d2.fetch_add(1, Ordering::SeqCst);
    })
    .await
    .unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 30);
    assert_eq!(t.total(), 30);
    assert_eq!(t.ok(), 27);
    assert_eq!(t.statuses.get(&503), Some(&3));
    assert_eq!(t.keys.len(), 3);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "keep-alive: one connection"
    );
    let report = t.render(&opts);
    assert!(report.contains("127.0.10.1"), "{report}");
    assert!(report.contains("503 Service Unavailable"), "{report}");
    assert!(report.contains("27 of 30 answered 2xx"), "{report}");
    assert!(report.contains('█'));
}

#[tokio::test]
async fn concurrency_and_header_key() {
    let (addr, conns) = rotating_server().await;
    let opts =
        Options::from_args(&args(format!("http://{addr}/x"), 40, 4, "header:x-replica")).unwrap();
    let t = count(&opts, || {}).await.unwrap();
    assert_eq!(t.total(), 40);
    assert_eq!(
        t.keys.keys().cloned().collect::<Vec<_>>(),
        vec!["0".to_string(), "1".to_string()]
    );
    assert_eq!(conns.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn connection_refused_is_counted_not_fatal() {
    // A port with nothing listening: bind then drop.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let opts = Options::from_args(&args(format!("http://{addr}/x"), 3, 1, "resolved")).unwrap();
    let t = tokio::time::timeout(Duration::from_secs(20), count(&opts, || {}))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.errors.get("connection refused"), Some(&3));
    assert!(t.render(&opts).contains("errors"));
}
