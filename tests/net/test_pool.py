"""PoolGroup's fair share: one caller connection cannot take an upstream away from the others."""

from __future__ import annotations

from interlink.net.pool import HEADROOM, MIN_SHARE, ConnectionPool, PoolGroup


class Slots:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.usable = True


def group(*slots: int) -> PoolGroup:
    pool = ConnectionPool("p", connect=None)  # type: ignore[arg-type]
    pool.endpoints = [Slots(n) for n in slots]  # type: ignore[list-item]
    return PoolGroup("g", [pool])


def take(g: PoolGroup, caller: str, count: int) -> int:
    return sum(g.acquire(caller) for _ in range(count))


def test_a_caller_alone_leaves_headroom_for_newcomers():
    g = group(256, 256)
    assert take(g, "attacker", 10_000) == 512 - 512 // HEADROOM
    assert take(g, "legit", 20) == MIN_SHARE  # a newcomer gets in at once (the headroom)
    assert not g.acquire("attacker")  # two callers now: the attacker is far above its half
    for _ in range(448 - 256):  # as the attacker's calls finish, it is held to its half ...
        g.release("attacker")
    assert not g.acquire("attacker")
    assert take(g, "legit", 100) > 50  # ... and the other caller gets the rest


def test_two_callers_share_and_release_gives_back():
    g = group(100)
    assert take(g, "a", 60) == 60
    held_b = take(g, "b", 60)
    assert MIN_SHARE <= held_b < 60  # b gets what is left above the headroom
    assert g.held == 60 + held_b <= 100 - 100 // HEADROOM
    for _ in range(60):
        g.release("a")
    assert "a" not in g.holders and g.held == held_b
    assert take(g, "b", 100) > 0


def test_small_callers_always_get_their_minimum():
    g = group(16)
    assert take(g, "big", 100) == 16 - 16 // HEADROOM
    assert take(g, "small", MIN_SHARE) >= 1


def test_releasing_an_unknown_caller_is_harmless():
    g = group(10)
    g.release("nobody")
    assert g.held == 0 and g.holders == {}
