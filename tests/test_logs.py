"""Log lines are written whole: one write per line, newline included (worker processes share stderr); and the
fast rendering (orjson, one stamping processor, no event-dict copies) writes what structlog's add_log_level +
TimeStamper(iso, utc) + format_exc_info + JSONRenderer() chain wrote: same keys, same order, same values."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re
from collections import namedtuple
from typing import Any

import pytest
import structlog

from interlink import logs


class Writes:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


class BinaryWrites(io.RawIOBase):
    """The binary file under a text stream (what sys.stderr.buffer is), recording each write."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.calls.append(bytes(data))
        return len(data)


@pytest.fixture(autouse=True)
def _reset_structlog():
    yield
    structlog.reset_defaults()


def reference_configure(stream: Writes) -> None:
    """The configuration logs.configure() had before the fast path: the reference for keys and values."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logs.LEVELS["info"]),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")

Point = namedtuple("Point", "x y")


class Ratio(float):
    pass


@dataclasses.dataclass
class Peer:
    site: str


class Custom:
    def __structlog__(self) -> str:
        return "custom!"


def emit(logger: Any) -> None:
    """The lines compared: the access and audit lines of a call, and the odd values structlog users pass."""
    fields = {"site": "site-a", "ingress": "peer-bolt", "peer": "site-b", "service": "com.example.EchoService:1.0",
              "method": "echo", "caller_app": None, "upstream": "providers of com.example.EchoService:1.0"}  # fmt: skip
    logger.info("call", status="OK", ms=0.412, **fields)
    logger.info("call", status="UNAVAILABLE", ms=12.0, error="site site-a is unreachable", **fields)
    logger.info("audit", decision="deny", reason=None, **fields)
    logger.warning("connection.abuse", reason="flood", count=3, ratio=1e-7, big=2**70, flag=True)
    logger.warn("old.alias", n=-1)
    logger.error("peer.closed", reason="send failed: BrokenResourceError", where=("a", 1), point=Point(1, 2))
    logger.info("odd.values", ratio=Ratio(0.5), when=dt.datetime(2026, 11, 24, tzinfo=dt.timezone.utc),
                peer=Peer("site-b"), raw=b"\x00\xff", custom=Custom(), items={1, 2} - {1, 2},
                nested={"a": [1, {"b": None}], "c": (1.5,)}, text="naïve ✓ \u2028 \"quoted\" \\ /")  # fmt: skip
    logger.info("non.str.keys", mapping={1: "one", None: "none"})
    logger.info("interpolated %s of %d", "one", 2)
    logger.info("by name %(what)s", {"what": "mapping"})
    logger.bind(registry="zookeeper", address="127.0.0.1:2181").info("registry.connected", session=7)
    logger.debug("dropped", below="info")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("filter.finish_failed", filter="X")


def lines_of(configure) -> list[dict[str, Any]]:
    stream = Writes()
    configure(stream)
    emit(structlog.get_logger("t"))
    structlog.reset_defaults()
    return [json.loads(call) for call in stream.calls]


def test_same_keys_order_and_values_as_the_structlog_chain():
    fast = lines_of(lambda stream: logs.configure("info", stream=stream))
    reference = lines_of(reference_configure)
    assert len(fast) == len(reference) == 12
    for mine, theirs in zip(fast, reference):
        assert TS.fullmatch(mine["ts"]) and TS.fullmatch(theirs["ts"])
        mine["ts"] = theirs["ts"] = "<ts>"
        assert list(mine) == list(theirs)
        assert mine == theirs
    assert fast[-1]["level"] == "error" and "ValueError: boom" in fast[-1]["exception"]
    assert fast[4]["level"] == "warning"


def test_each_line_is_one_write():
    stream = Writes()
    logs.configure("info", stream=stream)
    structlog.get_logger("t").info("call", status="OK", ms=1.5)
    structlog.get_logger("t").warning("connection.abuse", reason="flood")
    assert len(stream.calls) == 2
    for call in stream.calls:
        assert call.endswith("\n") and call.count("\n") == 1
        json.loads(call)


def test_a_text_stream_with_a_binary_buffer_gets_one_binary_write_per_line_after_its_text():
    raw = BinaryWrites()
    stream = io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", write_through=True)
    stream.write("before\n")
    logs.configure("info", stream=stream)
    log = structlog.get_logger("t")
    log.info("call", status="OK", ms=1.5, text="naïve")
    log.error("peer.closed", reason="x")
    assert raw.calls[0] == b"before\n"
    assert len(raw.calls) == 3
    for call in raw.calls[1:]:
        assert call.endswith(b"\n") and call.count(b"\n") == 1
    assert json.loads(raw.calls[1])["text"] == "naïve"
    assert json.loads(raw.calls[2])["level"] == "error"


def test_console_rendering_still_works():
    stream = Writes()
    logs.configure("info", json=False, stream=stream)
    structlog.get_logger("t").info("gateway.ready", site="site-a")
    structlog.get_logger("t").debug("dropped")
    assert len(stream.calls) == 1
    assert "gateway.ready" in stream.calls[0] and "site=site-a" in stream.calls[0]


def test_debug_level_writes_debug_lines():
    stream = Writes()
    logs.configure("debug", stream=stream)
    structlog.get_logger("t").debug("pool.connected", peer="site-b")
    assert json.loads(stream.calls[0])["level"] == "debug"


@pytest.mark.parametrize(
    "ns",
    [
        1_795_000_000_123_456_789,  # microseconds truncated, as datetime.now() does
        1_795_000_000_000_000_000,  # a whole second: isoformat() leaves the fraction out
        1_795_000_000_000_000_999,  # still a whole microsecond count of 0
        1_795_000_001_000_001_000,  # the next second, 1 µs in
        951_782_400_500_000_000,  # 2000-02-29
    ],
)
def test_timestamp_is_what_timestamper_iso_utc_writes(monkeypatch, ns):
    monkeypatch.setattr(logs.time, "time_ns", lambda: ns)
    expected = (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=ns // 1000))
    assert logs.now_iso() == expected.isoformat().replace("+00:00", "Z")


# --- the per-call lines (CallLog) ----------------------------------------------------------------------------


def _binary_stream() -> tuple[BinaryWrites, io.TextIOWrapper]:
    raw = BinaryWrites()
    return raw, io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", write_through=True)


_CALL_LINES = [  # (event, keywords): an access line, an error one, an audit line, and values orjson cannot write
    ("call", {"status": "OK", "ms": 0.412, "site": "site-a", "ingress": "peer", "peer": "site-b", "service": "x.Y",
              "method": "echo", "caller_app": None, "trace_id": "0af7651916cd43dd8448eb211c80319c", "loadtest": True}),
    ("call", {"status": "UNAVAILABLE", "ms": 12.0, "error": "naïve ✓ \u2028 \"quoted\"", "site": "site-a"}),
    ("audit", {"decision": "allow", "reason": None, "site": "site-a", "caller_app": "shop", "attempts": 2}),
    ("call", {"status": "OK", "big": 2**70, "mapping": {1: "one"}}),  # the JSONRenderer fallback
]


def test_a_call_line_is_the_line_structlog_writes(monkeypatch):
    monkeypatch.setattr(logs.time, "time_ns", lambda: 1_795_000_000_123_456_789)
    raw, stream = _binary_stream()
    logs.configure("info", stream=stream)
    assert logs._direct is not None and logs._direct.current()  # noqa: SLF001 - the fast path is taken
    direct, through_structlog = logs.CallLog("interlink.access"), structlog.get_logger("interlink.access")
    for event, keywords in _CALL_LINES:
        lead = dict(list(keywords.items())[:2])  # a call's own keys, then its fields
        direct.line(event, lead, {key: value for key, value in keywords.items() if key not in lead})
        through_structlog.info(event, **keywords)
    assert len(raw.calls) == 2 * len(_CALL_LINES)  # one write per line
    for mine, theirs in zip(raw.calls[::2], raw.calls[1::2]):
        assert mine == theirs and mine.endswith(b"\n") and mine.count(b"\n") == 1


def test_call_lines_go_through_structlog_when_it_is_configured_otherwise():
    raw, stream = _binary_stream()
    logs.configure("info", stream=stream)
    access = logs.CallLog("interlink.access")
    with structlog.testing.capture_logs() as captured:  # tests capture call lines
        access.line("call", {"status": "OK"}, {"site": "site-a"})
    assert captured == [{"status": "OK", "site": "site-a", "event": "call", "log_level": "info"}]
    assert raw.calls == []
    access.line("call", {"status": "after"}, {})  # the capture is over: written again
    assert json.loads(raw.calls[-1])["status"] == "after"
    # (structlog's loggers keep the configuration of their first line: each configuration gets a new one here,
    # as a gateway's modules get theirs after configure() at its start)
    logs.configure("warning", stream=stream)  # a level above info: no call lines
    logs.CallLog("interlink.access").line("call", {"status": "dropped"}, {})
    assert len(raw.calls) == 1
    text = Writes()
    logs.configure("info", json=False, stream=text)  # console lines
    logs.CallLog("interlink.access").line("call", {"status": "OK"}, {})
    assert len(text.calls) == 1 and "status=OK" in text.calls[0]
    assert logs._direct is None  # noqa: SLF001
    logs.configure("info", stream=stream)
    structlog.reset_defaults()  # structlog's defaults again: printed by structlog, not written here
    assert not logs._direct.current()  # noqa: SLF001


# --- call lines held until the end of a batch (interlink run) ------------------------------------------------


@pytest.fixture
def holding():
    yield
    logs.hold_call_lines(False)


def _call_line(access: logs.CallLog, n: int, pad: int = 0) -> None:
    access.line("call", {"status": "OK", "ms": 0.5}, {"site": "site-a", "n": n, "pad": "x" * pad})


def test_held_call_lines_are_the_lines_written_one_by_one_in_one_write(monkeypatch, holding):
    monkeypatch.setattr(logs.time, "time_ns", lambda: 1_795_000_000_123_456_789)
    raw, stream = _binary_stream()
    logs.configure("info", stream=stream)
    access = logs.CallLog("interlink.access")
    for n in range(3):
        _call_line(access, n)
    one_by_one = list(raw.calls)
    assert len(one_by_one) == 3
    logs.hold_call_lines(True)
    for n in range(3):
        _call_line(access, n)
    assert raw.calls == one_by_one  # held: nothing written yet
    logs.write_held()
    assert raw.calls[3:] == [b"".join(one_by_one)]
    logs.write_held()  # nothing held: nothing written
    assert len(raw.calls) == 4


def test_held_lines_go_out_in_whole_lines_no_write_longer_than_a_pipe_keeps_whole(holding):
    raw, stream = _binary_stream()
    logs.configure("info", stream=stream)
    access = logs.CallLog("interlink.access")
    logs.hold_call_lines(True)
    sizes = [300] * 40 + [2 * logs.WRITE_LIMIT] + [10] * 5 + [logs.WRITE_LIMIT - 150] * 3
    for n, pad in enumerate(sizes):
        _call_line(access, n, pad)
    logs.write_held()
    lines = [json.loads(line) for write in raw.calls for line in write.splitlines()]
    assert [line["n"] for line in lines] == list(range(len(sizes)))  # all of them, in order
    for write in raw.calls:
        assert write.endswith(b"\n")
        assert len(write) <= logs.WRITE_LIMIT or write.count(b"\n") == 1  # a longer line goes alone
    assert len(raw.calls) < len(sizes) // 4


def test_any_other_line_and_the_end_of_holding_write_the_held_lines_first(holding):
    raw, stream = _binary_stream()
    logs.configure("info", stream=stream)
    access = logs.CallLog("interlink.access")
    logs.hold_call_lines(True)
    _call_line(access, 1)
    structlog.get_logger("interlink.net").warning("connection.abuse", reason="flood")
    assert [json.loads(write)["event"] for write in raw.calls] == ["call", "connection.abuse"]
    _call_line(access, 2)
    with structlog.testing.capture_logs():  # a line that goes through structlog (tests capture call lines)
        access.line("call", {"status": "OK"}, {})
    assert json.loads(raw.calls[-1])["n"] == 2
    _call_line(access, 3)
    logs.configure("info", stream=stream)  # a new configuration: the held lines go to the stream they were made for
    assert json.loads(raw.calls[-1])["n"] == 3
    _call_line(access, 4)
    logs.hold_call_lines(False)  # the gateway's exit
    assert json.loads(raw.calls[-1])["n"] == 4
    _call_line(access, 5)  # not holding: written at once
    assert json.loads(raw.calls[-1])["n"] == 5


async def test_the_end_of_a_batch_writes_its_call_lines_before_its_bytes_leave(holding):
    """A caller that has its answer finds its call's line written (as when each line was written at once)."""
    from interlink.net.connection import Connection, FlushQueue
    from interlink.net.transport import memory_transport_pair

    raw, stream = _binary_stream()
    logs.configure("info", stream=stream)
    access = logs.CallLog("interlink.access")
    handed_over = []

    class Answering(Connection):
        def _pending_output(self) -> bytes:
            handed_over.append(len(raw.calls))  # lines written by the time the answer is handed over
            _call_line(access, 2)  # a call that fails as its transport breaks, while flushing
            return b"answer"

    queue = FlushQueue()
    ours, _ = memory_transport_pair()
    connection = Answering(ours, queue, "caller")
    logs.hold_call_lines(True)
    _call_line(access, 1)  # a call of the batch ended: its line, then its answer
    connection._mark()  # noqa: SLF001
    queue.flush()
    assert handed_over == [1] and json.loads(raw.calls[0])["n"] == 1
    assert json.loads(raw.calls[1])["n"] == 2  # the flush's own lines go at its end


def test_a_stream_that_is_gone_loses_the_held_lines_not_the_caller(holding):
    class Gone(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    logs.configure("info", stream=io.TextIOWrapper(io.BufferedWriter(Gone()), encoding="utf-8", write_through=True))
    logs.hold_call_lines(True)
    _call_line(logs.CallLog("interlink.access"), 1)
    logs.write_held()  # no exception into the batch that ends
    assert not logs._held  # noqa: SLF001


def test_held_lines_written_by_another_threads_log_lines_are_each_written_once(holding):
    import sys
    import threading

    raw, stream = _binary_stream()
    logs.configure("info", stream=stream)
    access, other = logs.CallLog("interlink.access"), structlog.get_logger("registry")
    logs.hold_call_lines(True)
    done = threading.Event()

    def registry_thread() -> None:  # (kazoo's threads log through structlog too)
        while not done.is_set():
            other.warning("registry.stale")

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as they can
    thread = threading.Thread(target=registry_thread)
    thread.start()
    try:
        for n in range(3000):
            _call_line(access, n)
    finally:
        done.set()
        thread.join()
        sys.setswitchinterval(switching)
    logs.write_held()
    lines = [json.loads(line) for write in raw.calls for line in write.splitlines()]
    assert sorted(line["n"] for line in lines if line["event"] == "call") == list(range(3000))
