"""The Bolt request head as the call core reads it (bolt_call.read_request_head): the keys of a local caller's
map or of a peer link's, the SofaRequest head when the map lacks method or app, and the same answer whether
a map is read for the first time or again (what a map says is remembered per exact bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.wire import bolt, bolt_call, link_headers

ECHO = Path(__file__).resolve().parents[1] / "vectors" / "bolt" / "bolt_v1_req_echo.hex"


def _request(header: dict[str, str], *, timeout: int = 3000, codec: int = bolt.CODEC_PROTOBUF,
             content: bytes = b"\x0a\x02hi") -> bolt.BoltFrame:
    return bolt.BoltFrame(bolt.PROTO_V1, bolt.TYPE_REQUEST, bolt.CMD_RPC_REQUEST, 1, codec, timeout=timeout,
                          class_name=bolt.SOFA_REQUEST_CLASS, header=bolt.encode_header_map(header), content=content)


def _fields(head: bolt_call.BoltRequestHead) -> tuple:
    return head.service, head.method, head.app, head.timeout


LOCAL_MAP = {"service": "svc:1.0", "sofa_head_method_name": "echo", "app": "shop",
             link_headers.CALLER_APP_TEXT: "forged", link_headers.METHOD.decode(): "forged"}


def test_a_local_caller_is_read_from_its_own_keys_never_from_link_keys():
    for _ in range(3):  # read for the first time, then remembered: the same answer
        head = bolt_call.read_request_head(_request(LOCAL_MAP), from_link=False)
        assert _fields(head) == ("svc:1.0", "echo", "shop", 3.0)
        # the link keys it sent are where the map is restamped (replaced or dropped on the way upstream)
        assert [key for _, _, key in head.spans] == [link_headers.CALLER_APP, link_headers.METHOD]


def test_a_peer_link_is_read_from_the_stamps_the_calling_gateway_made():
    for _ in range(3):
        head = bolt_call.read_request_head(_request(LOCAL_MAP, timeout=-1), from_link=True)
        assert _fields(head) == ("svc:1.0", "forged", "forged", None)


def test_target_service_and_the_sofa_request_head_fill_in_what_the_map_lacks():
    echo = bolt.decode(bytes.fromhex("".join(ECHO.read_text().split())))  # hessian2, a SofaRequest head
    header_only = bolt.decode_header_map(echo.header)
    without = {k: v for k, v in header_only.items() if k not in ("service", "sofa_head_method_name", "app")}
    request = _request({**without, "sofa_head_target_service": "svc:1.0"}, codec=bolt.CODEC_HESSIAN2,
                       content=echo.content)
    for _ in range(3):
        head = bolt_call.read_request_head(request, from_link=False)
        assert head.service == "svc:1.0" and head.method == bolt_call.sofarpc.read_request_head(echo.content).method_name


def test_a_malformed_map_is_refused_every_time():
    request = _request({"service": "svc:1.0"})
    request.header = request.header[:-1]
    for _ in range(3):
        with pytest.raises(bolt.BoltProtocolError):
            bolt_call.read_request_head(request, from_link=False)


# --- trace context and load-test marks ------------------------------------------------------------------------

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _whole(header: bytes, from_link: bool):
    bolt_call._LOCAL_READS.clear()
    bolt_call._LINK_READS.clear()
    return bolt_call._read_whole_header(header, from_link)


@pytest.mark.parametrize("from_link", [False, True])
def test_a_trailing_traceparent_is_read_with_the_rest_of_the_map_remembered(from_link):
    mapping = {**LOCAL_MAP, "rpc_trace_context.sofaTraceId": "abc", "rpc_trace_context.sysPenAttrs": "mark=T",
               link_headers.LOADTEST_TEXT: "1", "x-interlink-target-zone": "hz-b", "x-interlink-unit": "u01",
               "traceparent": TRACE}
    header = bolt.encode_header_map(mapping)
    expected = _whole(header, from_link)
    for _ in range(3):  # first read, then the part before the traceparent comes from the cache
        head = bolt_call.read_request_head(_request(mapping), from_link=from_link)
        assert (head.service, head.method, head.app, head.spans) == expected[:4]
        assert (head.traceparent, head.sofa_trace_id, head.sys_baggage, head.loadtest_mark, head.target_zone,
                head.unit) == expected[4]
        assert head.traceparent == TRACE.encode() and head.sofa_trace_id == b"abc" and head.sys_baggage == b"mark=T"
        assert head.loadtest_mark == b"1"
        assert (head.target_zone, head.unit) == ("hz-b", "u01")  # routing hints (net/pool.py Router)


def test_bytes_that_only_look_like_a_trailing_traceparent_are_read_as_the_whole_map():
    tail = bolt.header_entry(b"traceparent", b"z" * 55)
    mapping = {"service": "svc:1.0", "k": "abc" + tail.decode()}  # a value that ends in what looks like an entry
    head = bolt_call.read_request_head(_request(mapping), from_link=False)
    assert head.service == "svc:1.0" and head.traceparent is None


@given(st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=40), max_size=6))
def test_any_map_with_a_trailing_traceparent_reads_as_a_whole_scan_does(mapping):
    mapping = {key: value for key, value in mapping.items() if key != "traceparent"}
    header = bolt.encode_header_map({"service": "svc:1.0", **mapping}) + bolt.header_entry(b"traceparent", TRACE.encode())
    for from_link in (False, True):
        expected = _whole(header, from_link)
        assert bolt_call._read_header(header, from_link) == expected
        assert bolt_call._read_header(header, from_link) == expected  # (remembered)


def test_sofa_rpc_node_trace_context_in_the_request_props():
    props = {"rpc_trace_context": {"sofaTraceId": "0a0f01", "sysPenAttrs": "mark=T"}}
    assert bolt_call._body_trace(props) == (b"0a0f01", b"mark=T")
    assert bolt_call._body_trace({"rpc_trace_context.sofaTraceId": "x1"}) == (b"x1", None)
    assert bolt_call._body_trace({"new_rpc_trace_context": "tcid=77&spid=0"}) == (b"77", b"tcid=77&spid=0")
    assert bolt_call._body_trace({}) == (None, None)


def test_a_call_from_a_map_is_the_same_first_and_remembered_and_callers_cannot_change_what_is_remembered():
    mapping = {"service": "svc:1.0", "sofa_head_method_name": "echo", "app": "shop", "sofa_head_target_app": "t",
               "rpc_trace_context.sofaTraceId": "abc", link_headers.CALLER_APP_TEXT: "x", "k": "v"}
    with_trace = bolt.encode_header_map(mapping) + bolt.header_entry(b"traceparent", TRACE.encode())
    calls = []
    for header in (bolt.encode_header_map(mapping), with_trace, with_trace, with_trace):
        request = _request({})
        request.header = header
        call = bolt_call.call_from_bolt(request, "svc", None)
        calls.append((call.method, call.target_app, call.caller.app, dict(call.metadata)))
        call.metadata["k"] = "changed by a filter"  # the Call is the caller's to change
    assert calls[0] == calls[1] == calls[2] == calls[3]
    assert calls[0] == ("echo", "t", "shop", {"rpc_trace_context.sofaTraceId": "abc", "k": "v"})


def test_a_translated_response_header_map_is_the_same_remembered():
    from interlink.model import Payload, PayloadKind, Reply, Status

    request = _request({"service": "svc:1.0"})
    reply = Reply(Status.OK, payload=Payload(PayloadKind.PROTOBUF, b"\x0a\x01x"), metadata={"k": "v", "x-interlink-status": "x"})
    frames = [bolt_call.response_frame(reply, request) for _ in range(3)]
    assert len({frame.header for frame in frames}) == 1
    assert bolt.decode_header_map(frames[0].header) == {"k": "v", "sofa_head_response_error": "false"}


_KEYS = st.sampled_from(["service", "app", "sofa_head_method_name", "rpc_trace_context.sofaTraceId", "k", "K2",
                         "x-interlink-caller-app", "traceparent"])
_VALUES = st.text(max_size=8)


@given(st.dictionaries(_KEYS, _VALUES, max_size=4), st.dictionaries(_KEYS, st.none() | _VALUES, max_size=4),
       st.sampled_from(["echo", "say"]), st.none() | st.sampled_from(["app-a", ""]), st.none() | st.just("target"))
def test_a_translated_requests_header_map_is_the_merged_map_encoded_whatever_its_keys(metadata, stamps, method, app,
                                                                                      target_app):
    """request_frame remembers the map's first entries and encodes the metadata and stamps after them; the map is
    the one Java's merge would make (later keys win, in the first one's place; None values left out), keys given
    twice included -- twice, so that the remembered entries are used the second time."""
    from interlink.model import Call, Identity, Payload, PayloadKind

    call = Call(service="com.example.Echo", method=method, protocol="triple", metadata=metadata, target_app=target_app,
                caller=Identity("site-b", app) if app is not None else None,
                payload=Payload(PayloadKind.PROTOBUF, b"\x0a\x01x"))
    merged: dict[str, str | None] = {"service": "com.example.Echo:1.0", "sofa_head_target_service": "com.example.Echo:1.0",
                                     "sofa_head_method_name": method, "sofa_head_target_app": target_app, "app": app}
    merged.update(metadata)
    merged.update(stamps)
    for _ in range(2):
        frame = bolt_call.request_frame(call, unique_name="com.example.Echo:1.0", codec="protobuf", timeout_ms=1000,
                                        stamps=stamps)
        assert frame.header == bolt.encode_header_map(merged)
