#![no_main]
//! Fuzz target `elf`: see `taskprof::fuzzing::elf` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::elf(data));
