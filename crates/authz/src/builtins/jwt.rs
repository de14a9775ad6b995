//! `io.jwt.*`: OPA's JSON Web Token builtins (JWS compact serialization), with the signature
//! primitives of `jsonwebtoken` (RustCrypto backend) and `p521` for ES512, which
//! `jsonwebtoken` lacks.
//!
//! Semantics follow OPA: verification keys are a PEM certificate, a PEM public key, a JWK or a
//! JWK set (keys with an `alg` are only tried for tokens of that `alg`; a `kid` in the token
//! selects the key with that id); `verify_*` answer false for a signature that does not verify
//! and fail (a builtin error) for a malformed token or key; `decode_verify` answers
//! `[false, {}, {}]` for a token that does not meet its constraints.

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use regorus::Value;
use serde_json::Value as Json;

use super::args::{string, type_name};
use super::Def;
use crate::decision_log::value_json;

pub(crate) fn defs(v: &mut Vec<Def>) {
    v.push(Def { name: "io.jwt.decode", arity: 1, f: decode });
    v.push(Def { name: "io.jwt.decode_verify", arity: 2, f: decode_verify });
    v.push(Def { name: "io.jwt.encode_sign", arity: 3, f: encode_sign });
    v.push(Def { name: "io.jwt.encode_sign_raw", arity: 3, f: encode_sign_raw });
    v.push(Def { name: "io.jwt.verify_hs256", arity: 2, f: |a| verify_with(a, "HS256") });
    v.push(Def { name: "io.jwt.verify_hs384", arity: 2, f: |a| verify_with(a, "HS384") });
    v.push(Def { name: "io.jwt.verify_hs512", arity: 2, f: |a| verify_with(a, "HS512") });
    v.push(Def { name: "io.jwt.verify_rs256", arity: 2, f: |a| verify_with(a, "RS256") });
    v.push(Def { name: "io.jwt.verify_rs384", arity: 2, f: |a| verify_with(a, "RS384") });
    v.push(Def { name: "io.jwt.verify_rs512", arity: 2, f: |a| verify_with(a, "RS512") });
    v.push(Def { name: "io.jwt.verify_ps256", arity: 2, f: |a| verify_with(a, "PS256") });
    v.push(Def { name: "io.jwt.verify_ps384", arity: 2, f: |a| verify_with(a, "PS384") });
    v.push(Def { name: "io.jwt.verify_ps512", arity: 2, f: |a| verify_with(a, "PS512") });
    v.push(Def { name: "io.jwt.verify_es256", arity: 2, f: |a| verify_with(a, "ES256") });
    v.push(Def { name: "io.jwt.verify_es384", arity: 2, f: |a| verify_with(a, "ES384") });
    v.push(Def { name: "io.jwt.verify_es512", arity: 2, f: |a| verify_with(a, "ES512") });
    v.push(Def { name: "io.jwt.verify_eddsa", arity: 2, f: |a| verify_with(a, "EdDSA") });
}

const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "EdDSA",
];

/// base64url with or without padding (OPA's `base64url.decode`).
fn b64url(s: &str) -> Result<Vec<u8>> {
    let t = s.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .map_err(|_| anyhow!("illegal base64url string: {s}"))
}

fn b64url_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The three encoded parts of a compact JWS.
struct Token<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn split(jwt: &str) -> Result<Token<'_>> {
    if !jwt.contains('.') {
        bail!("encoded JWT had no period separators");
    }
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        bail!("encoded JWT must have 3 sections, found {}", parts.len());
    }
    Ok(Token { header: parts[0], payload: parts[1], signature: parts[2] })
}

fn json_object(text: &[u8], what: &str) -> Result<serde_json::Map<String, Json>> {
    match serde_json::from_slice::<Json>(text) {
        Ok(Json::Object(o)) => Ok(o),
        Ok(_) => bail!("{what} must be a JSON object"),
        Err(e) => bail!("{what} is not valid JSON: {e}"),
    }
}

impl Token<'_> {
    fn header(&self) -> Result<serde_json::Map<String, Json>> {
        let raw = b64url(self.header).map_err(|e| anyhow!("JWT header had invalid encoding: {e}"))?;
        let h = json_object(&raw, "JWT header")?;
        if h.contains_key("enc") {
            bail!("JWT is a JWE object, which is not supported");
        }
        Ok(h)
    }

    fn payload_bytes(&self) -> Result<Vec<u8>> {
        b64url(self.payload).map_err(|e| anyhow!("JWT payload had invalid encoding: {e}"))
    }

    fn signature(&self) -> Result<Vec<u8>> {
        b64url(self.signature).map_err(|e| anyhow!("JWT signature had invalid encoding: {e}"))
    }

    fn signed_part(&self) -> String {
        format!("{}.{}", self.header, self.payload)
    }
}

fn to_value(j: Json) -> Value {
    Value::from(j)
}

fn decode(a: &[Value]) -> Result<Value> {
    let mut jwt = string(a, 0, "io.jwt.decode")?.to_string();
    loop {
        let t = split(&jwt)?;
        let header = t.header()?;
        let payload = t.payload_bytes()?;
        if header.get("cty").and_then(Json::as_str) == Some("JWT") {
            let inner = String::from_utf8_lossy(&payload).trim_matches(|c| c == '"' || c == '\'').to_string();
            jwt = inner;
            continue;
        }
        let payload = json_object(&payload, "JWT payload")?;
        let sig = t.signature()?;
        let hex: String = sig.iter().map(|b| format!("{b:02x}")).collect();
        return Ok(Value::from(vec![to_value(Json::Object(header)), to_value(Json::Object(payload)), Value::from(hex)]));
    }
}

/// A verification key and the algorithm it is restricted to (from a JWK's `alg`).
struct VerificationKey {
    key: PubKey,
    alg: Option<String>,
    kid: Option<String>,
}

enum PubKey {
    /// PKCS#1 `RSAPublicKey` DER, or modulus and exponent.
    Rsa(DecodingKey),
    /// Curve name and SEC1 point.
    Ec(&'static str, Vec<u8>),
    Ed(Vec<u8>),
    Oct(Vec<u8>),
}

fn pem_block(text: &str) -> Option<Result<(String, Vec<u8>)>> {
    let t = text.trim_start();
    if !t.starts_with("-----BEGIN ") {
        return None;
    }
    Some((|| {
        let first = t.lines().next().unwrap_or("");
        let label = first.trim_start_matches("-----BEGIN ").trim_end_matches("-----").to_string();
        let end = format!("-----END {label}-----");
        let Some(end_at) = t.find(&end) else { bail!("failed to extract a Key from the PEM certificate") };
        let body: String = t[first.len()..end_at].chars().filter(|c| !c.is_whitespace()).collect();
        if !t[end_at + end.len()..].trim().is_empty() {
            bail!("extra data after a PEM certificate block");
        }
        let der = base64::engine::general_purpose::STANDARD.decode(body).context("invalid PEM data")?;
        Ok((label, der))
    })())
}

fn from_spki(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<PubKey> {
    let oid = spki.algorithm.algorithm.to_id_string();
    let data = spki.subject_public_key.data.to_vec();
    match oid.as_str() {
        "1.2.840.113549.1.1.1" => Ok(PubKey::Rsa(DecodingKey::from_rsa_der(&data))),
        "1.2.840.10045.2.1" => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let name = match curve.as_str() {
                "1.2.840.10045.3.1.7" => "P-256",
                "1.3.132.0.34" => "P-384",
                "1.3.132.0.35" => "P-521",
                other => bail!("unsupported elliptic curve {other}"),
            };
            Ok(PubKey::Ec(name, data))
        }
        "1.3.101.112" => Ok(PubKey::Ed(data)),
        other => bail!("unsupported public key algorithm {other}"),
    }
}

fn jwk_field(j: &Json, name: &str) -> Result<Vec<u8>> {
    let s = j.get(name).and_then(Json::as_str).ok_or_else(|| anyhow!("JWK is missing {name}"))?;
    b64url(s)
}

fn jwk_public(j: &Json) -> Result<PubKey> {
    match j.get("kty").and_then(Json::as_str) {
        Some("RSA") => {
            let n = jwk_field(j, "n")?;
            let e = jwk_field(j, "e")?;
            Ok(PubKey::Rsa(DecodingKey::from_rsa_raw_components(&n, &e)))
        }
        Some("EC") => {
            let crv = match j.get("crv").and_then(Json::as_str) {
                Some("P-256") => "P-256",
                Some("P-384") => "P-384",
                Some("P-521") => "P-521",
                other => bail!("unsupported elliptic curve {other:?}"),
            };
            let mut point = vec![4u8];
            point.extend(jwk_field(j, "x")?);
            point.extend(jwk_field(j, "y")?);
            Ok(PubKey::Ec(crv, point))
        }
        Some("OKP") => match j.get("crv").and_then(Json::as_str) {
            Some("Ed25519") => Ok(PubKey::Ed(jwk_field(j, "x")?)),
            other => bail!("unsupported OKP curve {other:?}"),
        },
        Some("oct") => Ok(PubKey::Oct(jwk_field(j, "k")?)),
        other => bail!("unsupported JWK key type {other:?}"),
    }
}

/// The keys of a PEM certificate, PEM public key, JWK or JWK set.
fn keys_from(text: &str) -> Result<Vec<VerificationKey>> {
    if let Some(block) = pem_block(text) {
        let (label, der) = block?;
        let key = match label.as_str() {
            "CERTIFICATE" => {
                let (_, cert) = x509_parser::parse_x509_certificate(&der)
                    .map_err(|e| anyhow!("failed to parse a PEM certificate: {e}"))?;
                from_spki(cert.public_key())?
            }
            "PUBLIC KEY" => {
                use x509_parser::prelude::FromDer;
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der)
                    .map_err(|e| anyhow!("failed to parse a PEM public key: {e}"))?;
                from_spki(&spki)?
            }
            _ => bail!("failed to extract a Key from the PEM certificate"),
        };
        return Ok(vec![VerificationKey { key, alg: None, kid: None }]);
    }
    let j: Json = serde_json::from_str(text).map_err(|e| anyhow!("failed to parse a JWK key (set): {e}"))?;
    let list: Vec<Json> = match j.get("keys") {
        Some(Json::Array(keys)) => keys.clone(),
        Some(_) => bail!("failed to parse a JWK key (set): keys must be an array"),
        None => vec![j],
    };
    let mut out = Vec::new();
    for k in &list {
        let alg = k.get("alg").and_then(Json::as_str).map(str::to_string);
        if alg.as_deref().is_some_and(|a| !ALGORITHMS.contains(&a)) {
            continue;
        }
        let kid = k.get("kid").and_then(Json::as_str).map(str::to_string);
        out.push(VerificationKey { key: jwk_public(k).map_err(|e| anyhow!("failed to parse a JWK key (set): {e}"))?, alg, kid });
    }
    Ok(out)
}

fn jwt_alg(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn hmac_ok(alg: &str, secret: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    macro_rules! check {
        ($h:ty) => {{
            let Ok(mut m) = <hmac::Hmac<$h> as KeyInit>::new_from_slice(secret) else { return false };
            m.update(msg);
            m.verify_slice(sig).is_ok()
        }};
    }
    match alg {
        "HS256" => check!(sha2::Sha256),
        "HS384" => check!(sha2::Sha384),
        "HS512" => check!(sha2::Sha512),
        _ => false,
    }
}

/// Whether `sig` over `msg` verifies with `key` under `alg`; a key of the wrong type does not.
fn verify_sig(alg: &str, key: &PubKey, msg: &[u8], sig: &[u8]) -> bool {
    match (alg, key) {
        ("HS256" | "HS384" | "HS512", PubKey::Oct(secret)) => hmac_ok(alg, secret, msg, sig),
        ("ES512", PubKey::Ec("P-521", point)) => {
            use p521::ecdsa::signature::Verifier;
            let Ok(vk) = p521::ecdsa::VerifyingKey::from_sec1_bytes(point) else { return false };
            let Ok(s) = p521::ecdsa::Signature::from_slice(sig) else { return false };
            vk.verify(msg, &s).is_ok()
        }
        _ => {
            let Some(a) = jwt_alg(alg) else { return false };
            let dk = match (key, alg) {
                (PubKey::Rsa(k), "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512") => k.clone(),
                (PubKey::Ec("P-256", p), "ES256") | (PubKey::Ec("P-384", p), "ES384") => DecodingKey::from_ec_der(p),
                (PubKey::Ed(x), "EdDSA") if x.len() == 32 => DecodingKey::from_ed_der(x),
                _ => return false,
            };
            jsonwebtoken::crypto::verify(&b64url_encode(sig), msg, &dk, a).unwrap_or(false)
        }
    }
}

/// `io.jwt.verify_<alg>(jwt, key)`.
fn verify_with(a: &[Value], alg: &str) -> Result<Value> {
    let jwt = string(a, 0, "io.jwt.verify")?;
    let key = string(a, 1, "io.jwt.verify")?;
    let t = split(jwt)?;
    let msg = t.signed_part();
    if alg.starts_with("HS") {
        let sig = t.signature()?;
        return Ok(Value::Bool(hmac_ok(alg, key.as_bytes(), msg.as_bytes(), &sig)));
    }
    let keys = keys_from(key)?;
    let sig = t.signature()?;
    let header = t.header()?;
    let kid = header.get("kid").and_then(Json::as_str).unwrap_or("");
    let header_alg = header.get("alg").and_then(Json::as_str).unwrap_or("");
    if !kid.is_empty() {
        if let Some(k) = keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
            return Ok(Value::Bool(verify_sig(alg, &k.key, msg.as_bytes(), &sig)));
        }
    }
    let ok = keys.iter().any(|k| match &k.alg {
        None => verify_sig(alg, &k.key, msg.as_bytes(), &sig),
        Some(ka) => ka == header_alg && verify_sig(alg, &k.key, msg.as_bytes(), &sig),
    });
    Ok(Value::Bool(ok))
}

/// Verifies a compact JWS with `alg` and `key` (a PEM certificate or public key, a JWK or JWK
/// set, or for the HS algorithms the shared secret); `Ok(Some(payload))` when it verifies.
/// Used for bundle signatures.
pub fn verify_jws(token: &str, alg: &str, key: &str) -> Result<Option<serde_json::Map<String, Json>>> {
    let t = split(token)?;
    let header = t.header()?;
    if let Some(h) = header.get("alg").and_then(Json::as_str) {
        if h != alg {
            bail!("signature algorithm {h} does not match the expected {alg}");
        }
    }
    let sig = t.signature()?;
    let msg = t.signed_part();
    let ok = if alg.starts_with("HS") {
        hmac_ok(alg, key.as_bytes(), msg.as_bytes(), &sig)
    } else {
        keys_from(key)?.iter().any(|k| verify_sig(alg, &k.key, msg.as_bytes(), &sig))
    };
    if !ok {
        return Ok(None);
    }
    Ok(Some(json_object(&t.payload_bytes()?, "JWT payload")?))
}

/// Signs `payload` as a compact JWS with `alg` and a private JWK (tests and tooling).
pub fn sign_jws(header: &Json, payload: &Json, jwk: &Json) -> Result<String> {
    let v = encode(header.to_string().as_bytes(), payload.to_string().as_bytes(), &jwk.to_string())?;
    match v {
        Value::String(s) => Ok(s.to_string()),
        _ => bail!("unexpected signature value"),
    }
}

fn unverified() -> Value {
    Value::from(vec![Value::Bool(false), Value::new_object(), Value::new_object()])
}

fn now_ns() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as f64)
        .unwrap_or(0.0)
}

/// `io.jwt.decode_verify(jwt, constraints)`.
fn decode_verify(a: &[Value]) -> Result<Value> {
    let jwt = string(a, 0, "io.jwt.decode_verify")?.to_string();
    let c = match a.get(1) {
        Some(v @ Value::Object(_)) => value_json(v),
        Some(v) => bail!("operand 2 must be object but got {}", type_name(v)),
        None => bail!("missing operand 2"),
    };
    let c = c.as_object().cloned().unwrap_or_default();
    let (mut keys, mut secret, mut alg, mut iss, mut aud, mut time) = (None, String::new(), String::new(), String::new(), String::new(), None);
    for (k, v) in &c {
        let s = |name: &str| v.as_str().map(str::to_string).ok_or_else(|| anyhow!("{name} constraint: must be a string"));
        match k.as_str() {
            "cert" => keys = Some(keys_from(&s("cert")?)?),
            "secret" => secret = s("secret")?,
            "alg" => alg = s("alg")?,
            "iss" => iss = s("iss")?,
            "aud" => aud = s("aud")?,
            "time" => {
                let t = v.as_f64().ok_or_else(|| anyhow!("token time constraint: must be a number"))?;
                if t < 0.0 {
                    bail!("token time constraint: must not be negative");
                }
                time = Some(t);
            }
            other => bail!("unknown token validation constraint: {other}"),
        }
    }
    let n = keys.is_some() as u8 + !secret.is_empty() as u8;
    if n > 1 {
        bail!("duplicate key constraints");
    }
    if n < 1 {
        bail!("no key constraint");
    }
    let time = time.unwrap_or_else(now_ns);

    let mut token = jwt;
    let (header, payload) = loop {
        let t = split(&token)?;
        let header = t.header()?;
        let h_alg = match header.get("alg") {
            Some(Json::String(s)) => s.clone(),
            Some(_) => bail!("alg: must be a string"),
            None => String::new(),
        };
        for name in ["kid", "typ", "cty"] {
            if header.get(name).is_some_and(|v| !v.is_string()) {
                bail!("{name}: must be a string");
            }
        }
        let mut crit = Vec::new();
        if let Some(cv) = header.get("crit") {
            let Some(list) = cv.as_array() else { bail!("crit: must be a list") };
            crit = list.iter().filter_map(Json::as_str).map(str::to_string).collect();
            if crit.is_empty() {
                bail!("crit: must be a nonempty list");
            }
        }
        let known = ["alg", "kid", "typ", "cty", "crit"];
        let bad_crit = header.keys().any(|k| !known.contains(&k.as_str()) && crit.contains(k));
        if h_alg.is_empty() || bad_crit {
            return Ok(unverified());
        }
        if !alg.is_empty() && alg != h_alg {
            return Ok(unverified());
        }
        let sig = t.signature()?;
        let msg = t.signed_part();
        let kid = header.get("kid").and_then(Json::as_str).unwrap_or("");
        let ok = match &keys {
            Some(keys) => {
                if let Some(k) = (!kid.is_empty()).then(|| keys.iter().find(|k| k.kid.as_deref() == Some(kid))).flatten() {
                    verify_sig(&h_alg, &k.key, msg.as_bytes(), &sig)
                } else {
                    keys.iter().any(|k| match &k.alg {
                        None => verify_sig(&h_alg, &k.key, msg.as_bytes(), &sig),
                        Some(ka) => *ka == h_alg && verify_sig(&h_alg, &k.key, msg.as_bytes(), &sig),
                    })
                }
            }
            None => verify_sig(&h_alg, &PubKey::Oct(secret.as_bytes().to_vec()), msg.as_bytes(), &sig),
        };
        if !ok {
            return Ok(unverified());
        }
        let payload = t.payload_bytes()?;
        if header.get("cty").and_then(Json::as_str).is_some_and(|c| c.eq_ignore_ascii_case("JWT")) {
            token = String::from_utf8_lossy(&payload).into_owned();
            continue;
        }
        break (header, json_object(&payload, "JWT payload")?);
    };
    if !iss.is_empty() && payload.get("iss").and_then(Json::as_str) != Some(iss.as_str()) {
        return Ok(unverified());
    }
    match payload.get("aud") {
        Some(Json::String(s)) if *s == aud => {}
        Some(Json::Array(list)) if list.iter().any(|x| x.as_str() == Some(aud.as_str())) => {}
        Some(_) => return Ok(unverified()),
        None if !aud.is_empty() => return Ok(unverified()),
        None => {}
    }
    let secs = time / 1e9;
    if let Some(exp) = payload.get("exp") {
        let Some(exp) = exp.as_f64() else { bail!("exp value must be a number") };
        if secs >= exp {
            return Ok(unverified());
        }
    }
    if let Some(nbf) = payload.get("nbf") {
        let Some(nbf) = nbf.as_f64() else { bail!("nbf value must be a number") };
        if secs < nbf {
            return Ok(unverified());
        }
    }
    Ok(Value::from(vec![Value::Bool(true), to_value(Json::Object(header)), to_value(Json::Object(payload))]))
}

/// DER encoding of a PKCS#1 `RSAPrivateKey` from a JWK's fields.
fn rsa_private_der(j: &Json) -> Result<Vec<u8>> {
    fn int(bytes: &[u8]) -> Vec<u8> {
        let mut b: Vec<u8> = bytes.iter().copied().skip_while(|x| *x == 0).collect();
        if b.is_empty() || b[0] & 0x80 != 0 {
            b.insert(0, 0);
        }
        tlv(0x02, &b)
    }
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = body.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let len: Vec<u8> = n.to_be_bytes().iter().copied().skip_while(|x| *x == 0).collect();
            out.push(0x80 | len.len() as u8);
            out.extend(len);
        }
        out.extend_from_slice(body);
        out
    }
    let mut body = int(&[0]);
    for f in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
        body.extend(int(&jwk_field(j, f).map_err(|_| anyhow!("RSA JWK without {f} cannot sign"))?));
    }
    Ok(tlv(0x30, &body))
}

fn sign(alg: &str, jwk: &Json, msg: &[u8]) -> Result<Vec<u8>> {
    let kty = jwk.get("kty").and_then(Json::as_str).unwrap_or("");
    if alg == "ES512" {
        use p521::ecdsa::signature::Signer;
        let d = jwk_field(jwk, "d")?;
        let sk = p521::ecdsa::SigningKey::from_slice(&d).map_err(|e| anyhow!("invalid P-521 key: {e}"))?;
        let s: p521::ecdsa::Signature = sk.sign(msg);
        return Ok(s.to_bytes().to_vec());
    }
    let a = jwt_alg(alg).ok_or_else(|| anyhow!("unknown JWS algorithm: {alg}"))?;
    let key = match (kty, alg) {
        ("oct", "HS256" | "HS384" | "HS512") => EncodingKey::from_secret(&jwk_field(jwk, "k")?).map_err(|e| anyhow!("{e}"))?,
        ("RSA", "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512") => EncodingKey::from_rsa_der(&rsa_private_der(jwk)?),
        ("EC", "ES256") => {
            use p256::pkcs8::EncodePrivateKey;
            let sk = p256::SecretKey::from_slice(&jwk_field(jwk, "d")?).map_err(|e| anyhow!("invalid P-256 key: {e}"))?;
            EncodingKey::from_ec_der(sk.to_pkcs8_der().map_err(|e| anyhow!("{e}"))?.as_bytes())
        }
        ("EC", "ES384") => {
            use p384::pkcs8::EncodePrivateKey;
            let sk = p384::SecretKey::from_slice(&jwk_field(jwk, "d")?).map_err(|e| anyhow!("invalid P-384 key: {e}"))?;
            EncodingKey::from_ec_der(sk.to_pkcs8_der().map_err(|e| anyhow!("{e}"))?.as_bytes())
        }
        ("OKP", "EdDSA") => {
            // PKCS#8 `PrivateKeyInfo` of an Ed25519 seed (RFC 8410).
            let d = jwk_field(jwk, "d")?;
            if d.len() != 32 {
                bail!("invalid Ed25519 key");
            }
            let mut der = vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
            der.extend(d);
            EncodingKey::from_ed_der(&der)
        }
        _ => bail!("key of type {kty:?} cannot sign with {alg}"),
    };
    let s = jsonwebtoken::crypto::sign(msg, &key, a).map_err(|e| anyhow!("failed to sign: {e}"))?;
    b64url(&s)
}

fn encode(header: &[u8], payload: &[u8], jwk_src: &str) -> Result<Value> {
    let j: Json = serde_json::from_str(jwk_src).map_err(|e| anyhow!("failed to parse JWK: {e}"))?;
    let jwk = match j.get("keys") {
        Some(Json::Array(keys)) => keys.first().cloned().ok_or_else(|| anyhow!("no keys found in JWK set"))?,
        _ => j,
    };
    let h = json_object(header, "JWT header").map_err(|e| anyhow!("missing or invalid 'alg' header: {e}"))?;
    let alg = h.get("alg").and_then(Json::as_str).ok_or_else(|| anyhow!("missing or invalid 'alg' header"))?;
    if !ALGORITHMS.contains(&alg) {
        bail!("unknown JWS algorithm: {alg}");
    }
    let typ = h.get("typ").and_then(Json::as_str);
    if (typ.is_none() || typ == Some("JWT")) && serde_json::from_slice::<Json>(payload).is_err() {
        bail!("type is JWT but payload is not JSON");
    }
    let msg = format!("{}.{}", b64url_encode(header), b64url_encode(payload));
    let sig = sign(alg, &jwk, msg.as_bytes())?;
    Ok(Value::from(format!("{msg}.{}", b64url_encode(&sig))))
}

/// Go's `json.Marshal` of a JSON value (sorted keys, `<`, `>`, `&` escaped).
fn go_json(v: &Value) -> Vec<u8> {
    fn sorted(j: Json) -> Json {
        match j {
            Json::Object(o) => {
                let mut items: Vec<(String, Json)> = o.into_iter().collect();
                items.sort_by(|a, b| a.0.cmp(&b.0));
                Json::Object(items.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Json::Array(a) => Json::Array(a.into_iter().map(sorted).collect()),
            x => x,
        }
    }
    let text = serde_json::to_string(&sorted(value_json(v))).unwrap_or_default();
    text.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026").into_bytes()
}

fn encode_sign(a: &[Value]) -> Result<Value> {
    for (i, v) in a.iter().enumerate() {
        if !matches!(v, Value::Object(_)) {
            bail!("operand {} must be object but got {}", i + 1, type_name(v));
        }
    }
    let key = String::from_utf8(go_json(&a[2]))?;
    encode(&go_json(&a[0]), &go_json(&a[1]), &key)
}

fn encode_sign_raw(a: &[Value]) -> Result<Value> {
    let h = string(a, 0, "io.jwt.encode_sign_raw")?;
    let p = string(a, 1, "io.jwt.encode_sign_raw")?;
    let k = string(a, 2, "io.jwt.encode_sign_raw")?;
    encode(h.as_bytes(), p.as_bytes(), k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::from(x)
    }

    #[test]
    fn hs256_round_trip_and_rejections() {
        let key = r#"{"kty":"oct","k":"c2VjcmV0"}"#; // "secret"
        let tok = encode_sign_raw(&[s(r#"{"alg":"HS256","typ":"JWT"}"#), s(r#"{"iss":"me","aud":"you","exp":2000000000}"#), s(key)]).unwrap();
        let Value::String(t) = &tok else { panic!() };
        assert_eq!(verify_with(&[tok.clone(), s("secret")], "HS256").unwrap(), Value::Bool(true));
        assert_eq!(verify_with(&[tok.clone(), s("other")], "HS256").unwrap(), Value::Bool(false));
        let c = |extra: &str| Value::from(serde_json::from_str::<Json>(&format!(r#"{{"secret":"secret"{extra}}}"#)).unwrap());
        let ok = decode_verify(&[tok.clone(), c(r#","aud":"you","time":1e18"#)]).unwrap();
        assert_eq!(ok.as_array().unwrap()[0], Value::Bool(true));
        // wrong audience, missing audience, expired, wrong issuer → [false, {}, {}]
        for extra in [r#","aud":"them""#, "", r#","aud":"you","time":3e18"#, r#","aud":"you","iss":"x""#] {
            assert_eq!(decode_verify(&[tok.clone(), c(extra)]).unwrap(), unverified(), "{extra}");
        }
        assert!(decode_verify(&[tok.clone(), c(r#","bogus":1"#)]).is_err());
        // a flipped signature byte
        let mut bad = t.to_string();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(verify_with(&[s(&bad), s("secret")], "HS256").unwrap(), Value::Bool(false));
        assert!(decode(&[s("a.b")]).is_err());
    }
}
