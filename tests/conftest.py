"""Shared fixtures: free ports, the demo providers (grpcio and @grpc/grpc-js) and the Node client.

* ``free_port`` -- an unused TCP port on 127.0.0.1 (tests/ports.py: below the ephemeral range).
* ``py_provider`` / ``node_server`` -- a running demo provider (``Peer``: target, port, name);
  both implement the same semantics (interlink/demo/provider.py).
* ``run_node_client(target, case, ...) -> dict`` -- runs tests/peers/grpcjs_client.js once.
* ``spawn_peer(argv, name) -> Peer`` -- starts a program that prints ``listening on HOST:PORT``
  and waits for that line; stopped (SIGTERM, then SIGKILL) after the test.
* ``node_peers`` -- the Node peers are usable: fails on CI (``CI=true``), else skips, when node
  or tests/peers/node_modules is missing (``bash scripts/setup.sh --test`` installs them).
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import ports
from tests.requires import missing

pytest_plugins = ["tests.servers.zookeeper", "tests.servers.bind9", "tests.servers.nats"]

PEERS_DIR = Path(__file__).resolve().parent / "peers"
NODE_SERVER_JS = PEERS_DIR / "grpcjs_server.js"
NODE_CLIENT_JS = PEERS_DIR / "grpcjs_client.js"
STARTUP_TIMEOUT = 20.0
_LISTENING = re.compile(r"^listening on (?P<host>.+):(?P<port>\d+)\s*$")


@dataclass(frozen=True)
class Peer:
    """A running demo peer reachable at ``target`` (``host:port``)."""

    name: str
    host: str
    port: int
    process: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


def pick_free_port(host: str = "127.0.0.1") -> int:
    return ports.free_port(host)


@pytest.fixture
def free_port() -> int:
    return pick_free_port()



@pytest.fixture(scope="session")
def node_peers() -> str:
    """Path of the node executable, once the Node peers are known to be installed."""
    node = shutil.which("node")
    if node is None:
        missing("node is not installed")
    if not (PEERS_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing(f"Node peers are not installed ({PEERS_DIR / 'node_modules'} is missing)")
    return node


def start_process_peer(
    argv: Sequence[str], name: str, timeout: float = STARTUP_TIMEOUT, env: Mapping | None = None
) -> Peer:
    """Start a peer program that prints ``listening on HOST:PORT``; wait for that line.

    stderr is inherited (visible in pytest's captured output on failure).
    """
    proc = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # keep reading so the child never blocks on a full pipe
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name=f"stdout-{name}", daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        stop_process(proc)
        raise RuntimeError(f"{name}: no 'listening on' line within {timeout}s: {argv}") from None
    match = _LISTENING.match(line or "")
    if match is None:
        stop_process(proc)
        raise RuntimeError(f"{name}: unexpected first line {line!r} (exit {proc.returncode}): {argv}")
    return Peer(name=name, host=match["host"], port=int(match["port"]), process=proc)


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def spawn_peer() -> Iterator:
    """``spawn_peer(argv, name, timeout=20.0, env=None) -> Peer``; stopped after the test."""
    started: list[Peer] = []

    def spawn(argv: Sequence[str], name: str, **kwargs: Any) -> Peer:
        peer = start_process_peer(argv, name, **kwargs)
        started.append(peer)
        return peer

    yield spawn
    for peer in reversed(started):
        assert peer.process is not None
        stop_process(peer.process)


@pytest.fixture(scope="session")
def node_server(node_peers: str) -> Iterator[Peer]:
    """The @grpc/grpc-js demo provider (tests/peers/grpcjs_server.js), named ``node-provider``."""
    peer = start_process_peer(
        [node_peers, str(NODE_SERVER_JS), "--listen", "127.0.0.1:0", "--name", "node-provider"],
        "node-provider",
    )
    yield peer
    assert peer.process is not None
    stop_process(peer.process)


@pytest.fixture(scope="session")
def py_provider() -> Iterator[Peer]:
    """The grpcio demo provider (interlink.demo.provider), in-process, named ``py-provider``."""
    from interlink.demo.provider import start

    server, port = start("127.0.0.1:0", name="py-provider")
    yield Peer(name="py-provider", host="127.0.0.1", port=port)
    server.stop(grace=None)


def _run_node_client(
    node: str,
    target: str,
    case: str,
    *,
    metadata: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    timeout_ms: int | None = None,
    size: int | None = None,
    messages: Sequence[str] = (),
    a: int | None = None,
    b: int | None = None,
    sleep_ms: int | None = None,
    extra_args: Sequence[str] = (),
    process_timeout: float = 60.0,
) -> dict[str, Any]:
    argv = [node, str(NODE_CLIENT_JS), "--target", target, "--case", case]
    pairs = metadata.items() if isinstance(metadata, Mapping) else metadata
    for key, value in pairs:
        argv += ["--metadata", f"{key}={value}"]
    for flag, value in (
        ("--timeout-ms", timeout_ms),
        ("--size", size),
        ("--a", a),
        ("--b", b),
        ("--sleep-ms", sleep_ms),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for message in messages:
        argv += ["--message", message]
    argv += list(extra_args)
    return _json_line_of(argv, "grpcjs_client", process_timeout)


def _json_line_of(argv: list[str], name: str, process_timeout: float) -> dict[str, Any]:
    """Run a one-shot peer program that prints exactly one JSON line; its exit code must be 0."""
    done = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", timeout=process_timeout)
    if done.returncode != 0:
        raise AssertionError(
            f"{name} exited {done.returncode}\nargv: {argv}\nstdout: {done.stdout}\nstderr: {done.stderr}"
        )
    out = done.stdout.strip().splitlines()
    if len(out) != 1:
        raise AssertionError(f"{name} printed {len(out)} lines, expected 1: {done.stdout!r}")
    return json.loads(out[0])


@pytest.fixture
def run_node_client(node_peers: str):
    """``run_node_client(target, case, *, metadata=..., timeout_ms=..., size=..., messages=...,
    a=..., b=..., sleep_ms=..., extra_args=...) -> dict`` (the client's JSON result line)."""

    def run(target: str, case: str, **kwargs: Any) -> dict[str, Any]:
        return _run_node_client(node_peers, target, case, **kwargs)

    return run


# ---- SOFA Bolt peers (sofa-rpc-node 2.10.0): tests/peers/bolt_server.js, bolt_client.js -----

BOLT_SERVER_JS = PEERS_DIR / "bolt_server.js"
BOLT_CLIENT_JS = PEERS_DIR / "bolt_client.js"


def bolt_server_argv(node: str, listen: str = "127.0.0.1:0", name: str = "bolt-provider",
                     app: str | None = None) -> list[str]:
    """argv for ``start_process_peer`` / ``spawn_peer``: a sofa-rpc-node provider of
    ``com.example.EchoService:1.0`` (port 0 works: it prints the bound port)."""
    argv = [node, str(BOLT_SERVER_JS), "--listen", listen, "--name", name]
    if app is not None:
        argv += ["--app", app]
    return argv


@pytest.fixture(scope="session")
def bolt_peers(node_peers: str) -> str:
    """Path of node, once sofa-rpc-node is installed in tests/peers/node_modules."""
    if not (PEERS_DIR / "node_modules" / "sofa-rpc-node").is_dir():
        missing(f"sofa-rpc-node is not installed in {PEERS_DIR / 'node_modules'}")
    return node_peers


@pytest.fixture(scope="session")
def bolt_server(bolt_peers: str) -> Iterator[Peer]:
    """The sofa-rpc-node Bolt provider (tests/peers/bolt_server.js), named ``bolt-provider``."""
    peer = start_process_peer(bolt_server_argv(bolt_peers, name="bolt-provider"), "bolt-provider")
    yield peer
    assert peer.process is not None
    stop_process(peer.process)


def _run_bolt_client(
    node: str,
    target: str,
    case: str,
    *,
    app: str | None = None,
    timeout_ms: int | None = None,
    args: Sequence[Any] = (),
    count: int | None = None,
    concurrency: int | None = None,
    target_app: str | None = None,
    props: Mapping[str, str] | Sequence[tuple[str, str]] = (),
    extra_args: Sequence[str] = (),
    process_timeout: float = 60.0,
) -> dict[str, Any]:
    argv = [node, str(BOLT_CLIENT_JS), "--target", target, "--case", case]
    for flag, value in (
        ("--app", app),
        ("--timeout-ms", timeout_ms),
        ("--count", count),
        ("--concurrency", concurrency),
        ("--target-app", target_app),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for arg in args:
        argv += ["--arg", str(arg)]
    pairs = props.items() if isinstance(props, Mapping) else props
    for key, value in pairs:
        argv += ["--prop", f"{key}={value}"]
    argv += list(extra_args)
    return _json_line_of(argv, "bolt_client", process_timeout)


@pytest.fixture
def run_bolt_client(bolt_peers: str):
    """``run_bolt_client(target, case, *, app=..., timeout_ms=..., args=[...], count=...,
    concurrency=..., target_app=..., props={...}, extra_args=...) -> dict`` (the JSON line of
    tests/peers/bolt_client.js; ``case`` in echo|add|fail|slow|whoami|unknown)."""

    def run(target: str, case: str, **kwargs: Any) -> dict[str, Any]:
        return _run_bolt_client(bolt_peers, target, case, **kwargs)

    return run
