# Shared by the benchmark scripts (sourced from the repository's root):
# checks for root, installs what they need, and picks the taskprof binary
# to measure.

# bench_setup NAME OVERRIDE: sets `taskprof` to OVERRIDE, or else to this
# checkout's release build (built now).
bench_setup() {
    [[ $(id -u) -eq 0 ]] || { echo "$1 loads BPF programs: run it as root" >&2; exit 1; }
    scripts/install-deps.sh --bench >&2
    taskprof=$2
    if [[ -z "$taskprof" ]]; then
        cargo build --release --quiet
        taskprof=$PWD/target/release/taskprof
    fi
}

# bench_scratch NAME: a scratch directory in `work`, removed on exit
# together with the processes listed in `bench_children`; turns
# kernel.bpf_stats_enabled on and restores its value on exit (so that
# another benchmark running meanwhile keeps its BPF run times).
bench_scratch() {
    work=$(mktemp -d "/tmp/taskprof-$1.XXXXXX")
    bench_children=()
    bench_stats_before=$(cat /proc/sys/kernel/bpf_stats_enabled)
    echo 1 >/proc/sys/kernel/bpf_stats_enabled
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for pid in "${bench_children[@]}"; do kill "$pid" 2>/dev/null || true; done
    echo "$bench_stats_before" >/proc/sys/kernel/bpf_stats_enabled
    rm -rf "$work"
}

# bpf_run_totals PID [TYPE]: run_time_ns and run_cnt summed over the BPF
# programs that process PID holds, of program type TYPE only when given
# (7: perf_event), from /proc/PID/fdinfo. One awk over every fd: taskprof
# holds hundreds (the files it names).
bpf_run_totals() {
    awk -v want="${2:-}" 'FNR == 1 {type = ""} $1 == "prog_type:" {type = $2}
         (want == "" || type == want) && $1 == "run_time_ns:" {ns += $2}
         (want == "" || type == want) && $1 == "run_cnt:" {cnt += $2}
         END {print ns + 0, cnt + 0}' /proc/"$1"/fdinfo/* 2>/dev/null || echo "0 0"
}
