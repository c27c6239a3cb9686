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
