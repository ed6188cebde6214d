//! Entry points for the fuzz targets in `fuzz/`, one per parser of outside
//! input, each asserting the parser's invariants (a violated one panics,
//! which is what a fuzzer reports). The same functions replay the committed
//! corpora in `cargo test` on stable Rust, so every input a fuzzer ever
//! kept, and every regression it found, is checked in CI.
//!
//! This module is not part of taskprof's interface: it is public only so
//! that the fuzz crate, which is a separate crate, can call it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::pprof::{build_profile, check_profile, decode_gzip, encode_gzip, ProfileMeta, SampleLabels};
use crate::process::maps::{parse_maps, parse_maps_line};
use crate::symbolize::samples::{Frame, MappingInfo, Sample};
use crate::symbolize::{FunctionInfo, KernelSymbols, LineInfo, Lines, PerfMap};
use crate::unwind::elf::Elf;
use crate::unwind::table::{build_table, CfaRule, TableError};
use crate::upload::{Batch, SeriesProfile};

/// A fuzz target: panics when the input breaks an invariant.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("elf", elf),
    ("unwind_table", unwind_table),
    ("proc_maps", proc_maps),
    ("cgroup", cgroup),
    ("perf_map", perf_map),
    ("kallsyms", kallsyms),
    ("spool", spool),
    ("agent_yaml", agent_yaml),
    ("kubernetes", kubernetes),
    ("pprof", pprof),
];

/// The ELF reader: every section and segment it reports lies inside the
/// file, and reading any section's bytes cannot fail.
pub fn elf(data: &[u8]) {
    let Ok(elf) = Elf::parse(data) else { return };
    for section in &elf.sections {
        let range = &section.file_range;
        assert!(
            range.start <= range.end && range.end <= data.len(),
            "section {:?} at {range:?} outside a file of {} bytes",
            section.name,
            data.len()
        );
        assert_eq!(elf.bytes(section).len(), range.len());
    }
    for segment in &elf.segments {
        if let Some(found) = elf.segment_at_offset(segment.offset) {
            assert!(found.offset <= segment.offset);
        }
    }
}

/// The unwind table builder: rows strictly sorted by address, neighbours
/// with different rules, the span within the 32-bit offsets the BPF rows
/// hold, the last row ending the covered code, and `row_for` agreeing with
/// the rows.
pub fn unwind_table(data: &[u8]) {
    elf(data);
    let table = match build_table(data) {
        Ok(table) => table,
        Err(TableError::Elf(_) | TableError::Machine(_) | TableError::NoUnwindInfo) => return,
        Err(TableError::Parse(_) | TableError::TooLarge) => return,
    };
    let rows = &table.rows;
    for pair in rows.windows(2) {
        assert!(pair[0].address < pair[1].address, "rows out of order: {pair:?}");
        assert!(
            pair[0].cfa != pair[1].cfa || pair[0].rbp != pair[1].rbp,
            "equal neighbours not merged: {pair:?}"
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        assert!(
            last.address - first.address <= u64::from(u32::MAX),
            "rows span more than 4 GiB"
        );
        assert_eq!(last.cfa, CfaRule::NoInfo, "the last row must end the covered code");
        assert_eq!(table.base(), first.address);
        assert_eq!(table.row_for(first.address), Some(first));
        assert_eq!(table.row_for(last.address.saturating_add(1)), Some(last));
        if first.address > 0 {
            assert_eq!(table.row_for(first.address - 1), None);
        }
    }
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(
            table.row_for(row.address),
            Some(row),
            "row {index} is not found at its own address"
        );
    }
    assert!(table.rows_before_merge >= rows.len());
}

/// `/proc/PID/maps`: every mapping parsed has start < end, and a whole file
/// parses to exactly the lines that parse alone.
pub fn proc_maps(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let entries = parse_maps(&text);
    for entry in &entries {
        assert!(
            entry.start < entry.end,
            "an empty or inverted mapping was accepted: {entry:?}"
        );
    }
    let alone = text.lines().filter_map(parse_maps_line).count();
    assert_eq!(entries.len(), alone);
}

/// `/proc/PID/cgroup`: a container id is 64 lowercase hex digits, a pod UID
/// is a canonical lowercase UUID or a 32-hex static pod hash, and each
/// occurs in the text.
pub fn cgroup(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let found = crate::process::cgroup::parse_cgroup(&text);
    let lower = text.to_ascii_lowercase();
    if let Some(id) = &found.container_id {
        assert!(
            id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "bad container id {id:?}"
        );
        assert!(lower.contains(id.as_str()), "container id {id:?} not in the text");
    }
    if let Some(uid) = &found.pod_uid {
        let hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let groups: Vec<&str> = uid.split('-').collect();
        let canonical = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g));
        assert!(canonical || (uid.len() == 32 && hex(uid)), "bad pod uid {uid:?}");
        assert!(
            lower.contains(uid.as_str()) || lower.contains(&uid.replace('-', "_")),
            "pod uid {uid:?} not in the text"
        );
    }
}

/// Perf maps: a name is found at every entry's start, every name found is
/// non-empty and comes from the text, and lookups never panic.
pub fn perf_map(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let map = PerfMap::parse(&text);
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(start), Some(size)) = (parts.next(), parts.next()) else {
            continue;
        };
        let start = u64::from_str_radix(start.trim_start_matches("0x"), 16);
        let size = u64::from_str_radix(size.trim_start_matches("0x"), 16);
        let (Ok(start), Ok(_size)) = (start, size) else {
            continue;
        };
        for address in [start, start.wrapping_add(1), start.wrapping_sub(1)] {
            if let Some(name) = map.lookup(address) {
                assert!(
                    !name.is_empty() && text.contains(name),
                    "{name:?} is not a name in the map"
                );
            }
        }
    }
}

/// kallsyms: every kept symbol is found at its own address and each name
/// found is a whole token of the text.
pub fn kallsyms(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let symbols = KernelSymbols::parse(&text);
    let mut kept = 0;
    for line in text.lines() {
        let Some((address, _)) = crate::symbolize::kallsyms_line(line) else {
            continue;
        };
        kept += 1;
        let name = symbols.lookup(address).expect("a kept symbol is found at its address");
        assert!(
            text.split_ascii_whitespace().any(|token| token == name),
            "{name:?} is not in the text"
        );
    }
    assert_eq!(symbols.len(), kept);
}

/// The spool file reader: a file that decodes re-encodes to the same window,
/// its summary (read without the pprof bytes) agrees with it, and a batch
/// built from the input survives encode and decode unchanged.
pub fn spool(data: &[u8]) {
    use crate::upload::spool_fuzzing::{decode, encode, summary_of};
    if let Ok(batch) = decode(data) {
        // Version 1 files are read but version 2 is written: compare
        // what they hold, not their bytes.
        assert_eq!(
            decode(&encode(&batch)).as_ref(),
            Ok(&batch),
            "a decoded window does not re-encode"
        );
        let summary = summary_of(data).expect("a window that decodes has a summary");
        assert_eq!(summary, (batch.sequence, batch.profiles.len() as u64, batch.samples()));
    }
    // The summary may accept what decoding refuses (it skips the checksum
    // and the label bytes) but never panics.
    let _ = summary_of(data);

    let mut input = Input::new(data);
    let batch = Batch {
        sequence: input.u64(),
        start: UNIX_EPOCH + Duration::new(input.u64() >> 2, input.u32() % 1_000_000_000),
        end: UNIX_EPOCH + Duration::new(input.u64() >> 2, input.u32() % 1_000_000_000),
        profiles: (0..input.below(4))
            .map(|_| SeriesProfile {
                labels: (0..input.below(4)).map(|_| (input.text(), input.text())).collect(),
                payload: input.bytes(),
                samples: input.u64(),
            })
            .collect(),
        shared: input.bytes(),
    };
    let bytes = encode(&batch);
    assert_eq!(
        decode(&bytes).as_ref(),
        Ok(&batch),
        "a written window reads back different"
    );
    assert_eq!(
        summary_of(&bytes),
        Ok((batch.sequence, batch.profiles.len() as u64, batch.samples()))
    );
}

/// The agent's YAML config, through the whole of `AgentConfig::load`: it
/// either loads or fails with a usage error (exit 2), never panics, and a
/// config that loads honours the documented bounds.
pub fn agent_yaml(data: &[u8]) {
    use crate::agent::config::AgentConfig;
    let Some(path) = yaml_scratch_file() else { return };
    if std::fs::write(&path, data).is_err() {
        return;
    }
    use clap::Parser;
    let argv = ["taskprof", "agent", "--config", &path.to_string_lossy()].map(String::from);
    let Ok(crate::cli::Cli {
        command: crate::cli::Command::Agent(args),
        ..
    }) = crate::cli::Cli::try_parse_from(argv)
    else {
        panic!("`taskprof agent --config FILE` no longer parses");
    };
    match AgentConfig::load(args, &|_| None) {
        Ok(config) => {
            let sampling = config.session_settings();
            assert!(
                (1..=10_000).contains(&sampling.frequency_hz),
                "frequency {}",
                sampling.frequency_hz
            );
            assert!(config.sampling.window >= Duration::from_secs(1));
        }
        Err(err) => {
            let err = anyhow::Error::from(err);
            assert!(crate::agent::config::is_usage_error(&err), "not a usage error: {err:#}");
            assert!(!err.to_string().is_empty());
        }
    }
}

/// One scratch file per fuzzing process for the YAML target.
fn yaml_scratch_file() -> Option<PathBuf> {
    static PATH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("taskprof-fuzz-yaml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        Some(dir.join("agent.yaml"))
    })
    .clone()
}

/// The Kubernetes list/watch decoder: the watch stream is split into the
/// same lines however it is chunked, and every pod decoded from a list or
/// an event has a lowercase UID and container ids without their runtime
/// prefix.
pub fn kubernetes(data: &[u8]) {
    use crate::kubernetes::watch_fuzzing::{decode_event, decode_list, split_lines};
    let (&chunk, stream) = data.split_first().unwrap_or((&1, &[]));
    let whole = split_lines(stream, stream.len().max(1));
    let chunked = split_lines(stream, usize::from(chunk).max(1));
    assert_eq!(whole, chunked, "lines depend on how the stream was chunked");
    let check = |pod: &crate::kubernetes::PodMetadata| {
        assert!(!pod.pod_uid.is_empty());
        assert_eq!(pod.pod_uid, pod.pod_uid.to_ascii_lowercase());
        for (id, _) in &pod.containers {
            assert!(!id.contains("://"), "container id {id:?} keeps its runtime prefix");
        }
    };
    for line in &whole {
        if let Some(pod) = decode_event(line) {
            check(&pod);
        }
    }
    if let Ok((version, pods)) = decode_list(stream) {
        assert!(!version.is_empty());
        pods.iter().for_each(check);
    }
}

/// The pprof builder, through `check_profile`: any symbolized samples build
/// a profile with no violated invariant, which round-trips through gzip and
/// keeps every sample. Arbitrary bytes that decode as a profile are
/// checked without panicking.
pub fn pprof(data: &[u8]) {
    if let Ok(profile) = decode_gzip(data) {
        let _ = check_profile(&profile);
    }
    let mut input = Input::new(data);
    let mappings: Vec<Arc<MappingInfo>> = (0..input.below(4))
        .map(|_| {
            let start = input.u64() >> 1;
            let limit = start.saturating_add(1 + input.u64() % (1 << 32));
            Arc::new(MappingInfo {
                tgid: input.u32(),
                start,
                limit,
                file_offset: input.u64(),
                filename: input.text(),
                build_id: input.text(),
            })
        })
        .collect();
    let samples: Vec<Sample> = (0..input.below(8))
        .map(|_| {
            let frames = (0..input.below(6))
                .map(|_| {
                    let mapping = match input.below(mappings.len() as u64 + 1) {
                        0 => None,
                        n => mappings.get(n as usize - 1).cloned(),
                    };
                    let address = match &mapping {
                        Some(m) => m.start + input.u64() % (m.limit - m.start),
                        None => input.u64(),
                    };
                    let lines: Lines = (0..input.below(3))
                        .map(|_| LineInfo {
                            function: Arc::new(FunctionInfo {
                                name: input.text(),
                                system_name: input.text(),
                                file: input.text(),
                                start_line: input.u32(),
                            }),
                            line: input.u32(),
                        })
                        .collect::<Vec<_>>()
                        .into();
                    Frame {
                        address,
                        mapping,
                        lines,
                        kernel: input.flag(),
                        python: input.flag(),
                    }
                })
                .collect();
            Sample {
                pid: input.u32(),
                tid: input.u32(),
                thread_name: input.text(),
                process_name: input.text(),
                frames,
                count: 1 + input.u64() % 1_000_000,
            }
        })
        .collect();
    let labels = [SampleLabels::All, SampleLabels::Process, SampleLabels::ThreadName];
    let meta = ProfileMeta {
        frequency_hz: 1 + input.u64() % 10_000,
        start: UNIX_EPOCH + Duration::from_secs(input.u64() % (1 << 34)),
        duration: Duration::from_millis(input.u64() % (1 << 30)),
        sample_labels: labels[input.below(3) as usize],
    };
    let profile = build_profile(&samples, &meta);
    assert_eq!(check_profile(&profile), Vec::<String>::new(), "samples: {samples:#?}");
    let total: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    assert_eq!(total as u64, samples.iter().map(|s| s.count).sum::<u64>());
    let encoded = encode_gzip(&profile).expect("encoding to memory cannot fail");
    assert_eq!(decode_gzip(&encoded).expect("a built profile decodes"), profile);
}

/// Structured values drawn from fuzz bytes; zeros once they run out.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(len.min(self.data.len()));
        self.data = tail;
        head
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        let head = self.take(8);
        bytes[..head.len()].copy_from_slice(head);
        u64::from_le_bytes(bytes)
    }

    fn u32(&mut self) -> u32 {
        self.u64() as u32
    }

    fn below(&mut self, bound: u64) -> u64 {
        let byte = self.take(1).first().copied().unwrap_or(0);
        u64::from(byte) % bound.max(1)
    }

    fn flag(&mut self) -> bool {
        self.below(2) == 1
    }

    fn bytes(&mut self) -> Vec<u8> {
        let len = self.below(64) as usize;
        self.take(len).to_vec()
    }

    fn text(&mut self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::TARGETS;

    /// Feeds every committed corpus file and every regression input of each
    /// target to its entry point (`fuzz/corpus/<target>`,
    /// `fuzz/regressions/<target>`): what the fuzzers found stays fixed.
    #[test]
    fn every_corpus_and_regression_input_holds_its_invariants() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut fed = 0;
        let mut broken = Vec::new();
        for (name, target) in TARGETS {
            let mut inputs = 0;
            // The cgroup target's seeds include the parser's own test
            // fixtures, which `cargo fuzz run cgroup` is given too.
            let fixtures =
                (*name == "cgroup").then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup"));
            let dirs = [root.join("corpus").join(name), root.join("regressions").join(name)];
            for dir in dirs.into_iter().chain(fixtures) {
                let Ok(listing) = std::fs::read_dir(&dir) else { continue };
                for item in listing {
                    let path = item.expect("list a corpus directory").path();
                    let data = std::fs::read(&path).expect("read a corpus file");
                    if std::panic::catch_unwind(|| target(&data)).is_err() {
                        broken.push(format!("{name}: {}", path.display()));
                    }
                    inputs += 1;
                }
            }
            assert!(
                inputs > 0,
                "the {name} target has no committed corpus under {}",
                root.display()
            );
            fed += inputs;
        }
        assert!(
            broken.is_empty(),
            "inputs that break an invariant (the panics above say which): {broken:#?}"
        );
        assert!(fed >= TARGETS.len());
    }
}
