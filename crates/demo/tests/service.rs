//! The demo service over real loopback sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sluice_demo::{Config, Service};

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn start(name: &str) -> Running {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let svc = Service::new(Config::new(
        name,
        format!("service{name}-1"),
        "127.0.10.1".parse().unwrap(),
    ));
    rt.spawn(svc.serve(listener, async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        rt: Some(rt),
    }
}

/// One request on a fresh connection (`Connection: close`); returns (status line, headers, body).
fn request(addr: SocketAddr, raw: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("full response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (
        status.to_string(),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

fn get(addr: SocketAddr, path: &str, extra: &str) -> (String, String, String) {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn post(addr: SocketAddr, path: &str, body: &str) -> (String, String, String) {
    request(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn get_three_lines() {
    let s = start("1");
    let (status, headers, body) = get(s.addr, "/service/1", "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/plain; charset=utf-8"),
        "{headers}"
    );
    assert_eq!(
        body,
        "Hello Anonymous None from behind Envoy 1!\nhostname service1-1\nresolved 127.0.10.1\n"
    );
}

#[test]
fn current_user_header() {
    let s = start("1");
    let (_, _, body) = get(s.addr, "/service/1", "x-current-user: OPA\r\n");
    assert!(
        body.starts_with("Hello Anonymous OPA from behind Envoy 1!\n"),
        "{body}"
    );
}

#[test]
fn wrong_service_is_404() {
    let s = start("2");
    let (status, _, _) = get(s.addr, "/service/1", "");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, body) = get(s.addr, "/service/2", "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.starts_with("Hello Anonymous None from behind Envoy 2!\n"));
}

#[test]
fn post_nickname_then_get() {
    let s = start("1");
    let (status, headers, body) = post(s.addr, "/service/1", r#"{"nickname": "bob"}"#);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: text/plain; charset=utf-8"));
    assert_eq!(body, "Hello, bob-1!");
    let (_, _, body) = get(s.addr, "/service/1", "x-current-user: OPA\r\n");
    assert_eq!(
        body,
        "Hello bob-1 OPA from behind Envoy 1!\nhostname service1-1\nresolved 127.0.10.1\n"
    );
}

#[test]
fn bad_posts_are_400() {
    let s = start("1");
    for bad in ["not json", "{}", r#"{"nick": "x"}"#, r#"{"nickname": 3}"#] {
        let (status, _, body) = post(s.addr, "/service/1", bad);
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{bad}");
        assert!(!body.is_empty());
    }
    // Nothing was stored.
    let (_, _, body) = get(s.addr, "/service/1", "");
    assert!(body.starts_with("Hello Anonymous"));
}

#[test]
fn keep_alive_two_requests_one_connection() {
    let s = start("1");
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut total = String::new();
    for _ in 0..2 {
        c.write_all(b"GET /service/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        // Read until the body's last line arrives (bounded by the read timeout).
        let mut buf = [0u8; 4096];
        let before = total.matches("resolved 127.0.10.1\n").count();
        for _ in 0..50 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "server closed a keep-alive connection");
            total.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            if total.matches("resolved 127.0.10.1\n").count() > before {
                break;
            }
        }
    }
    assert_eq!(total.matches("HTTP/1.1 200 OK").count(), 2);
}
