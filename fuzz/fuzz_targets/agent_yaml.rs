#![no_main]
//! Fuzz target `agent_yaml`: see `taskprof::fuzzing::agent_yaml` for the invariants.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| taskprof::fuzzing::agent_yaml(data));
