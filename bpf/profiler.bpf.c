// SPDX-License-Identifier: GPL-2.0
/*
 * taskprof's sampler: a perf_event program run by a cpu-clock event on
 * every CPU. Each run aggregates one sample of the current task into the
 * counts map of the current generation, keyed by thread, process
 * incarnation, comm and stack ids. Two tracepoints end a process's
 * incarnation when it exits or execs.
 */
#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

#include "profiler.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by userspace before load. */
const volatile bool filter_tgids = false;
/* Walk user stacks with the unwind tables (else the kernel's frame-pointer
 * walk, --unwind=fp). */
const volatile bool table_unwind = true;
/*
 * Kernel features, from userspace's probes (src/bpf/features.rs). The
 * verifier knows these values as constants and never checks the branches
 * they rule out, so a helper the kernel lacks may appear behind them.
 * Only helper calls may: an instruction the kernel cannot decode (a
 * returning atomic before 5.12, a callback's address before 5.13) fails
 * the load even where no path reaches it, which is why the bpf_loop walk
 * is a program of its own (`sample`, else `sample_bounded`).
 */
/* bpf_task_pt_regs and bpf_get_current_task_btf (5.15); else the saved
 * user registers are read from the top of the task's kernel stack. */
const volatile bool have_task_pt_regs = true;
/* Where task_struct keeps its kernel stack (from the kernel's BTF), and
 * the stack's size, for kernels without bpf_task_pt_regs. */
const volatile __u32 task_stack_offset = 0;
const volatile __u32 task_stack_size = 16384;
/* Keep samples of the idle task (pid 0) in the counts map (--include-idle);
 * else they are only counted. */
const volatile bool include_idle = false;

/* Written by userspace through the mmapped .bss at window boundaries. */
volatile __u32 generation = 0;

/*
 * Stacks keyed by the hash of their frames. A BPF_MAP_TYPE_STACK_TRACE
 * map indexes stacks by hash modulo its bucket count and drops any stack
 * whose bucket is taken (-EEXIST), which loses stacks long before the map
 * is full; a hash map keyed by the whole 64-bit hash does not.
 */
#define STACKS_MAP(name)                                       \
	struct {                                               \
		__uint(type, BPF_MAP_TYPE_HASH);               \
		__uint(map_flags, BPF_F_NO_PREALLOC);          \
		__type(key, __u64);                            \
		__type(value, struct stack_trace);             \
		__uint(max_entries, 16384);                    \
	} name SEC(".maps")

#define COUNTS_MAP(name)                                       \
	struct {                                               \
		__uint(type, BPF_MAP_TYPE_HASH);               \
		__uint(map_flags, BPF_F_NO_PREALLOC);          \
		__type(key, struct sample_key);                \
		__type(value, __u64);                          \
		__uint(max_entries, 65536);                    \
	} name SEC(".maps")

/* Both sized by userspace before load. */
STACKS_MAP(stacks0);
STACKS_MAP(stacks1);
COUNTS_MAP(counts0);
COUNTS_MAP(counts1);

/* Per-CPU scratch space for capturing one stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct stack_trace);
	__uint(max_entries, 1);
} stack_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX * TASKPROF_GENERATIONS);
} stats SEC(".maps");

/* Thread groups to keep when filter_tgids is set. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 1024);
} tgid_filter SEC(".maps");

/* Thread groups already announced to userspace, with their incarnation. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 65536);
} known_tgids SEC(".maps");

/*
 * Each CPU's last answer of incarnation_of, good while no incarnation has
 * ended since (`ends_seen` is `incarnations_ended` when it was found). A
 * CPU samples the same busy thread again and again; this spares the LRU
 * lookup, one of the costliest parts of a sample (a cold bucket and
 * element in a large map).
 */
struct incarnation_memo {
	__u32 tgid;
	__u32 incarnation;
	__u64 ends_seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct incarnation_memo);
	__uint(max_entries, 1);
} incarnation_memos SEC(".maps");

/* Incarnations ended so far: end_incarnation adds one for every exit or
 * exec of a thread group leader, after removing it from known_tgids. */
volatile __u64 incarnations_ended = 0;

/* Each CPU's source of incarnation numbers (see incarnation_of). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} incarnation_counter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} process_events SEC(".maps");

/*
 * One file's unwind rows; each table is its own array sized to fit.
 * Sizes, not BTF types: userspace creates the tables without BTF, and
 * kernels 5.15 to 6.1 refuse an inner map whose BTF-derived fields differ
 * from the template's (with BTF, "no timer" is recorded as -ENOENT; without,
 * as -EINVAL), failing every insertion with EINVAL.
 */
struct unwind_rows_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct unwind_row));
	__uint(max_entries, 1);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, TASKPROF_MAX_UNWIND_TABLES);
	__type(key, __u32);
	__array(values, struct unwind_rows_map);
} unwind_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct unwind_process);
	__uint(max_entries, 16384);
} unwind_processes SEC(".maps");

/* Pull types into BTF so the skeleton generates them for Rust. */
struct process_event _process_event_btf = {};
struct unwind_row _unwind_row_btf = {};
struct unwind_process _unwind_process_btf = {};
enum unwind_status _unwind_status_btf = UNWIND_NOT_WALKED;
enum unwind_cfa_kind _unwind_cfa_kind_btf = CFA_NO_INFO;
enum unwind_rbp_kind _unwind_rbp_kind_btf = RBP_UNCHANGED;
enum unwind_limit _unwind_limit_btf = TASKPROF_MAX_UNWIND_TABLES;
enum stat_index _stat_index_btf = STAT_MAX;
enum stack_status _stack_status_btf = STACK_NONE;
enum process_event_kind _process_event_kind_btf = PROCESS_NEW;

static __always_inline void stat_inc(__u32 gen, __u32 index)
{
	__u32 slot = gen * STAT_MAX + index;
	__u64 *value = bpf_map_lookup_elem(&stats, &slot);

	if (value)
		*value += 1;
}

/*
 * A 64-bit hash of the stack in this CPU's `stack_scratch` (a
 * multiply-rotate mix per frame), or 0 if there is none. A global function,
 * so the verifier checks its loop once rather than in every caller.
 */
__attribute__((noinline)) __u64 hash_scratch_stack(void)
{
	struct stack_trace *trace;
	__u32 zero = 0, len;
	__u64 hash;

	trace = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!trace)
		return 0;
	len = trace->len;
	hash = 0x9e3779b97f4a7c15ULL ^ len ^ ((__u64)trace->status << 32);
	for (int i = 0; i < TASKPROF_MAX_STACK_DEPTH; i++) {
		if (i >= len)
			break;
		hash ^= trace->ips[i] * 0xff51afd7ed558ccdULL;
		hash = (hash << 31) | (hash >> 33);
		hash *= 0xc4ceb9fe1a85ec53ULL;
	}
	hash ^= hash >> 29;
	if (hash < STACK_ID_MIN)
		hash += STACK_ID_MIN;
	return hash;
}

static __always_inline __u64 save_stack(struct stack_trace *trace, void *stacks,
					__u32 gen, __u32 full_stat);

/* Whether the sample interrupted user code: the low bits of the code
 * segment selector are the privilege level, 3 in user mode. */
static __always_inline bool sampled_in_user_mode(struct bpf_perf_event_data *ctx)
{
	return (ctx->regs.cs & 3) == 3;
}

/*
 * Captures the stack selected by `flags` into `stacks` and returns its id,
 * or an enum stack_status saying why there is none.
 */
static __always_inline __u64 store_stack(struct bpf_perf_event_data *ctx,
					 void *stacks, __u32 gen, __u64 flags,
					 __u32 full_stat, __u32 error_stat)
{
	__u32 zero = 0;
	struct stack_trace *trace;
	long size;

	trace = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!trace) {
		stat_inc(gen, error_stat);
		return STACK_ERROR;
	}
	size = bpf_get_stack(ctx, trace->ips, sizeof(trace->ips), flags);
	if (size == -EFAULT || size == 0)
		return STACK_NONE;
	if (size < 0) {
		stat_inc(gen, error_stat);
		return STACK_ERROR;
	}
	trace->len = (__u32)((__u64)size / sizeof(__u64));
	trace->status = UNWIND_NOT_WALKED;
	return save_stack(trace, stacks, gen, full_stat);
}

/* Stores a captured stack in `stacks`, returning its id. */
static __always_inline __u64 save_stack(struct stack_trace *trace, void *stacks,
					__u32 gen, __u32 full_stat)
{
	__u64 id;
	long err;

	id = hash_scratch_stack();
	if (id == 0)
		return STACK_ERROR;
	if (bpf_map_lookup_elem(stacks, &id))
		return id;
	err = bpf_map_update_elem(stacks, &id, trace, BPF_NOEXIST);
	if (err == 0 || err == -EEXIST)
		return id;
	stat_inc(gen, full_stat);
	return STACK_MAP_FULL;
}

static __always_inline __u64 capture_kernel_stack(struct bpf_perf_event_data *ctx,
						  void *stacks, __u32 gen)
{
	/* A sample taken in user mode has no kernel stack. Asking the
	 * helper anyway costs a callchain buffer and a kilobyte of memset
	 * for nothing, and most samples of a busy program are user mode. */
	if (sampled_in_user_mode(ctx))
		return STACK_NONE;
	return store_stack(ctx, stacks, gen, 0, STAT_KERNEL_STACK_MAP_FULL,
			   STAT_KERNEL_STACK_ERROR);
}

/*
 * Only a new process wakes userspace: it must be read from /proc while it
 * lives. The other events wait in the ring for userspace's next poll (at
 * most 100 ms away), so a process's exit costs no wake-up of its own.
 * The new-process wake-up is forced: the kernel's default wakes the reader
 * only when it has read everything before the event, which the quiet
 * events left unread would prevent.
 */
static __always_inline void send_event(__u32 tgid, __u32 incarnation,
				       __u32 kind, __u32 gen)
{
	struct process_event *event;

	event = bpf_ringbuf_reserve(&process_events, sizeof(*event), 0);
	if (!event) {
		stat_inc(gen, STAT_PROCESS_EVENT_DROPPED);
		return;
	}
	event->tgid = tgid;
	event->incarnation = incarnation;
	event->kind = kind;
	event->_pad = 0;
	bpf_ringbuf_submit(event, kind == PROCESS_NEW ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/*
 * A new incarnation number, never 0: a per-CPU count above the CPU's
 * number (mod 1024). One shared counter would need an atomic that returns
 * its value, which kernels before 5.12 lack.
 */
static __always_inline __u32 draw_incarnation(void)
{
	__u32 zero = 0, *counter = bpf_map_lookup_elem(&incarnation_counter, &zero);

	if (!counter)
		return 1;
	*counter += 1;
	return (*counter << 10) | (bpf_get_smp_processor_id() & 1023);
}

/* The incarnation of `tgid`, announcing it to userspace on first sight. */
/* The incarnation of `tgid` from known_tgids, announcing it to userspace
 * on first sight. `*stored` says whether known_tgids holds it. */
static __always_inline __u32 lookup_incarnation(__u32 tgid, __u32 gen, bool *stored)
{
	__u32 *known, incarnation;

	*stored = true;
	/* A lookup first: an LRU update takes a free node (and may shrink
	 * the LRU) even when the key exists, which is costly per sample. */
	known = bpf_map_lookup_elem(&known_tgids, &tgid);
	if (known)
		return *known;
	incarnation = draw_incarnation();
	if (bpf_map_update_elem(&known_tgids, &tgid, &incarnation, BPF_NOEXIST) != 0) {
		/* Another CPU announced it first: use its number. */
		known = bpf_map_lookup_elem(&known_tgids, &tgid);
		*stored = known != NULL;
		return known ? *known : incarnation;
	}
	/* If the ring is full the event is counted as dropped; userspace
	 * captures unannounced incarnations when it drains. */
	send_event(tgid, incarnation, PROCESS_NEW, gen);
	return incarnation;
}

static __always_inline __u32 incarnation_of(__u32 tgid, __u32 gen)
{
	struct incarnation_memo *memo;
	__u32 zero = 0, incarnation;
	bool stored;
	/* Read before known_tgids: an end seen after this read removed its
	 * entry first, so a memo filled now is stale only if the count moved. */
	__u64 ended = incarnations_ended;

	if (tgid == 0)
		return 0;
	memo = bpf_map_lookup_elem(&incarnation_memos, &zero);
	if (memo && memo->tgid == tgid && memo->ends_seen == ended && memo->incarnation)
		return memo->incarnation;
	incarnation = lookup_incarnation(tgid, gen, &stored);
	/* A number known_tgids does not hold is never remembered: its end
	 * would not be counted. */
	if (memo && stored) {
		memo->tgid = tgid;
		memo->incarnation = incarnation;
		memo->ends_seen = ended;
	}
	return incarnation;
}

/*
 * The user-stack unwinder. Starting from the task's user registers it
 * walks one frame per bpf_loop iteration: find the mapping holding the pc,
 * then the unwind row in force there, compute the CFA, and read the return
 * address and the caller's rbp. Where no table covers the pc it follows
 * frame pointers instead.
 *
 * Only user_regs() and the register names in the walk are x86_64; arm64
 * would add its register set there (pc, sp, fp and the link register).
 */
/* The registers and flags of a walk in progress. They live in a per-CPU
 * map, not on the stack: the verifier does not track map contents, so the
 * values they take (flags, status codes) do not multiply the states it
 * explores in the loop body. */
struct unwind_state {
	__u64 ip;
	__u64 sp;
	__u64 bp;
	__u32 status;
	/* ip is a return address: look up ip - 1, inside the call. */
	__u8 adjust;
	/* A frame lay in a mapping whose table is still being built. */
	__u8 pending;
	__u8 _pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct unwind_state);
	__uint(max_entries, 1);
} unwind_scratch SEC(".maps");

/* What a frame step works with. */
struct unwind_walk {
	struct stack_trace *trace;
	struct unwind_process *proc;
	struct unwind_state *state;
	__u32 tgid;
	__u32 gen;
};

/* The bpf_loop context: only values that stay the same for the walk. */
struct unwind_loop {
	__u32 tgid;
	__u32 gen;
	/* The process's mappings are loaded, for this incarnation. */
	__u32 has_proc;
};

/* The sampled task's user registers: the interrupted ones for a sample
 * taken in user mode, else those saved when it entered the kernel. False
 * for kernel threads, which have none. */
static __always_inline bool user_regs(struct bpf_perf_event_data *ctx,
				      struct unwind_state *walk)
{
	/* Each field is read with its own load: the verifier rejects a load
	 * through a ctx pointer that was moved first. */
	__u64 ip = ctx->regs.rip, sp = ctx->regs.rsp, rbp, stack = 0;
	struct pt_regs regs;
	long saved;
	char *task;

	asm volatile("%0 = *(u64 *)(%1 + %2)" : "=r"(rbp) : "r"(ctx),
		     "i"(__builtin_offsetof(struct bpf_perf_event_data, regs.rbp)));
	if (sampled_in_user_mode(ctx)) {
		walk->ip = ip;
		walk->sp = sp;
		walk->bp = rbp;
		return true;
	}
	if (have_task_pt_regs) {
		saved = bpf_task_pt_regs(bpf_get_current_task_btf());
	} else {
		/* What the kernel's task_pt_regs() computes on x86_64: the
		 * registers saved on entry sit at the top of the task's kernel
		 * stack. */
		task = (char *)bpf_get_current_task();
		if (!task_stack_offset ||
		    bpf_probe_read_kernel(&stack, sizeof(stack), task + task_stack_offset) || !stack)
			return false;
		saved = stack + task_stack_size - sizeof(struct pt_regs);
	}
	if (!saved || bpf_probe_read_kernel(&regs, sizeof(regs), (void *)saved))
		return false;
	/* User code segment and stack segment selectors: anything else is
	 * not a user mode's saved registers (a guessed stack layout that was
	 * wrong reads something else). */
	if ((regs.cs & 3) != 3 || (regs.ss & 3) != 3)
		return false;
	walk->ip = regs.rip;
	walk->sp = regs.rsp;
	walk->bp = regs.rbp;
	return true;
}

static __always_inline int read_user_u64(__u64 *value, __u64 address)
{
	return bpf_probe_read_user(value, sizeof(*value), (const void *)address);
}

/*
 * The two binary searches. Each step updates the bounds without branching
 * (`below` is 1 when the probed entry starts at or below the target, from
 * the sign of a subtraction), so the only branch per step is the loop's
 * exit, and the verifier follows few paths through them. They are inlined
 * into unwind_frame, which the verifier checks once.
 */

/* The mapping of `proc` that holds `pc`. User addresses are below 2^63, so
 * the sign of `start - pc - 1` says whether start <= pc. */
static __always_inline struct unwind_mapping *find_mapping(struct unwind_process *proc,
							   __u64 pc)
{
	__u32 lo = 0, hi = proc->count, mid, below;
	struct unwind_mapping *mapping;

	if (hi > TASKPROF_MAX_UNWIND_MAPPINGS)
		return NULL;
	for (int i = 0; i < TASKPROF_MAPPING_SEARCH_STEPS; i++) {
		if (lo >= hi)
			break;
		mid = (lo + (hi - lo) / 2) & (TASKPROF_MAX_UNWIND_MAPPINGS - 1);
		below = (proc->mappings[mid].start - pc - 1) >> 63;
		lo = lo + below * (mid + 1 - lo);
		hi = mid + below * (hi - mid);
	}
	if (lo == 0)
		return NULL;
	mapping = &proc->mappings[(lo - 1) & (TASKPROF_MAX_UNWIND_MAPPINGS - 1)];
	return pc < mapping->end ? mapping : NULL;
}

/* The row in force at `pc`, found through the process's mappings. */
static __always_inline struct unwind_row *find_row(struct unwind_walk *walk, __u64 pc,
						   bool *unknown)
{
	__u32 table_id, lo = 0, hi, mid, below;
	struct unwind_mapping *mapping;
	struct unwind_row *row;
	__u64 offset;
	void *rows;

	mapping = walk->proc ? find_mapping(walk->proc, pc) : NULL;
	if (!mapping) {
		*unknown = true;
		return NULL;
	}
	table_id = mapping->table_id;
	hi = mapping->row_count;
	if (table_id == TASKPROF_UNWIND_PENDING)
		walk->state->pending = 1;
	if (table_id >= TASKPROF_UNWIND_PENDING || pc < mapping->bias)
		return NULL;
	offset = pc - mapping->bias;
	if (offset > 0xffffffffULL)
		return NULL;
	rows = bpf_map_lookup_elem(&unwind_tables, &table_id);
	if (!rows)
		return NULL;
	for (int i = 0; i < TASKPROF_ROW_SEARCH_STEPS; i++) {
		if (lo >= hi)
			break;
		mid = lo + (hi - lo) / 2;
		row = bpf_map_lookup_elem(rows, &mid);
		if (!row)
			return NULL;
		below = ((__u64)row->pc - offset - 1) >> 63;
		lo = lo + below * (mid + 1 - lo);
		hi = mid + below * (hi - mid);
	}
	if (lo == 0)
		return NULL;
	mid = lo - 1;
	return bpf_map_lookup_elem(rows, &mid);
}

/* Asks userspace, at most once a second per process, to read the
 * process's mappings again. */
static __always_inline void request_refresh(struct unwind_walk *walk)
{
	struct unwind_process *proc = walk->proc;
	__u64 now = bpf_ktime_get_ns(), last;

	if (!proc)
		return;
	last = proc->refresh_requested_ns;
	if (now - last < 1000000000ULL)
		return;
	/* A plain store, not compare-and-swap (5.12): CPUs racing here may
	 * each ask, which costs a second read of the mappings at worst. */
	proc->refresh_requested_ns = now;
	send_event(walk->tgid, proc->incarnation, PROCESS_MAPPINGS_CHANGED, walk->gen);
}

/* Ends the walk with `status`. */
static __always_inline long stop_walk(struct unwind_state *walk, __u32 status)
{
	walk->status = status;
	return 1;
}

/* Moves the walk to the caller's registers. `adjust` says whether `ip` is
 * a return address; a zero `ip` ends the walk with `at_zero`. */
static __always_inline long step_to_caller(struct unwind_state *walk, __u64 ip, __u64 sp,
					   __u64 bp, __u8 adjust, __u32 at_zero)
{
	walk->ip = ip;
	walk->sp = sp;
	walk->bp = bp;
	walk->adjust = adjust;
	if (ip == 0)
		return stop_walk(walk, at_zero);
	return 0;
}

/* Follows the frame pointer chain one frame. */
static __always_inline long frame_pointer_step(struct unwind_state *walk)
{
	__u64 frame[2];

	/* A zero rbp or return address ends the chain, but in code built
	 * without frame pointers rbp is an ordinary register: only the unwind
	 * tables' root rows vouch for a complete stack. */
	if (walk->bp == 0 || walk->bp < walk->sp ||
	    bpf_probe_read_user(frame, sizeof(frame), (const void *)walk->bp))
		return stop_walk(walk, UNWIND_NO_TABLE);
	return step_to_caller(walk, frame[1], walk->bp + 16, frame[0], 1, UNWIND_NO_TABLE);
}

/*
 * One frame: record ip, then find the caller's registers. Returns 1 to stop
 * the walk. A global function, verified once on its own: the walk's state
 * is in per-CPU maps, looked up here, so nothing the verifier tracks
 * changes from one frame to the next.
 */
__attribute__((noinline)) int unwind_frame(__u32 tgid, __u32 gen, __u32 has_proc)
{
	struct unwind_walk context = {}, *ctx = &context;
	struct unwind_row *row = NULL;
	struct stack_trace *trace;
	struct unwind_state *walk;
	__u32 len, zero = 0, key = tgid;
	bool unknown = false;
	__u64 pc, cfa, bp, ra;

	trace = bpf_map_lookup_elem(&stack_scratch, &zero);
	walk = bpf_map_lookup_elem(&unwind_scratch, &zero);
	if (!trace || !walk)
		return 1;
	context.trace = trace;
	context.state = walk;
	context.tgid = tgid;
	context.gen = gen;
	if (has_proc)
		context.proc = bpf_map_lookup_elem(&unwind_processes, &key);
	len = trace->len;
	if (len >= TASKPROF_MAX_STACK_DEPTH)
		return stop_walk(walk, UNWIND_DEPTH);
	trace->ips[len] = walk->ip;
	trace->len = len + 1;

	pc = walk->adjust ? walk->ip - 1 : walk->ip;
	if (ctx->proc) {
		row = find_row(ctx, pc, &unknown);
		if (unknown)
			request_refresh(ctx);
	}
	if (!row || row->cfa_kind == CFA_NO_INFO)
		return frame_pointer_step(walk);

	switch (row->cfa_kind) {
	case CFA_ROOT:
		return stop_walk(walk, UNWIND_COMPLETE);
	case CFA_RSP:
		cfa = walk->sp + (__s64)row->cfa_offset;
		break;
	case CFA_RBP:
		cfa = walk->bp + (__s64)row->cfa_offset;
		break;
	case CFA_PLT:
		cfa = walk->sp + 8 + ((walk->ip & 15) >= (__u64)row->cfa_offset ? 8 : 0);
		break;
	case CFA_RBP_DEREF:
		if (read_user_u64(&cfa, walk->bp + (__s64)row->cfa_offset))
			return stop_walk(walk, UNWIND_READ_FAILED);
		break;
	case CFA_SIGNAL:
		/* The kernel's ucontext at rsp holds the interrupted registers
		 * (uc_mcontext.gregs: enum unwind_limit's TASKPROF_UCONTEXT_*). */
		if (read_user_u64(&ra, walk->sp + TASKPROF_UCONTEXT_RIP) ||
		    read_user_u64(&bp, walk->sp + TASKPROF_UCONTEXT_RBP) ||
		    read_user_u64(&cfa, walk->sp + TASKPROF_UCONTEXT_RSP))
			return stop_walk(walk, UNWIND_READ_FAILED);
		/* The interrupted ip is not a return address. */
		return step_to_caller(walk, ra, cfa, bp, 0, UNWIND_COMPLETE);
	default:
		return stop_walk(walk, UNWIND_UNSUPPORTED);
	}

	switch (row->rbp_kind) {
	case RBP_UNCHANGED:
		bp = walk->bp;
		break;
	case RBP_CFA_OFFSET:
		if (read_user_u64(&bp, cfa + (__s64)row->rbp_offset))
			return stop_walk(walk, UNWIND_READ_FAILED);
		break;
	case RBP_RBP_OFFSET:
		if (read_user_u64(&bp, walk->bp + (__s64)row->rbp_offset))
			return stop_walk(walk, UNWIND_READ_FAILED);
		break;
	default:
		return stop_walk(walk, UNWIND_UNSUPPORTED);
	}
	/* Every frame lies above its callee's: a CFA at or below rsp means
	 * the registers are not what the row assumes. */
	if (cfa <= walk->sp || read_user_u64(&ra, cfa - 8))
		return stop_walk(walk, UNWIND_READ_FAILED);
	return step_to_caller(walk, ra, cfa, bp, 1, UNWIND_COMPLETE);
}

static long unwind_step(__u64 index, void *arg)
{
	struct unwind_loop *loop = arg;

	return unwind_frame(loop->tgid, loop->gen, loop->has_proc) ? 1 : 0;
}

static __always_inline __u32 unwind_stat(__u32 status)
{
	switch (status) {
	case UNWIND_COMPLETE:
		return STAT_UNWIND_COMPLETE;
	case UNWIND_NO_TABLE:
		return STAT_UNWIND_NO_TABLE;
	case UNWIND_UNSUPPORTED:
		return STAT_UNWIND_UNSUPPORTED;
	case UNWIND_READ_FAILED:
		return STAT_UNWIND_READ_FAILED;
	case UNWIND_DEPTH:
		return STAT_UNWIND_DEPTH;
	default:
		return STAT_UNWIND_NOT_LOADED;
	}
}

/*
 * Walks the current task's user stack into the per-CPU `stack_scratch`
 * and returns how the walk ended (enum unwind_status), or
 * UNWIND_WALK_NO_USER_STACK (kernel threads) or UNWIND_WALK_ERROR. Each
 * frame is one call of unwind_frame, by bpf_loop (5.17) or, with
 * `bounded`, by a bounded loop (5.3), which reaches the same depth: the
 * verifier checks unwind_frame once either way, and the loop around it is
 * a few instructions per frame.
 */
enum unwind_walk_error {
	UNWIND_WALK_NO_USER_STACK = -1,
	UNWIND_WALK_ERROR = -2,
};

static __always_inline int unwind_user_stack(struct bpf_perf_event_data *ctx, __u32 tgid,
					     __u32 incarnation, __u32 gen, const bool bounded)
{
	struct unwind_loop loop = {};
	struct unwind_process *proc;
	struct unwind_state *state;
	struct stack_trace *trace;
	__u32 key = tgid, zero = 0;

	state = bpf_map_lookup_elem(&unwind_scratch, &zero);
	trace = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!ctx || !state || !trace)
		return UNWIND_WALK_ERROR;
	if (!user_regs(ctx, state))
		return UNWIND_WALK_NO_USER_STACK;
	state->status = UNWIND_DEPTH;
	state->adjust = 0;
	state->pending = 0;
	trace->len = 0;
	trace->status = UNWIND_NOT_LOADED;
	proc = bpf_map_lookup_elem(&unwind_processes, &key);
	/* Incarnation 0: loaded before sampling began (--pid), for whichever
	 * incarnation is sampled first; exec and exit delete the entry. */
	loop.has_proc = proc && (proc->incarnation == incarnation || proc->incarnation == 0);
	loop.tgid = tgid;
	loop.gen = gen;
	if (bounded) {
		for (int i = 0; i < TASKPROF_MAX_STACK_DEPTH + 1; i++) {
			if (unwind_frame(loop.tgid, loop.gen, loop.has_proc))
				break;
		}
	} else {
		bpf_loop(TASKPROF_MAX_STACK_DEPTH + 1, unwind_step, &loop, 0);
	}
	/* Through a mapping whose table was not in yet, frame pointers were
	 * followed: the stack cannot be vouched for. */
	if (!loop.has_proc || state->pending)
		state->status = UNWIND_NOT_LOADED;
	trace->status = state->status;
	return state->status;
}

/* The two walks as global functions, so the verifier checks each once
 * rather than once per generation. */
__attribute__((noinline)) int unwind_user_stack_loop(struct bpf_perf_event_data *ctx, __u32 tgid,
						     __u32 incarnation, __u32 gen)
{
	return unwind_user_stack(ctx, tgid, incarnation, gen, false);
}

__attribute__((noinline)) int unwind_user_stack_bounded(struct bpf_perf_event_data *ctx, __u32 tgid,
							__u32 incarnation, __u32 gen)
{
	return unwind_user_stack(ctx, tgid, incarnation, gen, true);
}

/*
 * The one place that captures a user stack: an id into `stacks`, or an
 * enum stack_status saying why there is none.
 */
static __always_inline __u64 capture_user_stack(struct bpf_perf_event_data *ctx,
						void *stacks, __u32 gen, __u32 tgid,
						__u32 incarnation, const bool bounded)
{
	struct stack_trace *trace;
	__u32 zero = 0;
	int status;

	if (!table_unwind)
		return store_stack(ctx, stacks, gen, BPF_F_USER_STACK,
				   STAT_USER_STACK_MAP_FULL, STAT_USER_STACK_ERROR);
	if (bounded)
		status = unwind_user_stack_bounded(ctx, tgid, incarnation, gen);
	else
		status = unwind_user_stack_loop(ctx, tgid, incarnation, gen);
	if (status == UNWIND_WALK_NO_USER_STACK)
		return STACK_NONE;
	trace = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (status < 0 || !trace) {
		stat_inc(gen, STAT_USER_STACK_ERROR);
		return STACK_ERROR;
	}
	stat_inc(gen, unwind_stat(status));
	return save_stack(trace, stacks, gen, STAT_USER_STACK_MAP_FULL);
}

#include "python.bpf.h"

/* The sampled thread's Python frames as a stack id, or STACK_NONE. */
static __always_inline __u64 capture_python_stack(void *stacks, __u32 gen, __u32 tgid,
						  __u32 incarnation, const bool bounded)
{
	struct stack_trace *trace;
	__u32 zero = 0;
	int status;

	if (!python_is_active())
		return STACK_NONE;
	if (bounded)
		status = walk_python_bounded(tgid, incarnation);
	else
		status = walk_python_loop(tgid, incarnation);
	if (status <= 0)
		return STACK_NONE;
	trace = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!trace)
		return STACK_ERROR;
	stat_inc(gen, STAT_PYTHON_WALKED);
	if (status != PYTHON_COMPLETE)
		stat_inc(gen, STAT_PYTHON_INCOMPLETE);
	return save_stack(trace, stacks, gen, STAT_USER_STACK_MAP_FULL);
}

static __always_inline int record(struct bpf_perf_event_data *ctx,
				  void *counts, void *stacks, __u32 gen, const bool bounded)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sample_key key = {};
	__u64 one = 1, *count;
	long err;

	key.tgid = id >> 32;
	key.pid = (__u32)id;

	if (filter_tgids && !bpf_map_lookup_elem(&tgid_filter, &key.tgid))
		return 0;

	stat_inc(gen, STAT_SAMPLES);
	/* A CPU with nothing to run samples its idle task (pid 0). That is no
	 * CPU work, and on a quiet host it is nearly every sample: count it
	 * and stop here, before any stack is walked or map entry made. */
	if (key.pid == 0 && !include_idle) {
		stat_inc(gen, STAT_IDLE);
		return 0;
	}
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.incarnation = incarnation_of(key.tgid, gen);
	key.user_stack_id = capture_user_stack(ctx, stacks, gen, key.tgid, key.incarnation, bounded);
	key.kernel_stack_id = capture_kernel_stack(ctx, stacks, gen);
	key.python_stack_id = capture_python_stack(stacks, gen, key.tgid, key.incarnation, bounded);

	count = bpf_map_lookup_elem(counts, &key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return 0;
	}
	err = bpf_map_update_elem(counts, &key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* Another CPU inserted the key between lookup and update. */
		count = bpf_map_lookup_elem(counts, &key);
		if (count) {
			__sync_fetch_and_add(count, 1);
			return 0;
		}
		stat_inc(gen, STAT_LOST_OTHER);
	} else if (err == -E2BIG || err == -ENOMEM) {
		stat_inc(gen, STAT_LOST_COUNTS_FULL);
	} else if (err) {
		stat_inc(gen, STAT_LOST_OTHER);
	}
	return 0;
}

/* The sampler for kernels with bpf_loop (5.17). */
SEC("perf_event")
int sample(struct bpf_perf_event_data *ctx)
{
	/* Each branch names its maps directly, as the verifier wants. */
	if (generation & 1)
		return record(ctx, &counts1, &stacks1, 1, false);
	return record(ctx, &counts0, &stacks0, 0, false);
}

/* The same sampler without bpf_loop, for older kernels. Userspace loads
 * one of the two. */
SEC("perf_event")
int sample_bounded(struct bpf_perf_event_data *ctx)
{
	if (generation & 1)
		return record(ctx, &counts1, &stacks1, 1, true);
	return record(ctx, &counts0, &stacks0, 0, true);
}

/* Raw tracepoints attach through bpf() alone, without tracefs mounted.
 * Ends the current incarnation of the calling thread's group, if the
 * caller is its leader. */
static __always_inline void end_incarnation(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, *known;

	if ((__u32)id != tgid)
		return;
	/* The mappings are gone or replaced: never unwind with them again. */
	bpf_map_delete_elem(&unwind_processes, &tgid);
	bpf_map_delete_elem(&python_processes, &tgid);
	known = bpf_map_lookup_elem(&known_tgids, &tgid);
	if (known) {
		send_event(tgid, *known, PROCESS_GONE, generation & 1);
		bpf_map_delete_elem(&known_tgids, &tgid);
	}
	/* After the delete, and even for a tgid known_tgids lost (an LRU
	 * eviction): every CPU's incarnation memo is now stale. An add whose
	 * result is unused, which kernels before 5.12 have. */
	__sync_fetch_and_add(&incarnations_ended, 1);
}

SEC("raw_tracepoint/sched_process_exit")
int process_exit(void *ctx)
{
	end_incarnation();
	return 0;
}

SEC("raw_tracepoint/sched_process_exec")
int process_exec(void *ctx)
{
	end_incarnation();
	return 0;
}
