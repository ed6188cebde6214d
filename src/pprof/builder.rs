//! Builds a `perftools.profiles.Profile` from symbolized samples.

use rustc_hash::FxHashMap as HashMap;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::read::GzDecoder;
use prost::Message;

use super::proto;
use crate::symbolize::samples::{MappingInfo, Sample};
use crate::symbolize::FunctionInfo;

/// What a profile covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileMeta {
    /// Sampling frequency per CPU, in Hz.
    pub frequency_hz: u64,
    /// When sampling started.
    pub start: SystemTime,
    /// How long sampling ran.
    pub duration: Duration,
    /// Which labels each sample carries.
    pub sample_labels: SampleLabels,
}

/// Labels on each pprof sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleLabels {
    /// `pid`, `tid`, `thread_name` and `process_name`: for profiles a person
    /// opens, where one file holds many processes.
    All,
    /// `pid`, `process_name` and `thread_name`: for uploads where one
    /// profile merges a series' processes. `pid` is a numeric label, which
    /// `go tool pprof -tagfocus=pid=N` filters on and Pyroscope, which
    /// splits every *string* sample label into series of its own, leaves
    /// alone; the two names are bounded by the executables and threads.
    Process,
    /// `thread_name` only: for uploads, where the process is a series label
    /// and backends such as Pyroscope make every sample label its own
    /// series dimension, so thread ids would explode cardinality.
    ThreadName,
}

impl ProfileMeta {
    /// Nanoseconds of CPU time one sample stands for.
    pub fn period_nanos(&self) -> i64 {
        (1_000_000_000 / self.frequency_hz.max(1)) as i64
    }
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    ids: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut strings = Strings::default();
        strings.id("");
        strings
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }
}

/// A location's identity: mapping id, address and (function id, line) pairs.
type LocationKey = (u64, u64, Vec<(u64, i64)>);

/// Builds the profile. Ids are dense and start at 1; string 0 is "".
pub fn build_profile(samples: &[Sample], meta: &ProfileMeta) -> proto::Profile {
    let mut strings = Strings::new();
    let mut profile = proto::Profile {
        sample_type: vec![
            proto::ValueType {
                r#type: strings.id("samples"),
                unit: strings.id("count"),
            },
            proto::ValueType {
                r#type: strings.id("cpu"),
                unit: strings.id("nanoseconds"),
            },
        ],
        period_type: Some(proto::ValueType {
            r#type: strings.id("cpu"),
            unit: strings.id("nanoseconds"),
        }),
        period: meta.period_nanos(),
        time_nanos: meta
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        duration_nanos: meta.duration.as_nanos() as i64,
        default_sample_type: 1,
        ..Default::default()
    };
    let keys = LabelKeys {
        pid: strings.id("pid"),
        tid: strings.id("tid"),
        thread_name: strings.id("thread_name"),
        process_name: strings.id("process_name"),
    };

    let mut mapping_ids: HashMap<&MappingInfo, u64> = HashMap::default();
    let mut function_ids: HashMap<&FunctionInfo, u64> = HashMap::default();
    let mut location_ids: HashMap<LocationKey, u64> = HashMap::default();

    for sample in samples {
        let mut location_id = Vec::with_capacity(sample.frames.len());
        for frame in &sample.frames {
            let mapping_id = match &frame.mapping {
                Some(info) => *mapping_ids.entry(info.as_ref()).or_insert_with(|| {
                    let id = profile.mapping.len() as u64 + 1;
                    profile.mapping.push(proto::Mapping {
                        id,
                        memory_start: info.start,
                        memory_limit: info.limit,
                        file_offset: info.file_offset,
                        filename: strings.id(&info.filename),
                        build_id: strings.id(&info.build_id),
                        ..Default::default()
                    });
                    id
                }),
                None => 0,
            };
            let lines: Vec<(u64, i64)> = frame
                .lines
                .iter()
                .map(|line| {
                    let function_id = *function_ids.entry(line.function.as_ref()).or_insert_with(|| {
                        let id = profile.function.len() as u64 + 1;
                        profile.function.push(proto::Function {
                            id,
                            name: strings.id(&line.function.name),
                            system_name: strings.id(&line.function.system_name),
                            filename: strings.id(&line.function.file),
                            start_line: line.function.start_line as i64,
                        });
                        id
                    });
                    (function_id, line.line as i64)
                })
                .collect();
            if mapping_id != 0 {
                let mapping = &mut profile.mapping[mapping_id as usize - 1];
                // Every location carries at least one function: ours or a
                // synthetic `file+offset` one; either way pprof must not
                // symbolize again.
                mapping.has_functions = true;
                mapping.has_filenames |= frame.lines.iter().any(|l| !l.function.file.is_empty());
                mapping.has_line_numbers |= frame.lines.iter().any(|l| l.line != 0);
                mapping.has_inline_frames |= frame.lines.len() > 1;
            }
            let key = (mapping_id, frame.address, lines);
            let id = match location_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let id = profile.location.len() as u64 + 1;
                    profile.location.push(proto::Location {
                        id,
                        mapping_id,
                        address: frame.address,
                        line: key
                            .2
                            .iter()
                            .map(|&(function_id, line)| proto::Line {
                                function_id,
                                line,
                                column: 0,
                            })
                            .collect(),
                        is_folded: false,
                    });
                    location_ids.insert(key, id);
                    id
                }
            };
            location_id.push(id);
        }
        profile.sample.push(proto::Sample {
            location_id,
            value: vec![sample.count as i64, sample.count as i64 * meta.period_nanos()],
            label: sample_labels(meta.sample_labels, sample, &mut strings, keys),
        });
    }
    profile.string_table = strings.table;
    profile
}

/// String ids of the sample label names.
#[derive(Clone, Copy)]
struct LabelKeys {
    pid: i64,
    tid: i64,
    thread_name: i64,
    process_name: i64,
}

/// The labels `which` puts on `sample`.
fn sample_labels(which: SampleLabels, sample: &Sample, strings: &mut Strings, keys: LabelKeys) -> Vec<proto::Label> {
    let num = |key, num| proto::Label {
        key,
        num,
        ..Default::default()
    };
    let mut text = |key, value: &str| proto::Label {
        key,
        str: strings.id(value),
        ..Default::default()
    };
    match which {
        SampleLabels::All => vec![
            num(keys.pid, sample.pid as i64),
            num(keys.tid, sample.tid as i64),
            text(keys.thread_name, &sample.thread_name),
            text(keys.process_name, &sample.process_name),
        ],
        SampleLabels::Process => vec![
            num(keys.pid, sample.pid as i64),
            text(keys.process_name, &sample.process_name),
            text(keys.thread_name, &sample.thread_name),
        ],
        SampleLabels::ThreadName => vec![text(keys.thread_name, &sample.thread_name)],
    }
}

/// Serializes and gzips a profile.
pub fn encode_gzip(profile: &proto::Profile) -> std::io::Result<Vec<u8>> {
    crate::util::gzip(&profile.encode_to_vec())
}

/// Decodes a gzipped (or plain) profile.
pub fn decode_gzip(bytes: &[u8]) -> std::io::Result<proto::Profile> {
    let plain = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut out)?;
        out
    } else {
        bytes.to_vec()
    };
    proto::Profile::decode(plain.as_slice()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
