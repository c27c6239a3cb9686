"""Trace context across both gateway hops, sans-I/O: W3C Trace Context (`traceparent`) and SOFATracer ids.

Each gateway hop is one span. A call's trace id comes from, in order: a valid W3C `traceparent` (its span id
is our parent), else the caller's SOFATracer trace id (`sofa-traceid` / `tri-trace-traceid` on Triple,
`rpc_trace_context.sofaTraceId` or `new_rpc_trace_context` tcid on Bolt), else a new one (the consumer-side
gateway starts the trace). The next hop gets `traceparent: 00-<trace id>-<our span id>-<flags>` in either
protocol (HTTP/2 header, Bolt header-map key), so both gateways log the same `trace_id`.

SOFATracer ids are opaque strings (usually 30 hex digits: IP, time, sequence, pid). As a W3C trace id: hex of
up to 32 digits is left-padded with zeros (so the SOFA id can be read back in the W3C one); anything else is
hashed (BLAKE2b, 16 bytes), the same on every gateway. The caller's own SOFA keys travel unchanged, so SOFA
providers keep their trace; a provider is given SOFA ids made from the W3C trace only when the caller sent none.
"""

from __future__ import annotations

import hashlib
import random
import re

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
# SOFATracer's trace id, rpc id and system baggage as Triple headers: each id under both names, the SOFA one
# last (SOFA Triple servers read sofa-traceid first, Dubbo tri-trace-traceid).
TRIPLE_TRACE_ID = (b"tri-trace-traceid", b"sofa-traceid")
TRIPLE_RPC_ID = (b"tri-trace-rpcid", b"sofa-rpcid")
TRIPLE_SYS_BAGGAGE = b"tri-trace-sys-baggage"
# Header fields whose value differs in every request (the trace context: W3C, and SOFATracer's trace id). Caches
# keyed by what callers send never offer them a place (wire/hpack.py, wire/h2headers.py); the requests we make
# carry them last, so that the rest of a header list repeats (hpack.HeaderBlockEncoder).
PER_CALL_FIELDS = frozenset({TRACEPARENT, *TRIPLE_TRACE_ID})


def per_call_tail(headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> int:
    """Where the per-call fields that end `headers` begin (len(headers) when none does): what comes before
    repeats from call to call, and is what the header caches key on."""
    end = len(headers)
    while end and headers[end - 1][0] in PER_CALL_FIELDS:
        end -= 1
    return end

_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z", re.S)
_HEX = re.compile(rb"[0-9a-fA-F]{1,32}\Z")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = 0x01

_random = random.Random()  # ids need to be unique, not secret (W3C: random or pseudo-random)
getrandbits = _random.getrandbits


def parse_traceparent(value: bytes) -> tuple[str, str, int] | None:
    """(trace id, parent span id, flags) of a valid `traceparent`, else None (then a new trace is started:
    W3C says an invalid header is ignored). Version ff is invalid; a future version is read by its first
    four fields; version 00 has exactly those."""
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    if rest and not rest.startswith(b"-"):
        return None
    trace, span = trace_id.decode(), span_id.decode()
    if trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    return trace, span, int(flags, 16)


def format_traceparent(trace_id: str, span_id: str, flags: int) -> bytes:
    return ("00-%s-%s-%02x" % (trace_id, span_id, flags & 0xFF)).encode()


def trace_id_of_sofa(sofa_trace_id: bytes) -> str | None:
    """A SOFATracer trace id as a W3C trace id (see the module docstring); None for an empty or all-zero one."""
    value = sofa_trace_id.strip()
    if not value:
        return None
    if _HEX.match(value):
        trace = value.decode().lower().zfill(32)
    else:
        trace = hashlib.blake2b(value, digest_size=16).hexdigest()
    return None if trace == _ZERO_TRACE else trace


def sofa_trace_id_of_new_context(value: bytes) -> bytes | None:
    """The trace id (`tcid`) in SOFARPC's `new_rpc_trace_context` (`tcid=...&spid=...&...`)."""
    for pair in value.split(b"&"):
        key, _, item = pair.partition(b"=")
        if key == b"tcid":
            return item or None
    return None


def new_trace_id() -> str:
    return "%032x" % (getrandbits(128) or 1)


def new_span_id() -> str:
    return "%016x" % (getrandbits(64) or 1)


def new_trace_and_span() -> tuple[str, str]:
    """A new trace id and span id (one random draw: this is on every call that starts a trace)."""
    ids = "%048x" % getrandbits(192)
    trace_id, span_id = ids[:32], ids[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return new_trace_id(), new_span_id()
    return trace_id, span_id


def baggage_has(baggage: bytes, mark: bytes) -> bool:
    """Whether SOFATracer baggage (`k=v&k2=v2`, the `_sys_` prefix of new_rpc_trace_context allowed) holds the
    pair `mark` (`k=v`)."""
    if mark not in baggage:
        return False
    return any(pair == mark or pair == b"_sys_" + mark for pair in baggage.split(b"&"))
