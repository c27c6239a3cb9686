"""How often each hardening limit tripped in this process: `interlink_limit_trips_total{limit}`.

One counter per limit name; the names are the constants below (never caller-chosen bytes), so the table
stays as small as this list. Counting is a dict increment where the limit trips, beside its log line.
"""

from __future__ import annotations

from collections import Counter

PREFACE_TIMEOUT = "preface_timeout"  # no complete first frame in time
IDLE_TIMEOUT = "idle_timeout"
PARTIAL_FRAME_TIMEOUT = "partial_frame_timeout"  # a frame begun and never finished (slowloris)
WRITE_TIMEOUT = "write_timeout"  # the other side stopped reading what we send
H2_ABUSE = "h2_abuse"  # floods, rapid reset, oversized header blocks: GOAWAY ENHANCE_YOUR_CALM
H2_PROTOCOL_ERROR = "h2_protocol_error"
H2_MALFORMED_HEADERS = "h2_malformed_headers"
BOLT_PROTOCOL_ERROR = "bolt_protocol_error"
BOLT_PARTIAL_FRAME_BUDGET = "bolt_partial_frame_budget"  # half-sent Bolt frames over the shared byte budget
BOLT_PENDING_CALLS = "bolt_pending_calls"  # a Bolt connection over its calls in flight (or draining)
CONNECTION_CAP = "connection_cap"  # a listener at its connection cap, or one source at its own
CONNECTION_SHED = "connection_shed"  # a listener shedding idle connections to make room
UPSTREAM_SHARE = "upstream_share"  # one caller connection at its fair share of an upstream's call slots
UPSTREAM_FULL = "upstream_full"  # every connection to an upstream at its concurrent call limit
MAX_IN_FLIGHT = "max_in_flight"  # a service at its max_in_flight (circuit breaking)
RATE_LIMIT = "rate_limit"  # an app of a peer site over its rate on an export
OUTLIER_EJECTION = "outlier_ejection"  # a provider ejected after consecutive failures (exports[].outlier)
RETRY_BUDGET = "retry_budget"  # a retry a service's retry budget did not allow (gateway/retries.py)

LIMITS = (
    PREFACE_TIMEOUT, IDLE_TIMEOUT, PARTIAL_FRAME_TIMEOUT, WRITE_TIMEOUT, H2_ABUSE, H2_PROTOCOL_ERROR,
    H2_MALFORMED_HEADERS, BOLT_PROTOCOL_ERROR, BOLT_PARTIAL_FRAME_BUDGET, BOLT_PENDING_CALLS, CONNECTION_CAP,
    CONNECTION_SHED, UPSTREAM_SHARE, UPSTREAM_FULL, MAX_IN_FLIGHT, RATE_LIMIT, OUTLIER_EJECTION,
    RETRY_BUDGET,
)

TRIPS: Counter[str] = Counter()


def trip(limit: str) -> None:
    TRIPS[limit] += 1


def timeout_limit(reason: str) -> str:
    """The limit a watchdog reason names ("idle timeout: ...")."""
    for prefix, limit in (("preface", PREFACE_TIMEOUT), ("idle", IDLE_TIMEOUT), ("partial", PARTIAL_FRAME_TIMEOUT),
                          ("write", WRITE_TIMEOUT)):
        if reason.startswith(prefix):
            return limit
    return IDLE_TIMEOUT
