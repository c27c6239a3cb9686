"""What the Triple and Bolt request paths share: the access-domain rule, choosing an upstream connection
(or waiting for the very first one), the audit line and the access line.

Choosing an upstream is where the last admission checks sit, the same for every call shape: a call whose
deadline has passed is never dispatched, and one caller connection may hold only its fair share of an
upstream's call slots (interlink.net.pool.PoolGroup.share), so that a caller pipelining thousands of
calls cannot take a peer link or a provider away from everyone else."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

import structlog
import trio

from interlink.routes import ExportRoute, Snapshot
from interlink.model import Status
from interlink.net.connection import FlushQueue
from interlink.net.pool import FIRST_CONNECT_WAIT, PoolGroup, PooledConnection

if TYPE_CHECKING:
    from interlink.gateway.relay import DeadlineTimers

access_log = structlog.get_logger("interlink.access")
audit_log = structlog.get_logger("interlink.audit")


def access_domain_denial(snapshot: Snapshot, peer: str, sni: object, authority: bytes | None = None) -> str | None:
    """A peer may only use the access domain we gave *it*: in TLS SNI, and in :authority where the protocol
    has one (HTTP/2). None when the call may go on, else why not."""
    ours = snapshot.domain_of_peer.get(peer)
    if ours is None:
        return f"site {peer} has no access domain on site {snapshot.site} (domains: in the site file)"
    used_sni = sni.encode() if isinstance(sni, str) else None
    checks = ([("access domain", authority)] if authority is not None else []) + [("TLS SNI", used_sni)]
    for what, used in checks:
        if used != ours:
            # Never say whose domain it is: a tenant learns nothing about the others.
            shown = used.decode(errors="replace") if used else "(none)"
            return f"site {peer} may not use {what} {shown}: it is not the access domain of site {peer}"
    return None


def authorize_peer_call(
    snapshot: Snapshot,
    exports: Mapping[str, ExportRoute],
    peer: str,
    service: str,
    app: str | None,
    method: str,
    fields: dict[str, object],
    sni: object,
    authority: bytes | None = None,
) -> ExportRoute | tuple[Status, str]:
    """The peer ingress decision, the same for every protocol: access domain, then export, then ACL.
    Audited either way; the export when the call may go on, else the status and reason to answer with."""
    denial = access_domain_denial(snapshot, peer, sni, authority)
    route = None
    if denial is None:
        route = exports.get(service)
        if route is None:
            audit("deny", fields, f"not exported: {service}")
            return Status.UNIMPLEMENTED, f"service {service} is not exported by site {snapshot.site}"
        rule = route.allow.get(peer)
        if rule is None:
            denial = f"service {service} is not exported to site {peer}"
        elif not rule.permits(app, method):
            denial = f"app {app or '(none)'} of site {peer} may not call {service}/{method}"
    if denial is not None or route is None:
        audit("deny", fields, denial)
        return Status.PERMISSION_DENIED, denial or ""
    audit("allow", fields, "")
    return route


def remaining(deadline: float) -> float | None:
    """Seconds left until `deadline` (None: no deadline), for the next hop's timeout."""
    return None if deadline == math.inf else max(deadline - trio.current_time(), 0.0)


def remaining_ms(deadline: float) -> int:
    """The same as a Bolt timeout: whole milliseconds, at least 1; -1 for none."""
    return -1 if deadline == math.inf else max(1, int((deadline - trio.current_time()) * 1000))


def audit(decision: str, fields: dict[str, object], reason: str) -> None:
    audit_log.info("audit", decision=decision, reason=reason or None, **fields)


def refuse(call: PendingCall, status: Status, message: str, *protocol_detail: object) -> None:
    """Refuse a call before it is authorized; on the peer port every refusal is audited. `protocol_detail`
    goes on to the call's `fail` (the HTTP status of a malformed HTTP/2 request)."""
    fields = call.log_fields
    if str(fields.get("ingress", "")).startswith("peer"):
        audit("deny", fields, message)
    call.fail(status, message, *protocol_detail)


def log_call(status: str, started: float, message: str, fields: dict[str, object]) -> None:
    """The one access line of a call."""
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    if message:
        access_log.info("call", status=status, ms=elapsed_ms, error=message, **fields)
    else:
        access_log.info("call", status=status, ms=elapsed_ms, **fields)


class PendingCall(Protocol):
    """What choosing an upstream needs of a call, whatever its protocol (Relay, BoltCallRelay, TripleToBolt).
    The call releases `upstream_group`'s share (`release(down)`) when it finishes."""

    deadline: float
    down: object  # the caller's connection
    log_fields: dict[str, object]
    upstream_group: PoolGroup | None

    @property
    def done(self) -> bool: ...

    def fail(self, status: Status, message: str) -> None: ...


class Forwarder:
    """Base of the per-protocol request paths: the snapshot, the upstream pools, timers and flushing."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        peer_groups: Callable[[str], PoolGroup | None],
        provider_group: Callable[[str], PoolGroup | None],
        timers: DeadlineTimers,
        flush_queue: FlushQueue,
        nursery: trio.Nursery,
    ) -> None:
        self._snapshot = snapshot
        self._peer_group = peer_groups
        self._provider_group = provider_group
        self._timers = timers
        self._flush_queue = flush_queue
        self._nursery = nursery

    def _upstream(self, group: PoolGroup | None, call: PendingCall, send: Callable[[PooledConnection], None]) -> None:
        """Hand the call to the least-loaded usable connection of `group`. Full -> RESOURCE_EXHAUSTED;
        down -> UNAVAILABLE at once; never connected yet but connecting (a gateway that just started) ->
        wait for that first connection, within the call's deadline."""
        if group is None or not group.pools:
            call.fail(Status.UNAVAILABLE, "no upstream is configured for it" if group is None
                      else f"{group.name}: none is known (none configured, or the registry lists none)")
            return
        if call.deadline <= trio.current_time():
            call.fail(Status.DEADLINE_EXCEEDED, "the deadline passed before the call could be forwarded")
            return
        upstream = group.pick()
        if upstream is not None:
            self._dispatch(group, call, upstream, send)
        elif group.up:
            call.fail(Status.RESOURCE_EXHAUSTED, f"all connections to {group.name} are at their concurrent call limit; retry later")
        elif group.connecting:  # starting up, or a connection is being replaced: wait for it, within the deadline
            self._nursery.start_soon(self._upstream_when_ready, group, call, send)
        else:
            call.fail(Status.UNAVAILABLE, f"{group.name} is unreachable: {group.last_error}")

    @staticmethod
    def _dispatch(
        group: PoolGroup, call: PendingCall, upstream: PooledConnection, send: Callable[[PooledConnection], None]
    ) -> None:
        if not group.acquire(call.down):
            call.fail(Status.RESOURCE_EXHAUSTED, f"this connection already has its share ({group.share()}) of the calls "
                      f"to {group.name} in flight; retry later or spread calls over more connections")
            return
        call.upstream_group = group
        send(upstream)

    async def _upstream_when_ready(
        self, group: PoolGroup, call: PendingCall, send: Callable[[PooledConnection], None]
    ) -> None:
        with trio.move_on_at(min(call.deadline, trio.current_time() + FIRST_CONNECT_WAIT)):
            if group.first_connect_pending:
                await group.wait_ready()  # a gateway that just started: through its first retries
            else:
                await group.wait_settled()  # a reconnect: only while that attempt lasts
        if not call.done:
            upstream = group.pick()
            if call.deadline <= trio.current_time():
                call.fail(Status.DEADLINE_EXCEEDED, "the deadline passed before the call could be forwarded")
            elif upstream is None:
                call.fail(Status.UNAVAILABLE, f"{group.name} is unreachable: {group.last_error}")
            else:
                self._dispatch(group, call, upstream, send)
        self._flush_queue.flush()
