"""Fixtures of the hostile tests (issue 10, "Prove it"): real gateways per test, legit traffic, probes.

* ``hostile`` -- a fresh two-site topology (tests/hostile/sites.py) for one test, with the test's limits:
  quick tests (the default run) get ``QUICK_LIMITS`` (short timeouts, so the set runs in minutes); tests
  marked ``slow`` get the gateway's defaults (no ``limits:`` keys). ``@pytest.mark.limits(key=value, ...)``
  adds or overrides keys, ``@pytest.mark.nofile(N)`` starts GW-B with RLIMIT_NOFILE soft = hard = N.
  ``hostile.begin(...)`` returns a started ``scenario.Run``; ``hostile.limit_s(key)`` is the limit the test
  asked for, in seconds (what it expects, whether or not the gateway was given it).
* After the run, ``pytest`` prints a "hostile" summary: one block per test with what was measured; with
  ``HOSTILE_REPORT=FILE`` the same goes to FILE as JSON lines.

Environment: ``HOSTILE_GATEWAY_TREE`` / ``HOSTILE_LIMITS=off`` (see sites.py) run the same tests against
another tree of the code, e.g. the commit the issue measured.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.topology import Certs
from tests.hostile.scenario import Run
from tests.hostile.sites import Sites, start_sites

# Short timeouts for the quick set (site-file units: ms, bytes).
QUICK_LIMITS: dict[str, int] = {
    "preface_timeout_ms": 1000,
    "idle_timeout_ms": 2000,
    "partial_frame_timeout_ms": 1500,
    "write_timeout_ms": 2000,
}
# The gateway's defaults (issue 10 / the brief), used to compute what a slow test expects.
DEFAULT_LIMITS: dict[str, int] = {
    "max_connections": 10_000,
    "max_connections_per_source": 1_000,
    "handshake_timeout_ms": 5000,
    "preface_timeout_ms": 5000,
    "idle_timeout_ms": 20000,
    "peer_idle_timeout_ms": 300000,
    "partial_frame_timeout_ms": 10000,
    "write_timeout_ms": 20000,
    "max_concurrent_streams": 100,
    "initial_window_bytes": 65536,
    "connection_window_bytes": 1 << 20,
    "max_header_list_bytes": 65536,
    "premature_reset_streams": 500,
    "premature_reset_window_ms": 1000,
    "control_frame_burst": 1000,
    "control_frames_per_second": 100,
    "bolt_max_frame_bytes": 8 << 20,
    "bolt_max_pending": 1000,
    "connection_output_bytes": 1 << 20,
    "partial_frame_budget_bytes": 24 << 20,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "limits(**keys): site-file limits for the hostile test's gateways")
    config.addinivalue_line("markers", "nofile(n): RLIMIT_NOFILE of GW-B in a hostile test")


class Hostile:
    def __init__(self, sites: Sites, node: str, limits: dict[str, int], node_item: pytest.Item, slow: bool) -> None:
        self.sites = sites
        self.node = node
        self.limits = limits
        self.item = node_item
        self.slow = slow
        self.runs: list[Run] = []

    def limit(self, key: str) -> int:
        return int(self.limits.get(key, DEFAULT_LIMITS[key]))

    def limit_s(self, key: str) -> float:
        return self.limit(key) / 1000.0

    def begin(self, **kwargs: Any) -> Run:
        run = Run(self.sites, self.node, self.item.name.replace("[", "-").replace("]", ""), **kwargs)
        run.item = self.item  # type: ignore[attr-defined]
        self.runs.append(run)
        return run.start()

    def record(self) -> None:
        for run in self.runs:
            self.item.user_properties.append(
                ("hostile", {"summary": run.summary(), "failures": list(run.failures)})
            )


@pytest.fixture(scope="session")
def hostile_certs(tmp_path_factory) -> Certs:
    return Certs(tmp_path_factory.mktemp("hostile-certs"))


@pytest.fixture
def hostile(request, hostile_certs, bolt_peers, tmp_path) -> Iterator[Hostile]:
    slow = request.node.get_closest_marker("slow") is not None
    limits = {} if slow else dict(QUICK_LIMITS)
    marker = request.node.get_closest_marker("limits")
    if marker is not None:
        limits.update(marker.kwargs)
    nofile = request.node.get_closest_marker("nofile")
    sites = start_sites(
        tmp_path / "sites", hostile_certs, bolt_peers, limits=limits, b_nofile=nofile.args[0] if nofile else None
    )
    h = Hostile(sites, bolt_peers, limits, request.node, slow)
    try:
        yield h
    finally:
        for run in h.runs:
            run.stop_loads()
        sites.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    if call.when == "call":
        h = item.funcargs.get("hostile") if hasattr(item, "funcargs") else None
        if isinstance(h, Hostile):
            h.record()
    yield


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    blocks = []
    for outcome in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", None) != "call":
                continue
            for key, value in getattr(report, "user_properties", []):
                if key == "hostile":
                    blocks.append((report.nodeid, outcome, value))
    if not blocks:
        return
    terminalreporter.section("hostile: measured")
    path = os.environ.get("HOSTILE_REPORT")
    for nodeid, outcome, value in blocks:
        terminalreporter.write_line(f"{nodeid} {outcome.upper()}")
        terminalreporter.write_line(f"  {value['summary']}")
        for failure in value["failures"]:
            terminalreporter.write_line(f"  ! {failure[:400]}")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"test": nodeid, "outcome": outcome, **value}) + "\n")
