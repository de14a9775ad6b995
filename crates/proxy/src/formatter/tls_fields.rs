//! The `%DOWNSTREAM_TLS_*%`, `%DOWNSTREAM_PEER_*%` and `%DOWNSTREAM_LOCAL_*%` operators: facts of
//! the downstream TLS connection, computed from the certificates when a format asks (never on
//! the connection path), in Envoy's spelling (RFC 2253 subjects, lowercase hex digests and
//! serials, URL-encoded PEM, OpenSSL cipher names).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::TlsField;
use crate::filters::ext_authz::url_encoded_pem;
use crate::filters::TlsInfo;

/// What the formatter reads from a [`TlsInfo`].
pub(crate) trait TlsFieldAccess {
    fn field(&self, f: TlsField) -> Option<String>;
    fn peer_validity(&self, start: bool) -> Option<SystemTime>;
}

fn with_cert<T>(der: Option<&[u8]>, f: impl FnOnce(&X509Certificate<'_>) -> Option<T>) -> Option<T> {
    let (_, cert) = x509_parser::parse_x509_certificate(der?).ok()?;
    f(&cert)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum San {
    Uri,
    Dns,
    Ip,
}

fn sans(cert: &X509Certificate<'_>, kind: San) -> Option<String> {
    let san = cert.subject_alternative_name().ok()??;
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match (n, kind) {
            (GeneralName::URI(u), San::Uri) => Some(u.to_string()),
            (GeneralName::DNSName(d), San::Dns) => Some(d.to_string()),
            (GeneralName::IPAddress(ip), San::Ip) => match ip.len() {
                4 => Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                16 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(ip);
                    Some(std::net::Ipv6Addr::from(b).to_string())
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    Some(names.join(","))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TlsFieldAccess for TlsInfo {
    fn field(&self, f: TlsField) -> Option<String> {
        let peer = self.peer_certificate.as_deref();
        let local = self.local_certificate.as_deref();
        match f {
            TlsField::Version => self.version.map(str::to_string),
            TlsField::Cipher => self.cipher.map(str::to_string),
            TlsField::PeerSubject => with_cert(peer, |c| Some(crate::tls::rfc2253(c.subject()))),
            TlsField::PeerIssuer => with_cert(peer, |c| Some(crate::tls::rfc2253(c.issuer()))),
            TlsField::PeerSerial => with_cert(peer, |c| {
                let raw = c.tbs_certificate.raw_serial();
                let trimmed = match raw {
                    [0, rest @ ..] if !rest.is_empty() => rest,
                    r => r,
                };
                Some(hex(trimmed))
            }),
            TlsField::PeerUriSan => with_cert(peer, |c| sans(c, San::Uri)),
            TlsField::PeerDnsSan => with_cert(peer, |c| sans(c, San::Dns)),
            TlsField::PeerIpSan => with_cert(peer, |c| sans(c, San::Ip)),
            TlsField::PeerFingerprint256 => peer.map(|d| hex(ring::digest::digest(&ring::digest::SHA256, d).as_ref())),
            TlsField::PeerFingerprint1 => {
                peer.map(|d| hex(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, d).as_ref()))
            }
            TlsField::PeerCert => peer.map(url_encoded_pem),
            TlsField::LocalSubject => with_cert(local, |c| Some(crate::tls::rfc2253(c.subject()))),
            TlsField::LocalUriSan => with_cert(local, |c| sans(c, San::Uri)),
            TlsField::LocalDnsSan => with_cert(local, |c| sans(c, San::Dns)),
            TlsField::LocalIpSan => with_cert(local, |c| sans(c, San::Ip)),
        }
    }

    fn peer_validity(&self, start: bool) -> Option<SystemTime> {
        with_cert(self.peer_certificate.as_deref(), |c| {
            let v = c.validity();
            let secs = if start { v.not_before.timestamp() } else { v.not_after.timestamp() };
            if secs >= 0 {
                Some(UNIX_EPOCH + Duration::from_secs(secs as u64))
            } else {
                Some(UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()))
            }
        })
    }
}

/// OpenSSL's name of a TLS version (`%DOWNSTREAM_TLS_VERSION%`).
pub fn tls_version_name(v: rustls::ProtocolVersion) -> Option<&'static str> {
    match v {
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        _ => None,
    }
}

/// OpenSSL's (BoringSSL's) name of a cipher suite (`%DOWNSTREAM_TLS_CIPHER%`).
pub fn cipher_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as C;
    Some(match suite {
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_certificate_is_the_url_encoded_pem() {
        let pem = url_encoded_pem(b"\xfb\xff");
        assert_eq!(pem, "-----BEGIN%20CERTIFICATE-----%0A%2B%2F8%3D%0A-----END%20CERTIFICATE-----%0A");
    }
}
