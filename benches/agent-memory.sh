#!/usr/bin/env bash
# The agent's memory while large programs run and after they exit: the
# agent samples the whole host (19 Hz, 5 s windows, file protocol) for
# AGENT_MEMORY_BUSY seconds (60) while a busy node, a busy JVM (OpenJDK)
# and a rustc build run, then AGENT_MEMORY_AFTER seconds (40) after they
# are gone. Prints the agent's RSS (VmRSS) at start, its peak while they
# run (sampled each second, and the kernel's VmHWM, which sees every
# burst), and at the end, each split into heap (anonymous) and mapped
# files, with the load average at each point.
#
# Usage, as root from the repository: benches/agent-memory.sh
# AGENT_MEMORY_TASKPROF names another taskprof binary (e.g. an older build).
# Needs node and a JDK (java, javac): scripts/install-deps.sh --bench.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
source benches/common.sh
busy=${AGENT_MEMORY_BUSY:-60}
after=${AGENT_MEMORY_AFTER:-40}
bench_setup agent-memory.sh "${AGENT_MEMORY_TASKPROF:-}"
work=$(mktemp -d /tmp/taskprof-agent-memory.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

rss_kib() { awk '$1 == "VmRSS:" {print $2}' /proc/"$1"/status; }
# "RSS MiB (anon A, files F)" of a pid.
rss_split() {
    awk '$1 == "VmRSS:" {r = $2} $1 == "RssAnon:" {a = $2} $1 == "RssFile:" {f = $2}
        END {printf "%d MiB (heap %d, files %d)", r / 1024, a / 1024, f / 1024}' /proc/"$1"/status
}
load() { cut -d' ' -f1 /proc/loadavg; }

mkdir -p "$work/out" "$work/spool"
"$taskprof" agent --upload-protocol file --upload-url "$work/out" --spool-dir "$work/spool" \
    --window 5s --metrics-address 127.0.0.1:0 2>"$work/agent.log" &
agent=$!
pids+=("$agent")
sleep 6
start=$(rss_kib "$agent")
start_split=$(rss_split "$agent")
start_load=$(load)

# The programs: node and a JVM computing, and rustc compiling a crate.
cat >"$work/Spin.java" <<'EOF'
public class Spin {
    static long work(long n) { long a = 0; for (long i = 0; i < n; i++) { a += i * 31 ^ (a >>> 3); } return a; }
    public static void main(String[] args) { long end = System.currentTimeMillis() + Long.parseLong(args[0]) * 1000; long s = 0; while (System.currentTimeMillis() < end) { s += work(1000000); } System.out.println(s); }
}
EOF
javac -d "$work" "$work/Spin.java"
java -cp "$work" Spin "$busy" >/dev/null & pids+=($!)
node -e "const end = Date.now() + $busy * 1000; let s = 0; while (Date.now() < end) { for (let i = 0; i < 1e6; i++) s += Math.sqrt(i); }" & pids+=($!)
(
    end=$((SECONDS + busy))
    while ((SECONDS < end)); do
        rustc --edition 2021 -O -o "$work/spin" - <<<'fn main() { let mut s = 0u64; for i in 0..300_000_000u64 { s = s.wrapping_add(i * i); } println!("{s}"); }' 2>/dev/null
    done
) & pids+=($!)

peak=$start
peak_split=$start_split
peak_load=$(load)
end=$((SECONDS + busy))
while ((SECONDS < end)); do
    now=$(rss_kib "$agent")
    if ((now > peak)); then
        peak=$now
        peak_split=$(rss_split "$agent")
        peak_load=$(load)
    fi
    sleep 1
done
hwm=$(awk '$1 == "VmHWM:" {print int($2 / 1024)}' /proc/"$agent"/status)
# The rustc loop's last compile ends by itself within seconds.
for pid in "${pids[@]:1}"; do kill "$pid" 2>/dev/null || true; done
sleep "$after"
final_split=$(rss_split "$agent")
final_load=$(load)
kill -TERM "$agent"
wait "$agent" || true

echo "$(date -u '+%F %H:%M UTC'); binary $taskprof; checkout $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "| agent at 19 Hz, whole host | RSS | load average |"
echo "|---|---|---|"
echo "| 6 s after start | $start_split | $start_load |"
echo "| peak while node, a JVM and rustc ran (${busy} s, sampled each second) | $peak_split | $peak_load |"
echo "| peak resident ever (VmHWM, start-up included) | $hwm MiB | |"
echo "| ${after} s after they exited | $final_split | $final_load |"
