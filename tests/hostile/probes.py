"""Looking at gateway processes from outside: RSS and CPU from /proc, who holds which TCP socket, the JSON log.

Everything here is read-only and bounded: samplers are threads that stop on a flag, waits have deadlines.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (seconds), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """The first truthy value of predicate() within timeout, else its last (falsy) value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --- RSS sampling ----------------------------------------------------------------------------------------


@dataclass
class RssSeries:
    name: str
    samples: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, bytes)

    def between(self, t0: float, t1: float) -> list[int]:
        return [v for t, v in self.samples if t0 <= t <= t1]

    def baseline(self, t0: float, window: float = 1.0) -> int:
        """Median RSS over the `window` seconds before t0 (the last sample before t0 if there are none)."""
        values = self.between(t0 - window, t0)
        if values:
            return int(statistics.median(values))
        before = [v for t, v in self.samples if t <= t0]
        return before[-1] if before else (self.samples[0][1] if self.samples else 0)

    def peak(self, t0: float, t1: float) -> int:
        values = self.between(t0, t1)
        return max(values) if values else 0

    def last(self) -> int:
        return self.samples[-1][1] if self.samples else 0


class RssSampler:
    """Samples VmRSS of named processes every `interval` seconds in a thread, until stop()."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.series = {name: RssSeries(name) for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def _sample(self) -> None:
        now = time.monotonic()
        for name, pid in self.pids.items():
            value = rss_bytes(pid)
            if value is not None:
                self.series[name].samples.append((now, value))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def current(self, name: str) -> int:
        value = rss_bytes(self.pids[name])
        return value if value is not None else 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- TCP sockets (who holds which connection) ------------------------------------------------------------

TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}


@dataclass(frozen=True)
class TcpEntry:
    local_port: int
    remote_port: int
    state: str
    inode: int
    tx_queue: int
    rx_queue: int


def tcp_table() -> list[TcpEntry]:
    """IPv4 TCP sockets of this machine (loopback is all the tests use)."""
    out = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, state = parts[1], parts[2], parts[3]
            tx, rx = parts[4].split(":")
            out.append(
                TcpEntry(
                    local_port=int(local.split(":")[1], 16),
                    remote_port=int(remote.split(":")[1], 16),
                    state=TCP_STATES.get(state, state),
                    inode=int(parts[9]),
                    tx_queue=int(tx, 16),
                    rx_queue=int(rx, 16),
                )
            )
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process has open."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return inodes


def holds_connection(pid: int, server_port: int, client_port: int) -> bool:
    """Does process `pid` still have its end (local port server_port) of the connection from client_port
    open? A socket the process closed is either gone from the table or orphaned (inode 0), even when the
    peer never read what was queued for it -- so this sees a cut that the client cannot (it never reads)."""
    inodes = socket_inodes(pid)
    return any(
        e.local_port == server_port and e.remote_port == client_port and e.inode in inodes for e in tcp_table()
    )


def connections_to(pid: int, remote_port: int) -> set[int]:
    """Local ports of the connections process `pid` holds to remote_port (e.g. GW-A's provider link)."""
    inodes = socket_inodes(pid)
    return {
        e.local_port
        for e in tcp_table()
        if e.remote_port == remote_port and e.inode in inodes and e.state == "ESTABLISHED"
    }


# --- the JSON log ----------------------------------------------------------------------------------------


def parse_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = {"event": "<not json>", "text": line[:500]}
        if isinstance(value, dict):
            out.append(value)
    return out


def log_errors(lines: list[str]) -> list[str]:
    """Lines that carry a traceback or an `exception` field (structlog's rendering of exc_info)."""
    bad = []
    for line in lines:
        if "Traceback" in line:
            bad.append(line[:600])
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and ("exception" in event or "exc_info" in event or "stack" in event):
            bad.append(line[:600])
    return bad
