"""The human views of the status document: the admin page (HTML) and `interlink status` (terminal table)."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser

import pytest

from interlink.control.status_view import render_html, render_table

# A full document as the gateway produces it (also used by tests/control/test_admin.py and the CLI tests).
SAMPLE_STATUS: dict = {
    "site": "site-a", "version": "0.1.0", "worker": 0, "pid": 1234,
    "started_at": 1765000000.0, "uptime_s": 3725.0,
    "ready": True, "not_ready": [],
    "config": {"path": "/x/site-a.yaml", "sha256": "ab12cd34ef56ab12cd34ef56ab12cd34",
               "last_reload": {"result": "ok", "at": 1765000001.0, "error": None}},
    "listen": {"triple": "127.0.0.1:50051", "bolt": None, "peer": "127.0.0.1:8443", "admin": "127.0.0.1:9901"},
    "certificate": {"subject": "CN=site-a gateway", "uri": "spiffe://interlink/site/site-a",
                    "not_after": "2027-12-05T00:00:00Z", "expires_in_days": 364.2},
    "peers": [
        {"site": "site-b", "domain": "site-a.gw.site-b.test", "given_domain": "site-b.gw.site-a.test",
         "ca_not_after": "2036-01-01T00:00:00Z",
         "links": [
             {"endpoint": "127.0.0.1:9443", "protocol": "triple", "up": True, "connections_up": 1, "connections": 1,
              "rtt_ms": 0.21, "last_handshake": 1765000000.5, "last_error": None,
              "peer_certificate": {"subject": "CN=site-b gateway", "uri": "spiffe://interlink/site/site-b",
                                   "not_after": "2027-11-30T00:00:00Z", "expires_in_days": 359.0}},
             {"endpoint": "127.0.0.1:9444", "protocol": "bolt", "up": False, "connections_up": 0, "connections": 2,
              "rtt_ms": None, "last_handshake": None, "last_error": "connection refused", "peer_certificate": None},
         ],
         "inbound_connections": 1},
        {"site": "site-c", "domain": "site-a.gw.site-c.test", "given_domain": "site-c.gw.site-a.test",
         "ca_not_after": "2030-01-01T00:00:00Z", "links": [], "inbound_connections": 3},
    ],
    "exports": [{"service": "com.example.EchoService", "protocol": "triple", "registry": "static",
                 "providers": ["127.0.0.1:50061", "127.0.0.1:50062"], "providers_up": 1, "synced": True,
                 "last_sync": 1765000000.2, "sync_age_s": 12.3, "allow": ["site-b"]}],
    "imports": [{"service": "com.example.PaymentService", "from": "site-b", "protocol": "bolt", "link_up": True,
                 "published": True}],
    "denials": [{"at": 1765000003.0, "peer": "site-c", "caller_app": "x-app", "service": "com.example.EchoService",
                 "reason": "site-c is not allowed to call com.example.EchoService"}],
    "counters": {"calls": {"OK": 10, "PERMISSION_DENIED": 2}, "calls_in_flight": 0, "denials": 2,
                 "reloads": {"ok": 1, "failed": 0}},
}

MINIMAL_STATUS = {"site": "x"}


class PageTables(HTMLParser):
    """The page's tables by id: rows of cell texts, and the attributes of each row."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.row_attributes: dict[str, list[dict[str, str | None]]] = {}
        self.tags: list[str] = []
        self.meta: list[dict[str, str | None]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attributes = dict(attrs)
        if tag == "meta":
            self.meta.append(attributes)
        if tag == "table":
            self._table = attributes.get("id")
            self.tables[self._table] = []
            self.row_attributes[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
            self.row_attributes[self._table].append(attributes)
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_the_page_shows_every_section_in_order():
    page = render_html(SAMPLE_STATUS)
    ids = [f'id="{name}"' for name in ("site", "ready", "peers", "exports", "imports", "denials", "counters")]
    positions = [page.index(marker) for marker in ids]
    assert positions == sorted(positions)
    parsed = PageTables(page)
    assert "script" not in parsed.tags
    assert {"http-equiv": "refresh", "content": "5"} in parsed.meta
    peers = [row for row in parsed.row_attributes["peers"] if row.get("class") == "peer"]
    assert [row["data-peer"] for row in peers] == ["site-b", "site-c"]
    assert ["site-b", "site-b"] == [row["data-peer"] for row in parsed.row_attributes["peers"]
                                    if row.get("data-peer") == "site-b"]  # one peer row, one more link row
    first_link = parsed.tables["peers"][1]
    assert first_link[1:8] == ["127.0.0.1:9443", "triple", "up", "1/1", "0.21", "2025-12-06 05:46:40Z",
                               "CN=site-b gateway"]
    assert first_link[8] == "2027-11-30 (in 359 d)"
    assert parsed.tables["peers"][2][:3] == ["127.0.0.1:9444", "bolt", "down (connection refused)"]
    assert parsed.tables["exports"][1][:5] == ["com.example.EchoService", "triple",
                                               "1/2 up: 127.0.0.1:50061, 127.0.0.1:50062", "static",
                                               "synced, 12.3s ago"]
    assert parsed.tables["imports"][1] == ["com.example.PaymentService", "site-b", "bolt", "up", "yes"]
    assert parsed.tables["denials"][1][:3] == ["2025-12-06 05:46:43Z", "site-c", "x-app"]
    counters = dict(row for row in parsed.tables["counters"][1:])
    assert counters["calls OK"] == "10" and counters["calls PERMISSION_DENIED"] == "2"
    assert counters["reloads failed"] == "0"
    assert "2027-12-05 (in 364 d)" in page and "1h 02m" in page  # our certificate, uptime


def test_the_page_says_why_it_is_not_ready():
    status = dict(SAMPLE_STATUS, ready=False, not_ready=["no link to site-b is up"])
    page = render_html(status)
    assert re.search(r'id="ready" class="not-ready"><strong>not ready<', page)
    assert "<li>no link to site-b is up</li>" in page


def test_every_value_on_the_page_is_escaped():
    hostile = '<script>alert("x")</script>'
    status = copy.deepcopy(SAMPLE_STATUS)
    status["site"] = hostile
    status["peers"][0]["site"] = hostile
    status["peers"][0]["links"][0]["endpoint"] = hostile
    status["peers"][0]["links"][0]["peer_certificate"]["subject"] = '"><img src=x onerror=alert(1)>'
    status["exports"][0]["service"] = hostile
    status["imports"][0]["from"] = hostile
    status["denials"][0]["reason"] = hostile
    status["counters"]["calls"] = {hostile: 1}
    status["not_ready"] = [hostile]
    page = render_html(status)
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    parsed = PageTables(page)
    assert [row["data-peer"] for row in parsed.row_attributes["peers"] if row.get("class") == "peer"] == \
        [hostile, "site-c"]  # the attribute round-trips to the original text


@pytest.mark.parametrize("status", [
    MINIMAL_STATUS,
    {"site": "x", "config": None, "certificate": None, "peers": None, "counters": None, "listen": None},
    {"site": "x", "peers": [{"site": "y", "links": [{}]}, {}], "exports": [{}], "imports": [{}], "denials": [{}],
     "counters": {"calls": {}, "reloads": None}},
    {"site": "x", "uptime_s": float("nan"), "started_at": 1e300, "peers": [{"links": [{"rtt_ms": "fast"}]}]},
])
def test_both_views_tolerate_missing_and_null_keys(status):
    page = render_html(status)
    table = render_table(status)
    assert 'id="peers"' in page and 'id="counters"' in page
    assert table.startswith("site x") and "PEERS AND LINKS" in table


def test_a_minimal_document_shows_what_is_unknown():
    table = render_table(MINIMAL_STATUS)
    assert "READINESS UNKNOWN" in table and "(no peers)" in table and "last reload never" in table


def test_the_table_lists_peers_then_exports_imports_denials_counters():
    table = render_table(SAMPLE_STATUS)
    order = ["PEERS AND LINKS", "site-b", "EXPORTS", "com.example.EchoService", "IMPORTS", "RECENT DENIALS",
             "site-c is not allowed", "COUNTERS", "calls PERMISSION_DENIED"]
    positions = [table.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert "READY" in table.splitlines()[1]


def test_the_table_aligns_its_columns_and_shows_certificate_expiry():
    lines = render_table(SAMPLE_STATUS).splitlines()
    heading = lines.index("PEERS AND LINKS") + 1
    peer_lines = lines[heading:heading + 4]
    assert peer_lines[0].startswith("PEER ")
    column = peer_lines[0].index("ENDPOINT")
    assert [line[column:].split()[0] for line in peer_lines[1:]] == ["127.0.0.1:9443", "127.0.0.1:9444", "(receives"]
    expires = peer_lines[0].index("EXPIRES")
    assert peer_lines[1][expires:].startswith("2027-11-30 (in 359 d)")
    assert "expires 2027-12-05 (in 364 d)" in lines[4]  # ours


def test_the_table_marks_expired_certificates():
    status = copy.deepcopy(SAMPLE_STATUS)
    status["certificate"]["expires_in_days"] = -2.4
    assert "(EXPIRED 2 d ago)" in render_table(status)


def test_the_table_never_sends_control_characters_to_the_terminal():
    status = copy.deepcopy(SAMPLE_STATUS)
    status["peers"][0]["site"] = "evil\x1b[2J\x07"
    table = render_table(status)
    assert "\x1b" not in table and "\x07" not in table and "evil\\x1b[2J\\x07" in table


MESSAGING = {
    "broker": {"kind": "nats", "url": "nats://***@127.0.0.1:4222", "connected": True, "last_error": None},
    "imports": [{"subject": "orders.created", "to": "site-a", "stream": "OUT", "ready": True, "link_up": True,
                 "delivered": 12, "duplicates": 1, "redelivered": 3, "dead_lettered": 2, "lag": 40,
                 "last_error": "UNAVAILABLE: peer away"}],
    "exports": [{"subject": "audit.>", "stream": "AUDIT", "allow": ["site-b"], "stored": {"site-b": 7}}],
}


def test_both_views_show_messages_when_the_site_has_them():
    status = {**copy.deepcopy(SAMPLE_STATUS), "messaging": copy.deepcopy(MESSAGING)}
    parsed = PageTables(render_html(status))
    assert parsed.tables["message-imports"][1] == ["orders.created", "site-a", "OUT", "up", "12", "3", "2", "40",
                                                   "UNAVAILABLE: peer away"]
    assert parsed.tables["message-exports"][1] == ["audit.>", "AUDIT", "site-b", "site-b 7"]
    table = render_table(status)
    assert "MESSAGES (broker nats nats://***@127.0.0.1:4222: up)" in table
    order = ["IMPORTS", "MESSAGES", "orders.created", "MESSAGE EXPORTS", "audit.>", "RECENT DENIALS"]
    positions = [table.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert "message-imports" not in render_html(SAMPLE_STATUS) and "MESSAGES" not in render_table(SAMPLE_STATUS)


def test_hostile_message_values_are_escaped_and_made_visible():
    hostile = '<script>alert(1)</script>\x1b[2J'
    messaging = copy.deepcopy(MESSAGING)
    messaging["imports"][0]["subject"] = hostile
    messaging["broker"]["last_error"] = hostile
    messaging["exports"][0]["stored"] = {hostile: 1}
    status = {"site": "x", "messaging": messaging}
    page = render_html(status)
    assert "<script" not in page.lower()
    assert "\x1b" not in render_table(status)
    for broken in ({"broker": None, "imports": [{}], "exports": [None, {"stored": "x"}]}, {"imports": "x"}):
        render_html({"site": "x", "messaging": broken})
        render_table({"site": "x", "messaging": broken})


def test_an_import_with_failover_sites_shows_them_in_order():
    status = copy.deepcopy(SAMPLE_STATUS)
    status["imports"][0]["failover"] = [{"site": "site-c", "link_up": True}, {"site": "site-d", "link_up": False}]
    assert PageTables(render_html(status)).tables["imports"][1][1] == "site-b, then site-c (up), site-d (down)"
    assert "site-b, then site-c (up), site-d (down)" in render_table(status)
    render_table({"site": "x", "imports": [{"failover": "x"}, {"failover": [None, 3]}]})
