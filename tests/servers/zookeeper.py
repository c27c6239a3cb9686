"""A real standalone ZooKeeper on loopback for the registry tests (Debian package `zookeeper`).

Fixtures:

* ``zookeeper`` (session): starts ``java ... org.apache.zookeeper.server.ZooKeeperServerMain zoo.cfg`` on
  127.0.0.1 and a free port, in a temporary directory; ready when ``ruok`` answers ``imok``. Returns a
  :class:`ZooKeeperServer` (``.address`` = ``"127.0.0.1:PORT"``, ``.clear()``, ``.client()``,
  ``.expire_session(client_id)``). Killed by pid at the end of the session.
* ``zk`` (function): the same server with ``/sofa-rpc`` and ``/dubbo`` deleted before the test.
* ``own_zookeeper`` (function): a server of the test's own, which it may ``kill()`` and ``restart()`` (same port
  and data directory: sessions survive, as on a real server crash).

Server settings (REGISTRIES.md 2.9, 7.3): no AdminServer (it would listen on 0.0.0.0:8080), 4lw whitelist
``ruok,srvr,mntr,stat,cons``, ``minSessionTimeout=4000`` / ``maxSessionTimeout=6000`` (sofa-rpc-node asks for
30 s and cannot be configured: the cap makes its crash tests take 6 s, not 30), containers checked every
second. Without java or the jar the fixtures skip, or fail when ``CI=true``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import ports
from tests.requires import missing

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")  # its manifest Class-Path names the Debian deps
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"
JVM_FLAGS = ["-Xms16m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
MIN_SESSION_MS = 4000
MAX_SESSION_MS = 6000
STARTUP_TIMEOUT = 30.0
PROBE_TIMEOUT = 0.5  # the port is bound before the database is loaded: a probe can hang (pitfall 1)
TREES = ("/sofa-rpc", "/dubbo")



def four_letter_word(host: str, port: int, word: str = "ruok", timeout: float = PROBE_TIMEOUT) -> str | None:
    """The answer to a ZooKeeper four-letter command, or None (refused, closed, timed out)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
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


def _free_port() -> int:
    return ports.free_port()


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class ZooKeeperServer:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen
    startup_seconds: float
    java: str = "java"
    _admin: object | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def ruok(self) -> bool:
        return four_letter_word(self.host, self.port, "ruok") == "imok"

    def client(self, timeout: float = 10.0, **kwargs: object):
        """A started KazooClient on this server (the caller stops and closes it)."""
        from kazoo.client import KazooClient

        client = KazooClient(hosts=self.address, timeout=timeout, **kwargs)
        client.start(timeout=10)
        return client

    @property
    def admin(self):
        """A long-lived KazooClient of the fixture itself (inspecting and clearing the tree)."""
        if self._admin is None:
            self._admin = self.client()
        return self._admin

    def clear(self) -> None:
        """Delete the SOFARPC and Dubbo trees (recursively)."""
        for path in TREES:
            if self.admin.exists(path):
                self.admin.delete(path, recursive=True)

    def expire_session(self, client_id: tuple[int, bytes]) -> None:
        """Expire someone else's session now (REGISTRIES.md pitfall 10): attach a second client to the same
        session id and password, then close it. The owner sees SUSPENDED -> LOST -> CONNECTED (new session)."""
        from kazoo.client import KazooClient

        hijacker = KazooClient(hosts=self.address, client_id=client_id, timeout=MIN_SESSION_MS / 1000)
        hijacker.start(timeout=10)
        try:
            hijacker.stop()
        finally:
            hijacker.close()

    def kill(self) -> None:
        """Crash the server (SIGKILL). Sessions are in its transaction log: `restart` brings them back."""
        self._drop_admin()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        """Start the server again on the same port and data directory (after `kill` or `stop`)."""
        if self.process.poll() is None:
            self.kill()
        self.process, self.startup_seconds = _launch(self.java, self.directory, self.port)

    def _drop_admin(self) -> None:
        if self._admin is not None:
            try:
                self._admin.stop()
                self._admin.close()
            except Exception:  # noqa: BLE001 - teardown
                pass
            self._admin = None

    def stop(self) -> None:
        self._drop_admin()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def write_config(directory: Path, port: int) -> Path:
    """zoo.cfg for a loopback server on `port` with its data under `directory` (settings: module docstring)."""
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


def server_argv(java: str, config: Path) -> list[str]:
    """The command line of a standalone server (containers checked every second for the reaping tests)."""
    return [java, *JVM_FLAGS, "-Dznode.container.checkIntervalMs=1000", "-cp", str(ZOOKEEPER_JAR), MAIN_CLASS, str(config)]


def _launch(java: str, run_dir: Path, port: int) -> tuple[subprocess.Popen, float]:
    """Run the server of `run_dir/zoo.cfg`; wait until `ruok` answers `imok` (a probe with a timeout)."""
    argv = server_argv(java, run_dir / "zoo.cfg")
    log_path = run_dir / "zookeeper.log"
    started = time.monotonic()
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, cwd=run_dir
        )
    deadline = started + STARTUP_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        if four_letter_word("127.0.0.1", port, "ruok") == "imok":
            return process, time.monotonic() - started
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    process.wait()
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"ZooKeeper gave no imok within {STARTUP_TIMEOUT}s (exit {process.returncode}):\n{tail}")


def start_zookeeper(java: str, directory: Path, attempts: int = 3) -> ZooKeeperServer:
    """Start a standalone server on a free loopback port; retry on another port if one is taken meanwhile."""
    errors = []
    for attempt in range(attempts):
        port = _free_port()
        if _port_answers(port):  # never health-check someone else's server by mistake
            continue
        run_dir = directory / f"run{attempt}"
        write_config(run_dir, port)
        try:
            process, seconds = _launch(java, run_dir, port)
        except RuntimeError as exc:
            errors.append(str(exc))
            continue
        return ZooKeeperServer("127.0.0.1", port, run_dir, process, seconds, java=java)
    raise RuntimeError("could not start ZooKeeper: " + "\n---\n".join(errors))


def require_java() -> str:
    """java, once java, the ZooKeeper jar and kazoo are known to be installed (else skip / fail on CI)."""
    java = shutil.which("java")
    if java is None:
        missing("java is not installed (needed to run ZooKeeper)")
    if not ZOOKEEPER_JAR.is_file():
        missing(f"ZooKeeper is not installed ({ZOOKEEPER_JAR} is missing; Debian package `zookeeper`)")
    try:
        import kazoo  # noqa: F401
    except ImportError:
        missing("kazoo is not installed")
    assert java is not None
    return java


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    server = start_zookeeper(require_java(), tmp_path_factory.mktemp("zookeeper"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def zk(zookeeper: ZooKeeperServer) -> ZooKeeperServer:
    """The session's ZooKeeper with empty `/sofa-rpc` and `/dubbo` trees."""
    zookeeper.clear()
    return zookeeper


@pytest.fixture
def own_zookeeper(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    """A ZooKeeper of this test alone (about 0.1-1 s to start), for tests that kill or restart it."""
    server = start_zookeeper(require_java(), tmp_path)
    try:
        yield server
    finally:
        server.stop()
