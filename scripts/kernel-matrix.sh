#!/usr/bin/env bash
# Boots Debian's own kernels under qemu (software emulation: no KVM needed)
# and, in each, loads taskprof's BPF sampler, takes a one-shot whole-host
# profile with a frame-pointer-less C fixture running, checks on the host
# that >= 95% of the fixture's samples are complete stacks, and runs a
# short agent round that uploads to a receiver on the host. Prints one
# table: kernel, variant, verifier instructions, load time, samples,
# complete %.
#
#   scripts/kernel-matrix.sh              every kernel: bullseye 5.10,
#                                         bookworm 6.1, trixie 6.12, and the
#                                         host's /boot/vmlinuz-$(uname -r)
#   scripts/kernel-matrix.sh bullseye     only the named ones (bullseye,
#                                         bookworm, trixie, host)
#
# Downloads (the kernel packages, through apt with a private state
# directory) are cached under target/kernel-matrix/, so reruns only boot.
# Run as root (apt's download area); needs scripts/install-deps.sh --test
# (qemu-system-x86, busybox-static, golang-go). Exits 1 if any kernel fails.
# The guests run the release build: a debug build loads the fixture's
# unwind tables so slowly under emulation that a third of its samples come
# before them.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$repo/target/kernel-matrix
mkdir -p "$work"

all_kernels=(bullseye bookworm trixie host)
if (($#)); then kernels=("$@"); else kernels=("${all_kernels[@]}"); fi
for k in "${kernels[@]}"; do
    case $k in bullseye | bookworm | trixie | host) ;; *)
        echo "kernel-matrix: unknown kernel '$k'; use: ${all_kernels[*]}" >&2
        exit 2
        ;;
    esac
done
for tool in qemu-system-x86_64 busybox cpio gcc go python3 apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || {
        echo "kernel-matrix: $tool is missing; run scripts/install-deps.sh --test" >&2
        exit 1
    }
done
# ldd fails on a static executable: that is the busybox the guests need.
! ldd "$(command -v busybox)" >/dev/null 2>&1 || {
    echo "kernel-matrix: busybox is not the static build; run scripts/install-deps.sh --test (busybox-static)" >&2
    exit 1
}

log() { echo "kernel-matrix: $*" >&2; }

# --- Kernel packages, through apt with its own sources and state ----------
apt_root=$work/apt
apt_opts=(-o "Dir=$apt_root" -o "Dir::State::status=/dev/null" -o "Dir::Etc=$apt_root/etc/apt"
    -o "APT::Architecture=amd64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
setup_apt() {
    mkdir -p "$apt_root"/etc/apt/{apt.conf.d,preferences.d,sources.list.d} \
        "$apt_root"/var/lib/apt/lists/partial "$apt_root"/var/cache/apt/archives/partial
    local sources=$apt_root/etc/apt/sources.list
    local want
    want=$(for suite in bullseye bookworm trixie; do
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main"
    done)
    if [[ ! -f $sources || "$(cat "$sources")" != "$want" || -z "$(ls "$apt_root"/var/lib/apt/lists/*Packages* 2>/dev/null)" ]]; then
        echo "$want" >"$sources"
        log "apt-get update (bullseye, bookworm, trixie indexes)"
        apt-get "${apt_opts[@]}" -qq update
    fi
}

# Prints the path of the unpacked kernel package for `suite`, downloading
# and unpacking it once.
fetch_kernel() {
    local suite=$1 package deb dir
    setup_apt
    # linux-image-amd64 depends on the suite's current kernel package.
    package=$(apt-cache "${apt_opts[@]}" depends "linux-image-amd64/$suite" 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ && !found {print $2; found = 1}')
    [[ -n $package ]] || { log "no linux-image-amd64 in $suite"; return 1; }
    mkdir -p "$work/debs"
    deb=$(ls "$work/debs/${package}_"*.deb 2>/dev/null | head -1 || true)
    if [[ -z $deb ]]; then
        log "downloading $package ($suite)"
        (cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download "$package/$suite")
        deb=$(ls "$work/debs/${package}_"*.deb | head -1)
    fi
    dir=$work/unpacked/$(basename "$deb" .deb)
    if [[ ! -d $dir/boot ]]; then
        rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
        dpkg-deb -x "$deb" "$dir.tmp"
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

# --- What every guest runs ------------------------------------------------
log "building taskprof (release)"
cargo build --release --locked --quiet --bin taskprof
binary=target/release/taskprof
mkdir -p "$work/guest"
fixture=$work/guest/qsort_gcc
gcc -O2 -fomit-frame-pointer -fno-inline-functions-called-once -g \
    -o "$fixture" tests/fixtures/unwind/qsort_chain.c

# Builds the initramfs for one kernel: busybox, taskprof and the fixture
# with their shared libraries, the kernel's NIC module, and /init.
build_initramfs() {
    local modules_dir=$1 out=$2 root
    root=$(mktemp -d "$work/root.XXXXXX")
    mkdir -p "$root"/{bin,proc,sys,dev,tmp,run,etc,lib64,lib/x86_64-linux-gnu,modules}
    cp "$(command -v busybox)" "$root/bin/busybox"
    objcopy --strip-debug "$binary" "$root/bin/taskprof"
    cp "$fixture" "$root/bin/qsort_gcc"
    local lib
    for lib in $(ldd "$binary" "$fixture" | awk '/=> \// {print $3} /^\t\/lib64/ {print $1}' | sort -u); do
        cp -L "$lib" "$root$lib"
    done
    # The user-mode network's emulated e1000, a module in Debian's kernels.
    local e1000
    e1000=$(find "$modules_dir" -name 'e1000.ko*' -print -quit)
    case $e1000 in
    *.xz) xz -dc "$e1000" >"$root/modules/e1000.ko" ;;
    *.zst) zstd -qdc "$e1000" >"$root/modules/e1000.ko" ;;
    *) cp "$e1000" "$root/modules/e1000.ko" ;;
    esac
    cp scripts/kernel-matrix-guest.sh "$root/init"
    chmod +x "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
    rm -rf "$root"
}

# --- The receiver on the host ---------------------------------------------
# Stores each POST under results/<guest>/<path>: the guest's one-shot
# profile and its report, and the agent's uploads.
results=$work/results
rm -rf "$results" && mkdir -p "$results"
port_file=$work/receiver.port
rm -f "$port_file"
python3 - "$results" "$port_file" <<'EOF' &
import base64, http.server, itertools, os, sys, urllib.parse
root, port_file = sys.argv[1], sys.argv[2]
uploads = itertools.count(1)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        query = urllib.parse.parse_qs(url.query)
        # busybox wget posts a file as a C string: binary files come base64.
        if query.get("encoding") == ["base64"]:
            body = base64.b64decode(body)
        guest = query.get("guest", ["agent"])[0]
        name = query.get("file", [None])[0] or "upload-%d" % next(uploads)
        os.makedirs(os.path.join(root, guest), exist_ok=True)
        with open(os.path.join(root, guest, os.path.basename(name)), "wb") as f:
            f.write(body)
        if url.path == "/ingest":
            with open(os.path.join(root, "agent-uploads"), "a") as f:
                f.write("%s %d\n" % (query.get("name", ["?"])[0], len(body)))
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_port))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
EOF
receiver=$!
trap 'kill $receiver 2>/dev/null || true' EXIT
for _ in $(seq 50); do [[ -f $port_file ]] && break; sleep 0.1; done
port=$(cat "$port_file")

# --- Boot each kernel -----------------------------------------------------
rows=()
failed=0
for k in "${kernels[@]}"; do
    if [[ $k == host ]]; then
        vmlinuz=/boot/vmlinuz-$(uname -r)
        if [[ ! -f $vmlinuz ]]; then
            log "host: $vmlinuz is not there (this machine boots its kernel from elsewhere); skipped"
            rows+=("host $(uname -r)|skipped: no $vmlinuz|||||")
            continue
        fi
        modules=/lib/modules/$(uname -r)
    else
        dir=$(fetch_kernel "$k")
        vmlinuz=$(ls "$dir"/boot/vmlinuz-*)
        modules=""
        for candidate in "$dir"/lib/modules/* "$dir"/usr/lib/modules/*; do
            [[ -d $candidate ]] && modules=$candidate
        done
    fi
    release=${vmlinuz##*/vmlinuz-}
    initrd=$work/guest/initrd-$release.gz
    build_initramfs "$modules" "$initrd"
    console=$work/results/console-$release.log
    log "booting $release ($k) under qemu (TCG); console: $console"
    started=$(date +%s)
    # The guest reaches the receiver at 10.0.2.2, which user-mode
    # networking forwards to the host's loopback; nothing else is exposed.
    if ! timeout 900 nice -n 10 qemu-system-x86_64 -machine q35 -accel tcg -cpu max -smp 2 -m 1536 \
        -kernel "$vmlinuz" -initrd "$initrd" -no-reboot -nographic -serial "file:$console" -monitor none \
        -append "console=ttyS0 panic=-1 quiet matrix_guest=$k matrix_port=$port" \
        -nic user,model=e1000 >/dev/null 2>&1; then
        log "$release: qemu failed or timed out"
    fi
    log "$release: guest ran $(($(date +%s) - started)) s"
    report=$results/$k/report
    if [[ ! -f $report ]]; then
        log "$release: no report from the guest; the console's last lines:"
        tail -n 30 "$console" >&2
        rows+=("$release|no report (see $console)|||||")
        failed=1
        continue
    fi
    # shellcheck disable=SC1090
    variant="" verified="" load_ms="" agent_uploads="" agent_variant=""
    source "$report"
    check=$(bash scripts/kernel-matrix-check.sh "$results/$k/profile.pb.gz" qsort_gcc) || true
    samples=${check%% *}
    complete=${check##* }
    status=pass
    if [[ -z $variant ]]; then status="fail: did not load"; fi
    if [[ -z $samples || $samples -lt 50 ]]; then status="fail: ${samples:-no} fixture samples"; fi
    if [[ -n $complete ]] && ! awk -v c="$complete" 'BEGIN { exit !(c >= 95) }'; then
        status="fail: complete $complete% < 95%"
    fi
    if [[ ${agent_uploads:-0} -lt 1 ]]; then status="fail: the agent uploaded nothing"; fi
    if [[ $agent_variant != "$variant" ]]; then status="fail: agent metric variant '$agent_variant'"; fi
    [[ $status == pass ]] || failed=1
    rows+=("$release|$variant|$verified|$load_ms ms|$samples|$complete%|$status (agent: $agent_uploads uploads)")
done

echo
echo "| kernel | variant | verifier instructions | load time | fixture samples | complete | result |"
echo "|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
    echo "| ${row//|/ | } |"
done
exit $failed
