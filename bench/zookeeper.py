"""A real standalone ZooKeeper on loopback for the churn part (Debian package `zookeeper`, run with java).

Started with the tests' zoo.cfg and command line (tests/servers/zookeeper.py: no AdminServer, 4lw whitelist,
session timeouts 4-6 s), but through the benchmark's `Children`, so that it runs in its own
process group with PR_SET_PDEATHSIG and is stopped with everything else, even if the harness is killed.
Ready when `ruok` answers `imok`; a port taken meanwhile is retried on another free port.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench.processes import Child, Children, free_ports

# Built as the tests build it (tests/servers/zookeeper.py): one zoo.cfg, one command line, one probe.
from tests.servers.zookeeper import ZOOKEEPER_JAR, four_letter_word, server_argv, write_config


class ZooKeeperUnavailable(Exception):
    """ZooKeeper cannot be run here (no java, no jar, no kazoo) or did not start; the message says why."""


@dataclass
class ZooKeeper:
    child: Child
    port: int
    startup_s: float

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def missing() -> str | None:
    """Why ZooKeeper cannot be run here, or None."""
    if shutil.which("java") is None:
        return "java is not installed (needed to run ZooKeeper; scripts/setup.sh --test installs it)"
    if not ZOOKEEPER_JAR.is_file():
        return f"{ZOOKEEPER_JAR} is missing (Debian package `zookeeper`; scripts/setup.sh --test installs it)"
    try:
        import kazoo  # noqa: F401
    except ImportError:
        return "kazoo is not installed in .venv (pip install kazoo)"
    return None


def start(children: Children, directory: Path, timeout_s: float = 30.0, attempts: int = 3) -> ZooKeeper:
    why = missing()
    if why:
        raise ZooKeeperUnavailable(why)
    java = shutil.which("java")
    assert java is not None
    errors = []
    for attempt in range(attempts):
        (port,) = free_ports(1)
        run_dir = directory / f"zookeeper-{attempt}"
        argv = server_argv(java, write_config(run_dir, port))
        started = time.monotonic()
        child = children.start("zookeeper", argv, cwd=run_dir, log=run_dir / "zookeeper.log")
        deadline = started + timeout_s
        while time.monotonic() < deadline and child.alive():
            if four_letter_word("127.0.0.1", port) == "imok":
                return ZooKeeper(child, port, round(time.monotonic() - started, 2))
            time.sleep(0.05)
        state = "exited" if not child.alive() else f"gave no imok within {timeout_s:.0f}s"
        errors.append(f"attempt {attempt + 1} (port {port}): {state}; log:\n{child.log_tail(10)}")
        children.stop(child)
    raise ZooKeeperUnavailable("could not start ZooKeeper:\n" + "\n".join(errors))
