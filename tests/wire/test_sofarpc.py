"""SofaRequest head (method, arg sigs, target service/app, props) without the arguments; SofaResponse error
bodies as SOFARPC clients expect them; response summaries. Vectors: sofa-rpc-node 2.10.0 on the wire."""

from __future__ import annotations

import pathlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.wire import sofarpc
from interlink.wire.hessian2 import HessianError, HessianObject, SofaHessianReader, SofaHessianWriter, TypedList

VECTORS = pathlib.Path(__file__).resolve().parent.parent / "vectors" / "bolt"
SERVICE = "com.example.EchoService:1.0"


def body(name: str) -> bytes:
    """The content of a Bolt V1 or V2 request/response vector (see the .txt annotations)."""
    data = bytes.fromhex("".join((VECTORS / f"{name}.hex").read_text().split()))
    if data[0] == 1:
        at, start = (14, 22) if data[1] in (1, 2) else (12, 20)
    else:
        at, start = (16, 24) if data[2] in (1, 2) else (14, 22)
    class_len, header_len, content_len = struct.unpack_from(">HHI", data, at)
    offset = start + class_len + header_len
    return data[offset : offset + content_len]


def head_end(content: bytes) -> int:
    reader = SofaHessianReader(content)
    reader.read_value()
    return reader.offset


REQUESTS = {
    "bolt_v1_req_echo": ("echo", ("java.lang.String",), SERVICE, {"service": SERVICE}),
    "bolt_v1_req_add": ("add", ("int", "int"), SERVICE, {"service": SERVICE}),
    "bolt_v1_req_fail": ("fail", ("java.lang.String",), SERVICE, {"service": SERVICE}),
    "bolt_v1_oneway_echo": ("echo", ("java.lang.String",), SERVICE, {"service": SERVICE}),
    "bolt_v2_crc_req_echo": ("echo", ("java.lang.String",), SERVICE, {"service": SERVICE}),
    "bolt_v1_req_unknown_service": (
        "echo",
        ("java.lang.String",),
        "com.example.Missing:1.0",
        {"service": "com.example.Missing:1.0"},
    ),
    "bolt_v1_req_echo_traceprops": (
        "echo",
        ("java.lang.String",),
        SERVICE,
        {
            "service": SERVICE,
            "rpc_trace_context": {
                "sofaCallerApp": "echo-client",
                "sofaRpcId": "0",
                "sofaTraceId": "0a0fe8ab1700000000001000112233",
            },
        },
    ),
}

RESPONSES = [
    "bolt_v1_resp_echo",
    "bolt_v1_resp_add",
    "bolt_v1_resp_echo_traceprops",
    "bolt_v1_oneway_echo_resp_nodepeer_only",
    "bolt_v2_crc_resp_echo",
]


# --- request head ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_request_head_of_every_request_vector(name):
    method, sigs, service, props = REQUESTS[name]
    head = sofarpc.read_request_head(body(name))
    assert head == sofarpc.SofaRequestHead(
        method_name=method, arg_sigs=sigs, target_service=service, target_app="echo-server", request_props=props
    )
    assert sofarpc.caller_app(head) is None  # sofa-rpc-node sends no "app" unless the application does
    hash(head)  # usable as a key despite the props dict


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_request_head_stops_before_the_arguments(name):
    content = body(name)
    end = head_end(content)
    expected = sofarpc.read_request_head(content)
    for arguments in (b"", b"\xff\xff garbage", b"O", b"\x4a\x63", content[end:-1], b"V" * 1000):
        assert sofarpc.read_request_head(content[:end] + arguments) == expected


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_truncated_head_is_a_hessian_error(name):
    content = body(name)
    for cut in range(head_end(content)):
        with pytest.raises(HessianError) as info:
            sofarpc.read_request_head(content[:cut])
        assert type(info.value) is HessianError


def test_request_head_in_java_field_order_with_java_types():
    """Java's JavaSerializer may order fields differently and types String[] as "[string"; the head is read
    by the stream's class definition."""
    writer = SofaHessianWriter()
    writer.write_object(
        HessianObject(
            sofarpc.SOFA_REQUEST_CLASS,
            {
                "targetAppName": None,
                "methodName": "add",
                "methodArgSigs": TypedList(["int", "int"], "[string"),
                "targetServiceUniqueName": SERVICE,
                "requestProps": {"app": "order-app", "protocol": "bolt", "type": "sync"},
                "someFutureField": 7,
            },
        )
    )
    writer.write_int(1)
    writer.write_int(2)
    head = sofarpc.read_request_head(writer.getvalue())
    assert head == sofarpc.SofaRequestHead(
        "add", ("int", "int"), SERVICE, None, {"app": "order-app", "protocol": "bolt", "type": "sync"}
    )
    assert sofarpc.caller_app(head) == "order-app"


def test_request_head_with_null_sigs_and_props():
    writer = SofaHessianWriter()
    writer.write_object(
        HessianObject(
            sofarpc.SOFA_REQUEST_CLASS, {"methodName": "ping", "methodArgSigs": None, "requestProps": None}
        )
    )
    assert sofarpc.read_request_head(writer.getvalue()) == sofarpc.SofaRequestHead("ping", (), None, None, {})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"methodName": None}, "methodName"),
        ({"methodName": 3}, "methodName"),
        ({"methodName": "m", "methodArgSigs": ["int", 3]}, "methodArgSigs"),
        ({"methodName": "m", "methodArgSigs": "int"}, "methodArgSigs"),
        ({"methodName": "m", "requestProps": ["x"]}, "requestProps"),
        ({"methodName": "m", "targetServiceUniqueName": 1}, "targetServiceUniqueName"),
        ({"methodName": "m", "targetAppName": {}}, "targetAppName"),
    ],
)
def test_request_head_with_bad_fields(fields, message):
    writer = SofaHessianWriter()
    writer.write_object(HessianObject(sofarpc.SOFA_REQUEST_CLASS, fields))
    with pytest.raises(HessianError, match=message):
        sofarpc.read_request_head(writer.getvalue())


@pytest.mark.parametrize(
    ("content", "found"),
    [
        (body("bolt_v1_resp_echo"), "com.alipay.sofa.rpc.core.response.SofaResponse"),
        (b"\x05hello", "a str"),
        (b"N", "null"),
        (b"M\x01a\x91z", "a dict"),
    ],
)
def test_not_a_sofa_request(content, found):
    with pytest.raises(HessianError, match=f"starts with .*{found}.*not a {sofarpc.SOFA_REQUEST_CLASS}"):
        sofarpc.read_request_head(content)


@pytest.mark.parametrize(
    ("props", "app"),
    [
        ({"app": "order-app"}, "order-app"),
        ({"app": ""}, None),
        ({"app": 3}, None),
        ({"app": None}, None),
        ({}, None),
        ({"rpc_trace_context": {"sofaCallerApp": "x"}}, None),
    ],
)
def test_caller_app(props, app):
    assert sofarpc.caller_app(sofarpc.SofaRequestHead("m", (), None, None, props)) == app


# --- responses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RESPONSES)
def test_sofa_response_reproduces_the_vectors(name):
    content = body(name)
    (value,) = [SofaHessianReader(content).read_value()]
    assert value.fields["isError"] is False and value.fields["responseProps"] is None  # type: ignore[union-attr]
    assert sofarpc.sofa_response(value.fields["appResponse"]) == content  # type: ignore[union-attr]
    assert sofarpc.read_response_summary(content) == (False, None)


# sofa-rpc-node 2.10.0 (sofa-bolt-node app_type/sofa_response.js) encoding
# {isError: true, errorMsg: 'no route to com.example.X:1.0', appResponse: null, responseProps: null}
NODE_ERROR_RESPONSE = bytes.fromhex(
    "4fbe636f6d2e616c697061792e736f66612e7270632e636f72652e726573706f6e73652e536f6661526573706f6e7365"
    "940769734572726f72086572726f724d73670b617070526573706f6e73650d726573706f6e736550726f70736f9054"
    "1d6e6f20726f75746520746f20636f6d2e6578616d706c652e583a312e304e4e"
)


def test_error_response_is_what_sofa_rpc_node_writes():
    assert sofarpc.sofa_error_response("no route to com.example.X:1.0") == NODE_ERROR_RESPONSE


def test_error_response_shares_the_class_definition_of_real_responses():
    vector = body("bolt_v1_resp_echo")
    error = sofarpc.sofa_error_response("boom")
    prefix = vector[: vector.index(b"o\x90") + 2]
    assert error.startswith(prefix) and error[len(prefix) :] == b"T\x04boomNN"


@pytest.mark.parametrize(
    "message",
    ["", "boom", "service com.example.X:1.0 is not imported by site a", "中文 \U0001f600", "m" * 40000],
)
def test_error_response_decodes_to_the_expected_object(message):
    content = sofarpc.sofa_error_response(message)
    reader = SofaHessianReader(content)
    assert reader.read_value() == HessianObject(
        sofarpc.SOFA_RESPONSE_CLASS,
        {"isError": True, "errorMsg": message, "appResponse": None, "responseProps": None},
    )
    assert reader.at_end
    assert reader.class_defs == [
        (sofarpc.SOFA_RESPONSE_CLASS, ("isError", "errorMsg", "appResponse", "responseProps"))
    ]
    assert content == sofarpc.sofa_response(is_error=True, error_msg=message)
    assert sofarpc.read_response_summary(content) == (True, message)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_error_response_round_trip(message):
    assert sofarpc.read_response_summary(sofarpc.sofa_error_response(message)) == (True, message)


def test_response_with_props():
    content = sofarpc.sofa_response("ok", response_props={"rpc_resp_baggage.k": "v"})
    value = SofaHessianReader(content).read_value()
    assert isinstance(value, HessianObject) and value.fields["responseProps"] == {"rpc_resp_baggage.k": "v"}


def test_summary_does_not_read_app_response():
    content = sofarpc.sofa_error_response("boom")
    assert content.endswith(b"NN")
    assert sofarpc.read_response_summary(content[:-2] + b"\xff\xff") == (True, "boom")
    assert sofarpc.read_response_summary(content[:-2]) == (True, "boom")
    ok = body("bolt_v1_resp_echo")
    assert sofarpc.read_response_summary(ok[: ok.index(b"\x07hello-0")]) == (False, None)


def test_summary_reads_fields_in_the_streams_order():
    writer = SofaHessianWriter()
    writer.write_object(
        HessianObject(
            sofarpc.SOFA_RESPONSE_CLASS,
            {"appResponse": ["big", {"k": "v"}], "responseProps": None, "errorMsg": "late", "isError": True},
        )
    )
    assert sofarpc.read_response_summary(writer.getvalue()) == (True, "late")
    writer = SofaHessianWriter()
    writer.write_object(HessianObject(sofarpc.SOFA_RESPONSE_CLASS, {"appResponse": 1}))
    assert sofarpc.read_response_summary(writer.getvalue()) == (False, None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (body("bolt_v1_req_echo"), "SofaRequest, not a"),
        (b"\x05hello", "expected an object"),
        (b"", "truncated"),
        (sofarpc.sofa_error_response("boom")[:-8], "truncated"),
    ],
)
def test_summary_of_what_is_not_a_sofa_response(content, message):
    with pytest.raises(HessianError, match=message) as info:
        sofarpc.read_response_summary(content)
    assert type(info.value) is HessianError


def test_summary_of_a_node_exception_body():
    """sofa-rpc-node answers SERVER_EXCEPTION with className SofaResponse but an RpcServerException body."""
    writer = SofaHessianWriter()
    writer.write_object(
        HessianObject("com.alipay.remoting.rpc.exception.RpcServerException", {"detailMessage": "Error: boom"})
    )
    with pytest.raises(HessianError, match="RpcServerException, not a"):
        sofarpc.read_response_summary(writer.getvalue())


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"isError": 1}, "isError"), ({"isError": True, "errorMsg": 5}, "errorMsg")],
)
def test_summary_with_bad_field_types(fields, message):
    writer = SofaHessianWriter()
    writer.write_object(HessianObject(sofarpc.SOFA_RESPONSE_CLASS, fields))
    with pytest.raises(HessianError, match=message):
        sofarpc.read_response_summary(writer.getvalue())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120), st.sampled_from(sorted(REQUESTS) + RESPONSES), st.integers(0, 400))
def test_only_hessian_errors_escape(garbage, name, cut):
    content = body(name)
    for data in (garbage, content[: cut % (len(content) + 1)] + garbage):
        for parse in (sofarpc.read_request_head, sofarpc.read_response_summary):
            try:
                parse(data)
            except HessianError as exc:
                assert type(exc) is HessianError


def test_request_head_cache_agrees_with_a_fresh_read():
    from interlink.wire.sofarpc import RequestHeadCache

    cache = RequestHeadCache(max_entries=4)
    bodies = [body(name) for name in ("bolt_v1_req_echo", "bolt_v1_req_add", "bolt_v1_req_echo_traceprops")]
    for _ in range(3):
        for content in bodies:
            assert cache.read(content) == sofarpc.read_request_head(content)
            # Different arguments after the same head: still the same head, read from the cache.
            assert cache.read(content + b"\x91") == sofarpc.read_request_head(content)
    with pytest.raises(HessianError):
        cache.read(b"\x4f\x00")


def test_request_head_cache_keeps_no_big_or_one_off_heads():
    """The issue's attack: ~1 MiB SofaRequest heads, all different, must not stay in memory."""
    from interlink.wire.hessian2 import HessianObject, SofaHessianWriter
    from interlink.wire.sofarpc import RequestHeadCache

    def head(props: dict) -> bytes:
        writer = SofaHessianWriter()
        writer.write_object(HessianObject(sofarpc.SOFA_REQUEST_CLASS, {
            "methodName": "echo", "methodArgSigs": ["java.lang.String"],
            "targetServiceUniqueName": "com.example.EchoService:1.0", "targetAppName": None, "requestProps": props,
        }))
        return writer.getvalue()

    cache = RequestHeadCache()
    for index in range(3):
        big = head({"pad": f"{index}" + "x" * (1 << 20)})
        assert cache.read(big).method_name == "echo"
        assert cache.read(big).method_name == "echo"  # seen twice, still too big to keep
    for index in range(100):
        cache.read(head({"trace": str(index)}))  # small, but each seen once
    assert len(cache._heads) == 0 and cache._heads.bytes == 0
    small = head({"app": "order-app"})
    cache.read(small)
    cache.read(small)
    assert len(cache._heads) == 1
