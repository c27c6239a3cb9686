"""A real standalone ZooKeeper on loopback for the churn part (Debian package `zookeeper`, run with java).

Started the way tests/servers/zookeeper.py starts it (same zoo.cfg settings and JVM flags: no AdminServer,
4lw whitelist, session timeouts 4-6 s), but through the benchmark's `Children`, so that it runs in its own
process group with PR_SET_PDEATHSIG and is stopped with everything else, even if the harness is killed.
Ready when `ruok` answers `imok`; a port taken meanwhile is retried on another free port.
"""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench.processes import Child, Children, free_ports

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")  # its manifest Class-Path names the Debian deps
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"
JVM_FLAGS = ["-Xms16m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
MIN_SESSION_MS = 4000
MAX_SESSION_MS = 6000
PROBE_TIMEOUT = 0.5  # the port is bound before the database is loaded: a probe can hang


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


def four_letter_word(port: int, word: str = "ruok", timeout: float = PROBE_TIMEOUT) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(word.encode("ascii"))
            chunks = []
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError:
        return None
    return b"".join(chunks).decode("ascii", "replace")


def _write_config(directory: Path, port: int) -> Path:
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = directory / "zoo.cfg"
    config.write_text(
        "\n".join(
            [
                "tickTime=2000",
                f"dataDir={data}",
                f"clientPort={port}",
                "clientPortAddress=127.0.0.1",
                "maxClientCnxns=0",
                "admin.enableServer=false",
                "4lw.commands.whitelist=ruok,srvr,mntr,stat,cons",
                f"minSessionTimeout={MIN_SESSION_MS}",
                f"maxSessionTimeout={MAX_SESSION_MS}",
                "",
            ]
        )
    )
    return config


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
        config = _write_config(run_dir, port)
        argv = [java, *JVM_FLAGS, "-Dznode.container.checkIntervalMs=1000", "-cp", str(ZOOKEEPER_JAR), MAIN_CLASS,
                str(config)]  # fmt: skip
        started = time.monotonic()
        child = children.start("zookeeper", argv, cwd=run_dir, log=run_dir / "zookeeper.log")
        deadline = started + timeout_s
        while time.monotonic() < deadline and child.alive():
            if four_letter_word(port) == "imok":
                return ZooKeeper(child, port, round(time.monotonic() - started, 2))
            time.sleep(0.05)
        state = "exited" if not child.alive() else f"gave no imok within {timeout_s:.0f}s"
        errors.append(f"attempt {attempt + 1} (port {port}): {state}; log:\n{child.log_tail(10)}")
        children.stop(child)
    raise ZooKeeperUnavailable("could not start ZooKeeper:\n" + "\n".join(errors))
