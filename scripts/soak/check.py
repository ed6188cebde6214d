#!/usr/bin/env python3
"""Checks a finished soak (scripts/soak.sh) and writes its figures.

Reads the per-minute samples (minutes.csv), the agent's JSON log
(agent.log), the receiver's request log (receiver.jsonl) and the load's
counts (load.json) from --dir, prints a summary, writes it to summary.md
and exits 1 if any check fails:

- RSS and open fds at the end are at most 10% above their value at the end
  of the warm-up;
- the samples BPF took equal, window by window, those in profiles plus
  those counted idle, lost or filtered, and the windows add up to the total in
  the agent's `stopped` line;
- the samples in profiles equal the samples the receiver accepted plus
  `taskprof_samples_dropped_total` (profiles refused or evicted);
- the profiles of all windows equal those accepted plus
  `taskprof_profiles_failed_total`, and nothing is left in the spool;
- when the receiver went down, the spool reached its bound (evictions).
"""

import argparse
import csv
import json
import re
import sys


def read_log(path):
    windows, stopped = [], None
    with open(path) as log:
        for line in log:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            fields = event.get("fields", {})
            if fields.get("message") == "window closed":
                windows.append(fields)
            elif fields.get("message") == "stopped":
                stopped = fields
    return windows, stopped


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--warmup", type=float, default=300)
    parser.add_argument("--commit", default="?")
    parser.add_argument("--minutes", default="?")
    parser.add_argument("--scope", default="host", help="what the agent profiled: load (its cgroup) or host")
    args = parser.parse_args()

    with open(f"{args.dir}/minutes.csv") as rows:
        minutes = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(rows)]
    windows, stopped = read_log(f"{args.dir}/agent.log")
    requests = [json.loads(line) for line in open(f"{args.dir}/receiver.jsonl")]
    try:
        load = json.load(open(f"{args.dir}/load.json"))
    except (OSError, json.JSONDecodeError):
        load = {}

    failures = []

    def check(ok, what):
        if not ok:
            failures.append(what)
        return "ok" if ok else "FAILED"

    profiled = "the load's cgroup only" if args.scope == "load" else "the whole host"
    lines = [f"Soak of agent {args.commit}, {args.minutes} min, profiling {profiled} (scripts/soak.sh)", ""]
    warm = next((m for m in minutes if m["elapsed_s"] >= args.warmup), minutes[0])
    last = minutes[-1]
    during = [m for m in minutes if m["elapsed_s"] >= warm["elapsed_s"]]
    for key, name in (("rss_kib", "RSS (KiB)"), ("fds", "open fds")):
        growth = last[key] / warm[key] - 1 if warm[key] else 0.0
        peak = max(m[key] for m in during)
        verdict = check(growth <= 0.10, f"{name} grew {growth:.1%} after the warm-up")
        lines.append(
            f"- {name}: {warm[key]:.0f} at {warm['elapsed_s']:.0f} s, {last[key]:.0f} at the end "
            f"({growth:+.1%}), peak after warm-up {peak:.0f}: {verdict}"
        )
    if "rss_anon_kib" in warm:
        # Not checked, but says where RSS went: the heap, or file pages
        # (the binary's and libraries', which the host's page cache
        # pressure evicts and the agent faults back in).
        for key, name in (("rss_anon_kib", "anonymous"), ("rss_file_kib", "file-backed")):
            lo = min(m[key] for m in during)
            hi = max(m[key] for m in during)
            lines.append(
                f"  - of which {name} (KiB): {warm[key]:.0f} → {last[key]:.0f}, range after warm-up {lo:.0f}–{hi:.0f}"
            )
    wall = last["elapsed_s"] - minutes[0]["elapsed_s"]
    cpu = last["cpu_s"] - minutes[0]["cpu_s"]
    lines.append(f"- CPU: {cpu:.1f} s over {wall:.0f} s = {cpu / wall:.4f} CPU s per wall s")

    taken = sum(w["samples"] for w in windows)
    in_profiles = sum(w["in_profiles"] for w in windows)
    lost = sum(w["lost"] for w in windows)
    filtered = sum(w.get("filtered", 0) for w in windows)
    # Idle CPUs' samples are counted apart from profiles (from 2026-12-03).
    idle = sum(w.get("idle", 0) for w in windows)
    unbalanced = [
        w for w in windows if w["in_profiles"] + w.get("idle", 0) + w["lost"] + w.get("filtered", 0) != w["samples"]
    ]
    accepted = [r for r in requests if r.get("status") == 200]
    received = sum(r["samples"] for r in accepted)
    dropped = int(last["samples_dropped"])
    profiles = sum(w["profiles"] for w in windows)
    failed = int(last["profiles_failed"])
    statuses = {}
    for request in requests:
        if "status" in request:
            statuses[request["status"]] = statuses.get(request["status"], 0) + 1
    outages = sum(1 for r in requests if r.get("event") == "down")
    resets = sum(1 for r in requests if r.get("event") == "reset")

    ok = stopped is not None and stopped["samples"] == taken
    verdict = check(ok, "the windows do not add up to the stopped line")
    lines.append(
        f"- windows: {len(windows)}; samples taken {taken} (stopped line: "
        f"{stopped['samples'] if stopped else 'missing'}): {verdict}"
    )
    verdict = check(not unbalanced, f"{len(unbalanced)} windows do not balance")
    lines.append(
        f"- per window, taken = in profiles + idle + lost + filtered: {len(windows) - len(unbalanced)} of "
        f"{len(windows)} ({in_profiles} + {idle} + {lost} + {filtered}): {verdict}"
    )
    verdict = check(received + dropped == in_profiles, "samples in profiles were neither delivered nor dropped")
    lines.append(
        f"- samples in profiles {in_profiles} = delivered {received} + counted dropped {dropped}: {verdict}"
    )
    verdict = check(len(accepted) + failed == profiles, "profiles were neither delivered nor failed")
    lines.append(
        f"- profiles of all windows {profiles} = delivered {len(accepted)} + counted failed "
        f"(evicted or refused) {failed}: {verdict}"
    )
    summary = stopped.get("summary", "") if stopped else ""
    left = re.search(r"windows_spooled: (\d+)", summary)
    verdict = check(left is not None and left.group(1) == "0", f"windows left in the spool: {summary}")
    lines.append(f"- spool empty at exit: {verdict}")
    peak_spool = max(m["spool_bytes"] for m in minutes)
    evictions = int(last["spool_evictions"])
    if outages:
        verdict = check(evictions > 0, "the receiver went down but the spool never evicted")
    else:
        verdict = "not checked (the receiver never went down)"
    lines.append(
        f"- receiver: {statuses.get(200, 0)} accepted, {statuses.get(429, 0)} answered 429, "
        f"{statuses.get(503, 0)} answered 503, {statuses.get(400, 0)} invalid, down {outages} times "
        f"(kept-alive connections reset {resets} times)"
    )
    lines.append(
        f"- spool: peak {peak_spool / 1024:.0f} KiB (sampled each minute), {evictions} windows evicted: {verdict}"
    )
    check(statuses.get(400, 0) == 0, "the receiver got profiles it could not read")
    if load:
        lines.append(
            f"- load: {load.get('processes', 0)} processes, {load.get('threads', 0)} threads, "
            f"{load.get('storms', 0)} exec storms of {load.get('storm_execs', 0)} execs in all"
        )
    lines.append("")
    lines.append("FAILED: " + "; ".join(failures) if failures else "all checks passed")
    text = "\n".join(lines)
    print(text)
    with open(f"{args.dir}/summary.md", "w") as out:
        out.write(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
