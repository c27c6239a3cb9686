"""HTTP/2 frame constants (RFC 9113 6) and the flood budget of a connection.

`FloodBudget` is the token bucket behind the flood rules of `interlink.wire.h2conn`: frames that carry no
request or response (SETTINGS after the first, PING, PRIORITY, RST_STREAM, WINDOW_UPDATE, GOAWAY,
CONTINUATION, empty DATA, unknown types) spend a token; useful frames earn one; an empty bucket is a
flood (GOAWAY ENHANCE_YOUR_CALM).
"""

from __future__ import annotations

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4

class FloodBudget:
    """A token bucket: `burst` tokens, refilled at `per_second` and by `earn()`; `spend()` takes one and
    says False when there was none (the caller treats that as a flood)."""

    __slots__ = ("burst", "per_second", "tokens", "_last")

    def __init__(self, burst: int, per_second: float, now: float) -> None:
        self.burst = float(burst)
        self.per_second = float(per_second)
        self.tokens = float(burst)
        self._last = now

    def earn(self, count: int = 1) -> None:
        tokens = self.tokens + count
        self.tokens = tokens if tokens < self.burst else self.burst

    def spend(self, now: float) -> bool:
        tokens = self.tokens
        if tokens < 1.0:
            elapsed = now - self._last
            self._last = now
            tokens = min(self.burst, tokens + elapsed * self.per_second)
            if tokens < 1.0:
                self.tokens = tokens
                return False
        elif now - self._last > 1.0:  # refill lazily, at most once a second when not short of tokens
            tokens = min(self.burst, tokens + (now - self._last) * self.per_second)
            self._last = now
        self.tokens = tokens - 1.0
        return True
