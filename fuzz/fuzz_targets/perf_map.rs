#![no_main]
//! Fuzz target `perf_map`: see `taskprof::fuzzing::perf_map` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::perf_map(data));
