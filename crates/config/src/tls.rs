//! `envoy.extensions.transport_sockets.tls.v3`.

use serde::{Deserialize, Serialize};

use crate::core::DataSource;
use crate::de::NotSupported;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamTlsContext {
    #[serde(default)]
    pub common_tls_context: CommonTlsContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_client_certificate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_sni: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timeout: Option<NotSupported>,
    #[serde(default)]
    pub disable_stateless_session_resumption: bool,
    #[serde(default)]
    pub disable_stateful_session_resumption: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_ticket_keys: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_staple_policy: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsContext {
    #[serde(default)]
    pub common_tls_context: CommonTlsContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_renegotiation: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_session_keys: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommonTlsContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_params: Option<TlsParameters>,
    #[serde(default)]
    pub tls_certificates: Vec<TlsCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_context: Option<CertificateValidationContext>,
    #[serde(default)]
    pub alpn_protocols: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate_sds_secret_configs: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_context_sds_secret_config: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub combined_validation_context: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate_provider_instance: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_minimum_protocol_version: Option<TlsProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_maximum_protocol_version: Option<TlsProtocol>,
    /// TLS 1.2 cipher suites by OpenSSL name (`[A|B]` groups allowed); TLS 1.3's are fixed.
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    /// Key-exchange groups: `X25519`, `P-256`, `P-384`.
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_algorithms: Option<NotSupported>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
pub enum TlsProtocol {
    #[serde(rename = "TLS_AUTO")]
    Auto,
    #[serde(rename = "TLSv1_0")]
    V1_0,
    #[serde(rename = "TLSv1_1")]
    V1_1,
    #[serde(rename = "TLSv1_2")]
    V1_2,
    #[serde(rename = "TLSv1_3")]
    V1_3,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_chain: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ocsp_staple: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_provider: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched_directory: Option<NotSupported>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateValidationContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<DataSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_typed_subject_alt_names: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_certificate_spki: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_certificate_hash: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_expired_certificate: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_chain_verification: Option<TrustChainVerification>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrustChainVerification {
    VerifyTrustChain,
    AcceptUntrusted,
}
