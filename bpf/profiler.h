/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The only ABI between taskprof's BPF program and its userspace.
 *
 * Rust never re-declares these layouts: it uses the types that
 * libbpf-cargo generates from this header's BTF (see src/bpf/mod.rs).
 */
#ifndef TASKPROF_PROFILER_H
#define TASKPROF_PROFILER_H

#define TASKPROF_COMM_LEN 16
/* Frames per captured stack, the kernel's own PERF_MAX_STACK_DEPTH. */
#define TASKPROF_MAX_STACK_DEPTH 127

/*
 * One aggregation bucket: a thread, its name and its two stacks.
 * A stack id is the 64-bit hash of the stack's frames and keys the
 * `stacks` map. Ids below STACK_ID_MIN are not stacks but say why the
 * stack is absent (see enum stack_status).
 */
struct sample_key {
	__u32 tgid;
	__u32 pid;
	/* Which process behind this tgid: a new number is drawn whenever a
	 * tgid is first sampled after its previous process exited or exec'd,
	 * so a reused pid never inherits the old process's mappings. */
	__u32 incarnation;
	__u32 _pad;
	__u64 user_stack_id;
	__u64 kernel_stack_id;
	char comm[TASKPROF_COMM_LEN];
};

/* A captured stack: `len` instruction pointers, leaf first. */
struct stack_trace {
	__u64 len;
	__u64 ips[TASKPROF_MAX_STACK_DEPTH];
};

/* Stack ids that are not stacks. */
enum stack_status {
	/* Nothing to capture: a kernel thread has no user stack, and a
	 * sample taken in user mode has no kernel stack. */
	STACK_NONE = 0,
	/* The stacks map was full, so this stack could not be stored. */
	STACK_MAP_FULL = 1,
	/* The helper failed (fault, no memory). */
	STACK_ERROR = 2,
	/* Smallest id that names a stored stack. */
	STACK_ID_MIN = 16,
};

/* Indexes of the per-CPU `stats` array, per generation: the slot of stat
 * S in generation G is G * STAT_MAX + S. */
enum stat_index {
	/* Every sample the program accepted (after the pid filter). */
	STAT_SAMPLES = 0,
	/* Samples dropped because the counts map was full. */
	STAT_LOST_COUNTS_FULL = 1,
	/* Samples dropped because the counts update failed otherwise. */
	STAT_LOST_OTHER = 2,
	/* Samples kept with their user stack lost: stacks map full. */
	STAT_USER_STACK_MAP_FULL = 3,
	/* Samples kept with their user stack lost: helper error. */
	STAT_USER_STACK_ERROR = 4,
	STAT_KERNEL_STACK_MAP_FULL = 5,
	STAT_KERNEL_STACK_ERROR = 6,
	/* New-process notifications dropped because the ring was full;
	 * userspace catches up on those processes when it drains. */
	STAT_PROCESS_EVENT_DROPPED = 7,
	STAT_MAX = 8,
};

/*
 * Samples are aggregated into one of two generations of maps; userspace
 * flips `generation` at each window boundary and drains the idle one.
 */
#define TASKPROF_GENERATIONS 2

enum process_event_kind {
	/* A thread group's first sample (per incarnation): capture it now. */
	PROCESS_NEW = 1,
	/* The group leader exited or exec'd: the incarnation is over. */
	PROCESS_GONE = 2,
};

struct process_event {
	__u32 tgid;
	__u32 incarnation;
	__u32 kind;
	__u32 _pad;
};

#endif /* TASKPROF_PROFILER_H */
