#![no_main]
//! Fuzz target `spool`: see `taskprof::fuzzing::spool` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::spool(data));
