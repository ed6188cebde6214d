#![no_main]
//! Fuzz target `proc_maps`: see `taskprof::fuzzing::proc_maps` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::proc_maps(data));
