"""Differential tests: our H2Connection (interlink.wire.h2conn) against the h2 package, the conformance oracle.

Both are fed the same bytes, frame by frame: hypothesis builds conversations from a small grammar (the
remote's preface and SETTINGS with valid and invalid values, HEADERS with and without END_STREAM,
END_HEADERS, PADDED and PRIORITY, CONTINUATION, DATA with and without padding and END_STREAM,
WINDOW_UPDATE, RST_STREAM, PING, PRIORITY, GOAWAY, PUSH_PROMISE, unknown types, frames on idle and closed
streams, wrong lengths, HPACK garbage) mixed with what the application does (respond, send data, reset,
open requests), on the server side and on the client side. After every frame we compare

  (a) whether the connection is refused, and with which error code;
  (b) the application events, mapped to a common form (heads, data, resets, PING ACKs, GOAWAY);
  (c) what each queues for the remote: SETTINGS ACKs, PING ACKs, RST_STREAMs (WINDOW_UPDATEs, GOAWAY and
      the HPACK bytes of our own heads are left out: their timing and encoding are each side's choice);

and after every step the stream states and flow-control windows.

Where the two differ on purpose, or h2 is wrong or stricter than RFC 9113, the difference is a named rule
(`DIFFERENCES`), pinned by its own test below (`test_pinned_*`) that says who is right and why; the
generic comparison stops (or, where the states stay the same, goes on) only at a frame such a rule explains.
"""

from __future__ import annotations

import inspect
import re
import struct
from collections import Counter
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from h2.settings import SettingCodes, Settings
from h2.stream import StreamState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interlink.wire.h2conn import (
    COMPRESSION_ERROR, DATA, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, GOAWAY, PING_ACK, PROTOCOL_ERROR, REFUSED_STREAM,
    REQUEST, RESET, RESPONSE, STREAM_CLOSED, TRAILERS, H2Connection, H2ConnectionError,
)
from interlink.wire.h2frames import PREFACE, FloodBudget
from interlink.wire.hpack import HeaderBlockEncoder

T_DATA, T_HEADERS, T_PRIORITY, T_RST, T_SETTINGS, T_PUSH, T_PING, T_GOAWAY, T_WINDOW, T_CONT = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/m"), (b":authority", b"x")]
RESP = [(b":status", b"200")]
TRAIL = [(b"grpc-status", b"0")]

# Both sides advertise the same: what h2 does by default where we have a choice, and HEADER_TABLE_SIZE 0
# and ENABLE_PUSH 0 as we always do. Our connection window of 1 MiB is given to h2 too.
LIMITS = dict(max_concurrent_streams=100, initial_window=65_535, connection_window=1 << 20, max_frame_size=16_384,
              max_header_list=65_536)


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((frame_type, flags)) + stream_id.to_bytes(4, "big") + payload


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def setting(key: int, value: int) -> bytes:
    return struct.pack(">HI", key, value)


def parse(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        out.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF,
                    data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


def answers(data: bytes) -> list[tuple]:
    """What a side queued that the comparison looks at: SETTINGS ACK, PING ACK, RST_STREAM."""
    kept = []
    for frame_type, flags, stream_id, payload in parse(data):
        if frame_type == T_SETTINGS and flags & ACK:
            kept.append(("settings-ack",))
        elif frame_type == T_PING and flags & ACK:
            kept.append(("ping-ack", payload))
        elif frame_type == T_RST:
            kept.append(("rst", stream_id, int.from_bytes(payload, "big")))
    return kept


def our_events(events: list[tuple]) -> list[tuple]:
    common = []
    for event in events:
        kind = event[0]
        if kind in (REQUEST, RESPONSE, TRAILERS):
            common.append(("head", {REQUEST: "request", RESPONSE: "response", TRAILERS: "trailers"}[kind],
                           event[1], [tuple(h) for h in event[2]], event[3]))
        elif kind == DATA:
            common.append(("data", event[1], bytes(event[2]), event[3], event[4]))
        elif kind == RESET:
            common.append(("reset", event[1], event[2], event[3]))
        elif kind == PING_ACK:
            common.append(("ping-ack", bytes(event[1])))
        elif kind == GOAWAY:
            common.append(("goaway", event[1], event[2], bytes(event[3])))
    return common


def h2_events(events: list) -> list[tuple]:
    common = []
    heads = {h2.events.RequestReceived: "request", h2.events.ResponseReceived: "response",
             h2.events.TrailersReceived: "trailers"}
    for event in events:
        kind = type(event)
        if kind in heads:
            common.append(("head", heads[kind], event.stream_id, [(bytes(n), bytes(v)) for n, v in event.headers],
                           event.stream_ended is not None))
        elif kind is h2.events.DataReceived:
            common.append(("data", event.stream_id, bytes(event.data), event.flow_controlled_length,
                           event.stream_ended is not None))
        elif kind is h2.events.StreamReset:
            common.append(("reset", event.stream_id, int(event.error_code), event.remote_reset))
        elif kind is h2.events.PingAckReceived:
            common.append(("ping-ack", bytes(event.ping_data)))
        elif kind is h2.events.ConnectionTerminated:
            common.append(("goaway", int(event.error_code), event.last_stream_id, bytes(event.additional_data or b"")))
        # InformationalResponseReceived (we skip 1xx too), StreamEnded (folded into the head or data above),
        # WindowUpdated, RemoteSettingsChanged, SettingsAcknowledged, PingReceived, PriorityUpdated,
        # UnknownFrameReceived: bookkeeping that both do and that shows in the state comparison instead.
    return common


@dataclass
class Outcome:
    error: int | None  # the connection error code, None when the connection goes on
    events: list = field(default_factory=list)
    answers: list = field(default_factory=list)

    def __str__(self) -> str:
        return f"error={self.error} events={self.events} answers={self.answers}"


@dataclass(repr=False)
class Step:
    kind: str  # "frame" or an application action: "respond", "send", "reset", "open"
    data: bytes = b""
    frame_type: int = -1
    flags: int = 0
    stream_id: int = 0
    args: tuple = ()
    note: str = ""

    def __repr__(self) -> str:
        if self.kind != "frame":
            return f"<{self.kind} {self.stream_id} {self.args}>"
        data = self.data.hex() if len(self.data) <= 64 else f"{self.data[:64].hex()}... ({len(self.data)} bytes)"
        return f"<frame type={self.frame_type} flags={self.flags:#x} stream={self.stream_id} {self.note} {data}>"


def frame_step(frame_type: int, flags: int, stream_id: int, payload: bytes = b"", note: str = "") -> Step:
    return Step("frame", frame(frame_type, flags, stream_id, payload), frame_type, flags, stream_id, note=note)


class Pair:
    """Our connection and h2's, set up alike, fed alike."""

    def __init__(self, client_side: bool, *, request_end_stream: bool | None = None, **limits) -> None:
        limits = {**LIMITS, **limits}
        self.client_side = client_side
        self.ours = H2Connection(client_side=client_side, budget=FloodBudget(10**9, 0, 0.0), **limits)
        self.ours.initiate()
        self.ours.take_output()
        config = h2.config.H2Configuration(
            client_side=client_side, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False, validate_outbound_headers=False, normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        local = Settings(client=client_side, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: limits["max_concurrent_streams"],
            SettingCodes.MAX_HEADER_LIST_SIZE: limits["max_header_list"], SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.INITIAL_WINDOW_SIZE: 65_535, SettingCodes.MAX_FRAME_SIZE: limits["max_frame_size"],
        })
        # pending until the remote acknowledges, as ours are
        local[SettingCodes.HEADER_TABLE_SIZE] = 0
        if limits["initial_window"] != 65_535:
            assert limits["initial_window"] < 65_535  # until acknowledged we allow the larger of the two, h2 the old one
            local[SettingCodes.INITIAL_WINDOW_SIZE] = limits["initial_window"]
        self.h2.local_settings = local
        self.h2.max_inbound_frame_size = limits["max_frame_size"]
        self.h2.decoder.max_header_list_size = limits["max_header_list"]
        self.h2.initiate_connection()
        if limits["connection_window"] > 65_535:
            self.h2.increment_flow_control_window(limits["connection_window"] - 65_535)
        self.h2.clear_outbound_data_buffer()
        self.dead = False
        self.given_back: list[int] = []  # connection WINDOW_UPDATEs we sent in the last batch
        self.heads_sent: dict[int, int] = {}
        if client_side and request_end_stream is not None:
            self.act(Step("open", args=(request_end_stream,)))

    # --- feeding -----------------------------------------------------------------------------------------

    def feed_ours(self, data: bytes) -> Outcome:
        try:
            events = self.ours.receive(data, 0.0)
        except H2ConnectionError as exc:
            self.ours.take_output()
            return Outcome(exc.error_code)
        out = self.ours.take_output()
        self.given_back += [int.from_bytes(p, "big") for t, _, s, p in parse(out) if t == T_WINDOW and s == 0]
        return Outcome(None, our_events(events), answers(out))

    def feed_h2(self, data: bytes) -> Outcome:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.h2.clear_outbound_data_buffer()
            return Outcome(int(exc.error_code))
        return Outcome(None, h2_events(events), answers(self.h2.data_to_send()))

    def feed(self, data: bytes) -> tuple[Outcome, Outcome]:
        ours, theirs = self.feed_ours(data), self.feed_h2(data)
        if theirs.error is None:
            # we give the connection window back as bytes arrive; h2 leaves it to the application: do the same
            for increment in self.given_back:
                self.h2.increment_flow_control_window(increment)
            self.h2.clear_outbound_data_buffer()
        self.given_back.clear()
        return ours, theirs

    def snapshot(self, stream_id: int) -> dict:
        ours = self.ours
        return {
            "resets": set(ours._resets), "streams": {s: (st.local_closed, st.remote_closed) for s, st in ours.streams.items()},
            "send_windows": [st.send_window for st in ours.streams.values()], "initial": ours.remote_initial_window,
            "goaway": ours.goaway_received, "highest": ours.highest_remote, "next_local": ours.next_local,
            "block_stream": ours._block_stream, "idle": bool(stream_id) and ours._idle(stream_id),
            "table": ours.decoder.header_table_size, "table_limit": ours.decoder.max_allowed_table_size,
        }

    # --- the application -------------------------------------------------------------------------------

    def sendable(self) -> list[int]:
        return sorted(s for s, stream in self.ours.streams.items() if not stream.local_closed)

    def act(self, step: Step) -> str:
        """Do the same on both sides; returns what was done ("" when the action did not apply)."""
        ours, theirs = self.ours, self.h2
        if ours.goaway_received:
            return ""  # h2 sends nothing after a GOAWAY (and refuses what comes): see the pinned difference
        if step.kind == "open":
            (end_stream,) = step.args
            if not self.client_side or theirs.open_outbound_streams >= theirs.remote_settings.max_concurrent_streams:
                return ""
            stream_id = ours.open_stream(REQ, end_stream=end_stream)
            assert stream_id == theirs.get_next_available_stream_id()
            theirs.send_headers(stream_id, REQ, end_stream=end_stream)
        else:
            sendable = self.sendable()
            if not sendable:
                return ""
            stream_id = sendable[step.stream_id % len(sendable)]
            if step.kind == "respond":
                heads = self.heads_sent.get(stream_id, 0)
                if self.client_side or heads == 2:
                    return ""
                end_stream = step.args[0] or heads == 1  # h2 wants trailers to end the stream
                self.heads_sent[stream_id] = heads + 1
                ours.send_headers(stream_id, RESP if heads == 0 else TRAIL, end_stream=end_stream)
                theirs.send_headers(stream_id, RESP if heads == 0 else TRAIL, end_stream=end_stream)
            elif step.kind == "send":
                size, end_stream = step.args
                size = min(size, ours.window(stream_id))
                ours.send_data(stream_id, b"s" * size, end_stream=end_stream)
                chunks = [b"s" * size] if not size else [b"s" * min(theirs.max_outbound_frame_size, size - start)
                                                        for start in range(0, size, theirs.max_outbound_frame_size)]
                for index, chunk in enumerate(chunks):
                    theirs.send_data(stream_id, chunk, end_stream=end_stream and index == len(chunks) - 1)
            elif step.kind == "reset":
                (code,) = step.args
                assert ours.reset(stream_id, code)
                theirs.reset_stream(stream_id, code)
        ours.take_output()
        theirs.data_to_send()
        return f"{step.kind} {stream_id}"

    def compare_state(self) -> None:
        ours, theirs = self.ours, self.h2
        if ours.goaway_received:
            return  # we close our streams above its last-stream-id, h2 leaves that to the application (pinned)
        states = {StreamState.OPEN: (False, False), StreamState.HALF_CLOSED_LOCAL: (True, False),
                  StreamState.HALF_CLOSED_REMOTE: (False, True)}
        their_streams = {s: states[stream.state_machine.state] for s, stream in theirs.streams.items() if not stream.closed}
        assert {s: (st.local_closed, st.remote_closed) for s, st in ours.streams.items()} == their_streams
        assert ours.send_window == theirs.outbound_flow_control_window
        assert ours._recv_window == theirs.inbound_flow_control_window
        assert ours.remote_max_frame == theirs.max_outbound_frame_size
        assert ours.remote_initial_window == theirs.remote_settings.initial_window_size
        for stream_id, stream in ours.streams.items():
            if not stream.local_closed:
                assert ours.window(stream_id) == max(0, theirs.local_flow_control_window(stream_id)), stream_id
            if not stream.remote_closed:
                assert stream.recv_window == theirs.streams[stream_id].inbound_flow_control_window, stream_id


# --- the differences -------------------------------------------------------------------------------------

def _completes_block(step: Step, before: dict) -> bool:
    if step.frame_type == T_HEADERS:
        return bool(step.flags & END_HEADERS)
    return step.frame_type == T_CONT and step.flags & END_HEADERS and before["block_stream"] == step.stream_id


def _windows_fit(step: Step, before: dict) -> bool:
    """Whether the INITIAL_WINDOW_SIZE values of a SETTINGS frame keep every open stream's window in range."""
    payload, initial, largest = step.data[9:], before["initial"], max(before["send_windows"], default=0)
    for offset in range(0, len(payload) - len(payload) % 6, 6):
        if int.from_bytes(payload[offset : offset + 2], "big") == 4:
            value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            largest += value - initial
            initial = value
            if largest > 0x7FFFFFFF:
                return False
    return True


def _only_rst(outcome: Outcome, stream_id: int, code: int) -> bool:
    return outcome.error is None and not outcome.events and outcome.answers in ([], [("rst", stream_id, code)])


STREAM_ERRORS_H2_ESCALATES = {
    (T_DATA, PROTOCOL_ERROR),  # DATA before the response head: a malformed response (RFC 9113 8.1.1)
    (T_DATA, FLOW_CONTROL_ERROR),  # beyond the stream's window: "a stream error or connection error" (6.9)
    (T_HEADERS, PROTOCOL_ERROR), (T_CONT, PROTOCOL_ERROR),  # malformed (8.1.1: 1xx with END_STREAM, trailers
    # without END_STREAM, 1xx after the final head), or a self-dependent stream (5.3.1)
    (T_PRIORITY, FRAME_SIZE_ERROR),  # RFC 9113 6.3: a PRIORITY frame of other than 5 bytes is a stream error
    (T_PRIORITY, PROTOCOL_ERROR),  # 5.3.1: self-dependency is a stream error
    (T_WINDOW, PROTOCOL_ERROR),  # 6.9: an increment of 0 on a stream is a stream error
}


def difference(step: Step, before: dict, ours: Outcome, theirs: Outcome, client_side: bool) -> tuple[str, bool] | None:
    """(name, whether the comparison may go on) of a known difference that explains `ours` != `theirs`."""
    sid, ftype = step.stream_id, step.frame_type
    if ftype == T_HEADERS and theirs.error == PROTOCOL_ERROR and ours.error is None and step.flags & PADDED:
        payload = step.data[9:]
        if payload and payload[0] == len(payload) - 1:
            return "h2-refuses-padding-that-leaves-an-empty-fragment", False
    if (ftype == T_HEADERS and ours.error == PROTOCOL_ERROR and theirs.error in (None, STREAM_CLOSED)
            and step.flags & PADDED and step.flags & PRIORITY_FLAG):
        # (STREAM_CLOSED: on a closed stream too, where h2 sees the stream's state first and we the frame's shape)
        return "h2-lets-padding-eat-the-priority-fields", False
    if ftype == T_WINDOW and theirs.error == PROTOCOL_ERROR and len(step.data) == 13 and step.data[9] & 0x80:
        return "h2-refuses-the-reserved-bit-of-a-window-increment", False
    if ftype == T_SETTINGS and "duplicate" in step.note and ours.error is not None and theirs.error != ours.error:
        return "h2-keeps-only-the-last-value-of-a-repeated-setting", False
    if ftype == T_SETTINGS and "connect-protocol" in step.note and theirs.error == PROTOCOL_ERROR and ours.error is None:
        return "h2-refuses-an-unknown-setting-value", False
    if before["block_stream"] and ftype != T_CONT and ours.error == PROTOCOL_ERROR and theirs.error is not None:
        # two faults in one frame: h2 parses the frame before it sees the interruption, we the other way round
        return "a-header-block-interrupted-by-a-malformed-frame", False
    if (_completes_block(step, before) and theirs.error == PROTOCOL_ERROR and ours.error is None
            and before["table"] > before["table_limit"]):
        return "h2-refuses-a-peer-that-keeps-its-table", False
    if before["goaway"] and theirs.error == PROTOCOL_ERROR:
        return "h2-refuses-every-frame-after-goaway", False
    if sid and sid in before["resets"] and sid not in before["streams"]:
        if ours == Outcome(None) and _only_rst(theirs, sid, STREAM_CLOSED):
            return "frames-on-a-stream-we-reset-are-ignored", True
        if ours == Outcome(None) and theirs.error is not None:
            return "frames-on-a-stream-we-reset-are-ignored-where-h2-closes-the-connection", False
    if ftype == T_SETTINGS and theirs.error == FLOW_CONTROL_ERROR and ours.error is None and _windows_fit(step, before):
        # 6.9.2: a new SETTINGS_INITIAL_WINDOW_SIZE must not push "any flow-control window" past 2^31-1; h2
        # still counts the windows of closed streams (ours reset, or ended both ways) that it keeps until they
        # are cleaned up; we do not: those streams never carry DATA again. The open ones fit (checked here).
        return "h2-counts-the-windows-of-closed-streams", False
    if ftype == T_RST and len(step.data) == 13 and before["idle"] and ours.error == PROTOCOL_ERROR:
        if theirs.error is None:
            return "h2-ignores-rst-stream-on-an-idle-stream", False
    if ftype in (T_HEADERS, T_CONT) and ours.error == COMPRESSION_ERROR and theirs.error == PROTOCOL_ERROR:
        return "h2-answers-hpack-errors-with-protocol-error", False
    if ours.error is None and theirs.error is not None and (ftype, theirs.error) in STREAM_ERRORS_H2_ESCALATES:
        if ("rst", sid, theirs.error) in ours.answers or (ftype == T_CONT and any(a[0] == "rst" for a in ours.answers)):
            return f"h2-closes-the-connection-on-a-stream-error-{ftype}-{theirs.error}", False
    if ftype == T_WINDOW and sid and ours == Outcome(None) and theirs.error == PROTOCOL_ERROR and sid not in before["streams"]:
        return "window-update-0-on-a-closed-stream-is-ignored", False
    if _completes_block(step, before) and ours.error == STREAM_CLOSED:
        if theirs.error is None and any(a == ("rst", sid, STREAM_CLOSED) for a in theirs.answers):
            return "headers-on-a-stream-the-remote-reset-close-the-connection", False
        if theirs.error == PROTOCOL_ERROR:
            return "headers-on-an-implicitly-closed-stream-are-stream-closed", False
    if (client_side and _completes_block(step, before) and sid % 2 == 0 and ours.error == PROTOCOL_ERROR
            and theirs.error is None):
        return "h2-client-takes-headers-on-a-server-stream-as-a-request", False
    if (_completes_block(step, before) and ("rst", sid, STREAM_CLOSED) in ours.answers and ours.error is None
            and theirs.error == PROTOCOL_ERROR and before["streams"].get(sid, (0, 0))[1]):
        return "h2-closes-the-connection-on-a-1xx-head-in-half-closed-remote", False
    if ftype == T_CONT and not before["block_stream"] and ours.error == PROTOCOL_ERROR:
        return "continuation-without-a-header-block-is-protocol-error", False
    if ftype == T_SETTINGS and step.flags & ACK and ours.error == FRAME_SIZE_ERROR and theirs.error == PROTOCOL_ERROR:
        return "h2-answers-a-settings-ack-with-payload-with-protocol-error", False
    if ftype == T_PUSH and ours.error == PROTOCOL_ERROR and theirs.error in (None, FRAME_SIZE_ERROR):
        return "push-promise-is-refused-at-once", False
    if (client_side and _completes_block(step, before) and ours.error is None and theirs.error == PROTOCOL_ERROR
            and any(e[:2] == ("head", "trailers") for e in ours.events)):
        return "h2-refuses-1xx-after-the-final-response", False
    return None


SEEN: Counter = Counter()  # the differences met by the generic comparison (see test_the_grammar_reaches_*)


def run(client_side: bool, steps: list[Step], request_end_stream: bool = True) -> Pair:
    pair = Pair(client_side, request_end_stream=request_end_stream)
    pair.compare_state()
    for step in steps:
        if step.kind != "frame":
            pair.act(step)
            pair.compare_state()
            continue
        before = pair.snapshot(step.stream_id)
        ours, theirs = pair.feed(step.data)
        if ours != theirs:
            known = difference(step, before, ours, theirs, client_side)
            assert known is not None, f"{step!r}\n ours: {ours}\n h2:   {theirs}\n after {steps[: steps.index(step)]}"
            SEEN[known[0]] += 1
            if not known[1]:
                pair.dead = True
                return pair
        elif ours.error is not None:
            SEEN[f"both-refuse-type-{step.frame_type}-code-{ours.error}"] += 1
            pair.dead = True
            return pair
        pair.compare_state()
    SEEN["compared-to-the-end"] += 1
    return pair


# --- the grammar -------------------------------------------------------------------------------------------

VALID_SETTINGS = [
    (1, 0), (1, 4096), (1, 0xFFFFFFFF),  # HEADER_TABLE_SIZE
    (2, 0),  # ENABLE_PUSH (1 only from a client: see INVALID_SETTINGS)
    (3, 0), (3, 1), (3, 100), (3, 0xFFFFFFFF),  # MAX_CONCURRENT_STREAMS
    (4, 0), (4, 1), (4, 1000), (4, 65_535), (4, 1 << 20), (4, 0x7FFFFFFF),  # INITIAL_WINDOW_SIZE
    (5, 16_384), (5, 65_536), (5, 0xFFFFFF),  # MAX_FRAME_SIZE
    (6, 0), (6, 100), (6, 0xFFFFFFFF),  # MAX_HEADER_LIST_SIZE
    (0x4242, 7), (0, 1),  # unknown: ignored
]
INVALID_SETTINGS = [(2, 1), (2, 2), (4, 0x80000000), (5, 16_383), (5, 0x1000000)]
CODES = st.sampled_from([0, 1, 2, 5, 7, 8, 0xB, 0xFFFF])
_OUR_ENCODER = HeaderBlockEncoder()


@dataclass
class Model:
    """Just enough of the conversation to choose plausible stream ids and header blocks. In a conversation
    with `faults`, now and then a frame is malformed (one fault a frame) or names an unlikely stream."""

    client_side: bool
    faults: bool
    streams: list = field(default_factory=list)
    next_id: int = 1
    encoder: hpack.Encoder = field(default_factory=hpack.Encoder)
    owe_update: bool = False  # our SETTINGS_HEADER_TABLE_SIZE 0 was acknowledged: a size update is owed
    heads: dict = field(default_factory=dict)  # stream -> header blocks the remote sent on it
    ended: set = field(default_factory=set)  # streams the remote ended
    final: set = field(default_factory=set)  # (client side) streams with a final response head

    def __post_init__(self) -> None:
        if self.client_side:
            self.streams, self.next_id = [1], 3  # stream 1 is the request we opened; next_id: our next one

    def fault(self, draw, one_in: int) -> bool:
        return self.faults and draw(st.integers(0, one_in - 1)) == 0


@st.composite
def stream_ids(draw, model: Model, new: int = 0):
    """A stream of the conversation; the next new one `new` times in 10 (the remote's, on the server side);
    with faults, now and then any id."""
    if model.fault(draw, 8):
        return draw(st.integers(1, 12))
    if not model.streams or draw(st.integers(0, 9)) < new:
        return model.next_id
    return draw(st.sampled_from(model.streams))


INFORMATIONAL = [[(b":status", b"100")], [(b":status", b"103"), (b"link", b"</x>")]]


@st.composite
def header_block(draw, model: Model, headers: list) -> bytes:
    how = "garbage" if model.fault(draw, 6) else draw(st.sampled_from(["ours", "hpack"]))
    # After acknowledging our HEADER_TABLE_SIZE of 0 the remote starts its next block with a size update
    # (RFC 7541 4.2); with faults, now and then it does not (see test_pinned_h2_refuses_a_peer_that_keeps_its_table).
    update = b""
    if model.owe_update and not model.fault(draw, 3):
        model.owe_update = False
        update = b"\x20"
        model.encoder.header_table_size = 0
    if how == "ours":
        return update + _OUR_ENCODER.encode(headers)
    if how == "hpack":  # Huffman and the dynamic table, as real peers encode
        if not update and draw(st.integers(0, 9)) == 0:
            model.encoder.header_table_size = 0 if model.encoder.header_table_size == 0 else draw(st.sampled_from([100, 4096]))
        return model.encoder.encode(headers)
    return update + draw(st.binary(min_size=1, max_size=12))


def pad(draw, model: Model, payload: bytes) -> tuple[bytes, int]:
    """Padding for DATA/HEADERS: (payload with pad length and padding, PADDED or 0); with faults, now and
    then a pad length that reaches the pad length byte itself or beyond."""
    if draw(st.integers(0, 3)):
        return payload, 0
    if model.fault(draw, 5):
        length = min(255, len(payload) + 1 + draw(st.sampled_from([0, 4])))
        return bytes((length,)) + payload + b"\x00" * max(0, length - len(payload) - 1), PADDED
    length = draw(st.sampled_from([0, 1, 7]))
    return bytes((length,)) + payload + b"\x00" * length, PADDED


@st.composite
def headers_steps(draw, model: Model) -> list[Step]:
    live = [s for s in model.streams if s not in model.ended]
    if live and draw(st.integers(0, 9)) < (8 if model.client_side else 4):
        stream_id = draw(st.sampled_from(live))
    else:
        stream_id = draw(stream_ids(model, new=0 if model.client_side else 8))
    if stream_id == model.next_id and not model.client_side:
        model.next_id += 2
    if stream_id not in model.streams:
        model.streams.append(stream_id)
    # the head (1xx first now and then on the client side), then trailers, which end the stream
    heads = model.heads.get(stream_id, 0)
    model.heads[stream_id] = heads + 1
    if model.client_side and stream_id not in model.final and draw(st.integers(0, 3)) == 0:
        headers, end_stream = draw(st.sampled_from(INFORMATIONAL)), False
    elif model.client_side and stream_id not in model.final:
        model.final.add(stream_id)
        headers = draw(st.sampled_from([RESP, RESP + [(b"content-type", b"application/grpc")], [(b":status", b"404")]]))
        end_stream = draw(st.integers(0, 2)) == 0
    elif not model.client_side and not heads:
        headers = draw(st.sampled_from([REQ, REQ + [(b"te", b"trailers"), (b"grpc-timeout", b"1S")]]))
        end_stream = draw(st.integers(0, 2)) == 0
    else:
        headers, end_stream = TRAIL, True
    if model.fault(draw, 5):
        end_stream = not end_stream
    encoded = draw(header_block(model, headers))
    flags = END_STREAM if end_stream else 0
    if flags:
        model.ended.add(stream_id)
    prefix = b""
    if draw(st.integers(0, 4)) == 0:
        flags |= PRIORITY_FLAG
        depends_on = stream_id if model.fault(draw, 4) else draw(st.sampled_from([0, 1, 3, stream_id + 2]))
        prefix = u32(depends_on | draw(st.booleans()) << 31) + bytes((draw(st.integers(0, 255)),))
    pieces = [encoded]
    if len(encoded) > 1 and draw(st.integers(0, 3)) == 0:  # HEADERS + CONTINUATION
        cut = sorted(draw(st.lists(st.integers(1, len(encoded) - 1), min_size=1, max_size=2, unique=True)))
        pieces = [encoded[a:b] for a, b in zip([0, *cut], [*cut, len(encoded)])]
    payload, padded = pad(draw, model, prefix + pieces[0])
    if padded and model.fault(draw, 5):  # padding that leaves an empty fragment, or eats into the priority
        payload = bytes((max(0, min(255, len(payload) - 1 - draw(st.sampled_from([0, 1, 3])))),)) + payload[1:]
    steps = [frame_step(T_HEADERS, flags | padded | (END_HEADERS if len(pieces) == 1 else 0), stream_id, payload)]
    for index, piece in enumerate(pieces[1:], start=2):
        last = index == len(pieces)
        if last and model.fault(draw, 5):
            break  # the block is left unfinished: whatever comes next interrupts it
        steps.append(frame_step(T_CONT, END_HEADERS if last else 0, stream_id, piece))
    return steps


@st.composite
def data_steps(draw, model: Model) -> list[Step]:
    """DATA, mostly on a stream with a head and not ended (else first a HEADERS frame to open one)."""
    live = [s for s in model.streams if model.heads.get(s) and s not in model.ended]
    if not live and not model.fault(draw, 3):
        return draw(headers_steps(model))
    stream_id = 0 if model.fault(draw, 20) else draw(st.sampled_from(live)) if live and draw(st.integers(0, 9)) else draw(stream_ids(model))
    size = draw(st.sampled_from([0, 1, 10, 10, 1000, 1000, 16_384]))
    if stream_id and model.fault(draw, 10):
        size = 16_385  # beyond our SETTINGS_MAX_FRAME_SIZE (one fault a frame: not on stream 0 too)
    payload, padded = pad(draw, model, b"d" * size)
    if len(payload) > 16_384 >= size:
        payload, padded = b"d" * size, 0
    end_stream = END_STREAM if draw(st.integers(0, 3)) == 0 else 0
    if end_stream:
        model.ended.add(stream_id)
    return [frame_step(T_DATA, padded | end_stream, stream_id, payload)]


def settings_note(payload: bytes) -> str:
    """Tags of a SETTINGS payload that h2 reads differently (see `difference`)."""
    keys = [int.from_bytes(payload[i : i + 2], "big") for i in range(0, len(payload) - 5, 6)]
    return " ".join(tag for tag, on in (("connect-protocol", 8 in keys), ("duplicate", len(set(keys)) < len(keys))) if on)


@st.composite
def settings_step(draw, model: Model, first: bool = False) -> Step:
    values = draw(st.lists(st.sampled_from(VALID_SETTINGS), max_size=4))
    if model.fault(draw, 6):
        values.insert(draw(st.integers(0, len(values))), draw(st.sampled_from(INVALID_SETTINGS)))
    if model.fault(draw, 8):
        values.append((8, draw(st.sampled_from([0, 1, 2]))))  # ENABLE_CONNECT_PROTOCOL (RFC 8441), not ours
    payload = b"".join(setting(k, v) for k, v in values)
    note = settings_note(payload)
    if first:
        return frame_step(T_SETTINGS, 0, 0, payload, note)
    variant = draw(st.sampled_from(["settings", "ack"]))
    if model.fault(draw, 4):
        variant = draw(st.sampled_from(["ack-payload", "length", "stream"]))
    if variant == "ack":
        model.owe_update = True
        return frame_step(T_SETTINGS, ACK, 0)
    if variant == "ack-payload":
        return frame_step(T_SETTINGS, ACK, 0, setting(3, 1))
    if variant == "length":
        return frame_step(T_SETTINGS, 0, 0, payload + b"\x00\x01\x00")
    if variant == "stream":
        return frame_step(T_SETTINGS, 0, draw(st.integers(1, 5)), payload)
    return frame_step(T_SETTINGS, 0, 0, payload, note)


@st.composite
def control_step(draw, model: Model) -> Step:
    kind = draw(st.sampled_from(["window", "window", "window", "rst", "ping", "priority", "unknown"]
                                + (["push", "goaway"] if model.faults else [])))
    if draw(st.integers(0, 19)) == 0:
        kind = "goaway"  # rare: h2 takes no frame after it
    wrong = model.fault(draw, 6)  # a frame of the wrong length, or on the wrong stream
    if kind == "window":
        stream_id = 0 if draw(st.booleans()) else draw(stream_ids(model))
        increments = [1, 1000, 65_535, 0x7FFFFFFF - 65_535]
        if model.faults:
            increments += [0, 0x7FFFFFFF, 0x80000000, 0x80000064]
        return frame_step(T_WINDOW, 0, stream_id, u32(draw(st.sampled_from(increments)))[: 3 if wrong else 4])
    if kind == "rst":
        stream_id = draw(stream_ids(model))
        if wrong:
            return draw(st.sampled_from([frame_step(T_RST, 0, 0, u32(8)), frame_step(T_RST, 0, stream_id, b"\x00" * 5)]))
        return frame_step(T_RST, 0, stream_id, u32(draw(CODES)))
    if kind == "ping":
        payload = draw(st.binary(min_size=8, max_size=8))
        if wrong:
            return draw(st.sampled_from([frame_step(T_PING, 0, 0, payload[:7]), frame_step(T_PING, 0, 1, payload)]))
        return frame_step(T_PING, ACK if draw(st.booleans()) else 0, 0, payload)
    if kind == "priority":
        stream_id = draw(stream_ids(model, new=3))
        depends_on = stream_id if model.fault(draw, 3) else draw(st.sampled_from([0, 1, stream_id + 2]))
        payload = u32(depends_on | draw(st.booleans()) << 31) + bytes((draw(st.integers(0, 255)),))
        if wrong:
            return draw(st.sampled_from([frame_step(T_PRIORITY, 0, 0, payload), frame_step(T_PRIORITY, 0, stream_id, payload[:4]),
                                         frame_step(T_PRIORITY, 0, stream_id, payload + b"\x00")]))
        return frame_step(T_PRIORITY, 0, stream_id, payload)
    if kind == "goaway":
        payload = u32(draw(st.integers(0, 11))) + u32(draw(CODES)) + draw(st.binary(max_size=8))
        if wrong:
            return draw(st.sampled_from([frame_step(T_GOAWAY, 0, 0, payload[:7]), frame_step(T_GOAWAY, 0, 1, payload)]))
        return frame_step(T_GOAWAY, 0, 0, payload)
    if kind == "push":
        promised = u32(draw(st.sampled_from([2, 4])))
        return frame_step(T_PUSH, 0 if wrong else END_HEADERS, draw(stream_ids(model)), promised + _OUR_ENCODER.encode(REQ))
    frame_type = draw(st.sampled_from([0x0B, 0x10, 0xF0, 0xFF]))  # not 0xA (ALTSVC): h2 parses it, see below
    return frame_step(frame_type, draw(st.integers(0, 255)), draw(st.integers(0, 9)), draw(st.binary(max_size=10)))


@st.composite
def action_step(draw, model: Model) -> Step:
    if model.client_side and draw(st.booleans()):
        model.streams.append(model.next_id)
        model.next_id += 2
        return Step("open", args=(draw(st.booleans()),))
    kind = draw(st.sampled_from(["respond", "respond", "send", "reset"]))
    pick = draw(st.integers(0, 7))
    if kind == "respond":
        return Step("respond", stream_id=pick, args=(draw(st.booleans()),))
    if kind == "send":
        return Step("send", stream_id=pick, args=(draw(st.sampled_from([0, 1, 100, 20_000, 70_000])), draw(st.booleans())))
    return Step("reset", stream_id=pick, args=(draw(st.sampled_from([0, 2, 8])),))


@st.composite
def conversations(draw, client_side: bool, max_steps: int = 24) -> list[Step]:
    model = Model(client_side, faults=draw(st.integers(0, 2)) == 0)
    first = draw(settings_step(model, first=True))
    steps = [Step("frame", (b"" if client_side else PREFACE) + first.data, T_SETTINGS, 0, 0, note=first.note)]
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(st.sampled_from(["headers"] * 5 + ["data"] * 5 + ["settings"] * 2 + ["control"] * 5 + ["action"] * 4))
        if kind == "headers":
            steps += draw(headers_steps(model))
        elif kind == "data":
            steps += draw(data_steps(model))
        elif kind == "settings":
            steps.append(draw(settings_step(model)))
        elif kind == "control":
            steps.append(draw(control_step(model)))
        else:
            steps.append(draw(action_step(model)))
    return steps


# --- the generic comparison --------------------------------------------------------------------------------

DIFFERENTIAL = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DIFFERENTIAL_SLOW = settings(max_examples=2_000, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@given(conversations(client_side=False))
@DIFFERENTIAL
def test_server_side_against_h2(steps):
    run(False, steps)


@given(conversations(client_side=True), st.booleans())
@DIFFERENTIAL
def test_client_side_against_h2(steps, request_end_stream):
    run(True, steps, request_end_stream)


@pytest.mark.slow
@given(conversations(client_side=False, max_steps=60))
@DIFFERENTIAL_SLOW
def test_server_side_against_h2_many(steps):
    run(False, steps)


@pytest.mark.slow
@given(conversations(client_side=True, max_steps=60), st.booleans())
@DIFFERENTIAL_SLOW
def test_client_side_against_h2_many(steps, request_end_stream):
    run(True, steps, request_end_stream)


# --- the differences, pinned ---------------------------------------------------------------------------------

def block(headers) -> bytes:
    return _OUR_ENCODER.encode(headers)


def pinned(client_side: bool, setup: list, data: bytes, **limits) -> tuple[Outcome, Outcome, str | None]:
    """Feed `setup` (frames, or application Steps) to both, which must agree on it; then `data` (one frame):
    (our outcome, h2's outcome, the name of the difference the generic comparison gives it)."""
    pair = Pair(client_side, request_end_stream=False if client_side else None, **limits)
    preface = b"" if client_side else PREFACE
    for item in [preface + frame(T_SETTINGS, 0, 0), *setup]:
        if isinstance(item, Step):
            assert pair.act(item)
            continue
        ours, theirs = pair.feed(item)
        assert ours == theirs, (item, ours, theirs)
        pair.compare_state()
    [(frame_type, flags, stream_id, _)] = parse(data)
    step = Step("frame", data, frame_type, flags, stream_id, note=settings_note(data[9:]) if frame_type == T_SETTINGS else "")
    before = pair.snapshot(stream_id)
    ours, theirs = pair.feed(data)
    known = difference(step, before, ours, theirs, client_side)
    return ours, theirs, known and known[0]


def request(stream_id: int = 1, end_stream: bool = False) -> bytes:
    return frame(T_HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream_id, block(REQ))


def response(headers=RESP, end_stream: bool = False, stream_id: int = 1) -> bytes:
    return frame(T_HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream_id, block(headers))


def refused(code: int) -> Outcome:
    return Outcome(code)


def resets(stream_id: int, code: int, event: bool = True) -> Outcome:
    return Outcome(None, [("reset", stream_id, code, False)] if event else [], [("rst", stream_id, code)])


PING = frame(T_PING, 0, 0, b"pingpong")
PINNED = [
    # (id, client side, setup, the frame, our outcome, h2's outcome, the name in `difference`)
    #
    # Deliberate (h2conn's docstring). RFC 9113 5.1, "closed": "An endpoint MUST ignore frames that it
    # receives on closed streams after it has sent a RST_STREAM frame"; h2 answers RST_STREAM(STREAM_CLOSED).
    ("data-on-a-stream-we-reset", False, [request(), Step("reset", args=(8,))], frame(T_DATA, 0, 1, b"late"),
     Outcome(None), Outcome(None, [], [("rst", 1, STREAM_CLOSED)]), "frames-on-a-stream-we-reset-are-ignored"),
    ("trailers-on-a-stream-we-reset", False, [request(), Step("reset", args=(8,))],
     frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block(TRAIL)),
     Outcome(None), Outcome(None, [], [("rst", 1, STREAM_CLOSED)]), "frames-on-a-stream-we-reset-are-ignored"),
    # 6.9.2: a new initial window must not push "any flow-control window" past 2^31-1. h2 still counts the
    # window of a closed stream (here one we reset, +1); we do not: it will never carry DATA again.
    ("initial-window-after-a-stream-we-reset", False,
     [request(), frame(T_WINDOW, 0, 1, u32(1)), Step("reset", args=(8,))],
     frame(T_SETTINGS, 0, 0, b"\x00\x04" + u32(0x7FFFFFFF)),
     Outcome(None, [], [("settings-ack",)]), refused(FLOW_CONTROL_ERROR), "h2-counts-the-windows-of-closed-streams"),
    # ... and where h2 never saw the stream: its RST_STREAM answered DATA on an implicitly closed stream
    ("headers-on-a-stream-we-reset-h2-never-opened", False, [request(3), frame(T_DATA, 0, 1, b"x")], request(1),
     Outcome(None), refused(PROTOCOL_ERROR), "frames-on-a-stream-we-reset-are-ignored-where-h2-closes-the-connection"),
    # h2 refuses every frame after a GOAWAY (its connection state machine is CLOSED). RFC 9113 6.8: streams up
    # to the last-stream-id may still complete, so frames keep coming; we go on (the endpoint decides).
    ("frames-after-goaway", False, [request(), frame(T_GOAWAY, 0, 0, u32(1) + u32(0))], PING,
     Outcome(None, [], [("ping-ack", b"pingpong")]), refused(PROTOCOL_ERROR), "h2-refuses-every-frame-after-goaway"),
    # RFC 9113 6.4: "If a RST_STREAM frame identifying an idle stream is received, the recipient MUST treat
    # this as a connection error of type PROTOCOL_ERROR." h2 ignores it.
    ("rst-stream-on-an-idle-stream", False, [request(1)], frame(T_RST, 0, 3, u32(8)),
     refused(PROTOCOL_ERROR), Outcome(None), "h2-ignores-rst-stream-on-an-idle-stream"),
    # RFC 9113 4.3: "A decoding error in a field block MUST be treated as a connection error of type
    # COMPRESSION_ERROR." h2 says PROTOCOL_ERROR.
    ("hpack-error", False, [], frame(T_HEADERS, END_HEADERS, 1, b"\xff\x00"),
     refused(COMPRESSION_ERROR), refused(PROTOCOL_ERROR), "h2-answers-hpack-errors-with-protocol-error"),
    # Stream errors that h2 makes connection errors (RFC 9113 5.4.1 lets it: "An endpoint can end a
    # connection at any time"); we reset the one stream, as the sections cited ask:
    # 8.1.1: a malformed response (DATA before its head) is a stream error of type PROTOCOL_ERROR
    ("data-before-the-response-head", True, [], frame(T_DATA, 0, 1, b"x"),
     resets(1, PROTOCOL_ERROR), refused(PROTOCOL_ERROR), "h2-closes-the-connection-on-a-stream-error-0-1"),
    # 6.9: "A receiver MAY respond with a stream error or connection error of type FLOW_CONTROL_ERROR"
    ("data-beyond-the-stream-window", False, [request()] + [frame(T_DATA, 0, 1, b"x" * 16_384)] * 3
     + [frame(T_DATA, 0, 1, b"x" * 16_383)], frame(T_DATA, 0, 1, b"xx"),
     resets(1, FLOW_CONTROL_ERROR), refused(FLOW_CONTROL_ERROR), "h2-closes-the-connection-on-a-stream-error-0-3"),
    # 8.1: trailers end the stream; without END_STREAM the request is malformed (8.1.1: stream error)
    ("trailers-without-end-stream", False, [request()], frame(T_HEADERS, END_HEADERS, 1, block(TRAIL)),
     resets(1, PROTOCOL_ERROR), refused(PROTOCOL_ERROR), "h2-closes-the-connection-on-a-stream-error-1-1"),
    # 8.1.1: a 1xx head with END_STREAM is malformed
    ("informational-with-end-stream", True, [], response([(b":status", b"103")], end_stream=True),
     resets(1, PROTOCOL_ERROR), refused(PROTOCOL_ERROR), "h2-closes-the-connection-on-a-stream-error-1-1"),
    # 5.3.1: "A stream cannot depend on itself. An endpoint MUST treat this as a stream error of type
    # PROTOCOL_ERROR."
    ("headers-self-dependent", False, [], frame(T_HEADERS, END_HEADERS | PRIORITY_FLAG, 1, u32(1) + b"\x10" + block(REQ)),
     resets(1, PROTOCOL_ERROR, event=False), refused(PROTOCOL_ERROR), "h2-closes-the-connection-on-a-stream-error-1-1"),
    ("priority-self-dependent", False, [request()], frame(T_PRIORITY, 0, 1, u32(1) + b"\x10"),
     resets(1, PROTOCOL_ERROR), refused(PROTOCOL_ERROR), "h2-closes-the-connection-on-a-stream-error-2-1"),
    # 6.3: "A PRIORITY frame with a length other than 5 octets MUST be treated as a stream error of type
    # FRAME_SIZE_ERROR."
    ("priority-of-4-bytes", False, [request()], frame(T_PRIORITY, 0, 1, u32(0)),
     resets(1, FRAME_SIZE_ERROR), refused(FRAME_SIZE_ERROR), "h2-closes-the-connection-on-a-stream-error-2-6"),
    # 6.9: "A receiver MUST treat the receipt of a WINDOW_UPDATE frame with a flow-control window increment
    # of 0 as a stream error of type PROTOCOL_ERROR"
    ("window-update-0-on-a-stream", False, [request()], frame(T_WINDOW, 0, 1, u32(0)),
     resets(1, PROTOCOL_ERROR), refused(PROTOCOL_ERROR), "h2-closes-the-connection-on-a-stream-error-8-1"),
    # ... and on a closed stream there is nothing left to reset: ignored (RFC 9113 5.1 lets WINDOW_UPDATE
    # arrive on a closed stream); h2 refuses any increment of 0 before it looks at the stream
    ("window-update-0-on-a-closed-stream", False, [request(end_stream=True), Step("respond", args=(True,))],
     frame(T_WINDOW, 0, 1, u32(0)), Outcome(None), refused(PROTOCOL_ERROR), "window-update-0-on-a-closed-stream-is-ignored"),
    # 5.1, half-closed (remote): other frames are "a stream error of type STREAM_CLOSED"; h2 makes a 1xx
    # head there a connection error
    ("informational-in-half-closed-remote", True, [response(end_stream=True)], response([(b":status", b"100")]),
     resets(1, STREAM_CLOSED), refused(PROTOCOL_ERROR), "h2-closes-the-connection-on-a-1xx-head-in-half-closed-remote"),
    # 5.1, closed: "An endpoint that receives any frame other than PRIORITY after receiving a RST_STREAM MUST
    # treat that as a stream error of type STREAM_CLOSED". We close the connection (5.4.1 allows it): we do
    # not remember the streams the remote reset, and a peer that reopens one it reset is broken.
    ("headers-on-a-stream-the-remote-reset", False, [request(), frame(T_RST, 0, 1, u32(8))],
     frame(T_HEADERS, END_HEADERS | END_STREAM, 1, block(TRAIL)),
     refused(STREAM_CLOSED), Outcome(None, [], [("rst", 1, STREAM_CLOSED)]), "headers-on-a-stream-the-remote-reset-close-the-connection"),
    # 5.1.1: a stream id below the highest that was never used ("implicitly closed") is an unexpected id:
    # PROTOCOL_ERROR (h2 is more precise); telling it from a stream closed by END_STREAM (STREAM_CLOSED, 5.1)
    # would take remembering every id; both close the connection
    ("headers-on-an-implicitly-closed-stream", False, [request(3)], request(1),
     refused(STREAM_CLOSED), refused(PROTOCOL_ERROR), "headers-on-an-implicitly-closed-stream-are-stream-closed"),
    # 5.1.1 and 8.4: a server opens streams only with PUSH_PROMISE (disabled): HEADERS on an even idle stream
    # is an unexpected stream id (PROTOCOL_ERROR); h2's client takes it for a request
    ("headers-on-a-server-stream", True, [], response(stream_id=2),
     refused(PROTOCOL_ERROR), Outcome(None, [("head", "request", 2, RESP, False)], []),
     "h2-client-takes-headers-on-a-server-stream-as-a-request"),
    # 6.10: a CONTINUATION not preceded by HEADERS/CONTINUATION without END_HEADERS: "connection error of type
    # PROTOCOL_ERROR"; h2 looks at the stream first (here: one it reset and forgot, so RST_STREAM)
    ("continuation-without-a-header-block", False, [request(), Step("reset", args=(8,)), request(3)],
     frame(T_CONT, END_HEADERS, 1, block(TRAIL)),
     refused(PROTOCOL_ERROR), Outcome(None, [], [("rst", 1, STREAM_CLOSED)]), "continuation-without-a-header-block-is-protocol-error"),
    # 6.5: "Receipt of a SETTINGS frame with the ACK flag set and a length field value other than 0 MUST be
    # treated as a connection error of type FRAME_SIZE_ERROR."
    ("settings-ack-with-payload", False, [], frame(T_SETTINGS, ACK, 0, setting(3, 1)),
     refused(FRAME_SIZE_ERROR), refused(PROTOCOL_ERROR), "h2-answers-a-settings-ack-with-payload-with-protocol-error"),
    # 6.6 / 8.4: PUSH_PROMISE with push disabled is a connection error: nothing to wait for (h2 waits for the
    # end of its header block)
    ("push-promise-without-end-headers", True, [], frame(T_PUSH, 0, 1, u32(2) + block(REQ)),
     refused(PROTOCOL_ERROR), Outcome(None), "push-promise-is-refused-at-once"),
    # Field rules are the caller's (interlink.wire.h2headers.check_trailers: no pseudo-header in trailers,
    # RFC 9113 8.1), as they are h2's with validate_inbound_headers=False; h2's state machine still reads
    # :status in every block and refuses a 1xx after the final head
    ("informational-after-the-final-response", True, [response()], response([(b":status", b"100")], end_stream=True),
     Outcome(None, [("head", "trailers", 1, [(b":status", b"100")], True)], []), refused(PROTOCOL_ERROR),
     "h2-refuses-1xx-after-the-final-response"),
    # 6.2: "Padding that exceeds the size remaining for the header block fragment MUST be treated as a
    # PROTOCOL_ERROR": padding as long as what remains leaves an empty fragment, which is no error (h2 says it is)
    ("padding-leaving-an-empty-fragment", False, [request(3)], frame(T_HEADERS, PADDED | END_HEADERS, 5, b"\x02\x00\x00"),
     Outcome(None, [("head", "request", 5, [], False)], []), refused(PROTOCOL_ERROR),
     "h2-refuses-padding-that-leaves-an-empty-fragment"),
    # ... and padding that reaches into the priority fields exceeds it (h2 reads the priority, then an empty
    # fragment)
    ("padding-eating-the-priority-fields", False, [],
     frame(T_HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS, 1, b"\x01" + u32(0) + b"\x10"),
     refused(PROTOCOL_ERROR), Outcome(None, [("head", "request", 1, [], False)], []),
     "h2-lets-padding-eat-the-priority-fields"),
    # 6.9: the reserved bit of WINDOW_UPDATE "MUST be ignored when receiving"
    ("window-increment-with-the-reserved-bit", False, [], frame(T_WINDOW, 0, 0, u32(0x80000064)),
     Outcome(None), refused(PROTOCOL_ERROR), "h2-refuses-the-reserved-bit-of-a-window-increment"),
    # 6.5: settings are "processed in the order in which they appear"; h2 keeps them in a dict, so only the
    # last value of a repeated one counts (and an invalid earlier value passes)
    ("a-repeated-setting", False, [], frame(T_SETTINGS, 0, 0, setting(5, 100) + setting(5, 16_384)),
     refused(PROTOCOL_ERROR), Outcome(None, [], [("settings-ack",)]), "h2-keeps-only-the-last-value-of-a-repeated-setting"),
    # 6.5.2: "An endpoint that receives a SETTINGS frame with any unknown or unsupported identifier MUST ignore
    # that setting": we do not support ENABLE_CONNECT_PROTOCOL (RFC 8441), h2 checks its value
    ("an-unsupported-setting", False, [], frame(T_SETTINGS, 0, 0, setting(8, 2)),
     Outcome(None, [], [("settings-ack",)]), refused(PROTOCOL_ERROR), "h2-refuses-an-unknown-setting-value"),
    # RFC 7541 4.2: after our SETTINGS_HEADER_TABLE_SIZE 0 is acknowledged the remote owes a size update at the
    # start of its next block; the MUST is on the encoder, the RFC asks nothing of the decoder beyond refusing
    # a size above the limit (both do). We take such a peer (our table stays bounded by the size in force,
    # 4,096 here); h2 refuses it.
    ("a-peer-that-keeps-its-table", False, [frame(T_SETTINGS, ACK, 0)], request(),
     Outcome(None, [("head", "request", 1, REQ, False)], []), refused(PROTOCOL_ERROR), "h2-refuses-a-peer-that-keeps-its-table"),
    # two faults in one frame (it interrupts a header block, and has the wrong length): each names one
    ("a-malformed-frame-in-a-header-block", False, [frame(T_HEADERS, 0, 1, block(REQ)[:2])], frame(T_WINDOW, 0, 0, b"\x00\x00\x01"),
     refused(PROTOCOL_ERROR), refused(FRAME_SIZE_ERROR), "a-header-block-interrupted-by-a-malformed-frame"),
]


@pytest.mark.parametrize(("client_side", "setup", "data", "ours", "theirs", "name"),
                         [pytest.param(*case[1:], id=case[0]) for case in PINNED])
def test_pinned_differences(client_side, setup, data, ours, theirs, name):
    got_ours, got_theirs, known = pinned(client_side, setup, data)
    assert got_ours == ours
    assert got_theirs == theirs
    assert known == name


def test_pinned_refused_stream_beyond_the_concurrency_limit():
    """Deliberate (h2conn's docstring). RFC 9113 5.1.2: a HEADERS frame beyond SETTINGS_MAX_CONCURRENT_STREAMS
    is "a stream error of type PROTOCOL_ERROR or REFUSED_STREAM"; REFUSED_STREAM tells the client that it
    may retry. h2 closes the connection."""
    ours, theirs, _ = pinned(False, [request(1)], request(3), max_concurrent_streams=1)
    assert ours == resets(3, REFUSED_STREAM, event=False)
    assert theirs == refused(PROTOCOL_ERROR)


def test_pinned_the_first_frame_must_be_settings():
    """RFC 9113 3.4: the preface is the magic and a SETTINGS frame, "the first frame"; an invalid preface is a
    connection error of type PROTOCOL_ERROR. h2 takes any frame first."""
    for client_side in (False, True):
        pair = Pair(client_side, request_end_stream=False if client_side else None)
        ours, theirs = pair.feed((b"" if client_side else PREFACE) + PING)
        assert ours == refused(PROTOCOL_ERROR)
        assert theirs == Outcome(None, [], [("ping-ack", b"pingpong")])


def test_pinned_the_frame_size_is_judged_before_the_payload_arrives():
    """Our protection against memory exhaustion: a frame beyond our SETTINGS_MAX_FRAME_SIZE is refused from its
    9-byte header (RFC 9113 4.2: FRAME_SIZE_ERROR); h2 buffers the payload first."""
    pair = Pair(False)
    pair.feed(PREFACE + frame(T_SETTINGS, 0, 0))
    ours, theirs = pair.feed(frame(T_DATA, 0, 1, b"x" * 16_385)[:9])
    assert ours == refused(FRAME_SIZE_ERROR)
    assert theirs == Outcome(None)
    assert pair.feed_h2(b"x" * 16_385) == refused(FRAME_SIZE_ERROR)


def test_pinned_many_continuation_frames():
    """h2 refuses a header block of more than 64 CONTINUATION frames (PROTOCOL_ERROR); RFC 9113 sets no such
    limit. Ours are the block's size (max_header_list) and the flood budget (each CONTINUATION spends)."""
    encoded = block(REQ + [(b"x-pad", b"p" * 200)])
    pieces = [encoded[i : i + 3] for i in range(0, len(encoded), 3)]
    assert len(pieces) > 66
    data = frame(T_HEADERS, 0, 1, pieces[0]) + b"".join(
        frame(T_CONT, END_HEADERS if i == len(pieces) - 1 else 0, 1, p) for i, p in enumerate(pieces) if i)
    pair = Pair(False)
    pair.feed(PREFACE + frame(T_SETTINGS, 0, 0))
    ours, theirs = pair.feed(data)
    assert ours == Outcome(None, [("head", "request", 1, REQ + [(b"x-pad", b"p" * 200)], False)], [])
    assert theirs == refused(PROTOCOL_ERROR)


def test_pinned_altsvc_is_an_unknown_frame_type_to_us():
    """RFC 9113 5.5: frames of unknown types are ignored. ALTSVC (0xA, RFC 7838) is one to us; h2 parses it and
    refuses a malformed one."""
    pair = Pair(True, request_end_stream=True)
    pair.feed(frame(T_SETTINGS, 0, 0))
    ours, theirs = pair.feed(frame(0xA, 0, 0, b"\x00"))
    assert ours == Outcome(None)
    assert theirs == refused(FRAME_SIZE_ERROR)


def test_pinned_our_streams_above_the_last_stream_id_of_a_goaway_are_closed():
    """RFC 9113 6.8: streams above the GOAWAY's last-stream-id "were not processed" and may be retried on a new
    connection: we close them (and ignore their late frames); h2 leaves them open to the application."""
    pair = Pair(True, request_end_stream=False)
    pair.act(Step("open", args=(False,)))
    pair.feed(frame(T_SETTINGS, 0, 0))
    ours, theirs = pair.feed(frame(T_GOAWAY, 0, 0, u32(1) + u32(0)))
    assert ours == theirs == Outcome(None, [("goaway", 0, 1, b"")], [])
    assert set(pair.ours.streams) == {1}
    assert {s for s, stream in pair.h2.streams.items() if not stream.closed} == {1, 3}
    assert pair.feed_ours(frame(T_DATA, 0, 3, b"late")) == Outcome(None)


def test_every_difference_of_the_generic_comparison_is_pinned():
    names = {case[-1] for case in PINNED}
    source = inspect.getsource(difference)
    returned = set(re.findall(r'return "([a-z0-9-]+)"', source))
    assert returned <= names, returned - names
    prefixes = set(re.findall(r'return f"([a-z0-9-]+)\{', source))
    assert all(any(name.startswith(prefix) for name in names) for prefix in prefixes)


# --- valid conversations, compared to the end ----------------------------------------------------------------

def settings_frame(*pairs) -> bytes:
    return frame(T_SETTINGS, 0, 0, b"".join(setting(k, v) for k, v in pairs))


def steps_of(data: bytes) -> list[Step]:
    return [frame_step(t, f, s, p) for t, f, s, p in parse(data)]


def test_a_grpc_exchange_is_the_same_on_both_sides():
    encoder = hpack.Encoder()
    encoder.header_table_size = 0  # the size update owed after the ACK of our SETTINGS (RFC 7541 4.2)
    server = steps_of(settings_frame((4, 1 << 20), (1, 4096)) + frame(T_SETTINGS, ACK, 0)
                      + frame(T_HEADERS, END_HEADERS, 1, encoder.encode(REQ)) + frame(T_DATA, 0, 1, b"\x00\x00\x00\x00\x05hello")
                      + frame(T_DATA, END_STREAM, 1) + frame(T_PING, 0, 0, b"pingpong")
                      + frame(T_HEADERS, END_HEADERS | END_STREAM, 3, encoder.encode(REQ)) + frame(T_WINDOW, 0, 0, u32(1000)))
    server[0].data = PREFACE + server[0].data
    pair = run(False, server + [Step("respond", stream_id=0, args=(False,)), Step("send", stream_id=0, args=(10, True))])
    assert not pair.dead and set(pair.ours.streams) == {3}
    encoder = hpack.Encoder()
    encoder.header_table_size = 0  # the size update owed after the ACK of our SETTINGS (RFC 7541 4.2)
    client = steps_of(settings_frame((3, 10)) + frame(T_SETTINGS, ACK, 0)
                      + frame(T_HEADERS, END_HEADERS, 1, encoder.encode([(b":status", b"100")]))
                      + frame(T_HEADERS, END_HEADERS, 1, encoder.encode(RESP)) + frame(T_DATA, PADDED, 1, b"\x02data\x00\x00")
                      + frame(T_HEADERS, END_HEADERS | END_STREAM, 1, encoder.encode(TRAIL)))
    pair = run(True, client, request_end_stream=True)
    assert not pair.dead and not pair.ours.streams


def test_the_grammar_reaches_the_comparison():
    """The generic comparison is not all stops: a fixed sample of conversations goes through to the end often."""
    SEEN.clear()
    strategy_server, strategy_client = conversations(client_side=False), conversations(client_side=True)

    @given(strategy_server)
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    def server_side(steps):
        run(False, steps)

    @given(strategy_client)
    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    def client_side(steps):
        run(True, steps)

    server_side()
    client_side()
    assert SEEN["compared-to-the-end"] >= 10, SEEN


def test_our_window_settings_take_effect_on_ack_as_h2s_do():
    """Until the remote acknowledges our SETTINGS_INITIAL_WINDOW_SIZE it may use the old one (RFC 9113 6.9.2);
    on the ACK the streams' receive windows shrink by the difference, below zero here, on both sides."""
    pair = Pair(False, initial_window=1000)
    pair.feed(PREFACE + frame(T_SETTINGS, 0, 0))
    assert pair.feed(request()) == (Outcome(None, [("head", "request", 1, REQ, False)], []),) * 2
    for size in (16_384, 16_384, 16_384, 10_848):
        ours, theirs = pair.feed(frame(T_DATA, 0, 1, b"d" * size))
        assert ours == theirs
    pair.compare_state()
    assert pair.feed(frame(T_SETTINGS, ACK, 0)) == (Outcome(None),) * 2
    pair.compare_state()
    assert pair.ours.streams[1].recv_window == 1000 - 60_000
    assert pair.feed(frame(T_HEADERS, END_HEADERS, 3, b"\x20" + block(REQ)))[0].events  # the size update owed
    pair.compare_state()
    assert pair.ours.streams[3].recv_window == 1000


def test_the_connection_window_against_h2():
    """With a connection window of 65,535 both refuse the byte beyond it (FLOW_CONTROL_ERROR, RFC 9113 6.9.1);
    what we give back when half of it was read, h2 is given too (it leaves that to the application)."""
    pair = Pair(False, connection_window=65_535, initial_window=65_535)
    pair.feed(PREFACE + frame(T_SETTINGS, 0, 0))
    pair.feed(request(1) + request(3) + request(5))
    data = frame(T_DATA, 0, 1, b"d" * 16_384) * 3 + frame(T_DATA, 0, 3, b"d" * 16_383) + frame(T_DATA, 0, 5, b"d")
    ours, theirs = pair.feed(data)
    assert ours.error == theirs.error == FLOW_CONTROL_ERROR
    pair = Pair(False, connection_window=65_535, initial_window=65_535)
    pair.feed(PREFACE + frame(T_SETTINGS, 0, 0))
    pair.feed(request(1) + request(3))
    ours, theirs = pair.feed(frame(T_DATA, 0, 1, b"d" * 16_384) * 2)
    assert ours == theirs and len(ours.events) == 2
    assert pair.ours._recv_window == 65_535  # 32,768 given back (Pair.feed gave h2 the same)
    pair.compare_state()
    for _ in range(3):
        ours, theirs = pair.feed(frame(T_DATA, 0, 3, b"d" * 16_384))
        assert ours == theirs and ours.error is None
        pair.compare_state()
