"""The call core's less travelled paths: flow control end to end, the first connection of an upstream,
the fair share and full upstreams, snapshot changes mid-call, filters that observe call ends, admission
refusals, and providers that answer what cannot be relayed or translated."""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing

from interlink.gateway.call import CallState
from interlink.gateway.filters import AccessDomainFilter, ExportAclFilter, Filter, FilterChains
from interlink.net.pool import FIRST_CONNECT_WAIT, STABLE_AFTER
from interlink.routes import bolt_unique_name
from interlink.wire import bolt, grpc
from tests.gateway.harness import (
    BOLT, DOMAIN, RESPONSE_HEAD, TRIPLE, World, bolt_outcome, bolt_request, grpc_trailers, h2_request_headers,
    make_snapshot, open_world, wait_until,
)

BIG = 200_000  # more than any stream window on the way (64 KiB): flow control must pace it


def unary(world: World, service: str = TRIPLE, *, timeout: bytes | None = None, end: bool = True, peer: bool = False) -> int:
    sid = world.caller.open(h2_request_headers(service, timeout=timeout, peer=peer,
                                               authority=DOMAIN if peer else b"localhost:9000"))
    world.caller.send_message(sid, b"ping-0", end=end)
    return sid


async def provider_request(world: World) -> int:
    await wait_until(lambda: world.providers and world.provider.requests)
    return world.provider.requests[-1]


async def finished(world: World, count: int = 1) -> None:
    await wait_until(lambda: len(world.access()) >= count)
    await trio.sleep(5)
    assert len(world.access()) == count


# --- flow control ----------------------------------------------------------------------------------------


async def test_a_response_larger_than_the_callers_window_waits_for_the_caller_to_read(autojump_clock):
    async with open_world() as world:
        world.caller.reading = False  # the caller takes nothing until told
        sid = unary(world)
        stream_id = await provider_request(world)
        world.provider.send_headers(stream_id, RESPONSE_HEAD)
        world.provider.send_message(stream_id, b"x" * BIG)
        world.provider.send_trailers(stream_id, grpc_trailers(0))
        await trio.sleep(5)
        (call,) = world.calls
        # end to end: the provider could send only what the caller's window and one relay window hold
        assert len(world.caller.stream(sid).data) < BIG and world.caller.stream(sid).outcome is None
        assert world.provider._out  # its trailers wait behind DATA the gateway has not acknowledged
        assert call.state is CallState.FORWARDED
        while world.caller.stream(sid).outcome is None:
            world.caller.read()
            await trio.sleep(0.1)
        assert world.caller.stream(sid).messages == [b"x" * BIG]
        await finished(world)
        assert world.access()[0]["status"] == "OK"
        world.assert_clean()


async def test_trailers_that_arrive_before_the_caller_read_the_data_finish_the_call_when_it_has(autojump_clock):
    async with open_world() as world:
        world.caller.reading = False
        sid = unary(world)
        stream_id = await provider_request(world)
        world.provider.send_headers(stream_id, RESPONSE_HEAD)
        world.provider.send_message(stream_id, b"y" * 65_531)  # 65,536 framed: the gateway's window, not the caller's
        world.provider.send_trailers(stream_id, grpc_trailers(0))
        (call,) = world.calls
        await wait_until(lambda: call.state is CallState.ANSWERING)
        assert world.access() == []  # complete at the gateway, not yet at the caller
        world.caller.read()
        await finished(world)
        assert call.state is CallState.DONE and world.caller.stream(sid).outcome == ("OK", "")
        world.assert_clean()


async def test_a_translated_answer_larger_than_the_callers_window_is_sent_as_the_caller_reads(autojump_clock):
    async with open_world("peer", "h2", "bolt") as world:
        world.caller.reading = False
        sid = unary(world, BOLT, peer=True)
        await wait_until(lambda: world.providers and world.provider.requests)
        (request,) = world.provider.requests
        world.provider.send(bolt.response_for(request, bolt.ResponseStatus.SUCCESS, bolt.SOFA_RESPONSE_CLASS, b"", b"z" * BIG))
        (call,) = world.calls
        await wait_until(lambda: call.state is CallState.ANSWERING)
        while world.caller.stream(sid).outcome is None:
            world.caller.read()
            await trio.sleep(0.1)
        assert world.caller.stream(sid).messages == [b"z" * BIG]
        await finished(world)
        world.assert_clean()


@pytest.mark.parametrize("ending", ["with-the-last-message", "empty-data", "trailers"])
async def test_a_large_streamed_request_reaches_the_provider_whole_however_the_caller_ends_it(ending, autojump_clock):
    async with open_world() as world:
        sid = world.caller.open(h2_request_headers(TRIPLE))
        world.caller.send_message(sid, b"a" * BIG)
        world.caller.send_message(sid, b"b" * 10, end=ending == "with-the-last-message")
        if ending == "empty-data":
            world.caller.send_data(sid, b"", end=True)
        elif ending == "trailers":
            world.caller.send_trailers(sid, [(b"x-done", b"1")])
        stream_id = await provider_request(world)
        await wait_until(lambda: world.provider.stream(stream_id).ended)
        assert world.provider.stream(stream_id).messages == [b"a" * BIG, b"b" * 10]
        world.provider.send_headers(stream_id, RESPONSE_HEAD + grpc_trailers(0), end=True)
        await finished(world)
        assert world.caller.stream(sid).outcome == ("OK", "")
        world.assert_clean()


# --- the first connection of an upstream -----------------------------------------------------------------


@pytest.mark.parametrize("caller", ["h2", "bolt"])
async def test_a_call_waits_for_the_first_connection_of_a_starting_gateway(caller, autojump_clock):
    async with open_world("local", caller, connect="gated", wait_ready=False) as world:
        if caller == "h2":
            sid = unary(world)
        else:
            world.caller.send(bolt_request(bolt_unique_name(BOLT, None)))
        await wait_until(lambda: world.calls and world.calls[0].state is CallState.WAITING)
        world.connect_gate.set()
        await wait_until(lambda: world.providers and world.provider.requests)
        if caller == "h2":
            world.provider.send_headers(world.provider.requests[0], RESPONSE_HEAD + grpc_trailers(0), end=True)
            await wait_until(lambda: world.caller.stream(sid).outcome)
            assert world.caller.stream(sid).outcome == ("OK", "")
        else:
            world.provider.send(bolt.response_for(world.provider.requests[0], 0, bolt.SOFA_RESPONSE_CLASS, b"", b"pong"))
            await wait_until(lambda: world.caller.responses)
            assert bolt_outcome(world.caller.responses[0]) == ("OK", "pong")
        await finished(world)
        world.assert_clean()


@pytest.mark.parametrize("timeout, status, says", [
    (None, "UNAVAILABLE", "is unreachable: h2-upstream: connect timed out after 5s"),  # FIRST_CONNECT_WAIT passes
    (b"2S", "DEADLINE_EXCEEDED", "deadline"),  # the call's own deadline comes first
])
async def test_a_first_connection_that_never_comes_fails_the_waiting_call(timeout, status, says, autojump_clock):
    async with open_world(connect="gated", wait_ready=False) as world:
        sid = unary(world, timeout=timeout)
        await finished(world)
        (line,) = world.access()
        assert line["status"] == status and says in line["error"]
        assert world.caller.stream(sid).outcome[0] == status
        world.assert_clean()


async def test_calls_wait_for_a_first_connection_only_within_the_startup_window(autojump_clock):
    """Whether an attempt is under way or the pool is backing off after a refused one, a call in the first
    FIRST_CONNECT_WAIT after the pools started waits (until the window ends); a call after it fails at once."""
    async with open_world(connect="refused", wait_ready=False) as world:
        await wait_until(lambda: world.pool.last_error == "connection refused")  # backing off (10,000 s)
        started = trio.current_time()
        sid = unary(world)
        await wait_until(lambda: world.calls and world.calls[0].state is CallState.WAITING)
        await wait_until(lambda: world.access())
        assert world.caller.stream(sid).outcome[0] == "UNAVAILABLE"
        waited = trio.current_time() - started
        assert FIRST_CONNECT_WAIT - 0.5 < waited <= FIRST_CONNECT_WAIT + 0.1
        sid = unary(world)  # the window has passed: at once
        await wait_until(lambda: len(world.access()) == 2)
        assert world.caller.stream(sid).outcome[0] == "UNAVAILABLE" and trio.current_time() - started < waited + 0.1
        assert "connection refused" in world.access()[1]["error"]
        world.assert_clean()


async def test_a_call_during_a_reconnect_waits_only_while_that_attempt_lasts(autojump_clock):
    async with open_world() as world:
        world.connect_gate = trio.Event()  # the next connection attempt hangs
        await trio.sleep(STABLE_AFTER)  # the connection lived: its loss is redialled at once, no backoff
        world.provider.transport.close()
        await wait_until(lambda: not world.group.up and world.pool.connecting)
        sid = unary(world)
        await finished(world)
        assert world.caller.stream(sid).outcome[0] == "UNAVAILABLE"
        assert "is unreachable: h2-upstream: connect timed out" in world.access()[0]["error"]
        world.assert_clean()


# --- limits --------------------------------------------------------------------------------------------


def start(world: World, index: int) -> int:
    """A unary call in the caller's protocol; its stream id or Bolt request id."""
    if world.caller_protocol == "h2":
        return unary(world)
    world.caller.send(bolt_request(bolt_unique_name(BOLT, None), request_id=100 + index))
    return 100 + index


def answer_all(world: World) -> None:
    provider = world.provider
    for request in list(provider.requests):
        if world.upstream_protocol == "h2":
            provider.send_headers(request, RESPONSE_HEAD + grpc_trailers(0), end=True)
        else:
            provider.send(bolt.response_for(request, 0, bolt.SOFA_RESPONSE_CLASS, b"", b"pong"))


def outcomes(world: World, handles: list[int]) -> list[str]:
    if world.caller_protocol == "h2":
        return [world.caller.stream(sid).outcome[0] for sid in handles]
    by_id = {frame.request_id: bolt_outcome(frame)[0] for frame in world.caller.responses}
    return [by_id[request_id] for request_id in handles]


@pytest.mark.parametrize("protocol", ["h2", "bolt"])
async def test_one_caller_connection_gets_its_fair_share_and_no_more(protocol, autojump_clock):
    # 16 call slots upstream: one caller connection may hold all but the last eighth (14)
    async with open_world("local", protocol, provider_streams=16, upstream_max_pending=16) as world:
        handles = [start(world, index) for index in range(15)]
        await wait_until(world.access)
        (line,) = world.access()
        assert line["status"] == "RESOURCE_EXHAUSTED" and "already has its share (16)" in line["error"]
        assert world.group.held == 14 and len(world.provider.requests) == 14
        answer_all(world)
        await finished(world, 15)
        assert sorted(outcomes(world, handles)) == ["OK"] * 14 + ["RESOURCE_EXHAUSTED"]
        world.assert_clean()


@pytest.mark.parametrize("protocol", ["h2", "bolt"])
async def test_an_upstream_at_its_call_limit_refuses_more(protocol, autojump_clock):
    async with open_world("local", protocol, provider_streams=1, upstream_max_pending=1) as world:
        handles = [start(world, index) for index in range(2)]
        await wait_until(world.access)
        (line,) = world.access()
        assert line["status"] == "RESOURCE_EXHAUSTED" and "at their concurrent call limit" in line["error"]
        answer_all(world)
        await finished(world, 2)
        assert outcomes(world, handles) == ["OK", "RESOURCE_EXHAUSTED"]
        world.assert_clean()


@pytest.mark.parametrize("ingress", ["local", "peer"])
@pytest.mark.parametrize("protocol", ["h2", "bolt"])
async def test_a_finished_call_leaves_no_reference_cycle_for_the_garbage_collector(protocol, ingress, autojump_clock):
    """Calls are freed by reference counting the moment they end: cyclic garbage per call would make the
    collector walk the whole heap ever more often under load (measured: 17 objects per call before)."""
    async with open_world(ingress, protocol) as world:
        gc.collect()
        gc.disable()
        try:
            handles = [unary(world, peer=True) if protocol == "h2" and ingress == "peer" else start(world, index)
                       for index in range(4)]
            await wait_until(lambda: len(world.provider.requests) == 4)
            answer_all(world)
            await finished(world, 4)
            assert outcomes(world, handles) == ["OK"] * 4
            world.calls.clear()  # the harness's own record of the calls
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            left = {type(item).__name__ for item in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert not left & {"GatewayCall", "H2Downstream", "H2Upstream", "BoltDownstream", "BoltUpstream"}


@pytest.mark.parametrize("ingress", ["local", "peer"])
async def test_a_bolt_request_its_connection_does_not_admit_is_logged_and_audited(ingress, autojump_clock):
    peer = ingress == "peer"
    async with open_world(ingress, "bolt", caller_max_pending=1) as world:
        for request_id in (1, 2):
            world.caller.send(bolt_request(bolt_unique_name(BOLT, None), request_id=request_id, link=peer))
        await wait_until(lambda: world.caller.responses and world.provider.requests)
        (refused,) = world.access()
        assert refused["status"] == "RESOURCE_EXHAUSTED" and "more than 1 calls in flight" in refused["error"]
        assert bolt_outcome(world.caller.responses[0])[0] == "RESOURCE_EXHAUSTED"
        assert [a["decision"] for a in world.audits()] == (["allow", "deny"] if peer else [])
        answer_all(world)
        await finished(world, 2)
        assert outcomes(world, [1]) == ["OK"]
        world.assert_clean()


# --- snapshots and filters -------------------------------------------------------------------------------


async def test_a_call_in_flight_keeps_its_snapshot_and_new_calls_use_the_new_one(autojump_clock):
    async with open_world() as world:
        first = unary(world)
        stream_id = await provider_request(world)
        world.core.install(make_snapshot(imports=()))  # the import is gone
        second = unary(world)
        await wait_until(world.access)
        assert world.caller.stream(second).outcome[0] == "UNIMPLEMENTED"
        world.provider.send_headers(stream_id, RESPONSE_HEAD + grpc_trailers(0), end=True)
        await finished(world, 2)
        assert world.caller.stream(first).outcome == ("OK", "")
        world.assert_clean()


class Observer(Filter):
    """Annotates every call and records its end."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, str]] = []

    def on_request(self, call) -> None:
        call.log_fields["stage"] = "canary"

    def on_finish(self, call, status: str, message: str) -> None:
        assert call.state is CallState.DONE
        self.finished.append((status, message))


class Broken(Filter):
    def on_finish(self, call, status: str, message: str) -> None:
        raise RuntimeError("observer bug")


@pytest.mark.parametrize("ingress", ["local", "peer"])
@pytest.mark.parametrize("outcome", ["ok", "deadline", "refused"])
async def test_filters_see_each_call_end_exactly_once_and_a_broken_one_harms_nothing(ingress, outcome, autojump_clock):
    peer = ingress == "peer"
    observer = Observer()
    async with open_world(ingress, "h2") as world:
        extra = (Broken(), observer)
        world.core.chains = FilterChains(extra, (AccessDomainFilter(), ExportAclFilter(), *extra), extra, extra)
        sid = unary(world, "demo.Nope" if outcome == "refused" else TRIPLE, timeout=b"2S", peer=peer)
        if outcome == "ok":
            world.provider.send_headers(await provider_request(world), RESPONSE_HEAD + grpc_trailers(0), end=True)
        await finished(world)
        (line,) = world.access()
        expected = {"ok": "OK", "deadline": "DEADLINE_EXCEEDED", "refused": "UNIMPLEMENTED"}[outcome]
        assert observer.finished == [(expected, line.get("error", ""))]
        assert world.caller.stream(sid).outcome[0] == expected
        assert line.get("stage") == (None if outcome == "refused" and not peer else "canary") or peer
        broken = [entry for entry in world.logs if entry["event"] == "filter.finish_failed"]
        assert [entry["filter"] for entry in broken] == ["Broken"]
        world.assert_clean()


class SlowAdmission(Filter):
    """Spends `seconds` of (mock) time looking at each call, as a busy gateway would."""

    def __init__(self, clock: trio.testing.MockClock, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def on_request(self, call) -> None:
        self.clock.jump(self.seconds)


@pytest.mark.parametrize("ingress", ["local", "peer"])
async def test_the_next_hop_is_given_what_is_left_of_the_deadline_after_this_gateways_own_work(ingress, autojump_clock):
    async with open_world(ingress, "h2") as world:
        slow = SlowAdmission(autojump_clock, 0.25)
        world.core.chains = FilterChains((slow,), (AccessDomainFilter(), ExportAclFilter(), slow), (), ())
        unary(world, timeout=b"2S", peer=ingress == "peer")
        stream_id = await provider_request(world)
        given = grpc.parse_timeout(world.provider.stream(stream_id).header(b"grpc-timeout"))
        assert 1.748 <= given <= 1.75  # 2 s less the 0.25 s spent here, rounded down (at most 0.1%)
        world.provider.send_headers(stream_id, RESPONSE_HEAD + grpc_trailers(0), end=True)
        await finished(world)
        world.assert_clean()


# --- providers that break the protocol ------------------------------------------------------------------


async def test_a_passthrough_response_without_trailers_is_an_internal_error(autojump_clock):
    async with open_world() as world:
        sid = unary(world)
        stream_id = await provider_request(world)
        world.provider.send_headers(stream_id, RESPONSE_HEAD)
        world.provider.send_message(stream_id, b"pong", end=True)  # END_STREAM without grpc-status
        await finished(world)
        assert world.caller.stream(sid).outcome == ("INTERNAL", "the provider ended the response without grpc-status trailers")
        assert world.caller.stream(sid).messages == []  # what was queued for the caller is dropped for the error
        world.assert_clean()


async def test_a_passthrough_trailers_only_answer_without_a_status_is_unknown(autojump_clock):
    async with open_world() as world:
        sid = unary(world)
        world.provider.send_headers(await provider_request(world), RESPONSE_HEAD, end=True)
        await finished(world)
        assert world.access()[0]["status"] == "UNKNOWN" and world.caller.stream(sid).ended
        world.assert_clean()


def h2_answer(*steps):
    """A Triple provider's answer to a Bolt caller (translated), as steps on the provider's stream."""
    return steps


TRIPLE_ANSWERS = {
    "http-503": (("headers", [(b":status", b"503")], False), "UNAVAILABLE", "the provider answered HTTP 503"),
    "http-404": (("headers", [(b":status", b"404")], False), "INTERNAL", "the provider answered HTTP 404"),
    "bad-framing": (("headers", RESPONSE_HEAD, False), ("data", b"\x09\x00\x00\x00\x01x", False), "INTERNAL",
                    "malformed response from the provider"),
    "no-message": (("headers", RESPONSE_HEAD, False), ("trailers", grpc_trailers(0), True), "INTERNAL",
                   "answered a unary call with 0 messages"),
    "ended-without-trailers": (("headers", RESPONSE_HEAD, False), ("data", grpc.encode_message(b"x"), True), "INTERNAL",
                               "without grpc-status trailers"),
    "trailers-only-error": (("headers", RESPONSE_HEAD + grpc_trailers(7, "go away"), True), "PERMISSION_DENIED", "go away"),
}


@pytest.mark.parametrize("answer", TRIPLE_ANSWERS.values(), ids=TRIPLE_ANSWERS.keys())
async def test_a_triple_providers_answer_to_a_bolt_caller(answer, autojump_clock):
    *steps, status, says = answer
    async with open_world("peer", "bolt", "h2") as world:
        world.caller.send(bolt_request(bolt_unique_name(TRIPLE, None), link=True))
        stream_id = await provider_request(world)
        for kind, value, end in steps:
            if kind == "data":
                world.provider.send_data(stream_id, value, end=end)
            elif kind == "trailers":
                world.provider.send_trailers(stream_id, value)
            else:
                world.provider.send_headers(stream_id, value, end=end)
        await finished(world)
        (line,) = world.access()
        assert line["status"] == status and says in line["error"]
        (response,) = world.caller.responses
        assert bolt_outcome(response)[0] == status and says in bolt_outcome(response)[1]
        world.assert_clean()


BOLT_ANSWERS = {
    "hessian-to-an-idl-call": (dict(codec=bolt.CODEC_HESSIAN2, content=b"\x00"), "INTERNAL",
                               "a hessian2 response cannot answer an IDL (protobuf) call"),
    "application-error": (dict(header=bolt.encode_header_map({"sofa_head_response_error": "true"}),
                               content=b"\x0a\x04oops"), "UNKNOWN", "oops"),
    "timeout-status": (dict(status=bolt.ResponseStatus.TIMEOUT, content=b"slow"), "DEADLINE_EXCEEDED",
                       "provider answered Bolt status TIMEOUT: slow"),
}


@pytest.mark.parametrize("answer", BOLT_ANSWERS.values(), ids=BOLT_ANSWERS.keys())
async def test_a_bolt_providers_answer_to_a_triple_caller(answer, autojump_clock):
    fields, status, says = answer
    async with open_world("peer", "h2", "bolt") as world:
        sid = unary(world, BOLT, peer=True)
        await wait_until(lambda: world.providers and world.provider.requests)
        (request,) = world.provider.requests
        response = bolt.response_for(request, fields.pop("status", 0), bolt.SOFA_RESPONSE_CLASS)
        for name, value in fields.items():
            setattr(response, name, value)
        world.provider.send(response)
        await finished(world)
        assert world.caller.stream(sid).outcome[0] == status and says in world.caller.stream(sid).outcome[1]
        assert world.access()[0]["status"] == status
        world.assert_clean()


@pytest.mark.parametrize("header, status", [
    (bolt.encode_header_map({"x-interlink-status": "UNAVAILABLE"}), "UNAVAILABLE"),  # the peer gateway's own error
    (bolt.encode_header_map({"sofa_head_response_error": "true"}), "APPLICATION_ERROR"),
    (b"\x00\x00\x00\x09abc", "MALFORMED_RESPONSE_HEADER"),  # relayed all the same: the caller judges it
])
async def test_a_relayed_bolt_response_is_logged_with_the_status_it_carries(header, status, autojump_clock):
    async with open_world("local", "bolt") as world:
        world.caller.send(bolt_request(bolt_unique_name(BOLT, None)))
        stream_id = await provider_request(world)
        world.provider.send(bolt.response_for(stream_id, 0, bolt.SOFA_RESPONSE_CLASS, header, b"pong"))
        await finished(world)
        assert world.access()[0]["status"] == status
        (response,) = world.caller.responses
        assert response.request_id == 7 and response.content == b"pong"
        world.assert_clean()


async def test_a_local_bolt_callers_own_link_keys_are_dropped_and_a_v2_caller_is_answered_in_v2(autojump_clock):
    async with open_world("local", "bolt") as world:
        request = bolt_request(bolt_unique_name(BOLT, None), extra={"x-interlink-caller-site": "evil", "x-interlink-x": "1"})
        request.proto, request.ver1, request.switch, request.has_crc = bolt.PROTO_V2, 2, 1, True
        world.caller.send(request)
        await provider_request(world)
        (upstream,) = world.provider.requests
        assert upstream.proto == bolt.PROTO_V1  # upstream always in V1
        keys = bolt.decode_header_map(upstream.header)
        assert sorted(key for key in keys if key.startswith("x-interlink-")) == ["x-interlink-caller-app", "x-interlink-method"]
        world.provider.send(bolt.response_for(upstream, 0, bolt.SOFA_RESPONSE_CLASS, b"", b"pong"))
        await finished(world)
        (response,) = world.caller.responses
        assert (response.proto, response.has_crc, response.request_id, response.content) == (bolt.PROTO_V2, True, 7, b"pong")
        world.assert_clean()
