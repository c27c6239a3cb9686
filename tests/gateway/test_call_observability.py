"""The call core's observability: trace context (W3C traceparent, SOFATracer ids) taken, logged and passed on,
load-test marks and where marked calls go, and the per-call metrics (counted once, labels bounded)."""

from __future__ import annotations

import pytest

from interlink.config import HostPort
from interlink.gateway import metrics as metrics_module
from interlink.routes import bolt_unique_name
from interlink.wire import bolt, link_headers, tracecontext
from tests.gateway.harness import (
    BOLT, DOMAIN, PEER, RESPONSE_HEAD, TRIPLE, World, bolt_request, export, grpc_trailers, h2_request_headers,
    make_snapshot, open_world, wait_until,
)
from tests.gateway.test_call_paths import finished, provider_request

BOLT_NAME = bolt_unique_name(BOLT, None)
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode()


def h2_call(world: World, service: str = TRIPLE, *, peer: bool = False, method: str = "Say",
            extra: tuple[tuple[bytes, bytes], ...] = ()) -> int:
    sid = world.caller.open(h2_request_headers(service, method, peer=peer, authority=DOMAIN if peer else b"localhost:9000",
                                               extra=extra))
    world.caller.send_message(sid, b"ping-0", end=True)
    return sid


async def answer_h2(world: World) -> list[tuple[bytes, bytes]]:
    """Answer the provider's request OK; its request headers."""
    stream_id = await provider_request(world)
    headers = world.provider.stream(stream_id).headers[0]
    world.provider.send_headers(stream_id, RESPONSE_HEAD + grpc_trailers(0), end=True)
    return headers


def values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [value for key, value in headers if key == name]


# --- trace context ----------------------------------------------------------------------------------------


async def test_a_call_without_trace_context_starts_a_trace_that_the_next_hop_continues(autojump_clock):
    async with open_world() as world:
        h2_call(world)
        headers = await answer_h2(world)
        await finished(world)
        (line,) = world.access()
        (traceparent,) = values(headers, b"traceparent")
        assert traceparent == f"00-{line['trace_id']}-{line['span_id']}-01".encode()
        assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16
        world.assert_clean()


async def test_the_callers_traceparent_is_honoured_and_replaced_by_this_hops_span(autojump_clock):
    async with open_world() as world:
        h2_call(world, extra=((b"traceparent", TRACEPARENT), (b"tracestate", b"vendor=x")))
        headers = await answer_h2(world)
        await finished(world)
        (line,) = world.access()
        assert line["trace_id"] == CALLER_TRACE and line["span_id"] != CALLER_SPAN
        assert values(headers, b"traceparent") == [f"00-{CALLER_TRACE}-{line['span_id']}-01".encode()]  # one, ours
        assert values(headers, b"tracestate") == [b"vendor=x"]  # travels on


@pytest.mark.parametrize("header", [b"sofa-traceid", b"tri-trace-traceid"])
async def test_a_sofatracer_trace_id_becomes_the_trace_id_and_travels_unchanged(header, autojump_clock):
    sofa = b"0a0fe9271570779823341100130000"
    async with open_world() as world:
        h2_call(world, extra=((header, sofa), (b"traceparent", b"00-garbage")))  # an invalid traceparent is ignored
        headers = await answer_h2(world)
        await finished(world)
        (line,) = world.access()
        assert line["trace_id"] == "00" + sofa.decode()
        assert values(headers, header) == [sofa]


async def test_a_peer_calls_trace_is_continued_and_both_lines_carry_it(autojump_clock):
    async with open_world("peer", "h2") as world:
        h2_call(world, peer=True, extra=((b"traceparent", TRACEPARENT),))
        headers = await answer_h2(world)
        await finished(world)
        (line,) = world.access()
        (audit,) = world.audits()
        assert line["trace_id"] == audit["trace_id"] == CALLER_TRACE
        assert line["span_id"] == audit["span_id"]
        assert values(headers, b"traceparent") == [f"00-{CALLER_TRACE}-{line['span_id']}-01".encode()]


async def test_a_bolt_callers_traceparent_key_is_replaced_in_place_not_doubled(autojump_clock):
    async with open_world("local", "bolt") as world:
        world.caller.send(bolt_request(BOLT_NAME, extra={"traceparent": TRACEPARENT.decode(), "k": "v"}))
        await wait_until(lambda: world.provider.requests)
        (request,) = world.provider.requests
        header = bolt.decode_header_map(request.header)
        world.provider.send(bolt.response_for(request, 0, bolt.SOFA_RESPONSE_CLASS, b"", b"pong"))
        await finished(world)
        (line,) = world.access()
        assert line["trace_id"] == CALLER_TRACE
        assert header["traceparent"] == f"00-{CALLER_TRACE}-{line['span_id']}-01"
        assert header["k"] == "v"
        assert request.header.count(b"traceparent") == 1


async def test_a_bolt_callers_sofa_trace_id_names_the_trace(autojump_clock):
    async with open_world("local", "bolt") as world:
        world.caller.send(bolt_request(BOLT_NAME, extra={"rpc_trace_context.sofaTraceId": "not-hex/trace"}))
        await wait_until(lambda: world.provider.requests)
        world.provider.send(bolt.response_for(world.provider.requests[0], 0, bolt.SOFA_RESPONSE_CLASS, b"", b"pong"))
        await finished(world)
        (line,) = world.access()
        assert line["trace_id"] == tracecontext.trace_id_of_sofa(b"not-hex/trace")  # hashed, the same on every hop


# --- load-test marks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mark", [(b"x-interlink-loadtest", b"1"), (b"x-interlink-loadtest", b"TRUE"),
                                  (b"tri-trace-sys-baggage", b"a=b&mark=T")])
async def test_a_marked_local_call_carries_the_mark_to_the_peer(mark, autojump_clock):
    async with open_world() as world:
        h2_call(world, extra=(mark,))
        headers = await answer_h2(world)
        await finished(world)
        assert values(headers, link_headers.LOADTEST) == [b"1"]
        assert world.access()[0]["loadtest"] is True
        assert world.core.metrics.calls and all(labels[7] == "true" for labels in world.core.metrics.calls)


async def test_an_unmarked_call_carries_no_mark_whatever_the_caller_put_under_our_prefix(autojump_clock):
    async with open_world() as world:
        h2_call(world, extra=((b"x-interlink-loadtest", b"0"), (b"tri-trace-sys-baggage", b"mark=F")))
        headers = await answer_h2(world)
        await finished(world)
        assert values(headers, link_headers.LOADTEST) == []
        assert "loadtest" not in world.access()[0]


def _snapshot_with(route):
    return make_snapshot(exports=(route,))


@pytest.mark.parametrize("marked", [True, False])
async def test_at_the_export_marked_calls_go_to_the_shadow_providers_and_only_they(marked, autojump_clock):
    route = export(TRIPLE, shadow_providers=(HostPort("127.0.0.1", 1),))
    async with open_world("peer", "h2", snapshot=_snapshot_with(route)) as world:
        h2_call(world, peer=True, extra=((link_headers.LOADTEST, b"1"),) if marked else ())
        await answer_h2(world)
        await finished(world)
        asked = [request[0] for request in world.group_requests]
        assert asked == [route.shadow_pool_key if marked else route.pool_key]
        line = world.access()[0]
        assert line["upstream"] == (f"shadow providers of {TRIPLE}" if marked else f"providers of {TRIPLE}")


async def test_an_export_that_denies_load_tests_refuses_marked_calls_and_audits_them(autojump_clock):
    route = export(TRIPLE, loadtest_denied=True)
    async with open_world("peer", "h2", snapshot=_snapshot_with(route)) as world:
        sid = h2_call(world, peer=True, extra=((link_headers.LOADTEST, b"1"),))
        await finished(world)
        assert world.caller.stream(sid).outcome[0] == "FAILED_PRECONDITION"
        assert "takes no load-test calls" in world.caller.stream(sid).outcome[1]
        (audit,) = world.audits()
        assert audit["decision"] == "deny"
        assert world.core.metrics.audit == {(PEER, "deny", "loadtest"): 1}
        assert not world.group_requests  # never reached a provider
        unmarked = h2_call(world, peer=True)
        await answer_h2(world)
        await finished(world, 2)
        assert world.caller.stream(unmarked).outcome[0] == "OK"


# --- metrics ------------------------------------------------------------------------------------------------


async def test_each_call_is_counted_once_with_its_labels_and_duration(autojump_clock):
    async with open_world("peer", "h2") as world:
        h2_call(world, peer=True)
        await answer_h2(world)
        denied = h2_call(world, "demo.Private", peer=True, method="Forbidden")
        await finished(world, 2)
        assert world.caller.stream(denied).outcome[0] == "PERMISSION_DENIED"
        calls = world.core.metrics.calls
        ok = ("peer", PEER, TRIPLE, "Say", "triple", "OK", "", "false")
        no = ("peer", PEER, "demo.Private", "Forbidden", "triple", "PERMISSION_DENIED", "", "false")
        assert set(calls) == {ok, no}
        assert calls[ok][0] == 1 and calls[no][0] == 1
        assert sum(calls[ok][2:]) == 1  # one histogram bucket
        assert world.core.metrics.audit == {(PEER, "allow", ""): 1, (PEER, "deny", "acl"): 1}
        (denial,) = world.core.metrics.denials
        assert (denial.peer, denial.service, denial.caller_app) == (PEER, "demo.Private", "shop")


async def test_callers_cannot_grow_the_metrics_with_names_of_their_choosing(autojump_clock):
    async with open_world() as world:
        for batch in range(6):
            for index in range(batch * 40, batch * 40 + 40):
                h2_call(world, f"evil.Service{index}")  # not imported: refused at once
                h2_call(world, method=f"m{index}")  # imported: any method name reaches the provider
            await wait_until(lambda: len(world.provider.requests) == batch * 40 + 40)
            for stream_id in world.provider.requests[batch * 40:]:
                world.provider.send_headers(stream_id, RESPONSE_HEAD + grpc_trailers(0), end=True)
            await wait_until(lambda: len(world.access()) == batch * 80 + 80)
        await finished(world, 480)
        calls = world.core.metrics.calls
        services = {labels[2] for labels in calls}
        methods = {labels[3] for labels in calls if labels[2] == TRIPLE}
        assert services == {TRIPLE, metrics_module.OTHER}
        assert len(methods) == metrics_module.METHODS_PER_SERVICE + 1 and metrics_module.OTHER in methods
        assert sum(cell[0] for cell in calls.values()) == 480  # every call counted, under bounded labels


async def test_a_refused_bolt_request_is_counted_too(autojump_clock):
    async with open_world("peer", "bolt", caller_max_pending=1) as world:
        world.caller.send(bolt_request(BOLT_NAME, link=True, request_id=1))
        await wait_until(lambda: world.provider.requests)
        world.caller.send(bolt_request(BOLT_NAME, link=True, request_id=3))  # over the connection's pending cap
        await wait_until(lambda: len(world.caller.responses) == 1)
        world.provider.send(bolt.response_for(world.provider.requests[0], 0, bolt.SOFA_RESPONSE_CLASS, b"", b"pong"))
        await finished(world, 2)
        statuses = sorted(labels[5] for labels in world.core.metrics.calls)
        assert statuses == ["OK", "RESOURCE_EXHAUSTED"]


# --- spans ---------------------------------------------------------------------------------------------------


class Spans:
    """Collects what the call core submits (the OTLP exporter itself: tests/net/test_otlp.py)."""

    def __init__(self) -> None:
        self.records: list = []

    def submit(self, record) -> None:
        self.records.append(record)


@pytest.mark.parametrize("ratio, exported", [(1.0, 1), (0.0, 0)])
async def test_a_sampled_call_is_one_span_whose_parent_is_the_callers(ratio, exported, autojump_clock):
    async with open_world() as world:
        spans = Spans()
        world.core.spans = spans
        world.core.sample_below = int(ratio * 0x1_0000_0000)
        h2_call(world, extra=((b"traceparent", TRACEPARENT),))
        await answer_h2(world)
        await finished(world)
        assert len(spans.records) == exported
        if exported:
            (span,) = spans.records
            line = world.access()[0]
            assert span.trace_id.hex() == CALLER_TRACE and span.parent_span_id.hex() == CALLER_SPAN
            assert span.span_id.hex() == line["span_id"] and span.status_ok and span.name == f"{TRIPLE}/Say"
            assert 0 <= span.end_ns - span.start_ns < 60e9
            assert ("interlink.site", "site-b") in span.attributes


async def test_a_caller_that_says_not_sampled_is_not_exported(autojump_clock):
    async with open_world() as world:
        spans = Spans()
        world.core.spans = spans
        h2_call(world, extra=((b"traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-00".encode()),))
        headers = await answer_h2(world)
        await finished(world)
        assert spans.records == []
        assert values(headers, b"traceparent")[0].endswith(b"-00")  # and the decision travels on


@pytest.mark.parametrize("caller", ["h2", "bolt"])
async def test_a_marked_call_reaches_providers_with_the_mark_in_its_sofa_baggage(caller, autojump_clock):
    async with open_world("peer", caller) as world:
        if caller == "h2":
            h2_call(world, peer=True, extra=((link_headers.LOADTEST, b"1"),))
            headers = await answer_h2(world)
            assert values(headers, b"tri-trace-sys-baggage") == [b"mark=T"]
            assert values(headers, link_headers.LOADTEST) == [b"1"]
        else:
            world.caller.send(bolt_request(BOLT_NAME, link=True, extra={link_headers.LOADTEST_TEXT: "1"}))
            await wait_until(lambda: world.provider.requests)
            header = bolt.decode_header_map(world.provider.requests[0].header)
            assert header["rpc_trace_context.sysPenAttrs"] == "mark=T"
            world.provider.send(bolt.response_for(world.provider.requests[0], 0, bolt.SOFA_RESPONSE_CLASS, b"", b"ok"))
        await finished(world)


async def test_a_marked_calls_own_baggage_travels_unchanged(autojump_clock):
    async with open_world("peer", "h2") as world:
        h2_call(world, peer=True, extra=((b"tri-trace-sys-baggage", b"mark=T&zone=a"),))
        headers = await answer_h2(world)
        await finished(world)
        assert values(headers, b"tri-trace-sys-baggage") == [b"mark=T&zone=a"]
        assert world.access()[0]["loadtest"] is True


@pytest.mark.parametrize("ingress", ["local", "peer"])
async def test_a_bolt_maps_trailing_traceparent_is_replaced_by_ours_at_the_end(ingress, autojump_clock):
    async with open_world(ingress, "bolt") as world:
        for request_id in (1, 3):  # the second time, the rest of the map is remembered
            world.caller.send(bolt_request(BOLT_NAME, link=ingress == "peer", request_id=request_id,
                                           extra={"k": "v", "traceparent": TRACEPARENT.decode()}))
            await wait_until(lambda: len(world.provider.requests) == (request_id + 1) // 2)
            request = world.provider.requests[-1]
            world.provider.send(bolt.response_for(request, 0, bolt.SOFA_RESPONSE_CLASS, b"", b"ok"))
            await finished(world, (request_id + 1) // 2)
            line = world.access()[-1]
            ours = bolt.header_entry(b"traceparent", f"00-{CALLER_TRACE}-{line['span_id']}-01".encode())
            assert request.header.endswith(ours) and request.header.count(b"traceparent") == 1
            assert bolt.decode_header_map(request.header)["k"] == "v"


# --- SOFATracer ids for SOFA providers ---------------------------------------------------------------------


async def test_a_sofa_triple_provider_gets_the_trace_as_sofatracer_ids_when_the_caller_sent_none(autojump_clock):
    from tests.gateway.harness import SOFA

    async with open_world("peer", "h2") as world:
        h2_call(world, SOFA, peer=True, extra=((b"traceparent", TRACEPARENT),))
        first = await answer_h2(world)
        await finished(world)
        h2_call(world, SOFA, peer=True, extra=((b"sofa-traceid", b"0a0f01"),))
        await wait_until(lambda: len(world.provider.requests) == 2)
        second = world.provider.stream(world.provider.requests[1]).headers[0]
        world.provider.send_headers(world.provider.requests[1], RESPONSE_HEAD + grpc_trailers(0), end=True)
        await finished(world, 2)
        assert values(first, b"tri-trace-traceid") == values(first, b"sofa-traceid") == [CALLER_TRACE.encode()]
        assert values(first, b"sofa-rpcid") == values(first, b"tri-trace-rpcid") == [b"0"]
        assert values(second, b"sofa-traceid") == [b"0a0f01"] and values(second, b"tri-trace-traceid") == []


async def test_a_translated_call_carries_the_trace_as_sofatracer_ids(autojump_clock):
    async with open_world("peer", "h2", "bolt") as world:  # a Triple caller, Bolt providers (protobuf)
        sid = h2_call(world, BOLT, peer=True, extra=((b"traceparent", TRACEPARENT),))
        await wait_until(lambda: world.provider.requests)
        request = world.provider.requests[0]
        world.provider.send(bolt.response_for(request, 0, bolt.SOFA_RESPONSE_CLASS, b"", b""))
        await finished(world)
        header = bolt.decode_header_map(request.header)
        assert header["rpc_trace_context.sofaTraceId"] == CALLER_TRACE
        assert header["rpc_trace_context.sofaRpcId"] == "0"
        assert world.caller.stream(sid).outcome[0] == "OK"


async def test_a_provider_cannot_grow_the_metrics_with_statuses_of_its_choosing(autojump_clock):
    async with open_world("peer", "bolt") as world:
        for request_id in range(1, 41, 2):
            world.caller.send(bolt_request(BOLT_NAME, link=True, request_id=request_id))
            await wait_until(lambda: len(world.provider.requests) == (request_id + 1) // 2)
            request = world.provider.requests[-1]
            stamped = bolt.encode_header_map({link_headers.STATUS_TEXT: f"EVIL{request_id}"})
            world.provider.send(bolt.response_for(request, 0, bolt.SOFA_RESPONSE_CLASS, stamped, b""))
            await finished(world, (request_id + 1) // 2)
        assert world.access()[-1]["status"] == "EVIL39"  # the access line says what came back ...
        statuses = {labels[5] for labels in world.core.metrics.calls}
        assert statuses == {"other"}  # ... the metrics do not take it as a label
        assert sum(cell[0] for cell in world.core.metrics.calls.values()) == 20
