//! Stack capture as seen from userspace. The BPF side captures stacks in
//! one function per kind (`capture_user_stack`, `capture_kernel_stack`);
//! this file is their counterpart, turning what they stored into a
//! [`Stack`]. Replacing the user-stack capture only touches this file.

use libbpf_rs::{MapCore, MapFlags};

use super::types;

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

    fn read(&self, id: u64) -> Stack {
        if id < types::stack_status::STACK_ID_MIN.0 as u64 {
            return match types::stack_status(id as u32) {
                types::stack_status::STACK_NONE => Stack::Empty,
                types::stack_status::STACK_MAP_FULL => Stack::Lost(StackLoss::MapFull),
                _ => Stack::Lost(StackLoss::Error),
            };
        }
        match self.map.lookup(&id.to_ne_bytes(), MapFlags::ANY) {
            Ok(Some(bytes)) if bytes.len() >= std::mem::size_of::<types::stack_trace>() => {
                // SAFETY: values of `stacks` are `struct stack_trace` (length
                // checked by the guard), plain integers valid for any bits.
                let trace: types::stack_trace = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
                let len = (trace.len as usize).min(trace.ips.len());
                let frames: Vec<u64> = trace.ips[..len].iter().copied().take_while(|&ip| ip != 0).collect();
                match Truncation::from_status(trace.status) {
                    _ if frames.is_empty() => Stack::Empty,
                    Some(reason) => Stack::Truncated(frames, reason),
                    None => Stack::Frames(frames),
                }
            }
            _ => Stack::Lost(StackLoss::Error),
        }
    }
}
