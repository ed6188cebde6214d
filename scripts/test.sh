#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite: formatting, lints,
# Kubernetes manifest validation, unit and integration tests (these load
# the real BPF program: run as root), a short run of every fuzz target,
# and the oldest kernel of the kernel
# matrix booted under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh --test
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
scripts/validate-manifests.sh
cargo test --locked
# A short run of every fuzz target (20 s each, two at a time) from the
# committed corpora, new inputs kept out of the checkout: about 2 minutes
# plus the instrumented build. `cargo test` above already replayed every
# corpus and regression file. Longer runs: scripts/fuzz.sh.
FUZZ_SECONDS=20 FUZZ_NEW_INPUTS=scratch scripts/fuzz.sh
# The oldest kernel of the kernel matrix (Debian 11's 5.10) under qemu:
# about 2.5 minutes, plus the release build. The whole matrix is
# `scripts/kernel-matrix.sh` (README, "The kernel matrix").
scripts/kernel-matrix.sh bullseye
