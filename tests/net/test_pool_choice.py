"""How a provider group picks: outlier ejection (exports[].outlier: consecutive failures eject a pool for a while,
never more than the cap, skipped until then or used anyway when every pool is ejected) and routing stages
(exports[].routing: target_zone, unit, nearest, weighted)."""

from __future__ import annotations

import trio

from interlink.config import OutlierConfig
from interlink.net import trips
from interlink.net.pool import Outliers, PoolGroup


class FakePool:
    def __init__(self, name: str) -> None:
        self.name = name
        self.endpoint = type("Endpoint", (), {"attributes": {"pool": self}})()

    def pick(self):
        return self.endpoint


def group_of(count: int, policy: OutlierConfig) -> tuple[PoolGroup, list[FakePool]]:
    pools = [FakePool(f"p{index}") for index in range(count)]
    group = PoolGroup("providers", pools)  # type: ignore[arg-type]
    group.outliers = Outliers(policy)
    return group, pools


def picks(group: PoolGroup, count: int) -> list[str]:
    return [group.pick().attributes["pool"].name for _ in range(count)]  # type: ignore[union-attr]


async def test_consecutive_failures_eject_a_pool_until_its_time_is_up(autojump_clock):
    trips.TRIPS.clear()
    group, pools = group_of(3, OutlierConfig(consecutive_failures=3, eject_s=10, max_ejected_percent=50))
    bad = pools[1].endpoint
    group.outcome(bad, True)
    group.outcome(bad, True)
    group.outcome(bad, False)  # a success in between: the count starts again
    for _ in range(2):
        group.outcome(bad, True)
    assert set(picks(group, 6)) == {"p0", "p1", "p2"}  # two in a row: not yet
    group.outcome(bad, True)
    assert set(picks(group, 6)) == {"p0", "p2"} and trips.TRIPS[trips.OUTLIER_EJECTION] == 1
    await trio.sleep(9.9)
    assert "p1" not in picks(group, 6)
    await trio.sleep(0.2)
    assert set(picks(group, 6)) == {"p0", "p1", "p2"}  # back, on probation
    group.outcome(bad, True)
    assert "p1" in picks(group, 6)  # its count started again from zero


async def test_never_more_than_the_cap_is_ejected(autojump_clock):
    group, pools = group_of(4, OutlierConfig(consecutive_failures=1, eject_s=30, max_ejected_percent=50))
    for pool in pools:
        group.outcome(pool.endpoint, True)
    assert group.outliers.ejections == 2  # type: ignore[union-attr]
    assert len(set(picks(group, 8))) == 2


async def test_one_of_two_may_always_be_ejected_and_zero_percent_ejects_none(autojump_clock):
    group, pools = group_of(2, OutlierConfig(consecutive_failures=1, eject_s=30, max_ejected_percent=10))
    group.outcome(pools[0].endpoint, True)
    assert set(picks(group, 4)) == {"p1"}
    group, pools = group_of(1, OutlierConfig(consecutive_failures=1, eject_s=30, max_ejected_percent=100))
    group.outcome(pools[0].endpoint, True)
    assert picks(group, 2) == ["p0", "p0"]  # ejected or not, the only provider still serves


async def test_when_every_pool_is_ejected_they_are_used_anyway(autojump_clock):
    group, pools = group_of(2, OutlierConfig(consecutive_failures=1, eject_s=30, max_ejected_percent=100))
    for pool in pools:
        group.outcome(pool.endpoint, True)
    assert group.outliers.ejections == 2  # type: ignore[union-attr]
    assert picks(group, 1)[0] in {"p0", "p1"}


# --- routing stages (exports[].routing) ------------------------------------------------------------------

from interlink.config import HeaderStage, ProviderTags  # noqa: E402
from interlink.net.pool import Router  # noqa: E402


class UpPool(FakePool):
    up = True


def routed(stages: tuple[str, ...], zone: str | None = "hz-a", unit: str | None = None):
    pools = [UpPool("near"), UpPool("far"), UpPool("untagged")]
    group = PoolGroup("providers", pools)  # type: ignore[arg-type]
    group.tags = {id(pools[0]): ProviderTags("hz-a", "u00", 80), id(pools[1]): ProviderTags("hz-b", "u01", 20)}
    group.router = Router(stages, zone, unit)
    return group, pools


def routed_picks(group: PoolGroup, count: int, target_zone=None, unit=None, headers=None, avoid=None) -> list[str]:
    wants = group.router.wants(target_zone, unit, (headers or {}).get)  # type: ignore[union-attr]
    return [group.pick_routed(wants, avoid).attributes["pool"].name for _ in range(count)]  # type: ignore[union-attr]


async def test_each_stage_narrows_and_a_stage_that_would_leave_none_is_skipped(autojump_clock):
    group, _ = routed(("target_zone", "unit", "nearest"))
    assert set(routed_picks(group, 6)) == {"near"}  # nearest: hz-a
    assert set(routed_picks(group, 6, target_zone="hz-b")) == {"far"}
    assert set(routed_picks(group, 6, unit="u01")) == {"far"}  # nearest would leave none after it: skipped
    assert set(routed_picks(group, 6, target_zone="mars")) == {"near"}
    group, _ = routed(("unit",), unit="u01")  # the gateway's own unit when the call names none
    assert set(routed_picks(group, 6)) == {"far"}
    group, _ = routed(("nearest",), zone=None)  # no zone of ours: every provider
    assert set(routed_picks(group, 9)) == {"near", "far", "untagged"}


async def test_weighted_follows_the_weights_and_skips_what_is_down_or_ejected(autojump_clock):
    group, pools = routed(("weighted",))
    counts = {name: 0 for name in ("near", "far", "untagged")}
    for name in routed_picks(group, 4000):
        counts[name] += 1
    assert 0.34 < counts["near"] / 4000 < 0.46 and 0.06 < counts["far"] / 4000 < 0.14  # 80 / 20 / 100 of 200
    pools[2].up = False
    group.outliers = Outliers(OutlierConfig(1, 30, 50))
    group.outcome(pools[0].endpoint, True)  # near ejected
    assert set(routed_picks(group, 6)) == {"far"}


async def test_a_header_stage_sends_matching_calls_to_its_group_and_leaves_the_others_alone(autojump_clock):
    pools = [UpPool("stable"), UpPool("canary"), UpPool("other-canary")]
    group = PoolGroup("providers", pools)  # type: ignore[arg-type]
    group.tags = {id(pools[0]): ProviderTags(weight=100), id(pools[1]): ProviderTags(weight=0, group="canary"),
                  id(pools[2]): ProviderTags(weight=0, group="beta")}
    group.router = Router((HeaderStage("x-release", frozenset({"canary", "c"}), "canary"), "weighted"), None, None)
    assert group.router.headers == ("x-release",)
    assert set(routed_picks(group, 20, headers={"x-release": "canary"})) == {"canary"}
    assert set(routed_picks(group, 20, headers={"x-release": "c"})) == {"canary"}
    assert set(routed_picks(group, 50, headers={"x-release": "stable"})) == {"stable"}  # weight 0: never by weight
    assert set(routed_picks(group, 50)) == {"stable"}
    pools[1].up = False  # the group has none up: the stage is skipped
    assert set(routed_picks(group, 20, headers={"x-release": "canary"})) == {"stable"}


async def test_a_retry_avoids_the_pool_it_failed_on_while_another_is_a_candidate(autojump_clock):
    group, pools = routed(("weighted",))
    assert "near" not in routed_picks(group, 200, avoid=pools[0])
    assert "far" not in [group.pick(pools[1]).attributes["pool"].name for _ in range(30)]  # type: ignore[union-attr]
    group, pools = routed(("target_zone",))
    assert set(routed_picks(group, 6, target_zone="hz-b", avoid=pools[1])) == {"far"}  # the only candidate
    single = PoolGroup("providers", [pools[0]])
    assert single.pick(pools[0]).attributes["pool"].name == "near"  # type: ignore[union-attr]  (nothing else)


async def test_remembered_routes_follow_new_tags_and_stay_bounded(autojump_clock):
    from interlink.net.pool import ROUTES_KEPT

    group, pools = routed(("target_zone", "nearest"))
    assert set(routed_picks(group, 6)) == {"near"}
    group.tags = {id(pools[0]): ProviderTags("hz-b"), id(pools[1]): ProviderTags("hz-a")}  # a registry change
    assert set(routed_picks(group, 6)) == {"far"}
    for index in range(ROUTES_KEPT * 3):  # zones a caller makes up: neither table grows past its bound
        routed_picks(group, 1, target_zone=f"zone-{index}")
    assert len(group._routes[3]) <= ROUTES_KEPT and len(group.router._wants) <= ROUTES_KEPT
    pools[1].up = False  # the remembered choice is down: the stages run again over what is up
    assert set(routed_picks(group, 6)) == {"near", "untagged"}
