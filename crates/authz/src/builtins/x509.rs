//! `crypto.x509.*` and `crypto.parse_private_keys`: certificates, certificate requests and
//! private keys in the JSON shape OPA returns, which is Go's `encoding/json` rendering of
//! `x509.Certificate`, `x509.CertificateRequest`, `tls.Certificate` and the `crypto` key types
//! (field names in Go's capitalisation, byte slices in standard base64, big integers as numbers,
//! nil slices as `null`, object identifiers as arrays of integers).
//!
//! Parsing is sluice's own DER reader ([`super::der`]); signatures of
//! `parse_and_verify_certificates` are checked with `ring`.
//!
//! Integers wider than 64 bits (RSA moduli, EC coordinates, long serial numbers) are exact
//! regorus big integers: comparisons, arithmetic and `sprintf("%d")` match OPA, but regorus
//! cannot write them as JSON numbers (serde_json is built without `arbitrary_precision`), so
//! `json.marshal` of such a value is an error in sluice where OPA prints the digits.
//!
//! Known limits: DSA public keys are returned as `null`
//! (Go returns their parameters); `URIs` follow Go's `url.Parse` for the usual
//! `scheme://[user@]host/path?query#fragment` and `scheme:opaque` forms, with `RawPath` and
//! `RawFragment` set when the text has percent escapes that differ from Go's default escaping.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{anyhow, bail, Result};
use base64::Engine as _;
use num_bigint::{BigInt, Sign};
use regorus::Value;

use super::args::{string, type_name};
use super::der::{self, Tlv};
use super::Def;

pub(crate) fn defs(v: &mut Vec<Def>) {
    v.push(Def { name: "crypto.x509.parse_certificates", arity: 1, f: parse_certificates });
    v.push(Def { name: "crypto.x509.parse_and_verify_certificates", arity: 1, f: parse_and_verify });
    v.push(Def { name: "crypto.x509.parse_and_verify_certificates_with_options", arity: 2, f: parse_and_verify_with_options });
    v.push(Def { name: "crypto.x509.parse_certificate_request", arity: 1, f: parse_certificate_request });
    v.push(Def { name: "crypto.x509.parse_keypair", arity: 2, f: parse_keypair });
    v.push(Def { name: "crypto.x509.parse_rsa_private_key", arity: 1, f: parse_rsa_private_key });
    v.push(Def { name: "crypto.parse_private_keys", arity: 1, f: parse_private_keys });
}

/// Most input accepted by these builtins (1 MiB of text).
const MAX_INPUT: usize = 1 << 20;

// ---------------------------------------------------------------- values

type Obj = BTreeMap<Value, Value>;

fn obj(fields: Vec<(&str, Value)>) -> Value {
    Value::from(fields.into_iter().map(|(k, v)| (Value::from(k), v)).collect::<Obj>())
}

fn b64(b: &[u8]) -> Value {
    Value::from(base64::engine::general_purpose::STANDARD.encode(b))
}

fn b64_or_null(b: Option<&[u8]>) -> Value {
    b.map(b64).unwrap_or(Value::Null)
}

fn big(magnitude: &[u8]) -> Value {
    bigint(&BigInt::from_bytes_be(Sign::Plus, magnitude))
}

fn bigint(n: &BigInt) -> Value {
    Value::from_numeric_string(&n.to_string()).unwrap_or(Value::Null)
}

fn int(i: i64) -> Value {
    Value::from(i)
}

/// Go's nil slice (`null`) when empty.
fn list(v: Vec<Value>) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        Value::from(v)
    }
}

fn strings(v: &[String]) -> Value {
    list(v.iter().map(|s| Value::from(s.as_str())).collect())
}

fn oid_value(arcs: &[u64]) -> Value {
    Value::from(arcs.iter().map(|a| Value::from(*a)).collect::<Vec<_>>())
}

// ---------------------------------------------------------------- input decoding

/// One PEM block: its label and decoded bytes, and the text after it.
fn pem_decode(text: &[u8]) -> Option<(String, Vec<u8>, &[u8])> {
    let s = std::str::from_utf8(text).ok().or_else(|| {
        // Non-UTF-8 text: only an ASCII prefix can hold a PEM block.
        let end = text.iter().position(|b| !b.is_ascii()).unwrap_or(text.len());
        std::str::from_utf8(&text[..end]).ok()
    })?;
    let mut from = 0;
    loop {
        let at = from + s[from..].find("-----BEGIN ")?;
        // The BEGIN line must start a line.
        if at > 0 && !s[..at].ends_with('\n') {
            from = at + 11;
            continue;
        }
        let line_end = s[at..].find('\n').map(|i| at + i).unwrap_or(s.len());
        let line = s[at..line_end].trim_end();
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            from = at + 11;
            continue;
        };
        let end_marker = format!("-----END {label}-----");
        let Some(end_at) = s[line_end..].find(&end_marker).map(|i| line_end + i) else {
            from = at + 11;
            continue;
        };
        let body = &s[line_end..end_at];
        let mut b64text = String::new();
        let mut headers_done = !body.contains(':');
        for l in body.lines() {
            let l = l.trim();
            if !headers_done {
                if l.is_empty() {
                    headers_done = true;
                }
                if l.contains(':') || l.is_empty() {
                    continue;
                }
                headers_done = true;
            }
            b64text.push_str(l);
        }
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64text.as_bytes()) else {
            from = at + 11;
            continue;
        };
        let mut rest_at = end_at + end_marker.len();
        if s[rest_at..].starts_with("\r\n") {
            rest_at += 2;
        } else if s[rest_at..].starts_with('\n') {
            rest_at += 1;
        }
        return Some((label.to_string(), bytes, &text[rest_at..]));
    }
}

fn std_b64(s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map_err(|e| anyhow!("illegal base64 data: {e}"))
}

fn input<'a>(a: &'a [Value], i: usize, name: &str) -> Result<&'a str> {
    let s = string(a, i, name)?;
    if s.len() > MAX_INPUT {
        return Err(super::LimitExceeded(format!("{name}: input of {} bytes is larger than sluice's limit of {MAX_INPUT}", s.len())).into());
    }
    Ok(s)
}

/// OPA's reading of a certificate operand: PEM, or base64 of PEM or of DER.
fn cert_ders(text: &str) -> Result<Vec<u8>> {
    let bytes = if text.starts_with("-----BEGIN") {
        text.as_bytes().to_vec()
    } else {
        let b = std_b64(text)?;
        if !b.starts_with(b"-----BEGIN") {
            return Ok(b);
        }
        b
    };
    let mut der = Vec::new();
    let mut rest: &[u8] = &bytes;
    while !rest.is_empty() {
        let Some((label, b, r)) = pem_decode(rest) else { break };
        if label != "CERTIFICATE" {
            bail!("PEM block type is '{label}', expected CERTIFICATE");
        }
        der.extend_from_slice(&b);
        rest = r;
    }
    Ok(der)
}

// ---------------------------------------------------------------- certificates

/// A parsed certificate: its Go JSON object and what verification needs.
pub(crate) struct Cert {
    pub json: Obj,
    raw_subject: Vec<u8>,
    raw_issuer: Vec<u8>,
    tbs: Vec<u8>,
    sig_alg: i64,
    signature: Vec<u8>,
    spki_alg: i64,
    spki_key: Vec<u8>,
    ec_curve: Option<&'static str>,
    not_before: i64,
    not_after: i64,
    is_ca: bool,
    basic_valid: bool,
    max_path_len: i64,
    ext_key_usage: Vec<i64>,
    has_eku: bool,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    emails: Vec<String>,
    uris: Vec<String>,
    common_name: String,
    constraints: Constraints,
}

/// Name constraints of a CA certificate, as Go checks them against a leaf.
#[derive(Default, Clone)]
struct Constraints {
    permitted_dns: Vec<String>,
    excluded_dns: Vec<String>,
    permitted_ip: Vec<(Vec<u8>, Vec<u8>)>,
    excluded_ip: Vec<(Vec<u8>, Vec<u8>)>,
    permitted_email: Vec<String>,
    excluded_email: Vec<String>,
    permitted_uri: Vec<String>,
    excluded_uri: Vec<String>,
}

fn parse_der_certs(mut der: &[u8]) -> Result<Vec<Cert>> {
    let mut out = Vec::new();
    while !der.is_empty() {
        if out.len() >= 1000 {
            return Err(super::LimitExceeded("crypto.x509: more than 1000 certificates".into()).into());
        }
        let (t, rest) = der::expect(der, der::SEQUENCE, "certificate")?;
        out.push(parse_cert(t)?);
        der = rest;
    }
    Ok(out)
}

fn parse_cert(cert: Tlv<'_>) -> Result<Cert> {
    let parts = der::items(cert.value)?;
    let [tbs, sig_alg, sig] = parts.as_slice() else { bail!("x509: malformed certificate") };
    if tbs.tag != der::SEQUENCE || sig_alg.tag != der::SEQUENCE || sig.tag != der::BIT_STRING {
        bail!("x509: malformed certificate");
    }
    let mut f = der::items(tbs.value)?.into_iter().peekable();
    let mut version = 0;
    if let Some(v) = f.peek().filter(|t| t.tag == 0xa0) {
        let (vi, _) = der::expect(v.value, der::INTEGER, "version")?;
        version = der::small_int(vi.value)?;
        f.next();
    }
    if !(0..=2).contains(&version) {
        bail!("x509: invalid version");
    }
    let mut next = |what: &str, tag: u8| -> Result<Tlv<'_>> {
        let t = f.next().ok_or_else(|| anyhow!("x509: malformed tbs certificate: missing {what}"))?;
        if t.tag != tag {
            bail!("x509: malformed {what}");
        }
        Ok(t)
    };
    let serial = next("serial number", der::INTEGER)?;
    let inner_alg = next("signature algorithm", der::SEQUENCE)?;
    let issuer = next("issuer", der::SEQUENCE)?;
    let validity = next("validity", der::SEQUENCE)?;
    let subject = next("subject", der::SEQUENCE)?;
    let spki = next("subject public key info", der::SEQUENCE)?;
    let mut extensions = None;
    for t in f {
        match t.tag {
            0x81 | 0x82 | 0xa1 | 0xa2 => {}
            0xa3 => {
                if version != 2 {
                    bail!("x509: extensions present in a version {} certificate", version + 1);
                }
                extensions = Some(der::expect(t.value, der::SEQUENCE, "extensions")?.0);
            }
            _ => bail!("x509: malformed tbs certificate"),
        }
    }
    if inner_alg.raw != sig_alg.raw {
        bail!("x509: inner and outer signature algorithm identifiers don't match");
    }
    let sig_algorithm = signature_algorithm(sig_alg.value)?;
    let (sig_bytes, _) = der::bit_string(sig.value)?;
    let serial_value = {
        let v = serial.value;
        if v.is_empty() {
            bail!("x509: malformed serial number");
        }
        // Go keeps negative serials (with a warning); the sign is kept here too.
        if v[0] & 0x80 != 0 {
            bigint(&BigInt::from_signed_bytes_be(v))
        } else {
            big(v)
        }
    };
    let (issuer_name, _) = name(issuer)?;
    let (subject_name, cn) = name(subject)?;
    let times = der::items(validity.value)?;
    let [nb, na] = times.as_slice() else { bail!("x509: malformed validity") };
    let (not_before, nb_text) = time(nb)?;
    let (not_after, na_text) = time(na)?;
    let pk = public_key(spki)?;

    let mut j: Obj = Obj::new();
    let mut set = |k: &str, v: Value| {
        j.insert(Value::from(k), v);
    };
    set("Raw", b64(cert.raw));
    set("RawTBSCertificate", b64(tbs.raw));
    set("RawSubjectPublicKeyInfo", b64(spki.raw));
    set("RawSubject", b64(subject.raw));
    set("RawIssuer", b64(issuer.raw));
    set("Signature", b64(sig_bytes));
    set("SignatureAlgorithm", int(sig_algorithm));
    set("PublicKeyAlgorithm", int(pk.algorithm));
    set("PublicKey", pk.json.clone());
    set("Version", int(version + 1));
    set("SerialNumber", serial_value);
    set("Issuer", issuer_name);
    set("Subject", subject_name);
    set("NotBefore", Value::from(nb_text));
    set("NotAfter", Value::from(na_text));
    set("ExtraExtensions", Value::Null);

    let mut ext = Extensions::default();
    if let Some(e) = extensions {
        ext.parse(e)?;
    }
    ext.write(&mut j);

    Ok(Cert {
        json: j,
        raw_subject: subject.raw.to_vec(),
        raw_issuer: issuer.raw.to_vec(),
        tbs: tbs.raw.to_vec(),
        sig_alg: sig_algorithm,
        signature: sig_bytes.to_vec(),
        spki_alg: pk.algorithm,
        spki_key: pk.key_bytes,
        ec_curve: pk.curve,
        not_before,
        not_after,
        is_ca: ext.is_ca,
        basic_valid: ext.basic_constraints_valid,
        max_path_len: ext.max_path_len,
        ext_key_usage: ext.ext_key_usage.clone(),
        has_eku: !ext.ext_key_usage.is_empty() || !ext.unknown_eku.is_empty(),
        dns_names: ext.dns_names.clone(),
        ip_addresses: ext.ips.clone(),
        emails: ext.emails.clone(),
        uris: ext.uris.clone(),
        common_name: cn,
        constraints: ext.constraints.clone(),
    })
}

const OID_SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
const OID_SHA384: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 2];
const OID_SHA512: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 3];

/// Go's `x509.SignatureAlgorithm` number of an AlgorithmIdentifier's contents.
fn signature_algorithm(alg: &[u8]) -> Result<i64> {
    let (o, rest) = der::expect(alg, der::OID, "signature algorithm")?;
    let arcs = der::oid(o.value)?;
    let rsa = |n: u64| arcs == [1, 2, 840, 113549, 1, 1, n];
    Ok(if rsa(2) {
        1
    } else if rsa(4) {
        2
    } else if rsa(5) || arcs == [1, 3, 14, 3, 2, 29] {
        3
    } else if rsa(11) {
        4
    } else if rsa(12) {
        5
    } else if rsa(13) {
        6
    } else if arcs == [1, 2, 840, 10040, 4, 3] {
        7
    } else if arcs == [2, 16, 840, 1, 101, 3, 4, 3, 2] {
        8
    } else if arcs == [1, 2, 840, 10045, 4, 1] {
        9
    } else if arcs == [1, 2, 840, 10045, 4, 3, 2] {
        10
    } else if arcs == [1, 2, 840, 10045, 4, 3, 3] {
        11
    } else if arcs == [1, 2, 840, 10045, 4, 3, 4] {
        12
    } else if rsa(10) {
        // RSASSA-PSS: the hash is in the parameters ([0] hashAlgorithm, SHA-1 by default).
        let hash = der::read(rest)
            .ok()
            .filter(|(p, _)| p.tag == der::SEQUENCE)
            .and_then(|(p, _)| der::items(p.value).ok())
            .and_then(|items| items.into_iter().find(|t| t.tag == 0xa0))
            .and_then(|h| der::expect(h.value, der::SEQUENCE, "hash").ok())
            .and_then(|(h, _)| der::expect(h.value, der::OID, "hash").ok())
            .and_then(|(o, _)| der::oid(o.value).ok());
        match hash.as_deref() {
            Some(OID_SHA256) => 13,
            Some(OID_SHA384) => 14,
            Some(OID_SHA512) => 15,
            _ => 0,
        }
    } else if arcs == [1, 3, 101, 112] {
        16
    } else {
        0
    })
}

struct PublicKey {
    algorithm: i64,
    json: Value,
    /// What ring verifies with: RSAPublicKey DER, the EC point, or the Ed25519 key.
    key_bytes: Vec<u8>,
    curve: Option<&'static str>,
}

fn curve_of(arcs: &[u64]) -> Option<(&'static str, usize)> {
    match arcs {
        [1, 2, 840, 10045, 3, 1, 7] => Some(("P-256", 32)),
        [1, 3, 132, 0, 34] => Some(("P-384", 48)),
        [1, 3, 132, 0, 35] => Some(("P-521", 66)),
        [1, 3, 132, 0, 33] => Some(("P-224", 28)),
        _ => None,
    }
}

fn rsa_public(bits: &[u8]) -> Result<Value> {
    let (seq, rest) = der::expect(bits, der::SEQUENCE, "RSA public key")?;
    if !rest.is_empty() {
        bail!("x509: trailing data after RSA public key");
    }
    let items = der::items(seq.value)?;
    let [n, e] = items.as_slice() else { bail!("x509: invalid RSA public key") };
    if n.tag != der::INTEGER || e.tag != der::INTEGER {
        bail!("x509: invalid RSA public key");
    }
    let n = der::unsigned(n.value).map_err(|_| anyhow!("x509: RSA modulus is not a positive number"))?;
    let e = der::small_int(e.value).map_err(|_| anyhow!("x509: RSA public exponent is too large"))?;
    if e <= 0 || e > i32::MAX as i64 {
        bail!("x509: RSA public exponent is not a positive number");
    }
    Ok(obj(vec![("N", big(n)), ("E", int(e))]))
}

fn public_key(spki: Tlv<'_>) -> Result<PublicKey> {
    let items = der::items(spki.value)?;
    let [alg, key] = items.as_slice() else { bail!("x509: malformed subject public key info") };
    if alg.tag != der::SEQUENCE || key.tag != der::BIT_STRING {
        bail!("x509: malformed subject public key info");
    }
    let (o, params) = der::expect(alg.value, der::OID, "public key algorithm")?;
    let arcs = der::oid(o.value)?;
    let (bits, _) = der::bit_string(key.value)?;
    match arcs.as_slice() {
        [1, 2, 840, 113549, 1, 1, 1] => {
            Ok(PublicKey { algorithm: 1, json: rsa_public(bits)?, key_bytes: bits.to_vec(), curve: None })
        }
        [1, 2, 840, 10045, 2, 1] => {
            let (c, _) = der::expect(params, der::OID, "named curve")?;
            let Some((curve, size)) = curve_of(&der::oid(c.value)?) else { bail!("x509: unsupported elliptic curve") };
            if bits.len() != 1 + 2 * size || bits[0] != 4 {
                bail!("x509: failed to unmarshal elliptic curve point");
            }
            let json = obj(vec![("Curve", obj(vec![])), ("X", big(&bits[1..1 + size])), ("Y", big(&bits[1 + size..]))]);
            Ok(PublicKey { algorithm: 3, json, key_bytes: bits.to_vec(), curve: Some(curve) })
        }
        [1, 3, 101, 112] => {
            if bits.len() != 32 {
                bail!("x509: wrong Ed25519 public key size");
            }
            Ok(PublicKey { algorithm: 4, json: b64(bits), key_bytes: bits.to_vec(), curve: None })
        }
        // DSA (2) and unknown algorithms: no key object (see the module notes for DSA).
        [1, 2, 840, 10040, 4, 1] => Ok(PublicKey { algorithm: 2, json: Value::Null, key_bytes: vec![], curve: None }),
        _ => Ok(PublicKey { algorithm: 0, json: Value::Null, key_bytes: vec![], curve: None }),
    }
}

/// An ASN.1 string value as Go's `parseASN1String` reads it.
fn asn1_string(t: &Tlv<'_>) -> Result<String> {
    match t.tag {
        0x0c | 0x13 | 0x16 | 0x12 => String::from_utf8(t.value.to_vec()).map_err(|_| anyhow!("x509: invalid string")),
        0x14 => Ok(t.value.iter().map(|b| *b as char).collect()),
        0x1e => {
            if t.value.len() % 2 != 0 {
                bail!("x509: invalid BMPString");
            }
            let units: Vec<u16> = t.value.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).map_err(|_| anyhow!("x509: invalid BMPString"))
        }
        _ => bail!("x509: unsupported string type: {}", t.tag),
    }
}

/// A Name as Go's `pkix.Name`, and its common name.
fn name(n: Tlv<'_>) -> Result<(Value, String)> {
    let mut names = Vec::new();
    let mut lists: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let (mut cn, mut serial) = (String::new(), String::new());
    for rdn in der::items(n.value)? {
        if rdn.tag != der::SET {
            bail!("x509: invalid RDNSequence");
        }
        for atv in der::items(rdn.value)? {
            if atv.tag != der::SEQUENCE {
                bail!("x509: invalid RDNSequence: invalid attribute");
            }
            let (o, rest) = der::expect(atv.value, der::OID, "attribute type")?;
            let (v, _) = der::read(rest)?;
            let arcs = der::oid(o.value)?;
            let value = asn1_string(&v)?;
            names.push(obj(vec![("Type", oid_value(&arcs)), ("Value", Value::from(value.as_str()))]));
            if let [2, 5, 4, x] = arcs.as_slice() {
                let key = match x {
                    3 => {
                        cn = value;
                        continue;
                    }
                    5 => {
                        serial = value;
                        continue;
                    }
                    6 => "Country",
                    7 => "Locality",
                    8 => "Province",
                    9 => "StreetAddress",
                    10 => "Organization",
                    11 => "OrganizationalUnit",
                    17 => "PostalCode",
                    _ => continue,
                };
                lists.entry(key).or_default().push(value);
            }
        }
    }
    let mut fields = vec![
        ("CommonName", Value::from(cn.as_str())),
        ("SerialNumber", Value::from(serial.as_str())),
        ("Names", list(names)),
        ("ExtraNames", Value::Null),
    ];
    for k in ["Country", "Organization", "OrganizationalUnit", "Locality", "Province", "StreetAddress", "PostalCode"] {
        fields.push((k, lists.get(k).map(|v| strings(v)).unwrap_or(Value::Null)));
    }
    Ok((obj(fields), cn))
}

/// Days from 1970-01-01 to a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// A UTCTime or GeneralizedTime: Unix seconds and Go's RFC 3339 text.
fn time(t: &Tlv<'_>) -> Result<(i64, String)> {
    let s = std::str::from_utf8(t.value).map_err(|_| anyhow!("x509: malformed time"))?;
    let (year, rest) = match t.tag {
        der::UTC_TIME => {
            let yy: i64 = s.get(0..2).and_then(|x| x.parse().ok()).ok_or_else(|| anyhow!("x509: malformed UTCTime"))?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &s[2..])
        }
        der::GENERALIZED_TIME => {
            let y: i64 = s.get(0..4).and_then(|x| x.parse().ok()).ok_or_else(|| anyhow!("x509: malformed GeneralizedTime"))?;
            (y, &s[4..])
        }
        _ => bail!("x509: malformed validity"),
    };
    let num = |r: std::ops::Range<usize>| -> Result<i64> {
        rest.get(r).filter(|x| x.bytes().all(|b| b.is_ascii_digit())).and_then(|x| x.parse().ok()).ok_or_else(|| anyhow!("x509: malformed time"))
    };
    let (mo, d, h, mi, se) = (num(0..2)?, num(2..4)?, num(4..6)?, num(6..8)?, num(8..10)?);
    let mut tail = &rest[10..];
    let mut frac = String::new();
    if t.tag == der::GENERALIZED_TIME && tail.starts_with('.') {
        let digits: String = tail[1..].chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() || digits.len() > 9 {
            bail!("x509: malformed GeneralizedTime");
        }
        tail = &tail[1 + digits.len()..];
        frac = digits.trim_end_matches('0').to_string();
    }
    if tail != "Z" || !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        bail!("x509: malformed time");
    }
    let secs = days_from_civil(year, mo, d) * 86400 + h * 3600 + mi * 60 + se;
    let frac = if frac.is_empty() { String::new() } else { format!(".{frac}") };
    Ok((secs, format!("{year:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}{frac}Z")))
}

/// Go's `net.IP.String()`.
fn ip_string(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let a: [u8; 16] = b.try_into().ok()?;
            let v6 = Ipv6Addr::from(a);
            Some(v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)))
        }
        _ => None,
    }
}

#[derive(Default)]
struct Extensions {
    all: Vec<Value>,
    seen: Vec<Vec<u64>>,
    unhandled: Vec<Value>,
    key_usage: i64,
    basic_constraints_valid: bool,
    is_ca: bool,
    max_path_len: i64,
    max_path_len_zero: bool,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
    ocsp: Vec<String>,
    issuing_url: Vec<String>,
    dns_names: Vec<String>,
    emails: Vec<String>,
    ips: Vec<IpAddr>,
    uris: Vec<String>,
    permitted_critical: bool,
    permitted_dns: Vec<String>,
    excluded_dns: Vec<String>,
    permitted_ip: Vec<Value>,
    excluded_ip: Vec<Value>,
    permitted_email: Vec<String>,
    excluded_email: Vec<String>,
    permitted_uri: Vec<String>,
    excluded_uri: Vec<String>,
    crl: Vec<String>,
    constraints: Constraints,
    policy_ids: Vec<Vec<u64>>,
    policy_mappings: Vec<Value>,
    ext_key_usage: Vec<i64>,
    unknown_eku: Vec<Vec<u64>>,
    inhibit_any: i64,
    inhibit_any_zero: bool,
    inhibit_mapping: i64,
    inhibit_mapping_zero: bool,
    require_explicit: i64,
    require_explicit_zero: bool,
}

/// GeneralNames of a SAN-like value: (dns, email, ip, uri) in order of appearance.
#[allow(clippy::type_complexity)]
fn general_names(v: &[u8]) -> Result<(Vec<String>, Vec<String>, Vec<IpAddr>, Vec<String>)> {
    let (seq, _) = der::expect(v, der::SEQUENCE, "general names")?;
    let (mut dns, mut email, mut ip, mut uri) = (vec![], vec![], vec![], vec![]);
    for n in der::items(seq.value)? {
        let text = || std::str::from_utf8(n.value).map(str::to_string).map_err(|_| anyhow!("x509: SAN is not valid IA5String"));
        match n.tag {
            0x81 => email.push(text()?),
            0x82 => dns.push(text()?),
            0x86 => uri.push(text()?),
            0x87 => ip.push(ip_string(n.value).ok_or_else(|| anyhow!("x509: cannot parse IP address of length {}", n.value.len()))?),
            _ => {}
        }
    }
    Ok((dns, email, ip, uri))
}

fn eku_number(arcs: &[u64]) -> Option<i64> {
    Some(match arcs {
        [2, 5, 29, 37, 0] => 0,
        [1, 3, 6, 1, 5, 5, 7, 3, n @ 1..=9] => *n as i64,
        [1, 3, 6, 1, 4, 1, 311, 10, 3, 3] => 10,
        [2, 16, 840, 1, 113730, 4, 1] => 11,
        [1, 3, 6, 1, 4, 1, 311, 2, 1, 22] => 12,
        [1, 3, 6, 1, 4, 1, 311, 61, 1, 1] => 13,
        _ => return None,
    })
}

impl Extensions {
    fn parse(&mut self, exts: Tlv<'_>) -> Result<()> {
        for e in der::items(exts.value)? {
            if e.tag != der::SEQUENCE {
                bail!("x509: malformed extension");
            }
            let (o, rest) = der::expect(e.value, der::OID, "extension OID")?;
            let id = der::oid(o.value)?;
            let (mut t, mut rest) = der::read(rest)?;
            let mut critical = false;
            if t.tag == der::BOOLEAN {
                critical = t.value.first().is_some_and(|b| *b != 0);
                (t, rest) = der::read(rest)?;
            }
            if t.tag != der::OCTET_STRING || !rest.is_empty() {
                bail!("x509: malformed extension value");
            }
            if self.seen.contains(&id) {
                bail!("x509: certificate contains duplicate extensions");
            }
            self.seen.push(id.clone());
            self.all.push(obj(vec![("Id", oid_value(&id)), ("Critical", Value::Bool(critical)), ("Value", b64(t.value))]));
            let handled = self.one(&id, critical, t.value)?;
            if critical && !handled {
                self.unhandled.push(oid_value(&id));
            }
        }
        Ok(())
    }

    /// Reads one extension; false when Go leaves it unhandled.
    fn one(&mut self, id: &[u64], critical: bool, v: &[u8]) -> Result<bool> {
        match id {
            [2, 5, 29, 15] => {
                let (bs, _) = der::expect(v, der::BIT_STRING, "key usage")?;
                let (bits, _) = der::bit_string(bs.value)?;
                let mut usage = 0;
                for i in 0..9 {
                    if bits.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0) {
                        usage |= 1 << i;
                    }
                }
                self.key_usage = usage;
            }
            [2, 5, 29, 19] => {
                let (seq, _) = der::expect(v, der::SEQUENCE, "basic constraints")?;
                let mut items = der::items(seq.value)?.into_iter().peekable();
                self.basic_constraints_valid = true;
                if let Some(b) = items.peek().filter(|t| t.tag == der::BOOLEAN) {
                    self.is_ca = b.value.first().is_some_and(|x| *x != 0);
                    items.next();
                }
                self.max_path_len = -1;
                if let Some(n) = items.next().filter(|t| t.tag == der::INTEGER) {
                    self.max_path_len = der::small_int(n.value)?;
                    self.max_path_len_zero = self.max_path_len == 0;
                }
            }
            [2, 5, 29, 17] => {
                let (d, e, i, u) = general_names(v)?;
                for s in &u {
                    parse_url(s).map_err(|_| anyhow!("x509: cannot parse URI {s:?}"))?;
                }
                let empty = d.is_empty() && e.is_empty() && i.is_empty() && u.is_empty();
                (self.dns_names, self.emails, self.ips, self.uris) = (d, e, i, u);
                return Ok(!empty);
            }
            [2, 5, 29, 30] => {
                self.permitted_critical = critical;
                let (seq, _) = der::expect(v, der::SEQUENCE, "name constraints")?;
                for sub in der::items(seq.value)? {
                    let permitted = match sub.tag {
                        0xa0 => true,
                        0xa1 => false,
                        _ => bail!("x509: invalid NameConstraints extension"),
                    };
                    for st in der::items(sub.value)? {
                        let (base, _) = der::read(st.value)?;
                        let text = || std::str::from_utf8(base.value).map(str::to_string).map_err(|_| anyhow!("x509: invalid constraint"));
                        match base.tag {
                            0x82 => {
                                let t = text()?;
                                (if permitted { &mut self.constraints.permitted_dns } else { &mut self.constraints.excluded_dns }).push(t.clone());
                                (if permitted { &mut self.permitted_dns } else { &mut self.excluded_dns }).push(t);
                            }
                            0x81 => {
                                let t = text()?;
                                (if permitted { &mut self.constraints.permitted_email } else { &mut self.constraints.excluded_email }).push(t.clone());
                                (if permitted { &mut self.permitted_email } else { &mut self.excluded_email }).push(t);
                            }
                            0x86 => {
                                let t = text()?;
                                (if permitted { &mut self.constraints.permitted_uri } else { &mut self.constraints.excluded_uri }).push(t.clone());
                                (if permitted { &mut self.permitted_uri } else { &mut self.excluded_uri }).push(t);
                            }
                            0x87 => {
                                let n = base.value.len() / 2;
                                if base.value.len() != 8 && base.value.len() != 32 {
                                    bail!("x509: IP constraint contained value of length {}", base.value.len());
                                }
                                let ip = ip_string(&base.value[..n]).map(|i| i.to_string()).unwrap_or_default();
                                let net = obj(vec![("IP", Value::from(ip)), ("Mask", b64(&base.value[n..]))]);
                                (if permitted { &mut self.permitted_ip } else { &mut self.excluded_ip }).push(net);
                                let pair = (base.value[..n].to_vec(), base.value[n..].to_vec());
                                (if permitted { &mut self.constraints.permitted_ip } else { &mut self.constraints.excluded_ip }).push(pair);
                            }
                            _ if critical => return Ok(false),
                            _ => {}
                        }
                    }
                }
            }
            [2, 5, 29, 31] => {
                let (seq, _) = der::expect(v, der::SEQUENCE, "CRL distribution points")?;
                for dp in der::items(seq.value)? {
                    for part in der::items(dp.value)? {
                        if part.tag != 0xa0 {
                            continue;
                        }
                        for full in der::items(part.value)? {
                            if full.tag != 0xa0 {
                                continue;
                            }
                            for n in der::items(full.value)? {
                                if n.tag == 0x86 {
                                    self.crl.push(String::from_utf8_lossy(n.value).into_owned());
                                }
                            }
                        }
                    }
                }
            }
            [2, 5, 29, 35] => {
                let (seq, _) = der::expect(v, der::SEQUENCE, "authority key identifier")?;
                for t in der::items(seq.value)? {
                    if t.tag == 0x80 {
                        self.authority_key_id = Some(t.value.to_vec());
                    }
                }
            }
            [2, 5, 29, 37] => {
                let (seq, _) = der::expect(v, der::SEQUENCE, "extended key usage")?;
                for t in der::items(seq.value)? {
                    if t.tag != der::OID {
                        bail!("x509: invalid extended key usages");
                    }
                    let arcs = der::oid(t.value)?;
                    match eku_number(&arcs) {
                        Some(n) => self.ext_key_usage.push(n),
                        None => self.unknown_eku.push(arcs),
                    }
                }
            }
            [2, 5, 29, 14] => {
                let (k, _) = der::expect(v, der::OCTET_STRING, "subject key identifier")?;
                self.subject_key_id = Some(k.value.to_vec());
            }
            [2, 5, 29, 32] => {
                let (seq, _) = der::expect(v, der::SEQUENCE, "certificate policies")?;
                for p in der::items(seq.value)? {
                    let (o, _) = der::expect(p.value, der::OID, "policy identifier")?;
                    self.policy_ids.push(der::oid(o.value)?);
                }
            }
            [2, 5, 29, 33] => {
                let (seq, _) = der::expect(v, der::SEQUENCE, "policy mappings")?;
                for m in der::items(seq.value)? {
                    let (a, rest) = der::expect(m.value, der::OID, "issuer domain policy")?;
                    let (b, _) = der::expect(rest, der::OID, "subject domain policy")?;
                    self.policy_mappings.push(obj(vec![
                        ("IssuerDomainPolicy", Value::from(der::oid_string(&der::oid(a.value)?))),
                        ("SubjectDomainPolicy", Value::from(der::oid_string(&der::oid(b.value)?))),
                    ]));
                }
            }
            [2, 5, 29, 36] => {
                let (seq, _) = der::expect(v, der::SEQUENCE, "policy constraints")?;
                for t in der::items(seq.value)? {
                    let n = der::small_int(t.value)?;
                    match t.tag {
                        0x80 => (self.require_explicit, self.require_explicit_zero) = (n, n == 0),
                        0x81 => (self.inhibit_mapping, self.inhibit_mapping_zero) = (n, n == 0),
                        _ => bail!("x509: invalid policy constraints extension"),
                    }
                }
            }
            [2, 5, 29, 54] => {
                let (n, _) = der::expect(v, der::INTEGER, "inhibit any policy")?;
                self.inhibit_any = der::small_int(n.value)?;
                self.inhibit_any_zero = self.inhibit_any == 0;
            }
            [1, 3, 6, 1, 5, 5, 7, 1, 1] => {
                let (seq, _) = der::expect(v, der::SEQUENCE, "authority info access")?;
                for ad in der::items(seq.value)? {
                    let (m, rest) = der::expect(ad.value, der::OID, "access method")?;
                    let (loc, _) = der::read(rest)?;
                    if loc.tag != 0x86 {
                        continue;
                    }
                    let url = String::from_utf8_lossy(loc.value).into_owned();
                    match der::oid(m.value)?.as_slice() {
                        [1, 3, 6, 1, 5, 5, 7, 48, 1] => self.ocsp.push(url),
                        [1, 3, 6, 1, 5, 5, 7, 48, 2] => self.issuing_url.push(url),
                        _ => {}
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn write(&self, j: &mut Obj) {
        let mut set = |k: &str, v: Value| {
            j.insert(Value::from(k), v);
        };
        set("Extensions", list(self.all.clone()));
        set("UnhandledCriticalExtensions", list(self.unhandled.clone()));
        set("KeyUsage", int(self.key_usage));
        set("BasicConstraintsValid", Value::Bool(self.basic_constraints_valid));
        set("IsCA", Value::Bool(self.is_ca));
        set("MaxPathLen", int(self.max_path_len));
        set("MaxPathLenZero", Value::Bool(self.max_path_len_zero));
        set("SubjectKeyId", b64_or_null(self.subject_key_id.as_deref()));
        set("AuthorityKeyId", b64_or_null(self.authority_key_id.as_deref()));
        set("OCSPServer", strings(&self.ocsp));
        set("IssuingCertificateURL", strings(&self.issuing_url));
        set("DNSNames", strings(&self.dns_names));
        set("EmailAddresses", strings(&self.emails));
        set("IPAddresses", list(self.ips.iter().map(|i| Value::from(i.to_string())).collect()));
        set("URIs", list(self.uris.iter().filter_map(|u| parse_url(u).ok()).collect()));
        set("URIStrings", strings(&self.uris));
        set("PermittedDNSDomainsCritical", Value::Bool(self.permitted_critical));
        set("PermittedDNSDomains", strings(&self.permitted_dns));
        set("ExcludedDNSDomains", strings(&self.excluded_dns));
        set("PermittedIPRanges", list(self.permitted_ip.clone()));
        set("ExcludedIPRanges", list(self.excluded_ip.clone()));
        set("PermittedEmailAddresses", strings(&self.permitted_email));
        set("ExcludedEmailAddresses", strings(&self.excluded_email));
        set("PermittedURIDomains", strings(&self.permitted_uri));
        set("ExcludedURIDomains", strings(&self.excluded_uri));
        set("CRLDistributionPoints", strings(&self.crl));
        set("PolicyIdentifiers", list(self.policy_ids.iter().map(|p| oid_value(p)).collect()));
        set("Policies", list(self.policy_ids.iter().map(|p| Value::from(der::oid_string(p))).collect()));
        set("PolicyMappings", list(self.policy_mappings.clone()));
        set("ExtKeyUsage", list(self.ext_key_usage.iter().map(|n| int(*n)).collect()));
        set("UnknownExtKeyUsage", list(self.unknown_eku.iter().map(|p| oid_value(p)).collect()));
        set("InhibitAnyPolicy", int(self.inhibit_any));
        set("InhibitAnyPolicyZero", Value::Bool(self.inhibit_any_zero));
        set("InhibitPolicyMapping", int(self.inhibit_mapping));
        set("InhibitPolicyMappingZero", Value::Bool(self.inhibit_mapping_zero));
        set("RequireExplicitPolicy", int(self.require_explicit));
        set("RequireExplicitPolicyZero", Value::Bool(self.require_explicit_zero));
    }
}

fn unhex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn unescape(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (b.get(i + 1).and_then(|c| unhex(*c)), b.get(i + 2).and_then(|c| unhex(*c))) else {
                bail!("invalid URL escape");
            };
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Go's default escaping of a path (`encodePath`) or fragment (`encodeFragment`).
fn escape(s: &str, fragment: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~' | b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'@')
            || (fragment && matches!(b, b'?' | b'!' | b'(' | b')' | b'*'));
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A URI as Go's `url.URL` JSON object.
fn parse_url(s: &str) -> Result<Value> {
    let (rest, fragment_raw) = match s.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let mut scheme = "";
    let mut rest = rest;
    if let Some(i) = rest.find(':') {
        let cand = &rest[..i];
        if !cand.is_empty()
            && cand.as_bytes()[0].is_ascii_alphabetic()
            && cand.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            scheme = cand;
            rest = &rest[i + 1..];
        }
    }
    let (rest, query) = match rest.split_once('?') {
        Some((a, q)) => (a, q),
        None => (rest, ""),
    };
    let force_query = s.contains('?') && query.is_empty() && !s.ends_with("?#") && s.split('#').next().is_some_and(|x| x.ends_with('?'));
    let (mut opaque, mut host, mut user, mut path) = ("", String::new(), Value::Null, rest.to_string());
    let mut omit_host = false;
    if !scheme.is_empty() && !rest.starts_with('/') {
        opaque = rest;
        path = String::new();
    } else if let Some(after) = rest.strip_prefix("//") {
        let end = after.find('/').unwrap_or(after.len());
        let authority = &after[..end];
        path = after[end..].to_string();
        let h = match authority.rsplit_once('@') {
            Some((_, h)) => {
                user = obj(vec![]);
                h
            }
            None => authority,
        };
        host = unescape(h)?;
        omit_host = false;
    } else if scheme.is_empty() {
        omit_host = false;
    }
    let _ = &mut omit_host;
    let decoded_path = unescape(&path)?;
    let raw_path = if escape(&decoded_path, false) == path { String::new() } else { path.clone() };
    let (fragment, raw_fragment) = match fragment_raw {
        Some(f) => {
            let d = unescape(f)?;
            let raw = if escape(&d, true) == f { String::new() } else { f.to_string() };
            (d, raw)
        }
        None => (String::new(), String::new()),
    };
    Ok(obj(vec![
        ("Scheme", Value::from(scheme)),
        ("Opaque", Value::from(opaque)),
        ("User", user),
        ("Host", Value::from(host)),
        ("Path", Value::from(decoded_path)),
        ("RawPath", Value::from(raw_path)),
        ("OmitHost", Value::Bool(omit_host)),
        ("ForceQuery", Value::Bool(force_query)),
        ("RawQuery", Value::from(query)),
        ("Fragment", Value::from(fragment)),
        ("RawFragment", Value::from(raw_fragment)),
    ]))
}

fn certs_value(certs: &[Cert]) -> Value {
    Value::from(certs.iter().map(|c| Value::from(c.json.clone())).collect::<Vec<_>>())
}

fn parse_certificates(a: &[Value]) -> Result<Value> {
    let text = input(a, 0, "crypto.x509.parse_certificates")?;
    Ok(certs_value(&parse_der_certs(&cert_ders(text)?)?))
}

// ---------------------------------------------------------------- verification

#[derive(Default)]
struct VerifyOptions {
    dns_name: Option<String>,
    current_time: Option<i64>,
    key_usages: Option<Vec<i64>>,
}

fn verify_signature(child: &Cert, parent: &Cert) -> bool {
    use ring::signature as s;
    let alg: &dyn s::VerificationAlgorithm = match (child.sig_alg, parent.spki_alg, parent.ec_curve) {
        (3, 1, _) => &s::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        (4, 1, _) => &s::RSA_PKCS1_2048_8192_SHA256,
        (5, 1, _) => &s::RSA_PKCS1_2048_8192_SHA384,
        (6, 1, _) => &s::RSA_PKCS1_2048_8192_SHA512,
        (13, 1, _) => &s::RSA_PSS_2048_8192_SHA256,
        (14, 1, _) => &s::RSA_PSS_2048_8192_SHA384,
        (15, 1, _) => &s::RSA_PSS_2048_8192_SHA512,
        (10, 3, Some("P-256")) => &s::ECDSA_P256_SHA256_ASN1,
        (11, 3, Some("P-256")) => &s::ECDSA_P256_SHA384_ASN1,
        (10, 3, Some("P-384")) => &s::ECDSA_P384_SHA256_ASN1,
        (11, 3, Some("P-384")) => &s::ECDSA_P384_SHA384_ASN1,
        (16, 4, _) => &s::ED25519,
        _ => return false,
    };
    s::UnparsedPublicKey::new(alg, &parent.spki_key).verify(&child.tbs, &child.signature).is_ok()
}

fn dns_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.trim_end_matches('.').to_ascii_lowercase());
    if let Some(suffix) = p.strip_prefix("*.") {
        return h.split_once('.').is_some_and(|(first, rest)| !first.is_empty() && rest == suffix);
    }
    p == h
}

/// Go's `matchDomainConstraint`: the constraint's labels are a suffix of the name's labels
/// (a leading `.` requires at least one more label).
fn domain_matches(name: &str, constraint: &str) -> bool {
    if constraint.is_empty() {
        return true;
    }
    let (name, constraint) = (name.to_ascii_lowercase(), constraint.to_ascii_lowercase());
    let (strict, c) = match constraint.strip_prefix('.') {
        Some(c) => (true, c.to_string()),
        None => (false, constraint),
    };
    let n: Vec<&str> = name.split('.').rev().collect();
    let cl: Vec<&str> = c.split('.').rev().collect();
    if n.len() < cl.len() || (strict && n.len() == cl.len()) {
        return false;
    }
    n.iter().zip(cl.iter()).all(|(a, b)| a == b)
}

fn email_matches(mailbox: &str, constraint: &str) -> bool {
    if constraint.contains('@') {
        return mailbox.eq_ignore_ascii_case(constraint);
    }
    mailbox.rsplit_once('@').is_some_and(|(_, host)| domain_matches(host, constraint))
}

fn ip_matches(ip: &IpAddr, (net, mask): &(Vec<u8>, Vec<u8>)) -> bool {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    bytes.len() == net.len() && bytes.iter().zip(net.iter()).zip(mask.iter()).all(|((b, n), m)| b & m == n & m)
}

fn uri_host(u: &str) -> String {
    let after = u.split_once("://").map(|x| x.1).unwrap_or("");
    let auth = after.split(['/', '?', '#']).next().unwrap_or("");
    let host = auth.rsplit_once('@').map(|x| x.1).unwrap_or(auth);
    host.split(':').next().unwrap_or("").to_string()
}

/// Whether `leaf`'s names satisfy the constraints of CA `ca`.
fn names_allowed(ca: &Constraints, leaf: &Cert) -> bool {
    fn check<T>(names: &[T], permitted: &[String], excluded: &[String], m: impl Fn(&T, &str) -> bool) -> bool {
        names.iter().all(|n| !excluded.iter().any(|c| m(n, c)) && (permitted.is_empty() || permitted.iter().any(|c| m(n, c))))
    }
    check(&leaf.dns_names, &ca.permitted_dns, &ca.excluded_dns, |n, c| domain_matches(n.trim_start_matches("*."), c))
        && check(&leaf.emails, &ca.permitted_email, &ca.excluded_email, |n, c| email_matches(n, c))
        && check(&leaf.uris, &ca.permitted_uri, &ca.excluded_uri, |n, c| domain_matches(&uri_host(n), c))
        && leaf.ip_addresses.iter().all(|ip| {
            !ca.excluded_ip.iter().any(|r| ip_matches(ip, r)) && (ca.permitted_ip.is_empty() || ca.permitted_ip.iter().any(|r| ip_matches(ip, r)))
        })
}

/// Go's `Certificate.Verify` for OPA's use: `certs[0]` is the only root, the last is the leaf,
/// the rest are intermediates. Returns the first chain found (leaf first).
fn verify_chain(certs: Vec<Cert>, opts: &VerifyOptions) -> Result<Vec<Cert>> {
    if certs.len() < 2 {
        bail!("operand 1 must supply at least two certificates to be able to verify");
    }
    let now = opts.current_time.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    });
    let leaf = certs.len() - 1;
    let valid_at = |c: &Cert| c.not_before <= now && now <= c.not_after;
    if !valid_at(&certs[leaf]) {
        bail!("x509: certificate has expired or is not yet valid");
    }
    if let Some(host) = &opts.dns_name {
        let c = &certs[leaf];
        let ok = match host.parse::<IpAddr>() {
            Ok(ip) => c.ip_addresses.contains(&ip),
            Err(_) => c.dns_names.iter().any(|d| dns_matches(d, host)),
        };
        if !ok {
            bail!("x509: certificate is not valid for {host} ({})", c.common_name);
        }
    }
    // Depth-first search for a chain from the leaf to certs[0] (bounded by the number of
    // certificates: each appears at most once in a chain).
    fn search(certs: &[Cert], path: &mut Vec<usize>, now: i64, steps: &mut usize) -> bool {
        *steps += 1;
        if *steps > 10_000 {
            return false;
        }
        let cur = *path.last().unwrap_or(&0);
        let candidates: Vec<usize> = (0..certs.len() - 1).filter(|i| !path.contains(i)).collect();
        for i in candidates {
            let p = &certs[i];
            if p.raw_subject != certs[cur].raw_issuer {
                continue;
            }
            // Every signature check counts against the bound (certificates sharing a subject
            // could otherwise make the search exponential).
            *steps += 1;
            if *steps > 10_000 || !verify_signature(&certs[cur], p) {
                continue;
            }
            if !(p.not_before <= now && now <= p.not_after) || !names_allowed(&p.constraints, &certs[path[0]]) {
                continue;
            }
            if i != 0 {
                // An intermediate must be a CA within its path length.
                if !p.basic_valid || !p.is_ca {
                    continue;
                }
            }
            let below = path.len() - 1; // intermediates between the leaf and p
            if p.basic_valid && p.max_path_len >= 0 && (below as i64) > p.max_path_len && i != 0 {
                continue;
            }
            path.push(i);
            if i == 0 || search(certs, path, now, steps) {
                return true;
            }
            path.pop();
        }
        false
    }
    let mut path = vec![leaf];
    let mut steps = 0;
    if !search(&certs, &mut path, now, &mut steps) {
        bail!("x509: certificate signed by unknown authority");
    }
    // Extended key usage: every certificate in the chain that restricts it must allow one of
    // the requested usages (ServerAuth by default; Any disables the check).
    let wanted = opts.key_usages.clone().unwrap_or_else(|| vec![1]);
    if !wanted.contains(&0) {
        for &i in &path {
            let c = &certs[i];
            if c.has_eku && !c.ext_key_usage.contains(&0) && !wanted.iter().any(|w| c.ext_key_usage.contains(w)) {
                bail!("x509: certificate specifies an incompatible key usage");
            }
        }
    }
    let mut certs: Vec<Option<Cert>> = certs.into_iter().map(Some).collect();
    Ok(path.into_iter().filter_map(|i| certs[i].take()).collect())
}

/// Go's plain `x509.Certificate` JSON: without OPA's added `URIStrings`.
fn without_uri_strings(mut c: Cert) -> Cert {
    c.json.remove(&Value::from("URIStrings"));
    c
}

fn verified_value(r: Result<Vec<Cert>>) -> Value {
    match r {
        Ok(chain) => Value::from(vec![Value::Bool(true), certs_value(&chain)]),
        Err(_) => Value::from(vec![Value::Bool(false), Value::from(Vec::<Value>::new())]),
    }
}

fn parse_and_verify(a: &[Value]) -> Result<Value> {
    let text = input(a, 0, "crypto.x509.parse_and_verify_certificates")?;
    let certs = cert_ders(text).and_then(|d| parse_der_certs(&d));
    Ok(verified_value(certs.and_then(|c| verify_chain(c, &VerifyOptions::default()))))
}

fn parse_and_verify_with_options(a: &[Value]) -> Result<Value> {
    let text = input(a, 0, "crypto.x509.parse_and_verify_certificates_with_options")?;
    let Some(Value::Object(o)) = a.get(1) else {
        bail!("operand 2 must be object but got {}", a.get(1).map(type_name).unwrap_or("nothing"));
    };
    let certs = match cert_ders(text).and_then(|d| parse_der_certs(&d)) {
        Ok(c) => c,
        Err(_) => return Ok(verified_value(Err(anyhow!("unparsable")))),
    };
    let mut opts = VerifyOptions::default();
    for (k, v) in o.iter() {
        let Value::String(k) = k else { continue };
        match k.as_ref() {
            "DNSName" => match v {
                Value::String(s) => opts.dns_name = Some(s.trim_matches('"').to_string()),
                _ => bail!("'DNSName' should be a string"),
            },
            "CurrentTime" => match v {
                Value::Number(n) => {
                    let ns = n.as_i64().ok_or_else(|| anyhow!("'CurrentTime' should be a valid int64 number"))?;
                    opts.current_time = Some(ns.div_euclid(1_000_000_000));
                }
                _ => bail!("'CurrentTime' should be a number"),
            },
            "MaxConstraintComparisons" => match v {
                Value::Number(n) if n.as_i64().is_some() => {}
                Value::Number(_) => bail!("'MaxConstraintComparisons' should be a valid number"),
                _ => bail!("'MaxConstraintComparisons' should be a number"),
            },
            "KeyUsages" => {
                let items: Vec<Value> = match v {
                    Value::Array(x) => x.iter().cloned().collect(),
                    Value::Set(x) => x.iter().cloned().collect(),
                    _ => bail!("'KeyUsages' should be an Array or Set"),
                };
                let mut usages = Vec::new();
                let mut invalid = Vec::new();
                for u in items {
                    let Value::String(s) = u else { continue };
                    match key_usage_name(s.trim_matches('"')) {
                        Some(n) => usages.push(n),
                        None => invalid.push(s.to_string()),
                    }
                }
                if !invalid.is_empty() {
                    bail!("invalid entries for 'KeyUsages' found: [{}]", invalid.join(" "));
                }
                opts.key_usages = Some(usages);
            }
            _ => bail!("invalid key option"),
        }
    }
    // OPA returns this chain without its `URIStrings` addition.
    Ok(verified_value(verify_chain(certs, &opts).map(|chain| chain.into_iter().map(without_uri_strings).collect())))
}

fn key_usage_name(s: &str) -> Option<i64> {
    const NAMES: [&str; 14] = [
        "KeyUsageAny",
        "KeyUsageServerAuth",
        "KeyUsageClientAuth",
        "KeyUsageCodeSigning",
        "KeyUsageEmailProtection",
        "KeyUsageIPSECEndSystem",
        "KeyUsageIPSECTunnel",
        "KeyUsageIPSECUser",
        "KeyUsageTimeStamping",
        "KeyUsageOCSPSigning",
        "KeyUsageMicrosoftServerGatedCrypto",
        "KeyUsageNetscapeServerGatedCrypto",
        "KeyUsageMicrosoftCommercialCodeSigning",
        "KeyUsageMicrosoftKernelCodeSigning",
    ];
    NAMES.iter().position(|n| *n == s).map(|i| i as i64)
}

// ---------------------------------------------------------------- certificate requests

fn parse_certificate_request(a: &[Value]) -> Result<Value> {
    let text = input(a, 0, "crypto.x509.parse_certificate_request")?;
    let bytes = if text.starts_with("-----BEGIN CERTIFICATE REQUEST-----") { text.as_bytes().to_vec() } else { std_b64(text)? };
    let der = match pem_decode(&bytes) {
        Some((label, _, _)) if label != "CERTIFICATE REQUEST" => bail!("invalid PEM-encoded certificate signing request"),
        Some((_, b, _)) => b,
        None => bytes,
    };
    let (csr, _) = der::expect(&der, der::SEQUENCE, "certificate request")?;
    let parts = der::items(csr.value)?;
    let [info, sig_alg, sig] = parts.as_slice() else { bail!("x509: malformed certificate request") };
    if info.tag != der::SEQUENCE || sig_alg.tag != der::SEQUENCE || sig.tag != der::BIT_STRING {
        bail!("x509: malformed certificate request");
    }
    let fields = der::items(info.value)?;
    let [version, subject, spki, rest @ ..] = fields.as_slice() else { bail!("x509: malformed certificate request info") };
    if version.tag != der::INTEGER || subject.tag != der::SEQUENCE || spki.tag != der::SEQUENCE {
        bail!("x509: malformed certificate request info");
    }
    let pk = public_key(*spki)?;
    let (subject_name, _) = name(*subject)?;
    let (sig_bytes, _) = der::bit_string(sig.value)?;
    // Attributes ([0]): Go lists each attribute's values as pkix.AttributeTypeAndValueSET and
    // reads the extension request (1.2.840.113549.1.9.14) into Extensions.
    let mut attributes = Vec::new();
    let mut ext = Extensions::default();
    if let Some(attrs) = rest.iter().find(|t| t.tag == 0xa0) {
        for attr in der::items(attrs.value)? {
            let (o, r) = der::expect(attr.value, der::OID, "attribute type")?;
            let arcs = der::oid(o.value)?;
            let (set, _) = der::expect(r, der::SET, "attribute values")?;
            if arcs != [1, 2, 840, 113549, 1, 9, 14] {
                // Go skips attributes whose values do not have the extension shape.
                continue;
            }
            let mut values = Vec::new();
            for v in der::items(set.value)? {
                let mut one = Vec::new();
                for e in der::items(v.value)? {
                    let (eo, er) = der::expect(e.value, der::OID, "extension id")?;
                    let (mut t, mut er) = der::read(er)?;
                    if t.tag == der::BOOLEAN {
                        (t, er) = der::read(er)?;
                    }
                    let _ = er;
                    one.push(obj(vec![("Type", oid_value(&der::oid(eo.value)?)), ("Value", b64(t.value))]));
                }
                values.push(Value::from(one));
                ext.parse(v)?;
            }
            attributes.push(obj(vec![("Type", oid_value(&arcs)), ("Value", Value::from(values))]));
        }
    }
    let uris: Vec<Value> = ext.uris.iter().filter_map(|u| parse_url(u).ok()).collect();
    Ok(obj(vec![
        ("Raw", b64(csr.raw)),
        ("RawTBSCertificateRequest", b64(info.raw)),
        ("RawSubjectPublicKeyInfo", b64(spki.raw)),
        ("RawSubject", b64(subject.raw)),
        ("Version", int(der::small_int(version.value)?)),
        ("Signature", b64(sig_bytes)),
        ("SignatureAlgorithm", int(signature_algorithm(sig_alg.value)?)),
        ("PublicKeyAlgorithm", int(pk.algorithm)),
        ("PublicKey", pk.json),
        ("Subject", subject_name),
        ("Attributes", list(attributes)),
        ("Extensions", list(ext.all.clone())),
        ("ExtraExtensions", Value::Null),
        ("DNSNames", strings(&ext.dns_names)),
        ("EmailAddresses", strings(&ext.emails)),
        ("IPAddresses", list(ext.ips.iter().map(|i| Value::from(i.to_string())).collect())),
        ("URIs", list(uris)),
    ]))
}

// ---------------------------------------------------------------- private keys

/// A private key: Go's JSON of the key type, and its JWK (for `parse_rsa_private_key`).
struct PrivateKey {
    json: Value,
    jwk: Option<Value>,
    /// The public key's comparable form (RSA modulus, EC point, Ed25519 key).
    public: Vec<u8>,
}

fn b64url(b: &[u8]) -> Value {
    Value::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

fn pkcs1(der: &[u8]) -> Result<PrivateKey> {
    let (seq, _) = der::expect(der, der::SEQUENCE, "PKCS#1 private key").map_err(|_| anyhow!("x509: failed to parse private key"))?;
    let items = der::items(seq.value)?;
    if items.len() < 9 || items.iter().take(9).any(|t| t.tag != der::INTEGER) {
        bail!("x509: failed to parse private key");
    }
    if der::small_int(items[0].value)? > 1 {
        bail!("x509: unsupported private key version");
    }
    if items.len() > 9 {
        bail!("x509: multi-prime RSA keys are not supported by sluice");
    }
    let v: Vec<&[u8]> = items[1..9].iter().map(|t| der::unsigned(t.value)).collect::<Result<_>>()?;
    let [n, e, d, p, q, dp, dq, qi] = v.as_slice() else { unreachable!() };
    let e_int = der::small_int(items[2].value)?;
    let json = obj(vec![
        ("N", big(n)),
        ("E", int(e_int)),
        ("D", big(d)),
        ("Primes", Value::from(vec![big(p), big(q)])),
        ("Precomputed", obj(vec![("Dp", big(dp)), ("Dq", big(dq)), ("Qinv", big(qi)), ("CRTValues", Value::from(Vec::<Value>::new()))])),
    ]);
    let jwk = obj(vec![
        ("kty", Value::from("RSA")),
        ("n", b64url(n)),
        ("e", b64url(e)),
        ("d", b64url(d)),
        ("p", b64url(p)),
        ("q", b64url(q)),
        ("dp", b64url(dp)),
        ("dq", b64url(dq)),
        ("qi", b64url(qi)),
    ]);
    Ok(PrivateKey { json, jwk: Some(jwk), public: n.to_vec() })
}

/// SEC 1 ECPrivateKey (with the curve from `curve` when the key omits it).
fn sec1(der: &[u8], curve: Option<Vec<u64>>) -> Result<PrivateKey> {
    let (seq, _) = der::expect(der, der::SEQUENCE, "EC private key").map_err(|_| anyhow!("x509: failed to parse EC private key"))?;
    let items = der::items(seq.value)?;
    let [version, key, more @ ..] = items.as_slice() else { bail!("x509: failed to parse EC private key") };
    if version.tag != der::INTEGER || der::small_int(version.value)? != 1 || key.tag != der::OCTET_STRING {
        bail!("x509: unknown EC private key version");
    }
    let named = more
        .iter()
        .find(|t| t.tag == 0xa0)
        .map(|t| der::expect(t.value, der::OID, "curve").and_then(|(o, _)| der::oid(o.value)))
        .transpose()?
        .or(curve)
        .ok_or_else(|| anyhow!("x509: unknown elliptic curve"))?;
    let Some((crv, size)) = curve_of(&named) else { bail!("x509: unknown elliptic curve") };
    if key.value.len() > size {
        bail!("x509: invalid private key length");
    }
    let mut d = vec![0u8; size - key.value.len()];
    d.extend_from_slice(key.value);
    let point: Vec<u8> = match crv {
        "P-256" => p256::SecretKey::from_slice(&d).map(|k| p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&k.public_key(), false).as_bytes().to_vec()),
        "P-384" => p384::SecretKey::from_slice(&d).map(|k| p384::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&k.public_key(), false).as_bytes().to_vec()),
        "P-521" => p521::SecretKey::from_slice(&d).map(|k| p521::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&k.public_key(), false).as_bytes().to_vec()),
        _ => bail!("x509: unsupported elliptic curve {crv}"),
    }
    .map_err(|_| anyhow!("x509: invalid elliptic curve private key value"))?;
    let (x, y) = (&point[1..1 + size], &point[1 + size..]);
    let json = obj(vec![("Curve", obj(vec![])), ("X", big(x)), ("Y", big(y)), ("D", big(&d))]);
    let jwk = obj(vec![("kty", Value::from("EC")), ("crv", Value::from(crv)), ("x", b64url(x)), ("y", b64url(y)), ("d", b64url(&d))]);
    Ok(PrivateKey { json, jwk: Some(jwk), public: point })
}

fn pkcs8(der: &[u8]) -> Result<PrivateKey> {
    let (seq, _) = der::expect(der, der::SEQUENCE, "PKCS#8 private key").map_err(|_| anyhow!("x509: failed to parse private key"))?;
    let items = der::items(seq.value)?;
    let [version, alg, key, ..] = items.as_slice() else { bail!("x509: failed to parse private key") };
    if version.tag != der::INTEGER || alg.tag != der::SEQUENCE || key.tag != der::OCTET_STRING {
        bail!("x509: failed to parse private key");
    }
    let (o, params) = der::expect(alg.value, der::OID, "key algorithm")?;
    match der::oid(o.value)?.as_slice() {
        [1, 2, 840, 113549, 1, 1, 1] => pkcs1(key.value),
        [1, 2, 840, 10045, 2, 1] => {
            let curve = der::expect(params, der::OID, "curve").ok().and_then(|(c, _)| der::oid(c.value).ok());
            sec1(key.value, curve)
        }
        [1, 3, 101, 112] => {
            let (seed, _) = der::expect(key.value, der::OCTET_STRING, "Ed25519 key")?;
            if seed.value.len() != 32 {
                bail!("x509: invalid Ed25519 private key length: {}", seed.value.len());
            }
            let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.value).map_err(|_| anyhow!("x509: invalid Ed25519 private key"))?;
            let public = ring::signature::KeyPair::public_key(&pair).as_ref().to_vec();
            let mut full = seed.value.to_vec();
            full.extend_from_slice(&public);
            Ok(PrivateKey { json: b64(&full), jwk: None, public })
        }
        other => bail!("x509: PKCS#8 wrapping contained private key with unknown algorithm: {}", der::oid_string(other)),
    }
}

/// OPA's `getPrivateKeysFromPEMData`.
fn private_keys(text: &str) -> Result<Vec<PrivateKey>> {
    let bytes = match std_b64(text) {
        Ok(b) => b,
        Err(_) => text.as_bytes().to_vec(),
    };
    let mut rest: &[u8] = &bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let Some((label, der, r)) = pem_decode(rest) else { break };
        rest = r;
        if out.len() >= 100 {
            return Err(super::LimitExceeded("crypto: more than 100 private keys".into()).into());
        }
        match label.as_str() {
            "RSA PRIVATE KEY" => out.push(pkcs1(&der)?),
            "PRIVATE KEY" => out.push(pkcs8(&der)?),
            "EC PRIVATE KEY" => out.push(sec1(&der, None)?),
            _ => {}
        }
    }
    Ok(out)
}

fn parse_private_keys(a: &[Value]) -> Result<Value> {
    let text = input(a, 0, "crypto.parse_private_keys")?;
    if text.is_empty() {
        return Ok(Value::Null);
    }
    Ok(Value::from(private_keys(text)?.into_iter().map(|k| k.json).collect::<Vec<_>>()))
}

fn parse_rsa_private_key(a: &[Value]) -> Result<Value> {
    let text = input(a, 0, "crypto.x509.parse_rsa_private_key")?;
    if text.is_empty() {
        bail!("input PEM data was empty");
    }
    let text = if text.starts_with("-----BEGIN") {
        text.to_string()
    } else {
        String::from_utf8_lossy(&std_b64(text)?).into_owned()
    };
    let keys = private_keys(&text)?;
    let Some(k) = keys.into_iter().next() else { return Ok(Value::Null) };
    k.jwk.ok_or_else(|| anyhow!("unsupported key type for a JWK"))
}

// ---------------------------------------------------------------- key pairs

fn parse_keypair(a: &[Value]) -> Result<Value> {
    let cert_text = input(a, 0, "crypto.x509.parse_keypair")?;
    let key_text = input(a, 1, "crypto.x509.parse_keypair")?;
    let decode = |s: &str| -> Result<Vec<u8>> { if s.starts_with("-----BEGIN ") { Ok(s.as_bytes().to_vec()) } else { std_b64(s) } };
    let cert_bytes = decode(cert_text)?;
    let key_bytes = decode(key_text)?;
    // DER input is taken as one certificate / one PKCS#8 key.
    let cert_ders: Vec<Vec<u8>> = if cert_bytes.starts_with(b"-----BEGIN") {
        let mut v = Vec::new();
        let mut rest: &[u8] = &cert_bytes;
        while let Some((label, der, r)) = pem_decode(rest) {
            if label == "CERTIFICATE" {
                v.push(der);
            }
            rest = r;
            if v.len() > 1000 {
                return Err(super::LimitExceeded("crypto.x509.parse_keypair: more than 1000 certificates".into()).into());
            }
        }
        v
    } else {
        vec![cert_bytes]
    };
    if cert_ders.is_empty() {
        bail!("tls: failed to find any PEM data in certificate input");
    }
    let key = if key_bytes.starts_with(b"-----BEGIN") {
        let mut found = None;
        let mut rest: &[u8] = &key_bytes;
        while let Some((label, der, r)) = pem_decode(rest) {
            rest = r;
            if label == "PRIVATE KEY" || label.ends_with(" PRIVATE KEY") {
                found = Some(match label.as_str() {
                    "RSA PRIVATE KEY" => pkcs1(&der),
                    "EC PRIVATE KEY" => sec1(&der, None),
                    _ => pkcs8(&der).or_else(|_| pkcs1(&der)).or_else(|_| sec1(&der, None)),
                });
                break;
            }
        }
        found.ok_or_else(|| anyhow!("tls: failed to find any PEM data in key input"))??
    } else {
        pkcs8(&key_bytes).or_else(|_| pkcs1(&key_bytes)).or_else(|_| sec1(&key_bytes, None)).map_err(|_| anyhow!("tls: failed to parse private key"))?
    };
    let (leaf_tlv, _) = der::expect(&cert_ders[0], der::SEQUENCE, "certificate")?;
    let leaf = without_uri_strings(parse_cert(leaf_tlv)?);
    let leaf_public: Vec<u8> = match leaf.spki_alg {
        1 => {
            let (seq, _) = der::expect(&leaf.spki_key, der::SEQUENCE, "RSA public key")?;
            der::unsigned(der::items(seq.value)?.first().ok_or_else(|| anyhow!("x509: invalid RSA public key"))?.value)?.to_vec()
        }
        _ => leaf.spki_key.clone(),
    };
    if leaf_public != key.public {
        bail!("tls: private key does not match public key");
    }
    Ok(obj(vec![
        ("Certificate", Value::from(cert_ders.iter().map(|d| b64(d)).collect::<Vec<_>>())),
        ("PrivateKey", key.json),
        ("SupportedSignatureAlgorithms", Value::Null),
        ("OCSPStaple", Value::Null),
        ("SignedCertificateTimestamps", Value::Null),
        ("Leaf", Value::from(leaf.json)),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_urls() {
        let t = |tag, s: &str| time(&Tlv { tag, value: s.as_bytes(), raw: &[] });
        assert_eq!(t(der::UTC_TIME, "261231191559Z").unwrap(), (1798744559, "2026-12-31T19:15:59Z".to_string()));
        assert_eq!(t(der::GENERALIZED_TIME, "20500101000000.500Z").unwrap().1, "2050-01-01T00:00:00.5Z");
        assert!(t(der::UTC_TIME, "2612311915Z").is_err());
        assert!(t(der::UTC_TIME, "261331191559Z").is_err());
        let u = parse_url("spiffe://x/y").unwrap();
        assert_eq!(u, obj(vec![
            ("Scheme", Value::from("spiffe")), ("Opaque", Value::from("")), ("User", Value::Null), ("Host", Value::from("x")),
            ("Path", Value::from("/y")), ("RawPath", Value::from("")), ("OmitHost", Value::Bool(false)), ("ForceQuery", Value::Bool(false)),
            ("RawQuery", Value::from("")), ("Fragment", Value::from("")), ("RawFragment", Value::from("")),
        ]));
        let u = parse_url("urn:a:b").unwrap();
        assert_eq!(u["Opaque"], Value::from("a:b"));
    }

    #[test]
    fn bad_input_is_an_error() {
        for bad in ["not base64!", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "MAA="] {
            assert!(parse_certificates(&[Value::from(bad)]).is_err(), "{bad}");
        }
        assert_eq!(parse_certificates(&[Value::from("")]).unwrap(), Value::from(Vec::<Value>::new()));
        assert!(parse_private_keys(&[Value::from("-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n")]).is_err());
        assert_eq!(parse_private_keys(&[Value::from("")]).unwrap(), Value::Null);
    }

    /// Mutated certificates, requests and keys (bit flips, truncations, inserted bytes) are
    /// errors or values, never panics.
    #[test]
    fn mutations_never_panic() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
        let cert = params.self_signed(&key).unwrap();
        let csr = params.serialize_request(&key).unwrap();
        let inputs: Vec<Vec<u8>> = vec![cert.der().to_vec(), csr.der().to_vec(), key.serialize_der()];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let mut outcomes = (0, 0);
        for round in 0..3000 {
            let mut b = inputs[round % inputs.len()].clone();
            match rnd(3) {
                0 => {
                    let i = rnd(b.len());
                    b[i] ^= 1 << rnd(8);
                }
                1 => b.truncate(rnd(b.len())),
                _ => {
                    let i = rnd(b.len());
                    b.insert(i, rnd(256) as u8);
                }
            }
            let b64 = base64::engine::general_purpose::STANDARD.encode(&b);
            let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
            let results = [
                parse_certificates(&[Value::from(b64.as_str())]),
                parse_and_verify(&[Value::from(b64.as_str())]),
                parse_certificate_request(&[Value::from(b64.as_str())]),
                parse_private_keys(&[Value::from(pem.as_str())]),
            ];
            for r in results {
                if r.is_ok() {
                    outcomes.0 += 1;
                } else {
                    outcomes.1 += 1;
                }
            }
        }
        assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
    }
}
