//! OPA bundles: a directory or a `.tar.gz` holding `.rego` files, data files (`data.json`,
//! `data.yaml`, placed at their directory's path), an optional `.manifest` (`revision`,
//! `roots`, `rego_version`, `metadata`) and an optional `.signatures.json`.
//!
//! Signatures follow OPA's bundle signing: `.signatures.json` holds `{"signatures": [JWS]}`
//! whose payload lists every file with its hash (`{"files": [{"name", "hash", "algorithm"}]}`);
//! with a verification key the JWS must verify, every file of the bundle must be listed with
//! the right hash (JSON files hashed in canonical form) and every listed file must exist.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value as Json;
use sha2::Digest;

use crate::policy::{RegoVersion, Sources};

/// How bundle signatures are checked.
#[derive(Clone, Debug, Default)]
pub struct Verification {
    /// The verification key (PEM public key or certificate, JWK, or HMAC secret); `None`: a
    /// bundle with signatures is refused unless `skip` is set.
    pub key: Option<String>,
    /// The signing algorithm (OPA's `--signing-alg`, default RS256).
    pub alg: Option<String>,
    /// The expected `scope` of the signature, if any.
    pub scope: Option<String>,
    /// OPA's `--skip-verify`: signatures are not checked.
    pub skip: bool,
}

/// The `.manifest` of a bundle.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    /// `revision` (empty when absent).
    pub revision: String,
    /// `roots`: the data paths this bundle owns (default: everything).
    pub roots: Vec<String>,
    /// `rego_version` (0 or 1).
    pub rego_version: Option<u64>,
    /// `metadata`.
    pub metadata: Option<Json>,
}

/// A loaded bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// Where it came from (a path or URL), for messages.
    pub name: String,
    /// Its policies and data.
    pub sources: Sources,
    /// Its manifest.
    pub manifest: Manifest,
    /// The Rego version the manifest asks for.
    pub rego_version: Option<RegoVersion>,
}

impl Bundle {
    /// Reads a bundle directory or `.tar.gz` file.
    pub fn read(path: &Path, v: &Verification) -> anyhow::Result<Bundle> {
        let name = path.display().to_string();
        let files = if path.is_dir() {
            read_dir_files(path)?
        } else {
            let bytes = std::fs::read(path).with_context(|| format!("bundle {name}"))?;
            untar(&bytes).with_context(|| format!("bundle {name}"))?
        };
        Bundle::from_files(&name, files, v)
    }

    /// A bundle from the bytes of a `.tar.gz`.
    pub fn from_tar_gz(name: &str, bytes: &[u8], v: &Verification) -> anyhow::Result<Bundle> {
        let files = untar(bytes).with_context(|| format!("bundle {name}"))?;
        Bundle::from_files(name, files, v)
    }

    fn from_files(name: &str, files: BTreeMap<String, Vec<u8>>, v: &Verification) -> anyhow::Result<Bundle> {
        verify(name, &files, v)?;
        let manifest = match files.get(".manifest") {
            Some(b) => parse_manifest(b).with_context(|| format!("bundle {name}: .manifest"))?,
            None => Manifest { roots: vec![String::new()], ..Manifest::default() },
        };
        let rego_version = match manifest.rego_version {
            None => None,
            Some(0) => Some(RegoVersion::V0),
            Some(1) => Some(RegoVersion::V1),
            Some(n) => bail!("bundle {name}: .manifest: unsupported rego_version {n}"),
        };
        let mut sources = Sources::default();
        for (path, bytes) in &files {
            let file = path.rsplit('/').next().unwrap_or(path);
            let dir: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
            let dir = dir[..dir.len().saturating_sub(1)].to_vec();
            let text = || String::from_utf8(bytes.clone()).map_err(|_| anyhow!("bundle {name}: {path} is not UTF-8"));
            if path.ends_with(".rego") {
                sources.policies.push((PathBuf::from(format!("/{path}")), text()?));
            } else if file == "data.json" || file == "data.yaml" || file == "data.yml" {
                check_root(name, &manifest.roots, &dir.join("/"))?;
                sources.data.push((PathBuf::from(format!("/{path}")), dir, text()?));
            }
        }
        if let Some(v) = rego_version {
            for (p, _) in &sources.policies {
                sources.versions.insert(p.clone(), v);
            }
        }
        for (p, text) in &sources.policies {
            if let Some(pkg) = package_path(text) {
                check_root(name, &manifest.roots, &pkg).with_context(|| p.display().to_string())?;
            }
        }
        Ok(Bundle { name: name.to_string(), sources, manifest, rego_version })
    }
}

/// The data path of a module's package (`package a.b` → `a/b`).
fn package_path(text: &str) -> Option<String> {
    for line in text.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("package ") {
            let p = rest.split('#').next().unwrap_or("").trim();
            return Some(p.replace('.', "/"));
        }
    }
    None
}

fn check_root(name: &str, roots: &[String], path: &str) -> anyhow::Result<()> {
    let path = path.trim_matches('/');
    let ok = roots.iter().any(|r| {
        let r = r.trim_matches('/');
        r.is_empty() || path == r || path.starts_with(&format!("{r}/"))
    });
    if !ok {
        bail!("bundle {name}: manifest roots {roots:?} do not permit data at path /{path}");
    }
    Ok(())
}

fn parse_manifest(b: &[u8]) -> anyhow::Result<Manifest> {
    let j: Json = serde_json::from_slice(b)?;
    let Some(o) = j.as_object() else { bail!("must be a JSON object") };
    let mut m = Manifest { roots: vec![String::new()], ..Manifest::default() };
    for (k, v) in o {
        match k.as_str() {
            "revision" => m.revision = v.as_str().ok_or_else(|| anyhow!("revision must be a string"))?.to_string(),
            "roots" => {
                m.roots = v
                    .as_array()
                    .ok_or_else(|| anyhow!("roots must be an array"))?
                    .iter()
                    .map(|r| r.as_str().map(str::to_string).ok_or_else(|| anyhow!("roots must be strings")))
                    .collect::<anyhow::Result<_>>()?
            }
            "rego_version" => m.rego_version = Some(v.as_u64().ok_or_else(|| anyhow!("rego_version must be 0 or 1"))?),
            "metadata" => m.metadata = Some(v.clone()),
            "file_rego_versions" => bail!("file_rego_versions is not supported by sluice"),
            "wasm" => bail!("wasm modules are not supported by sluice"),
            other => bail!("unknown manifest key {other:?}"),
        }
    }
    Ok(m)
}

fn read_dir_files(root: &Path) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) -> anyhow::Result<()> {
        for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
            let p = e?.path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/");
                out.insert(rel, std::fs::read(&p).with_context(|| p.display().to_string())?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// Largest bundle, unpacked (a bound against decompression bombs).
pub const MAX_UNPACKED: u64 = 256 << 20;

fn untar(bytes: &[u8]) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let gz = flate2::read::GzDecoder::new(bytes);
    let mut ar = tar::Archive::new(gz);
    let mut out = BTreeMap::new();
    let mut total = 0u64;
    for entry in ar.entries().context("not a .tar.gz")? {
        let mut entry = entry.context("reading the archive")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").trim_start_matches('/').to_string();
        if path.split('/').any(|c| c == "..") {
            bail!("{path}: path leaves the bundle");
        }
        let mut buf = Vec::new();
        (&mut entry).take(MAX_UNPACKED - total + 1).read_to_end(&mut buf)?;
        total += buf.len() as u64;
        if total > MAX_UNPACKED {
            bail!("bundle larger than {MAX_UNPACKED} bytes unpacked");
        }
        out.insert(path, buf);
    }
    Ok(out)
}

/// The hash OPA signs for a bundle file: JSON files in canonical form (keys sorted, compact).
fn file_hash(name: &str, bytes: &[u8]) -> String {
    let canonical;
    let data: &[u8] = if name.ends_with(".json") || name == ".manifest" {
        match serde_json::from_slice::<Json>(bytes) {
            Ok(j) => {
                canonical = canonical_json(&j);
                canonical.as_bytes()
            }
            Err(_) => bytes,
        }
    } else {
        bytes
    };
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn canonical_json(j: &Json) -> String {
    match j {
        Json::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let items: Vec<String> = keys.iter().map(|k| format!("{}:{}", Json::from(k.as_str()), canonical_json(&o[*k]))).collect();
            format!("{{{}}}", items.join(","))
        }
        Json::Array(a) => format!("[{}]", a.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

fn verify(name: &str, files: &BTreeMap<String, Vec<u8>>, v: &Verification) -> anyhow::Result<()> {
    let sigs = files.get(".signatures.json");
    if v.skip {
        return Ok(());
    }
    let Some(key) = &v.key else {
        if sigs.is_some() {
            bail!("bundle {name}: the bundle is signed but no verification key is configured (--verification-key, or --skip-verify)");
        }
        return Ok(());
    };
    let Some(sigs) = sigs else { bail!("bundle {name}: bundle is not signed (no .signatures.json) but a verification key is configured") };
    let doc: Json = serde_json::from_slice(sigs).with_context(|| format!("bundle {name}: .signatures.json"))?;
    let list = doc["signatures"].as_array().ok_or_else(|| anyhow!("bundle {name}: .signatures.json: no signatures"))?;
    if list.len() != 1 {
        bail!("bundle {name}: .signatures.json: expected exactly one signature, found {}", list.len());
    }
    let token = list[0].as_str().ok_or_else(|| anyhow!("bundle {name}: signature must be a string"))?;
    let alg = v.alg.as_deref().unwrap_or("RS256");
    let payload = crate::builtins::jwt::verify_jws(token, alg, key)
        .with_context(|| format!("bundle {name}: signature"))?
        .ok_or_else(|| anyhow!("bundle {name}: signature verification failed: the signature does not match the verification key"))?;
    if let Some(scope) = &v.scope {
        if payload.get("scope").and_then(Json::as_str) != Some(scope.as_str()) {
            bail!("bundle {name}: signature scope does not match {scope:?}");
        }
    }
    let listed = payload.get("files").and_then(Json::as_array).ok_or_else(|| anyhow!("bundle {name}: signature lists no files"))?;
    let mut seen = std::collections::BTreeSet::new();
    for f in listed {
        let fname = f["name"].as_str().unwrap_or("").trim_start_matches('/').to_string();
        let algo = f["algorithm"].as_str().unwrap_or("SHA-256");
        if algo != "SHA-256" {
            bail!("bundle {name}: {fname}: hash algorithm {algo} is not supported (SHA-256 is)");
        }
        let Some(bytes) = files.get(&fname) else { bail!("bundle {name}: {fname} is signed but not in the bundle") };
        if f["hash"].as_str() != Some(file_hash(&fname, bytes).as_str()) {
            bail!("bundle {name}: {fname}: hash does not match the signature");
        }
        seen.insert(fname);
    }
    for f in files.keys() {
        if f != ".signatures.json" && !seen.contains(f) {
            bail!("bundle {name}: {f} is in the bundle but not signed");
        }
    }
    Ok(())
}

/// Builds a `.signatures.json` for `files` (tests and tooling: `sluice` does not sign bundles
/// on the command line).
pub fn sign_files(files: &BTreeMap<String, Vec<u8>>, alg: &str, private_jwk: &Json) -> anyhow::Result<Vec<u8>> {
    let listed: Vec<Json> = files
        .iter()
        .filter(|(n, _)| *n != ".signatures.json")
        .map(|(n, b)| serde_json::json!({"name": n, "hash": file_hash(n, b), "algorithm": "SHA-256"}))
        .collect();
    let token = crate::builtins::jwt::sign_jws(&serde_json::json!({"alg": alg}), &serde_json::json!({"files": listed}), private_jwk)?;
    Ok(serde_json::to_vec(&serde_json::json!({"signatures": [token]}))?)
}

/// Packs `files` as a `.tar.gz` (tests and the bundle server of the tests).
pub fn tar_gz(files: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes.as_slice())?;
    }
    Ok(b.into_inner()?.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        list.iter().map(|(n, t)| (n.to_string(), t.as_bytes().to_vec())).collect()
    }

    #[test]
    fn tar_gz_bundle_with_manifest() {
        let f = files(&[
            (".manifest", r#"{"revision": "r1", "roots": ["envoy", "users"], "rego_version": 1}"#),
            ("envoy/authz/policy.rego", "package envoy.authz\nallow if input.ok\n"),
            ("users/data.json", r#"{"alice": {"admin": true}}"#),
        ]);
        let b = Bundle::from_tar_gz("t", &tar_gz(&f).unwrap(), &Verification::default()).unwrap();
        assert_eq!(b.manifest.revision, "r1");
        assert_eq!(b.rego_version, Some(RegoVersion::V1));
        assert_eq!(b.sources.policies.len(), 1);
        assert_eq!(b.sources.data[0].1, vec!["users".to_string()]);
    }

    #[test]
    fn roots_are_enforced() {
        let f = files(&[(".manifest", r#"{"roots": ["envoy"]}"#), ("other/data.json", "{}")]);
        let e = Bundle::from_tar_gz("t", &tar_gz(&f).unwrap(), &Verification::default()).unwrap_err();
        assert!(format!("{e:#}").contains("do not permit data at path /other"), "{e:#}");
        let f = files(&[(".manifest", r#"{"roots": ["envoy"]}"#), ("x.rego", "package other\n")]);
        assert!(Bundle::from_tar_gz("t", &tar_gz(&f).unwrap(), &Verification::default()).is_err());
        let f = files(&[(".manifest", r#"{"bogus": 1}"#)]);
        assert!(Bundle::from_tar_gz("t", &tar_gz(&f).unwrap(), &Verification::default()).is_err());
    }

    #[test]
    fn signatures_are_verified() {
        let jwk = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"});
        let mut f = files(&[("p.rego", "package p\nx := 1\n"), ("data.json", r#"{"b": 1, "a": [1, 2]}"#)]);
        let sig = sign_files(&f, "HS256", &jwk).unwrap();
        f.insert(".signatures.json".into(), sig);
        let ok = Verification { key: Some("secret".into()), alg: Some("HS256".into()), ..Default::default() };
        Bundle::from_tar_gz("t", &tar_gz(&f).unwrap(), &ok).unwrap();
        // wrong key
        let bad = Verification { key: Some("other".into()), ..ok.clone() };
        let e = Bundle::from_tar_gz("t", &tar_gz(&f).unwrap(), &bad).unwrap_err();
        assert!(format!("{e:#}").contains("signature verification failed"), "{e:#}");
        // a changed file
        let mut g = f.clone();
        g.insert("p.rego".into(), b"package p\nx := 2\n".to_vec());
        let e = Bundle::from_tar_gz("t", &tar_gz(&g).unwrap(), &ok).unwrap_err();
        assert!(format!("{e:#}").contains("p.rego: hash does not match"), "{e:#}");
        // an added file
        let mut g = f.clone();
        g.insert("q.rego".into(), b"package q\n".to_vec());
        assert!(Bundle::from_tar_gz("t", &tar_gz(&g).unwrap(), &ok).is_err());
        // signed bundle without a key is refused; --skip-verify loads it
        assert!(Bundle::from_tar_gz("t", &tar_gz(&f).unwrap(), &Verification::default()).is_err());
        Bundle::from_tar_gz("t", &tar_gz(&f).unwrap(), &Verification { skip: true, ..Default::default() }).unwrap();
        // JSON data is hashed in canonical form: reformatting keeps the signature valid
        let mut g = f.clone();
        g.insert("data.json".into(), b"{\"a\":[1,2],\n \"b\":1}".to_vec());
        Bundle::from_tar_gz("t", &tar_gz(&g).unwrap(), &ok).unwrap();
    }
}
