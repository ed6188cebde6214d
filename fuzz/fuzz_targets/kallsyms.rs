#![no_main]
//! Fuzz target `kallsyms`: see `taskprof::fuzzing::kallsyms` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::kallsyms(data));
