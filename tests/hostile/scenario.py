"""One attack run: legit traffic and probes around an attack window, then the contract checked as a whole.

    run = hostile.begin()                 # RSS sampler, legit gRPC + Bolt load, warm-up (both must work)
    with run.attack():                    # t0 .. t1: CPU, log offsets, provider-record offset
        ... the attacker ...
    run.settle()                          # RSS release (<= 5 s), loads stopped (calls in flight waited for)
    run.expect_legit(); run.expect_rss(); run.expect(cond, "what the contract says")
    run.verdict()                         # one AssertionError listing every broken promise + measurements

Failures are collected rather than raised one by one, so a single run reports everything that went wrong
(the "before" column of issue 10).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.hostile.attacks import MultiConnResult
from tests.hostile.h2attack import ENHANCE_YOUR_CALM
from tests.hostile.legit import BoltLoad, GrpcLoad, LoadStats
from tests.hostile.probes import MIB, RssSampler, cpu_seconds, fd_count, log_errors, parse_lines, rss_bytes
from tests.hostile.sites import Sites

RSS_PEAK_MAX = 64 * MIB  # issue 10, "Prove it": RSS peak growth during the attack
RSS_LEFT_MAX = 16 * MIB  # ... and what may be left after the attacker leaves
RSS_RELEASE_WAIT = 5.0  # seconds after the attack ends before "left" is judged
LEGIT_MIN_OK = 0.99
LEGIT_TAIL = 1.0  # calls started up to this long after the attack ends count too (the aftermath)


class HarnessError(RuntimeError):
    """The harness could not set the scene (e.g. legit calls failed before any attack): not a verdict."""


@dataclass
class Window:
    t0: float = 0.0
    t1: float = 0.0
    cpu0: dict[str, float] = field(default_factory=dict)
    cpu1: dict[str, float] = field(default_factory=dict)
    log0: dict[str, int] = field(default_factory=dict)
    log1: dict[str, int] = field(default_factory=dict)
    record0: int = 0
    fds0: dict[str, int | None] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0


class Run:
    def __init__(
        self,
        sites: Sites,
        node: str,
        name: str,
        *,
        grpc_rate: float = 20.0,
        bolt_rate: int = 10,
        deadline: float = 2.0,
        fresh_rate: float = 0.0,
        bolt: bool = True,
    ) -> None:
        self.sites = sites
        self.name = name
        self.grpc = GrpcLoad(sites.triple_target, rate=grpc_rate, deadline=deadline, prefix=f"legit-{name}")
        self.fresh = (
            GrpcLoad(
                sites.triple_target, rate=fresh_rate, deadline=deadline, prefix=f"fresh-{name}",
                fresh_channel_per_call=True,
            )
            if fresh_rate
            else None
        )
        self.bolt = BoltLoad(node, sites.bolt_target, rate=bolt_rate, timeout_ms=int(deadline * 1000)) if bolt else None
        self.rss = RssSampler({"GW-A": sites.a.pid, "GW-B": sites.b.pid})
        self.window = Window()
        self.failures: list[str] = []
        self.facts: dict[str, Any] = {}
        self.rss_after: dict[str, int] = {}
        self._settled = False
        self._started = False

    # --- the scene ---------------------------------------------------------------------------------------
    def start(self, warmup_timeout: float = 20.0) -> Run:
        self._started = True
        self.rss.start()
        self.grpc.start()
        if self.bolt is not None:
            self.bolt.start()
        deadline = time.monotonic() + warmup_timeout
        while time.monotonic() < deadline:
            grpc_ok = self.grpc.ok_count() >= 5
            bolt_ok = self.bolt is None or self.bolt.ok_count() >= 3
            if grpc_ok and bolt_ok:
                break
            time.sleep(0.05)
        else:
            raise HarnessError(
                f"legit traffic did not flow before the attack: {self.grpc.stats(0, time.monotonic())}; "
                + (
                    f"{self.bolt.stats(0, time.monotonic())} stderr {self.bolt.stderr_tail[-5:]}"
                    if self.bolt is not None
                    else ""
                )
                + f"\nGW-B log tail:\n{self.sites.b.log_text()[-3000:]}"
            )
        if self.fresh is not None:
            self.fresh.start()
        time.sleep(0.5)  # RSS baseline: at least a few samples with legit traffic flowing
        return self

    @contextlib.contextmanager
    def attack(self) -> Iterator[Window]:
        w = self.window
        w.t0 = time.monotonic()
        w.cpu0 = self._cpu()
        w.log0 = {"GW-A": self.sites.a.log_size(), "GW-B": self.sites.b.log_size()}
        w.record0 = self.sites.record_size()
        w.fds0 = {"GW-A": fd_count(self.sites.a.pid), "GW-B": fd_count(self.sites.b.pid)}
        try:
            yield w
        finally:
            w.t1 = time.monotonic()
            w.cpu1 = self._cpu()
            w.log1 = {"GW-A": self.sites.a.log_size(), "GW-B": self.sites.b.log_size()}

    def _cpu(self) -> dict[str, float]:
        out = {}
        for name, gw in (("GW-A", self.sites.a), ("GW-B", self.sites.b)):
            value = cpu_seconds(gw.pid)
            out[name] = value if value is not None else float("nan")
        return out

    def settle(self, release_wait: float = RSS_RELEASE_WAIT) -> None:
        """Wait (at most `release_wait`) for RSS to come back near the baseline, then stop the legit load."""
        if self._settled:
            return
        self._settled = True
        w = self.window
        end = (w.t1 or time.monotonic()) + release_wait
        while time.monotonic() < end:
            if all(self._left(name) <= RSS_LEFT_MAX for name in self.rss.pids):
                break
            time.sleep(0.1)
        for name, pid in self.rss.pids.items():
            value = rss_bytes(pid)
            self.rss_after[name] = value if value is not None else 0
            self.facts[f"open fds {name} before / after"] = f"{w.fds0.get(name)} / {fd_count(pid)}"
        tail_end = (w.t1 or time.monotonic()) + LEGIT_TAIL
        while time.monotonic() < tail_end:  # the aftermath window must have run before the loads stop
            time.sleep(0.05)
        self.stop_loads()

    def _left(self, name: str) -> int:
        series = self.rss.series[name]
        return self.rss.current(name) - series.baseline(self.window.t0)

    def stop_loads(self) -> None:
        for load in (self.fresh, self.grpc, self.bolt):
            if load is not None:
                load.stop()
        self.rss.stop()

    # --- measurements --------------------------------------------------------------------------------------
    def legit_stats(self, t0: float | None = None, t1: float | None = None) -> list[LoadStats]:
        w = self.window
        t0 = w.t0 if t0 is None else t0
        t1 = (w.t1 + LEGIT_TAIL) if t1 is None else t1
        out = [self.grpc.stats(t0, t1, "grpc")]
        if self.bolt is not None:
            out.append(self.bolt.stats(t0, t1, "bolt"))
        if self.fresh is not None:
            out.append(self.fresh.stats(t0, t1, "grpc-new-connection"))
        return out

    def rss_growth(self) -> dict[str, tuple[int, int, int]]:
        """name -> (baseline, peak growth during the attack, left after) in bytes."""
        w = self.window
        out = {}
        for name, series in self.rss.series.items():
            base = series.baseline(w.t0)
            peak = series.peak(w.t0, w.t1 + 0.5)
            after = self.rss_after.get(name, series.last())
            out[name] = (base, max(0, peak - base), after - base)
        return out

    def cpu_during(self) -> dict[str, float]:
        w = self.window
        return {name: w.cpu1.get(name, 0.0) - w.cpu0.get(name, 0.0) for name in w.cpu0}

    def log_lines(self, gateway: str) -> list[str]:
        gw = self.sites.a if gateway == "GW-A" else self.sites.b
        return gw.log_lines(self.window.log0[gateway], self.window.log1[gateway])

    def events(self, gateway: str, since_attack: bool = True) -> list[dict[str, Any]]:
        gw = self.sites.a if gateway == "GW-A" else self.sites.b
        return parse_lines(gw.log_lines(self.window.log0[gateway] if since_attack else 0))

    def provider_calls(self, prefix: str) -> list[dict[str, Any]]:
        """Provider records (start events) since the attack began whose x-attack-id starts with prefix."""
        return [
            r
            for r in self.sites.provider_records(self.window.record0)
            if r.get("ev") == "start" and str(r.get("id") or "").startswith(prefix)
        ]

    # --- the contract ------------------------------------------------------------------------------------
    def expect(self, condition: bool, message: str) -> bool:
        if not condition:
            self.failures.append(message)
        return condition

    def expect_legit(self, min_ok: float = LEGIT_MIN_OK, t0: float | None = None, t1: float | None = None) -> None:
        for stats in self.legit_stats(t0, t1):
            self.facts[f"legit {stats.name}"] = str(stats)
            self.expect(stats.calls > 0, f"legit {stats.name}: no call was started in the attack window")
            self.expect(
                stats.ok_ratio >= min_ok,
                f"legit {stats.name} calls during the attack: {100 * stats.ok_ratio:.1f}% OK < {100 * min_ok:.0f}% "
                f"({stats})",
            )
            self.expect(stats.hung == 0, f"legit {stats.name}: {stats.hung} call(s) hung past deadline + 1 s")

    def expect_rss(self, peak_max: int = RSS_PEAK_MAX, left_max: int = RSS_LEFT_MAX) -> None:
        for name, (base, peak, left) in self.rss_growth().items():
            self.facts[f"rss {name}"] = (
                f"baseline {base / MIB:.0f} MiB, peak +{peak / MIB:.1f} MiB, left +{left / MIB:.1f} MiB"
            )
            self.expect(
                peak <= peak_max,
                f"{name} RSS grew by {peak / MIB:.1f} MiB during the attack (max {peak_max / MIB:.0f})",
            )
            self.expect(
                left <= left_max,
                f"{name} RSS still +{left / MIB:.1f} MiB {RSS_RELEASE_WAIT:.0f} s after the attack "
                f"(max {left_max / MIB:.0f})",
            )

    def expect_healthy(self) -> None:
        for gw in (self.sites.a, self.sites.b):
            code = gw.process.returncode if gw.process else None
            self.expect(gw.alive(), f"{gw.name} is not running any more (exit {code})")
            bad = log_errors(gw.log_lines())
            self.expect(not bad, f"{gw.name} logged {len(bad)} traceback/exception line(s), first: {bad[:1]}")

    def note(self, key: str, value: Any) -> None:
        self.facts[key] = value

    def summary(self) -> str:
        cpu = self.cpu_during()
        lines = [f"attack window {self.window.seconds:.2f} s; GW CPU during it: "
                 + ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items())]
        lines += [f"{k}: {v}" for k, v in self.facts.items()]
        return "\n  ".join(lines)

    def verdict(self) -> None:
        self.settle()
        if "rss GW-A" not in self.facts:
            for name, (base, peak, left) in self.rss_growth().items():
                self.facts[f"rss {name}"] = (
                    f"baseline {base / MIB:.0f} MiB, peak +{peak / MIB:.1f} MiB, left +{left / MIB:.1f} MiB"
                )
        if not any(k.startswith("legit") for k in self.facts):
            for stats in self.legit_stats():
                self.facts[f"legit {stats.name}"] = str(stats)
        if self.failures:
            raise AssertionError(
                f"{len(self.failures)} broken promise(s):\n- " + "\n- ".join(self.failures)
                + f"\nmeasured:\n  {self.summary()}"
            )


DRAIN_S = 3.0  # attacks.flood / rapid_reset read this long for the close after they stop


def expect_calm_goaway(run: Run, result: MultiConnResult, what: str) -> None:
    """Every attacker connection got GOAWAY ENHANCE_YOUR_CALM and was then closed by the gateway."""
    run.note(f"{what} connections", result.describe())
    run.expect(bool(result.conns), f"{what}: the attacker could not open a single connection ({result.errors[:2]})")
    calm = [c for c in result.conns if c.end.goaway_code == ENHANCE_YOUR_CALM]
    closed = [c for c in result.conns if c.end.closed]
    run.expect(
        len(calm) == len(result.conns),
        f"{what}: {len(result.conns) - len(calm)} of {len(result.conns)} connection(s) got no GOAWAY "
        f"ENHANCE_YOUR_CALM (GOAWAY codes seen: {result.goaway_codes()}; "
        f"first: {result.conns[0].end if result.conns else '-'})",
    )
    run.expect(
        len(closed) == len(result.conns),
        f"{what}: {len(result.conns) - len(closed)} of {len(result.conns)} connection(s) were still open "
        f"{DRAIN_S:.0f} s after the attacker stopped (ends: {result.ends()})",
    )
