//! The sampler: loads `bpf/profiler.bpf.c`, opens a cpu-clock perf event on
//! every online CPU, attaches the program to each, and reads the aggregated
//! samples back. This is the only module that touches raw BPF bytes; every
//! layout it reads comes from the skeleton's generated `types`.

mod abi;
mod features;
mod loader;
mod perf_events;
mod python;
mod stacks;
mod unwind_maps;

#[allow(clippy::all, unsafe_op_in_unsafe_fn, non_camel_case_types, dead_code)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/profiler.skel.rs"));
}

pub use features::{Features, Forced, UserRegs, Variant, VariantError, Walk, VARIANT_ENV};
pub use loader::{Loaded, ProcessEvent, PythonWalkOffsets, Sampler, SamplerConfig, SamplerError, Window};
pub use python::{pthread_specific_offset, task_fsbase_offset, PythonWalk};
pub use stacks::{PythonFrame, PythonStack, PythonStop, Stack, StackLoss, Truncation};

use skel::types;

/// Counters kept by the BPF program, summed over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampleStats {
    /// Samples the program accepted (after the pid filter): those in the
    /// counts map, plus [`SampleStats::idle`], plus [`SampleStats::lost`].
    pub samples: u64,
    /// Samples of the idle task (pid 0) left out of the profile (all of
    /// them unless `--include-idle`).
    pub idle: u64,
    /// Samples dropped because the counts map was full.
    pub lost_counts_full: u64,
    /// Samples dropped because the counts map update failed otherwise.
    pub lost_other: u64,
    /// Samples kept whose user stack was lost because the stacks map was full.
    pub user_stack_map_full: u64,
    /// Samples kept whose user stack could not be captured.
    pub user_stack_error: u64,
    /// Samples kept whose kernel stack was lost because the stacks map was full.
    pub kernel_stack_map_full: u64,
    /// Samples kept whose kernel stack could not be captured.
    pub kernel_stack_error: u64,
    /// New-process notifications dropped because the ring buffer was full.
    pub process_events_dropped: u64,
    /// User stacks the unwinder walked to the thread's root.
    pub unwind_complete: u64,
    /// User stacks the unwinder stopped early, by reason (indexed like
    /// [`Truncation::ALL`]).
    pub unwind_truncated: [u64; 5],
    /// Samples whose Python frames were walked.
    pub python_walked: u64,
    /// Of those, walks that stopped early (depth limit, unreadable frame).
    pub python_incomplete: u64,
}

impl SampleStats {
    /// Samples that never reached the counts map.
    pub fn lost(&self) -> u64 {
        self.lost_counts_full + self.lost_other
    }

    /// Samples kept with one of their stacks missing.
    pub fn stacks_lost(&self) -> u64 {
        self.user_stack_map_full + self.user_stack_error + self.kernel_stack_map_full + self.kernel_stack_error
    }

    /// Adds another window's counters to these.
    pub fn add(&mut self, other: &SampleStats) {
        self.samples += other.samples;
        self.idle += other.idle;
        self.lost_counts_full += other.lost_counts_full;
        self.lost_other += other.lost_other;
        self.user_stack_map_full += other.user_stack_map_full;
        self.user_stack_error += other.user_stack_error;
        self.kernel_stack_map_full += other.kernel_stack_map_full;
        self.kernel_stack_error += other.kernel_stack_error;
        self.process_events_dropped += other.process_events_dropped;
        self.unwind_complete += other.unwind_complete;
        for (mine, theirs) in self.unwind_truncated.iter_mut().zip(other.unwind_truncated) {
            *mine += theirs;
        }
        self.python_walked += other.python_walked;
        self.python_incomplete += other.python_incomplete;
    }

    /// User stacks the unwinder stopped early, for `reason`.
    pub fn truncated(&self, reason: Truncation) -> u64 {
        let index = Truncation::ALL.iter().position(|&r| r == reason).unwrap_or(0);
        self.unwind_truncated[index]
    }

    /// User stacks the unwinder stopped early, for any reason.
    pub fn truncated_total(&self) -> u64 {
        self.unwind_truncated.iter().sum()
    }

    fn from_counters(counters: &[u64]) -> SampleStats {
        let at = |index: types::stat_index| counters.get(index.0 as usize).copied().unwrap_or(0);
        SampleStats {
            samples: at(types::stat_index::STAT_SAMPLES),
            idle: at(types::stat_index::STAT_IDLE),
            lost_counts_full: at(types::stat_index::STAT_LOST_COUNTS_FULL),
            lost_other: at(types::stat_index::STAT_LOST_OTHER),
            user_stack_map_full: at(types::stat_index::STAT_USER_STACK_MAP_FULL),
            user_stack_error: at(types::stat_index::STAT_USER_STACK_ERROR),
            kernel_stack_map_full: at(types::stat_index::STAT_KERNEL_STACK_MAP_FULL),
            kernel_stack_error: at(types::stat_index::STAT_KERNEL_STACK_ERROR),
            process_events_dropped: at(types::stat_index::STAT_PROCESS_EVENT_DROPPED),
            unwind_complete: at(types::stat_index::STAT_UNWIND_COMPLETE),
            unwind_truncated: [
                at(types::stat_index::STAT_UNWIND_NO_TABLE),
                at(types::stat_index::STAT_UNWIND_UNSUPPORTED),
                at(types::stat_index::STAT_UNWIND_READ_FAILED),
                at(types::stat_index::STAT_UNWIND_DEPTH),
                at(types::stat_index::STAT_UNWIND_NOT_LOADED),
            ],
            python_walked: at(types::stat_index::STAT_PYTHON_WALKED),
            python_incomplete: at(types::stat_index::STAT_PYTHON_INCOMPLETE),
        }
    }
}

/// One aggregated bucket read from the counts map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    /// Thread group id: the process id as user space knows it.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Which process behind `tgid` (pids are reused; exec starts anew).
    pub incarnation: u32,
    /// The thread's comm at sampling time.
    pub comm: String,
    /// User stack, leaf first.
    pub user: Stack,
    /// Kernel stack, leaf first.
    pub kernel: Stack,
    /// Python frames, newest first.
    pub python: PythonStack,
    /// How many samples fell into this bucket.
    pub count: u64,
}

/// Number of online CPUs, on each of which the sampler opens an event.
pub fn online_cpu_count() -> std::io::Result<usize> {
    perf_events::online_cpus().map(|cpus| cpus.len())
}
