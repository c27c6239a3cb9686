"""The load generator: h2load (Debian nghttp2-client) sending gRPC unary calls as HTTP/2 POSTs.

h2load knows nothing of gRPC: it POSTs a file (a gRPC length-prefixed EchoRequest) with the gRPC headers
and counts HTTP 2xx as success. That gRPC status 0 really arrives in the trailers is proven separately by
the sanity pass (bench/sanity.py, a grpcio client) on every path before it is measured.
"""

from __future__ import annotations

import re
import resource
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

METHOD_PATH = "/com.example.EchoService/echo"
REPLY_SIZE_HEADER = "bench-reply-size"  # metadata that tells the canned provider which reply to send


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def echo_message(size: int) -> bytes:
    """One gRPC message (5-byte prefix, uncompressed) holding EchoRequest/EchoReply{message = 'x' * size}.

    Both messages have the same shape (field 1, string), so the same bytes serve as request and reply."""
    body = b"\x0a" + _varint(size) + b"x" * size
    return b"\x00" + struct.pack(">I", len(body)) + body


def h2load_binary() -> str:
    path = shutil.which("h2load")
    if not path:
        raise RuntimeError("h2load not found: run bench/run.sh (it installs Debian's nghttp2-client)")
    return path


def h2load_version() -> str:
    out = subprocess.run([h2load_binary(), "--version"], capture_output=True, text=True)
    return out.stdout.strip()


@dataclass
class LoadResult:
    seconds: float  # measured duration as h2load reports it
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    latencies_us: list[int] = field(repr=False, default_factory=list)  # successful calls only
    client_cpu_s: float = 0.0  # CPU used by h2load itself
    raw: str = field(repr=False, default="")

    @property
    def ok(self) -> int:
        """Calls that succeeded with HTTP 2xx."""
        return min(self.succeeded, self.status_2xx)

    @property
    def errors(self) -> int:
        """Finished calls that were not a 2xx success (calls still in flight at the end are not counted)."""
        return self.done - self.ok

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float | None:
        if not self.latencies_us:
            return None
        data = self.latencies_us
        return data[min(len(data) - 1, int(q / 100 * len(data)))] / 1000


def run_h2load(
    port: int,
    *,
    size: int,
    concurrency: int,
    connections: int,
    duration_s: float,
    request_file: Path,
    log_file: Path,
    rps: int | None = None,
) -> LoadResult:
    """Closed loop: `concurrency` calls in flight over `connections` HTTP/2 connections for `duration_s`;
    with `rps`, at most that many calls a second in all (so that two paths do the same work per second and
    their CPU per call compares without the batching a higher rate brings)."""
    connections = max(1, min(connections, concurrency))
    streams = -(-concurrency // connections)  # ceil
    log_file.unlink(missing_ok=True)  # h2load appends to an existing log
    argv = [
        h2load_binary(),
        "--threads=1",
        f"--clients={connections}",
        f"--max-concurrent-streams={streams}",
        *([f"--rps={max(1, rps // connections)}"] if rps else []),
        f"--duration={int(duration_s * 1000)}ms",
        f"--data={request_file}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--header={REPLY_SIZE_HEADER}: {size}",
        f"--log-file={log_file}",
        f"http://127.0.0.1:{port}{METHOD_PATH}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"h2load did not finish within {duration_s + 60:.0f}s") from exc
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse_h2load(proc.stdout, fallback_seconds=time.monotonic() - started)
    if proc.returncode != 0 and result.done == 0:
        raise RuntimeError(f"h2load failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    result.client_cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.latencies_us = read_latencies(log_file)
    return result


_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s)")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx")


def parse_h2load(text: str, fallback_seconds: float = 0.0) -> LoadResult:
    finished = _FINISHED.search(text)
    requests = _REQUESTS.search(text)
    status = _STATUS.search(text)
    if not (requests and status):
        raise RuntimeError(f"unexpected h2load output:\n{text[-1500:]}")
    if finished:
        scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[finished.group(2)]
        seconds = float(finished.group(1)) * scale
    else:
        seconds = fallback_seconds
    _total, _started, done, succeeded, failed, errored, timeout = map(int, requests.groups())
    return LoadResult(seconds, done, succeeded, failed, errored, timeout, int(status.group(1)), raw=text)


def read_latencies(log_file: Path) -> list[int]:
    """Sorted latencies (µs) of the calls answered 2xx, from h2load's per-request log."""
    out = []
    try:
        with open(log_file) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].startswith("2"):
                    out.append(int(parts[2]))
    except OSError:
        return []
    out.sort()
    return out
