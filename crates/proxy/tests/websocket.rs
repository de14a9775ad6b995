//! WebSocket through the proxy with a real client and a real server (tokio-tungstenite): echo both
//! ways, a close from each side, over plain TCP, over TLS, and over HTTP/2 extended CONNECT (RFC
//! 8441) converted to an HTTP/1.1 upgrade upstream. Plus the regression for the removed
//! output-rewriting wrapper: an upstream body that looks exactly like hyper's automatic 400 reaches
//! the client untouched.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sluice_proxy::server::RunningServer;
use sluice_testkit::Pki;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const T: Duration = Duration::from_secs(10);

/// A WebSocket echo server: echoes text and binary; `close-please` makes it close with 4000.
async fn ws_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else { return };
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) if t.as_str() == "close-please" => {
                            let _ = ws.close(Some(CloseFrame { code: 4000.into(), reason: "bye".into() })).await;
                        }
                        Message::Text(_) | Message::Binary(_) => {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                        }
                        Message::Close(_) => {}
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

fn hcm(extra: Value) -> Value {
    let mut h = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ws",
        "codec_type": "AUTO",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "route_config": {"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "ws"}}
        ]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    });
    for (k, v) in extra.as_object().unwrap() {
        h[k] = v.clone();
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": h})
}

/// Listener 0: plaintext (HTTP/1 and h2c with extended CONNECT); listener 1: TLS (ALPN h2 and
/// http/1.1, extended CONNECT allowed).
async fn proxy(upstream: SocketAddr, pki: &Pki) -> RunningServer {
    let h2 = json!({"http2_protocol_options": {"allow_connect": true}});
    let tls = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"inline_string": pki.server_cert}, "private_key": {"inline_string": pki.server_key}}],
            "alpn_protocols": ["h2", "http/1.1"]
        }
    }});
    let cfg = json!({"static_resources": {
        "listeners": [
            {"name": "plain", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
             "filter_chains": [{"filters": [hcm(h2.clone())]}]},
            {"name": "tls", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
             "filter_chains": [{"filters": [hcm(h2)], "transport_socket": tls}]}
        ],
        "clusters": [{"name": "ws", "connect_timeout": "1s", "load_assignment": {"cluster_name": "ws", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": upstream.ip().to_string(), "port_value": upstream.port()}}}}
        ]}]}}]
    }});
    common::start_proxy(&cfg, "ws.json").await
}

/// Echo a text and a binary message, then close from the client (or ask the server to close).
async fn exercise<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>, client_closes: bool) {
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap(), Message::text("hello"));
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap(), Message::binary(big));
    if client_closes {
        ws.close(None).await.unwrap();
        // The server's close frame comes back, then the stream ends.
        let mut saw_close = false;
        while let Some(m) = tokio::time::timeout(T, ws.next()).await.expect("ends") {
            match m {
                Ok(Message::Close(_)) => saw_close = true,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => break,
            }
        }
        assert!(saw_close, "the server answered the close");
    } else {
        ws.send(Message::text("close-please")).await.unwrap();
        match tokio::time::timeout(T, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), 4000);
                assert_eq!(f.reason.as_str(), "bye");
            }
            other => panic!("expected the server's close, got {other:?}"),
        }
        // Our close reply completes the handshake; the stream then ends.
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = tokio::time::timeout(T, ws.next()).await.expect("ends") {}
    }
}

#[tokio::test]
async fn websocket_over_http1_both_ways_and_either_side_closes() {
    let up = ws_server().await;
    let pki = Pki::new();
    let server = proxy(up, &pki).await;
    let addr = server.listeners[0].address;
    for client_closes in [true, false] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (ws, resp) = tokio::time::timeout(T, tokio_tungstenite::client_async(format!("ws://{addr}/chat"), tcp)).await.unwrap().unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()["server"], "envoy");
        assert!(resp.headers().get("x-envoy-upstream-service-time").is_none());
        exercise(ws, client_closes).await;
    }
}

#[tokio::test]
async fn websocket_over_tls() {
    let up = ws_server().await;
    let pki = Pki::new();
    let server = proxy(up, &pki).await;
    let addr = server.listeners[1].address;
    for client_closes in [true, false] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(pki.client_config(&["http/1.1"], false)).connect(name, tcp).await.unwrap();
        let (ws, resp) = tokio::time::timeout(T, tokio_tungstenite::client_async(format!("wss://localhost:{}/chat", addr.port()), tls)).await.unwrap().unwrap();
        assert_eq!(resp.status(), 101);
        exercise(ws, client_closes).await;
    }
}

/// RFC 8441: an HTTP/2 extended CONNECT with `:protocol websocket`, sent upstream as an HTTP/1.1
/// upgrade; the client gets `200` and speaks WebSocket over the stream.
#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    let up = ws_server().await;
    let pki = Pki::new();
    let server = proxy(up, &pki).await;
    for (i, tls) in [false, true].into_iter().enumerate() {
        let addr = server.listeners[i].address;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let io: Box<dyn sluice_proxy::http::codec::tunnel::TunnelIo> = if tls {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            Box::new(tokio_rustls::TlsConnector::from(pki.client_config(&["h2"], false)).connect(name, tcp).await.unwrap())
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method("CONNECT")
            .uri(format!("{}://localhost/chat", if tls { "https" } else { "http" }))
            .header("sec-websocket-version", "13")
            // The HTTP/1.1 server upstream wants a key (RFC 6455); an HTTP/2 client may send it.
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
        let mut resp = tokio::time::timeout(T, sender.send_request(req)).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200, "tls: {tls}");
        assert!(resp.headers().get("upgrade").is_none() && resp.headers().get("connection").is_none());
        let upgraded = tokio::time::timeout(T, hyper::upgrade::on(&mut resp)).await.unwrap().unwrap();
        let ws = WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(upgraded), Role::Client, None).await;
        exercise(ws, true).await;
    }
}

/// sluice used to rewrite any write that looked like hyper's automatic 400: a proxied body with
/// those bytes came out changed (and longer than its content-length). It must pass untouched.
#[tokio::test]
async fn an_upstream_body_that_looks_like_hypers_400_passes_untouched() {
    const LOOKS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Tue, 24 Nov 2026 22:04:59 GMT\r\n\r\n";
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            // Keep-alive: every request head on the connection gets the same answer (bounded), so
            // the proxy's pooled connection stays usable and the test does not race its close.
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                for _ in 0..16 {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let Ok(n) = s.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    seen.drain(..end);
                    let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", LOOKS.len()).into_bytes();
                    r.extend_from_slice(LOOKS);
                    if s.write_all(&r).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let server = proxy(up, &Pki::new()).await;
    let mut c = TcpStream::connect(server.listeners[0].address).await.unwrap();
    // Twice on one connection: the framing must hold for the second response too.
    c.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + T;
    while got.windows(LOOKS.len()).filter(|w| *w == LOOKS).count() < 2 {
        let n = tokio::time::timeout_at(deadline, c.read(&mut buf)).await.expect("both responses").unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let first = text.find("\r\n\r\n").unwrap() + 4;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 84\r\n"), "{text}");
    assert_eq!(&got[first..first + LOOKS.len()], LOOKS, "the body is the upstream's, byte for byte");
    assert!(text[first + LOOKS.len()..].starts_with("HTTP/1.1 200 OK\r\n"), "the next response follows right after: {text}");
}
