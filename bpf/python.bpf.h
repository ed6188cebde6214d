/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The Python frame walker, included by profiler.bpf.c.
 *
 * For a sampled thread of a process in `python_processes` it finds the
 * thread's PyThreadState (glibc keeps pthread TSS values in struct
 * pthread, which on x86_64 is where the thread's fs base points), then
 * follows the frame chain from the thread's current frame outwards, one
 * frame per iteration of bpf_loop (or of a bounded loop on kernels
 * without it, to the same depth), recording each frame's code object and
 * instruction. Nothing is named here: userspace reads the code objects.
 */
#ifndef TASKPROF_PYTHON_BPF_H
#define TASKPROF_PYTHON_BPF_H

/* Set by userspace before load: where task_struct keeps the user fs base
 * (from the kernel's BTF; 0 turns Python walking off), and where glibc's
 * struct pthread keeps its first block of TSS values. */
const volatile __u32 task_fsbase_offset = 0;
const volatile __u32 pthread_specific_offset = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct python_process);
	__uint(max_entries, 4096);
} python_processes SEC(".maps");

/* Slot 0 is set to 1 by userspace once it has written a Python process:
 * until then, on a host running no CPython, no sample looks up
 * python_processes (an array lookup is a few instructions; a hash lookup
 * in a cold map is one of a sample's costliest steps). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} python_active SEC(".maps");

static __always_inline bool python_is_active(void)
{
	__u32 zero = 0, *active = bpf_map_lookup_elem(&python_active, &zero);

	return active && *active;
}

/* The walk in progress, per CPU (see struct unwind_state for why). */
struct python_state {
	__u64 frame;
	__u32 count;
	__u32 status;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct python_state);
	__uint(max_entries, 1);
} python_scratch SEC(".maps");

struct python_process _python_process_btf = {};
enum python_frame_layout _python_frame_layout_btf = PYTHON_LAYOUT_FRAME_OBJECT;
enum python_walk_status _python_walk_status_btf = PYTHON_COMPLETE;
enum python_limit _python_limit_btf = TASKPROF_MAX_PYTHON_FRAMES;

/* The loop context: the process's offsets, copied as scalars. */
struct python_loop {
	__u32 layout;
	__u32 frame_back;
	__u32 frame_code;
	__u32 frame_instr;
	__u32 frame_entry;
};

/*
 * Hides what the compiler knows of `value`, so that a bounds check on it
 * stays in the program, right before the access it guards. Otherwise clang
 * drops the check as implied by an earlier one, and older verifiers (6.1's,
 * which lose a 32-bit value's bounds when it is spilled to the stack and
 * read back) see an unbounded index.
 */
#define TASKPROF_OPAQUE(value) asm volatile("" : "+r"(value))

static __always_inline long python_stop(struct python_state *state, __u32 status)
{
	state->status = status;
	return 1;
}

static __always_inline long python_frame(struct python_loop *loop)
{
	struct python_state *state;
	struct stack_trace *trace;
	__u64 frame, code = 0, instr = 0, back = 0;
	__u32 zero = 0, count, slot;
	__u64 *pair;
	__u8 entry = 0;

	state = bpf_map_lookup_elem(&python_scratch, &zero);
	trace = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!state || !trace)
		return 1;
	frame = state->frame;
	if (frame == 0)
		return python_stop(state, PYTHON_COMPLETE);
	count = state->count;
	if (bpf_probe_read_user(&back, sizeof(back), (void *)(frame + loop->frame_back)))
		return python_stop(state, PYTHON_READ_FAILED);
	if (loop->layout != PYTHON_LAYOUT_FRAME_OBJECT &&
	    bpf_probe_read_user(&entry, sizeof(entry), (void *)(frame + loop->frame_entry)))
		return python_stop(state, PYTHON_READ_FAILED);
	state->frame = back;
	if (loop->layout == PYTHON_LAYOUT_CSTACK_OWNER && entry == PYTHON_OWNED_BY_CSTACK) {
		/* The shim below an activation: the frame above it was the
		 * activation's outermost. */
		slot = 2 * count - 1;
		TASKPROF_OPAQUE(slot);
		if (count > 0 && slot < TASKPROF_MAX_STACK_DEPTH)
			trace->ips[slot] |= PYTHON_FRAME_ENTRY;
		return 0;
	}
	if (count >= TASKPROF_MAX_PYTHON_FRAMES)
		return python_stop(state, PYTHON_DEPTH);
	if (bpf_probe_read_user(&code, sizeof(code), (void *)(frame + loop->frame_code)) ||
	    bpf_probe_read_user(&instr, sizeof(instr), (void *)(frame + loop->frame_instr)))
		return python_stop(state, PYTHON_READ_FAILED);
	switch (loop->layout) {
	case PYTHON_LAYOUT_FRAME_OBJECT:
		/* f_lasti is an int; what follows it is not ours. */
		instr = (__u32)instr | PYTHON_FRAME_ENTRY;
		break;
	case PYTHON_LAYOUT_ENTRY_FLAG:
		instr &= PYTHON_INSTR_MASK;
		if (entry)
			instr |= PYTHON_FRAME_ENTRY;
		break;
	default:
		instr &= PYTHON_INSTR_MASK;
		break;
	}
	slot = 2 * count;
	TASKPROF_OPAQUE(slot);
	if (slot > TASKPROF_MAX_STACK_DEPTH - 2)
		return python_stop(state, PYTHON_DEPTH);
	/* Both slots through one bounded pointer: the verifier's range for
	 * `slot + 1` would be looser than for `slot`. */
	pair = &trace->ips[slot];
	pair[0] = code;
	pair[1] = instr;
	state->count = count + 1;
	trace->len = 2 * (count + 1);
	return 0;
}

static long python_step(__u64 index, void *arg)
{
	return python_frame(arg);
}

/* One frame, for the bounded loop: a global function with scalar
 * arguments, so the verifier checks it once. */
__attribute__((noinline)) int python_frame_bounded(__u32 layout, __u32 frame_back, __u32 frame_code,
						   __u32 frame_instr, __u32 frame_entry)
{
	struct python_loop loop = {
		.layout = layout,
		.frame_back = frame_back,
		.frame_code = frame_code,
		.frame_instr = frame_instr,
		.frame_entry = frame_entry,
	};

	return python_frame(&loop) ? 1 : 0;
}

static __always_inline int read_user_ptr(__u64 *value, __u64 address)
{
	*value = 0;
	return bpf_probe_read_user(value, sizeof(*value), (const void *)address);
}

/* The calling thread's PyThreadState, or 0. */
static __always_inline __u64 python_thread_state(struct python_process *proc)
{
	char *task = (char *)bpf_get_current_task();
	__u64 fsbase = 0, tstate = 0, block = 0;
	__u32 key = 0;

	if (bpf_probe_read_kernel(&fsbase, sizeof(fsbase), task + task_fsbase_offset) || !fsbase)
		return 0;
	if (bpf_probe_read_user(&key, sizeof(key), (void *)proc->tss_key_address))
		return 0;
	if (key < PYTHON_PTHREAD_KEY_2NDLEVEL) {
		/* specific_1stblock[key].data; each entry is {seq, data}. */
		read_user_ptr(&tstate, fsbase + pthread_specific_offset + key * 16 + 8);
		return tstate;
	}
	/* specific[key / 32], right after the first block, points to a block
	 * of 32 more entries. */
	if (key >= PYTHON_PTHREAD_KEY_2NDLEVEL * PYTHON_PTHREAD_KEY_2NDLEVEL)
		return 0;
	if (read_user_ptr(&block, fsbase + pthread_specific_offset +
					  PYTHON_PTHREAD_KEY_2NDLEVEL * 16 + (key / 32) * 8) ||
	    !block)
		return 0;
	read_user_ptr(&tstate, block + (key % 32) * 16 + 8);
	return tstate;
}

/*
 * Walks the current thread's Python frames into `stack_scratch` and
 * returns how the walk ended, or 0 when the thread runs no Python.
 */
static __always_inline int walk_python(__u32 tgid, __u32 incarnation, const bool bounded)
{
	struct python_loop loop = {};
	struct python_process *proc;
	struct python_state *state;
	struct stack_trace *trace;
	__u32 key = tgid, zero = 0;
	__u64 tstate, frame = 0;

	if (task_fsbase_offset == 0)
		return 0;
	proc = bpf_map_lookup_elem(&python_processes, &key);
	if (!proc || (proc->incarnation != incarnation && proc->incarnation != 0))
		return 0;
	state = bpf_map_lookup_elem(&python_scratch, &zero);
	trace = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!state || !trace)
		return 0;
	tstate = python_thread_state(proc);
	if (!tstate)
		return 0;
	if (read_user_ptr(&frame, tstate + proc->tstate_frame))
		return 0;
	if (proc->cframe_current_frame != PYTHON_NO_OFFSET && frame &&
	    read_user_ptr(&frame, frame + proc->cframe_current_frame))
		return 0;
	if (!frame)
		return 0;
	loop.layout = proc->layout;
	loop.frame_back = proc->frame_back;
	loop.frame_code = proc->frame_code;
	loop.frame_instr = proc->frame_instr;
	loop.frame_entry = proc->frame_entry;
	state->frame = frame;
	state->count = 0;
	state->status = PYTHON_DEPTH;
	trace->len = 0;
	/* Shim frames take iterations without taking slots: allow for one
	 * per recorded frame. */
	if (bounded) {
		for (int i = 0; i < 2 * TASKPROF_MAX_PYTHON_FRAMES + 2; i++) {
			if (python_frame_bounded(loop.layout, loop.frame_back, loop.frame_code,
						 loop.frame_instr, loop.frame_entry))
				break;
		}
	} else {
		bpf_loop(2 * TASKPROF_MAX_PYTHON_FRAMES + 2, python_step, &loop, 0);
	}
	trace->status = state->status;
	if (state->count == 0)
		return 0;
	return state->status;
}

/* Global functions, checked once each (see unwind_user_stack_loop). */
__attribute__((noinline)) int walk_python_loop(__u32 tgid, __u32 incarnation)
{
	return walk_python(tgid, incarnation, false);
}

__attribute__((noinline)) int walk_python_bounded(__u32 tgid, __u32 incarnation)
{
	return walk_python(tgid, incarnation, true);
}

#endif /* TASKPROF_PYTHON_BPF_H */
