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
