"""Safe retries in the call core, in memory (MockClock), with two upstreams (two gateways of the peer site, two
providers): a call goes again to the other one only when the first certainly never processed it (REFUSED_STREAM,
above a GOAWAY's last stream id, a peer gateway's refusal before forwarding), or its method is declared idempotent
and the answer was UNAVAILABLE; never a streaming call that already sent a message, never beyond its attempts or
its service's budget; the request arrives whole and the same; nothing is left behind."""

from __future__ import annotations

import struct

import h2.errors
import pytest
import trio

from interlink.config import RetryConfig
from interlink.gateway import retries
from interlink.net import trips
from interlink.routes import ImportRoute, bolt_unique_name
from interlink.wire import bolt, grpc, link_headers
from tests.gateway.harness import (
    BOLT, DOMAIN, PEER, PEER_DOMAIN, RESPONSE_HEAD, TRIPLE, bolt_outcome, bolt_request, export, grpc_trailers,
    h2_request_headers, make_snapshot, open_world, wait_until,
)

BOLT_NAME = bolt_unique_name(BOLT, None)
REFUSED = h2.errors.ErrorCodes.REFUSED_STREAM
UNAVAILABLE_TRAILERS = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
                        (b"grpc-message", b"no provider")]


def retrying(retry: RetryConfig | None = RetryConfig(attempts=2)):
    imports = ((ImportRoute(TRIPLE, PEER, PEER_DOMAIN, retry=retry), "triple"),
               (ImportRoute(BOLT, PEER, PEER_DOMAIN, retry=retry), "bolt"))
    return make_snapshot(exports=(export(TRIPLE, retry=retry),), imports=imports)


def start_call(world, payload: bytes = b"hello", *, method: str = "Say", end: bool = True) -> int:
    sid = world.caller.open(h2_request_headers(TRIPLE, method, timeout=b"5S"))
    world.caller.send_message(sid, payload, end=end)
    return sid


async def next_request(world, index: int, count: int = 1) -> int:
    provider = world.by_pool[index][0]
    await wait_until(lambda: len(provider.requests) >= count)
    return provider.requests[count - 1]


def counts(world) -> list[int]:
    return [len(providers[0].requests) for providers in world.by_pool]


async def arrived(world, before: list[int]) -> tuple[int, int]:
    """(which upstream, stream id) of the request that arrived since `before` (counts(world))."""
    await wait_until(lambda: counts(world) != before)
    index = next(i for i, (now, then) in enumerate(zip(counts(world), before)) if now > then)
    return index, world.by_pool[index][0].requests[-1]


def answer_ok(provider, sid: int, payload: bytes = b"ok") -> None:
    provider.send_headers(sid, RESPONSE_HEAD)
    provider.send_message(sid, payload)
    provider.send_trailers(sid, grpc_trailers())


async def outcome(world, sid: int):
    await wait_until(lambda: world.caller.stream(sid).outcome is not None)
    return world.caller.stream(sid).outcome


async def test_a_refused_stream_is_sent_whole_to_the_other_gateway_and_answered_from_there(autojump_clock):
    trips.TRIPS.clear()
    async with open_world("local", "h2", snapshot=retrying(), upstreams=2) as world:
        sid = start_call(world, b"x" * 5000)
        first = await next_request(world, 0)
        world.by_pool[0][0].reset(first, REFUSED)
        second = await next_request(world, 1)
        other = world.by_pool[1][0]
        await wait_until(lambda: other.stream(second).ended)
        assert other.stream(second).messages == [b"x" * 5000]  # the request, whole, once
        head = dict(other.stream(second).headers[0])
        assert head[b":authority"] == PEER_DOMAIN and grpc.parse_timeout(head[b"grpc-timeout"]) <= 5.0
        answer_ok(other, second)
        assert await outcome(world, sid) == ("OK", "")
        assert world.caller.stream(sid).messages == [b"ok"]
        (line,) = world.access()
        assert line["status"] == "OK" and line["attempts"] == 2
        assert world.core.metrics.retries == {("local", TRIPLE, "unprocessed"): 1}
        (retried,) = [entry for entry in world.logs if entry["event"] == "call.retried"]
        assert retried["why"] == "unprocessed" and "REFUSED_STREAM" in retried["error"]
        world.assert_clean()


async def test_without_a_retry_policy_a_refused_stream_fails_the_call(autojump_clock):
    async with open_world("local", "h2", snapshot=retrying(None), upstreams=2) as world:
        sid = start_call(world)
        world.by_pool[0][0].reset(await next_request(world, 0), REFUSED)
        assert (await outcome(world, sid))[0] == "UNAVAILABLE"
        assert not world.by_pool[1][0].requests
        world.assert_clean()


async def test_streams_above_a_goaway_last_stream_id_go_to_the_other_gateway(autojump_clock):
    async with open_world("local", "h2", snapshot=retrying(), upstreams=2) as world:
        sids = [start_call(world, b"a%d" % index) for index in range(2)]
        await next_request(world, 0)  # calls alternate: the first to gateway 0, the second to gateway 1
        await next_request(world, 1)
        third = start_call(world, b"third")
        first_provider = world.by_pool[0][0]
        await wait_until(lambda: len(first_provider.requests) == 2)
        processed, unprocessed = first_provider.requests
        # GOAWAY naming the first as the last it processes (written raw: h2 would refuse to answer it afterwards)
        first_provider.transport.write(struct.pack(">I", 8)[1:] + b"\x07\x00" + struct.pack(">III", 0, processed, 0))
        moved = await next_request(world, 1, 2)
        answer_ok(world.by_pool[1][0], moved)
        assert await outcome(world, third) == ("OK", "")
        for provider, stream in ((first_provider, processed), (world.by_pool[1][0], world.by_pool[1][0].requests[0])):
            answer_ok(provider, stream)
        assert [await outcome(world, sid) for sid in sids] == [("OK", ""), ("OK", "")]
        assert {entry["attempts"] for entry in world.access() if "attempts" in entry} == {2}


async def test_a_gateways_refusal_before_forwarding_is_retried_and_any_other_unavailable_is_relayed(autojump_clock):
    async with open_world("local", "h2", snapshot=retrying(), upstreams=2) as world:
        sid = start_call(world)
        first = await next_request(world, 0)
        world.by_pool[0][0].send_headers(first, UNAVAILABLE_TRAILERS + [(link_headers.UNPROCESSED, b"1")], end=True)
        answer_ok(world.by_pool[1][0], await next_request(world, 1))
        assert await outcome(world, sid) == ("OK", "")

        before = counts(world)
        sid = start_call(world)  # an UNAVAILABLE answer without the mark: it may have been processed
        index, first = await arrived(world, before)
        world.by_pool[index][0].send_headers(first, UNAVAILABLE_TRAILERS, end=True)
        assert await outcome(world, sid) == ("UNAVAILABLE", "no provider")
        assert sum(counts(world)) == sum(before) + 1  # sent once
        world.assert_clean()


async def test_an_idempotent_method_is_retried_on_unavailable_and_on_a_lost_connection(autojump_clock):
    snapshot = retrying(RetryConfig(attempts=3, idempotent_methods=("Get*",)))
    async with open_world("local", "h2", snapshot=snapshot, upstreams=2) as world:
        sid = start_call(world, method="GetOrder")
        first = await next_request(world, 0)
        world.by_pool[0][0].send_headers(first, UNAVAILABLE_TRAILERS, end=True)
        answer_ok(world.by_pool[1][0], await next_request(world, 1))
        assert await outcome(world, sid) == ("OK", "")

        before = counts(world)
        sid = start_call(world, method="GetOrder")
        index, _ = await arrived(world, before)
        before = counts(world)
        world.by_pool[index][0].transport.close()  # sent, then the connection is lost: only an idempotent call goes again
        other, moved = await arrived(world, before)
        assert other == 1 - index
        answer_ok(world.by_pool[other][0], moved)
        assert await outcome(world, sid) == ("OK", "")

        before = counts(world)
        sid = start_call(world, method="PlaceOrder")  # not idempotent: its answer stands
        index, second = await arrived(world, before)
        world.by_pool[index][0].send_headers(second, UNAVAILABLE_TRAILERS, end=True)
        assert await outcome(world, sid) == ("UNAVAILABLE", "no provider")
        assert sum(counts(world)) == sum(before) + 1
        assert world.core.metrics.retries == {("local", TRIPLE, "idempotent"): 2}


async def test_a_call_is_tried_at_most_attempts_times(autojump_clock):
    async with open_world("local", "h2", snapshot=retrying(RetryConfig(attempts=2)), upstreams=2) as world:
        sid = start_call(world)
        world.by_pool[0][0].reset(await next_request(world, 0), REFUSED)
        world.by_pool[1][0].reset(await next_request(world, 1), REFUSED)
        status, message = await outcome(world, sid)
        assert status == "UNAVAILABLE" and "REFUSED_STREAM" in message
        assert world.access()[0]["attempts"] == 2
        world.assert_clean()


async def test_a_streaming_call_that_sent_a_message_is_not_retried(autojump_clock):
    async with open_world("local", "h2", snapshot=retrying(), upstreams=2) as world:
        sid = start_call(world, b"first of many", end=False)
        first = await next_request(world, 0)
        await wait_until(lambda: world.by_pool[0][0].stream(first).messages == [b"first of many"])
        world.by_pool[0][0].reset(first, REFUSED)
        assert (await outcome(world, sid))[0] == "UNAVAILABLE"
        assert not world.by_pool[1][0].requests


async def test_a_request_larger_than_the_replay_limit_is_not_kept_nor_retried(autojump_clock):
    async with open_world("local", "h2", snapshot=retrying(), upstreams=2) as world:
        sid = start_call(world, b"y" * (retries.REPLAY_LIMIT + 1))
        first = await next_request(world, 0)
        await wait_until(lambda: world.by_pool[0][0].stream(first).ended)
        world.by_pool[0][0].reset(first, REFUSED)
        assert (await outcome(world, sid))[0] == "UNAVAILABLE"
        assert not world.by_pool[1][0].requests


async def test_the_budget_caps_retries_at_its_share_of_the_calls(autojump_clock):
    trips.TRIPS.clear()
    async with open_world("local", "h2", snapshot=retrying(RetryConfig(attempts=2, budget_percent=20)),
                          upstreams=2) as world:
        providers = [world.by_pool[0][0], world.by_pool[1][0]]
        outcomes = []
        for _ in range(30):  # every first try is refused: only MIN_RETRIES of 30 calls may go again
            seen = [len(provider.requests) for provider in providers]
            sid = start_call(world)
            await wait_until(lambda: [len(p.requests) for p in providers] != seen)
            tried = 0 if len(providers[0].requests) > seen[0] else 1
            providers[tried].reset(providers[tried].requests[-1], REFUSED)
            other = providers[1 - tried]
            await wait_until(lambda: world.caller.stream(sid).outcome is not None
                             or len(other.requests) > seen[1 - tried])
            if len(other.requests) > seen[1 - tried]:
                answer_ok(other, other.requests[-1])
            outcomes.append((await outcome(world, sid))[0])
        assert outcomes.count("OK") == retries.MIN_RETRIES
        assert trips.TRIPS[trips.RETRY_BUDGET] == 30 - retries.MIN_RETRIES
        await trio.sleep(retries.WINDOW + 1)  # a new window: retries again
        seen = [len(provider.requests) for provider in providers]
        sid = start_call(world)
        await wait_until(lambda: [len(p.requests) for p in providers] != seen)
        tried = 0 if len(providers[0].requests) > seen[0] else 1
        providers[tried].reset(providers[tried].requests[-1], REFUSED)
        await wait_until(lambda: len(providers[1 - tried].requests) > seen[1 - tried])
        answer_ok(providers[1 - tried], providers[1 - tried].requests[-1])
        assert await outcome(world, sid) == ("OK", "")
        world.assert_clean()


def test_a_budget_allows_its_percent_of_the_calls_and_forgets_old_seconds():
    budget = retries.RetryBudget()
    for second in range(10):
        for _ in range(100):
            budget.called(second + 0.5)
    allowed = sum(budget.spend(9.5, 20) for _ in range(300))
    assert allowed == 200  # 20% of 1,000 calls in the window
    assert budget.spend(15.5, 20) is False  # the 200 retries of second 9 still count against 400 calls (6-9)
    assert budget.spend(19.5, 20) is True  # second 9 left the window: none counts, MIN_RETRIES may go
    assert sum(budget.calls) == 0 and sum(budget.retries) == 1
    assert budget.spend(40.0, 20) is True and sum(budget.retries) == 1  # long after: a fresh window


async def test_a_provider_refusing_a_stream_at_the_export_is_retried_on_the_other_provider(autojump_clock):
    async with open_world("peer", "h2", snapshot=retrying(), upstreams=2) as world:
        sid = world.caller.open(h2_request_headers(TRIPLE, authority=DOMAIN, peer=True))
        world.caller.send_message(sid, b"hi", end=True)
        world.by_pool[0][0].reset(await next_request(world, 0), REFUSED)
        answer_ok(world.by_pool[1][0], await next_request(world, 1))
        assert await outcome(world, sid) == ("OK", "")
        # a provider's claim that it did not process a call is not believed (only a peer gateway's is)
        before = counts(world)
        sid = world.caller.open(h2_request_headers(TRIPLE, authority=DOMAIN, peer=True))
        world.caller.send_message(sid, b"hi", end=True)
        index, first = await arrived(world, before)
        world.by_pool[index][0].send_headers(first, UNAVAILABLE_TRAILERS + [(link_headers.UNPROCESSED, b"1")], end=True)
        assert await outcome(world, sid) == ("UNAVAILABLE", "no provider")
        assert sum(counts(world)) == sum(before) + 1
        world.assert_clean()


async def test_the_providers_gateway_marks_a_refusal_made_before_forwarding(autojump_clock):
    async with open_world("peer", "h2", group="empty") as world:
        sid = world.caller.open(h2_request_headers(TRIPLE, authority=DOMAIN, peer=True))
        world.caller.send_message(sid, b"hi", end=True)
        assert (await outcome(world, sid))[0] == "UNAVAILABLE"
        assert world.caller.stream(sid).header(link_headers.UNPROCESSED) == b"1"
    async with open_world("peer", "bolt", "bolt", group="empty") as world:
        world.caller.send(bolt_request(BOLT_NAME, link=True))
        await wait_until(lambda: world.caller.responses)
        (response,) = world.caller.responses
        assert bolt_outcome(response)[0] == "UNAVAILABLE"
        assert bolt.header_get(response.header, link_headers.UNPROCESSED) == b"1"


@pytest.mark.parametrize("idempotent", [False, True])
async def test_bolt_calls_go_again_after_a_gateways_refusal_and_when_idempotent_after_a_lost_connection(
        autojump_clock, idempotent):
    policy = RetryConfig(attempts=2, idempotent_methods=("Say",) if idempotent else ())
    async with open_world("local", "bolt", "bolt", snapshot=retrying(policy), upstreams=2) as world:
        world.caller.send(bolt_request(BOLT_NAME, content=b"payload-1", request_id=11))
        first, other = world.by_pool[0][0], world.by_pool[1][0]
        await wait_until(lambda: first.requests)
        refusal = bolt.BoltFrame(
            bolt.PROTO_V1, bolt.TYPE_RESPONSE, bolt.CMD_RPC_RESPONSE, first.requests[0].request_id, bolt.CODEC_PROTOBUF,
            status=bolt.ResponseStatus.SERVER_EXCEPTION,
            header=bolt.encode_header_map({link_headers.STATUS_TEXT: "UNAVAILABLE", link_headers.UNPROCESSED_TEXT: "1"}),
            content=b"no provider")
        first.send(refusal)
        await wait_until(lambda: other.requests)
        assert other.requests[0].content == b"payload-1"
        other.send(bolt.response_for(other.requests[0], bolt.ResponseStatus.SUCCESS, bolt.SOFA_RESPONSE_CLASS, b"", b"ok"))
        await wait_until(lambda: world.caller.responses)
        assert bolt_outcome(world.caller.responses[0]) == ("OK", "ok")

        world.caller.send(bolt_request(BOLT_NAME, content=b"payload-2", request_id=12))
        await wait_until(lambda: len(other.requests) == 2 or len(first.requests) == 2)
        sent_to = first if len(first.requests) == 2 else other
        sent_to.transport.close()  # written, then the connection is lost
        await wait_until(lambda: len(world.caller.responses) == 2
                         or len((other if sent_to is first else first).requests) == (1 if sent_to is other else 2))
        if idempotent:
            retry_to = other if sent_to is first else first
            await wait_until(lambda: any(frame.content == b"payload-2" for frame in retry_to.requests))
            request = [frame for frame in retry_to.requests if frame.content == b"payload-2"][0]
            retry_to.send(bolt.response_for(request, bolt.ResponseStatus.SUCCESS, bolt.SOFA_RESPONSE_CLASS, b"", b"ok2"))
            await wait_until(lambda: len(world.caller.responses) == 2)
            assert bolt_outcome(world.caller.responses[1]) == ("OK", "ok2")
            assert world.core.metrics.retries == {("local-bolt", BOLT_NAME, "unprocessed"): 1,
                                                  ("local-bolt", BOLT_NAME, "idempotent"): 1}
        else:
            await wait_until(lambda: len(world.caller.responses) == 2)
            assert bolt_outcome(world.caller.responses[1])[0] == "UNAVAILABLE"
            assert world.core.metrics.retries == {("local-bolt", BOLT_NAME, "unprocessed"): 1}
