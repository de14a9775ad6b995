//! Upstream TLS (`transport_socket` `UpstreamTlsContext`) with rustls + ring.
//!
//! Like Envoy: with `validation_context.trusted_ca` the chain is verified against that CA (and
//! nothing else; the name is not checked unless SAN matchers are configured, which sluice does
//! not support yet); without a validation context the server certificate is **not** verified
//! (Envoy's documented default), only the handshake signatures. `sni` is sent when set. ALPN is
//! `common_tls_context.alpn_protocols` when given, else `h2` for HTTP/2 connections and none for
//! HTTP/1.1. The first `tls_certificates` entry is the client certificate (mTLS).

use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, Error as TlsError, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sluice_config::tls::UpstreamTlsContext;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub(crate) struct UpstreamTls {
    h1: TlsConnector,
    h2: TlsConnector,
    sni: Option<String>,
}

#[derive(Debug)]
struct Verifier {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(inner) = &self.inner else { return Ok(ServerCertVerified::assertion()) };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(v) => Ok(v),
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn certs(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    let v = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().context("invalid PEM certificate")?;
    anyhow::ensure!(!v.is_empty(), "no certificate in PEM data");
    Ok(v)
}

impl UpstreamTls {
    pub(crate) fn new(ctx: &UpstreamTlsContext, cluster: &str) -> anyhow::Result<UpstreamTls> {
        let UpstreamTlsContext { common_tls_context, sni, allow_renegotiation, max_session_keys } = ctx;
        crate::config_audit::refused_at_load(allow_renegotiation);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let common = crate::tls::common(common_tls_context)
            .map_err(|(p, e)| anyhow::anyhow!("cluster '{cluster}': common_tls_context.{p}: {e}"))?;
        let inner = match common.trusted_ca {
            Some(ca) => {
                let pem = crate::data_source::load(ca).map_err(|e| anyhow::anyhow!("cluster '{cluster}': trusted_ca: {e}"))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(&pem).with_context(|| format!("cluster '{cluster}': trusted_ca"))? {
                    roots.add(c).with_context(|| format!("cluster '{cluster}': trusted_ca"))?;
                }
                Some(
                    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .with_context(|| format!("cluster '{cluster}': trusted_ca"))?,
                )
            }
            None => None,
        };
        let verifier = Arc::new(Verifier { inner, provider: provider.clone() });
        let client_cert = match common.certificate {
            Some((chain, key)) => {
                let chain = certs(&crate::data_source::load(chain).map_err(anyhow::Error::msg)?)?;
                let key = {
                    use rustls_pki_types::pem::PemObject;
                    PrivateKeyDer::from_pem_slice(&crate::data_source::load(key).map_err(anyhow::Error::msg)?)
                        .with_context(|| format!("cluster '{cluster}': invalid private key"))?
                };
                Some((chain, key))
            }
            None => None,
        };
        // `max_session_keys` (default 1): how many sessions to keep for resumption; 0 disables it.
        let resumption = match max_session_keys.unwrap_or(1) {
            0 => rustls::client::Resumption::disabled(),
            n => rustls::client::Resumption::in_memory_sessions(n as usize),
        };
        let build = |alpn: Vec<Vec<u8>>| -> anyhow::Result<TlsConnector> {
            let b = rustls::ClientConfig::builder_with_provider(common.provider.clone())
                .with_protocol_versions(&common.versions)?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone());
            let mut cfg = match &client_cert {
                Some((chain, key)) => b.with_client_auth_cert(chain.clone(), key.clone_key())?,
                None => b.with_no_client_auth(),
            };
            cfg.alpn_protocols = alpn;
            cfg.enable_sni = sni.is_some();
            cfg.resumption = resumption.clone();
            Ok(TlsConnector::from(Arc::new(cfg)))
        };
        let configured = common.alpn_protocols.clone();
        let (h1, h2) = if configured.is_empty() {
            (build(vec![])?, build(vec![b"h2".to_vec()])?)
        } else {
            (build(configured.clone())?, build(configured)?)
        };
        Ok(UpstreamTls { h1, h2, sni: sni.clone() })
    }

    pub(crate) async fn connect(&self, tcp: TcpStream, ip: std::net::IpAddr, h2: bool) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match &self.sni {
            Some(s) => ServerName::try_from(s.clone()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            None => ServerName::IpAddress(ip.into()),
        };
        let c = if h2 { &self.h2 } else { &self.h1 };
        c.connect(name, tcp).await
    }
}
