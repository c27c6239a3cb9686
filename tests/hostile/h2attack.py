"""HTTP/2 attackers from raw sockets: frames built by hand (stateless HPACK literals, hyperframe-compatible
layout), frames parsed on the way back, and a watcher that sees how each connection ended.

Nothing here uses an HTTP/2 state machine on the sending side: an attacker sends what it likes. The
receiving side parses frames just enough to tell a GOAWAY (and its error code) from a RST_STREAM, an EOF,
a TCP reset or a timeout, and (when asked) decodes response header blocks with hpack.

Every loop is bounded by a count and a deadline; every socket has a timeout.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import hpack
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from tests.e2e.topology import ALLOWED_APP, SERVICE

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
FRAME_NAMES = {
    DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM", SETTINGS: "SETTINGS",
    PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY", WINDOW_UPDATE: "WINDOW_UPDATE",
    CONTINUATION: "CONTINUATION",
}
# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xB
ERROR_NAMES = {
    0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
    0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM", 0x8: "CANCEL",
    0x9: "COMPRESSION_ERROR", 0xA: "CONNECT_ERROR", 0xB: "ENHANCE_YOUR_CALM", 0xC: "INADEQUATE_SECURITY",
    0xD: "HTTP_1_1_REQUIRED",
}
# settings
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
MAX_WINDOW = 2**31 - 1

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_HUFFMAN_BITS = [format(REQUEST_CODES[b], f"0{REQUEST_CODES_LENGTH[b]}b") for b in range(256)]


def huffman_encode(data: bytes) -> bytes:
    """HPACK Huffman coding (RFC 7541 appendix B), fast enough for 48 KB values (hpack's own encoder takes
    ~160 ms for one); checked against hpack's in the baseline tests."""
    bits = "".join([_HUFFMAN_BITS[b] for b in data])
    bits += "1" * (-len(bits) % 8)  # padding: the most significant bits of EOS
    if not bits:
        return b""
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def error_name(code: int | None) -> str:
    return "none" if code is None else ERROR_NAMES.get(code, hex(code))


# --- building frames ------------------------------------------------------------------------------------


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id & 0x7FFFFFFF) + payload


def settings_frame(values: dict[int, int] | None = None, ack: bool = False) -> bytes:
    payload = b"".join(struct.pack(">HI", k, v) for k, v in (values or {}).items())
    return frame(SETTINGS, ACK if ack else 0, 0, payload)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def rst_stream(stream_id: int, code: int = CANCEL) -> bytes:
    return frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))


def ping(payload: bytes = b"\0" * 8, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, payload)


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_string(data: bytes, huffman: bool = False) -> bytes:
    if huffman:
        coded = huffman_encode(data)
        return _hpack_int(len(coded), 7, 0x80) + coded
    return _hpack_int(len(data), 7) + data


def literal(name: bytes, value: bytes, huffman: bool = False) -> bytes:
    """A literal header field without indexing, new name: touches no dynamic table on either side, so any
    number of header blocks can be built independently (and out of order)."""
    return b"\x00" + hpack_string(name) + hpack_string(value, huffman)


def header_block(headers: Iterable[tuple[bytes | str, bytes | str]], huffman_values: bool = False) -> bytes:
    return b"".join(
        literal(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v, huffman_values)
        for k, v in headers
    )


def grpc_request_headers(
    method: str, authority: str, *, scheme: str = "http", attack_id: str | None = None, peer: bool = False,
    extra: Iterable[tuple[str, str | bytes]] = (), timeout: str | None = "5S",
) -> list[tuple[str, str | bytes]]:
    """A gRPC request head for the demo service. Local callers name their app in tri-consumer-appname; a
    peer gateway (`peer=True`) in x-interlink-caller-app (what GW-B stamps)."""
    headers: list[tuple[str, str | bytes]] = [
        (":method", "POST"),
        (":scheme", scheme),
        (":path", f"/{SERVICE}/{method}"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("x-interlink-caller-app" if peer else "tri-consumer-appname", ALLOWED_APP),
    ]
    if timeout is not None:
        headers.append(("grpc-timeout", timeout))
    if attack_id is not None:
        headers.append(("x-attack-id", attack_id))
    headers.extend(extra)
    return headers


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def echo_message(text: bytes) -> bytes:
    """A length-prefixed gRPC message holding EchoRequest{message: text} (also AddRequest-free SleepRequest
    callers use `sleep_message`)."""
    body = b"\x0a" + _varint(len(text)) + text if text else b""
    return b"\x00" + struct.pack(">I", len(body)) + body


def sleep_message(ms: int) -> bytes:
    body = b"\x08" + _varint(ms) if ms else b""
    return b"\x00" + struct.pack(">I", len(body)) + body


def request_frames(
    stream_id: int, headers: list[tuple[str, str | bytes]], message: bytes | None, *, end_stream: bool = True,
    huffman_values: bool = False, max_frame: int = 16384,
) -> bytes:
    """HEADERS (+ CONTINUATION when the block exceeds `max_frame`) and, when `message` is given, DATA frames
    carrying it, END_STREAM on the last."""
    block = header_block(headers, huffman_values)
    head_end = END_STREAM if (message is None and end_stream) else 0
    pieces = [block[i : i + max_frame] for i in range(0, max(len(block), 1), max_frame)]
    out = []
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        if index == 0:
            out.append(frame(HEADERS, head_end | (END_HEADERS if last else 0), stream_id, piece))
        else:
            out.append(frame(CONTINUATION, END_HEADERS if last else 0, stream_id, piece))
    if message is not None:
        for offset in range(0, max(len(message), 1), max_frame):
            chunk = message[offset : offset + max_frame]
            last = offset + max_frame >= len(message)
            out.append(frame(DATA, END_STREAM if (last and end_stream) else 0, stream_id, chunk))
    return b"".join(out)


def client_preface(window: int | None = None, settings: dict[int, int] | None = None) -> bytes:
    """Preface + SETTINGS (push off; optionally our stream window) + optionally a connection WINDOW_UPDATE
    that brings our connection window to `window` too."""
    values = {SETTINGS_ENABLE_PUSH: 0, **(settings or {})}
    if window is not None:
        values[SETTINGS_INITIAL_WINDOW_SIZE] = min(window, MAX_WINDOW)
    out = PREFACE + settings_frame(values)
    if window is not None and window > 65535:
        out += window_update(0, min(window, MAX_WINDOW) - 65535)
    return out


# --- reading frames --------------------------------------------------------------------------------------


@dataclass
class StreamView:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data_bytes: int = 0
    ended: bool = False
    reset: int | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.trailers + self.headers:
            if key == name:
                return value
        return None

    @property
    def grpc_status(self) -> int | None:
        value = self.header(b"grpc-status")
        return None if value is None else int(value)


class FrameReader:
    """Incremental frame parser. Counts frames by type, remembers GOAWAY and RST_STREAM, and with
    `decode_headers` tracks each stream's response (headers, trailers, end) through an hpack decoder."""

    def __init__(self, decode_headers: bool = False) -> None:
        self.buffer = bytearray()
        self.counts: Counter[str] = Counter()
        self.goaway_code: int | None = None
        self.goaway_last_stream: int | None = None
        self.goaway_debug: bytes = b""
        self.goaway_at: float | None = None
        self.rst_codes: Counter[int] = Counter()
        self.server_settings: dict[int, int] = {}
        self.settings_seen = False
        self.decode_headers = decode_headers
        self.decoder = hpack.Decoder(max_header_list_size=16 * 1024 * 1024) if decode_headers else None
        if self.decoder is not None:
            self.decoder.max_allowed_table_size = 65536
        self.streams: dict[int, StreamView] = {}
        self._block: tuple[int, int, bytearray] | None = None  # (stream, flags of HEADERS, fragments)
        self.window_updates: Counter[int] = Counter()  # stream -> total increment
        self.bytes_in = 0
        self.pending_acks: list[bytes] = []  # ACKs a well-behaved client would send (SETTINGS, PING)

    def feed(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.buffer += data
        buf = self.buffer
        offset = 0
        while len(buf) - offset >= 9:
            length = int.from_bytes(buf[offset : offset + 3], "big")
            if len(buf) - offset < 9 + length:
                break
            kind, flags = buf[offset + 3], buf[offset + 4]
            stream_id = int.from_bytes(buf[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[offset + 9 : offset + 9 + length])
            offset += 9 + length
            self._frame(kind, flags, stream_id, payload)
        del buf[:offset]

    def stream(self, stream_id: int) -> StreamView:
        view = self.streams.get(stream_id)
        if view is None:
            view = self.streams[stream_id] = StreamView()
        return view

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        self.counts[FRAME_NAMES.get(kind, f"type{kind}")] += 1
        if kind == GOAWAY and len(payload) >= 8:
            if self.goaway_code is None or self.goaway_code == NO_ERROR:
                self.goaway_last_stream = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                self.goaway_code = int.from_bytes(payload[4:8], "big")
                self.goaway_debug = payload[8:200]
                self.goaway_at = time.monotonic()
        elif kind == RST_STREAM and len(payload) >= 4:
            code = int.from_bytes(payload[:4], "big")
            self.rst_codes[code] += 1
            if self.decode_headers:
                self.stream(stream_id).reset = code
        elif kind == SETTINGS:
            if not flags & ACK:
                self.settings_seen = True
                for i in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack_from(">HI", payload, i)
                    self.server_settings[key] = value
                self.pending_acks.append(settings_frame(ack=True))
        elif kind == PING:
            if not flags & ACK:
                self.pending_acks.append(ping(payload[:8], ack=True))
        elif kind == WINDOW_UPDATE and len(payload) >= 4:
            self.window_updates[stream_id] += int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
        elif kind == DATA:
            if self.decode_headers:
                view = self.stream(stream_id)
                view.data_bytes += len(payload)
                if flags & END_STREAM:
                    view.ended = True
        elif kind in (HEADERS, CONTINUATION) and self.decode_headers:
            if kind == HEADERS:
                if flags & PADDED:
                    pad = payload[0]
                    payload = payload[1 : len(payload) - pad]
                if flags & PRIORITY_FLAG:
                    payload = payload[5:]
                self._block = (stream_id, flags, bytearray(payload))
            elif self._block is not None:
                self._block[2].extend(payload)
            if flags & END_HEADERS and self._block is not None:
                sid, head_flags, block = self._block
                self._block = None
                assert self.decoder is not None
                headers = self.decoder.decode(bytes(block), raw=True)
                view = self.stream(sid)
                if view.headers:
                    view.trailers = list(headers)
                else:
                    view.headers = list(headers)
                if head_flags & END_STREAM:
                    view.ended = True

    def take_acks(self) -> bytes:
        acks, self.pending_acks = b"".join(self.pending_acks), []
        return acks


# --- connections -----------------------------------------------------------------------------------------


def classify(exc: BaseException) -> tuple[str, str]:
    """How a socket error ends a connection: a TLS EOF without close_notify is the peer closing ("eof"), a
    TCP reset or broken pipe "reset", anything else "error"."""
    detail = f"{type(exc).__name__}: {exc}"[:200]
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "eof", detail
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset", detail
    if isinstance(exc, ssl.SSLError) and "EOF" in str(exc).upper():
        return "eof", detail
    return "error", detail


@dataclass
class ConnEnd:
    """How an attacker's connection ended, as the attacker saw it."""

    how: str  # "eof" (FIN), "reset" (RST / EPIPE), "timeout" (still open at the deadline), "error"
    opened: float  # time.monotonic() at connect
    ended: float | None  # time.monotonic() when the end was seen (None: timeout)
    goaway_code: int | None
    goaway_at: float | None
    rst_codes: dict[int, int]
    counts: dict[str, int]
    detail: str = ""

    @property
    def lifetime(self) -> float | None:
        return None if self.ended is None else self.ended - self.opened

    @property
    def closed(self) -> bool:
        return self.how in ("eof", "reset")

    def __str__(self) -> str:
        life = "open" if self.lifetime is None else f"{self.lifetime:.2f}s"
        goaway = error_name(self.goaway_code)
        return f"{self.how} after {life}, GOAWAY {goaway}, RST {dict(self.rst_codes)} {self.detail}"


class Conn:
    """One attacker connection: a socket, a FrameReader (for h2) and how it ended."""

    def __init__(
        self, sock: socket.socket, *, h2: bool = True, decode_headers: bool = False, label: str = ""
    ) -> None:
        self.sock = sock
        self.h2 = h2
        self.reader = FrameReader(decode_headers) if h2 else None
        self.label = label
        self.opened = time.monotonic()
        self.ended_at: float | None = None
        self.how: str | None = None
        self.detail = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.local_port = sock.getsockname()[1]
        self.last_progress = self.opened
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self.how is None

    def mark_end(self, how: str, detail: str = "") -> None:
        with self._lock:
            if self.how is None:
                self.how = how
                self.detail = detail
                self.ended_at = time.monotonic()

    def on_data(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.reader is not None:
            self.reader.feed(data)

    def read_once(self, timeout: float) -> bool:
        """Read what is there (waiting up to `timeout`); False once the connection has ended."""
        if not self.open:
            return False
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(262144)
        except (TimeoutError, socket.timeout, ssl.SSLWantReadError):
            return True
        except OSError as exc:  # ssl.SSLError is an OSError
            self.mark_end(*classify(exc))
            return False
        if not data:
            self.mark_end("eof")
            return False
        self.on_data(data)
        return True

    def salvage(self) -> None:
        """After a failed send: read what the peer sent before it went away (a GOAWAY is usually there),
        so that the end is recorded with it."""
        if not self.open:
            return
        try:
            self.sock.settimeout(0.2)
        except OSError:
            return
        for _ in range(64):
            try:
                data = self.sock.recv(262144)
            except OSError:
                return
            if not data:
                return
            self.on_data(data)

    def send(self, data: bytes, timeout: float = 5.0) -> bool:
        """sendall with a timeout; False (and the connection marked ended) when the peer is gone."""
        if not self.open:
            return False
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(data)
            self.bytes_out += len(data)
            return True
        except (TimeoutError, socket.timeout):
            self.detail = "send timed out"
            return False
        except OSError as exc:
            self.salvage()
            self.mark_end(*classify(exc))
            return False

    def send_acks(self) -> None:
        if self.reader is not None:
            acks = self.reader.take_acks()
            if acks:
                self.send(acks)

    def handshake(self, timeout: float = 5.0) -> bool:
        """Read until the server's SETTINGS arrived, ACK them. False if it never came."""
        assert self.reader is not None
        deadline = time.monotonic() + timeout
        while not self.reader.settings_seen and time.monotonic() < deadline:
            if not self.read_once(min(0.2, max(0.01, deadline - time.monotonic()))):
                return False
        self.send_acks()
        return self.reader.settings_seen

    def pump_until(self, condition: Callable[[], bool], timeout: float, ack: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if not self.read_once(min(0.2, remaining)):
                return condition()
            if ack:
                self.send_acks()
        return True

    def result(self) -> ConnEnd:
        reader = self.reader
        return ConnEnd(
            how=self.how or "timeout",
            opened=self.opened,
            ended=self.ended_at,
            goaway_code=reader.goaway_code if reader else None,
            goaway_at=reader.goaway_at if reader else None,
            rst_codes=dict(reader.rst_codes) if reader else {},
            counts=dict(reader.counts) if reader else {},
            detail=self.detail,
        )

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0), as a client that vanishes does."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        self.mark_end("closed-by-us")


def connect(
    port: int,
    *,
    host: str = "127.0.0.1",
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
    sni: str | None = None,
    rcvbuf: int | None = None,
    h2: bool = True,
    decode_headers: bool = False,
    label: str = "",
) -> Conn:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=sni)
    except BaseException:
        sock.close()
        raise
    return Conn(sock, h2=h2, decode_headers=decode_headers, label=label)


def open_h2(
    port: int, *, window: int | None = MAX_WINDOW, handshake: bool = True, decode_headers: bool = False, **kwargs
) -> Conn:
    """A connection that has sent the preface + SETTINGS (+ a big receive window) and, with `handshake`,
    received and ACKed the server's SETTINGS."""
    conn = connect(port, decode_headers=decode_headers, **kwargs)
    conn.send(client_preface(window))
    if handshake and not conn.handshake():
        raise ConnectionError(f"no SETTINGS from the server on port {port}: {conn.result()}")
    return conn


# --- watching many connections ---------------------------------------------------------------------------


class Watcher:
    """Reads every registered connection in one thread (never writes), so that each one's end is seen when
    it happens: EOF, RST, or still open at the deadline. Frames are parsed (GOAWAY, RST_STREAM)."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._conns: list[Conn] = []
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="h2-watcher", daemon=True)
        self._thread.start()

    def watch(self, conn: Conn) -> Conn:
        with self._lock:
            self._conns.append(conn)
            try:
                self._selector.register(conn.sock, selectors.EVENT_READ, conn)
            except (ValueError, KeyError, OSError):
                conn.mark_end("error", "could not watch")
        os.write(self._wake_w, b"x")
        return conn

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                conn = key.data
                if conn is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                    continue
                try:
                    data = conn.sock.recv(262144)
                except (BlockingIOError, ssl.SSLWantReadError, TimeoutError, socket.timeout):
                    continue
                except OSError as exc:
                    conn.mark_end(*classify(exc))
                    data = None
                if data:
                    try:
                        conn.on_data(data)
                        if isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                            _read_available(conn)
                    except Exception as exc:  # noqa: BLE001 - a parse failure ends the watch of this conn
                        conn.mark_end("error", f"parse: {type(exc).__name__}: {exc}")
                    else:
                        continue
                elif data is not None:
                    conn.mark_end("eof")
                with self._lock:
                    try:
                        self._selector.unregister(conn.sock)
                    except (KeyError, ValueError, OSError):
                        pass

    def conns(self) -> list[Conn]:
        with self._lock:
            return list(self._conns)

    def open_count(self) -> int:
        return sum(1 for c in self.conns() if c.open)

    def wait_all_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_count() == 0:
                return True
            time.sleep(0.05)
        return self.open_count() == 0

    def close(self) -> None:
        """Stop watching and close every connection still open (the attacker leaves). Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(3)
        for conn in self.conns():
            if conn.open:
                conn.close()
            else:
                try:
                    conn.sock.close()
                except OSError:
                    pass
        try:
            self._selector.close()
        finally:
            os.close(self._wake_r)
            os.close(self._wake_w)


# --- one connection driven by one thread: send while reading -----------------------------------------


def _read_available(conn: Conn) -> None:
    sock = conn.sock
    while conn.open:
        try:
            data = sock.recv(262144)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, TimeoutError, socket.timeout):
            return
        except OSError as exc:
            conn.mark_end(*classify(exc))
            return
        if not data:
            conn.mark_end("eof")
            return
        conn.on_data(data)
        if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return


def drive(
    conn: Conn,
    chunks: Iterator[bytes],
    stop: threading.Event,
    deadline: float,
    *,
    ack: bool = False,
    stop_on_goaway: bool = False,
    after_chunk: Callable[[], None] | None = None,
    read: bool = True,
) -> int:
    """Send `chunks` until `stop`, the deadline, their end or the connection's end, reading (and parsing)
    whatever the server sends meanwhile, from this one thread (TLS sockets must not be read and written
    from two threads). Partial sends are finished before the next chunk, so frames stay aligned. With `ack`,
    SETTINGS and PINGs from the server are ACKed between chunks; with `read=False` nothing is read (a caller
    that never reads). `conn.last_progress` is when the socket last took bytes. Returns the bytes sent."""
    sock = conn.sock
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, (selectors.EVENT_READ if read else 0) | selectors.EVENT_WRITE)
    sent = 0
    current: memoryview | None = None
    exhausted = False
    try:
        while conn.open and not stop.is_set() and time.monotonic() < deadline:
            if stop_on_goaway and conn.reader is not None and conn.reader.goaway_code is not None:
                break
            if current is None and not exhausted:
                extra = conn.reader.take_acks() if (ack and conn.reader is not None) else b""
                nxt = next(chunks, None)
                if nxt is None:
                    exhausted = True
                    if extra:
                        current = memoryview(extra)
                    else:
                        break
                else:
                    current = memoryview(extra + nxt if extra else nxt)
            events = selector.select(0.1)
            for _key, mask in events:
                if mask & selectors.EVENT_READ:
                    _read_available(conn)
                if mask & selectors.EVENT_WRITE and current is not None and conn.open:
                    try:
                        n = sock.send(current)
                    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        n = 0
                    except OSError as exc:
                        _read_available(conn)  # what came before the end (a GOAWAY) is read first
                        conn.salvage()
                        how, detail = classify(exc)
                        conn.mark_end(how, f"while sending: {detail}")
                        break
                    current = current[n:]
                    sent += n
                    conn.bytes_out += n
                    if n:
                        conn.last_progress = time.monotonic()
                    if not current:
                        current = None
                        if after_chunk is not None:
                            after_chunk()
            if read and isinstance(sock, ssl.SSLSocket) and sock.pending():
                _read_available(conn)
    finally:
        selector.close()
        if conn.open:
            sock.settimeout(5.0)
    return sent


def drain(conn: Conn, timeout: float, *, ack: bool = True) -> ConnEnd:
    """Keep reading until the server ends the connection or `timeout` passes; how it ended."""
    deadline = time.monotonic() + timeout
    while conn.open and time.monotonic() < deadline:
        if not conn.read_once(min(0.2, max(0.01, deadline - time.monotonic()))):
            break
        if ack:
            conn.send_acks()
    return conn.result()


def repeat(chunk: bytes, count: int | None = None) -> Iterator[bytes]:
    n = 0
    while count is None or n < count:
        yield chunk
        n += 1
