//! OpenTelemetry profiles (OTLP, `opentelemetry.proto.profiles.v1development`
//! as carried by the pinned `opentelemetry-proto` crate): a window's
//! symbolized samples become one `ExportProfilesServiceRequest`.
//!
//! The request is built from the same per-window [`Sample`]s as the pprof
//! profiles, never from pprof bytes:
//! - [`build_window`] interns every string, attribute, mapping, function,
//!   location and stack of all the window's processes into one
//!   `ProfilesDictionary`, whose tables all start with their zero entry, and
//!   makes one `ResourceProfiles` per process;
//! - the agent keeps each `ResourceProfiles` encoded on its own, so that the
//!   delivery worker and the spool handle it like any other profile, and the
//!   encoded dictionary once per window;
//! - [`export_request`] joins those encoded parts into the request's bytes
//!   without decoding them (a protobuf message is the concatenation of its
//!   fields), for whichever of the window's profiles are still undelivered.
//!
//! [`check_request`] states the dictionary invariants, for the tests.
//!
//! [`Sample`]: crate::symbolize::samples::Sample

mod builder;
mod check;

pub use builder::{build_window, AttributeValue, ResourceInput, WindowProfiles};
pub use check::check_request;

/// The generated OTLP types this module builds (re-exported so that callers
/// and tests name the same version).
pub use opentelemetry_proto::tonic as proto;

/// The `ExportProfilesServiceRequest` field numbers, from
/// `opentelemetry/proto/collector/profiles/v1development/profiles_service.proto`.
const RESOURCE_PROFILES_FIELD: u32 = 1;
const DICTIONARY_FIELD: u32 = 2;

/// The bytes of an `ExportProfilesServiceRequest` holding the encoded
/// `ResourceProfiles` in `resources`, in order, and the encoded
/// `ProfilesDictionary` `dictionary` they all point into.
pub fn export_request<'a>(resources: impl IntoIterator<Item = &'a [u8]>, dictionary: &[u8]) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, WireType};

    let mut out = Vec::new();
    for resource in resources {
        encode_key(RESOURCE_PROFILES_FIELD, WireType::LengthDelimited, &mut out);
        encode_varint(resource.len() as u64, &mut out);
        out.extend_from_slice(resource);
    }
    encode_key(DICTIONARY_FIELD, WireType::LengthDelimited, &mut out);
    encode_varint(dictionary.len() as u64, &mut out);
    out.extend_from_slice(dictionary);
    out
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::proto::collector::profiles::v1development::ExportProfilesServiceRequest;
    use super::proto::common::v1::any_value::Value;
    use super::*;
    use crate::pprof::tests::meta;
    use crate::symbolize::samples::Sample;

    fn text(value: &str) -> AttributeValue {
        AttributeValue::Text(value.to_string())
    }

    fn two_processes(samples: &[Sample]) -> WindowProfiles {
        let (first, second): (Vec<_>, Vec<_>) = samples.iter().cloned().partition(|s| s.count != 1);
        let resources = [
            ResourceInput {
                attributes: vec![
                    ("service.name".into(), text("app")),
                    ("process.pid".into(), AttributeValue::Int(10)),
                ],
                samples: &first,
            },
            ResourceInput {
                attributes: vec![("service.name".into(), text("other"))],
                samples: &second,
            },
        ];
        build_window(&resources, &meta())
    }

    /// Decodes the request the agent would send: every part encoded alone,
    /// then joined by [`export_request`].
    fn request(window: &WindowProfiles) -> ExportProfilesServiceRequest {
        let parts: Vec<Vec<u8>> = window.resources.iter().map(|r| r.encode_to_vec()).collect();
        let bytes = export_request(parts.iter().map(Vec::as_slice), &window.dictionary.encode_to_vec());
        ExportProfilesServiceRequest::decode(bytes.as_slice()).expect("the joined request decodes")
    }

    #[test]
    fn joined_parts_decode_as_the_whole_request() {
        let window = two_processes(&crate::pprof::tests::fixture());
        let decoded = request(&window);
        assert_eq!(decoded.resource_profiles, window.resources);
        assert_eq!(decoded.dictionary.as_ref(), Some(&window.dictionary));
        assert_eq!(check_request(&decoded), Vec::<String>::new());
    }

    #[test]
    fn profiles_carry_the_window_types_and_attributes() {
        let decoded = request(&two_processes(&crate::pprof::tests::fixture()));
        let dict = decoded.dictionary.as_ref().expect("dictionary");
        let s = |i: i32| dict.string_table[i as usize].as_str();
        assert_eq!(decoded.resource_profiles.len(), 2);
        let resource = &decoded.resource_profiles[0];
        let attributes: Vec<_> = resource
            .resource
            .as_ref()
            .expect("resource")
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_ref().and_then(|v| v.value.clone())))
            .collect();
        assert_eq!(
            attributes,
            [
                ("service.name", Some(Value::StringValue("app".into()))),
                ("process.pid", Some(Value::IntValue(10)))
            ]
        );
        let scope = &resource.scope_profiles[0];
        let name = scope.scope.as_ref().map(|s| (s.name.as_str(), s.version.as_str()));
        assert_eq!(name, Some(("taskprof", env!("CARGO_PKG_VERSION"))));
        let profile = &scope.profiles[0];
        let kind = |t: &Option<proto::profiles::v1development::ValueType>| {
            t.as_ref().map(|t| (s(t.type_strindex), s(t.unit_strindex)))
        };
        assert_eq!(kind(&profile.sample_type), Some(("samples", "count")));
        assert_eq!(kind(&profile.period_type), Some(("cpu", "nanoseconds")));
        assert_eq!(profile.period, 10_000_000);
        assert_eq!(profile.time_unix_nano, 5_000_000_000);
        assert_eq!(profile.duration_nano, 2_000_000_000);
        // 5 and 2 samples of one stack on two threads stay apart, by thread.
        let total: i64 = profile.samples.iter().flat_map(|s| &s.values).sum();
        assert_eq!(total, 7);
        let threads: Vec<Vec<(String, String)>> = profile
            .samples
            .iter()
            .map(|sample| {
                sample
                    .attribute_indices
                    .iter()
                    .map(|&i| {
                        let attribute = &dict.attribute_table[i as usize];
                        let value = match attribute.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(Value::StringValue(v)) => v.clone(),
                            Some(Value::IntValue(v)) => v.to_string(),
                            other => format!("{other:?}"),
                        };
                        (s(attribute.key_strindex).to_string(), value)
                    })
                    .collect()
            })
            .collect();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            threads,
            [
                vec![pair("thread.id", "10"), pair("thread.name", "worker;1")],
                vec![pair("thread.id", "11"), pair("thread.name", "worker;1")]
            ]
        );
        assert_eq!(profile.samples[0].stack_index, profile.samples[1].stack_index);
    }

    #[test]
    fn frames_keep_their_functions_types_and_build_ids() {
        let decoded = request(&two_processes(&crate::pprof::tests::fixture()));
        let dict = decoded.dictionary.as_ref().expect("dictionary");
        let s = |i: i32| dict.string_table[i as usize].as_str();
        let frame_type = |location: &proto::profiles::v1development::Location| -> Vec<String> {
            location
                .attribute_indices
                .iter()
                .map(|&i| &dict.attribute_table[i as usize])
                .filter(|a| s(a.key_strindex) == "profile.frame.type")
                .filter_map(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(v)) => Some(v.clone()),
                    _ => None,
                })
                .collect()
        };
        // The stack of the first sample: [inlined_leaf, hot] then main, leaf first.
        let profile = &decoded.resource_profiles[0].scope_profiles[0].profiles[0];
        let stack = &dict.stack_table[profile.samples[0].stack_index as usize];
        let names: Vec<Vec<&str>> = stack
            .location_indices
            .iter()
            .map(|&l| {
                dict.location_table[l as usize]
                    .lines
                    .iter()
                    .map(|line| s(dict.function_table[line.function_index as usize].name_strindex))
                    .collect()
            })
            .collect();
        assert_eq!(names, [vec!["inlined_leaf", "hot"], vec!["main"]]);
        let leaf = &dict.location_table[stack.location_indices[0] as usize];
        assert_eq!(frame_type(leaf), ["native"]);
        assert_eq!(leaf.address, 0x1100);
        let line = &leaf.lines[0];
        let function = &dict.function_table[line.function_index as usize];
        assert_eq!(
            (
                s(function.system_name_strindex),
                s(function.filename_strindex),
                line.line
            ),
            ("_Zinlined_leaf", "/src/app.c", 7)
        );
        let mapping = &dict.mapping_table[leaf.mapping_index as usize];
        assert_eq!(
            (s(mapping.filename_strindex), mapping.memory_start, mapping.file_offset),
            ("/usr/bin/app", 0x1000, 0x1000)
        );
        let build_id: Vec<_> = mapping
            .attribute_indices
            .iter()
            .map(|&i| &dict.attribute_table[i as usize])
            .map(|a| (s(a.key_strindex), a.value.as_ref().and_then(|v| v.value.clone())))
            .collect();
        assert_eq!(
            build_id,
            [(
                "process.executable.build_id.gnu",
                Some(Value::StringValue("abcd".into()))
            )]
        );

        // The kernel frame is typed so; the unknown one has no mapping.
        let other = &decoded.resource_profiles[1].scope_profiles[0].profiles[0];
        let mut types = Vec::new();
        for sample in &other.samples {
            let stack = &dict.stack_table[sample.stack_index as usize];
            let leaf = &dict.location_table[stack.location_indices[0] as usize];
            let name = s(dict.function_table[leaf.lines[0].function_index as usize].name_strindex);
            types.push((name, frame_type(leaf), leaf.mapping_index));
        }
        assert_eq!(types[0].0, "ksys_read");
        assert_eq!(types[0].1, ["kernel"]);
        assert_eq!((types[1].0, types[1].2), ("[unknown]", 0));
        // `main` is one location in both processes' stacks: interned once.
        let mains: std::collections::BTreeSet<i32> = [profile, other]
            .iter()
            .flat_map(|p| &p.samples)
            .map(|sample| {
                *dict.stack_table[sample.stack_index as usize]
                    .location_indices
                    .last()
                    .expect("root")
            })
            .collect();
        assert_eq!(mains.len(), 1);
    }

    #[test]
    fn python_frames_are_cpython_and_truncation_frames_stay() {
        let mut samples = crate::pprof::tests::fixture();
        samples[0].frames[1].python = true;
        samples[0].frames.push(crate::symbolize::samples::Frame {
            address: 0,
            mapping: None,
            lines: crate::symbolize::synthetic_lines("[unwind stopped: depth limit]"),
            kernel: false,
            python: false,
        });
        let inputs = [ResourceInput {
            attributes: Vec::new(),
            samples: &samples[..1],
        }];
        let decoded = request(&build_window(&inputs, &meta()));
        assert_eq!(check_request(&decoded), Vec::<String>::new());
        let dict = decoded.dictionary.as_ref().expect("dictionary");
        let s = |i: i32| dict.string_table[i as usize].as_str();
        let sample = &decoded.resource_profiles[0].scope_profiles[0].profiles[0].samples[0];
        let frames: Vec<(&str, &str)> = dict.stack_table[sample.stack_index as usize]
            .location_indices
            .iter()
            .map(|&l| {
                let location = &dict.location_table[l as usize];
                let name = s(dict.function_table[location.lines[0].function_index as usize].name_strindex);
                let kind = match dict.attribute_table[location.attribute_indices[0] as usize]
                    .value
                    .as_ref()
                    .and_then(|v| v.value.as_ref())
                {
                    Some(Value::StringValue(kind)) => kind.as_str(),
                    _ => "",
                };
                (name, kind)
            })
            .collect();
        assert_eq!(
            frames,
            [
                ("inlined_leaf", "native"),
                ("main", "cpython"),
                ("[unwind stopped: depth limit]", "native")
            ]
        );
    }

    #[test]
    fn the_checker_finds_broken_indices() {
        let mut decoded = request(&two_processes(&crate::pprof::tests::fixture()));
        let dict = decoded.dictionary.as_mut().expect("dictionary");
        dict.string_table[0] = "x".into();
        dict.stack_table[1].location_indices.push(999);
        let problems = check_request(&decoded).join("\n");
        assert!(problems.contains("string_table[0]"), "{problems}");
        assert!(problems.contains("location index 999"), "{problems}");
        decoded.dictionary = None;
        assert!(check_request(&decoded).join("\n").contains("no dictionary"));
    }
}
