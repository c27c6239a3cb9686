"""The site file's limits per service: max_in_flight on exports and imports, and rate / burst / per_method in
an export's allow rules (gateway/limits.py applies them)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from interlink.config import AclRule
from interlink.control.sitefile import SiteFileError, load_site
from tests.control.test_sitefile import FULL_SITE, line_of

WriteSite = Callable[[str, str], Path]

LIMITED = FULL_SITE.replace(
    "      site-b: {apps: [order-app], methods: [echo, add]}\n",
    "      site-b: {apps: [order-app], methods: [echo, add], rate: 200/s, burst: 50}\n"
    "      site-d: {rate: 3000/min, per_method: true}\n",
).replace("    timeout_ms: 2000\n", "    timeout_ms: 2000\n    max_in_flight: 1000\n").replace(
    "    from: site-b\n    protocol: bolt\n", "    from: site-b\n    protocol: bolt\n    max_in_flight: 64\n"
).replace("domains:\n", "domains:\n  site-d: site-d.gw.site-a.test\n").replace(
    "peers:\n", "peers:\n  site-d:\n    endpoints: [10.0.0.4:8443]\n    ca: certs/site-d/ca.pem\n"
                "    domain: site-a.gw.site-d.test\n")


def test_limits_load_into_the_dataclasses(write_site: WriteSite) -> None:
    config = load_site(write_site("site-a", LIMITED))
    echo = config.exports[0]
    assert echo.max_in_flight == 1000 and config.exports[1].max_in_flight is None
    assert echo.allow["site-b"] == AclRule(apps=frozenset({"order-app"}), methods=frozenset({"echo", "add"}),
                                           rate=200.0, burst=50, rate_per_method=False)
    assert echo.allow["site-d"] == AclRule(rate=50.0, burst=50.0, rate_per_method=True)  # burst: one second's worth
    assert echo.allow["site-c"] == AclRule()
    assert config.imports[0].max_in_flight == 64


@pytest.mark.parametrize("old, new, line_text, words", [
    ("rate: 200/s", "rate: fast", "rate: fast", "write calls per second or minute"),
    ("rate: 200/s", "rate: 0/s", "rate: 0/s", "must be more than 0"),
    ("rate: 200/s, burst: 50", "burst: 50", "burst: 50", "burst applies to a rate"),
    ("burst: 50", "burst: 0", "burst: 0", "burst"),
    ("per_method: true", "per_method: maybe", "per_method: maybe", "is not true or false"),
    ("max_in_flight: 1000", "max_in_flight: 0", "max_in_flight: 0", "max_in_flight"),
    ("max_in_flight: 64", "max_in_flight: lots", "max_in_flight: lots", "max_in_flight"),
])
def test_a_limit_mistake_is_one_problem_at_its_line(write_site: WriteSite, old: str, new: str, line_text: str,
                                                     words: str) -> None:
    text = LIMITED.replace(old, new)
    with pytest.raises(SiteFileError) as caught:
        load_site(write_site("site-a", text))
    problems = caught.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    assert words in problems[0].message and problems[0].line == line_of(text, line_text), str(problems[0])


@pytest.mark.parametrize("written, rate", [("10", 10.0), ("2.5/s", 2.5), ("120/min", 2.0), ("60 / m", 1.0)])
def test_rate_forms(write_site: WriteSite, written: str, rate: float) -> None:
    config = load_site(write_site("site-a", LIMITED.replace("rate: 200/s", f'rate: "{written}"')))
    assert config.exports[0].allow["site-b"].rate == rate


FAILOVER = LIMITED.replace("    from: site-c\n", "    from: [site-c, site-b, site-d]\n")


def test_an_import_from_several_sites_fails_over_in_their_order(write_site: WriteSite) -> None:
    config = load_site(write_site("site-a", FAILOVER))
    stock = config.imports[1]
    assert (stock.from_site, stock.failover, stock.sites) == ("site-c", ("site-b", "site-d"), ("site-c", "site-b", "site-d"))
    assert config.imports[0].failover == ()
    assert config.lines["imports[1].from[2]"] == line_of(FAILOVER, "from: [site-c, site-b, site-d]")


@pytest.mark.parametrize("written, words", [
    ("from: []", "is empty; name the peer(s)"),
    ("from: [site-c, site-c]", "site-c is listed twice"),
    ("from: [site-c, site-x]", "site-x is imported from but is not listed under peers"),
    ("from: [site-c, site-a]", "site-a is this site itself"),
])
def test_a_failover_list_mistake_is_one_problem(write_site: WriteSite, written: str, words: str) -> None:
    text = FAILOVER.replace("from: [site-c, site-b, site-d]", written)
    with pytest.raises(SiteFileError) as caught:
        load_site(write_site("site-a", text))
    problems = caught.value.problems
    assert len(problems) == 1 and words in problems[0].message, "\n".join(map(str, problems))
    assert problems[0].line == line_of(text, written)


def test_outlier_settings_load_with_their_defaults(write_site: WriteSite) -> None:
    from interlink.config import OutlierConfig

    text = LIMITED.replace("    max_in_flight: 1000\n", "    max_in_flight: 1000\n    outlier: {consecutive_failures: 3}\n")
    assert load_site(write_site("site-a", text)).exports[0].outlier == OutlierConfig(3, 30, 50)
    text = LIMITED.replace("    max_in_flight: 1000\n", "    max_in_flight: 1000\n    outlier: {eject_s: 0}\n")
    with pytest.raises(SiteFileError) as caught:
        load_site(write_site("site-a", text))
    assert "outlier.eject_s" in str(caught.value) and caught.value.problems[0].line == line_of(text, "outlier:")


ROUTED = LIMITED.replace(
    "    providers: [127.0.0.1:50061]\n",
    "    providers:\n      - 127.0.0.1:50061\n      - {address: 127.0.0.1:50062, zone: hz-b, unit: u01, weight: 20}\n"
    "    routing: [target_zone, unit, nearest, weighted]\n",
).replace("site: site-a\n", "site: site-a\nzone: hz-a\nunit: u00\n")


def test_tagged_providers_routing_and_the_gateways_zone_load(write_site: WriteSite) -> None:
    from interlink.config import HostPort, ProviderTags

    config = load_site(write_site("site-a", ROUTED))
    echo = config.exports[0]
    assert echo.providers == (HostPort("127.0.0.1", 50061), HostPort("127.0.0.1", 50062))
    assert echo.provider_tags == {HostPort("127.0.0.1", 50062): ProviderTags("hz-b", "u01", 20)}
    assert echo.routing == ("target_zone", "unit", "nearest", "weighted")
    assert (config.zone, config.unit) == ("hz-a", "u00")


@pytest.mark.parametrize("old, new, words", [
    ("routing: [target_zone, unit, nearest, weighted]", "routing: [fastest]", "routing[0]"),
    ("routing: [target_zone, unit, nearest, weighted]", "routing: [unit, unit]", "names a stage twice"),
    ("weight: 20}", "weight: -1}", "weight"),
    ("{address: 127.0.0.1:50062, zone", "{adress: 127.0.0.1:50062, zone", 'did you mean "address"'),
])
def test_a_routing_mistake_is_one_problem(write_site: WriteSite, old: str, new: str, words: str) -> None:
    with pytest.raises(SiteFileError) as caught:
        load_site(write_site("site-a", ROUTED.replace(old, new)))
    problems = caught.value.problems
    assert len(problems) >= 1 and words in problems[0].message, "\n".join(map(str, problems))


HEADERED = ROUTED.replace(
    "      - {address: 127.0.0.1:50062, zone: hz-b, unit: u01, weight: 20}\n",
    "      - {address: 127.0.0.1:50062, zone: hz-b, unit: u01, weight: 0, group: canary}\n",
).replace(
    "    routing: [target_zone, unit, nearest, weighted]\n",
    "    routing:\n      - {header: x-release, values: [canary, c], group: canary}\n      - nearest\n      - weighted\n"
    "    retry: {attempts: 3, budget_percent: 10, idempotent_methods: [Get*, echo]}\n",
).replace("unit: u00\n", 'unit: u00\nunit_rule: {header: x-uid, units: {u00: "00-49", u01: "50-89, 95", u02: "90-94"}}\n')


def test_header_stages_unit_rules_and_retries_load(write_site: WriteSite) -> None:
    from interlink.config import HeaderStage, HostPort, ProviderTags, RetryConfig

    config = load_site(write_site("site-a", HEADERED))
    echo = config.exports[0]
    assert echo.routing == (HeaderStage("x-release", frozenset({"canary", "c"}), "canary"), "nearest", "weighted")
    assert echo.provider_tags[HostPort("127.0.0.1", 50062)] == ProviderTags("hz-b", "u01", 0, "canary")
    assert echo.retry == RetryConfig(3, 10, ("Get*", "echo"))
    assert echo.retry.idempotent("GetOrder") and echo.retry.idempotent("echo") and not echo.retry.idempotent("add")
    rule = config.unit_rule
    assert rule is not None and rule.header == "x-uid"
    assert [rule.unit_of(uid) for uid in (b"1234500", b"49", b"7750", b"95", b"96", b"91", b"7", b"x12a")] == \
        ["u00", "u00", "u01", "u01", None, "u02", None, None]
    assert config.imports[0].retry is None
    text = HEADERED.replace("    max_in_flight: 64\n", "    max_in_flight: 64\n    retry:\n")
    assert load_site(write_site("site-a", text)).imports[0].retry == RetryConfig()  # every key has a default


@pytest.mark.parametrize("old, new, words, at", [
    ("{header: x-release, values: [canary, c], group: canary}", "{header: x-release, group: canary}",
     'missing key "values"', "- {header: x-release"),
    ("values: [canary, c]", "values: []", "is empty", "- {header: x-release"),
    ("header: x-release", "header: x-interlink-unit", "keys are the gateways' own", "- {header: x-interlink"),
    ("header: x-release", "header: grpc-timeout", "reserved for gRPC", "- {header: grpc"),
    ("header: x-release", "header: X-Release", 'must be lower case', "- {header: X-Release"),
    ("header: x-release", "header: traceparent", "already means something", "- {header: traceparent"),
    ("attempts: 3", "attempts: 9", "attempts", "retry:"),
    ("budget_percent: 10", "budget_percent: 0", "budget_percent", "retry:"),
    ("idempotent_methods: [Get*, echo]", "idempotent_methods: Get", "expected a list", "retry:"),
    ('u02: "90-94"', 'u02: "90-96"', "shard 95 is already unit u01's", "unit_rule:"),
    ('u02: "90-94"', 'u02: "9a"', "not a range of shards", "unit_rule:"),
    ("units: {", "unitz: {", 'did you mean "units"', "unit_rule:"),
])
def test_a_header_stage_unit_rule_or_retry_mistake_is_one_problem(write_site: WriteSite, old: str, new: str,
                                                                  words: str, at: str) -> None:
    assert old in HEADERED
    text = HEADERED.replace(old, new)
    with pytest.raises(SiteFileError) as caught:
        load_site(write_site("site-a", text))
    problems = caught.value.problems
    assert words in problems[0].message, "\n".join(map(str, problems))
    assert problems[0].line == line_of(text, at), str(problems[0])
