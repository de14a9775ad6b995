use sluice_testkit::client::{self, Conn};
use sluice_testkit::{EchoUpstream, Pki};

fn any() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn echo_basics_and_keepalive() {
    let up = EchoUpstream::start_labeled(any(), "a").await.unwrap();
    let r = client::request("POST", &format!("{}/x?y=1", up.url()), &[("x-t", "1")], "hello").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream-id"), Some("a"));
    let j = r.json();
    assert_eq!(j["method"], "POST");
    assert_eq!(j["path"], "/x?y=1");
    assert_eq!(j["body_len"], 5);
    assert_eq!(j["version"], "HTTP/1.1");
    let mut c = Conn::connect(up.addr()).await.unwrap();
    for _ in 0..5 {
        assert_eq!(c.get(&format!("{}/status/404", up.url())).await.unwrap().status, 404);
    }
    assert_eq!(up.connections(), 2);
    assert_eq!(up.requests(), 6);
    let big = client::get(&format!("{}/big/100000", up.url())).await.unwrap();
    assert_eq!(big.body.len(), 100000);
    assert!(client::get(&format!("{}/close", up.url())).await.is_err());
    let t = std::time::Instant::now();
    client::get(&format!("{}/slow/200", up.url())).await.unwrap();
    assert!(t.elapsed() >= std::time::Duration::from_millis(200));
    up.stop();
    assert!(sluice_testkit::wait_until(std::time::Duration::from_secs(2), || up.open_connections() == 0).await);
}

#[tokio::test]
async fn h2_grpc_trailers_and_tls() {
    let up = EchoUpstream::start_h2(any()).await.unwrap();
    let r = client::request_h2("POST", &format!("{}/grpc", up.url()), &[("te", "trailers")], "").await.unwrap();
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.trailers.unwrap().get("grpc-status").unwrap(), "0");
    for pki in [Pki::new(), Pki::rsa()] {
        let up = EchoUpstream::start_tls(any(), &pki).await.unwrap();
        let mut c = Conn::connect_tls(up.addr(), pki.client_config(&["h2"], false), "localhost").await.unwrap();
        let r = c.get(&format!("https://localhost:{}/a", up.port())).await.unwrap();
        assert_eq!(r.json()["version"], "HTTP/2");
    }
}
