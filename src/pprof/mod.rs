//! Output formats: pprof (the generated `perftools.profiles` types plus a
//! builder that interns strings, mappings, locations and functions), and
//! folded stacks with the flame graph drawn from them.

mod builder;
mod check;
mod folded;

/// The pprof schema, generated from `proto/profile.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

pub use builder::{build_profile, decode_gzip, encode_gzip, ProfileMeta, SampleLabels};
pub use check::check_profile;
pub use folded::{folded_lines, write_flamegraph};

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::symbolize::samples::{Frame, MappingInfo, Sample};
    use crate::symbolize::{synthetic_lines, FunctionInfo, LineInfo, Lines};

    fn lines(names: &[(&str, u32)]) -> Lines {
        names
            .iter()
            .map(|(name, line)| LineInfo {
                function: Arc::new(FunctionInfo {
                    name: name.to_string(),
                    system_name: format!("_Z{name}"),
                    file: "/src/app.c".into(),
                    start_line: 1,
                }),
                line: *line,
            })
            .collect::<Vec<_>>()
            .into()
    }

    /// Samples of two threads of one process, with inlined, kernel and
    /// unknown frames; the OTLP tests build from them too.
    pub(crate) fn fixture() -> Vec<Sample> {
        let app = Arc::new(MappingInfo {
            tgid: 10,
            start: 0x1000,
            limit: 0x2000,
            file_offset: 0x1000,
            filename: "/usr/bin/app".into(),
            build_id: "abcd".into(),
        });
        let kernel = Arc::new(MappingInfo {
            tgid: 0,
            start: 0xffff_8000_0000_0000,
            limit: u64::MAX,
            file_offset: 0,
            filename: "[kernel.kallsyms]".into(),
            build_id: String::new(),
        });
        let frame = |address, lines| Frame {
            address,
            mapping: Some(Arc::clone(&app)),
            lines,
            kernel: false,
            python: false,
        };
        let hot = frame(0x1100, lines(&[("inlined_leaf", 7), ("hot", 3)]));
        let main = frame(0x1200, lines(&[("main", 9)]));
        let read = Frame {
            address: 0xffff_ffff_8100_0000,
            mapping: Some(kernel),
            lines: synthetic_lines("ksys_read"),
            kernel: true,
            python: false,
        };
        let unknown = Frame {
            address: 0x9999,
            mapping: None,
            lines: synthetic_lines("[unknown]"),
            kernel: false,
            python: false,
        };
        let sample = |tid, frames: Vec<Frame>, count| Sample {
            pid: 10,
            tid,
            thread_name: "worker;1".into(),
            process_name: "app".into(),
            frames,
            count,
        };
        vec![
            sample(10, vec![hot.clone(), main.clone()], 5),
            sample(11, vec![hot, main.clone()], 2),
            sample(10, vec![read, main.clone()], 1),
            sample(10, vec![unknown, main], 1),
        ]
    }

    /// 100 Hz, a 2 s window starting 5 s after the epoch.
    pub(crate) fn meta() -> ProfileMeta {
        ProfileMeta {
            frequency_hz: 100,
            start: UNIX_EPOCH + Duration::from_secs(5),
            duration: Duration::from_secs(2),
            sample_labels: SampleLabels::All,
        }
    }

    #[test]
    fn profile_round_trips_and_keeps_its_invariants() {
        let profile = build_profile(&fixture(), &meta());
        let decoded = decode_gzip(&encode_gzip(&profile).unwrap()).unwrap();
        assert_eq!(decoded, profile);
        assert_eq!(check_profile(&decoded), Vec::<String>::new());

        let s = |i: i64| decoded.string_table[i as usize].as_str();
        let types: Vec<_> = decoded.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(decoded.period, 10_000_000);
        assert_eq!(decoded.time_nanos, 5_000_000_000);
        assert_eq!(decoded.duration_nanos, 2_000_000_000);
        assert_eq!(decoded.sample[0].value, vec![5, 50_000_000]);

        // Two mappings, flags set truthfully.
        assert_eq!(decoded.mapping.len(), 2);
        let app = &decoded.mapping[0];
        assert_eq!(
            (s(app.filename), s(app.build_id), app.file_offset),
            ("/usr/bin/app", "abcd", 0x1000)
        );
        assert!(app.has_functions && app.has_filenames && app.has_line_numbers && app.has_inline_frames);
        let kernel = &decoded.mapping[1];
        assert_eq!(s(kernel.filename), "[kernel.kallsyms]");
        assert!(kernel.has_functions && !kernel.has_filenames && !kernel.has_line_numbers && !kernel.has_inline_frames);

        // Shared frames are one location; inlined frames innermost first.
        assert_eq!(decoded.sample[0].location_id, decoded.sample[1].location_id);
        let hot = &decoded.location[decoded.sample[0].location_id[0] as usize - 1];
        let names: Vec<_> = hot
            .line
            .iter()
            .map(|l| s(decoded.function[l.function_id as usize - 1].name))
            .collect();
        assert_eq!(names, ["inlined_leaf", "hot"]);
        let f = &decoded.function[0];
        assert_eq!(
            (s(f.name), s(f.system_name), s(f.filename), f.start_line),
            ("inlined_leaf", "_Zinlined_leaf", "/src/app.c", 1)
        );

        // An address outside every mapping has no mapping, not a wrong one.
        let unknown = &decoded.location[decoded.sample[3].location_id[0] as usize - 1];
        assert_eq!(unknown.mapping_id, 0);

        // Labels: numeric pid/tid, string thread and process names.
        let labels: Vec<_> = decoded.sample[1]
            .label
            .iter()
            .map(|l| {
                (
                    s(l.key),
                    if l.str != 0 {
                        s(l.str).to_string()
                    } else {
                        l.num.to_string()
                    },
                )
            })
            .collect();
        assert_eq!(
            labels,
            [
                ("pid", "10".into()),
                ("tid", "11".into()),
                ("thread_name", "worker;1".into()),
                ("process_name", "app".into())
            ]
        );
    }

    /// The profile built from [`fixture`], byte for byte: any change to
    /// what the builder writes (order, interning, flags) shows up here.
    /// After an intended change, regenerate it with
    /// `TASKPROF_BLESS=1 cargo test --lib pprof::tests::profile_matches_its_golden_bytes`.
    #[test]
    fn profile_matches_its_golden_bytes() {
        use prost::Message;

        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pprof/testdata/fixture.pb");
        let bytes = build_profile(&fixture(), &meta()).encode_to_vec();
        if std::env::var_os("TASKPROF_BLESS").is_some() {
            std::fs::write(&golden, &bytes).unwrap();
        }
        let expected = std::fs::read(&golden).unwrap();
        if bytes != expected {
            let expected = proto::Profile::decode(expected.as_slice()).unwrap();
            panic!(
                "the built profile differs from `{}`\nexpected: {expected:#?}\nbuilt: {:#?}",
                golden.display(),
                build_profile(&fixture(), &meta())
            );
        }
    }

    #[test]
    fn checker_catches_broken_profiles() {
        let mut profile = build_profile(&fixture(), &meta());
        profile.location[0].address = 0x5000;
        profile.string_table.push("app".into());
        profile.sample[0].location_id.push(999);
        let problems = check_profile(&profile).join("\n");
        assert!(problems.contains("outside mapping"), "{problems}");
        assert!(problems.contains("appears twice"), "{problems}");
        assert!(problems.contains("unknown location 999"), "{problems}");
    }

    #[test]
    fn folded_lines_are_root_first_merged_and_marked() {
        let lines = folded_lines(&fixture());
        assert_eq!(
            lines,
            [
                "app;main;[unknown] 1",
                "app;main;hot;inlined_leaf 7",
                "app;main;ksys_read_[k] 1",
            ]
        );
        let mut svg = Vec::new();
        write_flamegraph(&fixture(), "t", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("<svg") && svg.contains("inlined_leaf"));
    }
}
