"""The processes the benchmark starts, and what /proc says about them.

Every server (nginx masters, interlink gateways) is started through `Children`, which

- puts it in its own process group (so Ctrl-C in the terminal reaches only us, and we stop the servers
  in order), and
- asks the kernel to send it SIGTERM if the benchmark itself dies (PR_SET_PDEATHSIG), so that even a
  `kill -9` of the harness leaves no nginx behind.

`Children.stop_all()` sends SIGTERM to each process group, waits, then SIGKILLs what is left.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests import ports

_PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Children:
    def __init__(self) -> None:
        self._children: list[Child] = []
        self.profile = None  # a bench.profiling.Profiling with --profile: the gateways run under cProfile

    def start(self, name: str, argv: list[str], *, cwd: Path, log: Path, env: dict[str, str] | None = None) -> Child:
        out = open(log, "ab")
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        child = Child(name, proc, log)
        self._children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 5.0) -> None:
        if child.alive():
            _signal_group(child.pid, signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while its workers are not: clear the whole group either way.
        _signal_group(child.pid, signal.SIGKILL)
        if child.alive():
            child.proc.wait(timeout)
        if child in self._children:
            self._children.remove(child)

    def stop_all(self) -> None:
        groups = {c.pid for c in self._children}
        for child in reversed(list(self._children)):
            try:
                self.stop(child)
            except Exception as exc:  # keep going: the others must still be stopped
                print(f"bench: could not stop {child.name} (pid {child.pid}): {exc}")
        leftovers = [pid for pid in _all_pids() if _pgid(pid) in groups and not _is_zombie(pid)]
        if leftovers:
            print(f"bench: WARNING: processes still alive after cleanup: {leftovers}")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def reap(proc: subprocess.Popen) -> None:
    """Kills a helper process started with pipes (a load generator) if it still runs, and closes its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_guarded(body: Callable[[Path, Children], int], keep_tmp: bool) -> int:
    """`body(tmp, children)` with a fresh temp dir, as the benchmark's main: SIGINT, SIGTERM and SIGHUP
    interrupt it (status 130), an exception is a harness error (2). Every child is stopped at the end and
    the temp dir removed, unless `keep_tmp` or something failed (its configs and logs say why)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: it may arrive ignored
        signal.signal(sig, _raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="interlink-bench-"))
    children = Children()
    try:
        status = body(tmp, children)
        if status != 0:
            keep_tmp = True
        return status
    except KeyboardInterrupt:
        print("\nbench: interrupted, stopping everything")
        return 130
    except Exception as exc:
        keep_tmp = True
        print(f"\nbench: FAILED: {type(exc).__name__}: {exc}")
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not cut cleanup short
            signal.signal(sig, signal.SIG_IGN)
        children.stop_all()
        if keep_tmp:
            print(f"bench: configs, certificates and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --- ports ---------------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1, below the kernel's ephemeral range (tests/ports.py: no outgoing
    connection can take one before the server that is given it binds it)."""
    return [ports.free_port() for _ in range(n)]


def wait_for_port(port: int, child: Child | None = None, timeout: float = 15.0) -> bool:
    """True once 127.0.0.1:port accepts a TCP connection; False on timeout or if `child` exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --- /proc ---------------------------------------------------------------------------------------


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces: split after its closing parenthesis.
    return raw[raw.rindex(")") + 2 :].split()


def _pgid(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[2]) if f else None


def _is_zombie(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is None or f[0] in ("Z", "X")


def process_tree(root: int) -> list[int]:
    """root and all its descendants (nginx master + workers, a gateway + its workers)."""
    parent_of = {}
    for pid in _all_pids():
        f = _stat_fields(pid)
        if f:
            parent_of[pid] = int(f[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent_of.items() if ppid in frontier]
        tree.extend(frontier)
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    f = _stat_fields(pid)
    if not f:
        return 0.0
    # after the comm split: index 11 = utime (field 14), 12 = stime (field 15)
    return (int(f[11]) + int(f[12])) / _CLK_TCK


def activity(pid: int) -> tuple[int, int]:
    """(writes, wake-ups) of one process so far: its write(2)-family system calls (/proc/PID/io syscw, the whole
    process: write, writev, pwrite on any descriptor -- an interlink gateway's log lines, nginx's sockets too;
    send/sendto/sendmsg, which interlink's sockets use, are not counted) and the times its threads went to sleep
    waiting for something (voluntary context switches, summed over /proc/PID/task/*/status): an event-loop
    process sleeps once per wake-up. (0, 0) if it is gone."""
    writes = sleeps = 0
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("syscw:"):
                writes = int(line.split()[1])
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    sleeps += int(line.split()[1])
        except OSError:  # a thread that just ended
            pass
    return writes, sleeps


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak RSS) and VmRSS of one process, in KiB."""
    out = {"VmHWM": 0, "VmRSS": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


@dataclass
class TreeSample:
    """CPU and system-call counts (`activity`) of every process of one server tree at one instant."""

    cpu: dict[int, float]
    activity: dict[int, tuple[int, int]]

    @classmethod
    def take(cls, root: int) -> TreeSample:
        pids = process_tree(root)
        return cls({pid: cpu_seconds(pid) for pid in pids}, {pid: activity(pid) for pid in pids})

    def cpu_since(self, before: TreeSample) -> float:
        """CPU seconds used since `before` by the processes alive now (new processes count in full)."""
        return sum(now - before.cpu.get(pid, 0.0) for pid, now in self.cpu.items())

    def activity_since(self, before: TreeSample) -> tuple[int, int]:
        """(writes, wake-ups) since `before` of the processes alive now (new processes count in full)."""
        writes = sleeps = 0
        for pid, (now_writes, now_sleeps) in self.activity.items():
            then_writes, then_sleeps = before.activity.get(pid, (0, 0))
            writes += now_writes - then_writes
            sleeps += now_sleeps - then_sleeps
        return writes, sleeps


def tree_memory(root: int) -> list[dict[str, int]]:
    return [{"pid": pid, **memory_kib(pid)} for pid in process_tree(root)]


@dataclass
class MachineSample:
    """Whole-machine CPU time from /proc/stat (all cores), in clock ticks."""

    busy: int
    steal: int
    total: int

    @classmethod
    def take(cls) -> MachineSample:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        # user nice system idle iowait irq softirq steal guest guest_nice (guest time is inside user)
        idle = fields[3] + fields[4]
        steal = fields[7] if len(fields) > 7 else 0
        total = sum(fields[:8])
        return cls(busy=total - idle - steal, steal=steal, total=total)

    def busy_cores_since(self, before: MachineSample, seconds: float) -> tuple[float, float]:
        """(busy, steal) in cores (1.0 = one core fully busy) between `before` and now."""
        ticks = _CLK_TCK * seconds
        return (self.busy - before.busy) / ticks, (self.steal - before.steal) / ticks
