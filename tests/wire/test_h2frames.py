"""interlink.wire.h2frames: the HTTP/2 frame constants (RFC 9113 3.4, 6) and FloodBudget.

The scenarios of the FrameScanner that used to live here (reads cut anywhere, partial frames and header
blocks, oversized frames, interrupted and oversized header blocks, the flood budget against real frames,
random bytes) are tests of interlink.wire.h2conn now: tests/wire/test_h2conn.py ("ported:" docstrings).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.wire import h2frames
from interlink.wire.h2frames import FloodBudget


def test_the_client_preface():
    assert h2frames.PREFACE == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert len(h2frames.PREFACE) == 24


@pytest.mark.parametrize(("name", "value"), [
    ("DATA", 0x0), ("HEADERS", 0x1), ("PRIORITY", 0x2), ("RST_STREAM", 0x3), ("SETTINGS", 0x4),
    ("PUSH_PROMISE", 0x5), ("PING", 0x6), ("GOAWAY", 0x7), ("WINDOW_UPDATE", 0x8), ("CONTINUATION", 0x9),
    ("FLAG_END_STREAM", 0x1), ("FLAG_ACK", 0x1), ("FLAG_END_HEADERS", 0x4),
])
def test_frame_types_and_flags(name, value):  # RFC 9113 6.1-6.10
    assert getattr(h2frames, name) == value


def test_the_budget_starts_full_and_a_flood_empties_it():
    budget = FloodBudget(3, 1, 0.0)
    assert [budget.spend(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.tokens == 0.0
    assert budget.spend(0.0) is False  # and stays empty without time or useful frames


def test_the_budget_refills_with_time_when_short():
    budget = FloodBudget(10, 5, 0.0)
    for _ in range(10):
        assert budget.spend(0.0)
    assert not budget.spend(0.1)  # 0.5 token: not one yet
    assert budget.spend(0.2)  # 0.5 + 0.5 = 1 token
    assert not budget.spend(0.2)
    assert [budget.spend(10.0) for _ in range(11)] == [True] * 10 + [False]  # refilled to the burst, no more


def test_the_budget_refills_lazily_at_most_once_a_second_when_not_short():
    budget = FloodBudget(10, 5, 0.0)
    for _ in range(5):
        budget.spend(0.0)
    assert budget.tokens == 5.0
    budget.spend(0.9)  # less than a second since the last refill: no refill
    assert budget.tokens == 4.0
    budget.spend(1.5)  # 1.5 s: 7.5 tokens more, capped at the burst, then one spent
    assert budget.tokens == 9.0


def test_useful_frames_earn_tokens_up_to_the_burst():
    budget = FloodBudget(10, 0, 0.0)
    for _ in range(10):
        budget.spend(0.0)
    assert not budget.spend(0.0)
    budget.earn()
    assert budget.spend(0.0) and not budget.spend(0.0)
    budget.earn(3)
    assert budget.tokens == 3.0
    budget.earn(100)
    assert budget.tokens == 10.0


@given(st.lists(st.tuples(st.sampled_from(["spend", "earn"]), st.floats(0, 5), st.integers(1, 5)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_the_budget_stays_within_zero_and_the_burst(steps):
    budget = FloodBudget(20, 3, 0.0)
    now = 0.0
    for action, delay, count in steps:
        now += delay
        if action == "spend":
            before = budget.tokens
            if not budget.spend(now):
                assert before < 1.0  # a refusal only when the bucket was short
        else:
            budget.earn(count)
        assert 0.0 <= budget.tokens <= 20.0
