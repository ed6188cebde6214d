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
	/* The thread's Python frames (enum python_walk_status in the
	 * stack's `status`), or STACK_NONE when it runs no Python. */
	__u64 python_stack_id;
	char comm[TASKPROF_COMM_LEN];
};

/* A captured stack: `len` instruction pointers, leaf first, and for user
 * stacks walked by the unwinder, how the walk ended (enum unwind_status). */
struct stack_trace {
	__u32 len;
	__u32 status;
	__u64 ips[TASKPROF_MAX_STACK_DEPTH];
};

/* How a user stack walk ended. */
enum unwind_status {
	/* Not walked by taskprof's unwinder: kernel stacks, and user stacks
	 * captured with frame pointers by the kernel (--unwind=fp). */
	UNWIND_NOT_WALKED = 0,
	/* The walk reached the thread's root frame. */
	UNWIND_COMPLETE = 1,
	/* No unwind table covered a frame and frame pointers led nowhere. */
	UNWIND_NO_TABLE = 2,
	/* A frame's rule is one the unwinder cannot follow. */
	UNWIND_UNSUPPORTED = 3,
	/* Reading the stack failed, or a frame did not move up the stack. */
	UNWIND_READ_FAILED = 4,
	/* TASKPROF_MAX_STACK_DEPTH frames were taken. */
	UNWIND_DEPTH = 5,
	/* The process's tables were not loaded yet (first samples). */
	UNWIND_NOT_LOADED = 6,
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
	/* Every sample the program accepted (after the pid filter): the
	 * samples in the counts map plus STAT_IDLE plus the two losses. */
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
	/* User stacks the unwinder walked to the thread's root. */
	STAT_UNWIND_COMPLETE = 8,
	/* User stacks the unwinder stopped early, by reason. */
	STAT_UNWIND_NO_TABLE = 9,
	STAT_UNWIND_UNSUPPORTED = 10,
	STAT_UNWIND_READ_FAILED = 11,
	STAT_UNWIND_DEPTH = 12,
	STAT_UNWIND_NOT_LOADED = 13,
	/* Samples of Python threads whose Python frames were walked. */
	STAT_PYTHON_WALKED = 14,
	/* Python walks that stopped early (depth, unreadable memory). */
	STAT_PYTHON_INCOMPLETE = 15,
	/* Samples of the idle task (pid 0) left out of the profile: counted
	 * in STAT_SAMPLES too, but nothing else is done for them. */
	STAT_IDLE = 16,
	STAT_MAX = 17,
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
	/* A sampled address lies outside every mapping userspace loaded for
	 * the process (a library loaded since): read its mappings again. */
	PROCESS_MAPPINGS_CHANGED = 3,
};

struct process_event {
	__u32 tgid;
	__u32 incarnation;
	__u32 kind;
	__u32 _pad;
};

/*
 * Unwind tables. Userspace turns each mapped file's .eh_frame into rows
 * sorted by address (src/unwind/table.rs), stores each file's rows in its
 * own array map inside `unwind_tables`, and lists each process's
 * executable mappings in `unwind_processes`.
 */
enum unwind_limit {
	TASKPROF_MAX_UNWIND_TABLES = 8192,
	/* A power of two: the search masks indexes with it. */
	TASKPROF_MAX_UNWIND_MAPPINGS = 256,
	/* table_id of a mapping with no table (JIT code, no .eh_frame). */
	TASKPROF_UNWIND_NO_TABLE = 0xffffffff,
	/* table_id of a mapping whose table is still being built. */
	TASKPROF_UNWIND_PENDING = 0xfffffffe,
	/* Binary-search steps over a process's mappings: enough for
	 * TASKPROF_MAX_UNWIND_MAPPINGS (log2(256) + 1). */
	TASKPROF_MAPPING_SEARCH_STEPS = 9,
	/* Binary-search steps over a table's rows: a table holds at most
	 * 2^24 - 1 rows. */
	TASKPROF_ROW_SEARCH_STEPS = 24,
	/* The incarnation that matches any process: tables loaded before
	 * sampling starts. The program numbers incarnations from 1. */
	TASKPROF_PRELOADED_INCARNATION = 0,
	/* Offsets in the x86_64 ucontext_t (uc_mcontext.gregs at 40) of the
	 * registers glibc's signal trampoline saved. */
	TASKPROF_UCONTEXT_RBP = 120,
	TASKPROF_UCONTEXT_RSP = 160,
	TASKPROF_UCONTEXT_RIP = 168,
};

/* How to compute the canonical frame address (CFA). */
enum unwind_cfa_kind {
	/* No FDE covers the address: follow frame pointers. */
	CFA_NO_INFO = 0,
	/* CFA = rsp + cfa_offset. */
	CFA_RSP = 1,
	/* CFA = rbp + cfa_offset. */
	CFA_RBP = 2,
	/* PLT: CFA = rsp + 8, + 8 when (rip & 15) >= cfa_offset. */
	CFA_PLT = 3,
	/* CFA = *(rbp + cfa_offset). */
	CFA_RBP_DEREF = 4,
	/* Signal trampoline: rip, rsp, rbp are in the ucontext at rsp. */
	CFA_SIGNAL = 5,
	/* The return address is undefined: the thread's root frame. */
	CFA_ROOT = 6,
	CFA_UNSUPPORTED = 7,
};

/* Where the caller's rbp is. */
enum unwind_rbp_kind {
	RBP_UNCHANGED = 0,
	/* At CFA + rbp_offset. */
	RBP_CFA_OFFSET = 1,
	/* At rbp + rbp_offset. */
	RBP_RBP_OFFSET = 2,
	RBP_UNSUPPORTED = 3,
};

/* Rules in force from `pc` (relative to the mapping's bias) to the next
 * row's pc. */
struct unwind_row {
	__u32 pc;
	__u8 cfa_kind;
	__u8 rbp_kind;
	__s16 rbp_offset;
	__s32 cfa_offset;
};

/* One executable mapping: addresses [start, end) map to table rows by
 * `pc - bias`. */
struct unwind_mapping {
	__u64 start;
	__u64 end;
	__u64 bias;
	__u32 table_id;
	__u32 row_count;
};

/* A process's executable mappings, sorted by start. */
struct unwind_process {
	__u32 incarnation;
	__u32 count;
	/* When the program last asked userspace to read the mappings again
	 * (bpf_ktime_get_ns), to ask at most once a second. Userspace sets
	 * it to the time it writes the entry. */
	__u64 refresh_requested_ns;
	struct unwind_mapping mappings[TASKPROF_MAX_UNWIND_MAPPINGS];
};

/*
 * Python frames. For each CPython process userspace finds the interpreter,
 * its version and the struct offsets of that version (src/python/), and
 * writes them into `python_processes`. The sampler then finds the sampled
 * thread's PyThreadState through the interpreter's pthread TSS key, walks
 * its frame chain, and stores the frames as a stack in the stacks map: two
 * slots per frame, the code object's address and the instruction
 * (PYTHON_INSTR_MASK) with PYTHON_FRAME_ENTRY set on the outermost frame
 * of each _PyEval_EvalFrameDefault activation, which is how userspace
 * places the Python frames among the native ones.
 */
enum python_limit {
	/* Frames kept per sample; each takes two slots of a stack_trace. */
	TASKPROF_MAX_PYTHON_FRAMES = 63,
	/* An offset the version lacks. */
	PYTHON_NO_OFFSET = 0xffff,
	/* glibc: keys below this are in struct pthread's first block. */
	PYTHON_PTHREAD_KEY_2NDLEVEL = 32,
	/* FRAME_OWNED_BY_CSTACK (3.12+): the entry shim of an activation. */
	PYTHON_OWNED_BY_CSTACK = 3,
};

#define PYTHON_FRAME_ENTRY (1ULL << 63)
#define PYTHON_INSTR_MASK (~PYTHON_FRAME_ENTRY)

/* How frames are laid out and linked. */
enum python_frame_layout {
	/* 3.8-3.10: PyFrameObject via tstate->frame; every frame is its own
	 * activation; the instruction is the int f_lasti. */
	PYTHON_LAYOUT_FRAME_OBJECT = 1,
	/* 3.11: _PyInterpreterFrame via tstate->cframe->current_frame;
	 * is_entry marks an activation's outermost frame; the instruction is
	 * the prev_instr pointer. */
	PYTHON_LAYOUT_ENTRY_FLAG = 2,
	/* 3.12-3.13: _PyInterpreterFrame; a frame owned by the C stack sits
	 * below each activation's outermost frame. */
	PYTHON_LAYOUT_CSTACK_OWNER = 3,
};

/* How a Python walk ended; the `status` of a Python stack. */
enum python_walk_status {
	/* The first frame's f_back / previous was NULL. */
	PYTHON_COMPLETE = 1,
	/* TASKPROF_MAX_PYTHON_FRAMES frames were taken. */
	PYTHON_DEPTH = 2,
	/* A frame could not be read. */
	PYTHON_READ_FAILED = 3,
};

/* What the sampler needs to walk one process's Python frames. */
struct python_process {
	__u32 incarnation;
	__u8 layout;
	__u8 _pad[3];
	/* Address of the pthread_key_t under which the interpreter keeps
	 * each thread's PyThreadState. */
	__u64 tss_key_address;
	/* Offsets in PyThreadState and the frame structs, or
	 * PYTHON_NO_OFFSET. With `cframe_current_frame` set, tstate_frame
	 * leads to a _PyCFrame whose current_frame is the frame. */
	__u16 tstate_frame;
	__u16 cframe_current_frame;
	__u16 frame_back;
	__u16 frame_code;
	__u16 frame_instr;
	/* is_entry (3.11) or owner (3.12+). */
	__u16 frame_entry;
	__u16 _pad2[2];
};

#endif /* TASKPROF_PROFILER_H */
