"""Circuit breaking and rate limits: filters of the call core that refuse a call at once (RESOURCE_EXHAUSTED;
Bolt callers get SERVER_THREADPOOL_BUSY) instead of letting one caller use all of a service's capacity.

    max_in_flight   exports[].max_in_flight (peer port) and imports[].max_in_flight (local callers): calls of
                    that service in flight at this gateway; beyond it, fail fast
    rate, burst     exports[].allow.<peer>.rate (e.g. 200/s) and burst: a token bucket per (service, peer site,
                    app), or per (service, peer site, app, method) with per_method: true, at the provider-side
                    gateway (after the ACL, so an app the ACL refuses never spends a token)

The tables live in `CallLimits` (one per gateway, kept across reloads: a reload changing a rate starts that
bucket afresh, one keeping it keeps its tokens); filters are rebuilt with each snapshot. Bounded: buckets are
keyed by what the site file names, except the app when a rule allows every app, and then at most MAX_BUCKETS
buckets exist (the oldest unused is dropped; a dropped bucket starts full again, which is lenient, never wrong
towards other callers).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from interlink.config import AclRule
from interlink.gateway.filters import Filter, called
from interlink.model import Refusal, Status
from interlink.net import trips

if TYPE_CHECKING:
    from interlink.gateway.call import GatewayCall

MAX_BUCKETS = 4096


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens a second, at most `burst` saved; a call takes one."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class CallLimits:
    """The gateway's limit state: calls in flight per service and direction, token buckets per caller."""

    def __init__(self) -> None:
        self.in_flight: dict[tuple[str, str], int] = {}  # (ingress, service) -> calls holding a slot
        self._buckets: OrderedDict[tuple, TokenBucket] = OrderedDict()

    def bucket(self, key: tuple, rate: float, burst: float, now: float) -> TokenBucket:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = buckets[key] = TokenBucket(rate, burst, burst, now)
            if len(buckets) > MAX_BUCKETS:
                buckets.popitem(last=False)
        buckets.move_to_end(key)
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)


class InFlightFilter(Filter):
    """A service's calls in flight at this gateway, capped by its route's max_in_flight (one count per route,
    whatever name a caller used: a Bolt unique name and a Triple service name of one export share it)."""

    def __init__(self, state: CallLimits, ingress: str) -> None:
        self.state, self.ingress = state, ingress

    def on_request(self, call: GatewayCall) -> None:
        route = call.route
        limit = route.max_in_flight if route is not None else None
        if limit is None:
            return
        key = (self.ingress, route.service)  # type: ignore[union-attr]
        held = self.state.in_flight.get(key, 0)
        if held >= limit:
            trips.trip(trips.MAX_IN_FLIGHT)
            raise Refusal(Status.RESOURCE_EXHAUSTED,
                          f"{called(call)} has {limit} calls in flight at site {call.snapshot.site}'s gateway "
                          "(max_in_flight); retry later", kind="max_in_flight")
        self.state.in_flight[key] = held + 1
        call.holds_slot = True

    def on_finish(self, call: GatewayCall, status: str, message: str) -> None:
        if call.holds_slot:
            call.holds_slot = False
            key = (self.ingress, call.route.service)  # type: ignore[union-attr]
            self.state.in_flight[key] -= 1


class RateLimitFilter(Filter):
    """Token buckets per (service, peer site, app[, method]) for the export rules that set a rate."""

    def __init__(self, state: CallLimits) -> None:
        self.state = state

    def on_request(self, call: GatewayCall) -> None:
        route = call.route
        rule: AclRule | None = route.allow.get(call.caller_site) if route is not None else None  # type: ignore[union-attr]
        if rule is None or rule.rate is None:
            return
        app = call.caller_app or ""
        key = (call.service, call.caller_site, app, call.method) if rule.rate_per_method else \
            (call.service, call.caller_site, app)
        now = trio.current_time()
        if not self.state.bucket(key, rule.rate, rule.burst, now).take(now):
            trips.trip(trips.RATE_LIMIT)
            per = f" for {call.method}" if rule.rate_per_method else ""
            raise Refusal(Status.RESOURCE_EXHAUSTED,
                          f"app {app or '(none)'} of site {call.caller_site} is over its rate{per} on {called(call)}: "
                          f"{rule.rate:g}/s, burst {rule.burst:g} (site {call.snapshot.site}'s limit); retry later",
                          kind="rate_limit")
