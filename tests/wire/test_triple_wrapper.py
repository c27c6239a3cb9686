"""Bolt hessian2 bodies <-> Triple wrapper messages: the golden vectors of tests/vectors/triple reproduced
byte for byte from the Bolt vectors, splitting a SofaRequest stream into independent argument streams
(shared class definitions, types and objects), responses and exceptions, malformed input (only
TranslationError escapes), and that the generated triple_wrapper_pb2 matches its .proto."""

from __future__ import annotations

import pathlib
import re
import struct
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from interlink.wire import bolt, sofarpc, triple_wrapper, triple_wrapper_pb2
from interlink.wire.hessian2 import (
    FinalHessianWriter,
    HessianDate,
    HessianLong,
    HessianObject,
    SofaHessianWriter,
    TypedList,
    TypedMap,
    new_reader,
)
from interlink.wire.triple_wrapper import (
    SERIALIZE_DUBBO,
    SERIALIZE_SOFA,
    SofaCall,
    TranslationError,
    java_type_name,
    read_sofa_response,
    sofa_error_body,
    sofa_request_to_wrapper,
    sofa_response_to_wrapper,
    wrapper_response_to_sofa_response,
    wrapper_to_sofa_request,
)
from tests.wire.test_hessian_final import graphs, shape

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
VECTORS = ROOT / "tests" / "vectors"
SERVICE = "com.example.EchoService:1.0"
REQUEST = sofarpc.SOFA_REQUEST_CLASS
FLAVOURS = {"sofa": SERIALIZE_SOFA, "dubbo": SERIALIZE_DUBBO}
DIALECT = {SERIALIZE_SOFA: "sofa", SERIALIZE_DUBBO: "final"}


def hex_file(path: pathlib.Path) -> bytes:
    return bytes.fromhex("".join(path.read_text().split()))


def body(name: str) -> bytes:
    """The content (Hessian body) of a Bolt vector, found by the Bolt decoder."""
    return bolt.decode(hex_file(VECTORS / "bolt" / f"{name}.hex")).content


def grpc_frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def sofa_body(head: HessianObject, *args: object) -> bytes:
    writer = SofaHessianWriter(faithful=True)
    for value in (head, *args):
        writer.write_value(value)
    return writer.getvalue()


def request_head(method: str, sigs: list[str], props: dict | None = None) -> HessianObject:
    return HessianObject(
        REQUEST,
        {
            "methodName": method,
            "methodArgSigs": TypedList(sigs, "[java.lang.String"),
            "targetServiceUniqueName": SERVICE,
            "targetAppName": "echo-server",
            "requestProps": props if props is not None else {"service": SERVICE},
        },
    )


def decode_alone(data: bytes, serialize_type: str) -> object:
    reader = new_reader(DIALECT[serialize_type], data, faithful=True)
    value = reader.read_value()
    assert reader.at_end
    return value


def to_sofa(wrapper: bytes) -> tuple[tuple[str, ...], bytes]:
    return wrapper_to_sofa_request(wrapper, method="m", target_service=SERVICE, target_app=None, request_props={})


def read_body(data: bytes) -> list[object]:
    reader = new_reader("sofa", data, faithful=True)
    values = []
    while not reader.at_end:
        values.append(reader.read_value())
    return values


# --- golden vectors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("method", ["add", "echo"])
def test_request_vectors(method, flavour):
    call, message = sofa_request_to_wrapper(body(f"bolt_v1_req_{method}"), FLAVOURS[flavour])
    assert message == hex_file(VECTORS / "triple" / f"wrapper_req_{method}_{flavour}.pb.hex")
    assert grpc_frame(message) == hex_file(VECTORS / "triple" / f"wrapper_req_{method}_{flavour}.grpc.hex")
    sigs = ("int", "int") if method == "add" else ("java.lang.String",)
    assert call == SofaCall(method, sigs, SERVICE, "echo-server", {"service": SERVICE})
    # and back: the Bolt body sofa-rpc-node wrote, byte for byte
    assert wrapper_to_sofa_request(
        message, method=method, target_service=SERVICE, target_app="echo-server", request_props={"service": SERVICE}
    ) == (sigs, body(f"bolt_v1_req_{method}"))


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("method", ["add", "echo"])
def test_response_vectors(method, flavour):
    result, message = sofa_response_to_wrapper(body(f"bolt_v1_resp_{method}"), FLAVOURS[flavour])
    assert message == hex_file(VECTORS / "triple" / f"wrapper_resp_{method}_{flavour}.pb.hex")
    assert grpc_frame(message) == hex_file(VECTORS / "triple" / f"wrapper_resp_{method}_{flavour}.grpc.hex")
    assert not result.is_error and not result.is_exception
    assert result.app_response == (1 if method == "add" else "hello-0")
    assert wrapper_response_to_sofa_response(message) == body(f"bolt_v1_resp_{method}")


REQUEST_BODIES = sorted(p.stem for p in (VECTORS / "bolt").glob("*req*.hex") if body(p.stem)) + ["bolt_v1_oneway_echo"]


@pytest.mark.parametrize("serialize_type", [SERIALIZE_SOFA, SERIALIZE_DUBBO])
@pytest.mark.parametrize("name", REQUEST_BODIES)
def test_every_request_vector_goes_there_and_back(name, serialize_type):
    content = body(name)
    call, message = sofa_request_to_wrapper(content, serialize_type)
    sigs, back = wrapper_to_sofa_request(
        message,
        method=call.method,
        target_service=call.target_service,  # type: ignore[arg-type]
        target_app=call.target_app,
        request_props=call.request_props,
    )
    assert sigs == call.arg_sigs and back == content


def test_the_traceprops_vector_keeps_its_nested_props():
    call, _ = sofa_request_to_wrapper(body("bolt_v1_req_echo_traceprops"), SERIALIZE_DUBBO)
    trace = call.request_props["rpc_trace_context"]
    assert trace["sofaTraceId"] == "0a0fe8ab1700000000001000112233"  # type: ignore[index]


# --- splitting one SofaRequest stream into independent argument streams ---------------------------------------


@pytest.mark.parametrize("serialize_type", [SERIALIZE_SOFA, SERIALIZE_DUBBO])
def test_arguments_that_lean_on_the_stream_before_them(serialize_type):
    """Arguments that use a class definition from the SofaRequest, a type name from methodArgSigs, an
    earlier argument's object, the requestProps map itself, and sharing inside one argument."""
    ctx = HessianObject("com.example.Ctx", {"id": HessianLong(7)})
    props = {"service": SERVICE, "ctx": ctx}  # class com.example.Ctx is defined inside the SofaRequest
    user = HessianObject("com.example.User", {"name": "ann", "tags": TypedList(["a", "b"], "[java.lang.String")})
    inner = [1, 2]
    args = [
        HessianObject("com.example.Ctx", {"id": HessianLong(8)}),  # 'o' #1: no definition in its own bytes
        TypedList(["x"], "[java.lang.String"),  # 'v' type ref #0 from methodArgSigs
        user,
        HessianObject("com.example.Pair", {"left": user, "right": user}),  # refers to argument 2
        props,  # the requestProps map again: a back-reference
        [inner, inner],  # sharing inside one argument
        ctx,  # an object inside requestProps
    ]
    sigs = ["com.example.Ctx", "[Ljava.lang.String;", "com.example.User", "com.example.Pair", "java.util.Map",
            "java.util.List", "com.example.Ctx"]  # fmt: skip
    content = sofa_body(request_head("call", sigs, props), *args)
    assert b"\x6f\x91" in content and b"\x4a" in content  # the Bolt stream does use references
    call, message = sofa_request_to_wrapper(content, serialize_type)
    wrapper = triple_wrapper_pb2.TripleRequestWrapper.FromString(message)
    assert wrapper.serializeType == serialize_type and list(wrapper.argTypes) == sigs
    decoded = [decode_alone(arg, serialize_type) for arg in wrapper.args]
    assert [shape(v) for v in decoded] == [shape(v) for v in args]  # each alone, each complete
    pair = decoded[3]
    assert pair.fields["left"] is pair.fields["right"]  # type: ignore[attr-defined]
    assert decoded[5][0] is decoded[5][1]  # type: ignore[index]
    assert type(decoded[0].fields["id"]) is HessianLong  # type: ignore[attr-defined]
    # back into one Bolt stream: the same values (sharing across arguments is not carried by the wrapper)
    _, back = wrapper_to_sofa_request(
        message, method="call", target_service=SERVICE, target_app="echo-server", request_props=call.request_props
    )
    head, *back_args = read_body(back)
    assert head.fields["methodArgSigs"] == sigs  # type: ignore[attr-defined]
    assert [shape(v) for v in back_args] == [shape(v) for v in args]


def test_wrapper_args_in_the_final_grammar_are_complete_streams():
    """A Dubbo argument is written as hessian-lite writes it: 'C' definition, then the instance."""
    content = sofa_body(request_head("put", ["com.example.Ctx"], {"c": HessianObject("com.example.Ctx", {"id": 1})}),
                        HessianObject("com.example.Ctx", {"id": 2}))  # fmt: skip
    _, message = sofa_request_to_wrapper(content, SERIALIZE_DUBBO)
    (arg,) = triple_wrapper_pb2.TripleRequestWrapper.FromString(message).args
    assert arg == b"C\x0fcom.example.Ctx\x91\x02id\x60\x92"
    _, message = sofa_request_to_wrapper(content, SERIALIZE_SOFA)
    (arg,) = triple_wrapper_pb2.TripleRequestWrapper.FromString(message).args
    assert arg == b"O\x9fcom.example.Ctx\x91\x02ido\x90\x92"


@settings(max_examples=150, deadline=None)
@given(st.lists(graphs(max_containers=6), max_size=4), st.sampled_from([SERIALIZE_SOFA, SERIALIZE_DUBBO]))
def test_random_arguments_split_and_join(args, serialize_type):
    """Arguments that share objects with each other (hypothesis draws them from one pool only within an
    argument, so share across arguments explicitly) decode alone to their full values."""
    if len(args) >= 2:
        args.append([args[0], args[-1]])  # refers to earlier arguments
    sigs = ["java.lang.Object"] * len(args)
    content = sofa_body(request_head("m", sigs), *args)
    call, message = sofa_request_to_wrapper(content, serialize_type)
    wrapper = triple_wrapper_pb2.TripleRequestWrapper.FromString(message)
    assert [shape(decode_alone(arg, serialize_type)) for arg in wrapper.args] == [shape(v) for v in args]
    _, back = wrapper_to_sofa_request(
        message, method="m", target_service=SERVICE, target_app=None, request_props=call.request_props
    )
    assert [shape(v) for v in read_body(back)[1:]] == [shape(v) for v in args]


# --- responses ---------------------------------------------------------------------------------------------


def sofa_response_body(
    app: object, *, is_error: bool = False, error_msg: str | None = None, props: dict | None = None
) -> bytes:
    writer = SofaHessianWriter(faithful=True)
    writer.write_value(
        HessianObject(
            sofarpc.SOFA_RESPONSE_CLASS,
            {"isError": is_error, "errorMsg": error_msg, "appResponse": app, "responseProps": props},
        )
    )
    return writer.getvalue()


def boom() -> HessianObject:
    return HessianObject(
        "java.lang.IllegalStateException",
        {"detailMessage": "boom", "cause": None, "stackTrace": TypedList([], "[java.lang.StackTraceElement")},
    )


def test_read_sofa_response():
    result = read_sofa_response(sofa_response_body(boom(), props={"k": "v"}))
    assert result.is_exception and result.exception_message == "boom" and not result.is_error
    assert result.response_props == {"k": "v"}
    assert read_sofa_response(sofa_response_body(HessianObject("com.example.MyError", {}))).is_exception
    assert not read_sofa_response(sofa_response_body(HessianObject("com.example.User", {"name": "x"}))).is_exception
    error = read_sofa_response(sofa_error_body("no such service"))
    assert error.is_error and error.error_msg == "no such service" and error.app_response is None
    assert sofa_error_body("x") == sofarpc.sofa_error_response("x")
    with pytest.raises(TranslationError, match="not a SofaResponse"):
        read_sofa_response(sofa_body(request_head("m", [])))


@pytest.mark.parametrize("serialize_type", [SERIALIZE_SOFA, SERIALIZE_DUBBO])
def test_responses_with_structured_values(serialize_type):
    app = HessianObject(
        "com.example.Page",
        {"items": TypedList([HessianDate(60000), 0.5, HessianLong(3)], "java.util.ArrayList"),
         "meta": TypedMap({"total": 3}, "java.util.TreeMap"), "blob": b"\x00" * 20},
    )  # fmt: skip
    app.fields["self"] = app
    result, message = sofa_response_to_wrapper(sofa_response_body(app, props={"p": "1"}), serialize_type)
    wrapper = triple_wrapper_pb2.TripleResponseWrapper.FromString(message)
    assert wrapper.type == "com.example.Page" and wrapper.serializeType == serialize_type
    data = decode_alone(wrapper.data, serialize_type)
    assert shape(data) == shape(app) and data.fields["self"] is data  # type: ignore[attr-defined]
    back = wrapper_response_to_sofa_response(message, response_props={"p": "1"})
    assert back == sofa_response_body(app, props={"p": "1"})


def test_response_props_and_null_data():
    message = triple_wrapper_pb2.TripleResponseWrapper(serializeType=SERIALIZE_DUBBO).SerializeToString()
    assert wrapper_response_to_sofa_response(message) == sofarpc.sofa_response()
    assert wrapper_response_to_sofa_response(message, response_props={"a": "b"}) == sofarpc.sofa_response(
        response_props={"a": "b"}
    )
    _, message = sofa_response_to_wrapper(sofarpc.sofa_response(), SERIALIZE_SOFA)
    assert triple_wrapper_pb2.TripleResponseWrapper.FromString(message).data == b"N"


def test_dubbo_exceptions():
    exception = FinalHessianWriter()
    exception.write_value(boom())
    message = triple_wrapper_pb2.TripleResponseWrapper(
        serializeType=SERIALIZE_DUBBO, data=exception.getvalue(), type="java.lang.IllegalStateException"
    ).SerializeToString()
    result = read_sofa_response(wrapper_response_to_sofa_response(message, exception=True))
    assert result.is_exception and result.exception_message == "boom" and not result.is_error
    # data that cannot be thrown becomes isError with the text
    text = triple_wrapper_pb2.TripleResponseWrapper(serializeType=SERIALIZE_DUBBO, data=b"\x04boom").SerializeToString()
    result = read_sofa_response(wrapper_response_to_sofa_response(text, exception=True))
    assert result.is_error and result.error_msg == "boom"
    assert read_sofa_response(wrapper_response_to_sofa_response(text)).app_response == "boom"


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, ""), (True, "boolean"), (1, "int"), (HessianLong(1), "long"), (2**40, "long"), (1.5, "double"),
        ("s", "java.lang.String"), (b"b", "[B"), (HessianDate(0), "java.util.Date"),
        (HessianObject("com.example.User", {}), "com.example.User"), ([], "java.util.List"), ({}, "java.util.Map"),
        (TypedList([], "[int"), "[I"), (TypedList([], "[[int"), "[[I"),
        (TypedList([], "[string"), "[Ljava.lang.String;"), (TypedList([], "[java.lang.String"), "[Ljava.lang.String;"),
        (TypedList([], "[com.example.User"), "[Lcom.example.User;"),
        (TypedList([], "java.util.LinkedList"), "java.util.LinkedList"),
        (TypedMap({}, "java.util.TreeMap"), "java.util.TreeMap"),
    ],
)  # fmt: skip
def test_java_type_names(value, name):
    assert java_type_name(value) == name


@settings(max_examples=150, deadline=None)
@given(graphs(), st.sampled_from([SERIALIZE_SOFA, SERIALIZE_DUBBO]))
def test_random_responses_there_and_back(app, serialize_type):
    content = sofa_response_body(app)
    result, message = sofa_response_to_wrapper(content, serialize_type)
    assert shape(result.app_response) == shape(app)
    data = triple_wrapper_pb2.TripleResponseWrapper.FromString(message).data
    assert shape(decode_alone(data, serialize_type)) == shape(app)
    assert wrapper_response_to_sofa_response(message) == content


# --- what cannot be translated -------------------------------------------------------------------------------


def test_unknown_serialize_types():
    with pytest.raises(TranslationError, match="fastjson2"):
        sofa_request_to_wrapper(body("bolt_v1_req_echo"), "fastjson2")
    with pytest.raises(TranslationError, match="protobuf"):
        sofa_response_to_wrapper(body("bolt_v1_resp_echo"), "protobuf")
    message = triple_wrapper_pb2.TripleRequestWrapper(serializeType="json", args=[b"1"], argTypes=["int"])
    with pytest.raises(TranslationError, match="json"):
        to_sofa(message.SerializeToString())


@pytest.mark.parametrize(
    ("args", "types", "message"),
    [
        ([b"\x90"], [], "1 args but 0 argTypes"),
        ([b""], ["int"], "argument 0 .* is empty"),
        ([b"\x90", b"\x49\x00"], ["int", "int"], "argument 1 \\(int\\).*truncated"),
        ([b"\x48\x54\x4e\x5a"], ["java.util.Map"], "argument 0 .*True"),  # {true: null}: not in sofa
        ([b"\x43\x01A\x92\x01a\x01a\x60\x90\x90"], ["A"], "argument 0 .*repeats a field name"),
    ],
)
def test_bad_wrapper_requests(args, types, message):
    wrapper = triple_wrapper_pb2.TripleRequestWrapper(serializeType=SERIALIZE_DUBBO, args=args, argTypes=types)
    with pytest.raises(TranslationError, match=message):
        to_sofa(wrapper.SerializeToString())


def test_bad_bolt_bodies():
    with pytest.raises(TranslationError, match="SofaRequest"):
        sofa_request_to_wrapper(b"N", SERIALIZE_SOFA)
    with pytest.raises(TranslationError, match="argument 1 \\(int\\)"):
        sofa_request_to_wrapper(body("bolt_v1_req_add")[:-1], SERIALIZE_DUBBO)
    with pytest.raises(TranslationError, match="SofaResponse"):
        sofa_response_to_wrapper(b"\x90", SERIALIZE_SOFA)
    with pytest.raises(TranslationError, match="cannot be decoded"):
        wrapper_response_to_sofa_response(b"\xff\xff")
    with pytest.raises(TranslationError, match="data"):
        wrapper_response_to_sofa_response(
            triple_wrapper_pb2.TripleResponseWrapper(serializeType=SERIALIZE_SOFA, data=b"C").SerializeToString()
        )


@pytest.mark.parametrize("name", REQUEST_BODIES + ["bolt_v1_resp_echo", "bolt_v1_resp_add"])
def test_truncations_and_mutations_of_vectors(name):
    content = body(name)
    convert = sofa_response_to_wrapper if "resp" in name else sofa_request_to_wrapper
    for cut in range(len(content)):
        with pytest.raises(TranslationError):
            convert(content[:cut], SERIALIZE_DUBBO)
    for at in range(len(content)):
        for replacement in (0x00, 0x4A, 0x4F, 0x56, 0x6F, 0x7A, 0x90, 0xFF):
            try:
                convert(content[:at] + bytes([replacement]) + content[at + 1 :], SERIALIZE_DUBBO)
            except TranslationError:
                pass


def only_translation_errors(function, *args, **kwargs) -> None:
    try:
        function(*args, **kwargs)
    except TranslationError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([SERIALIZE_SOFA, SERIALIZE_DUBBO]))
def test_random_bytes_everywhere(data, serialize_type):
    only_translation_errors(sofa_request_to_wrapper, data, serialize_type)
    only_translation_errors(sofa_response_to_wrapper, data, serialize_type)
    only_translation_errors(read_sofa_response, data)
    only_translation_errors(wrapper_response_to_sofa_response, data, exception=True)
    only_translation_errors(to_sofa, data)
    for wrapper in (
        triple_wrapper_pb2.TripleRequestWrapper(serializeType=serialize_type, args=[data], argTypes=["x"]),
        triple_wrapper_pb2.TripleResponseWrapper(serializeType=serialize_type, data=data),
    ):
        raw = wrapper.SerializeToString()
        only_translation_errors(to_sofa, raw)
        only_translation_errors(wrapper_response_to_sofa_response, raw)


# --- the generated protobuf module ---------------------------------------------------------------------------


PROTO = ROOT / "interlink" / "wire" / "protos" / "triple_wrapper.proto"
GENERATED = ROOT / "interlink" / "wire" / "triple_wrapper_pb2.py"


def _normalised(source: str) -> str:
    """Generated code without comment lines and the runtime version gate (both name protoc's version)."""
    source = re.sub(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)", "<gate>", source)
    return "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))


def test_generated_module_is_what_protoc_generates(tmp_path):
    """Regenerate with `python -m grpc_tools.protoc -I interlink/wire/protos --python_out=interlink/wire
    interlink/wire/protos/triple_wrapper.proto` when this fails."""
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={tmp_path}",
         f"--descriptor_set_out={tmp_path / 'set.pb'}", str(PROTO)],
        check=True,
    )  # fmt: skip
    assert _normalised((tmp_path / "triple_wrapper_pb2.py").read_text()) == _normalised(GENERATED.read_text())
    fresh = descriptor_pb2.FileDescriptorSet.FromString((tmp_path / "set.pb").read_bytes()).file[0]
    for message in fresh.message_type:
        for entry in message.field:
            entry.ClearField("json_name")  # descriptor sets carry it, generated code does not
    assert triple_wrapper_pb2.DESCRIPTOR.serialized_pb == fresh.SerializeToString()


def test_proto_is_the_shared_copy():
    shared = ROOT.parent / "shared" / "protos" / "triple_wrapper.proto"
    if shared.exists():  # ../shared is beside the checkout on developer machines and CI
        assert PROTO.read_text() == shared.read_text()
    messages = triple_wrapper_pb2.DESCRIPTOR.message_types_by_name.values()
    names = {m.name: [(f.name, f.number) for f in m.fields] for m in messages}
    assert names == {
        "TripleRequestWrapper": [("serializeType", 1), ("args", 2), ("argTypes", 3)],
        "TripleResponseWrapper": [("serializeType", 1), ("data", 2), ("type", 3)],
        "TripleExceptionWrapper": [("language", 1), ("serialization", 2), ("className", 3), ("data", 4)],
    }
    assert triple_wrapper.SERIALIZE_SOFA == "hessian2" and triple_wrapper.SERIALIZE_DUBBO == "hessian4"
