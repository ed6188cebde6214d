//! Structural checks on an OTLP profiles request: the dictionary
//! invariants receivers rely on. Used by the tests.

use super::proto::collector::profiles::v1development::ExportProfilesServiceRequest;

/// Returns every violated invariant; empty means the request is sound:
/// there is a dictionary, `string_table[0]` is "" and every other table's
/// entry 0 is its zero value, and every index anywhere in the request lies
/// within its table.
pub fn check_request(request: &ExportProfilesServiceRequest) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(dict) = &request.dictionary else {
        return vec!["the request has no dictionary".to_string()];
    };
    let in_range = |index: i32, len: usize| index >= 0 && (index as usize) < len;
    let mut check = |what: &str, index: i32, len: usize| {
        if !in_range(index, len) {
            problems.push(format!("{what} index {index} is outside its table of {len}"));
        }
    };
    let strings = dict.string_table.len();
    let zero_first = [
        (
            "mapping_table",
            dict.mapping_table.first().map(|e| *e == Default::default()),
        ),
        (
            "location_table",
            dict.location_table.first().map(|e| *e == Default::default()),
        ),
        (
            "function_table",
            dict.function_table.first().map(|e| *e == Default::default()),
        ),
        ("link_table", dict.link_table.first().map(|e| *e == Default::default())),
        (
            "attribute_table",
            dict.attribute_table.first().map(|e| *e == Default::default()),
        ),
        (
            "stack_table",
            dict.stack_table.first().map(|e| *e == Default::default()),
        ),
        ("string_table", dict.string_table.first().map(String::is_empty)),
    ];
    let mut zero_problems = Vec::new();
    for (table, zero) in zero_first {
        if zero != Some(true) {
            zero_problems.push(format!("{table}[0] is missing or not the zero value"));
        }
    }
    for attribute in &dict.attribute_table {
        check("attribute key string", attribute.key_strindex, strings);
        check("attribute unit string", attribute.unit_strindex, strings);
    }
    for mapping in &dict.mapping_table {
        check("mapping filename string", mapping.filename_strindex, strings);
        for &i in &mapping.attribute_indices {
            check("mapping attribute", i, dict.attribute_table.len());
        }
    }
    for function in &dict.function_table {
        for i in [
            function.name_strindex,
            function.system_name_strindex,
            function.filename_strindex,
        ] {
            check("function string", i, strings);
        }
    }
    for location in &dict.location_table {
        check("location mapping", location.mapping_index, dict.mapping_table.len());
        for line in &location.lines {
            check("line function", line.function_index, dict.function_table.len());
        }
        for &i in &location.attribute_indices {
            check("location attribute", i, dict.attribute_table.len());
        }
    }
    for stack in &dict.stack_table {
        for &i in &stack.location_indices {
            check("stack location", i, dict.location_table.len());
        }
    }
    for resource in &request.resource_profiles {
        for profile in resource.scope_profiles.iter().flat_map(|s| &s.profiles) {
            for value_type in [&profile.sample_type, &profile.period_type].into_iter().flatten() {
                check("value type string", value_type.type_strindex, strings);
                check("value type string", value_type.unit_strindex, strings);
            }
            for &i in &profile.attribute_indices {
                check("profile attribute", i, dict.attribute_table.len());
            }
            for sample in &profile.samples {
                check("sample stack", sample.stack_index, dict.stack_table.len());
                check("sample link", sample.link_index, dict.link_table.len());
                for &i in &sample.attribute_indices {
                    check("sample attribute", i, dict.attribute_table.len());
                }
            }
        }
    }
    problems.extend(zero_problems);
    problems
}
