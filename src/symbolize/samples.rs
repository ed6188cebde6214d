//! Symbolized samples: the form every output (pprof, folded, flame graph)
//! is written from. [`symbolize_samples`] joins what the sampler counted
//! with what the process tracker captured and the symbolizer names.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use crate::bpf::{RawSample, Stack};
use crate::process::{MappingKind, ProcessKey, ProcessTable};
use crate::python::processes::PythonProcesses;
use crate::symbolize::{synthetic_lines, Lines, Symbolizer};

/// The mapping a user frame lies in, as profiles describe it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MappingInfo {
    /// The process the mapping belongs to.
    pub tgid: u32,
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub limit: u64,
    /// File offset of `start`.
    pub file_offset: u64,
    /// File path or pseudo-name (`[vdso]`, `[anon]`, `[kernel.kallsyms]`).
    pub filename: String,
    /// Hex build id, or empty.
    pub build_id: String,
}

/// The name of the pseudo-mapping kernel frames belong to.
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

/// One frame of a symbolized stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The runtime address.
    pub address: u64,
    /// The mapping containing it; `None` for an address outside all mappings.
    pub mapping: Option<Arc<MappingInfo>>,
    /// Functions at the address, innermost first.
    pub lines: Lines,
    /// Whether this is a kernel frame.
    pub kernel: bool,
    /// Whether this is a Python frame (named from a code object; its
    /// function's `system_name` is `module.qualname`).
    pub python: bool,
}

/// A symbolized, aggregated sample.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Thread name (comm) at sampling time.
    pub thread_name: String,
    /// The process's own name.
    pub process_name: String,
    /// Frames, leaf first: kernel frames, then user frames.
    pub frames: Vec<Frame>,
    /// Number of samples.
    pub count: u64,
}

/// Where a user address points before symbolization.
enum UserTarget {
    Object {
        mapping: Arc<MappingInfo>,
        key: crate::process::FileKey,
        offset: u64,
    },
    Named {
        mapping: Option<Arc<MappingInfo>>,
        lines: Lines,
    },
    Jit {
        mapping: Arc<MappingInfo>,
    },
}

/// Symbolizes raw samples. Processes never captured (announcement lost or
/// too short-lived) are captured now if still alive. No address fails the
/// whole: unknowns get `file+offset` or `[unknown]` frames.
pub fn symbolize_samples(
    raw: &[RawSample],
    processes: &mut ProcessTable,
    symbolizer: &mut Symbolizer,
    mut python: Option<&mut PythonProcesses>,
) -> Vec<Sample> {
    let key_of = |sample: &RawSample| ProcessKey::new(sample.tgid, sample.incarnation);
    for sample in raw {
        processes.observe(key_of(sample));
    }
    // Addresses outside every known mapping: the process may have mapped
    // more since it was captured (dlopen, exec).
    let mut refreshed = rustc_hash::FxHashSet::default();
    for sample in raw {
        let missing = processes
            .get(key_of(sample))
            .is_some_and(|p| sample.user.frames().iter().any(|&a| p.mapping_for(a).is_none()));
        if missing && refreshed.insert(key_of(sample)) {
            processes.refresh(key_of(sample));
        }
    }

    let mut mapping_cache: HashMap<(ProcessKey, u64), Arc<MappingInfo>> = HashMap::default();
    let mut targets: HashMap<(ProcessKey, u64, bool), UserTarget> = HashMap::default();
    let mut per_object: HashMap<crate::process::FileKey, Vec<u64>> = HashMap::default();
    let mut kernel_addresses = Vec::new();

    for sample in raw {
        for (depth, &address) in sample.user.frames().iter().enumerate() {
            let leaf = depth == 0;
            if targets.contains_key(&(key_of(sample), address, leaf)) {
                continue;
            }
            let target = resolve_user(processes, &mut mapping_cache, key_of(sample), address, leaf);
            if let UserTarget::Object { key, offset, .. } = &target {
                per_object.entry(*key).or_default().push(*offset);
            }
            targets.insert((key_of(sample), address, leaf), target);
        }
        for (depth, &address) in sample.kernel.frames().iter().enumerate() {
            kernel_addresses.push(lookup_address(address, depth == 0));
        }
    }

    for (key, offsets) in &per_object {
        if let Some(object) = processes.object(*key) {
            symbolizer.symbolize_object(*key, object, offsets);
        }
    }
    symbolizer.symbolize_kernel(&kernel_addresses);

    let kernel_mapping = Arc::new(MappingInfo {
        tgid: 0,
        start: KERNEL_START,
        limit: u64::MAX,
        file_offset: 0,
        filename: KERNEL_MAPPING.to_string(),
        build_id: String::new(),
    });

    raw.iter()
        .map(|sample| {
            let mut frames = Vec::with_capacity(sample.kernel.frames().len() + sample.user.frames().len() + 1);
            match &sample.kernel {
                Stack::Lost(loss) => frames.push(lost_frame(loss.frame_name(), true)),
                stack => {
                    for (depth, &address) in stack.frames().iter().enumerate() {
                        let lines = symbolizer
                            .kernel_lines(lookup_address(address, depth == 0))
                            .unwrap_or_else(|| synthetic_lines("[unknown]"));
                        let mapping = (address >= KERNEL_START).then(|| Arc::clone(&kernel_mapping));
                        frames.push(Frame {
                            address,
                            mapping,
                            lines,
                            kernel: true,
                            python: false,
                        });
                    }
                }
            }
            let mut user = Vec::with_capacity(sample.user.frames().len());
            for (depth, &address) in sample.user.frames().iter().enumerate() {
                let leaf = depth == 0;
                let frame = match &targets[&(key_of(sample), address, leaf)] {
                    UserTarget::Object { mapping, key, offset } => Frame {
                        address,
                        mapping: Some(Arc::clone(mapping)),
                        lines: symbolizer
                            .object_lines(*key, *offset)
                            .unwrap_or_else(|| synthetic_lines(format!("{}+{:#x}", mapping.filename, offset))),
                        kernel: false,
                        python: false,
                    },
                    UserTarget::Named { mapping, lines } => Frame {
                        address,
                        mapping: mapping.clone(),
                        lines: Arc::clone(lines),
                        kernel: false,
                        python: false,
                    },
                    UserTarget::Jit { mapping } => Frame {
                        address,
                        mapping: Some(Arc::clone(mapping)),
                        lines: symbolizer
                            .perf_map_lines(sample.tgid, address)
                            .unwrap_or_else(|| synthetic_lines(format!("[anon]+{:#x}", address - mapping.start))),
                        kernel: false,
                        python: false,
                    },
                };
                user.push(frame);
            }
            if let Some(python) = python.as_deref_mut() {
                // Python frames go where their evaluator's frames are; a
                // thread running no Python keeps its native stack.
                user = python.merge(
                    key_of(sample),
                    sample.count,
                    &sample.python,
                    user,
                    |frame| (!frame.python && frame.mapping.is_some()).then_some(frame.address),
                    python_frame,
                );
            }
            frames.extend(user);
            match &sample.user {
                Stack::Lost(loss) => frames.push(lost_frame(loss.frame_name(), false)),
                stack => {
                    if let Some(reason) = stack.truncation() {
                        frames.push(lost_frame(reason.frame_name(), false));
                    }
                }
            }
            let process_name = processes
                .get(key_of(sample))
                .map(|p| p.name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| sample.comm.clone());
            Sample {
                pid: sample.tgid,
                tid: sample.tid,
                thread_name: sample.comm.clone(),
                process_name,
                frames,
                count: sample.count,
            }
        })
        .collect()
}

/// Lowest kernel address on x86_64 (the canonical upper half).
const KERNEL_START: u64 = 0xffff_8000_0000_0000;

/// Return addresses point after their call; look up the call itself so the
/// line (and, at a function's end, the function) is the caller's.
fn lookup_address(address: u64, leaf: bool) -> u64 {
    if leaf {
        address
    } else {
        address.saturating_sub(1)
    }
}

/// A Python frame: no address or mapping, a function named from its code
/// object.
fn python_frame(lines: Lines) -> Frame {
    Frame {
        address: 0,
        mapping: None,
        lines,
        kernel: false,
        python: true,
    }
}

fn lost_frame(name: &str, kernel: bool) -> Frame {
    Frame {
        address: 0,
        mapping: None,
        lines: synthetic_lines(name),
        kernel,
        python: false,
    }
}

fn resolve_user(
    processes: &ProcessTable,
    mapping_cache: &mut HashMap<(ProcessKey, u64), Arc<MappingInfo>>,
    key: ProcessKey,
    address: u64,
    leaf: bool,
) -> UserTarget {
    let tgid = key.tgid;
    let Some(mapping) = processes.get(key).and_then(|p| p.mapping_for(address)) else {
        return UserTarget::Named {
            mapping: None,
            lines: synthetic_lines("[unknown]"),
        };
    };
    let info = Arc::clone(mapping_cache.entry((key, mapping.start)).or_insert_with(|| {
        let build_id = match mapping.kind {
            MappingKind::Object(key) => processes
                .object(key)
                .and_then(|o| o.build_id.as_ref())
                .map(|id| id.iter().map(|b| format!("{b:02x}")).collect())
                .unwrap_or_default(),
            _ => String::new(),
        };
        Arc::new(MappingInfo {
            tgid,
            start: mapping.start,
            limit: mapping.end,
            file_offset: mapping.offset,
            filename: mapping.name.clone(),
            build_id,
        })
    }));
    let offset = mapping.file_offset(lookup_address(address, leaf));
    match mapping.kind {
        MappingKind::Object(key) => UserTarget::Object {
            mapping: info,
            key,
            offset,
        },
        MappingKind::Anonymous => UserTarget::Jit { mapping: info },
        MappingKind::UnreadableFile | MappingKind::Vdso | MappingKind::Special => {
            let name = format!("{}+{:#x}", mapping.name, offset);
            UserTarget::Named {
                mapping: Some(info),
                lines: synthetic_lines(name),
            }
        }
    }
}
