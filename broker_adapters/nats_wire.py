"""The NATS client protocol (https://docs.nats.io/reference/reference-protocols/nats-protocol), sans I/O.

    parser = NatsParser()                       # or NatsParser(max_payload=cap)
    for event in parser.feed(received_bytes):   # Info | Msg | Ping | Pong | Ok | Err, in arrival order
        ...
    sock.send(encode_connect(name="gw", version="0.1.0") + encode_sub("_INBOX.x.*", 1) + PING)
    sock.send(encode_hpub("orders.new", encode_headers([("Nats-Msg-Id", "42")]), b"{...}", reply="_INBOX.x.1"))

What comes from the server (`NatsParser.feed`):

- ``INFO {json}`` -> `Info`; its ``max_payload`` becomes the payload limit (capped by the parser's own
  `max_payload` when one was given);
- ``MSG <subject> <sid> [reply] <size>`` and ``HMSG <subject> <sid> [reply] <header size> <total size>``
  -> `Msg` with the payload as bytes; for HMSG the ``NATS/1.0[ <code>[ <description>]]`` header block is
  decoded into `Msg.status` / `Msg.description` (inline status: ``503`` no responders, ``404 No Messages``,
  ``408 Request Timeout``, ``409 ...``) and `Msg.headers` (name, value) in the order sent, repeats kept;
- ``PING`` / ``PONG`` / ``+OK`` -> the `PING_EVENT` / `PONG_EVENT` / `OK_EVENT` singletons; ``-ERR '...'`` -> `Err`.

Rules:

- strict framing: a control line longer than `MAX_CONTROL_LINE` (4 KiB) without its CRLF, an unknown
  operation, a wrong argument count, a size that is not plain decimal digits, a header size above the total,
  a payload above the limit, a payload not followed by CRLF, INFO that is not a JSON object: all raise
  `NatsProtocolError`; the stream is then unusable (close the connection). Operation names are
  case-insensitive, arguments may be separated by spaces or tabs, as the protocol allows;
- the header block's *content* comes from whoever published the message, not from the server, and the
  server does not check it: a line that is not ``Name: value`` (or a block that does not start with
  ``NATS/1.0``) is skipped and described in `Msg.header_error` rather than raised, so that one publisher's
  malformed headers cannot bring down every consumer's connection over and over (the message is
  redelivered). Values lose surrounding blanks, as in every NATS client;
- bounded memory: the parser keeps at most one incomplete item (a control line <= 4 KiB, or one message
  whose control line is parsed and whose body is <= the limit) between calls; complete items are turned
  into events in one pass over each fed chunk (``bytes.find``, slices through a memoryview);
- encoders check what would corrupt the stream: subjects and reply subjects are non-empty and contain no
  whitespace, header names are printable ASCII without ``:``, header values contain no CR or LF; they raise
  `ValueError` naming the bad part. Text is UTF-8.

No I/O, no clocks, no logging, no trio: `broker_adapters.nats` does those.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "Err",
    "Event",
    "HEADER_SLACK",
    "Info",
    "MAX_CONTROL_LINE",
    "Msg",
    "NatsParser",
    "NatsProtocolError",
    "OK_EVENT",
    "Ok",
    "PING",
    "PING_EVENT",
    "PONG",
    "PONG_EVENT",
    "Ping",
    "Pong",
    "decode_headers",
    "encode_connect",
    "encode_headers",
    "encode_hpub",
    "encode_pub",
    "encode_sub",
    "encode_unsub",
]

MAX_CONTROL_LINE = 4096  # bytes of one control line without its CRLF (the server's own default is 4 KiB)
DEFAULT_MAX_PAYLOAD = 1024 * 1024  # the limit until INFO says otherwise (nats-server's default max_payload)
# An HMSG may exceed max_payload by this much: the server checks publishes against max_payload, but a stream
# that sources another adds its own header (Nats-Stream-Source) to a message that was already at the limit.
HEADER_SLACK = 4096
HEADER_VERSION = b"NATS/1.0"
_MAX_SIZE_DIGITS = 10  # sizes and sids are at most this many digits (int() of a long digit run is slow)

PING = b"PING\r\n"
PONG = b"PONG\r\n"


class NatsProtocolError(Exception):
    """The bytes from the server are not the NATS protocol (or exceed a limit); the connection is unusable."""


# ------------------------------------------------------------------------------------------------ events


@dataclass(slots=True)
class Info:
    """The server's INFO (the first thing it sends, and again when the cluster changes)."""

    info: dict


@dataclass(slots=True)
class Msg:
    """A message delivered to one of our subscriptions.

    `headers` is None for MSG (no header block) and a list for HMSG; `status` is the inline status code of
    the header block (0 when there is none) and `description` its text (``"No Messages"``, ``""``...);
    `header_error` says which header lines were skipped (empty when the block was well formed)."""

    subject: str
    sid: int
    reply: str
    payload: bytes
    headers: list[tuple[str, str]] | None = None
    status: int = 0
    description: str = ""
    header_error: str = ""


@dataclass(slots=True, frozen=True)
class Ping:
    pass


@dataclass(slots=True, frozen=True)
class Pong:
    pass


@dataclass(slots=True, frozen=True)
class Ok:
    pass


@dataclass(slots=True, frozen=True)
class Err:
    """``-ERR`` from the server; `text` without the surrounding quotes (``Authorization Violation``)."""

    text: str


PING_EVENT = Ping()
PONG_EVENT = Pong()
OK_EVENT = Ok()

Event = Info | Msg | Ping | Pong | Ok | Err


# ------------------------------------------------------------------------------------------------ parser


def _size(token: bytes, what: str) -> int:
    if not token.isdigit() or len(token) > _MAX_SIZE_DIGITS:
        raise NatsProtocolError(f"{what} {token[:20]!r} is not a decimal number")
    return int(token)


def _text(token: bytes, what: str) -> str:
    try:
        return token.decode()
    except UnicodeDecodeError:
        raise NatsProtocolError(f"{what} {token[:60]!r} is not UTF-8") from None


def decode_headers(block: bytes) -> tuple[int, str, list[tuple[str, str]], str]:
    """(status, description, headers, error) of an HMSG header block (``NATS/1.0 ...\\r\\n...\\r\\n\\r\\n``).

    Never raises: lines that are not ``Name: value`` are skipped and described in `error` (module rules)."""
    status = 0
    description = ""
    problems: list[str] = []
    first_end = block.find(b"\r\n")
    if first_end < 0:
        first_end = len(block)
        problems.append("the header block does not end with CRLF CRLF")
    elif not block.endswith(b"\r\n\r\n"):
        problems.append("the header block does not end with CRLF CRLF")
    version_line = block[:first_end]
    if version_line.startswith(HEADER_VERSION):
        rest = version_line[len(HEADER_VERSION):]
        if rest and rest[:1] not in b" \t":
            problems.append(f"version line {version_line[:40]!r} is not NATS/1.0")
        else:
            rest = rest.strip(b" \t")
            if rest:
                code = rest[:3]
                if len(code) == 3 and code.isdigit() and (len(rest) == 3 or rest[3:4] in b" \t"):
                    status = int(code)
                    description = rest[4:].strip(b" \t").decode(errors="replace")
                else:
                    problems.append(f"status {rest[:40]!r} is not a 3-digit code")
    else:
        problems.append(f"version line {version_line[:40]!r} is not NATS/1.0")
    headers: list[tuple[str, str]] = []
    body = block[first_end + 2:]
    if body.endswith(b"\r\n\r\n"):
        body = body[:-4]
    elif body.endswith(b"\r\n"):
        body = body[:-2]
    if body:
        for line in body.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            name = name.strip(b" \t")
            if not colon or not name:
                problems.append(f"header line {line[:40]!r} is not 'Name: value'")
                continue
            value = value.strip(b" \t")
            headers.append((name.decode(errors="surrogateescape"), value.decode(errors="surrogateescape")))
    return status, description, headers, "; ".join(problems)


class NatsParser:
    """Turns the server's bytes into events (module docstring). `max_payload`: a hard cap of our own on
    message sizes; without one, the limit is INFO's max_payload (`DEFAULT_MAX_PAYLOAD` before INFO)."""

    __slots__ = ("max_payload", "max_control_line", "_cap", "_buffer", "_pending")

    def __init__(self, max_payload: int | None = None, *, max_control_line: int = MAX_CONTROL_LINE) -> None:
        if max_payload is not None and max_payload <= 0:
            raise ValueError(f"max_payload must be positive, not {max_payload}")
        self._cap = max_payload
        self.max_payload = max_payload if max_payload is not None else DEFAULT_MAX_PAYLOAD
        self.max_control_line = max_control_line
        self._buffer = bytearray()  # the unparsed tail: at most one incomplete item
        # a MSG/HMSG whose control line is parsed and whose body has not all arrived:
        # (subject, sid, reply, header size or -1, total size)
        self._pending: tuple[str, int, str, int, int] | None = None

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete item."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The events completed by `data`, in order. Raises NatsProtocolError on malformed input."""
        if self._buffer:
            self._buffer += data
            buf: bytes | bytearray = self._buffer
        else:
            if not data:
                return []
            buf = data if isinstance(data, bytes) else bytes(data)
        events: list[Event] = []
        pos = 0
        end = len(buf)
        pending = self._pending
        max_line = self.max_control_line
        append = events.append
        with memoryview(buf) as view:
            while True:
                if pending is not None:
                    subject, sid, reply, header_size, size = pending
                    body_end = pos + size
                    if body_end + 2 > end:
                        break
                    if buf[body_end:body_end + 2] != b"\r\n":
                        raise NatsProtocolError(
                            f"message on {subject!r}: {size} bytes of payload not followed by CRLF"
                        )
                    if header_size < 0:
                        append(Msg(subject, sid, reply, bytes(view[pos:body_end])))
                    else:
                        split = pos + header_size
                        status, description, headers, error = decode_headers(bytes(view[pos:split]))
                        append(Msg(subject, sid, reply, bytes(view[split:body_end]), headers, status,
                                   description, error))
                    pos = body_end + 2
                    pending = None
                    continue
                if pos >= end:
                    break
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    if end - pos > max_line:
                        raise NatsProtocolError(f"control line longer than {max_line} bytes without CRLF")
                    break
                if line_end - pos > max_line:
                    raise NatsProtocolError(f"control line of {line_end - pos} bytes (limit {max_line})")
                line = bytes(view[pos:line_end])
                pos = line_end + 2
                pending = self._control_line(line, append)
        if pos >= end:
            if self._buffer:
                self._buffer = bytearray()
        elif buf is self._buffer:
            del self._buffer[:pos]
        else:
            self._buffer = bytearray(buf[pos:])
        self._pending = pending
        return events

    def _control_line(self, line: bytes, append) -> tuple[str, int, str, int, int] | None:
        """Handle one control line; a MSG/HMSG returns what its body needs, the rest append their event."""
        space = _first_blank(line)
        if space >= 0:
            op = line[:space].upper()
            rest = line[space:]
        else:
            op = line.upper()
            rest = b""
        if op == b"MSG":
            args = rest.split()
            if len(args) == 3:
                subject, sid, size_token = args
                reply = ""
            elif len(args) == 4:
                subject, sid, reply_token, size_token = args
                reply = _text(reply_token, "reply subject")
            else:
                raise NatsProtocolError(f"MSG needs 3 or 4 arguments: {line[:200]!r}")
            size = _size(size_token, "MSG size")
            if size > self.max_payload:
                raise NatsProtocolError(f"MSG of {size} bytes exceeds the limit of {self.max_payload}")
            return _text(subject, "subject"), _size(sid, "sid"), reply, -1, size
        if op == b"HMSG":
            args = rest.split()
            if len(args) == 4:
                subject, sid, header_token, size_token = args
                reply = ""
            elif len(args) == 5:
                subject, sid, reply_token, header_token, size_token = args
                reply = _text(reply_token, "reply subject")
            else:
                raise NatsProtocolError(f"HMSG needs 4 or 5 arguments: {line[:200]!r}")
            header_size = _size(header_token, "HMSG header size")
            size = _size(size_token, "HMSG total size")
            if header_size > size:
                raise NatsProtocolError(f"HMSG header size {header_size} exceeds its total size {size}")
            if header_size < len(HEADER_VERSION) + 4:
                raise NatsProtocolError(f"HMSG header size {header_size} is too small for a header block")
            if size > self.max_payload + HEADER_SLACK:
                raise NatsProtocolError(f"HMSG of {size} bytes exceeds the limit of {self.max_payload}")
            return _text(subject, "subject"), _size(sid, "sid"), reply, header_size, size
        if op == b"PING":
            append(PING_EVENT)
        elif op == b"PONG":
            append(PONG_EVENT)
        elif op == b"+OK":
            append(OK_EVENT)
        elif op == b"-ERR":
            text = rest.strip()
            if len(text) >= 2 and text[:1] == b"'" and text[-1:] == b"'":
                text = text[1:-1]
            append(Err(text.decode(errors="replace")))
        elif op == b"INFO":
            try:
                info = json.loads(rest) if rest.strip() else None
            except ValueError as exc:
                raise NatsProtocolError(f"INFO is not JSON: {exc}") from None
            if not isinstance(info, dict):
                raise NatsProtocolError(f"INFO is not a JSON object: {line[:200]!r}")
            announced = info.get("max_payload")
            if type(announced) is int and announced > 0:
                self.max_payload = announced if self._cap is None else min(announced, self._cap)
            append(Info(info))
        else:
            raise NatsProtocolError(f"unknown operation {line[:40]!r}")
        return None


def _first_blank(line: bytes) -> int:
    """Index of the first space or tab (-1: none)."""
    space = line.find(b" ")
    tab = line.find(b"\t")
    if tab >= 0 and (space < 0 or tab < space):
        return tab
    return space


# ------------------------------------------------------------------------------------------------ encoders

_BLANK = re.compile(r"\s")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII without ':' (and without space)
_CRLF = re.compile(r"[\r\n]")


def _subject(subject: str, what: str = "subject") -> bytes:
    if not subject or _BLANK.search(subject):
        raise ValueError(f"{what} {subject!r} is not valid: it must be non-empty and contain no whitespace")
    return subject.encode()


def encode_connect(
    *,
    name: str,
    version: str,
    lang: str = "python-trio",
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    echo: bool = True,
) -> bytes:
    """``CONNECT {...}``: verbose and pedantic off, headers and no_responders on, protocol 1."""
    options: dict[str, object] = {
        "verbose": False,
        "pedantic": False,
        "tls_required": False,
        "name": name,
        "lang": lang,
        "version": version,
        "protocol": 1,
        "echo": echo,
        "headers": True,
        "no_responders": True,
    }
    if user is not None:
        options["user"] = user
        options["pass"] = password if password is not None else ""
    if token is not None:
        options["auth_token"] = token
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + b"\r\n"


def encode_pub(subject: str, payload: bytes | bytearray | memoryview, reply: str = "") -> bytes:
    """``PUB <subject> [reply] <size>\\r\\n<payload>\\r\\n``."""
    if reply:
        return b"PUB %b %b %d\r\n%b\r\n" % (_subject(subject), _subject(reply, "reply subject"), len(payload), payload)
    return b"PUB %b %d\r\n%b\r\n" % (_subject(subject), len(payload), payload)


def encode_headers(headers: Iterable[tuple[str, str]], status: int = 0, description: str = "") -> bytes:
    """The header block ``NATS/1.0[ status[ description]]\\r\\nName: value\\r\\n...\\r\\n``."""
    parts = [HEADER_VERSION]
    if status:
        if not 100 <= status <= 999:
            raise ValueError(f"status {status} is not a 3-digit code")
        parts.append(b" %d" % status)
        if description:
            if _CRLF.search(description):
                raise ValueError(f"status description {description!r} contains CR or LF")
            parts.append(b" " + description.encode())
    parts.append(b"\r\n")
    for name, value in headers:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is not valid: printable ASCII without ':' or spaces")
        if _CRLF.search(value):
            raise ValueError(f"value of header {name!r} contains CR or LF")
        parts.append(b"%b: %b\r\n" % (name.encode(), value.encode(errors="surrogateescape")))
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_hpub(subject: str, header_block: bytes, payload: bytes | bytearray | memoryview, reply: str = "") -> bytes:
    """``HPUB <subject> [reply] <header size> <total size>\\r\\n<headers><payload>\\r\\n``; `header_block`
    from `encode_headers`."""
    header_size = len(header_block)
    total = header_size + len(payload)
    if reply:
        return b"HPUB %b %b %d %d\r\n%b%b\r\n" % (
            _subject(subject), _subject(reply, "reply subject"), header_size, total, header_block, payload
        )
    return b"HPUB %b %d %d\r\n%b%b\r\n" % (_subject(subject), header_size, total, header_block, payload)


def encode_sub(subject: str, sid: int, queue: str = "") -> bytes:
    """``SUB <subject> [queue group] <sid>``."""
    if queue:
        return b"SUB %b %b %d\r\n" % (_subject(subject), _subject(queue, "queue group"), sid)
    return b"SUB %b %d\r\n" % (_subject(subject), sid)


def encode_unsub(sid: int, max_msgs: int | None = None) -> bytes:
    """``UNSUB <sid> [max_msgs]``."""
    if max_msgs is None:
        return b"UNSUB %d\r\n" % sid
    return b"UNSUB %d %d\r\n" % (sid, max_msgs)
