//! TLS with rustls (ring provider, no OpenSSL): downstream contexts for listeners, certificate
//! identities ("principals") the way Envoy reports them to ext_authz.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sluice_config::core::DataSource;
use sluice_config::tls::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate, TlsParameters, TlsProtocol,
    TrustChainVerification,
};

use crate::config_audit::refused_at_load;

/// A built downstream TLS setup for one filter chain.
pub struct DownstreamTls {
    pub config: Arc<ServerConfig>,
    /// Identity of the listener's certificate (`destination.principal`).
    pub local_principal: String,
    /// ALPN offers h2.
    pub h2: bool,
    /// `require_sni`: a ClientHello without SNI is refused.
    pub require_sni: bool,
}

/// The TLS 1.2 cipher suites sluice has (rustls with ring), by their OpenSSL names.
fn tls12_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "ECDHE-ECDSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES256-GCM-SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-CHACHA20-POLY1305" => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        _ => return None,
    })
}

/// The crypto provider for `tls_params.cipher_suites` and `ecdh_curves` (each empty: the
/// defaults). As in Envoy, the cipher suites restrict TLS 1.2; TLS 1.3's suites are fixed.
/// Errors are (path relative to `tls_params`, message).
pub(crate) fn crypto_provider(cipher_suites: &[String], ecdh_curves: &[String]) -> Result<Arc<rustls::crypto::CryptoProvider>, (String, String)> {
    let mut p = rustls::crypto::ring::default_provider();
    if !cipher_suites.is_empty() {
        let mut suites: Vec<rustls::SupportedCipherSuite> = p.cipher_suites.iter().copied().filter(|s| s.tls13().is_some()).collect();
        for (i, entry) in cipher_suites.iter().enumerate() {
            // `[A|B]` is a group of equal preference (BoringSSL's syntax); sluice keeps its order.
            for name in entry.trim_start_matches('[').trim_end_matches(']').split('|').map(str::trim) {
                let suite = tls12_suite(name).ok_or_else(|| {
                    (format!("cipher_suites[{i}]"), format!("cipher suite \"{name}\" is recognised but not supported by sluice"))
                })?;
                if !suites.iter().any(|s| s.suite() == suite.suite()) {
                    suites.push(suite);
                }
            }
        }
        p.cipher_suites = suites;
    }
    if !ecdh_curves.is_empty() {
        use rustls::crypto::ring::kx_group;
        let mut groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup> = Vec::new();
        for (i, name) in ecdh_curves.iter().enumerate() {
            groups.push(match name.as_str() {
                "X25519" => kx_group::X25519,
                "P-256" => kx_group::SECP256R1,
                "P-384" => kx_group::SECP384R1,
                _ => {
                    return Err((format!("ecdh_curves[{i}]"), format!("curve \"{name}\" is recognised but not supported by sluice")))
                }
            });
        }
        p.kx_groups = groups;
    }
    Ok(Arc::new(p))
}

/// A `CommonTlsContext`, resolved.
pub(crate) struct CommonTls<'c> {
    /// `tls_params` minimum and maximum versions.
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    /// `tls_params` cipher suites and curves.
    pub provider: Arc<rustls::crypto::CryptoProvider>,
    /// The certificate and key (the validator allows one).
    pub certificate: Option<(&'c DataSource, &'c DataSource)>,
    /// `validation_context.trusted_ca`.
    pub trusted_ca: Option<&'c DataSource>,
    pub alpn_protocols: Vec<Vec<u8>>,
}

/// Resolve a `CommonTlsContext`. Errors are (path relative to it, message).
pub(crate) fn common(ctx: &CommonTlsContext) -> Result<CommonTls<'_>, (String, String)> {
    let CommonTlsContext {
        tls_params,
        tls_certificates,
        validation_context,
        alpn_protocols,
        tls_certificate_sds_secret_configs,
        validation_context_sds_secret_config,
        combined_validation_context,
        tls_certificate_provider_instance,
    } = ctx;
    for refused in [
        tls_certificate_sds_secret_configs,
        validation_context_sds_secret_config,
        combined_validation_context,
        tls_certificate_provider_instance,
    ] {
        refused_at_load(refused);
    }
    let (min, max, provider) = match tls_params {
        Some(TlsParameters {
            tls_minimum_protocol_version,
            tls_maximum_protocol_version,
            cipher_suites,
            ecdh_curves,
            signature_algorithms,
        }) => {
            refused_at_load(signature_algorithms);
            let provider = crypto_provider(cipher_suites, ecdh_curves).map_err(|(p, e)| (format!("tls_params.{p}"), e))?;
            (*tls_minimum_protocol_version, *tls_maximum_protocol_version, provider)
        }
        None => (None, None, provider()),
    };
    let versions = versions(min, max);
    if versions.is_empty() {
        return Err(("tls_params".to_string(), "no TLS version sluice supports (1.2, 1.3) is in range".to_string()));
    }
    let certificate = match tls_certificates.as_slice() {
        [] => None,
        [TlsCertificate { certificate_chain, private_key, password, ocsp_staple, private_key_provider, watched_directory }] => {
            for refused in [password, ocsp_staple, private_key_provider, watched_directory] {
                refused_at_load(refused);
            }
            let p = "tls_certificates[0]";
            let chain = certificate_chain.as_ref().ok_or_else(|| (p.to_string(), "certificate_chain is required".to_string()))?;
            let key = private_key.as_ref().ok_or_else(|| (p.to_string(), "private_key is required".to_string()))?;
            Some((chain, key))
        }
        _ => return Err(("tls_certificates[1]".to_string(), "one certificate per TLS context is supported".to_string())),
    };
    let trusted_ca = match validation_context {
        Some(CertificateValidationContext {
            trusted_ca,
            match_typed_subject_alt_names,
            verify_certificate_spki,
            verify_certificate_hash,
            crl,
            allow_expired_certificate,
            trust_chain_verification,
        }) => {
            for refused in [match_typed_subject_alt_names, verify_certificate_spki, verify_certificate_hash, crl, allow_expired_certificate] {
                refused_at_load(refused);
            }
            match trust_chain_verification {
                None | Some(TrustChainVerification::VerifyTrustChain) => {}
                Some(TrustChainVerification::AcceptUntrusted) => {
                    return Err((
                        "validation_context.trust_chain_verification".to_string(),
                        "ACCEPT_UNTRUSTED is not supported by sluice".to_string(),
                    ))
                }
            }
            trusted_ca.as_ref()
        }
        None => None,
    };
    Ok(CommonTls {
        versions,
        provider,
        certificate,
        trusted_ca,
        alpn_protocols: alpn_protocols.iter().map(|p| p.as_bytes().to_vec()).collect(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Load PEM certificates from a DataSource.
pub fn load_certs(ds: &DataSource) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = crate::data_source::load(ds)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// Load a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) from a DataSource.
pub fn load_key(ds: &DataSource) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = crate::data_source::load(ds)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| format!("invalid PEM private key: {e}"))
}

pub(crate) fn versions(min: Option<TlsProtocol>, max: Option<TlsProtocol>) -> Vec<&'static rustls::SupportedProtocolVersion> {
    // Envoy's server default: TLS 1.2 .. 1.3. rustls supports nothing older.
    let min = min.filter(|v| *v != TlsProtocol::Auto).unwrap_or(TlsProtocol::V1_2);
    let max = max.filter(|v| *v != TlsProtocol::Auto).unwrap_or(TlsProtocol::V1_3);
    let mut out = Vec::new();
    if min <= TlsProtocol::V1_2 && max >= TlsProtocol::V1_2 {
        out.push(&rustls::version::TLS12);
    }
    if max >= TlsProtocol::V1_3 {
        out.push(&rustls::version::TLS13);
    }
    out
}

/// Build the rustls server config of a `DownstreamTlsContext`. Errors are (relative path, message).
pub fn downstream(ctx: &DownstreamTlsContext) -> Result<DownstreamTls, (String, String)> {
    let DownstreamTlsContext {
        common_tls_context,
        require_client_certificate,
        require_sni,
        session_timeout,
        disable_stateless_session_resumption,
        disable_stateful_session_resumption,
        session_ticket_keys,
        ocsp_staple_policy,
    } = ctx;
    for refused in [session_timeout, session_ticket_keys, ocsp_staple_policy] {
        refused_at_load(refused);
    }
    let common = self::common(common_tls_context).map_err(|(p, e)| (format!("common_tls_context.{p}"), e))?;
    let p = "common_tls_context.tls_certificates[0]";
    let (chain, key) = common
        .certificate
        .ok_or_else(|| ("common_tls_context.tls_certificates".to_string(), "a certificate is required".to_string()))?;
    let chain = load_certs(chain).map_err(|e| (format!("{p}.certificate_chain"), e))?;
    let key = load_key(key).map_err(|e| (format!("{p}.private_key"), e))?;
    let local_principal = principal(&chain[0]).unwrap_or_default();
    let builder = ServerConfig::builder_with_provider(common.provider.clone())
        .with_protocol_versions(&common.versions)
        .map_err(|e| ("common_tls_context.tls_params".to_string(), e.to_string()))?;
    let require = require_client_certificate.unwrap_or(false);
    let builder = match common.trusted_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let vpath = "common_tls_context.validation_context.trusted_ca";
            for c in load_certs(ca).map_err(|e| (vpath.to_string(), e))? {
                roots.add(c).map_err(|e| (vpath.to_string(), e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if require { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| (vpath.to_string(), e.to_string()))?)
        }
        None if require => {
            return Err((
                "require_client_certificate".to_string(),
                "requires common_tls_context.validation_context.trusted_ca".to_string(),
            ))
        }
        None => builder.with_no_client_auth(),
    };
    let certified = certified_key(chain, key).map_err(|e| (p.to_string(), e))?;
    let mut config = builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    // Session resumption as Envoy offers it: stateless (tickets) and stateful (session IDs /
    // TLS 1.3 stateful tickets), each unless disabled.
    if !*disable_stateless_session_resumption {
        config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| ("disable_stateless_session_resumption".to_string(), e.to_string()))?;
    }
    if *disable_stateful_session_resumption {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    let h2 = common.alpn_protocols.iter().any(|p| p == b"h2");
    config.alpn_protocols = common.alpn_protocols;
    Ok(DownstreamTls { config: Arc::new(config), local_principal, h2, require_sni: require_sni.unwrap_or(false) })
}

/// Pair a chain with its key. rustls' own pairing check parses the leaf with webpki, which
/// rejects X.509 v1 certificates (`openssl req -x509` without extensions makes those, the guide's
/// is one); Envoy accepts them, so that one parse failure is tolerated, a real mismatch is not.
fn certified_key(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<rustls::sign::CertifiedKey, String> {
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(ref o)))
            if format!("{o:?}").contains("UnsupportedCertVersion") =>
        {
            Ok(certified)
        }
        Err(e) => Err(format!("certificate and private key do not form a usable pair: {e}")),
    }
}

/// Envoy's certificate identity: the first URI SAN, else the first DNS SAN, else the subject in
/// RFC 2253 form (`CN=front-envoy`).
pub fn principal(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        let names = &san.value.general_names;
        if let Some(uri) = names.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        }) {
            return Some(uri);
        }
        if let Some(dns) = names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        }) {
            return Some(dns);
        }
    }
    Some(rfc2253(parsed.subject()))
}

/// RFC 2253: RDNs in reverse order, comma-separated, no spaces.
pub fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut parts = Vec::new();
    for rdn in name.iter_rdn() {
        let attrs: Vec<String> = rdn
            .iter()
            .map(|a| {
                let key = x509_parser::objects::oid2abbrev(a.attr_type(), x509_parser::objects::oid_registry())
                    .map(str::to_string)
                    .unwrap_or_else(|_| a.attr_type().to_id_string());
                let value = a.as_str().map(str::to_string).unwrap_or_default();
                format!("{key}={}", escape_rfc2253(&value))
            })
            .collect();
        parts.push(attrs.join("+"));
    }
    parts.reverse();
    parts.join(",")
}

fn escape_rfc2253(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') || (i == 0 && (c == '#' || c == ' ')) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Does an SNI name match a `server_names` entry (exact, or `*.suffix` wildcard)?
pub fn sni_matches(pattern: &str, sni: &str) -> bool {
    let sni = sni.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    if let Some(suffix) = pattern.strip_prefix('*') {
        sni.len() > suffix.len() && sni.ends_with(&suffix)
    } else {
        sni == pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(extra: serde_json::Value) -> DownstreamTlsContext {
        let pki = sluice_testkit::certs::Pki::new();
        let mut v = serde_json::json!({"common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"inline_string": pki.server_cert},
            "private_key": {"inline_string": pki.server_key}}]}});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn session_resumption_follows_the_disable_flags() {
        // Envoy's default: both stateless (tickets) and stateful resumption.
        let both = downstream(&context(serde_json::json!({}))).unwrap();
        assert!(both.config.ticketer.enabled());
        assert!(both.config.session_storage.can_cache());
        let neither = downstream(&context(serde_json::json!({
            "disable_stateless_session_resumption": true, "disable_stateful_session_resumption": true}))).unwrap();
        assert!(!neither.config.ticketer.enabled());
        assert!(!neither.config.session_storage.can_cache());
        assert!(!neither.require_sni);
        assert!(downstream(&context(serde_json::json!({"require_sni": true}))).unwrap().require_sni);
    }

    #[test]
    fn tls_params_choose_the_versions() {
        let only13 = downstream(&context(serde_json::json!({"common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3"},
            "tls_certificates": [{"certificate_chain": {"inline_string": sluice_testkit::certs::Pki::new().server_cert},
                                  "private_key": {"inline_string": "x"}}]}})));
        // The key does not parse: the certificate pairing fails, after the versions were read.
        assert!(only13.is_err());
        assert_eq!(versions(Some(TlsProtocol::V1_3), None).len(), 1);
        assert_eq!(versions(None, None).len(), 2);
        assert_eq!(versions(None, Some(TlsProtocol::V1_2)).len(), 1);
    }

    #[test]
    fn cipher_suites_and_curves_choose_the_provider() {
        let p = crypto_provider(&["[ECDHE-ECDSA-AES256-GCM-SHA384|ECDHE-RSA-AES128-GCM-SHA256]".into()], &["P-256".into()]).unwrap();
        let tls12: Vec<String> = p.cipher_suites.iter().filter(|s| s.tls13().is_none()).map(|s| format!("{:?}", s.suite())).collect();
        assert_eq!(tls12, ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]);
        assert_eq!(p.cipher_suites.iter().filter(|s| s.tls13().is_some()).count(), 3, "TLS 1.3 suites stay");
        assert_eq!(p.kx_groups.len(), 1);
        let (path, e) = crypto_provider(&["ECDHE-RSA-AES128-GCM-SHA256".into(), "AES128-SHA".into()], &[]).unwrap_err();
        assert_eq!(path, "cipher_suites[1]");
        assert!(e.contains("not supported by sluice"), "{e}");
        assert_eq!(crypto_provider(&[], &["P-521".into()]).unwrap_err().0, "ecdh_curves[0]");
        // Unset: rustls' defaults.
        let d = crypto_provider(&[], &[]).unwrap();
        assert_eq!(d.cipher_suites.len(), rustls::crypto::ring::default_provider().cipher_suites.len());
    }

    #[test]
    fn sni_wildcards() {
        assert!(sni_matches("a.test", "A.test"));
        assert!(sni_matches("*.test", "x.test"));
        assert!(!sni_matches("*.test", "test"));
        assert!(!sni_matches("a.test", "b.test"));
    }
}
