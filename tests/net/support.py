"""Small helpers shared by the tests of interlink.net (imported as tests.net.support)."""

from __future__ import annotations

from typing import Callable

import trio


async def eventually(predicate: Callable[[], object], timeout: float = 5.0, poll: float = 0.001) -> None:
    """Wait until `predicate()` is true; trio.TooSlowError after `timeout` (virtual time under a MockClock)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(poll)
