#!/usr/bin/env bash
# Reads a pprof profile with `go tool pprof -traces` and prints two numbers
# for the samples of process PROCESS_NAME: how many there are, and the
# percentage whose stack is complete, meaning it reaches the thread's root
# (`_start`) through `main` (the fixture's own frames, so a stack cut short
# and ending elsewhere does not count).
#   scripts/kernel-matrix-check.sh PROFILE PROCESS_NAME
set -euo pipefail
profile=$1
process=$2
command -v go >/dev/null || { echo "kernel-matrix-check: go is missing; run scripts/install-deps.sh --test" >&2; exit 1; }
[[ -s $profile ]] || { echo "kernel-matrix-check: no profile at $profile" >&2; exit 1; }
go tool pprof -traces "$profile" 2>/dev/null | python3 -c '
import re, sys
process = sys.argv[1]
total = complete = 0
def finish(block):
    global total, complete
    labels = {}
    frames = []
    count = 0
    for line in block:
        label = re.match(r"^\s*(\S+):  (.*)$", line)
        if label and not frames:
            labels[label.group(1)] = label.group(2).strip()
        elif line.strip():
            words = line.split()
            if not frames and words[0].isdigit():
                count = int(words[0])
                words = words[1:]
            frames.append(" ".join(words))
    if labels.get("process_name") != process or not count:
        return
    total += count
    if frames and frames[-1] == "_start" and "main" in frames:
        complete += count
block = []
for line in sys.stdin:
    line = line.rstrip("\n")
    if line.startswith("-----------+"):
        finish(block)
        block = []
    else:
        block.append(line)
finish(block)
print(total, "%.1f" % (100.0 * complete / total if total else 0.0))
' "$process"
