//! Any bytes as the query string of every read-only admin endpoint (`/stats?filter=…`,
//! `/config_dump?resource=…&mask=…`, …): an answer, never a panic
//! (`sluice_proxy::admin::fuzzing::check`). The same check runs bounded in the normal test suite
//! (`admin::fuzzing::tests::bounded_query_sweep_over_every_read_only_endpoint`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_proxy::admin::fuzzing::check(data);
});
