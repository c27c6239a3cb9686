"""W3C Trace Context and SOFATracer ids (interlink/wire/tracecontext.py): the spec's vectors, its invalid
cases, the SOFA mapping, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.wire import tracecontext

HEX = "0123456789abcdef"


def test_the_specs_example_is_read():
    value = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert tracecontext.parse_traceparent(value) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)


@pytest.mark.parametrize("value", [
    b"",
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
    b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent
    b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has nothing more
    b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    b"0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # a future version still needs a dash
])
def test_invalid_traceparents_are_ignored(value):
    assert tracecontext.parse_traceparent(value) is None


def test_a_future_version_is_read_by_its_first_four_fields():
    value = b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-the-future-holds"
    assert tracecontext.parse_traceparent(value) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 9)


@given(st.text(HEX, min_size=32, max_size=32), st.text(HEX, min_size=16, max_size=16), st.integers(0, 255))
def test_format_and_parse_round_trip(trace_id, span_id, flags):
    parsed = tracecontext.parse_traceparent(tracecontext.format_traceparent(trace_id, span_id, flags))
    if set(trace_id) == {"0"} or set(span_id) == {"0"}:
        assert parsed is None
    else:
        assert parsed == (trace_id, span_id, flags)


@given(st.binary(max_size=80))
def test_any_bytes_are_either_a_valid_context_or_none(value):
    parsed = tracecontext.parse_traceparent(value)
    if parsed is not None:
        trace_id, span_id, flags = parsed
        assert len(trace_id) == 32 and len(span_id) == 16 and 0 <= flags <= 255


def test_new_ids_are_well_formed_and_distinct():
    traces = {tracecontext.new_trace_id() for _ in range(1000)}
    spans = {tracecontext.new_span_id() for _ in range(1000)}
    assert len(traces) == len(spans) == 1000
    assert all(len(t) == 32 and set(t) <= set(HEX) and set(t) != {"0"} for t in traces)
    assert all(len(s) == 16 and set(s) <= set(HEX) for s in spans)


def test_a_sofatracer_id_in_hex_is_kept_readable_in_the_w3c_id():
    assert tracecontext.trace_id_of_sofa(b"0a0fe9271570779823341100130000") == "000a0fe9271570779823341100130000"
    assert tracecontext.trace_id_of_sofa(b"ABCDEF") == "abcdef".zfill(32)


def test_other_sofatracer_ids_are_hashed_the_same_way_everywhere():
    first = tracecontext.trace_id_of_sofa(b"trace/with:odd chars")
    assert first == tracecontext.trace_id_of_sofa(b"trace/with:odd chars") and len(first) == 32
    assert first != tracecontext.trace_id_of_sofa(b"trace/with:odd chars!")
    assert tracecontext.trace_id_of_sofa(b"0" * 40) != "0" * 32  # too long for hex: hashed, never all zeros


@pytest.mark.parametrize("value", [b"", b"   ", b"0000"])
def test_empty_or_zero_sofatracer_ids_are_no_trace(value):
    assert tracecontext.trace_id_of_sofa(value) is None


def test_the_trace_id_of_a_new_rpc_trace_context():
    assert tracecontext.sofa_trace_id_of_new_context(b"tcid=0a0f01&spid=0.1&pspid=0&sample=true") == b"0a0f01"
    assert tracecontext.sofa_trace_id_of_new_context(b"spid=0.1") is None


@pytest.mark.parametrize("baggage, marked", [
    (b"mark=T", True), (b"a=1&mark=T", True), (b"_sys_mark=T&x=y", True),
    (b"mark=TT", False), (b"remark=T", False), (b"mark=F", False), (b"", False),
])
def test_the_load_test_mark_in_baggage(baggage, marked):
    assert tracecontext.baggage_has(baggage, b"mark=T") is marked
