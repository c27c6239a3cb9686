"""A real nats-server with JetStream on loopback for the broker tests (Debian package `nats-server`).

Fixtures:

* ``nats_server`` (function): one server of the test's own -> :class:`NatsServer` (``.url``, ``.port``,
  ``.kill()`` = SIGKILL, ``.restart()`` = same port and store directory, so JetStream data survives,
  ``.pause()`` / ``.resume()`` = SIGSTOP / SIGCONT, ``.stop()``). It starts in some tens of milliseconds.
* ``nats_servers`` (function): a factory ``start(config="", jetstream=True) -> NatsServer`` for tests that
  need several servers or other settings (``config`` is appended to the configuration file: ``max_payload``,
  ``authorization { ... }``...; ``jetstream=False``: a plain NATS server); every one is killed after it.

Settings: listens on 127.0.0.1 and a free port only; no monitoring port, no cluster, no leaf nodes; JetStream
with its store in the server's own temporary directory, memory store 64 MB, file store 1 GB (limits, not
reservations). Ready when the port accepts and the server's INFO arrives (saying JetStream is on, when it
is). Without nats-server the fixtures skip, or fail when ``CI=true`` (`tests.requires.missing`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import ports
from tests.requires import missing

__all__ = ["NatsServer", "nats_server", "nats_servers", "start_nats_server"]

NATS_SERVER = "nats-server"
STARTUP_TIMEOUT = 10.0
PROBE_TIMEOUT = 0.5

CONFIG = """\
listen: 127.0.0.1:{port}
server_name: test-{port}
{jetstream}
{extra}
"""
JETSTREAM = """\
jetstream {{
    store_dir: "{store}"
    max_memory_store: 64MB
    max_file_store: 1GB
}}"""


def _free_port() -> int:
    return ports.free_port()


def read_info(port: int, timeout: float = PROBE_TIMEOUT) -> dict | None:
    """The INFO a NATS server on 127.0.0.1:`port` sends first, or None (refused, closed, timed out, other)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


@dataclass
class NatsServer:
    """One nats-server process (running, paused or stopped) on 127.0.0.1:`port`."""

    binary: str
    port: int
    directory: Path
    process: subprocess.Popen
    startup_seconds: float
    jetstream: bool = True
    paused: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def store_dir(self) -> Path:
        return self.directory / "jetstream"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats-server.log"

    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Crash the server (SIGKILL); what JetStream wrote to its store survives for `restart`."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.paused = False

    def stop(self) -> None:
        """Shut the server down (SIGTERM, then SIGKILL after 5 s)."""
        if self.process.poll() is None:
            if self.paused:
                self.resume()
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.paused = False

    def restart(self) -> None:
        """Start the server again on the same port and store directory (killing it first if it runs)."""
        self.kill()
        self.process, self.startup_seconds = _launch(self.binary, self.directory, self.port, self.jetstream)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections and buffers bytes, nothing answers. Returns once
        the process is seen stopped (a signal takes effect asynchronously; on a loaded machine the server
        could otherwise still answer what is sent right after)."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _process_state(self.process.pid) not in ("T", "t", None):
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT after `pause`."""
        os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


def _process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (T: stopped), or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0]


def write_config(directory: Path, port: int, extra: str = "", jetstream: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "nats-server.conf"
    jetstream_block = JETSTREAM.format(store=directory / "jetstream") if jetstream else ""
    config.write_text(CONFIG.format(port=port, jetstream=jetstream_block, extra=extra))
    return config


def _launch(binary: str, directory: Path, port: int, jetstream: bool = True) -> tuple[subprocess.Popen, float]:
    """Run the server of `directory/nats-server.conf`; wait until its INFO arrives (with JetStream on)."""
    log_path = directory / "nats-server.log"
    started = time.monotonic()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [binary, "-c", str(directory / "nats-server.conf")],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=directory,
        )
    deadline = started + STARTUP_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        info = read_info(port)
        if info is not None and (info.get("jetstream") or not jetstream):
            return process, time.monotonic() - started
        time.sleep(0.01)
    if process.poll() is None:
        process.kill()
    process.wait()
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"nats-server sent no INFO (with JetStream: {jetstream}) within {STARTUP_TIMEOUT} s "
                       f"(exit {process.returncode}):\n{tail}")


def start_nats_server(binary: str, directory: Path, extra_config: str = "", *, jetstream: bool = True,
                      attempts: int = 3) -> NatsServer:
    """A server on a free loopback port (another port is tried if the one picked is taken meanwhile)."""
    errors = []
    for _ in range(attempts):
        port = _free_port()
        run_dir = directory / f"nats-{port}"
        write_config(run_dir, port, extra_config, jetstream)
        try:
            process, seconds = _launch(binary, run_dir, port, jetstream)
        except RuntimeError as exc:
            errors.append(str(exc))
            continue
        return NatsServer(binary, port, run_dir, process, seconds, jetstream)
    raise RuntimeError("could not start nats-server: " + "\n---\n".join(errors))


def require_nats_server() -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])  # sbin: not on every PATH
    binary = shutil.which(NATS_SERVER, path=search)
    if binary is None:
        missing("nats-server is not installed (Debian package `nats-server`)")
    assert binary is not None
    return binary


@pytest.fixture
def nats_servers(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """``start(config="", jetstream=True) -> NatsServer``: servers of this test alone, killed after it."""
    binary = require_nats_server()
    started: list[NatsServer] = []

    def start(config: str = "", jetstream: bool = True) -> NatsServer:
        server = start_nats_server(binary, tmp_path, config, jetstream=jetstream)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()


@pytest.fixture
def nats_server(nats_servers: Callable[..., NatsServer]) -> NatsServer:
    """A nats-server with JetStream of this test alone."""
    return nats_servers()
