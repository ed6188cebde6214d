#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo fuzz, libFuzzer) for FUZZ_SECONDS
# each (600), FUZZ_JOBS at a time (2), under nice -n 10. cargo fuzz's
# instrumentation flags are nightly features; the installed (stable)
# toolchain accepts them with RUSTC_BOOTSTRAP=1, so no nightly is needed.
# cargo-fuzz itself comes from `scripts/install-deps.sh --test`
# (target/cargo-tools/bin).
# Usage: scripts/fuzz.sh [TARGET...]        (default: every target)
# New corpus entries land in fuzz/corpus/<target>/ (minimise them with
# `RUSTC_BOOTSTRAP=1 cargo fuzz cmin <target>` before committing), or with
# FUZZ_NEW_INPUTS=scratch in target/fuzz-corpus/<target>/, leaving the
# checkout untouched (CI's short run). A crash is saved under
# fuzz/artifacts/<target>/ and ends the script with exit 1. Logs are in
# target/fuzz-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/target/cargo-tools/bin:$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1

SECONDS_EACH=${FUZZ_SECONDS:-600}
JOBS=${FUZZ_JOBS:-2}
NEW_INPUTS=${FUZZ_NEW_INPUTS:-corpus}
case $NEW_INPUTS in
corpus | scratch) ;;
*)
    echo "fuzz.sh: FUZZ_NEW_INPUTS must be corpus or scratch, not '$NEW_INPUTS'" >&2
    exit 2
    ;;
esac
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^taskprof-fuzz$')
fi
command -v cargo-fuzz >/dev/null || {
    echo "fuzz.sh: cargo-fuzz is missing: run scripts/install-deps.sh --test" >&2
    exit 2
}
# Safe Rust parsers: debug assertions (overflow checks) matter more than
# AddressSanitizer, which would halve the executions per second.
cargo fuzz build -O -a -s none
mkdir -p target/fuzz-logs

run() {
    local target=$1
    # The cgroup target also starts from the parser's test fixtures.
    local seeds=() corpus="fuzz/corpus/$target"
    [[ $target == cgroup ]] && seeds=(tests/fixtures/cgroup)
    if [[ $NEW_INPUTS == scratch ]]; then
        # libFuzzer writes new inputs into its first directory only.
        corpus="target/fuzz-corpus/$target"
        mkdir -p "$corpus"
        seeds+=("fuzz/corpus/$target")
    fi
    nice -n 10 cargo fuzz run -O -a -s none "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=20 \
        >"target/fuzz-logs/$target.log" 2>&1
}

status=0
running=0
for target in "${targets[@]}"; do
    run "$target" &
    running=$((running + 1))
    if ((running >= JOBS)); then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while ((running > 0)); do
    wait -n || status=1
    running=$((running - 1))
done
for target in "${targets[@]}"; do
    echo "fuzz.sh: $target: $(grep -E '^(Done|#[0-9]+ +DONE)' "target/fuzz-logs/$target.log" | tail -n 1 || true)"
    grep -E 'ERROR|panicked|SUMMARY' "target/fuzz-logs/$target.log" | head -n 5 || true
done
exit $status
