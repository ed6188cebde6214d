#!/bin/busybox sh
# /init of scripts/kernel-matrix.sh's guests: runs as root in an initramfs
# with busybox, taskprof, the qsort_gcc fixture (no frame pointers) and the
# NIC's module. Takes a one-shot whole-host profile and an agent round, and
# posts the profile, the logs and a report to the host's receiver at
# 10.0.2.2 (user-mode networking's alias for the host's loopback). Then
# powers the VM off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
insmod /modules/e1000.ko
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

for word in $(cat /proc/cmdline); do
    case $word in
    matrix_guest=*) guest=${word#*=} ;;
    matrix_port=*) port=${word#*=} ;;
    esac
done
receiver=http://10.0.2.2:$port
post() { # FILE NAME: base64, since busybox wget posts a file as a C string
    base64 "$1" >/tmp/post.b64
    wget -q -O /dev/null --post-file /tmp/post.b64 "$receiver/result?guest=$guest&file=$2&encoding=base64" ||
        echo "matrix: posting $2 failed"
}
echo "matrix: $guest: kernel $(uname -r), BTF: $(ls /sys/kernel/btf/vmlinux 2>&1)"

/bin/qsort_gcc 3600 &
fixture=$!
sleep 1

# One-shot whole-host profile. A whole-host profile loads a process's
# unwind tables when it is first sampled, which under emulation takes a
# second or two: the fixture's samples before that are cut short ("tables
# not loaded yet"). A minute makes them about 2% of its samples.
taskprof profile --duration 60s --frequency 199 --output /tmp/profile.pb.gz >/tmp/profile.log 2>&1
echo "matrix: profile exited $?"
cat /tmp/profile.log
summary=$(grep 'BPF sampler' /tmp/profile.log | tail -n 1)
variant=$(echo "$summary" | sed -n 's/.*BPF sampler \([a-z_+]*\).*/\1/p')
verified=$(echo "$summary" | sed -n 's/.*BPF sampler [a-z_+]* (\([0-9]*\) instructions verified.*/\1/p')
load_ms=$(echo "$summary" | sed -n 's/.*instructions verified, loaded in \([0-9]*\) ms).*/\1/p')
[ -f /tmp/profile.pb.gz ] && post /tmp/profile.pb.gz profile.pb.gz
post /tmp/profile.log profile.log

# A short agent round: wait for its first upload, read its variant metric.
taskprof agent --upload-url "$receiver" --upload-protocol pyroscope --window 10s \
    --metrics-address 127.0.0.1:7071 >/tmp/agent.log 2>&1 &
agent=$!
uploads=0
for _ in $(seq 120); do
    sleep 1
    wget -q -O /tmp/metrics http://127.0.0.1:7071/metrics 2>/dev/null || continue
    uploads=$(sed -n 's/^taskprof_profiles_uploaded_total \([0-9]*\).*/\1/p' /tmp/metrics)
    [ "${uploads:-0}" -ge 1 ] && break
done
agent_variant=$(sed -n 's/^taskprof_bpf_variant{variant="\([^"]*\)".*/\1/p' /tmp/metrics 2>/dev/null)
kill -TERM $agent
wait $agent
echo "matrix: agent exited $?"
post /tmp/agent.log agent.log
kill $fixture

cat >/tmp/report <<EOF
variant=$variant
verified=$verified
load_ms=$load_ms
agent_uploads=${uploads:-0}
agent_variant=$agent_variant
EOF
cat /tmp/report
post /tmp/report report
echo "matrix: done"
poweroff -f
