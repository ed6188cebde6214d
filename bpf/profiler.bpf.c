// SPDX-License-Identifier: GPL-2.0
/*
 * taskprof's sampler: a perf_event program run by a cpu-clock event on
 * every CPU. Each run aggregates one sample of the current task into
 * `counts`, keyed by thread, comm and stack ids.
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

/*
 * Stacks keyed by the hash of their frames. A BPF_MAP_TYPE_STACK_TRACE
 * map indexes stacks by hash modulo its bucket count and drops any stack
 * whose bucket is taken (-EEXIST), which loses stacks long before the map
 * is full; a hash map keyed by the whole 64-bit hash does not.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct stack_trace);
	__uint(max_entries, 16384); /* resized by userspace before load */
} stacks SEC(".maps");

/* Per-CPU scratch space for capturing one stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct stack_trace);
	__uint(max_entries, 1);
} stack_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sample_key);
	__type(value, __u64);
	__uint(max_entries, 65536); /* resized by userspace before load */
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
} stats SEC(".maps");

/* Thread groups to keep when filter_tgids is set. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 1024);
} tgid_filter SEC(".maps");

/* Thread groups already announced to userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 65536);
} known_tgids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} process_events SEC(".maps");

/* Pull the event type into BTF so the skeleton generates it for Rust. */
struct process_event _process_event_btf = {};
enum stat_index _stat_index_btf = STAT_MAX;
enum stack_status _stack_status_btf = STACK_NONE;

static __always_inline void stat_inc(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&stats, &index);

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
					 __u64 flags, __u32 full_stat,
					 __u32 error_stat)
{
	__u32 zero = 0;
	struct stack_trace *trace;
	long size;
	__u64 id;

	trace = bpf_map_lookup_elem(&stack_scratch, &zero);
	if (!trace) {
		stat_inc(error_stat);
		return STACK_ERROR;
	}
	size = bpf_get_stack(ctx, trace->ips, sizeof(trace->ips), flags);
	if (size == -EFAULT || size == 0)
		return STACK_NONE;
	if (size < 0) {
		stat_inc(error_stat);
		return STACK_ERROR;
	}
	trace->len = (__u64)size / sizeof(__u64);
	id = hash_stack(trace);
	if (bpf_map_lookup_elem(&stacks, &id))
		return id;
	size = bpf_map_update_elem(&stacks, &id, trace, BPF_NOEXIST);
	if (size == 0 || size == -EEXIST)
		return id;
	stat_inc(full_stat);
	return STACK_MAP_FULL;
}

/*
 * The one place that captures a user stack. The .eh_frame unwinder will
 * replace this function's body; its contract (an id into `stacks`, or an
 * enum stack_status) stays.
 */
static __always_inline __u64 capture_user_stack(struct bpf_perf_event_data *ctx)
{
	return store_stack(ctx, BPF_F_USER_STACK, STAT_USER_STACK_MAP_FULL,
			   STAT_USER_STACK_ERROR);
}

static __always_inline __u64 capture_kernel_stack(struct bpf_perf_event_data *ctx)
{
	return store_stack(ctx, 0, STAT_KERNEL_STACK_MAP_FULL,
			   STAT_KERNEL_STACK_ERROR);
}

static __always_inline void announce_process(__u32 tgid)
{
	__u8 one = 1;
	struct process_event *event;

	if (tgid == 0)
		return;
	/* A lookup first: an LRU update takes a free node (and may shrink
	 * the LRU) even when the key exists, which is costly per sample. */
	if (bpf_map_lookup_elem(&known_tgids, &tgid))
		return;
	if (bpf_map_update_elem(&known_tgids, &tgid, &one, BPF_NOEXIST) != 0)
		return; /* already announced (or the map is busy: try later) */

	event = bpf_ringbuf_reserve(&process_events, sizeof(*event), 0);
	if (!event) {
		/* Forget it so the next sample announces it again. */
		bpf_map_delete_elem(&known_tgids, &tgid);
		stat_inc(STAT_PROCESS_EVENT_DROPPED);
		return;
	}
	event->tgid = tgid;
	bpf_ringbuf_submit(event, 0);
}

SEC("perf_event")
int sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct sample_key key = {};
	__u64 one = 1, *count;
	long err;

	key.tgid = id >> 32;
	key.pid = (__u32)id;

	if (filter_tgids && !bpf_map_lookup_elem(&tgid_filter, &key.tgid))
		return 0;

	stat_inc(STAT_SAMPLES);
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	key.user_stack_id = capture_user_stack(ctx);
	key.kernel_stack_id = capture_kernel_stack(ctx);
	announce_process(key.tgid);

	count = bpf_map_lookup_elem(&counts, &key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return 0;
	}
	err = bpf_map_update_elem(&counts, &key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		/* Another CPU inserted the key between lookup and update. */
		count = bpf_map_lookup_elem(&counts, &key);
		if (count) {
			__sync_fetch_and_add(count, 1);
			return 0;
		}
		stat_inc(STAT_LOST_OTHER);
	} else if (err == -E2BIG || err == -ENOMEM) {
		stat_inc(STAT_LOST_COUNTS_FULL);
	} else if (err) {
		stat_inc(STAT_LOST_OTHER);
	}
	return 0;
}
