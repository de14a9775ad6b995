//! The config loader's fuzz target (`sluice_config::fuzz::load`, also run by cargo-fuzz from
//! `crates/config/fuzz`) on stable, bounded: a fixed seed corpus (every fixture and corpus
//! config of this crate) plus deterministic mutations — byte edits with Envoy-flavoured tokens,
//! and tree edits that put out-of-range and odd values at random places of a parsed config.
//! Each input runs under `catch_unwind`; any panic fails the test and the input is written to
//! `$CARGO_TARGET_TMPDIR`.
//!
//! `SLUICE_FUZZ_ITERS` (default 3000) and `SLUICE_FUZZ_SECS` (default 40) bound the run; it
//! stops at whichever comes first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// SplitMix64: a small deterministic generator (the same inputs every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seed_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut out = Vec::new();
    let mut dirs = vec![root.join("fixtures"), root.join("corpus")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Tokens a byte mutation inserts.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "- ",
    "\n",
    "\n  ",
    "\"",
    "'",
    "#",
    "&a ",
    "*a",
    "!!str ",
    "~",
    "null",
    "true",
    "yes",
    "-1",
    "0",
    "4294967296",
    "18446744073709551615",
    "1e999",
    "-0.5s",
    "315576000001s",
    "9223372036s",
    "NaN",
    "\"@type\": ",
    "typedConfig",
    "lbPolicy",
    "seconds: ",
    "nanos: 1000000000",
    "port_value: 65536",
    "\u{feff}",
    "é",
    "\\u0000",
    "{{{{{{{{",
    "[[[[[[[[",
];

/// Values a tree mutation puts somewhere.
fn odd_value(rng: &mut Rng, donor: &Value) -> Value {
    match rng.below(24) {
        0 => json!(u64::MAX),
        1 => json!(-1),
        2 => json!(0),
        3 => json!(4_294_967_296u64),
        4 => json!(1e300),
        5 => json!("18446744073709551615"),
        6 => json!("-1s"),
        7 => json!("315576000001s"),
        8 => json!({"seconds": u64::MAX, "nanos": 1_000_000_000}),
        9 => json!({"seconds": i64::MIN, "nanos": -1}),
        10 => json!(""),
        11 => json!("*"),
        12 => Value::Null,
        13 => json!(true),
        14 => json!([]),
        15 => json!({}),
        16 => json!(1.5),
        17 => json!("NaN"),
        18 => json!("round_robin"),
        19 => json!(65536),
        20 => {
            let mut v = json!(1);
            for _ in 0..rng.below(120) {
                v = json!({ "a": v });
            }
            v
        }
        21 => json!("\u{0}\u{ffff}é/../%00"),
        22 => {
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"})
        }
        _ => random_node(rng, donor).clone(),
    }
}

/// Count the nodes of a tree.
fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(m) => m.values().map(count).sum(),
        _ => 0,
    }
}

fn nth_mut(v: &mut Value, mut n: usize) -> Option<&mut Value> {
    fn walk<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
        match v {
            Value::Array(a) => a.iter_mut().find_map(|c| walk(c, n)),
            Value::Object(m) => m.values_mut().find_map(|c| walk(c, n)),
            _ => None,
        }
    }
    walk(v, &mut n)
}

fn random_node<'a>(rng: &mut Rng, v: &'a Value) -> &'a Value {
    fn walk<'a>(v: &'a Value, n: &mut usize) -> Option<&'a Value> {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
        match v {
            Value::Array(a) => a.iter().find_map(|c| walk(c, n)),
            Value::Object(m) => m.values().find_map(|c| walk(c, n)),
            _ => None,
        }
    }
    let mut n = rng.below(count(v));
    walk(v, &mut n).unwrap_or(v)
}

fn camel(key: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for c in key.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.push(c.to_ascii_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn mutate_tree(rng: &mut Rng, tree: &Value, donor: &Value) -> Value {
    let mut t = tree.clone();
    for _ in 0..1 + rng.below(3) {
        let n = rng.below(count(&t));
        let replacement = odd_value(rng, donor);
        let Some(node) = nth_mut(&mut t, n) else {
            continue;
        };
        match (rng.below(4), &mut *node) {
            (0, Value::Object(m)) if !m.is_empty() => {
                // Rename a key to its lowerCamelCase form, or drop it.
                let k = m
                    .keys()
                    .nth(rng.below(m.len()))
                    .cloned()
                    .unwrap_or_default();
                if let Some(v) = m.remove(&k) {
                    if rng.below(2) == 0 {
                        m.insert(camel(&k), v);
                    }
                }
            }
            (1, Value::Array(a)) if !a.is_empty() => {
                let i = rng.below(a.len());
                let dup = a[i].clone();
                a.push(dup);
            }
            _ => *node = replacement,
        }
    }
    t
}

fn mutate_bytes(rng: &mut Rng, text: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(5) {
            0 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                b.splice(at..at, t.bytes());
            }
            1 if !b.is_empty() => {
                let end = (at + rng.below(32)).min(b.len());
                b.drain(at.min(end)..end);
            }
            2 if at < b.len() => {
                b[at] = b' ' + (rng.below(95) as u8);
            }
            3 if !b.is_empty() => {
                let start = rng.below(b.len());
                let end = (start + rng.below(64)).min(b.len());
                let piece = b[start..end].to_vec();
                b.splice(at..at, piece);
            }
            _ => {
                let t = TOKENS[rng.below(TOKENS.len())];
                b.extend_from_slice(t.as_bytes());
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn config_loader_survives_seeds_and_mutations() {
    let iters = env_or("SLUICE_FUZZ_ITERS", 3000);
    let budget = Duration::from_secs(env_or("SLUICE_FUZZ_SECS", 40));
    let mut seeds: Vec<String> = seed_files()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(seeds.len() >= 10, "seed corpus too small: {}", seeds.len());
    for extra in [
        "",
        "{}",
        "[]",
        "~",
        "a: [",
        "\"",
        "static_resources: {clusters: [{}]}",
    ] {
        seeds.push(extra.to_string());
    }
    let trees: Vec<Value> = seeds
        .iter()
        .filter_map(|s| serde_yaml_ng::from_str::<Value>(s).ok())
        .filter(|v| v.is_object())
        .collect();

    let mut failures: Vec<String> = Vec::new();
    let run = |input: String, failures: &mut Vec<String>| {
        let result = std::panic::catch_unwind(|| sluice_config::fuzz::load(input.as_bytes()));
        if result.is_err() {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let file = dir.join(format!("config-fuzz-failure-{}.txt", failures.len()));
            let _ = std::fs::write(&file, &input);
            failures.push(file.display().to_string());
        }
    };

    let start = Instant::now();
    for s in &seeds {
        run(s.clone(), &mut failures);
    }
    let mut rng = Rng(0x0005_eedc_0f16_u64);
    let mut done = 0u64;
    while done < iters && start.elapsed() < budget && failures.len() < 5 {
        let input = if rng.below(2) == 0 && !trees.is_empty() {
            let tree = &trees[rng.below(trees.len())];
            let donor = &trees[rng.below(trees.len())];
            let mutated = mutate_tree(&mut rng, tree, donor);
            if rng.below(2) == 0 {
                serde_json::to_string(&mutated).unwrap()
            } else {
                serde_yaml_ng::to_string(&mutated).unwrap_or_default()
            }
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate_bytes(&mut rng, seed)
        };
        run(input, &mut failures);
        done += 1;
    }
    println!(
        "config fuzz smoke: {} seeds + {done} mutations in {:?}",
        seeds.len(),
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "the config loader panicked; inputs saved in:\n{}",
        failures.join("\n")
    );
}
