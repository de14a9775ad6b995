//! Any bytes as the start of an HTTP/1 connection: sluice's request-head parser must never
//! panic, and must agree with a plain reference parser on accept/reject, the reply it makes and
//! every parsed field (`sluice_proxy::http::codec::fuzzing::check`). The same check runs bounded
//! in the normal test suite (`http::codec::fuzzing::tests::bounded_differential_fuzz`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_proxy::http::codec::fuzzing::check(data);
});
