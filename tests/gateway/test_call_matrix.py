"""The call matrix: every call shape through the call core, with every way a call can end.

Shapes: Triple unary / server-, client-, bidi-streaming and Bolt request/response / oneway (passthrough,
on both ingresses), Bolt caller -> Triple provider and Triple caller -> Bolt provider (translated, peer
ingress). Outcomes: ok, provider error, deadline, caller cancel, upstream reset, upstream connection
lost, caller connection lost. Each cell checks what the caller got, the one access line (and the one
audit line on the peer port), that the call reached DONE with nothing left behind, and that the upstream
was told when the call was given up.
"""

from __future__ import annotations

from dataclasses import dataclass

import h2.errors
import pytest
import trio

from tests.gateway.harness import (
    APP, BOLT, CANCEL, DOMAIN, METHOD, PEER, PEER_DOMAIN, RESPONSE_HEAD, SITE, TRIPLE, BoltPeer, H2Peer, World,
    bolt_outcome, bolt_request, grpc_trailers, h2_request_headers, open_world, wait_until,
)
from interlink.routes import bolt_unique_name
from interlink.wire import bolt, bolt_call, link_headers


@dataclass(frozen=True)
class Shape:
    name: str
    caller: str  # h2 | bolt
    upstream: str  # h2 | bolt
    requests: int = 1  # gRPC messages an h2 caller sends
    responses: int = 1  # gRPC messages an h2 provider answers with
    early_response: bool = False  # the provider answers (head + first message) before the request ended
    oneway: bool = False

    @property
    def translated(self) -> bool:
        return self.caller != self.upstream

    @property
    def service(self) -> str:
        """The service as the caller names it (and the access line logs it)."""
        if self.caller == "h2":
            return TRIPLE if self.upstream == "h2" else BOLT
        return bolt_unique_name(BOLT if self.upstream == "bolt" else TRIPLE, None)


SHAPES = [
    Shape("triple-unary", "h2", "h2"),
    Shape("triple-server-streaming", "h2", "h2", responses=3, early_response=True),
    Shape("triple-client-streaming", "h2", "h2", requests=3),
    Shape("triple-bidi-streaming", "h2", "h2", requests=3, responses=3, early_response=True),
    Shape("bolt-request-response", "bolt", "bolt"),
    Shape("bolt-oneway", "bolt", "bolt", oneway=True),
    Shape("bolt-to-triple", "bolt", "h2"),
    Shape("triple-to-bolt", "h2", "bolt"),
]
OUTCOMES = ["ok", "provider-error", "deadline", "caller-cancel", "upstream-reset", "upstream-lost", "caller-lost"]
GIVEN_UP = {"deadline", "caller-cancel", "caller-lost"}  # the gateway must tell the upstream


def applies(shape: Shape, ingress: str, outcome: str) -> bool:
    if shape.translated and ingress == "local":
        return False  # translation happens at the provider-side gateway only
    if shape.oneway:
        return outcome == "ok"  # complete once forwarded: nothing else can happen to it
    if outcome == "upstream-reset":
        return shape.upstream == "h2"  # a Bolt provider's only way to give up is closing: upstream-lost
    if outcome == "caller-cancel" and shape.caller == "bolt":
        return ingress == "peer"  # a calling gateway's cancel frame; a local Bolt caller can only leave (caller-lost)
    return True


CELLS = [
    pytest.param(shape, ingress, outcome, id=f"{shape.name}-{ingress}-{outcome}")
    for shape in SHAPES for ingress in ("local", "peer") for outcome in OUTCOMES if applies(shape, ingress, outcome)
]


class Flow:
    """The test's side of one call: the caller's request, the provider's answer, the caller's view."""

    def __init__(self, world: World, shape: Shape) -> None:
        self.world, self.shape = world, shape
        self.peer = world.ingress == "peer"
        self.sid = 0  # the caller's stream
        self.request: bolt.BoltFrame | None = None  # the caller's Bolt request
        self.started = False  # the provider sent its response head

    @property
    def caller(self):
        return self.world.caller

    @property
    def provider(self):
        return self.world.provider

    def provider_stream(self):
        provider = self.provider
        assert isinstance(provider, H2Peer)
        return provider.stream(provider.requests[0])

    def provider_has_request(self) -> bool:
        if not self.world.providers:
            return False
        provider = self.provider
        if isinstance(provider, H2Peer):
            return bool(provider.requests) and bool(self.provider_stream().messages)
        return bool(provider.requests)

    async def send_request(self, timeout: float) -> None:
        caller = self.caller
        if isinstance(caller, H2Peer):
            self.sid = caller.open(h2_request_headers(
                self.shape.service, authority=DOMAIN if self.peer else b"localhost:9000",
                timeout=b"%dm" % int(timeout * 1000), peer=self.peer,
            ))
            caller.send_message(self.sid, b"ping-0", end=self.shape.requests == 1)
        else:
            self.request = bolt_request(self.shape.service, link=self.peer, oneway=self.shape.oneway,
                                        timeout_ms=int(timeout * 1000))
            caller.send(self.request)
        await wait_until(self.provider_has_request)

    async def provider_starts(self) -> None:
        stream_id = self.provider.requests[0]
        self.provider.send_headers(stream_id, RESPONSE_HEAD)
        self.provider.send_message(stream_id, b"pong-0")
        self.started = True
        await wait_until(lambda: self.caller.stream(self.sid).messages)

    async def finish_request(self) -> None:
        if isinstance(self.caller, H2Peer):
            for index in range(1, self.shape.requests):
                self.caller.send_message(self.sid, b"ping-%d" % index, end=index == self.shape.requests - 1)
        if isinstance(self.provider, H2Peer):
            await wait_until(lambda: self.provider_stream().ended)

    async def provider_answers(self, ok: bool) -> None:
        provider = self.provider
        if isinstance(provider, BoltPeer):
            request = provider.requests[0]
            status = bolt.ResponseStatus.SUCCESS if ok else bolt.ResponseStatus.SERVER_EXCEPTION
            provider.send(bolt.response_for(request, status, bolt.SOFA_RESPONSE_CLASS, b"", b"pong-0" if ok else b"boom"))
            return
        stream_id = provider.requests[0]
        if not ok:
            if self.started:
                provider.send_trailers(stream_id, grpc_trailers(5, "nope"))
            else:
                provider.send_headers(stream_id, RESPONSE_HEAD + grpc_trailers(5, "nope"), end=True)
            return
        if not self.started:
            provider.send_headers(stream_id, RESPONSE_HEAD)
        for index in range(1 if self.started else 0, self.shape.responses):
            provider.send_message(stream_id, b"pong-%d" % index)
        provider.send_trailers(stream_id, grpc_trailers(0))

    def caller_outcome(self) -> tuple[str, str] | None:
        caller = self.caller
        if isinstance(caller, H2Peer):
            return caller.stream(self.sid).outcome
        return bolt_outcome(caller.responses[0]) if caller.responses else None


async def act(flow: Flow, outcome: str) -> None:
    world = flow.world
    if outcome in ("ok", "provider-error"):
        await flow.finish_request()
        await flow.provider_answers(ok=outcome == "ok")
    elif outcome == "caller-cancel":
        if isinstance(flow.caller, H2Peer):
            flow.caller.reset(flow.sid, CANCEL)
        else:  # the calling gateway gave up: its link cancel frame names our request id
            flow.caller.transport.write(bolt_call.cancel_frame(flow.request.request_id))
    elif outcome == "upstream-reset":
        flow.provider.reset(flow.provider.requests[0], h2.errors.ErrorCodes.INTERNAL_ERROR)
    elif outcome == "upstream-lost":
        flow.provider.transport.close()
    elif outcome == "caller-lost":
        flow.caller.transport.close()
    else:
        assert outcome == "deadline"  # nothing: the clock jumps to it
    await wait_until(lambda: world.access())


def expected_statuses(shape: Shape, outcome: str) -> tuple[tuple[str, str] | None, str]:
    """What the caller sees (status, text; None: nothing) and the access line's status."""
    if outcome == "ok":
        return None if shape.oneway else ("OK", ""), "OK"
    if outcome == "provider-error":
        if shape.upstream == "h2":
            return ("NOT_FOUND", "nope"), "NOT_FOUND"  # a Bolt caller: an error frame stamped NOT_FOUND
        if shape.caller == "bolt":
            return ("SERVER_EXCEPTION", "boom"), "SERVER_EXCEPTION"  # relayed as it came
        return ("UNKNOWN", "provider answered Bolt status SERVER_EXCEPTION: boom"), "UNKNOWN"
    if outcome in ("caller-cancel", "caller-lost"):
        return None, "CANCELLED"
    status = {"deadline": "DEADLINE_EXCEEDED", "upstream-reset": "INTERNAL", "upstream-lost": "UNAVAILABLE"}[outcome]
    return (status, ""), status


@pytest.mark.parametrize("shape, ingress, outcome", CELLS)
async def test_call(shape: Shape, ingress: str, outcome: str, autojump_clock):
    async with open_world(ingress, shape.caller, shape.upstream) as world:
        flow = Flow(world, shape)
        await flow.send_request(timeout=2.0 if outcome == "deadline" else 30.0)
        if shape.early_response:
            await flow.provider_starts()
        await act(flow, outcome)
        seen, logged = expected_statuses(shape, outcome)
        if seen is not None:
            await wait_until(flow.caller_outcome)
        await trio.sleep(5)  # a second answer, access line or audit line would show by now

        # the caller's answer
        got = flow.caller_outcome()
        if seen is None:
            assert got is None
        elif seen[1]:
            assert got == seen
        else:
            assert got is not None and got[0] == seen[0], got
        if outcome == "ok":
            check_payloads(flow)

        # one access line, one audit line on the peer port
        (line,) = world.access()
        assert line["status"] == logged
        assert {key: line.get(key) for key in ("site", "ingress", "service", "method", "caller_app", "peer", "upstream")} == {
            "site": SITE,
            "ingress": ingress + ("-bolt" if shape.caller == "bolt" else ""),
            "service": shape.service,
            "method": METHOD,
            "caller_app": APP,
            "peer": PEER,
            "upstream": f"site {PEER}" if ingress == "local" else f"providers of {shape.service}",
        }
        assert line.get("translated") == (f"{'triple' if shape.caller == 'h2' else 'bolt'}->"
                                           f"{'triple' if shape.upstream == 'h2' else 'bolt'}" if shape.translated else None)
        relayed = outcome == "ok" or (outcome == "provider-error" and not shape.translated)  # the provider's own
        assert ("error" in line) == (not relayed)
        audits = world.audits()
        if ingress == "peer":
            assert [(a["decision"], a["service"]) for a in audits] == [("allow", shape.service)]
        else:
            assert audits == []

        # nothing left behind; the upstream told when the call was given up
        world.assert_clean()
        check_upstream_told(world, shape, outcome)


def check_payloads(flow: Flow) -> None:
    """The request reached the provider with the gateway's identity stamps; the answer reached the caller."""
    shape, provider, peer = flow.shape, flow.provider, flow.peer
    if isinstance(provider, H2Peer):
        stream = provider.stream(provider.requests[0])
        assert stream.messages == [b"ping-%d" % i for i in range(shape.requests if shape.caller == "h2" else 1)]
        assert stream.header(link_headers.CALLER_APP) == APP.encode()
        assert stream.header(link_headers.CALLER_SITE) == (PEER.encode() if peer else None)
        assert stream.header(b":authority") == (DOMAIN if peer and not shape.translated else
                                                 TRIPLE.encode() if peer else PEER_DOMAIN)
    else:
        (request,) = provider.requests
        assert request.content == b"ping-0" and request.is_oneway == shape.oneway
        assert bolt.header_get(request.header, link_headers.CALLER_APP) == APP.encode()
        assert bolt.header_get(request.header, link_headers.CALLER_SITE) == (PEER.encode() if peer else None)
        assert bolt.header_get(request.header, link_headers.METHOD) == (None if peer else METHOD.encode())
    caller = flow.caller
    if isinstance(caller, H2Peer):
        expected = [b"pong-%d" % i for i in range(shape.responses if shape.upstream == "h2" else 1)]
        assert caller.stream(flow.sid).messages == expected
    elif not shape.oneway:
        (response,) = caller.responses
        assert response.content == b"pong-0" and response.request_id == flow.request.request_id


def check_upstream_told(world: World, shape: Shape, outcome: str) -> None:
    provider = world.provider
    if isinstance(provider, H2Peer):
        if outcome in GIVEN_UP:
            assert provider.stream(provider.requests[0]).reset == CANCEL
        elif outcome in ("ok", "provider-error"):
            assert provider.stream(provider.requests[0]).reset is None
        return
    # Bolt: the pool's endpoint forgot the id (assert_clean); a peer link is also sent a cancel frame
    upstream_id = provider.requests[0].request_id
    told = outcome in GIVEN_UP and world.ingress == "local"
    assert provider.cancels == ([upstream_id] if told else [])
