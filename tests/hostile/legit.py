"""Legit traffic that keeps flowing while an attack runs, and what happened to each call.

- `GrpcLoad`: a grpcio client on its own channel calling echo through GW-B's local triple port at a fixed
  rate (default 20/s), 2 s deadline, a unique `x-attack-id` per call ("<prefix>-<n>") so the provider's
  record can be matched with the client's view. Calls are started on schedule (futures), not one after
  another, so a stalled gateway shows up as failed or late calls, not as a lower rate.
- `BoltLoad`: tests/peers/bolt_load_client.js (sofa-rpc-node) at a fixed rate (default 10/s) through GW-B's
  local Bolt port.
- `GrpcLoad(fresh_channel_per_call=True)`: a new grpcio channel (a new TCP connection) per call: can a new
  caller get in?

Each call is a `CallResult` (start on time.monotonic(), latency, ok, error); `LoadStats` summarises the
calls started in a window.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from interlink.demo.client import CHANNEL_OPTIONS
from interlink.demo.echo import load
from tests.e2e.topology import ALLOWED_APP

PEERS = Path(__file__).resolve().parents[1] / "peers"
BOLT_LOAD_JS = PEERS / "bolt_load_client.js"
HANG_SLACK = 1.0  # a call may take its deadline plus this much, never more
# grpcio shares subchannels (TCP connections) between channels with the same target and arguments unless
# told not to: every channel of the harness gets a connection of its own.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
OPTIONS = tuple(CHANNEL_OPTIONS) + OWN_CONNECTION


@dataclass
class CallResult:
    ident: str
    start: float  # time.monotonic() when the call was started
    deadline: float  # seconds
    latency: float | None = None  # None while unfinished
    ok: bool = False
    error: str | None = None
    code: str | None = None

    @property
    def end(self) -> float | None:
        return None if self.latency is None else self.start + self.latency


@dataclass
class LoadStats:
    name: str
    calls: int
    ok: int
    failed: int
    hung: int  # unfinished past deadline + slack, or finished later than that
    errors: dict[str, int]
    p50_ms: float | None
    max_ms: float | None
    first_failures: list[str] = field(default_factory=list)

    @property
    def ok_ratio(self) -> float:
        return self.ok / self.calls if self.calls else 1.0

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.ok}/{self.calls} ok ({100 * self.ok_ratio:.1f}%), {self.hung} hung, "
            f"p50 {self.p50_ms} ms, max {self.max_ms} ms, errors {self.errors}"
            + (f", first failures {self.first_failures}" if self.first_failures else "")
        )


def summarise(name: str, results: list[CallResult], t0: float, t1: float, now: float) -> LoadStats:
    chosen = [r for r in results if t0 <= r.start <= t1]
    latencies = sorted(r.latency for r in chosen if r.latency is not None)
    hung = 0
    errors: dict[str, int] = {}
    failures = []
    for r in chosen:
        limit = r.deadline + HANG_SLACK
        if (r.latency is None and now - r.start > limit) or (r.latency is not None and r.latency > limit):
            hung += 1
        if not r.ok and r.latency is not None:
            key = r.code or r.error or "error"
            errors[key] = errors.get(key, 0) + 1
            if len(failures) < 3:
                failures.append(f"{r.ident}: {r.code} {r.error}"[:300])
    ok = sum(1 for r in chosen if r.ok)
    return LoadStats(
        name=name,
        calls=len(chosen),
        ok=ok,
        failed=len(chosen) - ok,
        hung=hung,
        errors=errors,
        p50_ms=round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        max_ms=round(1000 * latencies[-1], 1) if latencies else None,
        first_failures=failures,
    )


class GrpcLoad:
    def __init__(
        self,
        target: str,
        *,
        rate: float = 20.0,
        deadline: float = 2.0,
        prefix: str = "legit-grpc",
        method: str = "echo",
        fresh_channel_per_call: bool = False,
    ) -> None:
        self.target = target
        self.rate = rate
        self.deadline = deadline
        self.prefix = prefix
        self.method = method
        self.fresh = fresh_channel_per_call
        self.results: list[CallResult] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"grpc-load-{prefix}", daemon=True)
        self.pb2, self._pb2_grpc = load()
        self._channel: grpc.Channel | None = None
        self._stub = None

    def start(self) -> GrpcLoad:
        if not self.fresh:
            self._channel = grpc.insecure_channel(self.target, options=OPTIONS)
            self._stub = self._pb2_grpc.EchoServiceStub(self._channel)
        self._thread.start()
        return self

    def _metadata(self, ident: str) -> tuple[tuple[str, str], ...]:
        return (("tri-consumer-appname", ALLOWED_APP), ("x-attack-id", ident))

    def _call(self, n: int) -> None:
        ident = f"{self.prefix}-{n}"
        result = CallResult(ident=ident, start=time.monotonic(), deadline=self.deadline)
        with self._lock:
            self.results.append(result)
        request = self.pb2.EchoRequest(message=ident)
        if self.fresh:  # a new channel, so a new TCP connection, per call: blocking, in a thread of its own
            threading.Thread(target=self._fresh_call, args=(result, request), daemon=True).start()
            return
        future = self._stub.echo.future(request, timeout=self.deadline, metadata=self._metadata(ident))
        future.add_done_callback(lambda f: self._settle(result, f.result))

    def _fresh_call(self, result: CallResult, request: Any) -> None:
        channel = grpc.insecure_channel(self.target, options=OPTIONS)
        try:
            stub = self._pb2_grpc.EchoServiceStub(channel)
            self._settle(
                result, lambda: stub.echo(request, timeout=self.deadline, metadata=self._metadata(result.ident))
            )
        finally:
            channel.close()

    @staticmethod
    def _settle(result: CallResult, outcome: Any) -> None:
        try:
            reply = outcome()
            result.ok = reply.message == result.ident
            if not result.ok:
                result.error = f"wrong reply {reply.message[:80]!r}"
        except grpc.RpcError as exc:
            result.code = exc.code().name if exc.code() else "UNKNOWN"
            result.error = (exc.details() or "")[:200]
        except Exception as exc:  # noqa: BLE001 - recorded, never raised into grpc's thread
            result.error = f"{type(exc).__name__}: {exc}"[:200]
        result.latency = time.monotonic() - result.start

    def _run(self) -> None:
        t0 = time.monotonic()
        n = 0
        interval = 1.0 / self.rate
        while not self._stop.is_set():
            self._call(n)
            n += 1
            wait = t0 + n * interval - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break

    def snapshot(self) -> list[CallResult]:
        with self._lock:
            return list(self.results)

    def ok_count(self) -> int:
        return sum(1 for r in self.snapshot() if r.ok)

    def stop(self) -> None:
        """Stop starting calls; wait for those in flight (deadline + slack at most)."""
        self._stop.set()
        self._thread.join(5)
        limit = time.monotonic() + self.deadline + HANG_SLACK
        while time.monotonic() < limit and any(r.latency is None for r in self.snapshot()):
            time.sleep(0.02)
        if self._channel is not None:
            self._channel.close()

    def stats(self, t0: float, t1: float, name: str | None = None) -> LoadStats:
        return summarise(name or self.prefix, self.snapshot(), t0, t1, time.monotonic())


class BoltLoad:
    """tests/peers/bolt_load_client.js as a child process; its JSON lines become CallResults."""

    def __init__(
        self, node: str, target: str, *, rate: int = 10, timeout_ms: int = 2000, prefix: str = "legit-bolt"
    ) -> None:
        self.argv = [
            node, str(BOLT_LOAD_JS), "--target", target, "--rate", str(rate), "--timeout-ms", str(timeout_ms),
            "--prefix", prefix,
        ]
        self.deadline = timeout_ms / 1000.0
        self.prefix = prefix
        self.results: dict[int, CallResult] = {}
        self.done: dict[str, Any] | None = None
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self.stderr_tail: list[str] = []
        # Node reports wall-clock start times; map them to time.monotonic() with one offset.
        self._mono_minus_wall = time.monotonic() - time.time()

    def start(self) -> BoltLoad:
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, name="bolt-load-reader", daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_stderr, name="bolt-load-stderr", daemon=True).start()
        return self

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for text in self.process.stderr:
            self.stderr_tail.append(text.rstrip())
            del self.stderr_tail[:-20]

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for text in self.process.stdout:
            try:
                item = json.loads(text)
            except json.JSONDecodeError:
                continue
            if item.get("ready"):
                self.ready.set()
            elif item.get("done"):
                self.done = item
            elif "n" in item:
                start = item["start_ms"] / 1000.0 + self._mono_minus_wall
                error = item.get("error") or {}
                result = CallResult(
                    ident=f"{self.prefix}-{item['n']}",
                    start=start,
                    deadline=self.deadline,
                    latency=item["ms"] / 1000.0,
                    ok=bool(item["ok"]),
                    error=(error.get("message") or "")[:200] if error else None,
                    code=(error.get("name") or error.get("code")) if error else None,
                )
                with self._lock:
                    self.results[item["n"]] = result

    def snapshot(self) -> list[CallResult]:
        with self._lock:
            return list(self.results.values())

    def ok_count(self) -> int:
        return sum(1 for r in self.snapshot() if r.ok)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.process.stdin.close()  # type: ignore[union-attr]
            except OSError:
                pass
            self.process.terminate()
            try:
                self.process.wait(self.deadline + HANG_SLACK + 3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(3)

    def stats(self, t0: float, t1: float, name: str | None = None) -> LoadStats:
        stats = summarise(name or self.prefix, self.snapshot(), t0, t1, time.monotonic())
        if self.done is not None and self.done.get("outstanding"):
            stats.hung += int(self.done["outstanding"])  # never answered, not even after timeout + 1 s
        return stats
