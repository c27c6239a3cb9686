"""What one gateway log line costs: a micro benchmark of interlink's logging as `interlink run` configures it.

    .venv/bin/python -m bench.log_cost [--lines 20000] [--repeat 7] [--out FILE]

Times, with timeit, the access line a call writes at its end (interlink/gateway/call.py `_finish`:
`access_log.info("call", status=..., ms=..., **log_fields)`, 12 keys once level and ts are added) and the audit
line (`audit_log.info("audit", decision=..., reason=None, **fields)`), through `interlink.logs.configure()` and
`logs.CallLog` loggers, the access line through a module-level `structlog.get_logger(...)` proxy (what other
lines use, and the call lines did before CallLog), and both call lines held and written 16 at a time, as
`interlink run` writes a batch's lines (logs.hold_call_lines). The lines go to a file opened the way
a gateway's stderr is when the benchmark or a supervisor redirects it (a regular file; `--out /dev/null` to leave
the disk out). Prints the best of `--repeat` runs in µs per line, and one line of each kind.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import timeit

import structlog

from interlink import logs

# A call that crossed the peer link into GW-A (Bolt, one of the bench's calls): the fields `GatewayCall` collects.
ACCESS_FIELDS = {
    "site": "site-a",
    "ingress": "peer-bolt",
    "peer": "site-b",
    "service": "com.example.EchoService:1.0",
    "method": "echo",
    "caller_app": "bench-app",
    "upstream": "providers of com.example.EchoService:1.0",
}
AUDIT_FIELDS = {"site": "site-a", "ingress": "peer-bolt", "peer": "site-b", "service": "com.example.EchoService:1.0",
                "method": "echo", "caller_app": "bench-app"}  # fmt: skip


BATCH = 16  # lines per batch when held: access and audit lines of 8 calls (GW-A's batches in bench/run.sh at c=16)


def measure(lines: int, repeat: int, out: str | None) -> dict[str, float]:
    """µs per line, best of `repeat`, for the access and the audit line, and for both held (as `interlink run`
    writes them: logs.hold_call_lines) and written BATCH at a time."""
    path = out or os.path.join(tempfile.mkdtemp(prefix="interlink-log-cost-"), "gateway.log")
    # A gateway's stderr redirected to a file: a line-buffered text stream over a buffered binary file.
    stream = open(path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        logs.configure("info", stream=stream)
        access_log, audit_log = logs.CallLog("interlink.access"), logs.CallLog("interlink.audit")
        proxy = structlog.get_logger("interlink.access")  # what the call lines went through before CallLog
        fields = dict(ACCESS_FIELDS)

        def access() -> None:
            access_log.line("call", {"status": "OK", "ms": 0.412}, fields)

        def audit() -> None:
            audit_log.line("audit", {"decision": "allow", "reason": None}, AUDIT_FIELDS)

        def access_via_structlog() -> None:
            proxy.info("call", status="OK", ms=0.412, **fields)

        def batch_held() -> None:  # `interlink run`: a batch's lines are held and written when it ends
            for _ in range(BATCH // 2):
                access()
                audit()
            logs.write_held()

        result = {}
        for name, fn, per in (("access line", access, 1), ("audit line", audit, 1),
                              ("access line via structlog", access_via_structlog, 1),
                              (f"both lines held, {BATCH} a write", batch_held, BATCH)):  # fmt: skip
            logs.hold_call_lines(fn is batch_held)
            fn()  # first use: the proxy caches its logger
            runs = timeit.repeat(fn, number=lines // per, repeat=repeat)
            result[name] = min(runs) / (lines // per * per) * 1e6
        return result
    finally:
        logs.hold_call_lines(False)
        stream.close()
        structlog.reset_defaults()
        if out is None:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))


def sample_lines() -> list[str]:
    """One access and one audit line as the configured renderer writes them."""

    class Capture:
        def __init__(self) -> None:
            self.text: list[str] = []

        def write(self, text: str) -> int:
            self.text.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    capture = Capture()
    logs.configure("info", stream=capture)
    try:
        structlog.get_logger("interlink.access").info("call", status="OK", ms=0.412, **ACCESS_FIELDS)
        structlog.get_logger("interlink.audit").info("audit", decision="allow", reason=None, **AUDIT_FIELDS)
    finally:
        structlog.reset_defaults()
    return [t.rstrip("\n") for t in capture.text]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.log_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=20000, help="lines per timed run (20000)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs; the best is shown (7)")
    p.add_argument("--out", help="write the lines here (e.g. /dev/null) instead of a temp file")
    args = p.parse_args(argv)
    for line in sample_lines():
        print(line)
    result = measure(args.lines, args.repeat, args.out)
    where = args.out or "a regular file"
    print(f"python {sys.version.split()[0]}, structlog {structlog.__version__}, lines to {where}:")
    for name, us in result.items():
        print(f"  {name + ':':<32} {us:6.2f} µs per line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
