//! Any bytes, as YAML and as JSON, through sluice's config loader: it must never panic or hang,
//! and a config that loads must load again from its own serialization. The same function runs
//! bounded in the normal test suite (`crates/config/tests/fuzz_smoke.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_config::fuzz::load(data);
});
