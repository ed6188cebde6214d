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

/* Written by userspace through the mmapped .bss at window boundaries. */
volatile __u32 generation = 0;
/* Source of incarnation numbers. */
__u32 next_incarnation = 0;

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

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} process_events SEC(".maps");

/* Pull types into BTF so the skeleton generates them for Rust. */
struct process_event _process_event_btf = {};
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

/* A 64-bit hash of a stack's frames (a multiply-rotate mix per frame). */
static __always_inline __u64 hash_stack(const struct stack_trace *trace)
{
	__u64 hash = 0x9e3779b97f4a7c15ULL ^ trace->len;

	for (int i = 0; i < TASKPROF_MAX_STACK_DEPTH; i++) {
		if (i >= trace->len)
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
	__u64 id;

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
	trace->len = (__u64)size / sizeof(__u64);
	id = hash_stack(trace);
	if (bpf_map_lookup_elem(stacks, &id))
		return id;
	size = bpf_map_update_elem(stacks, &id, trace, BPF_NOEXIST);
	if (size == 0 || size == -EEXIST)
		return id;
	stat_inc(gen, full_stat);
	return STACK_MAP_FULL;
}

/*
 * The one place that captures a user stack. The .eh_frame unwinder will
 * replace this function's body; its contract (an id into `stacks`, or an
 * enum stack_status) stays.
 */
static __always_inline __u64 capture_user_stack(struct bpf_perf_event_data *ctx,
						void *stacks, __u32 gen)
{
	return store_stack(ctx, stacks, gen, BPF_F_USER_STACK,
			   STAT_USER_STACK_MAP_FULL, STAT_USER_STACK_ERROR);
}

static __always_inline __u64 capture_kernel_stack(struct bpf_perf_event_data *ctx,
						  void *stacks, __u32 gen)
{
	return store_stack(ctx, stacks, gen, 0, STAT_KERNEL_STACK_MAP_FULL,
			   STAT_KERNEL_STACK_ERROR);
}

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
	bpf_ringbuf_submit(event, 0);
}

/* The incarnation of `tgid`, announcing it to userspace on first sight. */
static __always_inline __u32 incarnation_of(__u32 tgid, __u32 gen)
{
	__u32 *known, incarnation;

	if (tgid == 0)
		return 0;
	/* A lookup first: an LRU update takes a free node (and may shrink
	 * the LRU) even when the key exists, which is costly per sample. */
	known = bpf_map_lookup_elem(&known_tgids, &tgid);
	if (known)
		return *known;
	incarnation = __sync_fetch_and_add(&next_incarnation, 1) + 1;
	if (bpf_map_update_elem(&known_tgids, &tgid, &incarnation, BPF_NOEXIST) != 0) {
		/* Another CPU announced it first: use its number. */
		known = bpf_map_lookup_elem(&known_tgids, &tgid);
		return known ? *known : incarnation;
	}
	/* If the ring is full the event is counted as dropped; userspace
	 * captures unannounced incarnations when it drains. */
	send_event(tgid, incarnation, PROCESS_NEW, gen);
	return incarnation;
}

static __always_inline int record(struct bpf_perf_event_data *ctx,
				  void *counts, void *stacks, __u32 gen)
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
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.incarnation = incarnation_of(key.tgid, gen);
	key.user_stack_id = capture_user_stack(ctx, stacks, gen);
	key.kernel_stack_id = capture_kernel_stack(ctx, stacks, gen);

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

SEC("perf_event")
int sample(struct bpf_perf_event_data *ctx)
{
	/* Each branch names its maps directly, as the verifier wants. */
	if (generation & 1)
		return record(ctx, &counts1, &stacks1, 1);
	return record(ctx, &counts0, &stacks0, 0);
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
	known = bpf_map_lookup_elem(&known_tgids, &tgid);
	if (!known)
		return;
	send_event(tgid, *known, PROCESS_GONE, generation & 1);
	bpf_map_delete_elem(&known_tgids, &tgid);
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
