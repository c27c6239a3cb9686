"""What the cells of the gRPC, Bolt and translate parts have in common: /proc read around the measured run,
the machine and per-proxy figures of a measured cell, the cell of a path whose processes died, and the
progress line printed for each cell."""

from __future__ import annotations

import time

from bench.processes import Child, MachineSample, TreeSample, tree_memory

IDLE_CPU_WARN_PCT = 3.0  # a proxy not under test using more than this during a cell is reported
OTHER_CPU_WARN_PCT = 25.0  # CPU of processes outside the benchmark, % of one core, that marks a cell disturbed


class Bracket:
    """/proc read around a measured run: the CPU of every watched process tree and of the whole machine.
    Made just before the run starts; `close()` just after it ends."""

    def __init__(self, watched: dict[str, Child]) -> None:
        self.watched = watched
        self._before = {name: TreeSample.take(c.pid) for name, c in watched.items()}
        self._machine_before, self._t0 = MachineSample.take(), time.monotonic()

    def close(self) -> None:
        machine_after, self.seconds = MachineSample.take(), time.monotonic() - self._t0
        after = {name: TreeSample.take(c.pid) for name, c in self.watched.items()}
        self.cpu = {name: after[name].cpu_since(self._before[name]) for name in self.watched}  # CPU seconds
        self.activity = {name: after[name].activity_since(self._before[name]) for name in self.watched}
        self.busy, self.steal = machine_after.busy_cores_since(self._machine_before, self.seconds)  # cores

    def pct(self, name: str) -> float:
        """CPU of one watched process tree, % of one core."""
        return round(100 * self.cpu[name] / self.seconds, 1)


def finish_cell(
    cell: dict, bracket: Bracket, client_cpu_s: float, calls: int, path_name: str, proxies: dict[str, Child],
    all_proxies: dict[str, Child],
) -> dict:  # fmt: skip
    """Adds the machine's figures and the path's proxies to a measured cell. `bracket` watched every proxy
    of every path as "<path>:<role>" (`all_proxies`), the provider and nothing else of the benchmark; the
    load generator's CPU is `client_cpu_s`."""
    known_cores = (sum(bracket.cpu.values()) + client_cpu_s) / bracket.seconds
    cell.update(
        machine_busy_pct=round(100 * bracket.busy, 1),  # all cores: 200% = both cores of 2 busy
        # CPU of everything else on the machine (other users' work, unattributed kernel work): noise
        # (/proc/stat is sampled per tick and the per-process times are not: ±10% is noise, < 0 happens)
        other_cpu_pct=round(100 * (bracket.busy - known_cores), 1),
        machine_steal_pct=round(100 * bracket.steal, 1),
        proxies={},
    )
    for role, child in proxies.items():
        seconds = bracket.cpu[f"{path_name}:{role}"]
        memory = tree_memory(child.pid)
        cell["proxies"][role] = {
            "cpu_us_per_call": round(seconds * 1e6 / calls, 1),
            "cpu_pct": round(100 * seconds / bracket.seconds, 1),
            "rss_peak_mb": round(max(m["VmHWM"] for m in memory) / 1024, 1),
            "rss_now_mb": round(max(m["VmRSS"] for m in memory) / 1024, 1),
            # writes (interlink: its log lines) and wake-ups per call (processes.activity)
            **{f"{kind}_per_call": round(count / calls, 3)
               for kind, count in zip(("writes", "wakeups"), bracket.activity[f"{path_name}:{role}"])},
            "processes": memory,
        }
    # Proxies of the other paths should be idle; say so if one was not (it would steal CPU from this cell).
    busy = {
        name: bracket.pct(name)
        for name in all_proxies
        if not name.startswith(f"{path_name}:") and 100 * bracket.cpu[name] / bracket.seconds > IDLE_CPU_WARN_PCT
    }
    if busy:
        cell["other_proxies_busy_pct"] = busy
        print(f" (warning: idle proxies used CPU: {busy})", end="")
    return cell


def dead_cell(path_name: str, size: int, conc: int, dead: dict[str, Child], reported: set[str] | None = None) -> dict:
    """The cell of a path some of whose processes (role -> process) exited; the first time a path is found
    dead, their log tails are printed too when `reported` (the paths already reported) is given."""
    if reported is not None and path_name not in reported:
        reported.add(path_name)
        for role, c in dead.items():
            print(f"\nbench: {role} ({c.name}) exited; last lines of {c.log}:\n{c.log_tail()}")
    why = ", ".join(f"{role} exited with status {c.proc.returncode}" for role, c in dead.items())
    return {"path": path_name, "size": size, "concurrency": conc, "error": why,
            "logs": {role: c.log_tail() for role, c in dead.items()}}  # fmt: skip


def print_outcome(cell: dict, logged_not_ok: int = 0) -> None:
    """The end of a cell's progress line: its rps and latency, or why it failed."""
    if "error" in cell:
        print(f" FAILED: {cell['error']}")
        return
    print(f" {cell['rps']:>8.0f} rps  p50 {cell['p50_ms']:.3f} ms  p99 {cell['p99_ms']:.3f} ms"
          + (f"  {cell['errors']} errors" if cell["errors"] else "")
          + (f"  {logged_not_ok} calls logged not OK by the gateways" if logged_not_ok else "")
          + (f"  (disturbed: other load {cell['other_cpu_pct']:.0f}% of a core)"
             if cell["other_cpu_pct"] > OTHER_CPU_WARN_PCT else ""))  # fmt: skip
