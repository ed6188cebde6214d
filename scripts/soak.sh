#!/usr/bin/env bash
# The soak: the release agent on the whole host for an hour (SOAK_MINUTES)
# under process churn, thread churn and exec storms, uploading to a local
# receiver that throttles (429), fails (503), goes away for minutes and
# comes back, with a spool small enough to be pushed to its bound.
#
# Every SOAK_SAMPLE_SECS (60) it records the agent's RSS, open fds, CPU, the
# spool's size and the accounting counters from /metrics into
# $SOAK_DIR/minutes.csv. At the end it checks that RSS and fds stayed flat
# after the warm-up, that every sample BPF took was delivered or counted
# lost or dropped, and that every window's profiles were delivered or
# counted as failed (evicted); then it draws $SOAK_DIR/soak.png. Exit 0
# when every check holds, 1 otherwise.
#
# The load runs in a cgroup of its own, named the way a container's is, and
# the agent profiles that container only (--container-id): what the soak
# measures is the agent under the soak's load, not whatever else the host
# runs (other builds and tests would otherwise come and go in its figures).
# The host's processes still reach the agent's BPF program, and their
# samples are counted as filtered. SOAK_SCOPE=host profiles the whole host
# instead.
#
# Usage (root): scripts/soak.sh            # one hour
#               SOAK_MINUTES=10 scripts/soak.sh
set -euo pipefail
# One compound command: bash reads all of it before running any, so editing
# this file during an hour-long run cannot change the run.
{
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

MINUTES=${SOAK_MINUTES:-60}
SAMPLE_SECS=${SOAK_SAMPLE_SECS:-60}
WARMUP_MINUTES=${SOAK_WARMUP_MINUTES:-5}
# One receiver cycle (accept, 429, 503, down, accept) every 12 minutes.
CYCLE_SECS=${SOAK_CYCLE_SECS:-720}
DIR=${SOAK_DIR:-target/soak}
PYTHON=${SOAK_PYTHON:-/usr/bin/python3}
SCOPE=${SOAK_SCOPE:-load}
# Small enough that every outage fills it: the load's windows are a few
# KiB, the whole host's tens.
if [[ $SCOPE == load ]]; then
    SPOOL_MAX=${SOAK_SPOOL_MAX_BYTES:-32KiB}
else
    SPOOL_MAX=${SOAK_SPOOL_MAX_BYTES:-1MiB}
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "soak.sh: run as root (the agent loads BPF)" >&2
    exit 2
fi
if [[ $SCOPE != load && $SCOPE != host ]]; then
    echo "soak.sh: SOAK_SCOPE must be load (the agent profiles the load's cgroup only) or host, not '$SCOPE'" >&2
    exit 2
fi
command -v gnuplot >/dev/null || {
    echo "soak.sh: gnuplot is missing: apt-get install gnuplot-nox (scripts/install-deps.sh --soak)" >&2
    exit 2
}

cargo build --release --locked
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src bpf || echo "+changes")
rm -rf "$DIR"
mkdir -p "$DIR/spool"
DIR=$(cd "$DIR" && pwd)

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
upload_port=$(free_port)
metrics_port=$(free_port)
run_secs=$((MINUTES * 60))

pids=()
cgroup=
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n $cgroup ]]; then
        # Empty once the load's last child is gone.
        for _ in $(seq 50); do rmdir "$cgroup" 2>/dev/null && break; sleep 0.2; done
        rmdir "$(dirname "$cgroup")" 2>/dev/null || true
    fi
}
trap cleanup EXIT

agent_scope=()
if [[ $SCOPE == load ]]; then
    # A cgroup v2 directory named by a bare 64-hex id is a container to the
    # agent (the cgroupfs driver's shape): the load runs in it.
    cgroup2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
    if [[ -z $cgroup2 ]]; then
        echo "soak.sh: no cgroup v2 hierarchy is mounted; mount one or run with SOAK_SCOPE=host" >&2
        exit 2
    fi
    container=$(echo "taskprof-soak $$ $(date +%s%N)" | sha256sum | cut -c1-64)
    cgroup=$cgroup2/taskprof-soak/$container
    mkdir -p "$cgroup"
    agent_scope=(--container-id "$container")
fi

"$PYTHON" scripts/soak/receiver.py --port "$upload_port" --cycle "$CYCLE_SECS" \
    --ok-after "$run_secs" --log "$DIR/receiver.jsonl" &
pids+=($!)

target/release/taskprof agent \
    --upload-protocol pyroscope --upload-url "http://127.0.0.1:$upload_port" \
    --spool-dir "$DIR/spool" --spool-max-bytes "$SPOOL_MAX" \
    --metrics-address "127.0.0.1:$metrics_port" --shutdown-grace 60s \
    "${agent_scope[@]}" --log-format json 2>"$DIR/agent.log" &
agent=$!
pids+=($agent)

for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null && break
    sleep 0.2
done
curl -sf "http://127.0.0.1:$metrics_port/readyz" >/dev/null || {
    echo "soak.sh: the agent did not become ready:" >&2
    tail -n 20 "$DIR/agent.log" >&2
    exit 1
}

# The shell joins the load's cgroup (when scoped) before it becomes the
# load, so that every process the load starts is born in it.
cgroup_procs=${cgroup:+$cgroup/cgroup.procs}
sh -c '[ -z "$1" ] || echo $$ >"$1"; shift; exec "$@"' sh "$cgroup_procs" \
    nice -n 5 "$PYTHON" scripts/soak/load.py --dir "$DIR" >"$DIR/load.json" &
load=$!
pids+=($load)

ticks=$(getconf CLK_TCK)
metric() { # the sum of every series of one metric on the scraped page
    awk -v name="$1" '$1 == name || index($1, name "{") == 1 { sum += $2 } END { printf "%d", sum }' "$DIR/page"
}
sample() { # one row of minutes.csv
    local elapsed=$1
    curl -sf "http://127.0.0.1:$metrics_port/metrics" >"$DIR/page" || : >"$DIR/page"
    local rss fds cpu spool anon file
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$agent/status")
    # Anonymous memory (the heap) apart from the file pages of the binary
    # and libraries, which come and go with the host's page cache pressure.
    anon=$(awk '/^RssAnon:/ { print $2 }' "/proc/$agent/status")
    file=$(awk '/^RssFile:/ { print $2 }' "/proc/$agent/status")
    fds=$(find "/proc/$agent/fd" -mindepth 1 -maxdepth 1 | wc -l)
    # utime and stime, fields 14 and 15, after the parenthesised name.
    cpu=$(sed 's/.*) //' "/proc/$agent/stat" | awk -v t="$ticks" '{ printf "%.2f", ($12 + $13) / t }')
    spool=$(du -sb "$DIR/spool" | cut -f1)
    echo "$elapsed,$rss,$fds,$cpu,$spool,$(metric taskprof_spool_bytes),$(metric taskprof_spool_windows),$(metric taskprof_samples_total),$(metric taskprof_samples_lost_total),$(metric taskprof_samples_dropped_total),$(metric taskprof_windows_total),$(metric taskprof_profiles_uploaded_total),$(metric taskprof_profiles_failed_total),$(metric taskprof_spool_evictions_total),$(metric taskprof_tracked_processes),$(metric taskprof_unwind_table_bytes),$anon,$file,$(metric taskprof_samples_filtered_total),$(awk '{ print $1 }' /proc/loadavg)" >>"$DIR/minutes.csv"
}
echo "elapsed_s,rss_kib,fds,cpu_s,spool_dir_bytes,spool_bytes,spool_windows,samples,samples_lost,samples_dropped,windows,profiles_uploaded,profiles_failed,spool_evictions,tracked_processes,unwind_table_bytes,rss_anon_kib,rss_file_kib,samples_filtered,host_load" >"$DIR/minutes.csv"

echo "soak.sh: agent $commit (pid $agent) for $MINUTES min, profiling ${cgroup:-the whole host}; receiver on :$upload_port; writing $DIR"
start=$(date +%s)
next=$start
while :; do
    now=$(date +%s)
    elapsed=$((now - start))
    if ! kill -0 "$agent" 2>/dev/null; then
        echo "soak.sh: the agent died at ${elapsed}s:" >&2
        tail -n 20 "$DIR/agent.log" >&2
        exit 1
    fi
    if ((now >= next)); then
        sample "$elapsed"
        echo "soak.sh: $(tail -n 1 "$DIR/minutes.csv")"
        next=$((next + SAMPLE_SECS))
    fi
    ((elapsed >= run_secs)) && break
    sleep 1
done

kill "$load"
wait "$load" || true
# The receiver accepts everything from now on: wait for the spool to drain
# (at most 10 minutes) before stopping the agent, so that the account closes.
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$metrics_port/metrics" >"$DIR/page" || break
    [[ $(metric taskprof_spool_windows) -eq 0 ]] && break
    sleep 1
done
sample "$(($(date +%s) - start))"
kill -TERM "$agent"
wait "$agent" || echo "soak.sh: the agent exited with $?" >&2

status=0
"$PYTHON" scripts/soak/check.py --dir "$DIR" --warmup "$((WARMUP_MINUTES * 60))" --commit "$commit" \
    --minutes "$MINUTES" --scope "$SCOPE" || status=$?
gnuplot -e "dir='$DIR'" scripts/soak/plot.gnuplot
echo "soak.sh: plot in $DIR/soak.png"
exit $status
}
