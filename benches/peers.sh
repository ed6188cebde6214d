#!/usr/bin/env bash
# taskprof beside its peers: `perf record -a -g` and bpftrace's
# `profile:hz:99`, each sampling the whole host at 99 Hz for 12 s with user
# and kernel stacks while two CPU-bound frame-pointer processes run
# (tests/fixtures/chain.c), repeated 3 times in alternation. Prints one
# markdown table of medians:
#   - peak RSS of the profiler (GNU time's maximum resident set);
#   - profiler CPU (user + system, start to exit) per sampled second;
#   - BPF ns per sample: run_time_ns / run_cnt of the profiler's perf_event
#     programs, from /proc/PID/fdinfo with kernel.bpf_stats_enabled on,
#     read just before sampling ends (perf runs no BPF);
#   - start-up: launch to the first sample (BPF run_cnt > 0; for perf, to
#     the fork of the command it records, which it starts once its events
#     are open);
#   - end of sampling to output written (taskprof: to its file; perf:
#     `perf report` plus `perf script` on perf.data; bpftrace: printing its
#     maps at exit, included in its exit).
#
# Usage, as root from the repository: benches/peers.sh
# Environment: PEERS_SECONDS (12), PEERS_REPEAT (3), PEERS_HZ (99),
# TASKPROF_ARGS (extra flags for taskprof, e.g. --unwind=fp), PEERS_TOOLS
# (a subset of "perf bpftrace taskprof"), PEERS_TASKPROF (another taskprof
# binary, e.g. an older build to compare with; default: this checkout's,
# built in release mode).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
source benches/common.sh
seconds=${PEERS_SECONDS:-12}
repeat=${PEERS_REPEAT:-3}
hz=${PEERS_HZ:-99}

bench_setup peers.sh "${PEERS_TASKPROF:-}"
work=$(mktemp -d /tmp/taskprof-peers.XXXXXX)
workload_pids=()
cleanup() {
    for pid in "${workload_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    echo 0 >/proc/sys/kernel/bpf_stats_enabled
    rm -rf "$work"
}
trap cleanup EXIT
gcc -O1 -fno-omit-frame-pointer -o "$work/chain" tests/fixtures/chain.c
echo 1 >/proc/sys/kernel/bpf_stats_enabled

# run_time_ns and run_cnt summed over the perf_event programs (type 7)
# that process $1 holds.
# One awk over every fd: taskprof holds hundreds (the files it names).
bpf_totals() {
    awk 'FNR == 1 {type = ""} $1 == "prog_type:" {type = $2}
         type == 7 && $1 == "run_time_ns:" {ns += $2}
         type == 7 && $1 == "run_cnt:" {cnt += $2}
         END {print ns + 0, cnt + 0}' /proc/"$1"/fdinfo/* 2>/dev/null || echo "0 0"
}

now() { date +%s.%N; }

# One run of profiler $1. Prints: rss_kib cpu_per_s bpf_ns start_s output_s.
run_one() {
    local tool=$1 out=$work/$1 t0 pid first="" totals="0 0" sample_end
    rm -rf "$out"; mkdir -p "$out"
    t0=$(now)
    case $tool in
        perf)
            /usr/bin/time -o "$out/time" -f "%M %U %S" \
                perf record -q -a -g -F "$hz" -o "$out/perf.data" -- sleep "$seconds" 2>/dev/null &
            ;;
        bpftrace)
            /usr/bin/time -o "$out/time" -f "%M %U %S" \
                bpftrace -q -e "profile:hz:$hz { @[kstack, ustack, comm] = count(); } interval:s:$seconds { exit(); }" \
                >"$out/bpftrace.txt" 2>/dev/null &
            ;;
        taskprof)
            # shellcheck disable=SC2086
            /usr/bin/time -o "$out/time" -f "%M %U %S" \
                "$taskprof" profile -d "${seconds}s" -F "$hz" ${TASKPROF_ARGS:-} -o "$out/profile.pb.gz" 2>/dev/null &
            ;;
    esac
    local timer=$!
    # The profiler is the time command's child.
    for _ in $(seq 200); do
        pid=$(pgrep -P "$timer" | head -1) && [[ -n "$pid" ]] && break
        sleep 0.005
    done
    while [[ -z "$first" ]] && kill -0 "$timer" 2>/dev/null; do
        if [[ $tool == perf ]]; then
            pgrep -P "$pid" >/dev/null && first=$(now)
        else
            read -r _ cnt < <(bpf_totals "$pid")
            ((cnt > 0)) && first=$(now)
        fi
        [[ -n "$first" ]] || sleep 0.005
    done
    # A second before sampling ends (taskprof closes its program as soon
    # as sampling stops), the programs' own totals.
    sample_end=$(echo "$first + $seconds" | bc)
    sleep "$(echo "x = $sample_end - $(now) - 1; if (x < 0) x = 0; x" | bc)"
    [[ $tool != perf ]] && totals=$(bpf_totals "$pid")
    wait "$timer"
    local t_exit; t_exit=$(now)
    local output
    if [[ $tool == perf ]]; then
        local r0; r0=$(now)
        perf report -i "$out/perf.data" --stdio >"$out/report.txt" 2>/dev/null
        perf script -i "$out/perf.data" >"$out/script.txt" 2>/dev/null
        output=$(echo "$(now) - $r0" | bc)
    else
        output=$(echo "$t_exit - $sample_end" | bc)
    fi
    read -r rss user sys <"$out/time"
    read -r ns cnt <<<"$totals"
    local per_sample="-"
    ((cnt > 0)) && per_sample=$((ns / cnt))
    echo "$rss $(echo "scale=4; ($user + $sys) / $seconds" | bc) $per_sample $(echo "$first - $t0" | bc) $output"
}

# The median of the numbers on stdin; "-" when there are none.
median() { grep -v '^-$' | sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "-"; else print a[int((NR + 1) / 2)]}'; }

# The machine's load decides much of the figures (every profiler also
# sees the other programs on the host), so the table says what it was.
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
read -r -a tools <<<"${PEERS_TOOLS:-perf bpftrace taskprof}"
for ((round = 1; round <= repeat; round++)); do
    for tool in "${tools[@]}"; do
        "$work/chain" $((seconds + 10)) & workload_pids=($!)
        "$work/chain" $((seconds + 10)) & workload_pids+=($!)
        sleep 1
        echo "round $round: $tool" >&2
        run_one "$tool" >>"$work/$tool.results"
        kill "${workload_pids[@]}" 2>/dev/null || true
        wait "${workload_pids[@]}" 2>/dev/null || true
        workload_pids=()
        sleep 1
    done
done

column() {
    [[ -f $work/$1.results ]] || { echo "-"; return; }
    awk -v c="$2" '{print $c}' "$work/$1.results" | median
}
echo
echo "load average (1, 5, 15 min) at the start: $load_at_start; at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| measure (median of $repeat, whole host, ${hz} Hz, ${seconds} s, 2 busy chain processes) | perf record -a -g | bpftrace profile:hz:$hz | taskprof ${TASKPROF_ARGS:-} |"
echo "|---|---|---|---|"
row() {
    printf '| %s | %s | %s | %s |\n' "$1" "$(column perf "$2")$3" "$(column bpftrace "$2")$3" "$(column taskprof "$2")$3"
}
row "peak RSS (KiB)" 1 ""
row "CPU s per sampled s (user+sys)" 2 ""
row "BPF ns per sample" 3 ""
row "start-up to first sample (s)" 4 ""
row "end of sampling to output written (s)" 5 ""
