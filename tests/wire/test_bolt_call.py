"""The Bolt request head as the call core reads it (bolt_call.read_request_head): the keys of a local caller's
map or of a peer link's, the SofaRequest head when the map lacks method or app, and the same answer whether
a map is read for the first time or again (what a map says is remembered per exact bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
