//! A small HTTP client for tests (hyper client connections; one connection per call unless a
//! [`Conn`] is kept). Every call is bounded by [`TIMEOUT`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Bound of every helper call.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
    /// A header value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn target(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let (auth, pq) = authority_and_path(url)?;
    let uri: Uri = url.parse()?;
    let port = uri.port_u16().unwrap_or(80);
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let addr: SocketAddr = SocketAddr::new(host.parse().with_context(|| format!("{host} is not an IP"))?, port);
    Ok((addr, auth, pq))
}

fn authority_and_path(url: &str) -> anyhow::Result<(String, String)> {
    let uri: Uri = url.parse().with_context(|| format!("bad url {url}"))?;
    let auth = uri.authority().ok_or_else(|| anyhow!("url {url} has no authority"))?;
    let pq = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    Ok((auth.as_str().to_string(), pq))
}

/// `GET url` over a new HTTP/1.1 connection.
pub async fn get(url: &str) -> anyhow::Result<Response> {
    request("GET", url, &[], Bytes::new()).await
}

/// Any request over a new HTTP/1.1 connection. `Host` defaults to the URL's authority unless
/// `headers` has one.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> anyhow::Result<Response> {
    let (addr, _, _) = target(url)?;
    let mut c = Conn::connect(addr).await?;
    c.request(method, url, headers, body).await
}

/// Any request over a new h2c (prior knowledge) connection.
pub async fn request_h2(method: &str, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> anyhow::Result<Response> {
    let (addr, _, _) = target(url)?;
    let mut c = Conn::connect_h2(addr).await?;
    c.request(method, url, headers, body).await
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One client connection kept open for several requests (keep-alive tests).
pub struct Conn {
    sender: Sender,
}

impl Conn {
    /// HTTP/1.1 connection.
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let tcp = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await??;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender: Sender::H1(sender) })
    }

    /// HTTP/2 prior-knowledge connection.
    pub async fn connect_h2(addr: SocketAddr) -> anyhow::Result<Conn> {
        let tcp = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await??;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Conn { sender: Sender::H2(sender) })
    }

    /// HTTP/1.1 or HTTP/2 over TLS (ALPN decides; `server_name` for SNI and verification).
    pub async fn connect_tls(
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> anyhow::Result<Conn> {
        let tcp = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr)).await??;
        let name = rustls_pki_types::ServerName::try_from(server_name.to_string())?;
        let tls = tokio::time::timeout(TIMEOUT, tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await??;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Conn { sender: Sender::H2(sender) })
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Conn { sender: Sender::H1(sender) })
        }
    }

    pub async fn get(&mut self, url: &str) -> anyhow::Result<Response> {
        self.request("GET", url, &[], Bytes::new()).await
    }

    /// Send one request; `url` gives the path and the default `Host`/`:authority`.
    pub async fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Response> {
        let (authority, pq) = authority_and_path(url)?;
        let method = Method::from_bytes(method.as_bytes())?;
        let h2 = matches!(self.sender, Sender::H2(_));
        let uri: Uri = if h2 { url.parse()? } else { pq.parse()? };
        let mut b = Request::builder().method(method).uri(uri);
        let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
        if !has_host && !h2 {
            b = b.header("host", authority);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into()))?;
        let fut = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await?
                }
            };
            let (parts, body) = resp.into_parts();
            let collected = body.collect().await?;
            let trailers = collected.trailers().cloned();
            anyhow::Ok(Response {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body: collected.to_bytes(),
                trailers,
            })
        };
        tokio::time::timeout(TIMEOUT, fut).await.map_err(|_| anyhow!("request timed out after {TIMEOUT:?}"))?
    }
}
