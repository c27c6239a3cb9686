"""The lab's networks and nodes as Linux network namespaces, the processes run in them, and their removal.

Every network is a bridge in a namespace of its own, and every node is a namespace with one veth per
network it is on (the interface is named after the network, its peer on the bridge after the node):

    ilab-x-<run>                        bridge of the interconnect (tag x)
    ilab-a-<run>, ilab-b-<run>          bridges of the site networks
    ilab-a-<run>-gateway-a, ...         one per node; gateway-a has two interfaces, site-a and interconnect

No link is ever created in the caller's own namespace, nothing forwards (the gateways are dual-homed
hosts with IP forwarding off) and each namespace has only the routes of its own subnets: a node reaches
exactly the networks it is on. IPv6 is off in the lab's namespaces, so the interconnect carries nothing but
ARP and what the gateways send each other.

`Namespaces` builds and removes the namespaces and runs processes in them; everything is removed on exit,
on an exception, on Ctrl-C and on SIGTERM: the processes first (by process group, then whatever else still
runs in a namespace), then the namespaces, which take their veths and bridges with them.
"""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

from interlink.labnet.topology import Topology


class NetnsUnavailable(Exception):
    """This machine cannot build the lab (not root, no `ip`, no namespaces); the message says why."""


class LabError(Exception):
    """The lab could not be started; the message says what failed and where its logs are."""


_RUN_LETTERS = itertools.cycle("abcdefghijklmnopqrstuvwxyz")
_STALE = re.compile(r"^ilab-[a-z]-(?P<pid>\d+)[a-z](?:-|$)")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done


def namespace_names() -> list[str]:
    """The network namespaces `ip netns list` shows, in its order."""
    done = _ip("netns", "list")
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def require_netns() -> None:
    """Raise NetnsUnavailable unless this process can build the lab."""
    if sys.platform != "linux":
        raise NetnsUnavailable("network namespaces need Linux")
    if os.geteuid() != 0:
        raise NetnsUnavailable("the netns lab needs root (it creates network namespaces and veth pairs)")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("`ip` (iproute2) is not installed")
    try:
        namespace_names()
    except (LabError, OSError) as exc:
        raise NetnsUnavailable(f"`ip netns list` failed: {exc}") from None


def remove_stale() -> list[str]:
    """Remove lab namespaces left by a lab process that no longer runs (one killed with SIGKILL)."""
    removed = []
    for name in namespace_names():
        match = _STALE.match(name)
        if match is None or _alive(int(match["pid"])):
            continue
        _kill_namespace_pids(name)
        if _ip("netns", "del", name, check=False).returncode == 0:
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_pids(name: str) -> None:
    for text in _ip("netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(text), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


class _Scoped:
    """Entering `with` runs `_setup()`; leaving it, or a setup that fails (even on Ctrl-C), runs `close()`."""

    def _setup(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Namespaces(_Scoped):
    """The topology's networks and nodes as network namespaces; `close()` (or leaving `with`) removes all.

    `spawn(where, argv)` starts a process inside the namespace of a node (or of a network's bridge) in a
    process group of its own; `run(where, argv)` runs one to completion.
    """

    def __init__(self, topology: Topology, run: str | None = None) -> None:
        self.topology = topology
        self.run_id = run or f"{os.getpid()}{next(_RUN_LETTERS)}"
        self.of_network = {name: f"ilab-{net.tag}-{self.run_id}" for name, net in topology.networks.items()}
        self.of_node = {
            name: f"ilab-{topology.tag_of(node)}-{self.run_id}-{name}" for name, node in topology.nodes.items()
        }
        self.processes: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._closed = False
        self._saved_handlers: dict[int, Any] = {}

    def names(self) -> list[str]:
        return [*self.of_network.values(), *self.of_node.values()]

    def namespace(self, where: str) -> str:
        """The namespace of a node or of a network's bridge."""
        return self.of_node.get(where) or self.of_network[where]

    def create(self) -> None:
        require_netns()
        self._trap_signals()
        atexit.register(self.close)
        existing = set(namespace_names())
        clash = [name for name in self.names() if name in existing]
        if clash:
            raise LabError(f"namespace(s) {', '.join(clash)} already exist; remove them with `ip netns del`")
        for hub in self.of_network.values():
            self._add_namespace(hub)
            # No multicast snooping: the bridge itself would send IGMP reports onto the network.
            _ip("-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            _ip("-n", hub, "link", "set", "br0", "up")
        for name, node in self.topology.nodes.items():
            namespace = self.of_node[name]
            self._add_namespace(namespace)
            for network, address in node.addresses.items():
                hub = self.of_network[network]
                prefix = self.topology.networks[network].subnet.prefixlen
                _ip("-n", hub, "link", "add", name, "type", "veth", "peer", "name", network, "netns", namespace)
                _ip("-n", hub, "link", "set", name, "master", "br0", "up")
                _ip("-n", namespace, "addr", "add", f"{address}/{prefix}", "dev", network)
                _ip("-n", namespace, "link", "set", network, "up")

    _setup = create

    def _add_namespace(self, name: str) -> None:
        self._created.append(name)  # first: an interrupt right after `ip netns add` must not leak it
        _ip("netns", "add", name)
        # IPv6 off before any link exists (no router solicitations, MLD, DAD on the lab's networks).
        self.run(
            name,
            ["sh", "-c", "for f in all default; do echo 1 > /proc/sys/net/ipv6/conf/$f/disable_ipv6; done"],
            check=True,
        )
        _ip("-n", name, "link", "set", "lo", "up")

    def argv(self, where: str, argv: Iterable[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(where), *argv]

    def spawn(self, where: str, argv: Iterable[str], *, log: Path | None = None, **popen: Any) -> subprocess.Popen:
        """Start `argv` in a namespace, in a process group of its own (so Ctrl-C reaches only us)."""
        if self._closed:
            raise LabError("the lab's namespaces are already removed")
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                process = subprocess.Popen(
                    self.argv(where, argv),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    **popen,
                )
        else:
            process = subprocess.Popen(
                self.argv(where, argv), stdin=subprocess.DEVNULL, start_new_session=True, **popen
            )
        self.processes.append(process)
        return process

    def run(
        self, where: str, argv: Iterable[str], *, timeout: float = 60.0, check: bool = False, **kwargs: Any
    ) -> subprocess.CompletedProcess:
        namespace = self.of_node.get(where) or self.of_network.get(where) or where
        done = subprocess.run(
            ["ip", "netns", "exec", namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )
        if check and done.returncode != 0:
            raise LabError(f"in {namespace}: {' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    @staticmethod
    def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 3.0) -> int | None:
        """Signal the process group, wait, then SIGKILL it; returns the exit code."""
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever the group still holds
        except (ProcessLookupError, PermissionError):
            pass
        try:
            return process.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop every process, then remove every namespace (and so every veth and bridge). Idempotent."""
        if self._closed:
            return
        self._closed = True
        interrupts = self._hold_interrupts()
        try:
            for process in reversed(self.processes):
                self.stop(process, timeout=2.0)
            existing = set(namespace_names()) if self._created else set()
            for name in reversed(self._created):
                if name not in existing:
                    continue
                _kill_namespace_pids(name)
                for _ in range(3):
                    if _ip("netns", "del", name, check=False).returncode == 0:
                        break
                    time.sleep(0.1)
        finally:
            atexit.unregister(self.close)
            self._restore_signals(interrupts)

    def _trap_signals(self) -> None:
        """While the lab exists, SIGINT (even if inherited as ignored, as by `cmd &`), SIGTERM and SIGHUP
        raise KeyboardInterrupt, so the `finally` and `with` blocks that remove everything run."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._saved_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._saved_handlers[sig] = signal.signal(sig, _raise_interrupt)

    def _hold_interrupts(self) -> dict[int, Any]:
        """A second Ctrl-C (or a SIGTERM) must not cut the cleanup short."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def _restore_signals(self, held: dict[int, Any]) -> None:
        for sig, handler in held.items():
            signal.signal(sig, self._saved_handlers.get(sig, handler))  # as before the lab
        self._saved_handlers.clear()


def _wait_for(
    path: Path, predicate: Callable[[str], bool], processes: list[subprocess.Popen], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(predicate(line) for line in path.read_text(errors="replace").splitlines()):
            return
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise LabError(f"{what} exited with {dead[0].returncode}; see {path}:\n{_tail(path)}")
        time.sleep(0.05)
    raise LabError(f"{what} not ready within {timeout:.0f} s; see {path}:\n{_tail(path)}")


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"
