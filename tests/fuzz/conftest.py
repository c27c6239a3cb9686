"""Shared machinery of the fuzz suite.

- `TimeGuard`: a per-input watchdog (SIGALRM). An input that runs longer than `INPUT_SECONDS` fails the
  test as a hang, even if the code under test swallows the exception the alarm raises.
- `fuzz_loop`: a seeded, counted input loop, bounded in count and in time. It asserts at the end that
  every planned input ran, so "100,000 inputs" is a checked number, not a hope. Any exception that the
  target's check lets through fails the test with the seed, the input number and the input itself. The
  slowest full-size loops (Hessian, site files) run in two forked workers, one per core, each with a cap
  on its address space.
- `Mutator`: havoc-style byte mutations (bit flips, boundary integers, insertions, deletions, clones,
  splices, dictionary tokens) of valid seed inputs, plus plain random bytes; `cuts` splits a stream at
  random points.
- `SIZES` / `given_settings`: the two sizes of every test, "quick" (default run) and "full"
  (`@pytest.mark.slow`), and the hypothesis settings for each (no example database, no deadline).

Rerun a failing loop with the seed it prints: INTERLINK_FUZZ_SEED=<seed> .venv/bin/python -m pytest ...
A summary of inputs and seconds per target is printed at the end of the run.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import signal
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings

T = TypeVar("T")

INPUT_SECONDS = 2.0  # one input running longer than this is a hang
FULL_INPUTS = 100_000  # per target, in the slow (full) size
SEED_ENV = "INTERLINK_FUZZ_SEED"

SIZES = [
    pytest.param("quick", id="quick"),
    pytest.param("full", id="full", marks=pytest.mark.slow),
]


def given_settings(size: str, *, quick: int, full: int) -> settings:
    """Hypothesis settings for one test of the given size: `quick` or `full` examples."""
    if size == "full":
        return settings(
            max_examples=full,
            derandomize=False,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    return settings(
        max_examples=quick,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def fuzz_seed() -> int:
    text = os.environ.get(SEED_ENV)
    return int(text, 0) if text else random.SystemRandom().randrange(1 << 32)


# --- hangs ---------------------------------------------------------------------------------------------------


class InputTimeout(Exception):
    """One input ran longer than the time guard allows."""


class TimeGuard:
    """Runs calls under a SIGALRM watchdog of `seconds` each (main thread only, as pytest runs tests).

    The alarm raises `InputTimeout` inside the running code and also sets a flag that `call` checks after
    the call returns, so that code which catches the exception (or a C call that only returns later)
    still fails the input.
    """

    def __init__(self, seconds: float = INPUT_SECONDS) -> None:
        self.seconds = seconds
        self._fired = False
        self._previous: object = None

    def __enter__(self) -> TimeGuard:
        self._previous = signal.signal(signal.SIGALRM, self._on_alarm)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)  # type: ignore[arg-type]

    def _on_alarm(self, signum: int, frame: object) -> None:
        self._fired = True
        raise InputTimeout(f"one input ran for more than {self.seconds} s: a hang")

    def call(self, fn: Callable[..., T], *args: object) -> T:
        self._fired = False
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        try:
            return fn(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            if self._fired:
                raise InputTimeout(f"one input ran for more than {self.seconds} s: a hang")


def guarded(fn: Callable[..., T], *args: object, seconds: float = INPUT_SECONDS) -> T:
    """One call under a fresh `TimeGuard` (for hypothesis examples); what escapes fails the example."""
    with TimeGuard(seconds) as guard:
        try:
            return guard.call(fn, *args)
        except Exception as exc:
            raise AssertionError(failure_text(exc)) from None


def failure_text(exc: BaseException, frames: int = 12) -> str:
    """The exception and its innermost frames, as text.

    Failures are re-raised as AssertionError with this text and without the original traceback: pytest
    cannot render some tracebacks of a RecursionError (INTERNALERROR, which ends the whole run), and the
    innermost frames are where the bug is anyway.
    """
    try:
        where = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)[-frames:]))
    except Exception as format_error:  # never let the report hide the failure
        where = f"(no traceback: {format_error!r})\n"
    return f"{type(exc).__name__}: {str(exc)[:2000]}\n{where}"


# --- counted loops -------------------------------------------------------------------------------------------

_LOOPS: dict[str, list[tuple[int, float]]] = defaultdict(list)  # target -> (inputs, seconds) per loop run
_TEST_SECONDS: dict[str, float] = defaultdict(float)  # test module -> seconds of its tests (setup+call)


def describe(case: object, limit: int = 3000) -> str:
    if isinstance(case, bytes | bytearray):
        text = f"bytes.fromhex({bytes(case).hex()!r})  # {len(case)} bytes"
    else:
        text = repr(case)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


@dataclass(frozen=True)
class LoopReport:
    target: str
    inputs: int
    seconds: float
    seed: int


def fuzz_loop(
    target: str,
    inputs: int,
    make_input: Callable[[random.Random], T],
    check: Callable[[T], object],
    *,
    time_cap: float,
    seed: int | None = None,
    workers: int = 1,
) -> LoopReport:
    """Runs `check(make_input(rng))` `inputs` times, each under the time guard.

    `check` must let through only what it does not expect (it catches the target's declared exceptions
    itself); anything that escapes fails the test here, naming the seed, the input number and the input.
    The loop also stops at `time_cap` seconds, and then fails: the count is asserted, not assumed.

    With `workers` > 1 the inputs are shared out to that many forked processes (seeds `seed`,
    `seed + 1`, ...), each under an address-space cap of `MEMORY_CAP` bytes more than it started with, so
    that an input that eats memory fails as a MemoryError instead of taking the machine down.
    """
    seed = fuzz_seed() if seed is None else seed
    start = time.perf_counter()
    deadline = start + time_cap
    if workers <= 1:
        done = _loop(target, inputs, seed, make_input, check, deadline, seed)
    else:
        done = _forked_loops(target, inputs, seed, make_input, check, deadline, workers)
    seconds = time.perf_counter() - start
    assert done >= inputs, f"{target}: only {done} of {inputs} inputs ran within the {time_cap:.0f} s cap"
    _LOOPS[target].append((done, seconds))
    return LoopReport(target, done, seconds, seed)


def _loop(
    target: str,
    inputs: int,
    seed: int,
    make_input: Callable[[random.Random], T],
    check: Callable[[T], object],
    deadline: float,
    rerun_seed: int,
) -> int:
    rng = random.Random(seed)
    done = 0
    with TimeGuard() as guard:
        for index in range(inputs):
            case = make_input(rng)
            try:
                guard.call(check, case)
            except Exception as exc:
                raise AssertionError(
                    f"{target}: input #{index} failed with {failure_text(exc)}"
                    f"(seed {seed}; rerun with {SEED_ENV}={rerun_seed})\ninput: {describe(case)}"
                ) from None
            done += 1
            if index % 128 == 127 and time.perf_counter() > deadline:
                break
    return done


MEMORY_CAP = 2 << 30  # bytes of address space a forked loop worker may add to what it started with


def _cap_memory(extra: int) -> None:
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + extra
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _forked_loops(
    target: str,
    inputs: int,
    seed: int,
    make_input: Callable[[random.Random], T],
    check: Callable[[T], object],
    deadline: float,
    workers: int,
) -> int:
    context = multiprocessing.get_context("fork")  # the closures are inherited, not pickled
    shares = [inputs // workers + (1 if k < inputs % workers else 0) for k in range(workers)]
    running = []
    for k, share in enumerate(shares):
        receiver, sender = context.Pipe(duplex=False)

        def work(k: int = k, share: int = share, sender=sender) -> None:
            try:
                _cap_memory(MEMORY_CAP)
                sender.send((_loop(target, share, seed + k, make_input, check, deadline, seed), None))
            except BaseException as exc:  # reported to the parent, which fails the test with it
                sender.send((0, "".join(traceback.format_exception(exc))))
            finally:
                sender.close()

        process = context.Process(target=work, name=f"fuzz-{target}-{k}", daemon=True)
        process.start()
        sender.close()
        running.append((process, receiver, seed + k))
    done = 0
    failures = []
    for process, receiver, worker_seed in running:
        wait = max(deadline - time.perf_counter(), 0) + 60
        try:
            count, failure = receiver.recv() if receiver.poll(wait) else (0, "sent nothing in time")
        except EOFError:  # it died without a word (a crash in C code, or killed)
            count, failure = 0, "died"
        done += count
        if failure:
            process.join(1)
            failures.append(f"worker with seed {worker_seed} (exit code {process.exitcode}): {failure}")
        receiver.close()
        process.join(10)
        if process.is_alive():
            process.kill()  # our own worker, by its handle
            process.join()
    if failures:
        raise AssertionError(f"{target}: " + "\n".join(failures))
    return done


# --- mutation ------------------------------------------------------------------------------------------------

_BOUNDARIES = (
    0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 0x7F, 0x80, 0xFF, 0x100, 0x3FF, 0x400, 0x7FFF, 0x8000, 0xFFFF,
    0x10000, 0xFFFFFF, 0x1000000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63,
)  # fmt: skip


class Mutator:
    """Havoc-style mutations of seed inputs, with the target's dictionary `tokens` (keywords, tags)."""

    def __init__(self, rng: random.Random, seeds: Sequence[bytes], tokens: Sequence[bytes] = ()) -> None:
        self.rng = rng
        self.seeds = [bytes(seed) for seed in seeds if seed]
        self.tokens = [bytes(token) for token in tokens if token] or [b"\x00"]

    def junk(self, max_len: int = 64) -> bytes:
        rng = self.rng
        size = rng.choice((0, 1, 2, 3, 5, 8, rng.randrange(max_len + 1), rng.randrange(max_len + 1)))
        if rng.random() < 0.3:  # a few distinct bytes, repeated: finds more structure than noise does
            alphabet = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
            return bytes(rng.choice(alphabet) for _ in range(size))
        return rng.randbytes(size)

    def boundary(self, width: int) -> bytes:
        rng = self.rng
        value = rng.choice(_BOUNDARIES)
        value = (value + rng.choice((-1, 0, 0, 1))) % (1 << (8 * width))
        if rng.random() < 0.3:
            value = (-value) % (1 << (8 * width))
        return value.to_bytes(width, rng.choice(("big", "big", "little")))

    def mutate(self, data: bytes, rounds: int | None = None) -> bytes:
        rng = self.rng
        out = bytearray(data)
        for _ in range(rounds if rounds is not None else rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
            size = len(out)
            op = rng.randrange(13)
            pos = rng.randrange(size + 1)
            if op == 0 and size:  # flip a bit
                pos = rng.randrange(size)
                out[pos] ^= 1 << rng.randrange(8)
            elif op == 1 and size:  # random byte
                out[rng.randrange(size)] = rng.randrange(256)
            elif op == 2 and size:  # boundary byte
                out[rng.randrange(size)] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, 0x10, 0x20, 0x40, 0x7E))
            elif op == 3:  # boundary integer over the bytes at pos
                width = rng.choice((1, 2, 2, 4, 4, 8))
                out[pos : pos + width] = self.boundary(width)
            elif op == 4 and size:  # small arithmetic
                pos = rng.randrange(size)
                out[pos] = (out[pos] + rng.choice((-3, -2, -1, 1, 2, 3, 16, -16))) % 256
            elif op == 5 and size:  # delete a range
                end = min(size, pos + rng.choice((1, 1, 2, 4, rng.randrange(1, size + 1))))
                del out[pos:end]
            elif op == 6:  # insert junk
                out[pos:pos] = self.junk(16)
            elif op == 7 and size:  # clone a range somewhere else (repeats structure: nesting, lists)
                start = rng.randrange(size)
                piece = out[start : start + rng.randint(1, 32)]
                out[pos:pos] = piece * rng.choice((1, 1, 2, 3, 8))
            elif op == 8:  # insert a token
                out[pos:pos] = rng.choice(self.tokens)
            elif op == 9:  # overwrite with a token
                token = rng.choice(self.tokens)
                out[pos : pos + len(token)] = token
            elif op == 10 and self.seeds:  # splice with another seed
                other = rng.choice(self.seeds)
                out = out[:pos] + other[rng.randrange(len(other) + 1) :]
            elif op == 11 and size:  # truncate
                del out[rng.randrange(size) :]
            elif op == 12:  # append a seed or junk
                out += rng.choice(self.seeds) if self.seeds and rng.random() < 0.5 else self.junk(16)
        return bytes(out)

    def input(self) -> bytes:
        """10% junk, 10% a seed as it is, 80% a mutated seed."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.1 or not self.seeds:
            return self.junk(rng.choice((16, 64, 256)))
        seed = rng.choice(self.seeds)
        return seed if roll < 0.2 else self.mutate(seed)


def cuts(rng: random.Random, data: bytes, max_cuts: int = 6) -> list[bytes]:
    """`data` split at up to `max_cuts` random points (empty pieces included)."""
    if not data:
        return [b""]
    if rng.random() < 0.15:
        return [data[i : i + 1] for i in range(len(data))] if len(data) <= 256 else [data]
    points = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, max_cuts)))
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# --- the per-target summary ----------------------------------------------------------------------------------


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/fuzz/" in report.nodeid.replace("\\", "/") and report.when in ("setup", "call", "teardown"):
        module = report.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        _TEST_SECONDS[module] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TEST_SECONDS and not _LOOPS:
        return
    terminalreporter.section("fuzz summary")
    for module, seconds in sorted(_TEST_SECONDS.items()):
        terminalreporter.write_line(f"{module}: {seconds:.1f} s in all")
    for target, runs in sorted(_LOOPS.items()):
        inputs = sum(count for count, _ in runs)
        seconds = sum(spent for _, spent in runs)
        terminalreporter.write_line(f"  loop {target}: {inputs} inputs in {seconds:.1f} s")
