//! Structural checks on a pprof profile: the invariants `go tool pprof`
//! and the backends rely on. Used by the tests, and cheap enough to run on
//! any profile.

use std::collections::{HashMap, HashSet};

use super::proto::Profile;

/// Returns every violated invariant; empty means the profile is sound.
pub fn check_profile(profile: &Profile) -> Vec<String> {
    let mut problems = Vec::new();
    let strings = &profile.string_table;
    if strings.first().map(String::as_str) != Some("") {
        problems.push("string_table[0] is not \"\"".to_string());
    }
    let mut seen = HashSet::new();
    for s in strings {
        if !seen.insert(s) {
            problems.push(format!("string {s:?} appears twice in the string table"));
        }
    }
    let string_ok = |index: i64| index >= 0 && (index as usize) < strings.len();

    let mappings: HashMap<u64, _> = profile.mapping.iter().map(|m| (m.id, m)).collect();
    for (index, mapping) in profile.mapping.iter().enumerate() {
        if mapping.id != index as u64 + 1 {
            problems.push(format!("mapping #{index} has id {}", mapping.id));
        }
        if mapping.memory_start >= mapping.memory_limit {
            problems.push(format!("mapping {} is empty", mapping.id));
        }
        if !string_ok(mapping.filename) || !string_ok(mapping.build_id) {
            problems.push(format!("mapping {} names a missing string", mapping.id));
        }
    }
    let functions: HashSet<u64> = profile.function.iter().map(|f| f.id).collect();
    for (index, function) in profile.function.iter().enumerate() {
        if function.id != index as u64 + 1 {
            problems.push(format!("function #{index} has id {}", function.id));
        }
        if ![function.name, function.system_name, function.filename]
            .into_iter()
            .all(string_ok)
        {
            problems.push(format!("function {} names a missing string", function.id));
        }
    }
    let mut locations = HashSet::new();
    for (index, location) in profile.location.iter().enumerate() {
        if location.id != index as u64 + 1 {
            problems.push(format!("location #{index} has id {}", location.id));
        }
        locations.insert(location.id);
        if location.mapping_id != 0 {
            match mappings.get(&location.mapping_id) {
                None => problems.push(format!(
                    "location {} has unknown mapping {}",
                    location.id, location.mapping_id
                )),
                Some(m) if !(m.memory_start..m.memory_limit).contains(&location.address) => problems.push(format!(
                    "location {} address {:#x} is outside mapping {} [{:#x}, {:#x})",
                    location.id, location.address, m.id, m.memory_start, m.memory_limit
                )),
                Some(_) => {}
            }
        }
        for line in &location.line {
            if !functions.contains(&line.function_id) {
                problems.push(format!(
                    "location {} has unknown function {}",
                    location.id, line.function_id
                ));
            }
        }
    }
    for (index, sample) in profile.sample.iter().enumerate() {
        if sample.value.len() != profile.sample_type.len() {
            problems.push(format!(
                "sample #{index} has {} values for {} types",
                sample.value.len(),
                profile.sample_type.len()
            ));
        }
        if let Some(id) = sample.location_id.iter().find(|id| !locations.contains(id)) {
            problems.push(format!("sample #{index} has unknown location {id}"));
        }
        for label in &sample.label {
            if !string_ok(label.key) || !string_ok(label.str) || label.key == 0 {
                problems.push(format!("sample #{index} has a label with a bad string"));
            }
        }
    }
    problems
}
