//! Stack capture as seen from userspace. The BPF side captures stacks in
//! one function per kind (`capture_user_stack`, `capture_kernel_stack`);
//! this file is their counterpart, turning what they stored into a
//! [`Stack`]. Replacing the user-stack capture only touches this file.

use libbpf_rs::{MapCore, MapFlags};

use super::types;

/// The flag on an instruction slot marking an activation's outermost frame
/// (PYTHON_FRAME_ENTRY in bpf/profiler.h, a macro the skeleton cannot carry).
const PYTHON_FRAME_ENTRY: u64 = 1 << 63;
const PYTHON_INSTR_MASK: u64 = !PYTHON_FRAME_ENTRY;

/// Why a stack is missing from a sample that was otherwise kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StackLoss {
    /// The stacks map was full.
    MapFull,
    /// The kernel helper failed, or the stack was gone when read back.
    Error,
}

impl StackLoss {
    /// The synthetic frame name shown in profiles for this loss.
    pub fn frame_name(self) -> &'static str {
        match self {
            StackLoss::MapFull => "[stack lost: stacks map full]",
            StackLoss::Error => "[stack lost: capture error]",
        }
    }
}

/// Why the unwinder stopped before a user stack's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Truncation {
    /// No unwind table covered a frame, and frame pointers led nowhere.
    NoTable,
    /// A frame's unwind rule is one the unwinder cannot follow.
    UnsupportedRule,
    /// Reading the stack failed, or a frame did not move up the stack.
    ReadFailed,
    /// The stack is deeper than the frames kept.
    DepthLimit,
    /// The process's unwind tables were not loaded yet.
    NotLoaded,
}

impl Truncation {
    /// All reasons, in a stable order.
    pub const ALL: [Truncation; 5] = [
        Truncation::NoTable,
        Truncation::UnsupportedRule,
        Truncation::ReadFailed,
        Truncation::DepthLimit,
        Truncation::NotLoaded,
    ];

    /// The synthetic outermost frame shown in profiles.
    pub fn frame_name(self) -> &'static str {
        match self {
            Truncation::NoTable => "[unwind stopped: no unwind table]",
            Truncation::UnsupportedRule => "[unwind stopped: unsupported unwind rule]",
            Truncation::ReadFailed => "[unwind stopped: stack read failed]",
            Truncation::DepthLimit => "[unwind stopped: depth limit]",
            Truncation::NotLoaded => "[unwind stopped: tables not loaded yet]",
        }
    }

    /// The metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Truncation::NoTable => "no_table",
            Truncation::UnsupportedRule => "unsupported_rule",
            Truncation::ReadFailed => "read_failed",
            Truncation::DepthLimit => "depth_limit",
            Truncation::NotLoaded => "not_loaded",
        }
    }

    fn from_status(status: u32) -> Option<Truncation> {
        use types::unwind_status as s;
        match types::unwind_status(status) {
            s::UNWIND_NO_TABLE => Some(Truncation::NoTable),
            s::UNWIND_UNSUPPORTED => Some(Truncation::UnsupportedRule),
            s::UNWIND_READ_FAILED => Some(Truncation::ReadFailed),
            s::UNWIND_DEPTH => Some(Truncation::DepthLimit),
            s::UNWIND_NOT_LOADED => Some(Truncation::NotLoaded),
            _ => None,
        }
    }
}

/// A captured stack: instruction pointers, leaf first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stack {
    /// Nothing to capture (a kernel thread's user stack, or the kernel
    /// stack of a sample taken in user mode).
    Empty,
    /// Frames, leaf first: complete, or captured by the kernel's
    /// frame-pointer walk.
    Frames(Vec<u64>),
    /// Frames, leaf first, of a walk that stopped before the root.
    Truncated(Vec<u64>, Truncation),
    /// The sample is kept but this stack is missing.
    Lost(StackLoss),
}

impl Stack {
    /// The frames, or none when the stack is empty or lost.
    pub fn frames(&self) -> &[u64] {
        match self {
            Stack::Frames(frames) | Stack::Truncated(frames, _) => frames,
            _ => &[],
        }
    }

    /// Why the walk stopped early, if it did.
    pub fn truncation(&self) -> Option<Truncation> {
        match self {
            Stack::Truncated(_, reason) => Some(*reason),
            _ => None,
        }
    }
}

/// One Python frame as the walker recorded it: enough for userspace to
/// name it from the process's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PythonFrame {
    /// Address of the frame's code object.
    pub code: u64,
    /// Where the frame is in its code: `f_lasti` (3.8-3.10) or the
    /// instruction pointer (3.11+).
    pub instruction: u64,
    /// The outermost frame of its `_PyEval_EvalFrameDefault` activation.
    pub entry: bool,
}

/// Why the Python walk stopped before the thread's first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PythonStop {
    /// More frames than the walker keeps.
    DepthLimit,
    /// A frame could not be read.
    ReadFailed,
}

impl PythonStop {
    /// The synthetic outermost Python frame shown in profiles.
    pub fn frame_name(self) -> &'static str {
        match self {
            PythonStop::DepthLimit => "[python: depth limit]",
            PythonStop::ReadFailed => "[python: frame unreadable]",
        }
    }
}

/// A sampled thread's Python frames, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum PythonStack {
    /// The thread ran no Python, or its process is not walked.
    #[default]
    None,
    /// The frames, and why the walk stopped early if it did.
    Frames(Vec<PythonFrame>, Option<PythonStop>),
    /// The sample is kept but its Python frames are missing.
    Lost(StackLoss),
}

/// Reads stacks that the BPF program stored in its stack-trace map.
pub(super) struct StackReader<'a> {
    map: &'a libbpf_rs::Map<'a>,
}

impl<'a> StackReader<'a> {
    pub(super) fn new(map: &'a libbpf_rs::Map<'a>) -> Self {
        StackReader { map }
    }

    /// The user stack of a sample.
    pub(super) fn user(&self, key: &types::sample_key) -> Stack {
        self.read(key.user_stack_id)
    }

    /// The kernel stack of a sample.
    pub(super) fn kernel(&self, key: &types::sample_key) -> Stack {
        self.read(key.kernel_stack_id)
    }

    /// The Python frames of a sample.
    pub(super) fn python(&self, key: &types::sample_key) -> PythonStack {
        let (slots, status) = match self.read_raw(key.python_stack_id) {
            Ok(Some(raw)) => raw,
            Ok(None) => return PythonStack::None,
            Err(loss) => return PythonStack::Lost(loss),
        };
        let frames: Vec<PythonFrame> = slots
            .chunks_exact(2)
            .map(|pair| PythonFrame {
                code: pair[0],
                instruction: pair[1] & PYTHON_INSTR_MASK,
                entry: pair[1] & PYTHON_FRAME_ENTRY != 0,
            })
            .collect();
        if frames.is_empty() {
            return PythonStack::None;
        }
        let stop = match types::python_walk_status(status) {
            types::python_walk_status::PYTHON_COMPLETE => None,
            types::python_walk_status::PYTHON_DEPTH => Some(PythonStop::DepthLimit),
            _ => Some(PythonStop::ReadFailed),
        };
        PythonStack::Frames(frames, stop)
    }

    fn read(&self, id: u64) -> Stack {
        let (slots, status) = match self.read_raw(id) {
            Ok(Some(raw)) => raw,
            Ok(None) => return Stack::Empty,
            Err(loss) => return Stack::Lost(loss),
        };
        let frames: Vec<u64> = slots.into_iter().take_while(|&ip| ip != 0).collect();
        match Truncation::from_status(status) {
            _ if frames.is_empty() => Stack::Empty,
            Some(reason) => Stack::Truncated(frames, reason),
            None => Stack::Frames(frames),
        }
    }

    /// A stored stack's slots and status; None for STACK_NONE.
    fn read_raw(&self, id: u64) -> Result<Option<(Vec<u64>, u32)>, StackLoss> {
        if id < types::stack_status::STACK_ID_MIN.0 as u64 {
            return match types::stack_status(id as u32) {
                types::stack_status::STACK_NONE => Ok(None),
                types::stack_status::STACK_MAP_FULL => Err(StackLoss::MapFull),
                _ => Err(StackLoss::Error),
            };
        }
        let bytes = self.map.lookup(&id.to_ne_bytes(), MapFlags::ANY).ok().flatten();
        match bytes.as_deref().and_then(super::abi::read::<types::stack_trace>) {
            Some(trace) => {
                let len = (trace.len as usize).min(trace.ips.len());
                Ok(Some((trace.ips[..len].to_vec(), trace.status)))
            }
            None => Err(StackLoss::Error),
        }
    }
}
