"""The site file's `messaging:` section: broker, message imports and exports, and the problems a user can
make in it, each at its line with what to write instead."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from interlink.config import AclRule, BrokerConfig, MessageExportConfig, MessageImportConfig, MessagingConfig
from interlink.control.sitefile import Problem, SiteFileError, load_site
from tests.control.test_sitefile import FULL_SITE, line_of

WriteSite = Callable[[str, str], Path]

MESSAGING = """\
messaging:
  broker: {kind: nats, url: "nats://app:secret@127.0.0.1:4222"}
  max_message_bytes: 65536
  ack_wait_ms: 20000
  delivery_timeout_ms: 5000
  dead_letter_prefix: dead
  imports:
    - subject: payments.settled
      to: site-b
    - subject: "stock.>"
      to: site-c
      stream: STOCK
      max_in_flight: 32
  exports:
    - subject: orders.created
      stream: ORDERS
      allow:
        site-b: {apps: [order-app]}
    - subject: "audit.*"
      stream: AUDIT
      allow: [site-b, site-c]
"""
SITE = FULL_SITE + MESSAGING


def load_problems(write_site: WriteSite, text: str) -> list[Problem]:
    with pytest.raises(SiteFileError) as caught:
        load_site(write_site("site-a", text))
    return caught.value.problems


def test_messaging_loads_into_the_dataclasses(write_site: WriteSite) -> None:
    config = load_site(write_site("site-a", SITE))

    assert config.messaging == MessagingConfig(
        broker=BrokerConfig("nats", "nats://app:secret@127.0.0.1:4222"),
        imports=(MessageImportConfig("payments.settled", "site-b"),
                 MessageImportConfig("stock.>", "site-c", stream="STOCK", max_in_flight=32)),
        exports=(MessageExportConfig("orders.created", "ORDERS", {"site-b": AclRule(apps=frozenset({"order-app"}))}),
                 MessageExportConfig("audit.*", "AUDIT", {"site-b": AclRule(), "site-c": AclRule()})),
        max_message_bytes=65536, ack_wait_ms=20000, delivery_timeout_ms=5000, dead_letter_prefix="dead",
    )
    assert config.lines["messaging.imports[1].max_in_flight"] == line_of(SITE, "max_in_flight: 32")


def test_without_messaging_there_is_none(write_site: WriteSite) -> None:
    assert load_site(write_site("site-a", FULL_SITE)).messaging is None


def test_the_defaults(write_site: WriteSite) -> None:
    config = load_site(write_site("site-a", FULL_SITE + "messaging: {broker: {kind: nats, url: 'nats://10.0.0.5'}}\n"))

    assert config.messaging == MessagingConfig(broker=BrokerConfig("nats", "nats://10.0.0.5"))
    assert (config.messaging.max_message_bytes, config.messaging.ack_wait_ms) == (1 << 20, 30_000)


PROBLEMS = {
    "no broker": ("  broker: {kind: nats, url: \"nats://app:secret@127.0.0.1:4222\"}\n", "", "messaging:",
                  'missing key "broker"'),
    "unknown kind": ("kind: nats", "kind: kafka", "broker: {kind: kafka",
                     "messaging.broker.kind"),
    "not a nats url": ('"nats://app:secret@127.0.0.1:4222"', '"http://127.0.0.1:4222"', "broker: {kind",
                       "use a nats:// URL"),
    "bad port": ('"nats://app:secret@127.0.0.1:4222"', '"nats://127.0.0.1:99999"', "broker: {kind",
                 "port is not a number"),
    "empty token": ("subject: payments.settled", "subject: payments..settled", "subject: payments..settled",
                    "empty token"),
    "wildcard inside a token": ("subject: payments.settled", "subject: payments.set*", "subject: payments.set*",
                                "a wildcard is a whole token"),
    "gt not last": ('subject: "stock.>"', 'subject: "stock.>.x"', 'subject: "stock.>.x"', "may only be the last"),
    "a slash": ("subject: payments.settled", "subject: payments/settled", "subject: payments/settled",
                "crosses as a gRPC method name"),
    "unknown peer": ("      to: site-b\n", "      to: site-x\n", "to: site-x", "site-x receives messages but is not listed"),
    "stream name": ("stream: STOCK", "stream: STOCK.ALL", "stream: STOCK.ALL", "a JetStream stream name"),
    "in flight range": ("max_in_flight: 32", "max_in_flight: 0", "max_in_flight: 0", "max_in_flight"),
    "methods on messages": ("site-b: {apps: [order-app]}", "site-b: {apps: [order-app], methods: [x]}",
                            "methods: [x]", "messages have no methods"),
    "export without allow": ("      stream: ORDERS\n      allow:\n        site-b: {apps: [order-app]}\n",
                             "      stream: ORDERS\n", "- subject: orders.created", 'missing key "allow"'),
    "unknown key": ("  max_message_bytes: 65536", "  max_message_byte: 65536", "max_message_byte:",
                    'did you mean "max_message_bytes"'),
    "ack wait within the delivery timeout": ("ack_wait_ms: 20000", "ack_wait_ms: 5000", "ack_wait_ms: 5000",
                                             "must be longer than delivery_timeout_ms"),
    "import overlaps the dead letters": ("subject: payments.settled", 'subject: "dead.>"', 'subject: "dead.>"',
                                         "also matches the dead-letter subjects"),
}


@pytest.mark.parametrize(("old", "new", "line_text", "message"), PROBLEMS.values(), ids=PROBLEMS.keys())
def test_one_messaging_mistake_gives_one_problem_at_its_line(
    write_site: WriteSite, old: str, new: str, line_text: str, message: str
) -> None:
    assert SITE.count(old) == 1, old
    text = SITE.replace(old, new)

    problems = load_problems(write_site, text)

    assert len(problems) == 1, "\n".join(map(str, problems))
    (problem,) = problems
    assert message in problem.message, str(problem)
    assert problem.line == line_of(text, line_text), str(problem)


def test_a_repeated_import_or_export_is_reported_at_the_second(write_site: WriteSite) -> None:
    text = SITE.replace("    - subject: \"stock.>\"\n      to: site-c\n", "    - subject: payments.settled\n      to: site-b\n")
    problems = load_problems(write_site, text)
    assert len(problems) == 1 and "already imported at messaging.imports[0]" in problems[0].message


def test_the_gateways_own_message_service_cannot_be_exported_as_a_service(write_site: WriteSite) -> None:
    text = FULL_SITE.replace("service: com.example.BoltService", "service: interlink.messaging.v1.MessageLink")
    problems = load_problems(write_site, text)
    assert len(problems) == 1 and "export messages under messaging.exports" in problems[0].message
