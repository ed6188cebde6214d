#!/usr/bin/env bash
# Installs what the tests need and runs the whole suite: formatting, lints,
# Kubernetes manifest validation, unit and integration tests (these load
# the real BPF program: run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh --test
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
scripts/validate-manifests.sh
cargo test --locked
