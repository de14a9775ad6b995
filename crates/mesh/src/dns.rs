//! A small authoritative DNS server with a mutable zone, for `sluice up` and for tests.
//!
//! It answers A and AAAA questions for the names put in its zone with [`DnsServer::set`], over
//! UDP and TCP on the same port. It runs on its own OS threads, so it works the same from
//! synchronous code, from inside a tokio runtime, and from tests.
//!
//! Behaviour:
//! - names are case-insensitive and may be given with or without the trailing dot;
//! - a known name with records of the asked type → NOERROR with those records (AA set);
//! - a known name without records of that type (e.g. AAAA for an IPv4-only name) → NOERROR, empty;
//! - an unknown name → NXDOMAIN;
//! - [`DnsServer::set_servfail`] makes every answer SERVFAIL; [`DnsServer::set_silent`] drops every
//!   query (an unreachable resolver). Dropped queries are still counted.
//!
//! ```no_run
//! # use std::net::{IpAddr, Ipv4Addr};
//! let dns = sluice_mesh::dns::DnsServer::start("127.0.0.1:0".parse().unwrap()).unwrap();
//! dns.set("service1", vec![IpAddr::V4(Ipv4Addr::new(127, 0, 10, 1))]);
//! println!("resolver at {}", dns.local_addr());
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// Default TTL of the answers, in seconds.
pub const DEFAULT_TTL: u32 = 1;

const POLL: Duration = Duration::from_millis(100);
const TCP_IDLE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Shared {
    zone: RwLock<HashMap<String, Vec<IpAddr>>>,
    ttl: AtomicU32,
    silent: AtomicBool,
    servfail: AtomicBool,
    queries: AtomicU64,
    stop: AtomicBool,
}

/// A running DNS server. Dropping it (or [`DnsServer::shutdown`]) stops it.
pub struct DnsServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tcp: bool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Normalizes a zone name: lower case, no trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Binds UDP (and TCP on the same port when that port is free) on `addr` and starts serving.
    /// Port 0 picks a free port; [`DnsServer::local_addr`] tells which.
    pub fn start(addr: SocketAddr) -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair(addr)?;
        let local = udp.local_addr()?;
        let shared = Arc::new(Shared {
            ttl: AtomicU32::new(DEFAULT_TTL),
            ..Default::default()
        });
        udp.set_read_timeout(Some(POLL))?;
        let mut threads = Vec::new();
        {
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("dns-udp".into())
                    .spawn(move || udp_loop(udp, shared))?,
            );
        }
        let has_tcp = tcp.is_some();
        if let Some(tcp) = tcp {
            tcp.set_nonblocking(true)?;
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("dns-tcp".into())
                    .spawn(move || tcp_loop(tcp, shared))?,
            );
        }
        Ok(DnsServer {
            shared,
            addr: local,
            tcp: has_tcp,
            threads: Mutex::new(threads),
        })
    }

    /// The UDP (and TCP) address the server answers on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether TCP is served too (on the same port).
    pub fn serves_tcp(&self) -> bool {
        self.tcp
    }

    /// Sets the records of `name`: A records for the IPv4 addresses, AAAA for the IPv6 ones.
    /// An empty list keeps the name known (NOERROR, no answers).
    pub fn set(&self, name: &str, addrs: Vec<IpAddr>) {
        self.shared
            .zone
            .write()
            .unwrap()
            .insert(normalize_name(name), addrs);
    }

    /// Removes `name`: later queries get NXDOMAIN.
    pub fn remove(&self, name: &str) {
        self.shared
            .zone
            .write()
            .unwrap()
            .remove(&normalize_name(name));
    }

    /// The addresses currently served for `name` (`None` if unknown).
    pub fn get(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.shared
            .zone
            .read()
            .unwrap()
            .get(&normalize_name(name))
            .cloned()
    }

    /// A snapshot of the zone, sorted by name.
    pub fn records(&self) -> Vec<(String, Vec<IpAddr>)> {
        let mut v: Vec<_> = self
            .shared
            .zone
            .read()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort();
        v
    }

    /// TTL of the answers from now on (default [`DEFAULT_TTL`]).
    pub fn set_ttl(&self, secs: u32) {
        self.shared.ttl.store(secs, Ordering::Relaxed);
    }

    /// When true, queries are read and dropped without an answer.
    pub fn set_silent(&self, silent: bool) {
        self.shared.silent.store(silent, Ordering::Relaxed);
    }

    /// When true, every query is answered SERVFAIL.
    pub fn set_servfail(&self, servfail: bool) {
        self.shared.servfail.store(servfail, Ordering::Relaxed);
    }

    /// Number of DNS messages received so far (UDP and TCP, answered or dropped).
    pub fn query_count(&self) -> u64 {
        self.shared.queries.load(Ordering::Relaxed)
    }

    /// Resets the query counter to 0.
    pub fn reset_query_count(&self) {
        self.shared.queries.store(0, Ordering::Relaxed);
    }

    /// Stops serving and waits for the server threads (at most ~100 ms).
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A tiny UDP client: asks `server` for the A and AAAA records of `name`.
/// `Ok(None)` on NXDOMAIN, `Ok(Some(addrs))` otherwise (possibly empty); errors on timeout,
/// SERVFAIL or a malformed answer. Used by `sluice ps` and by tests.
pub fn lookup(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> io::Result<Option<Vec<IpAddr>>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(timeout))?;
    let qname = Name::from_ascii(name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut out = Vec::new();
    for qtype in [RecordType::A, RecordType::AAAA] {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(hickory_proto::op::Query::query(qname.clone(), qtype));
        let bytes = q.to_vec().map_err(|e| io::Error::other(e.to_string()))?;
        sock.send_to(&bytes, server)?;
        let mut buf = [0u8; 4096];
        let resp = loop {
            let (n, _) = sock.recv_from(&mut buf)?;
            let m = Message::from_vec(&buf[..n]).map_err(|e| io::Error::other(e.to_string()))?;
            if m.metadata.id == q.metadata.id {
                break m;
            }
        };
        match resp.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => return Ok(None),
            other => return Err(io::Error::other(format!("DNS answered {other}"))),
        }
        for r in &resp.answers {
            match &r.data {
                RData::A(a) => out.push(IpAddr::V4(a.0)),
                RData::AAAA(a) => out.push(IpAddr::V6(a.0)),
                _ => {}
            }
        }
    }
    Ok(Some(out))
}

fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, Option<TcpListener>)> {
    if addr.port() != 0 {
        let udp = UdpSocket::bind(addr)?;
        let tcp = TcpListener::bind(udp.local_addr()?).ok();
        return Ok((udp, tcp));
    }
    // Port 0: find a port free for both protocols (bounded number of tries).
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr)?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, Some(tcp))),
            Err(e) => last = Some((udp, e)),
        }
    }
    let (udp, _) = last.expect("at least one try");
    Ok((udp, None))
}

fn udp_loop(sock: UdpSocket, shared: Arc<Shared>) {
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::Relaxed) {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => continue, // e.g. ICMP port unreachable reported on Linux
        };
        if let Some(resp) = handle(&buf[..n], &shared, true) {
            let _ = sock.send_to(&resp, peer);
        }
    }
}

fn tcp_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("dns-tcp-conn".into())
                    .spawn(move || tcp_conn(stream, shared));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL / 4),
            Err(_) => std::thread::sleep(POLL / 4),
        }
    }
}

fn tcp_conn(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(POLL));
    let mut idle = Duration::ZERO;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if shared.stop.load(Ordering::Relaxed) || idle >= TCP_IDLE {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                idle = Duration::ZERO;
                pending.extend_from_slice(&buf[..n]);
                while pending.len() >= 2 {
                    let len = u16::from_be_bytes([pending[0], pending[1]]) as usize;
                    if pending.len() < 2 + len {
                        break;
                    }
                    let msg: Vec<u8> = pending.drain(..2 + len).skip(2).collect();
                    if let Some(resp) = handle(&msg, &shared, false) {
                        let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                        out.extend_from_slice(&resp);
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                idle += POLL;
            }
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Builds the answer to one DNS message; `None` means "send nothing".
fn handle(bytes: &[u8], shared: &Shared, udp: bool) -> Option<Vec<u8>> {
    shared.queries.fetch_add(1, Ordering::Relaxed);
    if shared.silent.load(Ordering::Relaxed) {
        return None;
    }
    let req = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => {
            // Echo the id if we have one, FORMERR.
            if bytes.len() < 2 {
                return None;
            }
            let id = u16::from_be_bytes([bytes[0], bytes[1]]);
            let resp = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            return resp.to_vec().ok();
        }
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let resp = answer(&req, shared);
    let mut bytes = resp.to_vec().ok()?;
    let max = if udp {
        req.edns
            .as_ref()
            .map(|e| e.max_payload().max(512))
            .unwrap_or(512) as usize
    } else {
        u16::MAX as usize
    };
    if bytes.len() > max {
        let mut t = resp.truncate();
        t.metadata.message_type = MessageType::Response;
        t.metadata.id = req.metadata.id;
        bytes = t.to_vec().ok()?;
    }
    Some(bytes)
}

fn answer(req: &Message, shared: &Shared) -> Message {
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.add_queries(req.queries.iter().cloned());
    if req.edns.is_some() {
        resp.set_edns(Edns::new());
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp;
    }
    if shared.servfail.load(Ordering::Relaxed) {
        resp.metadata.response_code = ResponseCode::ServFail;
        return resp;
    }
    let Some(q) = req.queries.first() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp;
    };
    resp.metadata.authoritative = true;
    let key = normalize_name(&q.name().to_ascii());
    let zone = shared.zone.read().unwrap();
    let Some(addrs) = zone.get(&key) else {
        resp.metadata.response_code = ResponseCode::NXDomain;
        return resp;
    };
    if q.query_class() != DNSClass::IN && q.query_class() != DNSClass::ANY {
        return resp;
    }
    let ttl = shared.ttl.load(Ordering::Relaxed);
    let qtype = q.query_type();
    let owner: Name = q.name().clone();
    for ip in addrs {
        let rdata = match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        resp.add_answer(Record::from_rdata(owner.clone(), ttl, rdata));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        assert_eq!(normalize_name("Service1."), "service1");
        assert_eq!(
            normalize_name("ext_authz-opa-service"),
            "ext_authz-opa-service"
        );
    }

    fn q(name: &str, t: RecordType) -> Message {
        let mut m = Message::query();
        m.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            t,
        ));
        m
    }

    #[test]
    fn answers_in_process() {
        let shared = Shared {
            ttl: AtomicU32::new(7),
            ..Default::default()
        };
        shared.zone.write().unwrap().insert(
            "a".into(),
            vec!["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        );
        let r = answer(&q("A.", RecordType::A), &shared);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].ttl, 7);
        let r = answer(&q("a", RecordType::AAAA), &shared);
        assert_eq!(r.answers.len(), 1);
        let r = answer(&q("a", RecordType::MX), &shared);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        let r = answer(&q("b", RecordType::A), &shared);
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    }
}
