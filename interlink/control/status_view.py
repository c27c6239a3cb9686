"""Human views of the gateway's status document: an HTML page (the admin port's `/`) and a terminal table
(`interlink status`).

The document is built by the gateway (its shape, abridged):

    site, version, worker, pid, started_at, uptime_s, ready, not_ready: [reason]
    config: {path, sha256, last_reload: {result, at, error} | null}
    listen: {triple, bolt, peer, admin}
    certificate: {subject, uri, not_after, expires_in_days}
    peers: [{site, domain, given_domain, ca_not_after, inbound_connections,
             links: [{endpoint, protocol, up, connections_up, connections, rtt_ms, last_handshake, last_error,
                      peer_certificate: {subject, uri, not_after, expires_in_days}}]}]
    exports: [{service, protocol, registry, providers: [address], providers_up, synced, last_sync, sync_age_s,
               allow: [site]}]
    imports: [{service, from, failover: [{site, link_up}], protocol, link_up, published}]
    messaging: {broker: {kind, url, connected, last_error},
                imports: [{subject, to, stream, ready, link_up, delivered, redelivered, dead_lettered, lag,
                           last_error}],
                exports: [{subject, stream, allow: [site], stored: {site: n}}]} | null
    denials: [{at, peer, caller_app, service, reason}]
    counters: {calls: {STATUS: n}, calls_in_flight, denials, reloads: {ok, failed}}

Every key but `site` may be missing or null; the views show "-" for what they do not know and never raise
on such a document. Every value is treated as hostile: escaped in HTML, control characters made visible
in the terminal. Times (`started_at`, `at`, `last_handshake`, `last_sync`) are Unix seconds, shown in UTC.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

UNKNOWN = "-"
REFRESH_SECONDS = 5
EXPIRY_WARNING_DAYS = 30  # certificates closer to expiry than this are marked


# --- values as text (shared by both views) ----------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        return []
    return [_mapping(item) for item in value]


def _text(value: Any) -> str:
    if value is None or value == "":
        return UNKNOWN
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(item) for item in value) or UNKNOWN
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _when(value: Any) -> str:
    """Unix seconds as `2025-12-06 05:46:40Z`."""
    seconds = _number(value)
    if seconds is None:
        return UNKNOWN
    try:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return UNKNOWN
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(value: Any) -> str:
    """Seconds as `12.5s`, `3m 12s`, `2h 05m`, `3d 04h`."""
    seconds = _number(value)
    if seconds is None:
        return UNKNOWN
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600:02d}h"


def _ms(value: Any) -> str:
    number = _number(value)
    return UNKNOWN if number is None else f"{number:.2f}"


def _count(value: Any) -> str:
    number = _number(value)
    if number is None:
        return UNKNOWN
    return str(int(number)) if number == int(number) else f"{number:g}"


def _expiry(certificate: Any) -> str:
    """`2027-12-05 (in 364 d)` from a certificate's not_after and expires_in_days."""
    certificate = _mapping(certificate)
    not_after = certificate.get("not_after")
    date = str(not_after)[:10] if not_after else UNKNOWN
    days = _number(certificate.get("expires_in_days"))
    if days is None:
        return date
    if days < 0:
        return f"{date} (EXPIRED {-days:.0f} d ago)"
    return f"{date} (in {days:.0f} d)"


def _expires_soon(certificate: Any) -> bool:
    days = _number(_mapping(certificate).get("expires_in_days"))
    return days is not None and days < EXPIRY_WARNING_DAYS


def _up(value: Any) -> str:
    return "up" if value is True else "down" if value is False else UNKNOWN


def _ready(status: Mapping[str, Any]) -> tuple[str, list[str]]:
    ready = status.get("ready")
    not_ready = status.get("not_ready")
    reasons = [_text(reason) for reason in not_ready] if isinstance(not_ready, list) else []
    return ("ready" if ready is True else "not ready" if ready is False else "readiness unknown"), reasons


def _last_reload(config: Mapping[str, Any]) -> str:
    reload = config.get("last_reload")
    if not isinstance(reload, Mapping):
        return "never"
    text = f"{_text(reload.get('result'))} at {_when(reload.get('at'))}"
    if reload.get("error"):
        text += f": {_text(reload.get('error'))}"
    return text


def _connections(link: Mapping[str, Any]) -> str:
    return f"{_count(link.get('connections_up'))}/{_count(link.get('connections'))}"


def _link_state(link: Mapping[str, Any]) -> str:
    state = _up(link.get("up"))
    if link.get("last_error"):
        state += f" ({_text(link.get('last_error'))})"
    return state


def _providers(export: Mapping[str, Any]) -> str:
    """`1/2 up: 10.0.0.1:50061, 10.0.0.2:50061`"""
    providers = export.get("providers")
    known = providers if isinstance(providers, list) else []
    up = _count(export.get("providers_up"))
    if not known:
        return UNKNOWN if up == UNKNOWN else f"{up} up"
    return f"{up}/{len(known)} up: {_text(known)}"


def _sync(export: Mapping[str, Any]) -> str:
    synced = export.get("synced")
    state = "synced" if synced is True else "not synced" if synced is False else UNKNOWN
    age = export.get("sync_age_s")
    if _number(age) is not None:
        state += f", {_duration(age)} ago"
    return state


def _counter_rows(counters: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(stable key, label, value) for every counter."""
    rows = []
    for status, count in _mapping(counters.get("calls")).items():
        rows.append((f"calls.{status}", f"calls {status}", _count(count)))
    rows.append(("calls_in_flight", "calls in flight", _count(counters.get("calls_in_flight"))))
    rows.append(("denials", "denials", _count(counters.get("denials"))))
    reloads = _mapping(counters.get("reloads"))
    rows.append(("reloads.ok", "reloads ok", _count(reloads.get("ok"))))
    rows.append(("reloads.failed", "reloads failed", _count(reloads.get("failed"))))
    return rows


def _listen(status: Mapping[str, Any]) -> str:
    listen = _mapping(status.get("listen"))
    named = [f"{name} {listen[name]}" for name in ("triple", "bolt", "peer", "admin") if listen.get(name)]
    return ", ".join(named) or UNKNOWN


# --- HTML -------------------------------------------------------------------------------------------------

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;margin:.2em 0}th,td{padding:.2em .7em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:0}dt{color:#666}dd{margin:0}
.up,.ready{color:#176117}.down,.not-ready,.soon{color:#a11}.muted{color:#777}code{font-size:.95em}
"""


def _e(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else _text(value), quote=True)


def _cells(values: Iterable[tuple[str, str]]) -> str:
    """`(text, css class)` pairs as <td> cells; the text is escaped here."""
    return "".join(f'<td class="{cls}">{_e(text)}</td>' if cls else f"<td>{_e(text)}</td>" for text, cls in values)


def _table(table_id: str, headings: Sequence[str], rows: list[str], empty: str) -> str:
    head = "".join(f"<th>{_e(heading)}</th>" for heading in headings)
    body = "".join(rows) or f'<tr class="empty"><td colspan="{len(headings)}" class="muted">{_e(empty)}</td></tr>'
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(status: dict) -> str:
    """The status document as a self-contained HTML page (inline CSS, no scripts; refreshes itself)."""
    status = _mapping(status)
    site = _text(status.get("site"))
    readiness, reasons = _ready(status)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        f"<title>interlink {_e(site)}</title><style>{_STYLE}</style></head><body>",
        _html_header(status, site, readiness, reasons),
        "<h2>Peers and links</h2>",
        _html_peers(status),
        "<h2>Exports</h2>",
        _html_exports(status),
        "<h2>Imports</h2>",
        _html_imports(status),
        *_html_messaging(status),
        "<h2>Recent denials</h2>",
        _html_denials(status),
        "<h2>Counters</h2>",
        _html_counters(status),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _html_header(status: Mapping[str, Any], site: str, readiness: str, reasons: list[str]) -> str:
    config = _mapping(status.get("config"))
    certificate = _mapping(status.get("certificate"))
    ready_class = {"ready": "ready", "not ready": "not-ready"}.get(readiness, "muted")
    reason_list = "".join(f"<li>{_e(reason)}</li>" for reason in reasons)
    sha = _text(config.get("sha256"))
    fields = [
        ("version", _e(status.get("version"))),
        ("process", f"worker {_e(status.get('worker'))}, pid {_e(status.get('pid'))}"),
        ("up for", f"{_e(_duration(status.get('uptime_s')))} (since {_e(_when(status.get('started_at')))})"),
        ("config", f"<code>{_e(config.get('path'))}</code>"),
        ("sha256", f'<code title="{_e(sha)}">{_e(sha[:16])}</code>'),
        ("last reload", _e(_last_reload(config))),
        ("listening", _e(_listen(status))),
        ("certificate", f"{_e(certificate.get('subject'))} <code>{_e(certificate.get('uri'))}</code>"),
        ("expires", f'<span class="{"soon" if _expires_soon(certificate) else ""}">'
                    f"{_e(_expiry(certificate))}</span>"),
    ]
    rows = "".join(f"<dt>{_e(name)}</dt><dd>{value}</dd>" for name, value in fields)
    return (
        f'<header><h1>interlink <span id="site">{_e(site)}</span></h1>'
        f'<p id="ready" class="{ready_class}"><strong>{_e(readiness)}</strong></p>'
        + (f'<ul id="not-ready">{reason_list}</ul>' if reason_list else "")
        + f'<dl id="about">{rows}</dl></header>'
    )


def _html_peers(status: Mapping[str, Any]) -> str:
    rows = []
    for peer in _items(status.get("peers")):
        name = _text(peer.get("site"))
        links = _items(peer.get("links"))
        ca_until = str(peer.get("ca_not_after") or UNKNOWN)[:10]
        domains = (f'<br><span class="muted">we call as {_e(peer.get("domain"))}; '
                   f'they call as {_e(peer.get("given_domain"))}; CA until {_e(ca_until)}</span>')
        inbound = _count(peer.get("inbound_connections"))
        first = f'<td rowspan="{max(len(links), 1)}"><strong>{_e(name)}</strong>{domains}</td>'
        if not links:
            rows.append(f'<tr class="peer" data-peer="{_e(name)}">{first}'
                        f'<td colspan="8" class="muted">no outbound link (receives calls only)</td>'
                        f'{_cells([(inbound, "num")])}</tr>')
            continue
        for index, link in enumerate(links):
            certificate = _mapping(link.get("peer_certificate"))
            up = link.get("up")
            cells = _cells([
                (_text(link.get("endpoint")), ""),
                (_text(link.get("protocol")), ""),
                (_link_state(link), "up" if up is True else "down" if up is False else ""),
                (_connections(link), "num"),
                (_ms(link.get("rtt_ms")), "num"),
                (_when(link.get("last_handshake")), ""),
                (_text(certificate.get("subject")), ""),
                (_expiry(certificate), "soon" if _expires_soon(certificate) else ""),
            ])
            if index == 0:
                rows.append(f'<tr class="peer" data-peer="{_e(name)}">{first}{cells}'
                            f'<td class="num" rowspan="{len(links)}">{_e(inbound)}</td></tr>')
            else:
                rows.append(f'<tr class="link" data-peer="{_e(name)}">{cells}</tr>')
    headings = ["Peer", "Endpoint", "Protocol", "Link", "Connections up", "RTT ms", "Last handshake",
                "Peer certificate", "Expires", "Inbound"]
    return _table("peers", headings, rows, "no peers")


def _html_exports(status: Mapping[str, Any]) -> str:
    rows = []
    for export in _items(status.get("exports")):
        synced = export.get("synced")
        rows.append(f'<tr class="export" data-service="{_e(export.get("service"))}">' + _cells([
            (_text(export.get("service")), ""),
            (_text(export.get("protocol")), ""),
            (_providers(export), ""),
            (_text(export.get("registry")), ""),
            (_sync(export), "up" if synced is True else "down" if synced is False else ""),
            (_text(export.get("allow")), ""),
        ]) + "</tr>")
    return _table("exports", ["Service", "Protocol", "Providers", "Registry", "Sync", "Allowed peers"], rows,
                  "no exports")


def _html_imports(status: Mapping[str, Any]) -> str:
    rows = []
    for item in _items(status.get("imports")):
        link_up = item.get("link_up")
        rows.append(f'<tr class="import" data-service="{_e(item.get("service"))}">' + _cells([
            (_text(item.get("service")), ""),
            (_import_sites(item), ""),
            (_text(item.get("protocol")), ""),
            (_up(link_up), "up" if link_up is True else "down" if link_up is False else ""),
            (_text(item.get("published")), ""),
        ]) + "</tr>")
    return _table("imports", ["Service", "From", "Protocol", "Link", "Published"], rows, "no imports")


def _html_messaging(status: Mapping[str, Any]) -> list[str]:
    """Messages across sites: the broker, then what our producers send (imports) and what peers deliver."""
    messaging = status.get("messaging")
    if not isinstance(messaging, Mapping):
        return []
    broker = _mapping(messaging.get("broker"))
    connected = broker.get("connected")
    head = (f'<p class="broker">Broker {_e(_text(broker.get("kind")))} {_e(_text(broker.get("url")))}: '
            f'<span class="{"up" if connected is True else "down"}">{_e(_up(connected))}</span>'
            + (f" ({_e(_text(broker.get('last_error')))})" if broker.get("last_error") else "") + "</p>")
    rows = [f'<tr class="message-import" data-subject="{_e(item.get("subject"))}">' + _cells(
        [(value, css) for value, css in _message_import_cells(item)]) + "</tr>"
            for item in _items(messaging.get("imports"))]
    exports = [f'<tr class="message-export" data-subject="{_e(item.get("subject"))}">' + _cells([
        (_text(item.get("subject")), ""), (_text(item.get("stream")), ""), (_text(item.get("allow")), ""),
        (_stored(item), "num"),
    ]) + "</tr>" for item in _items(messaging.get("exports"))]
    return ["<h2>Messages</h2>", head,
            _table("message-imports", list(_MESSAGE_IMPORT_HEADINGS), rows, "no message imports"),
            _table("message-exports", ["Subject", "Stream", "Allowed peers", "Stored"], exports,
                   "no message exports")]


_MESSAGE_IMPORT_HEADINGS = ("Subject", "To", "Stream", "Reading", "Delivered", "Redelivered", "Dead letters",
                            "Lag", "Last error")


def _message_import_cells(item: Mapping[str, Any]) -> list[tuple[str, str]]:
    ready = item.get("ready")
    return [
        (_text(item.get("subject")), ""), (_text(item.get("to")), ""), (_text(item.get("stream")), ""),
        (_up(ready), "up" if ready is True else "down" if ready is False else ""),
        (_count(item.get("delivered")), "num"), (_count(item.get("redelivered")), "num"),
        (_count(item.get("dead_lettered")), "num"), (_count(item.get("lag")), "num"),
        (_text(item.get("last_error")), ""),
    ]


def _stored(item: Mapping[str, Any]) -> str:
    stored = _mapping(item.get("stored"))
    return ", ".join(f"{_text(site)} {_count(count)}" for site, count in stored.items()) or UNKNOWN


def _import_sites(item: Mapping[str, Any]) -> str:
    """`site-a`, or with failover `site-a, then site-c (up)`."""
    text = _text(item.get("from"))
    failover = [_mapping(entry) for entry in _items(item.get("failover"))]
    if failover:
        text += ", then " + ", ".join(f"{_text(entry.get('site'))} ({_up(entry.get('link_up'))})" for entry in failover)
    return text


def _html_denials(status: Mapping[str, Any]) -> str:
    rows = [
        '<tr class="denial">' + _cells([
            (_when(denial.get("at")), ""),
            (_text(denial.get("peer")), ""),
            (_text(denial.get("caller_app")), ""),
            (_text(denial.get("service")), ""),
            (_text(denial.get("reason")), ""),
        ]) + "</tr>"
        for denial in _items(status.get("denials"))
    ]
    return _table("denials", ["Time", "Peer", "App", "Service", "Reason"], rows, "no denials")


def _html_counters(status: Mapping[str, Any]) -> str:
    rows = [
        f'<tr data-counter="{_e(key)}"><th>{_e(label)}</th>{_cells([(value, "num")])}</tr>'
        for key, label, value in _counter_rows(_mapping(status.get("counters")))
    ]
    return _table("counters", ["Counter", "Value"], rows, "no counters")


# --- terminal table ---------------------------------------------------------------------------------------


def _visible(text: str) -> str:
    """Control characters (escape sequences a hostile name could carry) shown as \\xNN, never sent raw."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"
                   for ch in text)


def _columns(headings: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    cells = [[_visible(cell) for cell in row] for row in [headings, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headings))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]


def render_table(status: dict) -> str:
    """The status document as plain text for a terminal: header, peers and links, exports, imports, recent
    denials, counters."""
    status = _mapping(status)
    config = _mapping(status.get("config"))
    certificate = _mapping(status.get("certificate"))
    readiness, reasons = _ready(status)
    lines = [
        _visible(f"site {_text(status.get('site'))}  version {_text(status.get('version'))}  "
                 f"worker {_text(status.get('worker'))}  pid {_text(status.get('pid'))}  "
                 f"up {_duration(status.get('uptime_s'))}"),
        _visible(readiness.upper() + (": " + "; ".join(reasons) if reasons else "")),
        _visible(f"config {_text(config.get('path'))}  sha256 {_text(config.get('sha256'))[:16]}  "
                 f"last reload {_last_reload(config)}"),
        _visible(f"listening {_listen(status)}"),
        _visible(f"certificate {_text(certificate.get('subject'))}  {_text(certificate.get('uri'))}  "
                 f"expires {_expiry(certificate)}"),
    ]

    peer_rows = []
    for peer in _items(status.get("peers")):
        name = _text(peer.get("site"))
        inbound = _count(peer.get("inbound_connections"))
        links = _items(peer.get("links")) or [None]
        for link in links:
            if link is None:
                peer_rows.append([name, "(receives calls only)", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN,
                                  UNKNOWN, UNKNOWN, inbound])
                continue
            peer_certificate = _mapping(link.get("peer_certificate"))
            peer_rows.append([
                name, _text(link.get("endpoint")), _text(link.get("protocol")), _link_state(link),
                _connections(link), _ms(link.get("rtt_ms")), _when(link.get("last_handshake")),
                _text(peer_certificate.get("subject")), _expiry(peer_certificate), inbound,
            ])
    sections = [
        ("PEERS AND LINKS", ["PEER", "ENDPOINT", "PROTOCOL", "LINK", "CONN UP", "RTT MS", "LAST HANDSHAKE",
                             "PEER CERTIFICATE", "EXPIRES", "INBOUND"], peer_rows, "no peers"),
        ("EXPORTS", ["SERVICE", "PROTOCOL", "PROVIDERS", "REGISTRY", "SYNC", "ALLOWED PEERS"], [
            [_text(e.get("service")), _text(e.get("protocol")), _providers(e), _text(e.get("registry")), _sync(e),
             _text(e.get("allow"))]
            for e in _items(status.get("exports"))
        ], "no exports"),
        ("IMPORTS", ["SERVICE", "FROM", "PROTOCOL", "LINK", "PUBLISHED"], [
            [_text(i.get("service")), _import_sites(i), _text(i.get("protocol")), _up(i.get("link_up")),
             _text(i.get("published"))]
            for i in _items(status.get("imports"))
        ], "no imports"),
        *_message_sections(status),
        ("RECENT DENIALS", ["TIME", "PEER", "APP", "SERVICE", "REASON"], [
            [_when(d.get("at")), _text(d.get("peer")), _text(d.get("caller_app")), _text(d.get("service")),
             _text(d.get("reason"))]
            for d in _items(status.get("denials"))
        ], "none"),
        ("COUNTERS", ["COUNTER", "VALUE"], [
            [label, value] for _key, label, value in _counter_rows(_mapping(status.get("counters")))
        ], "none"),
    ]
    for title, headings, rows, empty in sections:
        lines += ["", _visible(title)]
        lines += _columns(headings, rows) if rows else [f"  ({empty})"]
    return "\n".join(lines) + "\n"


def _message_sections(status: Mapping[str, Any]) -> list[tuple[str, list[str], list[list[str]], str]]:
    messaging = status.get("messaging")
    if not isinstance(messaging, Mapping):
        return []
    broker = _mapping(messaging.get("broker"))
    title = (f"MESSAGES (broker {_text(broker.get('kind'))} {_text(broker.get('url'))}: {_up(broker.get('connected'))}"
             + (f", {_text(broker.get('last_error'))}" if broker.get("last_error") else "") + ")")
    imports = [[value for value, _ in _message_import_cells(item)] for item in _items(messaging.get("imports"))]
    exports = [[_text(item.get("subject")), _text(item.get("stream")), _text(item.get("allow")), _stored(item)]
               for item in _items(messaging.get("exports"))]
    return [(title, [heading.upper() for heading in _MESSAGE_IMPORT_HEADINGS], imports, "no message imports"),
            ("MESSAGE EXPORTS", ["SUBJECT", "STREAM", "ALLOWED PEERS", "STORED"], exports, "no message exports")]
