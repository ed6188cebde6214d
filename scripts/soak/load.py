#!/usr/bin/env python3
"""The soak's load: new processes at --rate a second, each a shell that
spins for a few milliseconds; thread churn (batches of short-lived threads
started and joined all the time); and an exec storm every --storm-every
seconds (one process that execs itself --storm-execs times). Runs until
SIGTERM and prints what it started, one JSON line, when it ends.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

CHAIN = """#!/bin/sh
# Execs itself $1 times, then exits: one pid, many programs.
n=${1:-0}
if [ "$n" -gt 0 ]; then exec "$0" $((n - 1)); fi
exit 0
"""

SPIN = "i=0; while [ $i -lt 1500 ]; do i=$((i+1)); done"


def thread_churn(stopping, counts):
    def work():
        total = 0
        for i in range(20000):
            total += i * i
        return total

    while not stopping.is_set():
        batch = [threading.Thread(target=work) for _ in range(8)]
        for thread in batch:
            thread.start()
        for thread in batch:
            thread.join()
        counts["threads"] += len(batch)
        stopping.wait(0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--storm-every", type=float, default=30.0)
    parser.add_argument("--storm-execs", type=int, default=500)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    chain = os.path.join(args.dir, "exec-chain.sh")
    with open(chain, "w") as out:
        out.write(CHAIN)
    os.chmod(chain, 0o755)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    counts = {"processes": 0, "threads": 0, "storms": 0, "storm_execs": 0}
    threading.Thread(target=thread_churn, args=(stopping, counts), daemon=True).start()

    children = []
    interval = 1.0 / args.rate
    next_start = time.monotonic()
    next_storm = next_start + args.storm_every
    while not stopping.is_set():
        now = time.monotonic()
        if now >= next_storm:
            children.append(subprocess.Popen([chain, str(args.storm_execs)]))
            counts["storms"] += 1
            counts["storm_execs"] += args.storm_execs
            next_storm += args.storm_every
        children.append(subprocess.Popen(["/bin/sh", "-c", SPIN]))
        counts["processes"] += 1
        children = [child for child in children if child.poll() is None]
        next_start += interval
        # Behind schedule (a loaded machine): skip ahead instead of bursting.
        next_start = max(next_start, time.monotonic())
        stopping.wait(max(0.0, next_start - time.monotonic()))
    for child in children:
        child.wait()
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
