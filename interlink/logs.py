"""Structured logging: JSON lines (or a console rendering) through structlog, with stable event names.

Events used across the code: `call` (one access line per call), `audit` (one per cross-site decision),
`gateway.started`, `peer.accepted`, `peer.handshake_refused`, `pool.connected`, `pool.connect_failed` ...

A gateway writes an access line for every call (and an audit line for every call from a peer), so a line must
be cheap (`python -m bench.log_cost` measures it). What a line says is what structlog's
`add_log_level`, `TimeStamper(fmt="iso", utc=True, key="ts")`, `format_exc_info` and `JSONRenderer()` made of
it (same keys, same order, same values), but made in fewer steps:

- one processor (`_stamp`) adds the level and the timestamp and formats `exc_info`; the timestamp's date and
  time of day are formatted once per second;
- orjson renders the line (bytes, written to the stream's binary buffer in one write, newline included);
  anything orjson cannot render the way json.dumps did goes through `JSONRenderer()` itself;
- the logger methods (`_bound_logger_class`) run the processors on the keyword dict of the call itself
  instead of copying it twice;
- the per-call lines (`CallLog`: access and audit) skip structlog's logger machinery altogether while the
  configuration is the one `configure()` made, and write the same bytes.

The lines are compact JSON (`{"status":"OK","ms":0.4,...}`, no blanks after `:` and `,`) and non-ASCII text is
written as UTF-8 rather than `\\uXXXX` escapes: parsed, a line is what it was. Known differences, none of which
interlink logs: a plain `Enum` member is written as its value and a `uuid.UUID` as its string (json.dumps
wrote their repr()), and a NaN or infinite float as `null` (json.dumps wrote `NaN`, which is not JSON).
"""

from __future__ import annotations

import collections.abc
import logging
import sys
import time
from collections import deque
from typing import Any, NamedTuple, TextIO

import orjson
import structlog
from structlog.processors import JSONRenderer, format_exc_info

try:  # the configuration in force (CallLog checks that it is still the one configure() made)
    from structlog._config import _CONFIG
except ImportError:  # a structlog without it: every line goes through structlog
    _CONFIG = None  # type: ignore[assignment]

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", *, json: bool = True, stream: TextIO | None = None) -> None:
    global _direct
    write_held()  # (to the stream they were rendered for)
    stream = stream or sys.stderr
    binary = _binary_buffer(stream) if json else None
    _direct = None
    if binary is not None:
        renderer: Any = _render_json_bytes
        # One write per line, newline included (BytesLogger writes `line + b"\n"`), so that the lines of
        # `--workers N` processes sharing stderr do not interleave.
        factory: Any = structlog.BytesLoggerFactory(binary)
    else:
        renderer = _render_json_text if json else structlog.dev.ConsoleRenderer(colors=False)
        # One write per line here too (PrintLogger writes the text and the newline apart when stderr is
        # unbuffered, as PYTHONUNBUFFERED makes it).
        factory = structlog.WriteLoggerFactory(stream)
    processors = [_stamp, renderer]
    wrapper_class = _bound_logger_class(LEVELS[level])
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper_class,
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    if binary is not None and LEVELS[level] <= logging.INFO:
        _direct = _Direct(processors, wrapper_class, factory, binary.write, binary.flush)


def _binary_buffer(stream: TextIO) -> Any:
    """The binary stream under a text stream (sys.stderr.buffer ...), flushed of any text; None if it has none
    (then lines are written as text)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None or not callable(getattr(buffer, "write", None)) or not callable(getattr(buffer, "flush", None)):
        return None
    try:
        stream.flush()  # text written before goes out first
    except (OSError, ValueError):
        return None
    return buffer


# --- processors ----------------------------------------------------------------------------------------------

_LEVEL_NAME = {"warn": "warning", "exception": "error"}  # structlog's add_log_level mapping of method names
_second: tuple[int, str] = (-1, "")  # (UTC second, its "YYYY-MM-DDTHH:MM:SS")


def now_iso() -> str:
    """The time as `TimeStamper(fmt="iso", utc=True)` writes it: datetime.now(utc).isoformat() with "Z" for
    "+00:00" (microseconds, truncated, and left out when they are 0), e.g. 2026-11-24T10:00:00.123456Z."""
    global _second
    ns = time.time_ns()
    sec = ns // 1_000_000_000
    us = ns // 1000 % 1_000_000
    cached, prefix = _second
    if sec != cached:
        t = time.gmtime(sec)
        prefix = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        _second = (sec, prefix)  # one tuple: threads see the old pair or the new one, never half of each
    return f"{prefix}.{us:06d}Z" if us else f"{prefix}Z"


def _stamp(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """add_log_level, TimeStamper(fmt="iso", utc=True, key="ts") and format_exc_info, in that order."""
    event_dict["level"] = _LEVEL_NAME.get(method_name, method_name)
    event_dict["ts"] = now_iso()
    if "exc_info" in event_dict:
        return format_exc_info(logger, method_name, event_dict)  # type: ignore[return-value]
    return event_dict


_JSON_RENDERER = JSONRenderer()  # json.dumps(default=structlog's fallback): the reference, and the fallback
# datetimes and dataclasses go to _default (json.dumps wrote their repr(), orjson would write them its own way)
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_LINE_OPTIONS = _ORJSON_OPTIONS | orjson.OPT_APPEND_NEWLINE


def _default(value: Any) -> Any:
    """A value orjson does not serialize itself, as json.dumps + JSONRenderer's fallback wrote it."""
    if isinstance(value, tuple):  # a named tuple: json.dumps wrote a list
        return list(value)
    if isinstance(value, float):  # a float subclass: json.dumps wrote the number
        return float(value)
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def _render_json_bytes(logger: Any, method_name: str, event_dict: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(event_dict, default=_default, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: non-str keys, an int beyond 64 bits, a lone surrogate ...
        return _JSON_RENDERER(logger, method_name, event_dict).encode()  # type: ignore[union-attr]


def _render_json_text(logger: Any, method_name: str, event_dict: dict[str, Any]) -> str:
    return _render_json_bytes(logger, method_name, event_dict).decode()


# --- the per-call lines ----------------------------------------------------------------------------------------


class _Direct(NamedTuple):
    """What configure() installed for JSON lines to a binary stream. A `CallLog` line goes straight to `write`
    only while structlog's configuration is still this one: tests' capture_logs changes the processors list
    in place, structlog.configure() and reset_defaults() replace it."""

    processors: list[Any]
    wrapper_class: type
    factory: Any
    write: Any
    flush: Any

    def current(self) -> bool:
        config = _CONFIG
        processors = self.processors
        return (config is not None and config.default_processors is processors and len(processors) == 2
                and processors[0] is _stamp and processors[1] is _render_json_bytes
                and config.default_wrapper_class is self.wrapper_class and config.logger_factory is self.factory)


_direct: _Direct | None = None


class CallLog:
    """The logger of the lines every call writes (`call`, `audit`): `structlog.get_logger(name).info`, with the
    same line made in fewer steps. Through structlog's lazy proxy a line made a bound logger, ran the processor
    loop and the logger's lock: about 1.7 µs of the ~5 µs a line cost inside a busy gateway (bench.inmemory,
    GW-A's two lines per call: 10 µs -> 6.5). Here the event dict is built as structlog builds it (the
    keywords, then `event`, `level`, `ts`), rendered by orjson with its newline and written with one write and
    a flush: the bytes structlog writes (tests/test_logs.py compares them). Any other configuration (console
    lines, a level above info, tests capturing logs) goes through structlog."""

    __slots__ = ("_proxy",)

    def __init__(self, name: str) -> None:
        self._proxy = structlog.get_logger(name)

    def line(self, event: str, lead: dict[str, Any], fields: dict[str, Any]) -> None:
        """What `structlog.get_logger(name).info(event, **lead, **fields)` writes (the keys of `lead`, then the
        call's fields), without making a keyword dict of them first: passing them as keywords cost ~0.4 µs of
        each line."""
        global _held_size
        direct = _direct
        if direct is None or not direct.current():
            self._proxy.info(event, **lead, **fields)
            return
        kw = {**lead, **fields, "event": event, "level": "info", "ts": now_iso()}
        try:
            line = orjson.dumps(kw, default=_default, option=_LINE_OPTIONS)
        except TypeError:  # what _render_json_bytes falls back on
            line = _JSON_RENDERER(None, "info", kw).encode() + b"\n"  # type: ignore[union-attr]
        if _holding:
            if _held_size + len(line) > WRITE_LIMIT:
                write_held()
            _held.append(line)
            _held_size += len(line)
            return
        direct.write(line)
        direct.flush()


# --- call lines held until the end of a batch ----------------------------------------------------------------
#
# A busy gateway ends many calls per batch of input (one read of many requests or answers), and a line written
# when its call ends is a system call: two per call on the peer port (access + audit), two thirds of all of
# GW-A's system calls in bench/run.sh's Bolt and translated cells. `interlink run` holds them
# (hold_call_lines): the lines a batch makes are written when the batch ends (net/connection.FlushQueue.flush,
# just before the bytes the batch queued leave: a caller that has its answer finds its line written, as when
# each line was written at once), in writes of whole lines of at most WRITE_LIMIT bytes, in the order they
# were made. Lines made outside any batch (a refused TLS handshake's audit line) wait at most
# HELD_LINES_INTERVAL (control/runner.py writes them); any other log line writes the held ones first; so do
# configure() and the end of holding (the gateway's exit).

WRITE_LIMIT = 4096  # PIPE_BUF: a write this long to a pipe never interleaves with another worker's (--workers)
HELD_LINES_INTERVAL = 0.1  # seconds: the longest a line made outside a batch waits

# Rendered call lines not written yet (about WRITE_LIMIT bytes at most, or one longer line). Appended to by the
# gateway's thread only; any thread's log line may write them (a registry client's thread): taken one by one
# (deque.popleft is atomic), none is lost or written twice.
_held: deque[bytes] = deque()
_held_size = 0
_holding = False


def hold_call_lines(hold: bool) -> None:
    """Call lines are held until write_held() (True), or written as they are made (False: what is held goes now)."""
    global _holding
    _holding = hold
    if not hold:
        write_held()


def write_held() -> None:
    """Write the held call lines, in one write."""
    global _held_size
    if not _held:
        return
    _held_size = 0
    lines = []
    while _held:
        try:
            lines.append(_held.popleft())
        except IndexError:  # another thread took the last one
            break
    data = b"".join(lines)
    direct = _direct
    if direct is None:
        return
    try:
        direct.write(data)
        direct.flush()
    except (OSError, ValueError):  # the stream is gone (a closed pipe, a closed file): the lines, not the calls
        pass


# --- the logger methods --------------------------------------------------------------------------------------


def _bound_logger_class(min_level: int) -> type:
    """structlog's filtering bound logger for `min_level`, whose methods at or above it build the event dict
    from the call's own keyword dict (a fresh dict already) instead of copying the context and then the
    keywords. Same event dict (context, keywords, then "event"), same processors, same output; bind(),
    log(), exception(), the async methods and the methods below `min_level` are structlog's."""
    base: Any = structlog.make_filtering_bound_logger(min_level)

    def make(name: str) -> Any:
        def log_method(self: Any, event: str, *args: Any, **kw: Any) -> Any:
            if _held:
                write_held()  # held call lines first: the stream keeps the order the lines were made in
            if args:
                event = _interpolate(event, args)
            context = self._context
            if context:
                kw = {**context, **kw}
            kw["event"] = event
            logger = self._logger
            out: Any = kw
            try:
                for processor in self._processors:
                    out = processor(logger, name, out)
            except structlog.DropEvent:
                return None
            if isinstance(out, (str, bytes, bytearray)):
                return getattr(logger, name)(out)
            if isinstance(out, tuple):
                return getattr(logger, name)(*out[0], **out[1])
            if isinstance(out, dict):
                return getattr(logger, name)(**out)
            raise ValueError(
                "Last processor didn't return an appropriate value.  Valid return values are a dict, a tuple of "
                "(args, kwargs), bytes, or a str."
            )

        log_method.__name__ = name
        return log_method

    methods: dict[str, Any] = {}
    for level, name in ((logging.DEBUG, "debug"), (logging.INFO, "info"), (logging.WARNING, "warning"),
                        (logging.ERROR, "error"), (logging.CRITICAL, "critical")):  # fmt: skip
        if level >= min_level:
            methods[name] = make(name)
    aliases = {"msg": "info", "warn": "warning", "fatal": "critical"}
    methods.update({alias: methods[name] for alias, name in aliases.items() if name in methods})
    return type(f"FastBoundLoggerFilteringAt{logging.getLevelName(min_level).title()}", (base,), methods)


def _interpolate(event: str, args: tuple[Any, ...]) -> str:
    """structlog's positional / mapping interpolation of `log.info("x %s", y)`."""
    if len(args) == 1 and isinstance(args[0], collections.abc.Mapping) and args[0]:
        return event % args[0]
    return event % args
