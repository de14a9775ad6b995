//! Test PKI: a CA, a server certificate and a client certificate, as PEM strings.
//!
//! ECDSA (P-256) keys are generated fresh with rcgen. RSA keys cannot be generated with the ring
//! backend, so the RSA variant signs with fixed 2048-bit test keys from `keys/` (test data only,
//! never used outside tests); the certificates themselves are still generated on every call.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const RSA_CA_KEY: &str = include_str!("keys/rsa_ca.pem");
const RSA_SERVER_KEY: &str = include_str!("keys/rsa_server.pem");
const RSA_CLIENT_KEY: &str = include_str!("keys/rsa_client.pem");

/// Key algorithm of every certificate of a [`Pki`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ecdsa,
    Rsa,
}

/// What the server certificate says about itself.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    /// Subject common name; `None` for no subject CN.
    pub common_name: Option<String>,
    /// DNS names and IP literals (IPs become IP SANs).
    pub sans: Vec<String>,
}

impl Default for ServerIdentity {
    fn default() -> Self {
        ServerIdentity {
            common_name: Some("sluice-test-server".into()),
            sans: vec!["localhost".into(), "127.0.0.1".into(), "upstream.test".into(), "*.test".into()],
        }
    }
}

/// A CA with one server and one client certificate. All fields are PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    pub kind: KeyKind,
    pub ca_cert: String,
    pub ca_key: String,
    pub server_cert: String,
    pub server_key: String,
    /// Client certificate (CN `sluice-test-client`, URI SAN `spiffe://sluice.test/client`).
    pub client_cert: String,
    pub client_key: String,
}

fn key(kind: KeyKind, rsa_pem: &str) -> KeyPair {
    match kind {
        KeyKind::Ecdsa => KeyPair::generate().expect("generate ECDSA key"),
        KeyKind::Rsa => KeyPair::from_pkcs8_pem_and_sign_algo(rsa_pem, &rcgen::PKCS_RSA_SHA256)
            .expect("load RSA test key"),
    }
}

impl Pki {
    /// ECDSA PKI with the default server identity.
    pub fn new() -> Pki {
        Pki::generate(KeyKind::Ecdsa, &ServerIdentity::default())
    }

    /// RSA PKI with the default server identity.
    pub fn rsa() -> Pki {
        Pki::generate(KeyKind::Rsa, &ServerIdentity::default())
    }

    pub fn generate(kind: KeyKind, server: &ServerIdentity) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "sluice-test-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = key(kind, RSA_CA_KEY);
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-sign CA");

        let mut sp = CertificateParams::new(server.sans.clone()).expect("server SANs");
        sp.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = &server.common_name {
            sp.distinguished_name.push(DnType::CommonName, cn.as_str());
        }
        sp.is_ca = IsCa::NoCa;
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = key(kind, RSA_SERVER_KEY);
        let server_cert = sp.signed_by(&server_key, &ca).expect("sign server cert");

        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.distinguished_name.push(DnType::CommonName, "sluice-test-client");
        cp.subject_alt_names =
            vec![SanType::URI(rcgen::string::Ia5String::try_from("spiffe://sluice.test/client").unwrap())];
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = key(kind, RSA_CLIENT_KEY);
        let client_cert = cp.signed_by(&client_key, &ca).expect("sign client cert");

        Pki {
            kind,
            ca_cert: ca.pem(),
            ca_key: ca_key_pem,
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    /// A rustls server config (ring provider) presenting the server certificate, with these ALPN
    /// protocols; when `require_client_cert`, clients must present a certificate from the CA.
    pub fn server_config(&self, alpn: &[&str], require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for c in parse_certs(&self.ca_cert) {
                roots.add(c).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder
            .with_single_cert(parse_certs(&self.server_cert), parse_key(&self.server_key))
            .expect("server cert/key");
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }

    /// A rustls client config trusting the CA, optionally presenting the client certificate.
    pub fn client_config(&self, alpn: &[&str], with_client_cert: bool) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in parse_certs(&self.ca_cert) {
            roots.add(c).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut cfg = if with_client_cert {
            builder
                .with_client_auth_cert(parse_certs(&self.client_cert), parse_key(&self.client_key))
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(cfg)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// All certificates of a PEM text.
pub fn parse_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().expect("PEM certificates")
}

/// The first private key of a PEM text.
pub fn parse_key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls_pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("PEM private key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_build_usable_configs() {
        for pki in [Pki::new(), Pki::rsa()] {
            assert!(pki.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(pki.server_key.contains("PRIVATE KEY"));
            let _ = pki.server_config(&["h2", "http/1.1"], true);
            let _ = pki.client_config(&["h2"], true);
        }
    }
}
