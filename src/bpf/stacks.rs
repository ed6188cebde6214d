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

/// A captured stack: instruction pointers, leaf first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stack {
    /// Nothing to capture (a kernel thread's user stack, or the kernel
    /// stack of a sample taken in user mode).
    Empty,
    /// Frames, leaf first.
    Frames(Vec<u64>),
    /// The sample is kept but this stack is missing.
    Lost(StackLoss),
}

impl Stack {
    /// The frames, or none when the stack is empty or lost.
    pub fn frames(&self) -> &[u64] {
        match self {
            Stack::Frames(frames) => frames,
            _ => &[],
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
                if frames.is_empty() {
                    Stack::Empty
                } else {
                    Stack::Frames(frames)
                }
            }
            _ => Stack::Lost(StackLoss::Error),
        }
    }
}
