"""HTTP/2 header-block rules (RFC 9113 8.1-8.3), sans-I/O, cheap enough for every block of every call.

(h2's inbound validation, a chain of per-field generators, cost about 30 µs per header block on this
machine kind.) Pseudo-headers are checked in one loop; regular fields that passed once are remembered in a
bounded cache (the same names and values come call after call), and so are whole requests. The endpoint turns
a violation into a stream error (RST_STREAM PROTOCOL_ERROR), never a connection error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from interlink.wire.cache import BoundedCache
from interlink.wire.tracecontext import PER_CALL_FIELDS, per_call_tail

Headers = list[tuple[bytes, bytes]]

_FORBIDDEN_BYTES = re.compile(rb"[\x00\r\n]")
_NAME_FORBIDDEN = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]")
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority"})
# Regular fields that passed the checks (bounded like every cache keyed by what callers send); fields that
# differ in every request (the trace context) are checked each time and never offered.
_GOOD_FIELDS: BoundedCache[tuple[bytes, bytes], bool] = BoundedCache(max_entries=4096, max_bytes=1 << 20, max_item=1024)
# Whole request header lists that passed, without their per-call tail (check_request).
_GOOD_REQUESTS: BoundedCache[tuple[tuple[bytes, bytes], ...], bool] = BoundedCache(
    max_entries=1024, max_bytes=1 << 20, max_item=8192
)


class MalformedHeaders(Exception):
    """A header block that RFC 9113 calls malformed; the message names the rule."""


def _check_regular(name: bytes, value: bytes) -> None:
    if not name:
        raise MalformedHeaders("empty header name")
    if _NAME_FORBIDDEN.search(name):
        raise MalformedHeaders(f"header name {name!r} has upper-case or forbidden characters")
    if _FORBIDDEN_BYTES.search(value):
        raise MalformedHeaders(f"header {name!r} has a NUL, CR or LF in its value")
    if name in _CONNECTION_SPECIFIC:
        raise MalformedHeaders(f"connection-specific header {name!r} is not allowed in HTTP/2")
    if name == b"te" and value != b"trailers":
        raise MalformedHeaders("te may only be 'trailers' in HTTP/2")


def _check_fields(fields: Iterable[tuple[bytes, bytes]], misplaced_pseudo: str) -> None:
    """Regular fields, in one pass: a pseudo-header among them is refused with `misplaced_pseudo`; those
    checked before (the same names and values come call after call) are known good."""
    known = _GOOD_FIELDS.get
    for field in fields:
        name = field[0]
        if name[:1] == b":":
            raise MalformedHeaders(f"pseudo-header {name!r} {misplaced_pseudo}")
        if known(field) is None:
            value = field[1]
            if name in PER_CALL_FIELDS:  # a known good name: only its value to check
                if _FORBIDDEN_BYTES.search(value):
                    raise MalformedHeaders(f"header {name!r} has a NUL, CR or LF in its value")
                continue
            _check_regular(name, value)
            _GOOD_FIELDS.put(field, True, len(name) + len(value) + 64)


def check_request(headers: Headers) -> None:
    """RFC 9113 8.3.1 and the field rules. A request that passed is remembered whole, without the per-call
    fields that end it (a gateway's trace context): a caller's requests repeat, and one lookup replaces a
    lookup per field. Those trailing fields have known good names; only their values are checked."""
    end = per_call_tail(headers)
    head = headers[:end] if end != len(headers) else headers
    key = tuple(head)
    if _GOOD_REQUESTS.get(key) is None:
        _check_request(head)  # the tail only appends regular fields with good names: it changes no rule's outcome
        _GOOD_REQUESTS.put(key, True, sum(len(name) + len(value) + 64 for name, value in head))
    if end != len(headers):
        _check_fields(headers[end:], "after a regular header")


def _check_request(headers: Headers) -> None:
    seen: set[bytes] = set()
    index = 0
    known = _GOOD_FIELDS.get
    for field in headers:
        name = field[0]
        if name[:1] != b":":
            break
        if name not in _REQUEST_PSEUDO:
            raise MalformedHeaders(f"pseudo-header {name!r} is not allowed in a request")
        if name in seen:
            raise MalformedHeaders(f"pseudo-header {name!r} appears twice")
        if known(field) is None:  # the value checked once (the cache holds pseudo and regular fields that passed)
            value = field[1]
            if _FORBIDDEN_BYTES.search(value):
                raise MalformedHeaders(f"pseudo-header {name!r} has a NUL, CR or LF in its value")
            _GOOD_FIELDS.put(field, True, len(name) + len(value) + 64)
        seen.add(name)
        index += 1
    _check_fields(headers[index:], "after a regular header")
    if len(seen) < 3 or (len(seen) == 3 and b":authority" in seen):
        missing = {b":method", b":scheme", b":path"} - seen
        if missing and seen != {b":method", b":authority"}:  # CONNECT has only :method and :authority
            raise MalformedHeaders(f"request lacks {b', '.join(sorted(missing)).decode()}")


def check_response(headers: Headers) -> None:
    if not headers or headers[0][0] != b":status":
        raise MalformedHeaders("a response must start with :status")
    status = headers[0][1]
    if len(status) != 3 or not status.isdigit():
        raise MalformedHeaders(f":status {status!r} is not a three-digit code")
    check_trailers(headers[1:])


def check_trailers(headers: Headers) -> None:
    _check_fields(headers, "is not allowed here")
