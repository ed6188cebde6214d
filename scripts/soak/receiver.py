#!/usr/bin/env python3
"""The soak's backend: a Pyroscope-style ingest endpoint on 127.0.0.1 that
misbehaves on a schedule.

Each cycle of --cycle seconds it accepts for the first quarter, answers 429
(with Retry-After) for a twelfth, 503 for a twelfth, closes its listening
socket for a quarter (connection refused, and connections kept alive from
before are reset: the agent spools) and accepts for
the last third, while the spool drains. After --ok-after seconds it only
accepts, so that the run can end with everything delivered.

Every request is one JSON line in --log: the time, the answer, and for an
accepted profile its samples (the first value of every pprof sample, read
with a small protobuf walker so that no packages are needed) and bytes. A
body that is not a gzipped pprof is answered 400 and logged as invalid.
"""

import argparse
import gzip
import json
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# (end of the phase as a fraction of the cycle, what the server does)
PHASES = [(0.25, "ok"), (1 / 3, "429"), (5 / 12, "503"), (2 / 3, "down"), (1.0, "ok")]


def phase(elapsed, cycle, ok_after):
    if elapsed >= ok_after:
        return "ok"
    position = (elapsed % cycle) / cycle
    for end, mode in PHASES:
        if position < end:
            return mode
    return "ok"


def varint(buf, i):
    value = shift = 0
    while True:
        if i >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i
        if shift > 63:
            raise ValueError("varint too long")


def fields(buf):
    """Yields (field number, wire type, value) of one protobuf message."""
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            length, i = varint(buf, i)
            if i + length > len(buf):
                raise ValueError("truncated field")
            value, i = buf[i : i + length], i + length
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


def sample_count(pprof):
    """The sum of every sample's first value (samples/count)."""
    total = 0
    for number, wire, value in fields(pprof):
        if number != 2 or wire != 2:  # Profile.sample
            continue
        for inner, inner_wire, item in fields(value):
            if inner != 2:  # Sample.value
                continue
            if inner_wire == 2:  # packed
                first, _ = varint(item, 0)
            else:
                first = item
            total += first
            break
    return total


class State:
    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.log = open(args.log, "a", buffering=1)

    def elapsed(self):
        return time.monotonic() - self.start

    def mode(self):
        return phase(self.elapsed(), self.args.cycle, self.args.ok_after)

    def record(self, **entry):
        entry["t"] = round(self.elapsed(), 3)
        with self.lock:
            self.log.write(json.dumps(entry) + "\n")


def handler(state):
    class Ingest(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            url = urllib.parse.urlparse(self.path)
            query = urllib.parse.parse_qs(url.query)
            name = query.get("name", [""])[0]
            mode = state.mode()
            if mode == "down":
                # A connection kept alive from before the outage: drop it, as
                # a backend that went away would, instead of answering.
                state.record(event="reset", name=name)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if url.path not in ("/ingest", "/pyroscope/ingest"):
                state.record(status=404, path=url.path)
                return self.reply(404, b"not found")
            if mode == "429":
                state.record(status=429, name=name)
                return self.reply(429, b"slow down", [("Retry-After", "5")])
            if mode == "503":
                state.record(status=503, name=name)
                return self.reply(503, b"unavailable")
            try:
                pprof = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
                samples = sample_count(pprof)
            except (OSError, ValueError, EOFError) as err:
                state.record(status=400, name=name, invalid=str(err))
                return self.reply(400, f"not a pprof: {err}".encode())
            state.record(
                status=200,
                name=name,
                start=query.get("from", [""])[0],
                samples=samples,
                bytes=len(body),
            )
            self.reply(200)

    return Ingest


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cycle", type=float, default=720.0)
    parser.add_argument("--ok-after", type=float, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    state = State(args)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    server = None
    while not stopping.is_set():
        mode = state.mode()
        if mode == "down" and server is not None:
            server.shutdown()
            server.server_close()
            server = None
            state.record(event="down")
        elif mode != "down" and server is None:
            ThreadingHTTPServer.allow_reuse_address = True
            ThreadingHTTPServer.daemon_threads = True
            server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(state))
            threading.Thread(target=server.serve_forever, daemon=True).start()
            state.record(event="up")
        stopping.wait(0.5)
    if server is not None:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
