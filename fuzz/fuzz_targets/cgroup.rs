#![no_main]
//! Fuzz target `cgroup`: see `taskprof::fuzzing::cgroup` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::cgroup(data));
