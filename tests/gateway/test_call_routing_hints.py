"""Routing hints in the call core, in memory: the caller's zone and unit (its own x-interlink-* keys, or its unit
from its user id by the site's unit_rule) are stamped on the request to the peer gateway, in both protocols; a
caller's other x-interlink-* keys never cross."""

from __future__ import annotations

from dataclasses import replace

import pytest

from interlink.config import UnitRule
from interlink.routes import bolt_unique_name
from interlink.wire import bolt, link_headers
from tests.gateway.harness import (
    BOLT, TRIPLE, bolt_request, h2_request_headers, make_snapshot, open_world, wait_until,
)

RULE = UnitRule("x-uid", tuple("u00" if shard < 50 else "u01" for shard in range(100)))


def with_rule():
    snapshot = make_snapshot()
    return replace(snapshot, config=replace(snapshot.config, unit_rule=RULE))


@pytest.mark.parametrize("extra, zone, unit", [
    ((), None, None),
    ((("x-interlink-target-zone", "hz-b"),), b"hz-b", None),
    ((("x-uid", "2088000000000077"),), None, b"u01"),
    ((("x-uid", "2088000000000012"), ("x-interlink-unit", "u07")), None, b"u07"),  # named: the rule is not asked
    ((("x-uid", "not-a-number"),), None, None),
])
async def test_a_triple_callers_zone_and_unit_are_stamped_towards_the_peer(autojump_clock, extra, zone, unit):
    async with open_world("local", "h2", snapshot=with_rule()) as world:
        headers = [(name.encode(), value.encode()) for name, value in extra]
        world.caller.open(h2_request_headers(TRIPLE, timeout=b"5S", extra=headers + [(b"x-interlink-bogus", b"1")]),
                          end=True)
        await wait_until(lambda: world.provider.requests)
        sent = world.provider.stream(world.provider.requests[0]).headers[0]
        assert (dict(sent).get(link_headers.TARGET_ZONE), dict(sent).get(link_headers.UNIT)) == (zone, unit)
        assert b"x-interlink-bogus" not in dict(sent)


async def test_a_bolt_callers_unit_from_its_user_id_is_stamped_towards_the_peer(autojump_clock):
    async with open_world("local", "bolt", "bolt", snapshot=with_rule()) as world:
        world.caller.send(bolt_request(bolt_unique_name(BOLT, None), extra={"x-uid": "99", "x-interlink-bogus": "1"}))
        await wait_until(lambda: world.provider.requests)
        header = world.provider.requests[0].header
        assert bolt.header_get(header, link_headers.UNIT) == b"u01"
        assert bolt.header_get(header, b"x-interlink-bogus") is None
