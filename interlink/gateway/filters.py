"""Per-call filters: an ordered chain, built from the snapshot, that every call passes after it is routed.

A filter may refuse a call (raise `Refusal` from `on_request`: the caller gets that status and message),
annotate it (add to `call.log_fields`, which the access line carries), or observe its end (`on_finish`,
once, with the status the caller saw). A chain with no filter costs one empty loop per call, and only
filters that override `on_finish` are called at the end.

The peer port's chain starts with the two checks that make a site's exports private to the peers they
name: the access domain, then the export's ACL; then, when the site file asks for them, load-test refusals,
rate limits and max_in_flight (gateway/limits.py). Local callers' chain has max_in_flight of the imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from mypy_extensions import mypyc_attr

from interlink.model import Refusal, Status
from interlink.routes import Snapshot
from interlink.wire import message_link

if TYPE_CHECKING:
    from interlink.gateway.call import GatewayCall
    from interlink.gateway.limits import CallLimits


# Subclassed by filters outside the compiled modules (the tests' observers, a filter of one's own).
@mypyc_attr(allow_interpreted_subclasses=True)
class Filter:
    """Base of per-call filters; both hooks do nothing unless overridden."""

    def on_request(self, call: GatewayCall) -> None:
        """Look at a routed call before it is forwarded; raise Refusal to answer it with an error."""

    def on_finish(self, call: GatewayCall, status: str, message: str) -> None:
        """The call ended (exactly once), with the status its caller saw."""


class AccessDomainFilter(Filter):
    """A peer may only use the access domain we gave *it*: in TLS SNI, and in :authority where the protocol
    has one (HTTP/2)."""

    def on_request(self, call: GatewayCall) -> None:
        snapshot, peer = call.snapshot, call.caller_site
        ours = snapshot.domain_of_peer.get(peer)
        if ours is None:
            raise Refusal(Status.PERMISSION_DENIED,
                          f"site {peer} has no access domain on site {snapshot.site} (domains: in the site file)",
                          kind="access_domain")
        authority = call.authority
        if authority is not None and authority != ours:
            _refuse_domain(peer, "access domain", authority)
        sni = call.down.endpoint.attributes.get("sni")  # type: ignore[union-attr]
        used_sni = sni.encode() if isinstance(sni, str) else None
        if used_sni != ours:
            _refuse_domain(peer, "TLS SNI", used_sni)


def _refuse_domain(peer: str, what: str, used: bytes | None) -> NoReturn:
    # Never say whose domain it is: a tenant learns nothing about the others.
    shown = used.decode(errors="replace") if used else "(none)"
    raise Refusal(Status.PERMISSION_DENIED,
                  f"site {peer} may not use {what} {shown}: it is not the access domain of site {peer}",
                  kind="access_domain")


class ExportAclFilter(Filter):
    """The export exists (UNIMPLEMENTED otherwise: asked only once the access domain was right, so that a
    peer using another's domain learns nothing) and its ACL lets the caller's site and app call the method.
    A message (MessageLink call) is judged the same way: its subject is the method, its producer's app the app."""

    def on_request(self, call: GatewayCall) -> None:
        route, peer = call.route, call.caller_site
        if route is None:
            raise Refusal(Status.UNIMPLEMENTED, f"{called(call)} is not exported by site {call.snapshot.site}",
                          kind="not_exported")
        rule = route.allow.get(peer)  # type: ignore[union-attr]
        if rule is None:
            raise Refusal(Status.PERMISSION_DENIED, f"{called(call)} is not exported to site {peer}",
                          kind="not_exported")
        app, method = call.caller_app, call.method or ""
        if not rule.permits(app, method):
            target = called(call) if call.service == message_link.SERVICE else f"{call.service}/{method}"
            raise Refusal(Status.PERMISSION_DENIED, f"app {app or '(none)'} of site {peer} may not call {target}",
                          kind="acl")


def called(call: GatewayCall) -> str:
    """What a call addresses, in refusal messages: `service S`, or `subject X` for a message (MessageLink)."""
    return f"subject {call.method}" if call.service == message_link.SERVICE else f"service {call.service}"


class LoadTestFilter(Filter):
    """Load-test calls to an export that says `loadtest: deny` are refused (FAILED_PRECONDITION); where they
    go otherwise (shadow providers, or the providers) is the call core's choice of upstream."""

    def on_request(self, call: GatewayCall) -> None:
        route = call.route
        if call.loadtest and route is not None and route.loadtest_denied:  # type: ignore[union-attr]
            site = call.snapshot.site
            raise Refusal(Status.FAILED_PRECONDITION,
                          f"service {call.service} of site {site} takes no load-test calls (loadtest: deny); send it "
                          f"unmarked, or ask site {site} for shadow_providers", kind="loadtest")


@dataclass(frozen=True)
class FilterChains:
    """The chains of one snapshot, per ingress; `*_finish` are the filters that observe call ends."""

    local: tuple[Filter, ...]
    peer: tuple[Filter, ...]
    local_finish: tuple[Filter, ...]
    peer_finish: tuple[Filter, ...]

    @classmethod
    def of(cls, snapshot: Snapshot, limits: CallLimits | None = None) -> FilterChains:
        """The chains `snapshot` asks for; `limits` is the gateway's limit state (kept across snapshots)."""
        from interlink.gateway.limits import CallLimits, InFlightFilter, RateLimitFilter

        limits = limits if limits is not None else CallLimits()
        imports = [*snapshot.imports.values(), *snapshot.bolt_imports.values()]
        local: tuple[Filter, ...] = ()
        if any(route.max_in_flight for route in imports):
            local = (InFlightFilter(limits, "local"),)
        loadtest = (LoadTestFilter(),) if any(route.loadtest_denied for route in snapshot.export_routes) else ()
        rules = [rule for route in snapshot.export_routes for rule in route.allow.values()]
        rules += [rule for route in snapshot.message_exports.routes() for rule in route.allow.values()]
        rate = (RateLimitFilter(limits),) if any(rule.rate is not None for rule in rules) else ()
        in_flight = (InFlightFilter(limits, "peer"),) if any(route.max_in_flight for route in snapshot.export_routes) else ()
        peer = (AccessDomainFilter(), ExportAclFilter(), *loadtest, *rate, *in_flight)
        return cls(local, peer, _observers(local), _observers(peer))


def _observers(chain: tuple[Filter, ...]) -> tuple[Filter, ...]:
    return tuple(item for item in chain if type(item).on_finish is not Filter.on_finish)
