#![no_main]
//! Fuzz target `pprof`: see `taskprof::fuzzing::pprof` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::pprof(data));
