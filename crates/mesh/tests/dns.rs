//! The DNS server over real loopback sockets, queried with hickory-proto messages.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use sluice_mesh::dns::DnsServer;

fn start() -> DnsServer {
    DnsServer::start("127.0.0.1:0".parse().unwrap()).expect("start dns")
}

fn query_msg(name: &str, t: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

/// Sends one query over UDP; `None` on timeout.
fn udp_query(server: SocketAddr, name: &str, t: RecordType, timeout: Duration) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(timeout)).unwrap();
    let q = query_msg(name, t);
    sock.send_to(&q.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let resp = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(resp.metadata.id, q.metadata.id);
    Some(resp)
}

fn udp(server: &DnsServer, name: &str, t: RecordType) -> Message {
    udp_query(server.local_addr(), name, t, Duration::from_secs(2)).expect("dns answer")
}

fn ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_and_aaaa_records() {
    let dns = start();
    assert!(dns.local_addr().ip().is_loopback());
    assert_ne!(dns.local_addr().port(), 0);
    dns.set(
        "service1",
        vec![ip("127.0.10.1"), ip("127.0.10.2"), ip("::1")],
    );

    let r = udp(&dns, "service1", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(ips(&r), vec![ip("127.0.10.1"), ip("127.0.10.2")]);
    assert_eq!(r.queries.len(), 1);

    let r = udp(&dns, "service1.", RecordType::AAAA);
    assert_eq!(ips(&r), vec![ip("::1")]);
}

#[test]
fn case_insensitive_and_trailing_dot() {
    let dns = start();
    dns.set("Service-Envoy-1.", vec![ip("127.0.10.5")]);
    for name in ["service-envoy-1", "SERVICE-ENVOY-1.", "service-envoy-1."] {
        let r = udp(&dns, name, RecordType::A);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(ips(&r), vec![ip("127.0.10.5")], "{name}");
    }
    assert_eq!(dns.get("SERVICE-envoy-1"), Some(vec![ip("127.0.10.5")]));
}

#[test]
fn underscore_names() {
    let dns = start();
    dns.set("ext_authz-opa-service", vec![ip("127.0.10.9")]);
    let r = udp(&dns, "ext_authz-opa-service", RecordType::A);
    assert_eq!(ips(&r), vec![ip("127.0.10.9")]);
}

#[test]
fn nodata_and_nxdomain() {
    let dns = start();
    dns.set("v4only", vec![ip("127.0.10.1")]);
    let r = udp(&dns, "v4only", RecordType::AAAA);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());

    let r = udp(&dns, "nosuch", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.answers.is_empty());

    dns.set("empty", vec![]);
    let r = udp(&dns, "empty", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
}

#[test]
fn update_and_remove() {
    let dns = start();
    dns.set("service1", vec![ip("127.0.10.1")]);
    assert_eq!(
        ips(&udp(&dns, "service1", RecordType::A)),
        vec![ip("127.0.10.1")]
    );
    dns.set(
        "service1",
        vec![ip("127.0.10.1"), ip("127.0.10.2"), ip("127.0.10.3")],
    );
    assert_eq!(ips(&udp(&dns, "service1", RecordType::A)).len(), 3);
    dns.remove("SERVICE1.");
    let r = udp(&dns, "service1", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(dns.get("service1"), None);
}

#[test]
fn ttl() {
    let dns = start();
    dns.set("a", vec![ip("127.0.0.1")]);
    assert_eq!(
        udp(&dns, "a", RecordType::A).answers[0].ttl,
        sluice_mesh::dns::DEFAULT_TTL
    );
    dns.set_ttl(30);
    assert_eq!(udp(&dns, "a", RecordType::A).answers[0].ttl, 30);
}

#[test]
fn servfail() {
    let dns = start();
    dns.set("a", vec![ip("127.0.0.1")]);
    dns.set_servfail(true);
    let r = udp(&dns, "a", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(r.answers.is_empty());
    dns.set_servfail(false);
    assert_eq!(
        udp(&dns, "a", RecordType::A).metadata.response_code,
        ResponseCode::NoError
    );
}

#[test]
fn silent_drops_queries_but_counts_them() {
    let dns = start();
    dns.set("a", vec![ip("127.0.0.1")]);
    assert_eq!(dns.query_count(), 0);
    udp(&dns, "a", RecordType::A);
    assert_eq!(dns.query_count(), 1);
    dns.set_silent(true);
    assert!(udp_query(
        dns.local_addr(),
        "a",
        RecordType::A,
        Duration::from_millis(300)
    )
    .is_none());
    assert_eq!(dns.query_count(), 2);
    dns.set_silent(false);
    assert!(udp_query(dns.local_addr(), "a", RecordType::A, Duration::from_secs(2)).is_some());
    assert_eq!(dns.query_count(), 3);
    dns.reset_query_count();
    assert_eq!(dns.query_count(), 0);
}

#[test]
fn edns_query_gets_edns_answer() {
    let dns = start();
    dns.set("a", vec![ip("127.0.0.1")]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut q = query_msg("a", RecordType::A);
    q.set_edns(Edns::new());
    sock.send_to(&q.to_vec().unwrap(), dns.local_addr())
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert!(r.edns.is_some());
    assert_eq!(ips(&r), vec![ip("127.0.0.1")]);
}

#[test]
fn garbage_does_not_kill_the_server() {
    let dns = start();
    dns.set("a", vec![ip("127.0.0.1")]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(&[1, 2, 3, 4, 5], dns.local_addr()).unwrap();
    sock.send_to(&[], dns.local_addr()).unwrap();
    assert_eq!(ips(&udp(&dns, "a", RecordType::A)), vec![ip("127.0.0.1")]);
}

#[test]
fn tcp_queries() {
    let dns = start();
    assert!(dns.serves_tcp());
    dns.set("service2", vec![ip("127.0.10.7")]);
    let mut s = TcpStream::connect(dns.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // Two queries pipelined on one connection.
    for name in ["service2", "nosuch"] {
        let q = query_msg(name, RecordType::A).to_vec().unwrap();
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).unwrap();
    }
    let mut read_one = || {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        Message::from_vec(&body).unwrap()
    };
    let r1 = read_one();
    assert_eq!(ips(&r1), vec![ip("127.0.10.7")]);
    let r2 = read_one();
    assert_eq!(r2.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn fixed_port_and_shutdown() {
    let dns = start();
    let addr = dns.local_addr();
    dns.shutdown();
    drop(dns);
    // After shutdown the port can be bound again by a new server.
    let again = DnsServer::start(addr).expect("rebind after shutdown");
    again.set("x", vec![ip("127.0.0.2")]);
    assert_eq!(ips(&udp(&again, "x", RecordType::A)), vec![ip("127.0.0.2")]);
}

#[test]
fn usable_from_tokio() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dns = start();
        dns.set("a", vec![ip("127.0.0.3")]);
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let q = query_msg("a", RecordType::A);
        sock.send_to(&q.to_vec().unwrap(), dns.local_addr())
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .expect("timeout")
            .unwrap();
        assert_eq!(
            ips(&Message::from_vec(&buf[..n]).unwrap()),
            vec![ip("127.0.0.3")]
        );
    });
}

#[test]
fn lookup_client() {
    use sluice_mesh::dns::lookup;
    let dns = start();
    dns.set("both", vec![ip("127.0.0.9"), ip("::1")]);
    let t = Duration::from_secs(2);
    assert_eq!(
        lookup(dns.local_addr(), "both", t).unwrap(),
        Some(vec![ip("127.0.0.9"), ip("::1")])
    );
    assert_eq!(lookup(dns.local_addr(), "nope", t).unwrap(), None);
    dns.set_servfail(true);
    assert!(lookup(dns.local_addr(), "both", t).is_err());
    dns.set_servfail(false);
    dns.set_silent(true);
    assert!(lookup(dns.local_addr(), "both", Duration::from_millis(200)).is_err());
}
