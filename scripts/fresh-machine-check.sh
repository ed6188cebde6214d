#!/usr/bin/env bash
# Runs the README's two Quick-start commands, exactly as written, on a
# clean Debian 12 (bookworm, minbase) root, to catch set-up steps that
# only work because a development machine happens to carry something.
#
#   scripts/fresh-machine-check.sh            check the committed HEAD
#   scripts/fresh-machine-check.sh --keep     leave the root in place afterwards
#
# - The minbase root is built once with debootstrap and cached as a tarball
#   under $TASKPROF_FRESH_CACHE (default /var/cache/taskprof-fresh); each
#   run unpacks a new copy, so nothing installed by an earlier run remains.
# - The committed tree (HEAD, not the working tree) is cloned into it.
# - Only the Rust toolchain comes from this machine: ~/.rustup and
#   ~/.cargo/bin are bind-mounted read-only. Crates are downloaded inside.
# - This machine's network settings are carried in, as a user's machine has
#   its own: DNS (/etc/resolv.conf), the CA bundle (/etc/ssl/certs/
#   ca-certificates.crt, where a proxy re-signs TLS) and the local CAs it
#   is made from (/usr/local/share/ca-certificates, so that a bundle
#   regenerated when the ca-certificates package is installed keeps
#   them), /etc/pip.conf, and the
#   proxy and CA-bundle variables (*_proxy, SSL_CERT_FILE, CURL_CA_BUNDLE,
#   PIP_CERT, ...). Nothing else from the host is.
# - The root is bind-mounted onto itself, as a machine's / is a mount
#   point, so that `unshare --mount` and remounting / read-only work inside.
#
# Prints each command's exit code and time, whether profile.pb.gz was
# written, and the number of tests run. Exits 0 only if both commands
# pass. Needs root, network access to the Debian archive, crates.io and
# PyPI, and 40 minutes or so on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

keep=0
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        *) echo "fresh-machine-check: unknown argument $arg (only --keep)" >&2; exit 2 ;;
    esac
done
if [[ $(id -u) -ne 0 ]]; then
    echo "fresh-machine-check: run as root (it runs debootstrap, mount and chroot)" >&2
    exit 2
fi
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
if [[ ! -x "$cargo_bin/cargo" || ! -d "$rustup_home/toolchains" ]]; then
    echo "fresh-machine-check: no rustup toolchain in $rustup_home and $cargo_bin; install one with rustup first" >&2
    exit 2
fi

for tool in debootstrap; do
    if ! command -v "$tool" >/dev/null; then
        echo "fresh-machine-check: installing $tool" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null; }
    fi
done

cache=${TASKPROF_FRESH_CACHE:-/var/cache/taskprof-fresh}
base="$cache/bookworm-minbase.tar"
mkdir -p "$cache"
if [[ ! -s "$base" ]]; then
    echo "fresh-machine-check: building a Debian 12 minbase root (once; cached in $base)" >&2
    build="$cache/build.$$"
    rm -rf "$build"
    debootstrap --variant=minbase bookworm "$build" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
        || { echo "fresh-machine-check: debootstrap failed; see $cache/debootstrap.log" >&2; exit 1; }
    tar -C "$build" -cf "$base.tmp" .
    mv "$base.tmp" "$base"
    rm -rf "$build"
fi

root=$(mktemp -d /var/tmp/taskprof-fresh.XXXXXX)
mounts=()
cleanup() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -l "${mounts[i]}" 2>/dev/null || true
    done
    if ((keep)); then
        echo "fresh-machine-check: root kept in $root" >&2
    else
        rm -rf --one-file-system "$root"
    fi
}
trap cleanup EXIT
bind() { # bind SOURCE TARGET [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mounts+=("$2")
    if [[ "${3:-}" == ro ]]; then
        mount -o remount,bind,ro "$2"
    fi
}

tar -C "$root" -xf "$base"
cp /etc/resolv.conf "$root/etc/resolv.conf"
if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$root/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
if [[ -d /usr/local/share/ca-certificates ]]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
if [[ -f /etc/pip.conf ]]; then
    cp /etc/pip.conf "$root/etc/pip.conf"
fi
network_env=()
while IFS= read -r name; do
    network_env+=("$name=${!name}")
done < <(compgen -e | grep -E '^([a-zA-Z]+_proxy|[A-Z_]*_PROXY|SSL_CERT_FILE|SSL_CERT_DIR|CURL_CA_BUNDLE|PIP_CERT|REQUESTS_CA_BUNDLE|GIT_SSL_CAINFO|CARGO_HTTP_CAINFO)$' || true)
bind "$root" "$root"
mkdir -p "$root/proc" "$root/sys" "$root/dev"
mount -t proc proc "$root/proc" && mounts+=("$root/proc")
mount -t sysfs sysfs "$root/sys" && mounts+=("$root/sys")
bind /sys/fs/bpf "$root/sys/fs/bpf"
bind /dev "$root/dev"
bind /dev/pts "$root/dev/pts"
mkdir -p "$root/dev/shm"
mount -t tmpfs tmpfs "$root/dev/shm" && mounts+=("$root/dev/shm")
bind "$rustup_home" "$root/root/.rustup" ro
bind "$cargo_bin" "$root/root/.cargo/bin" ro

head=$(git -C "$repo" rev-parse HEAD)
git clone --quiet "$repo" "$root/root/taskprof"
git -C "$root/root/taskprof" checkout --quiet "$head"

run() { # run NAME COMMAND: runs COMMAND in the checkout inside the root
    local name=$1 command=$2 start rc
    start=$(date +%s)
    set +e
    chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 "${network_env[@]}" \
        PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "cd /root/taskprof && $command" >"$cache/$name.log" 2>&1
    rc=$?
    set -e
    echo "$name: exit $rc after $(($(date +%s) - start)) s (log: $cache/$name.log)"
    return $rc
}

echo "fresh-machine-check: HEAD $head in $root"
status=0
run quickstart "scripts/quickstart.sh" || status=1
if [[ -s "$root/root/taskprof/profile.pb.gz" ]]; then
    echo "quickstart: profile.pb.gz written ($(stat -c %s "$root/root/taskprof/profile.pb.gz") bytes)"
else
    echo "quickstart: no profile.pb.gz"
    status=1
fi
# The clean root has no pyenv builds of CPython 3.7-3.13 (built from
# source, not installable by the set-up); leave the version matrix out.
echo "test: TASKPROF_PYTHON_MATRIX=skip (no pyenv builds in the clean root)"
run test "TASKPROF_PYTHON_MATRIX=skip scripts/test.sh" || status=1
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "test: %d passed, %d failed, %d ignored\n", passed, failed, ignored }' "$cache/test.log"
grep -E '^(failures:|    [a-z_:]+$)' "$cache/test.log" | head -20 || true
if ((status)); then
    echo "fresh-machine-check: FAIL"
else
    echo "fresh-machine-check: PASS"
fi
exit $status
