"""RFC 9113 header-block rules; h2's own validator is the oracle for what must be refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.wire import h2headers
from interlink.wire.h2headers import MalformedHeaders, check_request, check_response, check_trailers

GOOD_REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a/b"), (b":authority", b"x"),
                (b"te", b"trailers"), (b"content-type", b"application/grpc")]


def test_good_blocks_pass():
    check_request(GOOD_REQUEST)
    check_request([(b":method", b"CONNECT"), (b":authority", b"host:443")])
    check_response([(b":status", b"200"), (b"content-type", b"application/grpc")])
    check_trailers([(b"grpc-status", b"0"), (b"x-bin-bin", b"AAEC")])


@pytest.mark.parametrize(
    ("block", "rule"),
    [
        (GOOD_REQUEST[:2] + GOOD_REQUEST[3:], "lacks :path"),
        ([(b"x-a", b"1")] + GOOD_REQUEST, "after a regular header"),
        (GOOD_REQUEST + [(b":path", b"/again")], "after a regular header"),
        (GOOD_REQUEST[:3] + [(b":path", b"/x")] + GOOD_REQUEST[3:], "appears twice"),
        (GOOD_REQUEST[:3] + [(b":status", b"200")], "not allowed in a request"),
        (GOOD_REQUEST + [(b"X-Upper", b"1")], "upper-case"),
        (GOOD_REQUEST + [(b"x-bad", b"a\r\nb")], "NUL, CR or LF"),
        (GOOD_REQUEST + [(b"connection", b"close")], "connection-specific"),
        (GOOD_REQUEST + [(b"te", b"gzip")], "te may only be"),
        (GOOD_REQUEST + [(b"", b"x")], "empty header name"),
        (GOOD_REQUEST + [(b"a b", b"x")], "forbidden characters"),
    ],
)
def test_malformed_requests(block, rule):
    with pytest.raises(MalformedHeaders, match=rule):
        check_request(block)


@pytest.mark.parametrize(
    ("block", "rule"),
    [
        ([(b"content-type", b"x")], "must start with :status"),
        ([(b":status", b"20")], "three-digit"),
        ([(b":status", b"200"), (b":status", b"200")], "not allowed here"),
    ],
)
def test_malformed_responses(block, rule):
    with pytest.raises(MalformedHeaders, match=rule):
        check_response(block)


def test_trailers_may_not_carry_pseudo_headers():
    with pytest.raises(MalformedHeaders):
        check_trailers([(b":status", b"200")])


def test_a_field_remembered_as_good_elsewhere_is_still_judged_by_its_place():
    """The cache of good fields holds fields of any kind: a response pseudo-header seen (and refused) after a
    regular field of a request must still be refused as a request pseudo-header later."""
    base = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/s/m")]
    for _ in range(3):
        with pytest.raises(MalformedHeaders):
            check_request([*base, (b"x-a", b"1"), (b":status", b"200")])
    for _ in range(3):
        with pytest.raises(MalformedHeaders, match="not allowed in a request"):
            check_request([(b":status", b"200"), *base])


TRACEPARENT = (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")


def test_a_remembered_request_still_has_its_per_call_tail_checked():
    """Requests are remembered whole without the trace context that ends them: the next one with the same
    head and a bad trace value is still refused, and a good one still passes."""
    for _ in range(3):
        check_request([*GOOD_REQUEST, TRACEPARENT])
    with pytest.raises(MalformedHeaders, match="NUL, CR or LF"):
        check_request([*GOOD_REQUEST, (b"traceparent", b"00-\r\nx: y")])
    with pytest.raises(MalformedHeaders, match="NUL, CR or LF"):
        check_request([*GOOD_REQUEST, (b"tri-trace-traceid", b"a\x00"), TRACEPARENT])
    check_request([*GOOD_REQUEST, (b"tri-trace-traceid", b"0a1b"), TRACEPARENT])


def test_a_refused_request_is_never_remembered():
    block = [*GOOD_REQUEST, (b"connection", b"close"), TRACEPARENT]
    for _ in range(4):  # the cache keeps a key the second time it is offered: a refusal must never be offered
        with pytest.raises(MalformedHeaders, match="connection-specific"):
            check_request(block)


def test_only_per_call_fields_is_not_a_request():
    for _ in range(3):
        with pytest.raises(MalformedHeaders, match="lacks"):
            check_request([TRACEPARENT])


_NAMES = st.sampled_from([b":method", b":scheme", b":path", b":authority", b":status", b"te", b"x-a", b"X-B",
                          b"connection", b"traceparent", b"tri-trace-traceid", b"sofa-traceid", b""])
_VALUES = st.sampled_from([b"POST", b"http", b"/s/m", b"h", b"trailers", b"gzip", b"1", b"a\r\nb", b"\x00"])


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=8), st.integers(1, 3))
def test_remembering_requests_never_changes_the_verdict(headers, repeats):
    """check_request, however often a list (or its head) was seen, judges as the plain rules do."""
    def verdict(check):
        try:
            check(headers)
        except MalformedHeaders as exc:
            return str(exc)
        return None
    expected = verdict(h2headers._check_request)  # noqa: SLF001 - the rules without the cache
    for _ in range(repeats):
        outcome = verdict(check_request)
        assert (outcome is None) == (expected is None), (outcome, expected)
