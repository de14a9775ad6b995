//! `crypto.x509.*` and `crypto.parse_private_keys` against the real OPA engine on a PKI
//! generated here with rcgen (P-256 root, Ed25519 and P-384 intermediates, RSA and P-256
//! leaves with every extension rcgen writes), compared value for value; big integers (RSA
//! moduli, EC coordinates, serial numbers) are compared exactly as decimal text (both sides
//! write integers outside 64 bits as text) and through `sprintf("%d")` and arithmetic
//! in each engine. Without `SLUICE_OPA_PYTHONPATH`
//! only sluice's side runs (shape assertions below).

mod common;

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CidrSubnet, DnType, ExtendedKeyUsagePurpose, GeneralSubtree,
    IsCa, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};
use serde_json::{json, Value as Json};
use sluice_authz::policy::Sources;
use sluice_authz::{LoadOptions, PolicySet, RegoVersion};

const RSA_KEY: &str = include_str!("../../testkit/src/keys/rsa_server.pem");

struct Pki {
    root: String,
    inter: String,
    leaf: String,
    leaf_key: String,
    excluded_leaf: String,
    ext_leaf: String,
    rsa_leaf: String,
    other_root: String,
    csr: String,
    ed_key: String,
    p384_key: String,
}

/// One DER element with a short length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 128);
    [&[tag, content.len() as u8][..], content].concat()
}

fn ia5(s: &str) -> rcgen::string::Ia5String {
    rcgen::string::Ia5String::try_from(s).unwrap()
}

fn pki() -> Pki {
    let mut rp = CertificateParams::new(Vec::<String>::new()).unwrap();
    rp.distinguished_name.push(DnType::CountryName, "US");
    rp.distinguished_name.push(DnType::OrganizationName, "Sluice Test");
    rp.distinguished_name.push(DnType::OrganizationalUnitName, "authz");
    rp.distinguished_name.push(DnType::LocalityName, "Springfield");
    rp.distinguished_name.push(DnType::StateOrProvinceName, "Oregon");
    rp.distinguished_name.push(DnType::CommonName, "sluice x509 root");
    rp.is_ca = IsCa::Ca(BasicConstraints::Constrained(2));
    rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    rp.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("test".into()),
            GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8)),
            GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 128)),
        ],
        excluded_subtrees: vec![GeneralSubtree::DnsName("bad.test".into())],
    });
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let root = CertifiedIssuer::self_signed(rp, root_key).unwrap();

    let mut ip = CertificateParams::new(Vec::<String>::new()).unwrap();
    ip.distinguished_name.push(DnType::CommonName, "sluice x509 intermediate");
    ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ip.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    ip.use_authority_key_identifier_extension = true;
    ip.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: vec!["http://crl.sluice.test/root.crl".into()] }];
    let inter_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let inter_params = ip.clone();
    let inter_cert = ip.signed_by(&inter_key, &root).unwrap();
    let inter = rcgen::Issuer::new(inter_params, inter_key);

    let mut lp = CertificateParams::new(vec!["api.test".to_string(), "*.svc.test".to_string()]).unwrap();
    lp.distinguished_name.push(DnType::CommonName, "api.test");
    lp.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    lp.subject_alt_names.push(SanType::IpAddress("::1".parse().unwrap()));
    lp.subject_alt_names.push(SanType::URI(ia5("spiffe://sluice.test/ns/default/sa/api")));
    lp.subject_alt_names.push(SanType::Rfc822Name(ia5("ops@sluice.test")));
    lp.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::Other(vec![1, 3, 6, 1, 4, 1, 55555, 1]),
    ];
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    lp.use_authority_key_identifier_extension = true;
    lp.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89]));
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = lp.signed_by(&leaf_key, &inter).unwrap();

    let mut xp = CertificateParams::new(vec!["x.bad.test".to_string()]).unwrap();
    xp.distinguished_name.push(DnType::CommonName, "x.bad.test");
    let excluded_leaf = xp.signed_by(&KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(), &inter).unwrap();

    // Extensions rcgen does not write itself, DER-encoded here: certificate policies, authority
    // info access, policy constraints and mappings, inhibit-any-policy, and a critical
    // extension Go does not handle.
    let oid = |arcs: &[u8]| tlv(0x06, arcs);
    let policies = tlv(0x30, &[tlv(0x30, &oid(&[0x2a, 3, 4])), tlv(0x30, &oid(&[0x67, 0x81, 0x0c, 1, 2, 1]))].concat());
    let aia = tlv(
        0x30,
        &[
            tlv(0x30, &[oid(&[0x2b, 6, 1, 5, 5, 7, 0x30, 1]), tlv(0x86, b"http://ocsp.test")].concat()),
            tlv(0x30, &[oid(&[0x2b, 6, 1, 5, 5, 7, 0x30, 2]), tlv(0x86, b"http://ca.test/ca.crt")].concat()),
        ]
        .concat(),
    );
    let mut xp2 = CertificateParams::new(vec!["ext.test".to_string()]).unwrap();
    xp2.distinguished_name.push(DnType::CommonName, "ext.test");
    xp2.custom_extensions = vec![
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 32], policies),
        rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], aia),
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 36], tlv(0x30, &[tlv(0x80, &[0]), tlv(0x81, &[2])].concat())),
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 54], tlv(0x02, &[0])),
        rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 33], tlv(0x30, &tlv(0x30, &[oid(&[0x2a, 3, 4]), oid(&[0x2a, 3, 5])].concat()))),
        {
            let mut e = rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 99], tlv(0x05, &[]));
            e.set_criticality(true);
            e
        },
    ];
    let ext_leaf = xp2.self_signed(&KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()).unwrap();

    let mut rsa_p = CertificateParams::new(vec!["rsa.test".to_string()]).unwrap();
    rsa_p.distinguished_name.push(DnType::CommonName, "rsa.test");
    let rsa_key = KeyPair::from_pkcs8_pem_and_sign_algo(RSA_KEY, &rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa_leaf = rsa_p.self_signed(&rsa_key).unwrap();

    let mut op = CertificateParams::new(Vec::<String>::new()).unwrap();
    op.distinguished_name.push(DnType::CommonName, "sluice x509 root");
    op.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_root = op.self_signed(&KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap()).unwrap();

    let mut cp = CertificateParams::new(vec!["req.test".to_string()]).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "req.test");
    cp.distinguished_name.push(DnType::OrganizationName, "Sluice Test");
    let csr = cp.serialize_request(&rsa_key).unwrap().pem().unwrap();

    Pki {
        root: root.pem(),
        inter: inter_cert.pem(),
        leaf: leaf.pem(),
        leaf_key: leaf_key.serialize_pem(),
        excluded_leaf: excluded_leaf.pem(),
        ext_leaf: ext_leaf.pem(),
        rsa_leaf: rsa_leaf.pem(),
        other_root: other_root.pem(),
        csr,
        ed_key: KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap().serialize_pem(),
        p384_key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap().serialize_pem(),
    }
}

/// Queries over `input`, each a Rego expression; `json.marshal` keeps big integers exact.
fn queries() -> Vec<(&'static str, String)> {
    let m = |e: &str| e.to_string();
    vec![
        ("parse_root", m("crypto.x509.parse_certificates(input.root)")),
        ("parse_leaf", m("crypto.x509.parse_certificates(input.leaf)")),
        ("parse_inter", m("crypto.x509.parse_certificates(input.inter)")),
        ("parse_extensions", m("crypto.x509.parse_certificates(input.ext_leaf)")),
        ("parse_rsa", m("crypto.x509.parse_certificates(input.rsa_leaf)")),
        ("parse_bundle_b64", m("crypto.x509.parse_certificates(base64.encode(concat(\"\", [input.root, input.inter, input.leaf])))")),
        ("parse_big_numbers", "[x | c := crypto.x509.parse_certificates(input.rsa_leaf)[_]; x := sprintf(\"%d %d %d\", [c.SerialNumber, c.PublicKey.N, c.PublicKey.E])]".into()),
        ("parse_leaf_numbers", "[x | c := crypto.x509.parse_certificates(input.leaf)[_]; x := sprintf(\"%d %d %d\", [c.SerialNumber, c.PublicKey.X, c.PublicKey.Y])]".into()),
        ("rsa_modulus_arith", "[x | c := crypto.x509.parse_certificates(input.rsa_leaf)[_]; x := [c.PublicKey.N % 1000003, c.PublicKey.N > 1e300]]".into()),
        ("parse_empty", "crypto.x509.parse_certificates(\"\")".into()),
        ("verify_chain", m("crypto.x509.parse_and_verify_certificates(concat(\"\", [input.root, input.inter, input.leaf]))")),
        ("verify_wrong_root", "crypto.x509.parse_and_verify_certificates(concat(\"\", [input.other_root, input.inter, input.leaf]))".into()),
        ("verify_one", "crypto.x509.parse_and_verify_certificates(input.leaf)".into()),
        ("verify_opts_dns", "crypto.x509.parse_and_verify_certificates_with_options(concat(\"\", [input.root, input.inter, input.leaf]), {\"DNSName\": \"x.svc.test\"})[0]".into()),
        ("verify_opts_full", "crypto.x509.parse_and_verify_certificates_with_options(concat(\"\", [input.root, input.inter, input.leaf]), {\"DNSName\": \"api.test\", \"MaxConstraintComparisons\": 100})".into()),
        ("verify_opts_bad_option", "crypto.x509.parse_and_verify_certificates_with_options(concat(\"\", [input.root, input.inter, input.leaf]), {\"Nope\": 1})".into()),
        ("verify_excluded_name", "crypto.x509.parse_and_verify_certificates(concat(\"\", [input.root, input.inter, input.excluded_leaf]))".into()),
        ("verify_opts_bad_dns", "crypto.x509.parse_and_verify_certificates_with_options(concat(\"\", [input.root, input.inter, input.leaf]), {\"DNSName\": \"other.test\"})".into()),
        ("verify_opts_time_past", "crypto.x509.parse_and_verify_certificates_with_options(concat(\"\", [input.root, input.inter, input.leaf]), {\"CurrentTime\": 0})".into()),
        ("verify_opts_usage_client", "crypto.x509.parse_and_verify_certificates_with_options(concat(\"\", [input.root, input.inter, input.leaf]), {\"KeyUsages\": [\"KeyUsageClientAuth\"]})[0]".into()),
        ("verify_opts_usage_code", "crypto.x509.parse_and_verify_certificates_with_options(concat(\"\", [input.root, input.inter, input.leaf]), {\"KeyUsages\": [\"KeyUsageCodeSigning\"]})".into()),
        ("csr", m("crypto.x509.parse_certificate_request(input.csr)")),
        ("csr_b64", "crypto.x509.parse_certificate_request(base64.encode(input.csr)).Subject".into()),
        ("keys_p256", m("crypto.parse_private_keys(input.leaf_key)")),
        ("keys_p384", m("crypto.parse_private_keys(input.p384_key)")),
        ("keys_ed25519", "crypto.parse_private_keys(input.ed_key)".into()),
        ("keys_rsa", m("crypto.parse_private_keys(input.rsa_key)")),
        ("keys_many", m("crypto.parse_private_keys(concat(\"\", [input.rsa_key, input.leaf_key]))")),
        ("keys_empty", "crypto.parse_private_keys(\"\")".into()),
        ("jwk_rsa", "crypto.x509.parse_rsa_private_key(input.rsa_key)".into()),
        ("jwk_ec", "crypto.x509.parse_rsa_private_key(input.leaf_key)".into()),
        ("keypair", m("crypto.x509.parse_keypair(input.leaf, input.leaf_key)")),
        ("keypair_mismatch", "crypto.x509.parse_keypair(input.leaf, input.p384_key)".into()),
        ("bad_pem_type", "crypto.x509.parse_certificates(input.leaf_key)".into()),
        ("bad_base64", "crypto.x509.parse_certificates(\"%%%\")".into()),
    ]
}

/// A value as JSON with integers outside 64 bits as decimal text, as the oracle driver
/// writes them (regorus keeps them exact but cannot serialise them to JSON).
fn to_json(v: &regorus::Value) -> Json {
    use regorus::Value as V;
    match v {
        V::Number(n) => {
            let d = n.format_decimal();
            let integer = !d.contains(['.', 'e', 'E']);
            if integer && d.parse::<i64>().is_err() && d.parse::<u64>().is_err() {
                Json::String(d)
            } else {
                serde_json::from_str(&d).unwrap()
            }
        }
        V::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        V::Set(s) => Json::Array(s.iter().map(to_json).collect()),
        V::Object(o) => Json::Object(o.iter().map(|(k, v)| (k.as_string().map(|s| s.to_string()).unwrap_or_default(), to_json(v))).collect()),
        other => serde_json::to_value(other).unwrap(),
    }
}

fn sluice(p: &PolicySet, i: usize, input: &Json) -> Json {
    match p.query_with(&format!("data.t.q{i}"), Some(regorus::Value::from(input.clone())), true) {
        Ok(Some(v)) => json!({"value": to_json(&v)}),
        Ok(None) => json!({"undefined": true}),
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// The paths where two JSON values differ, with both sides.
fn diff(at: &str, a: &Json, b: &Json, out: &mut Vec<String>) {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                diff(&format!("{at}.{k}"), x.get(k).unwrap_or(&Json::Null), y.get(k).unwrap_or(&Json::Null), out);
            }
        }
        (Json::Array(x), Json::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(&format!("{at}[{i}]"), p, q, out);
            }
        }
        _ if a != b => out.push(format!("{at}: sluice {a}, OPA {b}")),
        _ => {}
    }
}

#[test]
fn x509_builtins_agree_with_opa() {
    let k = pki();
    let input = json!({
        "root": k.root, "inter": k.inter, "leaf": k.leaf, "leaf_key": k.leaf_key, "excluded_leaf": k.excluded_leaf, "ext_leaf": k.ext_leaf, "rsa_leaf": k.rsa_leaf,
        "other_root": k.other_root, "csr": k.csr, "ed_key": k.ed_key, "p384_key": k.p384_key, "rsa_key": RSA_KEY,
    });
    let qs = queries();
    let module: String = std::iter::once("package t\n".to_string()).chain(qs.iter().enumerate().map(|(i, (_, q))| format!("q{i} := {q}\n"))).collect();
    let sources = Sources { policies: vec![(PathBuf::from("t.rego"), module)], ..Default::default() };
    let opts = LoadOptions { strict_builtin_errors: true, ..LoadOptions::new(RegoVersion::V1, "t") };
    let p = PolicySet::compile_with(&sources, &opts).unwrap();
    let ours: Vec<Json> = (0..qs.len()).map(|i| sluice(&p, i, &input)).collect();

    // sluice's own answers, checked without OPA.
    let get = |n: &str| ours[qs.iter().position(|(m, _)| *m == n).unwrap()].clone();
    let leaf = &get("parse_leaf")["value"][0];
    assert_eq!(leaf["Subject"]["CommonName"], "api.test", "{leaf}");
    assert_eq!(leaf["DNSNames"], json!(["api.test", "*.svc.test"]));
    assert_eq!(leaf["IPAddresses"], json!(["127.0.0.1", "::1"]));
    assert_eq!(leaf["URIStrings"], json!(["spiffe://sluice.test/ns/default/sa/api"]));
    assert_eq!(leaf["ExtKeyUsage"], json!([1, 2]));
    assert_eq!(leaf["UnknownExtKeyUsage"], json!([[1, 3, 6, 1, 4, 1, 55555, 1]]));
    assert_eq!(leaf["PublicKeyAlgorithm"], 3);
    assert_eq!(leaf["SignatureAlgorithm"], 16, "signed by the Ed25519 intermediate");
    let bigs = get("parse_big_numbers");
    assert!(bigs["value"][0].as_str().is_some_and(|s| s.len() > 600), "an exact 2048-bit modulus: {bigs}");
    assert_eq!(get("verify_chain")["value"][0], true, "{}", get("verify_chain"));
    assert_eq!(get("verify_chain")["value"][1].as_array().unwrap().len(), 3);
    assert_eq!(get("verify_wrong_root")["value"], json!([false, []]));
    assert_eq!(get("verify_opts_bad_dns")["value"], json!([false, []]));
    assert_eq!(get("verify_excluded_name")["value"], json!([false, []]), "the root excludes bad.test");
    assert!(get("verify_opts_bad_option").get("error").is_some());
    assert_eq!(get("verify_opts_usage_code")["value"], json!([false, []]));
    assert!(get("keypair_mismatch").get("error").is_some());
    assert!(get("bad_pem_type").get("error").is_some());
    assert_eq!(get("keys_empty")["value"], Json::Null);
    assert_eq!(get("jwk_rsa")["value"]["kty"], "RSA");
    let ext = &get("parse_extensions")["value"][0];
    assert_eq!(ext["Policies"], json!(["1.2.3.4", "2.23.140.1.2.1"]), "{ext}");
    assert_eq!(ext["OCSPServer"], json!(["http://ocsp.test"]));
    assert_eq!(ext["UnhandledCriticalExtensions"], json!([[1, 2, 3, 99]]));
    assert_eq!((ext["RequireExplicitPolicyZero"].clone(), ext["InhibitPolicyMapping"].clone()), (json!(true), json!(2)));

    let job = common::opa::Job {
        modules: vec![("t.rego".into(), "package t\n".into())],
        data: None,
        input: Some(input.clone()),
        queries: qs.iter().map(|(_, q)| q.clone()).collect(),
        bindings: false,
    };
    let Some(res) = common::opa::run(&[job]) else { return };
    let res = res[0]["results"].as_array().unwrap().clone();
    let mut differ = Vec::new();
    for (((name, q), mine), theirs) in qs.iter().zip(&ours).zip(&res) {
        let same = match (mine.get("value"), theirs.get("value")) {
            (Some(a), Some(b)) => a == b,
            _ => mine.get("error").is_some() == theirs.get("error").is_some() && mine.get("undefined") == theirs.get("undefined"),
        };
        if !same {
            let mut paths = Vec::new();
            diff("", mine, theirs, &mut paths);
            differ.push(format!("{name}: {q}\n  differing: {}", paths.join("\n    ")));
        }
    }
    eprintln!("x509: {}/{} queries identical to OPA", qs.len() - differ.len(), qs.len());
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
