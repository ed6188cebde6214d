#!/usr/bin/env bash
# The sampler's own cost, in alternation with bpftrace or with an older
# taskprof, so that both sides see the same load on a shared machine.
#
#   benches/sample-cost.sh bpf     BPF ns per sample: `taskprof profile`
#                                  (.eh_frame unwinding and --unwind=fp) and
#                                  bpftrace's `profile:hz:99` with kernel and
#                                  user stacks, each over the whole host while
#                                  two frame-pointer chain processes
#                                  (tests/fixtures/chain.c) burn both CPUs;
#                                  run_time_ns / run_cnt of the perf_event
#                                  programs, from /proc/PID/fdinfo with
#                                  kernel.bpf_stats_enabled on, between 1.5 s
#                                  after start and the end of sampling.
#   benches/sample-cost.sh agent   the agent at 19 Hz (whole host, 10 s
#                                  windows, file protocol) with two busy shells
#                                  and a new short shell every 50 ms (about 20
#                                  a second): CPU s per wall s, user+sys from
#                                  /proc/PID/stat and BPF from fdinfo, after
#                                  15 s of warm-up.
#
# Each line is one run; compare medians. Environment: SAMPLE_COST_ROUNDS
# (3), SAMPLE_COST_SECONDS (6 for bpf, 60 for agent), SAMPLE_COST_BASE (an
# older taskprof binary to alternate with), SAMPLE_COST_AGENT_ARGS (extra
# agent flags, e.g. --unwind=fp). Run as root from the repository.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
source benches/common.sh
part=${1:-}
[[ $part == bpf || $part == agent ]] || { echo "usage: $0 bpf|agent" >&2; exit 2; }
rounds=${SAMPLE_COST_ROUNDS:-3}
bench_setup sample-cost.sh ""
bench_scratch sample-cost

load() { cut -d' ' -f1 /proc/loadavg; }

# One BPF run: label, then the command (bpftrace, or a taskprof binary and
# its extra flags).
bpf_run() {
    local label=$1 seconds=$2 pid ns0 c0 ns1 c1 w1 w2
    shift 2
    "$work/chain" $((seconds + 6)) & w1=$!
    "$work/chain" $((seconds + 6)) & w2=$!
    bench_children=("$w1" "$w2")
    sleep 0.5
    if [[ $1 == bpftrace ]]; then
        bpftrace -q -e "profile:hz:99 { @[kstack, ustack, comm] = count(); } interval:s:$((seconds + 2)) { exit(); }" \
            >/dev/null 2>&1 &
    else
        "$@" -d "$((seconds + 2))s" -F 99 -o "$work/profile.pb.gz" >/dev/null 2>&1 &
    fi
    pid=$!
    bench_children+=("$pid")
    sleep 1.5
    read -r ns0 c0 < <(bpf_run_totals "$pid" 7)
    sleep "$seconds"
    read -r ns1 c1 < <(bpf_run_totals "$pid" 7)
    wait "$pid" || true
    kill "$w1" "$w2" 2>/dev/null || true
    wait "$w1" "$w2" 2>/dev/null || true
    bench_children=()
    if ((c1 > c0)); then
        echo "$label: $(((ns1 - ns0) / (c1 - c0))) ns per sample ($((c1 - c0)) samples), load $(load)"
    else
        echo "$label: no samples read, load $(load)"
    fi
}

# One agent run of binary $2 labelled $1.
agent_run() {
    local label=$1 bin=$2 seconds=$3 dir=$work/agent agent c0 c1 b0 b1 t0 t1 spinners=() churn
    rm -rf "$dir"
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    "$bin" agent --upload-protocol file --upload-url "$dir/out" --spool-dir "$dir/spool" --window 10s \
        --metrics-address 127.0.0.1:0 --frequency 19 --log-level warn ${SAMPLE_COST_AGENT_ARGS:-} 2>"$dir/stderr" &
    agent=$!
    sh -c 'while :; do :; done' & spinners+=($!)
    sh -c 'while :; do :; done' & spinners+=($!)
    (while [[ ! -e $dir/stop ]]; do
        sh -c 'i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done'
        sleep 0.05
    done) &
    churn=$!
    bench_children=("$agent" "${spinners[@]}" "$churn")
    sleep 15
    cpu() { awk '{print $14 + $15}' /proc/"$1"/stat; }
    c0=$(cpu "$agent"); read -r b0 _ < <(bpf_run_totals "$agent"); t0=$(date +%s.%N)
    sleep "$seconds"
    c1=$(cpu "$agent"); read -r b1 _ < <(bpf_run_totals "$agent"); t1=$(date +%s.%N)
    touch "$dir/stop"
    wait "$churn" || true
    kill "${spinners[@]}" 2>/dev/null || true
    kill -TERM "$agent"
    wait "$agent" || { echo "$label: the agent failed: $(tail -3 "$dir/stderr")" >&2; exit 1; }
    bench_children=()
    local tck; tck=$(getconf CLK_TCK)
    echo "$label: CPU s per wall s user+sys $(echo "scale=5; ($c1 - $c0) / $tck / ($t1 - $t0)" | bc)" \
        "BPF $(echo "scale=5; ($b1 - $b0) / 1000000000 / ($t1 - $t0)" | bc), load $(load)"
}

if [[ $part == bpf ]]; then
    gcc -O1 -fno-omit-frame-pointer -o "$work/chain" tests/fixtures/chain.c
    seconds=${SAMPLE_COST_SECONDS:-6}
    for ((round = 1; round <= rounds; round++)); do
        bpf_run "taskprof" "$seconds" "$taskprof" profile
        bpf_run "taskprof --unwind=fp" "$seconds" "$taskprof" profile --unwind=fp
        if [[ -n ${SAMPLE_COST_BASE:-} ]]; then
            bpf_run "base" "$seconds" "$SAMPLE_COST_BASE" profile
            bpf_run "base --unwind=fp" "$seconds" "$SAMPLE_COST_BASE" profile --unwind=fp
        fi
        bpf_run "bpftrace" "$seconds" bpftrace
    done
else
    seconds=${SAMPLE_COST_SECONDS:-60}
    for ((round = 1; round <= rounds; round++)); do
        agent_run "taskprof" "$taskprof" "$seconds"
        if [[ -n ${SAMPLE_COST_BASE:-} ]]; then
            agent_run "base" "$SAMPLE_COST_BASE" "$seconds"
        fi
    done
fi
