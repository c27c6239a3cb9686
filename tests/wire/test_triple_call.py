"""The Triple adapter of translation: metadata both ways, request heads per flavour, responses."""

from __future__ import annotations

import json
from urllib.parse import unquote

from hypothesis import given
from hypothesis import strategies as st

from interlink.model import BIZ_BAGGAGE, RPC_ID, TRACE_ID, Call, Identity, Payload, PayloadKind, Reply, Status
from interlink.wire import grpc, triple_call


def test_trace_keys_go_out_under_tri_and_sofa_names_and_come_back_canonical():
    metadata = {TRACE_ID: "0a1b2c", RPC_ID: "0.1", BIZ_BAGGAGE: "k=v"}
    headers = triple_call.metadata_headers(metadata)
    assert (b"tri-trace-traceid", b"0a1b2c") in headers
    assert (b"sofa-traceid", b"0a1b2c") in headers
    assert (b"tri-trace-rpcid", b"0.1") in headers and (b"sofa-rpcid", b"0.1") in headers
    assert (b"tri-trace-biz-baggage", b"k=v") in headers
    back, app = triple_call.metadata_from_headers(headers)
    assert back == metadata and app is None


def test_mixed_case_keys_are_restored_from_tri_header_convert():
    metadata = {"rpc_req_baggage.userTier": "gold", "plain": "x", "rpc_trace_context.sofaCallerApp": "order"}
    headers = triple_call.metadata_headers(metadata)
    names = [name for name, _ in headers]
    assert b"rpc_req_baggage.usertier" in names and b"rpc_trace_context.sofacallerapp" in names
    convert = dict(headers)[b"tri-header-convert"]
    # Known keys are restored from the table; only the unknown mixed-case key needs the convert map.
    assert json.loads(unquote(convert.decode())) == {"rpc_req_baggage.usertier": "rpc_req_baggage.userTier"}
    back, _ = triple_call.metadata_from_headers(headers)
    assert back == metadata


def test_non_ascii_values_cross_as_bin_and_gateway_and_reserved_keys_never_cross():
    headers = triple_call.metadata_headers(
        {"note": "héllo", "x-interlink-caller-site": "forged", "content-type": "text/plain", "Bad Key": "x"}
    )
    assert headers == [(b"note-bin", "héllo".encode())]
    back, _ = triple_call.metadata_from_headers(headers + [(b"x-interlink-caller-app", b"forged"), (b"te", b"trailers")])
    assert back == {"note-bin": "aMOpbGxv"}  # binary metadata: base64 text on the Bolt side


def test_consumer_app_is_read_apart():
    metadata, app = triple_call.metadata_from_headers([(b"tri-consumer-appname", b"order-app"), (b"k", b"v")])
    assert (metadata, app) == ({"k": "v"}, "order-app")


def _call() -> Call:
    return Call(
        service="com.example.EchoService",
        method="echo",
        protocol="bolt",
        caller=Identity("site-b", "order-app"),
        metadata={TRACE_ID: "t1"},
        target_app="echo-server",
        payload=Payload(PayloadKind.PROTOBUF, b"\x0a\x01x"),
    )


def test_sofa_flavour_sends_the_unique_id_as_tri_service_version():
    headers = triple_call.request_headers(
        _call(), authority=b"a", timeout=1.5, flavour="sofa", unique_name="com.example.EchoService:1.0:blue",
        version="1.0", unique_id="blue", group=None,
    )
    table = dict(headers)
    assert table[b":path"] == b"/com.example.EchoService/echo"
    assert table[b"tri-service-version"] == b"blue"
    assert table[b"sofa_head_target_service"] == b"com.example.EchoService:1.0:blue"
    assert table[b"sofa_head_method_name"] == b"echo"
    assert table[b"sofa_head_target_app"] == b"echo-server"
    assert table[b"tri-consumer-appname"] == table[b"tri-trace-current-app"] == b"order-app"
    assert table[b"grpc-timeout"] == grpc.format_timeout(1.5)
    assert table[b"content-type"] == b"application/grpc"


def test_dubbo_flavour_sends_version_and_group():
    table = dict(
        triple_call.request_headers(
            _call(), authority=b"a", timeout=None, flavour="dubbo", unique_name="x:1.0.0", version="1.0.0",
            unique_id=None, group="g1",
        )
    )
    assert (table[b"tri-service-version"], table[b"tri-service-group"]) == (b"1.0.0", b"g1")
    assert b"grpc-timeout" not in table and b"sofa_head_target_service" not in table
    assert table[b"content-type"] == b"application/grpc+proto"


def test_replies_from_triple():
    head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    ok = triple_call.reply_from_triple(head, [b"m"], [(b"grpc-status", b"0"), (b"x-k", b"v")], None)
    assert ok == Reply(Status.OK, payload=Payload(PayloadKind.PROTOBUF, b"m"), metadata={"x-k": "v"})
    only = head + [(b"grpc-status", b"5"), (b"grpc-message", b"no%20such")]
    assert triple_call.reply_from_triple(only, [], None, None) == Reply(Status.NOT_FOUND, "no such")
    assert triple_call.reply_from_triple(head, [], [(b"grpc-status", b"0")], None).status == Status.INTERNAL
    exc = triple_call.reply_from_triple(head + [(b"tri-exception-code", b"1")], [b"e"], [(b"grpc-status", b"0")], "hessian4")
    assert exc.exception and exc.payload == Payload(PayloadKind.WRAPPER, b"e", "hessian4")


def test_responses_to_triple():
    head, data, trailers = triple_call.response(Reply(Status.OK, payload=Payload(PayloadKind.PROTOBUF, b"abc")))
    assert head == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert data == grpc.encode_message(b"abc") and trailers == [(b"grpc-status", b"0")]
    head, data, trailers = triple_call.response(Reply(Status.UNAVAILABLE, "gone"))
    assert head == [] and data is None and (b"grpc-status", b"14") in trailers


@given(st.dictionaries(st.from_regex(r"[a-zA-Z][a-zA-Z0-9_.\-]{0,20}", fullmatch=True), st.text(max_size=30), max_size=8))
def test_metadata_round_trips_whatever_its_case_and_values(metadata):
    metadata = {k: v for k, v in metadata.items() if not k.lower().endswith("-bin")}
    lowered: dict[str, str] = {}
    for key, value in metadata.items():  # keys equal but for case collapse in gRPC: keep one
        lowered.setdefault(key.lower(), key)
    metadata = {key: metadata[key] for key in lowered.values()}
    headers = triple_call.metadata_headers(metadata)
    back, _ = triple_call.metadata_from_headers(headers)
    expected = {}
    for key, value in metadata.items():
        if key.lower().encode() in triple_call._RESERVED or key.lower().startswith("x-interlink-"):
            continue
        if all(0x20 <= ord(c) < 0x7F for c in value):
            expected[key] = value
        else:
            import base64

            expected[key.lower() + "-bin"] = base64.b64encode(value.encode()).decode()
    assert back == expected


def test_metadata_headers_are_remembered_but_each_caller_gets_its_own_list():
    metadata = {"rpc_trace_context.sofaTraceId": "abc", "Custom-Key": "v", "bin": "\x00\x01"}
    first = triple_call.metadata_headers(metadata)
    first.append((b"x-added-by-a-caller", b"1"))
    second = triple_call.metadata_headers(dict(metadata))
    third = triple_call.metadata_headers(dict(metadata))
    assert second == third == first[:-1]
    assert (b"x-added-by-a-caller", b"1") not in second


def test_trailer_metadata_is_remembered_but_each_reply_gets_its_own_dict():
    trailers = [(b"grpc-status", b"0"), (b"x-k", b"v"), (b"tri-trace-traceid", b"abc")]
    first = triple_call.reply_from_triple([(b":status", b"200")], [b"m"], list(trailers), None)
    first.metadata["x-k"] = "changed"
    second = triple_call.reply_from_triple([(b":status", b"200")], [b"m"], list(trailers), None)
    assert second.metadata == {"x-k": "v", TRACE_ID: "abc"}
    assert second.metadata is not first.metadata


def test_a_requests_per_call_trace_context_comes_last_and_the_rest_is_remembered_once():
    """SOFATracer's trace id differs in every call: after the stamps, before the traceparent, so that the encoder
    remembers the rest of the list (hpack.ENCODED) and the metadata cache one entry for every trace."""
    from interlink.wire import hpack

    traceparent = (b"traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")
    stamps = [(b"x-interlink-caller-site", b"site-b"), traceparent]
    before = len(triple_call._METADATA_HEADERS._seen) + len(triple_call._METADATA_HEADERS)  # noqa: SLF001
    hpack.ENCODED.clear()
    for index in range(4):
        call = _call()
        call.metadata = {TRACE_ID: f"{index:032x}", "Custom-Key": "v"}
        headers = triple_call.request_headers(call, authority=b"a", timeout=None, flavour="sofa",
                                              unique_name="x:1.0", version="1.0", unique_id=None, group=None,
                                              stamps=stamps)
        trace_id = f"{index:032x}".encode()
        assert headers[-4:] == [stamps[0], (b"tri-trace-traceid", trace_id), (b"sofa-traceid", trace_id), traceparent]
        assert (b"custom-key", b"v") in headers[:-4]
        block = hpack.HeaderBlockEncoder().encode(headers)
        assert hpack_decode(block) == headers
    assert len(triple_call._METADATA_HEADERS._seen) + len(triple_call._METADATA_HEADERS) - before <= 1  # noqa: SLF001
    assert hpack.ENCODED.get(tuple(headers[:-3])) is not None  # the list up to the trace context, remembered


def hpack_decode(block: bytes) -> list[tuple[bytes, bytes]]:
    import hpack as reference

    return reference.Decoder().decode(block, raw=True)


_NAMES = st.sampled_from(["echo", "Echo", "say", "app-a", "app-b", ""])


@given(st.lists(st.tuples(_NAMES, st.none() | _NAMES, st.none() | _NAMES, st.sampled_from(["grpc", "sofa", "dubbo"]),
                          st.sampled_from(["1.0", "2.0"]), st.none() | st.sampled_from(["blue", "green"]),
                          st.none() | st.floats(0.001, 99)),
                min_size=1, max_size=12))
def test_a_request_head_built_from_the_remembered_fields_is_the_one_built_afresh(shapes):
    """request_headers remembers the fields that depend on the route, the method and the apps: whatever a caller's
    sequence of calls, each head is the one built with nothing remembered (a field missing from the cache's key
    would hand one call another's method or app)."""
    for _ in range(2):  # the second time round, the cache holds them (kept the second time they are seen)
        for method, app, target_app, flavour, version, unique_id, timeout in shapes:
            call = Call(service="com.example.EchoService", method=method or "m", protocol="bolt",
                        caller=Identity("site-b", app) if app is not None else None,
                        metadata={TRACE_ID: "t1", "Custom-Key": "v"}, target_app=target_app)
            kwargs = dict(authority=b"a", timeout=timeout, flavour=flavour, unique_name=f"x:{version}", version=version,
                          unique_id=unique_id, group=unique_id)
            remembered = triple_call.request_headers(call, **kwargs)
            triple_call._REQUEST_HEADS.clear()  # noqa: SLF001
            assert remembered == triple_call.request_headers(call, **kwargs)
            table = dict(remembered)
            assert table[b":path"] == f"/com.example.EchoService/{method or 'm'}".encode()
            assert table.get(b"tri-consumer-appname") == (app.encode() if app else None)
            assert table.get(b"sofa_head_target_app") == (target_app.encode() if target_app else None)
            remembered.append((b"x-k", b"v"))  # each call gets a list of its own
            assert triple_call.request_headers(call, **kwargs)[-1] != (b"x-k", b"v")
