"""Structured logging: JSON lines (or a console rendering) through structlog, with stable event names.

Events used across the code: `call` (one access line per call), `audit` (one per cross-site decision),
`gateway.started`, `peer.accepted`, `peer.handshake_refused`, `pool.connected`, `pool.connect_failed` ...
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", *, json: bool = True, stream: TextIO | None = None) -> None:
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        # One write per line, newline included (PrintLogger writes the two apart when stderr is unbuffered,
        # as PYTHONUNBUFFERED makes it: the lines of `--workers N` processes sharing stderr then interleave).
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=True,
    )
