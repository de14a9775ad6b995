//! Builds the protobuf descriptors that gRPC server reflection (`enable-reflection`) serves for
//! `envoy.service.auth.v3.Authorization`: the file `envoy/service/auth/v3/external_auth.proto`
//! and every file it imports, taken from the compiled descriptor set that the `envoy-types`
//! crate ships (`src/generated/types.bin`, the same protos its Rust types were generated from).
//!
//! The set is filtered at the wire level, without decoding the files into prost types: each
//! file's bytes are kept as they are (so custom options such as `validate.rules` and the `udpa`
//! annotations survive, as they do in a Go server's reflection), except for `source_code_info`
//! (comments and source positions, 80 % of the bytes), which is dropped.
//!
//! `envoy-types` is found in Cargo's registry sources (`$CARGO_HOME/registry/src/*/`) or in a
//! `vendor/` folder of the workspace, at the version recorded in `Cargo.lock`;
//! `SLUICE_ENVOY_TYPES_DIR` overrides the search.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = "envoy/service/auth/v3/external_auth.proto";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SLUICE_ENVOY_TYPES_DIR");
    let dir = envoy_types_dir().unwrap_or_else(|e| panic!("gRPC reflection descriptors: {e}"));
    let bin = dir.join("src/generated/types.bin");
    println!("cargo:rerun-if-changed={}", bin.display());
    let set = fs::read(&bin).unwrap_or_else(|e| panic!("reading {}: {e}", bin.display()));
    let out = closure(&set, ROOT).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let dest = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("ext_authz_v3_descriptors.bin");
    fs::write(&dest, out).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}

/// The directory of the `envoy-types` crate this build compiles against.
fn envoy_types_dir() -> Result<PathBuf, String> {
    if let Some(d) = env::var_os("SLUICE_ENVOY_TYPES_DIR") {
        return Ok(PathBuf::from(d));
    }
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR not set")?);
    let lock = manifest
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
        .ok_or("no Cargo.lock above the crate")?;
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = fs::read_to_string(&lock).map_err(|e| format!("{}: {e}", lock.display()))?;
    let version = locked_version(&text, "envoy-types").ok_or("envoy-types is not in Cargo.lock")?;
    let name = format!("envoy-types-{version}");
    let workspace = lock.parent().expect("Cargo.lock has a folder");
    let mut tried = Vec::new();
    for vendor in [workspace.join("vendor").join(&name), workspace.join("vendor/envoy-types")] {
        if vendor.join("src/generated/types.bin").is_file() {
            return Ok(vendor);
        }
        tried.push(vendor);
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let sources = cargo_home.join("registry/src");
    if let Ok(entries) = fs::read_dir(&sources) {
        let mut registries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        registries.sort();
        for r in registries {
            let candidate = r.join(&name);
            if candidate.join("src/generated/types.bin").is_file() {
                return Ok(candidate);
            }
        }
    }
    tried.push(sources.join("*").join(&name));
    Err(format!(
        "the envoy-types {version} sources (src/generated/types.bin) were not found in {}; set SLUICE_ENVOY_TYPES_DIR",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

/// The `version` of the `[[package]]` named `name` in a Cargo.lock text.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let want = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == want {
            let v = lines.next()?.trim().strip_prefix("version = \"")?.strip_suffix('"')?;
            return Some(v.to_string());
        }
    }
    None
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b.get(*i).ok_or("truncated varint")?;
        *i += 1;
        v |= u64::from(c & 0x7f) << shift;
        if c < 0x80 {
            return Ok(v);
        }
    }
    Err("varint too long".into())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// One field of a protobuf message: number, wire type, the field's whole encoding (key
/// included) and, for length-delimited fields, its payload.
struct Field<'a> {
    number: u64,
    raw: &'a [u8],
    payload: &'a [u8],
}

fn fields(b: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let key = varint(b, &mut i)?;
        let (number, wire) = (key >> 3, key & 7);
        let mut payload: &[u8] = &[];
        match wire {
            0 => {
                varint(b, &mut i)?;
            }
            1 => i += 8,
            2 => {
                let n = usize::try_from(varint(b, &mut i)?).map_err(|_| "length too large")?;
                payload = b.get(i..i + n).ok_or("truncated field")?;
                i += n;
            }
            5 => i += 4,
            w => return Err(format!("unsupported wire type {w}")),
        }
        let raw = b.get(start..i).ok_or("truncated field")?;
        out.push(Field { number, raw, payload });
    }
    Ok(out)
}

/// The FileDescriptorSet holding `root` and its imports, each file without source_code_info,
/// dependencies first.
fn closure(set: &[u8], root: &str) -> Result<Vec<u8>, String> {
    // FileDescriptorSet.file = 1; FileDescriptorProto.name = 1, .dependency = 3,
    // .source_code_info = 9.
    let mut files: BTreeMap<String, (Vec<String>, Vec<u8>)> = BTreeMap::new();
    for f in fields(set)?.into_iter().filter(|f| f.number == 1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut kept = Vec::new();
        for g in fields(f.payload)? {
            match g.number {
                1 => name = Some(String::from_utf8(g.payload.to_vec()).map_err(|e| e.to_string())?),
                3 => deps.push(String::from_utf8(g.payload.to_vec()).map_err(|e| e.to_string())?),
                9 => continue,
                _ => {}
            }
            kept.extend_from_slice(g.raw);
        }
        files.insert(name.ok_or("a file without a name")?, (deps, kept));
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    // Depth-first, dependencies before dependents.
    let mut visiting = BTreeSet::new();
    let mut stack = vec![(root.to_string(), false)];
    while let Some((name, expanded)) = stack.pop() {
        if done.contains(&name) {
            continue;
        }
        if !expanded && !visiting.insert(name.clone()) {
            return Err(format!("{name} imports itself"));
        }
        let (deps, bytes) = files.get(&name).ok_or_else(|| format!("{name} is not in the descriptor set"))?;
        if expanded {
            done.insert(name);
            out.push(0x0a); // field 1, length-delimited
            put_varint(&mut out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        } else {
            stack.push((name.clone(), true));
            stack.extend(deps.iter().filter(|d| !done.contains(*d)).map(|d| (d.clone(), false)));
        }
    }
    Ok(out)
}
