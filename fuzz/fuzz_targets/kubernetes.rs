#![no_main]
//! Fuzz target `kubernetes`: see `taskprof::fuzzing::kubernetes` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::kubernetes(data));
