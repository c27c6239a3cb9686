"""Circuit breaking (max_in_flight) and rate limits (token buckets per peer site and app) in the call core, in
memory (MockClock): refused at once with RESOURCE_EXHAUSTED (Bolt: SERVER_THREADPOOL_BUSY), audited on the peer
port, counted as limit trips, other apps and services untouched, slots given back whatever the outcome."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio

from interlink.config import AclRule
from interlink.gateway.limits import MAX_BUCKETS, CallLimits, TokenBucket
from interlink.net import trips
from interlink.routes import ImportRoute, bolt_unique_name
from interlink.wire import bolt
from tests.gateway.harness import (
    APP, BOLT, DOMAIN, PEER, PEER_DOMAIN, RESPONSE_HEAD, TRIPLE, bolt_outcome, bolt_request, export, grpc_trailers,
    h2_request_headers, make_snapshot, open_world, wait_until,
)


def limited_snapshot(*, rate: float | None = None, burst: float = 1.0, per_method: bool = False,
                     max_in_flight: int | None = None, apps: frozenset[str] | None = None):
    rule = AclRule(apps=apps, rate=rate, burst=burst, rate_per_method=per_method)
    exports = (export(TRIPLE, allow={PEER: rule}, max_in_flight=max_in_flight),
               export(BOLT, "bolt", codec="protobuf", allow={PEER: rule}, max_in_flight=max_in_flight))
    imports = ((ImportRoute(TRIPLE, PEER, PEER_DOMAIN, max_in_flight=max_in_flight), "triple"),
               (ImportRoute(BOLT, PEER, PEER_DOMAIN, max_in_flight=max_in_flight), "bolt"))
    return make_snapshot(exports=exports, imports=imports)


async def call_once(world, *, app: str = APP, method: str = "Say", answer: bool = True) -> tuple[str, str] | int:
    sid = world.caller.open(h2_request_headers(TRIPLE, method, authority=DOMAIN, app=app,
                                               peer=world.ingress == "peer"))
    world.caller.send_message(sid, b"hi", end=True)
    if not answer:
        return sid
    await wait_until(lambda: world.caller.stream(sid).outcome is not None or world.provider.requests)
    if world.caller.stream(sid).outcome is None:
        provider_sid = world.provider.requests.pop()
        world.provider.send_headers(provider_sid, RESPONSE_HEAD)
        world.provider.send_message(provider_sid, b"ok")
        world.provider.send_trailers(provider_sid, grpc_trailers())
        await wait_until(lambda: world.caller.stream(sid).outcome is not None)
    return world.caller.stream(sid).outcome


def test_a_token_bucket_refills_at_its_rate_up_to_its_burst():
    bucket = TokenBucket(rate=10.0, burst=3.0, tokens=3.0, updated=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True  # one token after 0.1 s
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never more than the burst


def test_the_bucket_table_is_bounded_and_a_new_rate_starts_afresh():
    limits = CallLimits()
    for index in range(MAX_BUCKETS + 5):
        limits.bucket(("svc", PEER, f"app-{index}"), 1.0, 1.0, 0.0).take(0.0)
    assert len(limits) == MAX_BUCKETS
    key = ("svc", PEER, f"app-{MAX_BUCKETS + 4}")
    assert limits.bucket(key, 1.0, 1.0, 0.0).take(0.0) is False  # kept: spent
    assert limits.bucket(key, 2.0, 1.0, 0.0).take(0.0) is True  # a reload's new rate: a fresh bucket


async def test_a_rate_admits_its_burst_then_its_rate_and_refuses_the_rest(autojump_clock):
    trips.TRIPS.clear()
    async with open_world("peer", "h2", snapshot=limited_snapshot(rate=5.0, burst=2.0)) as world:
        outcomes = [await call_once(world) for _ in range(3)]
        assert outcomes[:2] == [("OK", ""), ("OK", "")]
        assert outcomes[2] == ("RESOURCE_EXHAUSTED", "app shop of site site-a is over its rate on service demo.Echo: "
                               "5/s, burst 2 (site site-b's limit); retry later")
        await trio.sleep(0.2)  # one token back
        assert await call_once(world) == ("OK", "")
        denied = [entry for entry in world.audits() if entry["decision"] == "deny"]
        assert len(denied) == 1 and "over its rate" in denied[0]["reason"]
        assert world.core.metrics.audit[(PEER, "deny", "rate_limit")] == 1
        assert trips.TRIPS[trips.RATE_LIMIT] == 1
        world.assert_clean()


async def test_each_app_has_its_own_bucket_and_per_method_splits_it(autojump_clock):
    async with open_world("peer", "h2", snapshot=limited_snapshot(rate=1.0, per_method=True)) as world:
        assert await call_once(world, app="a", method="Say") == ("OK", "")
        assert (await call_once(world, app="a", method="Say"))[0] == "RESOURCE_EXHAUSTED"
        assert await call_once(world, app="a", method="Other") == ("OK", "")
        assert await call_once(world, app="b", method="Say") == ("OK", "")


async def test_an_app_the_acl_refuses_spends_no_token(autojump_clock):
    snapshot = limited_snapshot(rate=1.0, apps=frozenset({APP}))
    async with open_world("peer", "h2", snapshot=snapshot) as world:
        assert (await call_once(world, app="intruder"))[0] == "PERMISSION_DENIED"
        assert await call_once(world) == ("OK", "")


@pytest.mark.parametrize("ingress", ["peer", "local"])
async def test_max_in_flight_fails_fast_and_gives_its_slots_back(ingress, autojump_clock):
    trips.TRIPS.clear()
    async with open_world(ingress, "h2", snapshot=limited_snapshot(max_in_flight=2)) as world:
        held = [await call_once(world, answer=False) for _ in range(2)]
        await wait_until(lambda: len(world.provider.requests) == 2)
        refused = await call_once(world, answer=False)
        await wait_until(lambda: world.caller.stream(refused).outcome is not None)
        code, text = world.caller.stream(refused).outcome
        assert code == "RESOURCE_EXHAUSTED" and "has 2 calls in flight" in text and "(max_in_flight)" in text
        assert trips.TRIPS[trips.MAX_IN_FLIGHT] == 1
        world.caller.reset(held[0])  # one ends (the caller gave up): its slot is free again
        await wait_until(lambda: world.core.limits.in_flight[(ingress, TRIPLE)] == 1)
        for provider_sid in world.provider.requests[1:]:
            world.provider.send_headers(provider_sid, RESPONSE_HEAD + grpc_trailers(), end=True)
        await wait_until(lambda: world.caller.stream(held[1]).outcome is not None)
        assert world.core.limits.in_flight[(ingress, TRIPLE)] == 0
        world.provider.requests.clear()
        assert await call_once(world) == ("OK", "")
        world.assert_clean()


async def test_a_bolt_caller_over_the_limit_gets_server_threadpool_busy(autojump_clock):
    async with open_world("local", "bolt", snapshot=limited_snapshot(max_in_flight=1)) as world:
        world.caller.send(bolt_request(bolt_unique_name(BOLT, None), request_id=1))
        await wait_until(lambda: world.provider.requests)
        world.caller.send(bolt_request(bolt_unique_name(BOLT, None), request_id=2))
        await wait_until(lambda: world.caller.responses)
        answer = world.caller.responses[0]
        assert bolt.ResponseStatus(answer.status).name == "SERVER_THREADPOOL_BUSY"  # what SOFARPC callers read
        assert bolt_outcome(answer)[0] == "RESOURCE_EXHAUSTED"  # the gateway's stamped status


async def test_without_limits_no_limit_filter_runs(autojump_clock):
    async with open_world("peer", "h2", snapshot=make_snapshot()) as world:
        names = {type(item).__name__ for item in (*world.core.chains.peer, *world.core.chains.local)}
        assert not names & {"InFlightFilter", "RateLimitFilter"}
        snapshot = limited_snapshot(rate=1.0, max_in_flight=3)
        world.core.install(replace(snapshot))
        names = {type(item).__name__ for item in world.core.chains.peer}
        assert {"InFlightFilter", "RateLimitFilter"} <= names


async def test_an_import_fails_over_to_its_next_site_while_the_first_is_down(autojump_clock):
    """from: [site-a, site-c]: no link up to site-a, so site-c serves (its access domain, its name in the access
    line); once site-a is up again, it serves again."""
    from interlink.net.pool import PoolGroup

    route = ImportRoute(TRIPLE, PEER, PEER_DOMAIN, failover=(("site-c", b"b.for-c.example"),))
    snapshot = make_snapshot(imports=((route, "triple"),))
    async with open_world("local", "h2", snapshot=snapshot) as world:
        down = PoolGroup(f"site {PEER}", [])
        groups = {PEER: down, "site-c": world.group}
        world.core.peer_group = lambda protocol, site: groups.get(site)
        assert await call_once(world) == ("OK", "")
        authority = dict(world.provider.stream(max(world.provider.streams)).headers[0])[b":authority"]
        assert authority == b"b.for-c.example"
        assert (world.access()[-1]["peer"], world.access()[-1]["upstream"]) == ("site-c", "site site-c")
        groups[PEER] = world.group  # site-a is back (the same test connection plays it)
        assert await call_once(world) == ("OK", "")
        authority = dict(world.provider.stream(max(world.provider.streams)).headers[0])[b":authority"]
        assert authority == PEER_DOMAIN and world.access()[-1]["peer"] == PEER
