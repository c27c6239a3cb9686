"""wire/message_link.py: the Delivery codec (golden bytes, round trips) and the NATS subject rules both
gateways apply (matching, overlap, what can cross as a gRPC method name)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from interlink.wire import message_link
from interlink.wire.message_link import Delivery, DeliveryAck

DELIVERY = Delivery(data=b"hi", headers=(("k", "v"),), message_id="site-b:OUT:7", origin_site="site-b",
                    origin_stream="OUT", origin_sequence=7, published_unix_nanos=5, attempt=2)
# protobuf, field by field: 1 data, 2 header {1 name, 2 value}, 3 message_id, 4 site, 5 stream, 6 seq, 7 ns, 8 attempt
GOLDEN = (b"\x0a\x02hi" b"\x12\x06\x0a\x01k\x12\x01v" b"\x1a\x0csite-b:OUT:7" b"\x22\x06site-b" b"\x2a\x03OUT"
          b"\x30\x07" b"\x38\x05" b"\x40\x02")


def test_a_delivery_encodes_to_its_golden_bytes_and_back() -> None:
    assert message_link.encode_delivery(DELIVERY) == GOLDEN
    assert message_link.decode_delivery(GOLDEN) == DELIVERY


def test_an_ack_round_trips() -> None:
    ack = DeliveryAck("ORDERS", 12345678901, True)
    assert message_link.encode_ack(ack) == b"\x0a\x06ORDERS\x10\xb5\xb8\xf0\xfe\x2d\x18\x01"
    assert message_link.decode_ack(message_link.encode_ack(ack)) == ack


@pytest.mark.parametrize("data, words", [(b"\xff\xff", "not a Delivery"), (b"", "no message_id"),
                                         (b"\x0a\x02hi", "no message_id")])
def test_what_is_not_a_delivery_is_refused(data: bytes, words: str) -> None:
    with pytest.raises(message_link.MessageLinkError, match=words):
        message_link.decode_delivery(data)


texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(data=st.binary(max_size=200), headers=st.lists(st.tuples(texts, texts), max_size=5),
       site=texts, stream=texts, sequence=st.integers(1, 2**64 - 1), attempt=st.integers(1, 2**32 - 1))
def test_every_delivery_round_trips(data, headers, site, stream, sequence, attempt) -> None:
    item = Delivery(data, tuple(headers), message_link.message_id(site, stream, sequence), site, stream, sequence,
                    attempt=attempt)
    assert message_link.decode_delivery(message_link.encode_delivery(item)) == item


def test_only_the_producers_own_headers_cross() -> None:
    headers = [("Nats-Msg-Id", "x"), ("order-kind", "a"), ("Interlink-App", "shop"), ("traceparent", "00-..."),
               ("interlink-origin-site", "forged"), ("order-kind", "b"), ("NATS-Expected-Stream", "S")]
    assert message_link.carried_headers(headers) == (("order-kind", "a"), ("order-kind", "b"))


@pytest.mark.parametrize("pattern, subject, matches", [
    ("orders.created", "orders.created", True), ("orders.created", "orders.deleted", False),
    ("orders.*", "orders.created", True), ("orders.*", "orders.created.eu", False), ("orders.*", "orders", False),
    ("orders.>", "orders.created", True), ("orders.>", "orders.created.eu", True), ("orders.>", "orders", False),
    ("*.created", "orders.created", True), (">", "a", True), ("a.*.c", "a.b.c", True), ("a.*.c", "a.b.d", False),
])
def test_subjects_match_as_nats_matches_them(pattern: str, subject: str, matches: bool) -> None:
    assert message_link.subject_matches(pattern, subject) is matches


@pytest.mark.parametrize("a, b, overlap", [
    ("orders.>", "dead.>", False), (">", "dead.>", True), ("*.>", "dead.>", True), ("dead", "dead.>", False),
    ("dead.x", "dead.>", True), ("orders.*", "*.created", True), ("a.b", "a.c", False), ("a.*", "a.b.c", False),
])
def test_subjects_overlap(a: str, b: str, overlap: bool) -> None:
    assert message_link.subjects_overlap(a, b) is overlap
    assert message_link.subjects_overlap(b, a) is overlap


tokens = st.sampled_from(["a", "b", "c"])
patterns = st.lists(st.one_of(tokens, st.just("*")), min_size=1, max_size=3).flatmap(
    lambda parts: st.sampled_from([".".join(parts), ".".join(parts) + ".>"]))
subjects = st.lists(tokens, min_size=1, max_size=4).map(".".join)


@given(a=patterns, b=patterns, subject=subjects)
def test_two_patterns_that_both_match_a_subject_overlap(a: str, b: str, subject: str) -> None:
    if message_link.subject_matches(a, subject) and message_link.subject_matches(b, subject):
        assert message_link.subjects_overlap(a, b)


@pytest.mark.parametrize("subject, crosses", [
    ("orders.created", True), ("orders.créé", False), ("a/b", False), ("a?b", False), ("a b", False), ("a%b", False),
    ("orders.*", False), ("", False), ("a..b", False), ("a-b_c:d", True),
])
def test_what_can_cross_as_a_method_name(subject: str, crosses: bool) -> None:
    assert message_link.subject_crosses(subject) is crosses
