"""`--profile`: every interlink gateway the benchmark starts runs under cProfile, and at the end of each part
a summary per gateway is written beside the results JSON.

Two halves:

- **in the gateway** (`python -m bench.profiling --out PREFIX -- run -c FILE ...`, what `Profiling.wrap` turns
  `.venv/bin/interlink run -c FILE ...` into): runs `interlink.cli.main` under `cProfile.Profile`, restarted
  when `trio.run` is entered (so start-up imports and site-file loading are left out; if trio.run is never
  called, the whole process is profiled). The gateway stops the way it always does: SIGTERM -> drain ->
  `trio.run` returns -> `interlink run` returns; then the profile is dumped to `PREFIX-<pid>.prof` with
  `PREFIX-<pid>.json` beside it (wall and CPU seconds of the profiled span). A SIGTERM before trio.run (still
  starting) also ends in a dump. With `--workers N` each worker process is profiled the same way (the
  supervisor's `python -m interlink run` commands are rewritten) and the idle supervisor writes nothing.
- **in the harness** (`Profiling.report(part)`, after the part's servers are stopped): merges each gateway's
  files (pstats) and writes `<results>/<stamp>-<part>-<path>-gw-<a|b>.prof.txt` (totals, then the top
  functions by cumulative and by own time, with µs per call served) and the merged raw `.prof` (for pstats or
  snakeviz), and prints their paths.

cProfile is deterministic: it times every Python call, so a profiled gateway spends several times the CPU per
call it would otherwise (the run's own rps and µs/call are not comparable with a run without --profile); the
proportions between functions are what it is for. Its clock is wall time: the time trio spends waiting for
I/O shows as the own time of `select.epoll.poll`, which the summary counts as idle.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOP = 30  # functions per list
IDLE = "{method 'poll' of 'select.epoll' objects}"  # trio's wait for I/O (cProfile's clock is wall time)


# --- in the gateway ----------------------------------------------------------------------------------------


class _Session:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.profiler = cProfile.Profile()
        self.since = "process start"
        self.t0 = time.perf_counter()
        self.cpu0 = _cpu_seconds()
        self.spawned_workers = 0

    def restart(self, since: str) -> None:
        """Throws away what was profiled so far and starts again (at trio.run)."""
        self.profiler.disable()
        self.profiler = cProfile.Profile()
        self.since = since
        self.t0 = time.perf_counter()
        self.cpu0 = _cpu_seconds()
        self.profiler.enable()

    def dump(self, exit_code: object) -> None:
        self.profiler.disable()
        if self.spawned_workers:
            return  # a --workers supervisor: the workers wrote theirs
        wall, cpu = time.perf_counter() - self.t0, _cpu_seconds() - self.cpu0
        base = f"{self.prefix}-{os.getpid()}"
        self.profiler.dump_stats(base + ".prof")
        meta = {"pid": os.getpid(), "since": self.since, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "exit": exit_code if isinstance(exit_code, int) else str(exit_code),
                "worker": os.environ.get("INTERLINK_WORKER")}  # fmt: skip
        Path(base + ".json").write_text(json.dumps(meta))


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _sigterm_before_trio(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _install_hooks(session: _Session) -> None:
    import trio

    real_run = trio.run

    def profiled_run(*args, **kwargs):
        session.restart("trio.run")
        try:
            return real_run(*args, **kwargs)
        finally:
            # Stopping: a second SIGTERM (the process group's and the --workers supervisor's, or a repeat) must
            # not cut the dump short. SIGKILL stays the harness's last resort.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)

    trio.run = profiled_run  # runner.py calls trio.run(...) through the module attribute

    real_popen = subprocess.Popen

    class ProfiledWorkers(real_popen):  # type: ignore[misc, valid-type]
        """`interlink run --workers N` starts `python -m interlink run ...` N times: profile those too."""

        def __init__(self, args, *rest, **kwargs):
            if isinstance(args, (list, tuple)) and list(args[1:3]) == ["-m", "interlink"]:
                session.spawned_workers += 1
                env = kwargs.get("env") or os.environ
                worker = env.get("INTERLINK_WORKER", str(session.spawned_workers))
                args = [args[0], "-m", "bench.profiling", "--out", f"{session.prefix}.w{worker}", "--", *args[3:]]
            super().__init__(args, *rest, **kwargs)

    subprocess.Popen = ProfiledWorkers  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profiling", description="interlink's CLI under cProfile")
    p.add_argument("--out", required=True, help="path prefix of the profile files (PREFIX-<pid>.prof/.json)")
    p.add_argument("cli", nargs=argparse.REMAINDER, help="-- and the arguments of `interlink`")
    args = p.parse_args(argv)
    cli = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    session = _Session(args.out)
    signal.signal(signal.SIGTERM, _sigterm_before_trio)  # trio installs its own inside trio.run
    _install_hooks(session)
    code: object = 1
    session.profiler.enable()
    try:
        from interlink.cli import main as interlink_main

        code = interlink_main(cli)
    except SystemExit as exc:
        code = exc.code
    finally:
        session.dump(code)
    return code if isinstance(code, int) else 1


# --- in the harness ----------------------------------------------------------------------------------------


@dataclass
class _Gateway:
    part: str
    label: str  # "<path>-gw-a"
    prefix: Path
    log: Path


@dataclass
class Profiling:
    """Set as `Children.profile` by `python -m bench --profile`: wraps the gateways' command lines and writes
    the summaries."""

    raw_dir: Path  # the raw per-process files (in the temp dir)
    results_dir: Path
    stamp: str  # the results JSON's name without .json
    part: str = ""  # the part running now
    gateways: list[_Gateway] = field(default_factory=list)
    written: dict[str, dict[str, str]] = field(default_factory=dict)  # part -> gateway -> summary path

    def wrap(self, argv: list[str], label: str, log: Path) -> tuple[list[str], dict[str, str]]:
        """(argv, env) running `argv` (`.../interlink run -c FILE ...`) under the profiler."""
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        prefix = self.raw_dir / f"{self.part or 'bench'}-{label}"
        if not any(g.prefix == prefix for g in self.gateways):
            self.gateways.append(_Gateway(self.part, label, prefix, log))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        env["INTERLINK_PURE"] = "1"  # cProfile sees no function of a compiled module: profile the sources
        return [sys.executable, "-m", "bench.profiling", "--out", str(prefix), "--", *argv[1:]], env

    def report(self, part: str) -> list[Path]:
        """Writes the summary of every gateway of `part` (all stopped by now) and prints where."""
        out = []
        for gateway in [g for g in self.gateways if g.part == part]:
            self.gateways.remove(gateway)
            try:
                path = self._summarize(gateway)
            except Exception as exc:  # a profile that cannot be read must not fail the benchmark
                print(f"bench: profile of {gateway.label} ({part}) could not be summarized: {type(exc).__name__}: {exc}")
                continue
            if path is not None:
                out.append(path)
                self.written.setdefault(part, {})[gateway.label] = str(_shown(path))
        return out

    def _summarize(self, gateway: _Gateway) -> Path | None:
        own = re.compile(re.escape(gateway.prefix.name) + r"(\.w\d+)?-\d+\.prof")  # PREFIX[.wN]-PID.prof
        files = sorted(f for f in gateway.prefix.parent.glob(gateway.prefix.name + "*.prof") if own.fullmatch(f.name))
        self.results_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.stamp}-{gateway.part}-{gateway.label}"
        txt = self.results_dir / f"{name}.prof.txt"
        if not files:
            txt.write_text(f"{gateway.part} {gateway.label}: no profile was written (the gateway did not stop "
                           "through its own shutdown path: killed, or it never started)\n")  # fmt: skip
            print(f"bench: profile of {gateway.label} ({gateway.part}): NONE written, see {_shown(txt)}")
            return txt
        metas = []
        for f in files:
            try:
                metas.append(json.loads(f.with_suffix(".json").read_text()))
            except (OSError, ValueError):
                metas.append({})
        stats = pstats.Stats(*(str(f) for f in files))
        raw = self.results_dir / f"{name}.prof"
        stats.dump_stats(str(raw))
        calls = _access_lines(gateway.log)
        txt.write_text(summary(stats, metas, calls, f"{gateway.part} part, {gateway.label}"))
        print(f"bench: profile of {gateway.label} ({gateway.part}): {_shown(txt)} (raw pstats: {_shown(raw)})")
        return txt


def _shown(path: Path) -> Path:
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def _access_lines(log: Path) -> int:
    """Calls the gateway logged (one access line each), whatever the JSON spacing."""
    try:
        data = log.read_bytes()
    except OSError:
        return 0
    return data.count(b'"event":"call"') + data.count(b'"event": "call"')


def _prefixes() -> list[str]:
    paths = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    return sorted((p.rstrip("/") + "/" for p in paths | {str(REPO)}), key=len, reverse=True)


def _label(func: tuple[str, int, str], prefixes: list[str]) -> str:
    text = pstats.func_std_string(func)
    for prefix in prefixes:
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _idle_ancestors(entries: dict, idle_funcs: list) -> set:
    """The functions that (directly or not) call the I/O wait: their cumulative time includes idle time."""
    seen: set = set()
    frontier = list(idle_funcs)
    while frontier:
        func = frontier.pop()
        for caller in entries.get(func, (0, 0, 0, 0, {}))[4]:
            if caller not in seen:
                seen.add(caller)
                frontier.append(caller)
    return seen


def summary(stats: pstats.Stats, metas: list[dict], calls: int, title: str) -> str:
    """The text summary: totals, then the top functions by cumulative and by own time, the I/O wait left out."""
    entries = stats.stats  # type: ignore[attr-defined]
    idle_funcs = [func for func in entries if pstats.func_std_string(func) == IDLE]
    total = sum(tt for (_cc, _nc, tt, _ct, _callers) in entries.values())
    idle = sum(entries[func][2] for func in idle_funcs)
    busy = max(total - idle, 1e-9)
    waiting = _idle_ancestors(entries, idle_funcs)
    cpu = sum(m.get("cpu_s", 0.0) for m in metas)
    wall = sum(m.get("wall_s", 0.0) for m in metas)
    since = sorted({m.get("since", "?") for m in metas})
    pids = ", ".join(str(m.get("pid", "?")) for m in metas)
    per_call = f"{cpu * 1e6 / calls:,.0f} µs CPU per call (under cProfile)" if calls else "no access line in the log"
    lines = [
        f"interlink gateway profile: {title}",
        f"cProfile (deterministic, wall clock), {len(metas)} process(es): pid {pids}; profiled from {' / '.join(since)}"
        " to the end of the drain after SIGTERM",
        f"CPU (user+sys) {cpu:.2f} s in {wall:.2f} s of wall time (summed over the processes); profiled {total:.2f} s",
        f"= busy {busy:.2f} s + waiting for I/O {idle:.2f} s ({IDLE}, left out below)",
        f"calls served (access lines in the gateway's log): {calls:,}; {per_call}",
        "cProfile inflates the CPU per call several times: compare shares between functions, not these totals with",
        "a run without --profile. % = share of the busy time; µs/call = per call served; * = cumulative time",
        "without the I/O wait below it (the function waits for I/O through what it calls).",
    ]
    if busy > 1.05 * cpu > 0:
        lines += [
            f"The busy time exceeds the CPU time by {busy - cpu:.2f} s: cProfile's clock runs on while the gateway is",
            "runnable but not running (other processes on the machine; typically right after a socket send() wakes",
            "the receiving process), and that time is counted in whatever function was running then.",
        ]
    lines.append("")
    prefixes = _prefixes()
    head = f"{'ncalls':>12} {'own s':>8} {'own %':>6} {'own µs/call':>11} {'cum s':>8} {'cum %':>7} {'cum µs/call':>11}  function"
    rows = [
        (func, cc, nc, tt, (ct - min(ct, idle) if func in waiting else ct), func in waiting)
        for func, (cc, nc, tt, ct, _callers) in entries.items()
        if func not in idle_funcs
    ]

    def us(value: float) -> str:
        return f"{value * 1e6 / calls:11.2f}" if calls else f"{'-':>11}"

    def table(index: int, what: str) -> list[str]:
        out = [f"top {TOP} by {what}:", head]
        for func, cc, nc, tt, ct, star in sorted(rows, key=lambda row: row[index], reverse=True)[:TOP]:
            ncalls = f"{nc}/{cc}" if nc != cc else str(nc)
            out.append(
                f"{ncalls:>12} {tt:8.3f} {100 * tt / busy:5.1f}% {us(tt)} {ct:8.3f}{'*' if star else ' '}"
                f"{100 * ct / busy:5.1f}% {us(ct)}  {_label(func, prefixes)}"
            )
        return out + [""]

    lines += table(4, "cumulative time (the function and what it calls)")
    lines += table(3, "own time (tottime: the function's own code)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
