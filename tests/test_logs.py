"""Log lines are written whole: one write per line, newline included (worker processes share stderr)."""

from __future__ import annotations

import json

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


def test_each_line_is_one_write():
    stream = Writes()
    logs.configure("info", stream=stream)
    try:
        structlog.get_logger("t").info("call", status="OK", ms=1.5)
        structlog.get_logger("t").warning("connection.abuse", reason="flood")
    finally:
        structlog.reset_defaults()
    assert len(stream.calls) == 2
    for call in stream.calls:
        assert call.endswith("\n") and call.count("\n") == 1
        json.loads(call)
