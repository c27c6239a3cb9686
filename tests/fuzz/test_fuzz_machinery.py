"""The fuzz suite's own machinery can fail: hangs are caught (even when swallowed), the input count is
proven rather than assumed, forked workers report what went wrong, and the mutator keeps to its bounds."""

from __future__ import annotations

import random
import time

import pytest

from . import conftest
from .conftest import InputTimeout, Mutator, TimeGuard, cuts, fuzz_loop, guarded


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spin_and_swallow(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        try:
            spin(end - time.perf_counter())
        except Exception:  # code under test that catches everything must not hide a hang
            pass


def test_time_guard_stops_a_hang():
    with TimeGuard(0.1) as guard, pytest.raises(InputTimeout):
        guard.call(spin, 5)


def test_time_guard_sees_a_swallowed_alarm():
    with TimeGuard(0.1) as guard, pytest.raises(InputTimeout):
        guard.call(spin_and_swallow, 0.3)


def test_time_guard_lets_quick_calls_through():
    with TimeGuard(0.5) as guard:
        assert [guard.call(sum, [1, 2]) for _ in range(1000)] == [3] * 1000


def test_guarded_turns_anything_into_a_failure():
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        guarded(lambda: 1 / 0)


def test_loop_counts_are_asserted_not_assumed():
    with pytest.raises(AssertionError, match="only .* of 1000000 inputs"):
        fuzz_loop("machinery-cap", 1_000_000, lambda rng: rng.random(), lambda x: spin(0.001), time_cap=0.3, seed=1)


def test_loop_names_the_failing_input():
    def check(value: int) -> None:
        if value == 13:
            raise KeyError(value)

    with pytest.raises(AssertionError, match=r"(?s)input #\d+ failed with KeyError.*seed 5.*input: 13"):
        fuzz_loop("machinery-fail", 10_000, lambda rng: rng.randrange(50), check, time_cap=10, seed=5)


def test_forked_workers_share_the_count_and_report_failures():
    report = fuzz_loop("machinery-forked", 1001, lambda rng: rng.random(), lambda x: None, time_cap=30, workers=2)
    assert report.inputs == 1001
    with pytest.raises(AssertionError, match="ValueError"):
        fuzz_loop("machinery-forked-fail", 100, lambda rng: rng.random(), lambda x: int("x"), time_cap=30, workers=2)


def test_forked_workers_hit_their_memory_cap(monkeypatch):
    monkeypatch.setattr(conftest, "MEMORY_CAP", 256 << 20)

    def hog(_: object) -> None:
        blocks = [bytearray(64 << 20) for _ in range(16)]  # 1 GiB, far over the cap
        assert blocks

    with pytest.raises(AssertionError, match="MemoryError"):
        fuzz_loop("machinery-memory", 1, lambda rng: None, hog, time_cap=30, workers=2)


def test_mutator_and_cuts_stay_in_bounds():
    rng = random.Random(3)
    mutator = Mutator(rng, [b"seed-one", b"\x00\x01\x02\x03"], [b"TOKEN"])
    for _ in range(2000):
        data = mutator.input()
        assert isinstance(data, bytes) and len(data) < 10_000
        pieces = cuts(rng, data)
        assert b"".join(pieces) == data
