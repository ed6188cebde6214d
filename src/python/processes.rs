//! The Python processes of a session: found when a process is first
//! captured, handed to the BPF walker, and named from while they live.
//!
//! Finding the interpreter reads the process's mappings and the symbols of
//! its interpreter file once; the result is cached by file, so a hundred
//! workers of one interpreter cost one symbol read. An interpreter that
//! cannot be walked (an unsupported version, a stripped binary) keeps its
//! native stacks, and is counted and named once in the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::detect::{find_interpreter, DetectError, Interpreter};
use super::merge::interleave;
use super::namer::{PythonNamer, PythonTarget};
use crate::bpf::{PythonStack, PythonWalk, Sampler, StackLoss};
use crate::process::maps::{parse_maps, Backing, MapsEntry};
use crate::process::{path_in_root, FileKey, MappingKind, ProcessKey, ProcessTable};
use crate::symbolize::{synthetic_lines, Lines};

/// The frame that stands for Python frames sampled before the walker had
/// their process.
pub const NOT_LOADED_FRAME: &str = "[python: not loaded yet]";

/// How often the session looks at new Python stacks while sampling.
pub const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// What became of a process's interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PythonStatus {
    /// Its frames are walked.
    Walked,
    /// A CPython version taskprof has no layouts for.
    Unsupported,
    /// A CPython whose symbols or version could not be found.
    Unreadable,
}

impl PythonStatus {
    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            PythonStatus::Walked => "walked",
            PythonStatus::Unsupported => "unsupported",
            PythonStatus::Unreadable => "unreadable",
        }
    }
}

/// Why a process's interpreter is not walked, as logged; empty for a
/// process that runs no Python.
fn reason(err: &DetectError, name: &str) -> String {
    match err {
        DetectError::NotPython => String::new(),
        DetectError::Unsupported { version, .. } => {
            format!("{name}: CPython {version} is not supported (3.8 to 3.13 are); its stacks stay native")
        }
        other => format!("{name}: Python frames cannot be walked ({other}); its stacks stay native"),
    }
}

/// The last component of a mapped path.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether a mapped file may be a CPython interpreter: a `libpython3.X`
/// or an executable called `python*`.
fn may_hold_interpreter(path: &str) -> bool {
    let name = file_name(path);
    name.starts_with("libpython") || name.starts_with("python")
}

/// `interpreter` as found in a process that loaded its file `delta`
/// bytes lower than this one.
fn rebased(interpreter: &Arc<Interpreter>, delta: u64) -> Arc<Interpreter> {
    if delta == 0 {
        return Arc::clone(interpreter);
    }
    let mut moved = Interpreter::clone(interpreter);
    moved.runtime_address = moved.runtime_address.wrapping_add(delta);
    moved.code_type_address = moved.code_type_address.wrapping_add(delta);
    for range in &mut moved.eval_frame {
        *range = range.start.wrapping_add(delta)..range.end.wrapping_add(delta);
    }
    Arc::new(moved)
}

/// One walked Python process.
struct Walked {
    target: PythonTarget,
    interpreter: Arc<Interpreter>,
}

/// The session's Python processes.
pub struct PythonProcesses {
    walked: HashMap<ProcessKey, Walked>,
    /// Interpreters found, by the mapped file, with the load base (start
    /// minus file offset of its executable mapping) of the process they
    /// were found in; `Err` (the reason said) for files that are not one.
    by_file: HashMap<FileKey, (u64, Result<Arc<Interpreter>, String>)>,
    /// Python stacks already looked at in the window in progress.
    seen: HashSet<(u32, u32, u64)>,
    namer: PythonNamer,
    /// Processes by status, ever.
    statuses: BTreeMap<PythonStatus, u64>,
    /// Reasons already said, to say each once.
    said: HashSet<String>,
    /// Reasons not yet taken by [`PythonProcesses::take_notes`].
    notes: Vec<String>,
    /// Samples in the interpreter taken before the walker had the process.
    not_loaded_samples: u64,
    last_look: std::time::Instant,
}

impl Default for PythonProcesses {
    fn default() -> Self {
        PythonProcesses {
            walked: HashMap::default(),
            by_file: HashMap::default(),
            seen: HashSet::default(),
            namer: PythonNamer::default(),
            statuses: BTreeMap::new(),
            said: HashSet::default(),
            notes: Vec::new(),
            not_loaded_samples: 0,
            last_look: std::time::Instant::now(),
        }
    }
}

impl PythonProcesses {
    /// Looks for CPython in a newly captured process and, when it is one
    /// taskprof can walk, hands its layouts to the BPF walker.
    pub fn process_new(&mut self, sampler: &Sampler, key: ProcessKey, processes: &ProcessTable) {
        if self.walked.contains_key(&key) {
            return;
        }
        let Some(info) = processes.get(key) else {
            return;
        };
        // Only a process that maps a libpython or runs an executable named
        // python* is looked into: reading symbols of every new binary
        // would cost each process on a busy host.
        // A libpython is the interpreter even beside a python* executable.
        let candidate = info
            .mappings
            .iter()
            .find(|m| file_name(&m.name).starts_with("libpython"))
            .or_else(|| info.mappings.iter().find(|m| may_hold_interpreter(&m.name)));
        let Some(candidate) = candidate else {
            return;
        };
        let MappingKind::Object(file) = candidate.kind else {
            return;
        };
        // Where this process loaded the file: a PIE executable or a library
        // loads elsewhere in every process, and an interpreter found in one
        // is moved by the difference rather than read again.
        let base = candidate.start.wrapping_sub(candidate.offset);
        let found = match self.by_file.get(&file) {
            Some((found_base, found)) => found
                .clone()
                .map(|interpreter| rebased(&interpreter, base.wrapping_sub(*found_base))),
            None => {
                let found = self.find(key, processes).map_err(|err| reason(&err, &info.name));
                self.by_file.insert(file, (base, found.clone()));
                found
            }
        };
        match found {
            Ok(interpreter) => self.walk(sampler, key, interpreter),
            Err(reason) if reason.is_empty() => {}
            Err(reason) => {
                let status = if reason.contains("is not supported") {
                    PythonStatus::Unsupported
                } else {
                    PythonStatus::Unreadable
                };
                *self.statuses.entry(status).or_default() += 1;
                if self.said.insert(reason.clone()) {
                    self.notes.push(reason);
                }
            }
        }
    }

    /// Hands the walker the layouts of process `tgid` before sampling
    /// starts, for whichever incarnation is sampled first (the BPF walker
    /// takes incarnation 0 as any). Its names are read once its first
    /// sample announces it under its own incarnation.
    pub fn preload(&mut self, sampler: &Sampler, tgid: u32, processes: &mut ProcessTable) {
        let key = ProcessKey::new(tgid, 0);
        let known = processes.get(key).is_some();
        if !known {
            processes.observe(key);
        }
        // Counted when the process is announced, not twice.
        let statuses = self.statuses.clone();
        self.process_new(sampler, key, processes);
        self.statuses = statuses;
        self.walked.remove(&key);
        if !known {
            processes.forget(key);
        }
    }

    /// Reads the process's maps and finds its interpreter, reading files
    /// through the handles the process table holds.
    fn find(&self, key: ProcessKey, processes: &ProcessTable) -> Result<Arc<Interpreter>, DetectError> {
        let proc_dir = PathBuf::from("/proc").join(key.tgid.to_string());
        // A process gone since it was captured runs nothing to walk.
        let text = std::fs::read_to_string(proc_dir.join("maps")).map_err(|_| DetectError::NotPython)?;
        let maps = parse_maps(&text);
        let info = processes.get(key);
        let root_link = std::fs::read_link(proc_dir.join("root")).unwrap_or_default();
        let open = |entry: &MapsEntry| -> PathBuf {
            let path = match &entry.backing {
                Backing::File(path) | Backing::DeletedFile(path) => path.as_path(),
                _ => Path::new(""),
            };
            let held = info.and_then(|info| {
                info.mappings
                    .iter()
                    .filter(|m| Path::new(&m.name) == path)
                    .find_map(|m| match m.kind {
                        MappingKind::Object(file) => processes.object(file).map(|o| o.handle_path()),
                        _ => None,
                    })
            });
            held.unwrap_or_else(|| proc_dir.join("root").join(path_in_root(&root_link, path)))
        };
        // A fresh inspector each time: it caches what it parsed, and an
        // interpreter's symbols are needed once.
        let inspector = blazesym::inspect::Inspector::new();
        find_interpreter(&maps, open, &inspector).map(Arc::new)
    }

    fn walk(&mut self, sampler: &Sampler, key: ProcessKey, interpreter: Arc<Interpreter>) {
        let offsets = interpreter.offsets;
        let walk = PythonWalk {
            incarnation: key.incarnation,
            layout: offsets.frame.layout as u8,
            tss_key_address: interpreter.tss_key_address(),
            tstate_frame: offsets.thread_state.frame,
            cframe_current_frame: offsets.thread_state.cframe_current_frame,
            frame_back: offsets.frame.back,
            frame_code: offsets.frame.code,
            frame_instr: offsets.frame.instr,
            frame_entry: offsets.frame.entry,
        };
        if let Err(err) = sampler.set_python_process(key.tgid, &walk) {
            tracing::debug!(pid = key.tgid, "failed to hand a Python process to the walker: {err}");
            return;
        }
        self.walked.insert(
            key,
            Walked {
                target: PythonTarget {
                    key,
                    offsets,
                    code_type: interpreter.code_type_address,
                },
                interpreter,
            },
        );
        *self.statuses.entry(PythonStatus::Walked).or_default() += 1;
    }

    /// Looks at the Python stacks sampled since the last look, at most
    /// every [`LOOK_EVERY`] unless `now`, and reads the code objects they
    /// name while their processes live.
    pub fn look(&mut self, sampler: &Sampler, now: bool) {
        if self.walked.is_empty() || (!now && self.last_look.elapsed() < LOOK_EVERY) {
            return;
        }
        self.last_look = std::time::Instant::now();
        for (tgid, incarnation, stack) in sampler.new_python_stacks(&mut self.seen) {
            let key = ProcessKey::new(tgid, incarnation);
            if let (Some(walked), PythonStack::Frames(frames, _)) = (self.walked.get(&key), &stack) {
                self.namer.learn(&walked.target, frames);
            }
        }
    }

    /// A window was drained: its stacks are no longer in the maps.
    pub fn window_drained(&mut self) {
        self.seen.clear();
    }

    /// Reads the code objects of a drained window's samples that were not
    /// looked at yet (sampled since the last look).
    pub fn learn(&mut self, key: ProcessKey, stack: &PythonStack) {
        if let (Some(walked), PythonStack::Frames(frames, _)) = (self.walked.get(&key), stack) {
            self.namer.learn(&walked.target, frames);
        }
    }

    /// Places a sample's Python frames among its native user frames
    /// (leaf first), with `address_of` giving each native frame's address.
    /// Returns the native frames untouched when the thread ran no Python.
    pub fn merge<T>(
        &mut self,
        key: ProcessKey,
        count: u64,
        stack: &PythonStack,
        native: Vec<T>,
        address_of: impl Fn(&T) -> Option<u64>,
        python_frame: impl Fn(Lines) -> T,
    ) -> Vec<T> {
        let Some(walked) = self.walked.get(&key) else {
            return native;
        };
        let (frames, stop) = match stack {
            PythonStack::Frames(frames, stop) => (frames, *stop),
            PythonStack::Lost(loss) => {
                let mut native = native;
                native.push(python_frame(synthetic_lines(match loss {
                    StackLoss::MapFull => "[python: frames lost: stacks map full]",
                    StackLoss::Error => "[python: frames lost: capture error]",
                })));
                return native;
            }
            PythonStack::None => {
                // Running the interpreter without Python frames walked: the
                // sample came before the walker had the process.
                let interpreter = Arc::clone(&walked.interpreter);
                let running = native.iter().any(|frame| {
                    address_of(frame).is_some_and(|address| {
                        interpreter.in_eval_frame(address) || interpreter.in_eval_frame(address.wrapping_sub(1))
                    })
                });
                if !running {
                    return native;
                }
                self.not_loaded_samples += count;
                return interleave(
                    native,
                    vec![python_frame(synthetic_lines(NOT_LOADED_FRAME))],
                    &[true],
                    |frame| {
                        address_of(frame).is_some_and(|address| {
                            interpreter.in_eval_frame(address) || interpreter.in_eval_frame(address.wrapping_sub(1))
                        })
                    },
                );
            }
        };
        let target = walked.target;
        let interpreter = Arc::clone(&walked.interpreter);
        let mut python: Vec<T> = frames
            .iter()
            .map(|frame| python_frame(self.namer.frame_lines(&target, frame)))
            .collect();
        let mut entry: Vec<bool> = frames.iter().map(|frame| frame.entry).collect();
        if let Some(stop) = stop {
            python.push(python_frame(synthetic_lines(stop.frame_name())));
            entry.push(true);
        }
        // A return address may sit just past a call that ends its function.
        interleave(native, python, &entry, |frame| {
            address_of(frame).is_some_and(|address| {
                interpreter.in_eval_frame(address) || interpreter.in_eval_frame(address.wrapping_sub(1))
            })
        })
    }

    /// Forgets a process, its walker entry and the names read from it.
    pub fn forget(&mut self, sampler: &Sampler, key: ProcessKey) {
        if self.walked.remove(&key).is_some() {
            sampler.remove_python_process(key.tgid);
            self.namer.forget(key);
        }
    }

    /// Takes the reasons, each said once, why processes' Python frames
    /// are not walked.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Samples in a Python process's interpreter taken before the walker
    /// had the process, since the session began.
    pub fn not_loaded_samples(&self) -> u64 {
        self.not_loaded_samples
    }

    /// Processes by status, since the session began.
    pub fn statuses(&self) -> &BTreeMap<PythonStatus, u64> {
        &self.statuses
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::detect::PythonVersion;
    use crate::python::offsets::offsets_for;

    #[test]
    fn an_interpreter_found_in_one_process_moves_with_another_processs_load_base() {
        let found = Arc::new(Interpreter {
            version: PythonVersion {
                major: 3,
                minor: 11,
                micro: Some(7),
            },
            offsets: offsets_for(3, 11).expect("3.11 is in the table"),
            path: PathBuf::from("/opt/python/lib/libpython3.11.so.1.0"),
            runtime_address: 0x7f00_0050_0000,
            // The evaluator and its `.cold` part.
            eval_frame: vec![0x7f00_0010_0000..0x7f00_0010_8000, 0x7f00_0020_0000..0x7f00_0020_1000],
            code_type_address: 0x7f00_0048_0000,
        });
        let moved = rebased(&found, 0x1000_0000);
        assert_eq!(moved.runtime_address, 0x7f00_1050_0000);
        assert_eq!(moved.code_type_address, 0x7f00_1048_0000);
        assert_eq!(
            moved.eval_frame,
            vec![0x7f00_1010_0000..0x7f00_1010_8000, 0x7f00_1020_0000..0x7f00_1020_1000]
        );
        // A lower base moves it down (wrapping arithmetic of the difference).
        let back = rebased(&moved, 0u64.wrapping_sub(0x1000_0000));
        assert_eq!(*back, *found);
    }
}
