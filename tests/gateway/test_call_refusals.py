"""Calls the gateway answers itself, before or instead of forwarding them: every filter's refusal, routing,
malformed heads, untranslatable requests, no usable upstream. The caller gets its protocol's error
(Trailers-Only for HTTP/2, an error frame for Bolt, nothing for oneway), the provider sees nothing, one
access line, one audit `deny` on the peer port (none locally), and nothing is left behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from interlink.gateway.filters import AccessDomainFilter, ExportAclFilter, Filter, FilterChains
from interlink.model import Refusal, Status
from interlink.routes import bolt_unique_name
from interlink.wire import bolt, grpc, triple_wrapper_pb2
from tests.gateway.harness import (
    APP, BOLT, DOMAIN, FOR_C, HESSIAN, METHOD, PRIVATE, SOFA, TRIPLE, H2Peer, bolt_outcome, bolt_request,
    h2_request_headers, open_world, wait_until,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "bolt"
BAD_WRAPPER = triple_wrapper_pb2.TripleRequestWrapper(
    serializeType="hessian2", args=[b"\x07hello-0"], argTypes=[]).SerializeToString()  # an arg without its type
ECHO_SOFA_REQUEST = bolt.decode(bytes.fromhex("".join((VECTORS / "bolt_v1_req_echo.hex").read_text().split())))


class Refuser(Filter):
    def on_request(self, call) -> None:
        raise Refusal(Status.FAILED_PRECONDITION, "the stage filter says no")


@dataclass(frozen=True)
class Refused:
    ingress: str
    caller: str  # h2 | bolt
    status: str
    says: str  # part of the message the caller and the access line carry
    service: str = TRIPLE
    method: str = METHOD
    app: str | None = APP
    world: dict = field(default_factory=dict)  # open_world options
    authority: bytes | None = None  # h2: :authority (default: right for the ingress)
    headers: tuple = ()  # h2: replace these headers
    body: bytes | None = grpc.encode_message(b"ping-0")  # h2: DATA after HEADERS (None: END_STREAM on HEADERS)
    bolt: dict = field(default_factory=dict)  # bolt_request options
    http: bytes = b"200"
    extra_filter: bool = False
    upstream: str | None = None  # the providers' protocol, when it is not the caller's (a translated call)
    after_filters: bool = False  # refused once the filters let it pass: audited `allow` on the peer port

    @property
    def oneway(self) -> bool:
        return bool(self.bolt.get("oneway"))


def to_bolt(*args, **options) -> Refused:
    """A Triple caller on the peer port, to an export served by Bolt providers (translated)."""
    return Refused("peer", "h2", *args, upstream="bolt", after_filters=True, **options)


def to_triple(*args, **options) -> Refused:
    """A calling gateway's Bolt request, to an export served by Triple providers (translated)."""
    return Refused("peer", "bolt", *args, upstream="h2", after_filters=True, **options)


CASES = {
    # peer port, the access domain (SNI, :authority) and the export's ACL
    "peer-h2-wrong-sni": Refused("peer", "h2", "PERMISSION_DENIED", "may not use TLS SNI b.for-c.example",
                                 world={"sni": b"b.for-c.example"}),
    "peer-h2-no-sni": Refused("peer", "h2", "PERMISSION_DENIED", "may not use TLS SNI (none)", world={"sni": None}),
    "peer-h2-wrong-authority": Refused("peer", "h2", "PERMISSION_DENIED", "may not use access domain b.for-c.example",
                                       authority=b"b.for-c.example:443"),
    "peer-h2-site-without-domain": Refused("peer", "h2", "PERMISSION_DENIED", "site site-z has no access domain",
                                           world={"site": "site-z"}),
    "peer-h2-not-exported": Refused("peer", "h2", "UNIMPLEMENTED", "service demo.Nope is not exported by site site-b",
                                    service="demo.Nope"),
    "peer-h2-exported-to-another-site": Refused("peer", "h2", "PERMISSION_DENIED", "is not exported to site site-a",
                                                service=FOR_C),
    "peer-h2-acl-app-denied": Refused("peer", "h2", "PERMISSION_DENIED",
                                      "app intruder of site site-a may not call demo.Private/Allowed",
                                      service=PRIVATE, method="Allowed", app="intruder"),
    "peer-h2-acl-no-app": Refused("peer", "h2", "PERMISSION_DENIED", "app (none) of site site-a", service=PRIVATE,
                                  method="Allowed", app=None),
    "peer-h2-acl-method-denied": Refused("peer", "h2", "PERMISSION_DENIED", "may not call demo.Private/Secret",
                                         service=PRIVATE, method="Secret"),
    "peer-h2-not-post": Refused("peer", "h2", "UNIMPLEMENTED", "must use POST", headers=((b":method", b"GET"),),
                                http=b"405"),
    "peer-h2-custom-filter": Refused("peer", "h2", "FAILED_PRECONDITION", "the stage filter says no", extra_filter=True),
    "peer-bolt-wrong-sni": Refused("peer", "bolt", "PERMISSION_DENIED", "may not use TLS SNI b.for-c.example",
                                   service=bolt_unique_name(BOLT, None), world={"sni": b"b.for-c.example"}),
    "peer-bolt-not-exported": Refused("peer", "bolt", "UNIMPLEMENTED", "service demo.Nope:1.0 is not exported",
                                      service="demo.Nope:1.0"),
    "peer-bolt-acl-method-denied": Refused("peer", "bolt", "PERMISSION_DENIED", "may not call demo.Private:1.0/Secret",
                                           service=bolt_unique_name(PRIVATE, None), method="Secret"),
    "peer-bolt-oneway-denied": Refused("peer", "bolt", "PERMISSION_DENIED", "may not call demo.Private:1.0/Secret",
                                       service=bolt_unique_name(PRIVATE, None), method="Secret",
                                       bolt={"oneway": True}),
    "peer-bolt-custom-filter": Refused("peer", "bolt", "FAILED_PRECONDITION", "the stage filter says no",
                                       service=bolt_unique_name(BOLT, None), extra_filter=True),
    # local port: routing and heads
    "local-h2-not-imported": Refused("local", "h2", "UNIMPLEMENTED",
                                     "service demo.Nope is not imported by site site-b; add it under imports: in",
                                     service="demo.Nope"),
    "local-h2-not-post": Refused("local", "h2", "UNIMPLEMENTED", "must use POST", headers=((b":method", b"PUT"),),
                                 http=b"405"),
    "local-h2-not-grpc": Refused("local", "h2", "INTERNAL", "content-type must be application/grpc",
                                 headers=((b"content-type", b"text/plain"),), http=b"415"),
    "local-h2-bad-path": Refused("local", "h2", "UNIMPLEMENTED", "is not /<service>/<method>",
                                 headers=((b":path", b"/nomethod"),)),
    "local-h2-bad-timeout": Refused("local", "h2", "INTERNAL", "grpc-timeout", headers=((b"grpc-timeout", b"soon"),)),
    "local-h2-custom-filter": Refused("local", "h2", "FAILED_PRECONDITION", "the stage filter says no",
                                      extra_filter=True),
    "local-bolt-not-imported": Refused("local", "bolt", "UNIMPLEMENTED", "add it under imports: with protocol: bolt",
                                       service="demo.Nope:1.0"),
    "local-bolt-oneway-not-imported": Refused("local", "bolt", "UNIMPLEMENTED", "is not imported",
                                              service="demo.Nope:1.0", bolt={"oneway": True}),
    "local-bolt-no-service": Refused("local", "bolt", "UNIMPLEMENTED", "the request has no service header",
                                     service=""),
    "local-bolt-unreadable-head": Refused("local", "bolt", "INTERNAL", "malformed request", method=None,
                                          service=bolt_unique_name(BOLT, None),
                                          bolt={"codec": bolt.CODEC_HESSIAN2, "content": b"\x4f\xff not hessian"}),
    # no usable upstream
    "local-h2-no-upstream-configured": Refused("local", "h2", "UNAVAILABLE", "no upstream is configured",
                                               world={"group": "none"}),
    "peer-bolt-no-provider-known": Refused("peer", "bolt", "UNAVAILABLE", "none is known",
                                           service=bolt_unique_name(BOLT, None), world={"group": "empty"},
                                           after_filters=True),
    "local-bolt-upstream-unreachable": Refused("local", "bolt", "UNAVAILABLE", "is unreachable", service=bolt_unique_name(BOLT, None),
                                               world={"connect": "refused"}),
    # untranslatable requests (peer port, the providers speak the other protocol)
    "triple-to-bolt-two-messages": to_bolt("UNIMPLEMENTED", "streaming calls cannot cross", service=BOLT,
                                           body=grpc.encode_message(b"a") + grpc.encode_message(b"b")),
    "triple-to-bolt-message-and-a-half": to_bolt("UNIMPLEMENTED", "streaming calls cannot cross",
                                                 service=BOLT, body=grpc.encode_message(b"a") + b"\x00\x00"),
    "triple-to-bolt-no-message": to_bolt("INTERNAL", "carried no complete message", service=BOLT,
                                         body=None),
    "triple-to-bolt-compressed": to_bolt("UNIMPLEMENTED", "compressed messages cannot be translated",
                                         service=BOLT, body=grpc.encode_message(b"a", compressed=True)),
    "triple-to-bolt-bad-framing": to_bolt("INTERNAL", "malformed request: compressed flag is 7",
                                          service=BOLT, body=b"\x07\x00\x00\x00\x01a"),
    "triple-to-bolt-hessian-not-a-wrapper": to_bolt("INTERNAL", "not a TripleRequestWrapper",
                                                    service=HESSIAN, body=grpc.encode_message(b"\xff\xff\xff")),
    "triple-to-bolt-wrapper-with-bad-arguments": to_bolt("INTERNAL", "cannot translate the request to Bolt",
                                                         service=HESSIAN, body=grpc.encode_message(BAD_WRAPPER)),
    "bolt-to-triple-hessian-to-idl": to_triple("UNIMPLEMENTED", "exported from IDL (protobuf) gRPC providers",
                                             service=bolt_unique_name(TRIPLE, None),
                                             bolt={"codec": bolt.CODEC_HESSIAN2, "content": ECHO_SOFA_REQUEST.content}),
    "bolt-to-triple-json-codec": to_triple("INTERNAL", "Bolt codec 12 cannot be translated",
                                         service=bolt_unique_name(TRIPLE, None), bolt={"codec": bolt.CODEC_JSON}),
    "bolt-to-triple-no-method": to_triple("INTERNAL", "names no method", method=None,
                                        service=bolt_unique_name(TRIPLE, None)),
    "bolt-to-triple-unreadable-hessian": to_triple("INTERNAL", "cannot translate the request to Triple",
                                                 service=bolt_unique_name(TRIPLE, None),
                                                 bolt={"codec": bolt.CODEC_HESSIAN2, "content": b"\x4f\xff junk"}),
    "bolt-to-sofa-truncated-arguments": to_triple("INTERNAL", "cannot translate the request to Triple",
                                                service=bolt_unique_name(SOFA, None),
                                                bolt={"codec": bolt.CODEC_HESSIAN2,
                                                      "content": ECHO_SOFA_REQUEST.content[:-6]}),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_refused(case: Refused, autojump_clock):
    async with open_world(case.ingress, case.caller, case.upstream, **case.world) as world:
        if case.extra_filter:
            world.core.chains = chains_with(Refuser())
        if case.world.get("connect") == "refused":
            await wait_until(lambda: world.pool.last_error == "connection refused")
        peer = case.ingress == "peer"
        caller = world.caller
        if isinstance(caller, H2Peer):
            headers = dict(h2_request_headers(case.service, case.method, app=case.app, peer=peer,
                                              authority=case.authority or (DOMAIN if peer else b"localhost:9000")))
            headers.update(dict(case.headers))
            sid = caller.open(list(headers.items()), end=case.body is None)
            if case.body is not None:
                caller.send_data(sid, case.body, end=True)
        else:
            options = {"link": peer, "app": case.app, **case.bolt}
            caller.send(bolt_request(case.service, case.method, **options))
        await wait_until(world.access)
        await trio.sleep(5)  # anything more (a second answer, a line, a request upstream) would show by now

        (line,) = world.access()
        assert line["status"] == case.status and case.says in line["error"], line
        if isinstance(caller, H2Peer):
            (block,) = caller.stream(sid).headers  # Trailers-Only, with END_STREAM
            assert dict(block)[b":status"] == case.http and caller.stream(sid).ended
            status, message = caller.stream(sid).outcome
        elif case.oneway:
            assert caller.frames == []
            status, message = case.status, case.says
        else:
            (answer,) = caller.frames
            assert answer.is_response and answer.request_id == 7
            status, message = bolt_outcome(answer)
        carries_text = case.caller == "h2" or case.bolt.get("codec") != bolt.CODEC_JSON  # JSON: a bare Bolt status
        assert status == case.status and (case.says in message or not carries_text)
        audits = world.audits()
        if peer and case.after_filters:
            assert [(a["decision"], a["reason"]) for a in audits] == [("allow", None)]
        elif peer:
            assert [(a["decision"], a["reason"]) for a in audits] == [("deny", line["error"])]
        else:
            assert audits == []
        assert all(not provider.requests for provider in world.providers)
        world.assert_clean()


def chains_with(*extra: Filter) -> FilterChains:
    """The snapshot's chains with configured filters after the built-in ones, as FilterChains.of will add them."""
    peer = (AccessDomainFilter(), ExportAclFilter(), *extra)
    observers = tuple(item for item in extra if type(item).on_finish is not Filter.on_finish)
    return FilterChains(extra, peer, observers, observers)


async def test_an_acl_that_names_the_app_and_method_lets_the_call_through(autojump_clock):
    async with open_world("peer", "h2") as world:
        sid = world.caller.open(h2_request_headers(PRIVATE, "Allowed", authority=DOMAIN, peer=True))
        world.caller.send_message(sid, b"ping-0", end=True)
        await wait_until(lambda: world.providers and world.provider.requests)
        assert [a["decision"] for a in world.audits()] == ["allow"]
        provider = world.provider
        provider.send_headers(provider.requests[0], [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                                     (b"grpc-status", b"0")], end=True)
        await wait_until(lambda: world.caller.stream(sid).outcome)
        assert world.caller.stream(sid).outcome == ("OK", "")
        world.assert_clean()
