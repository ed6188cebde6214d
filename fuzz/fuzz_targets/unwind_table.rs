#![no_main]
//! Fuzz target `unwind_table`: see `taskprof::fuzzing::unwind_table` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::unwind_table(data));
