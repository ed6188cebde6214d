#!/usr/bin/env bash
# Builds taskprof (installing missing system packages first) and profiles
# the whole host for 30 s into profile.pb.gz. Extra flags go to
# `taskprof profile`, e.g. scripts/quickstart.sh --duration 10s.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
cargo build --release --locked
# The defaults are a 30 s whole-host profile into profile.pb.gz.
exec "${CARGO_TARGET_DIR:-target}/release/taskprof" profile "$@"
