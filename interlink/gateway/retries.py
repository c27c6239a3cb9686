"""Safe retries (imports[].retry, exports[].retry): when a call may go to another upstream, and how much.

A call is tried again, on another connection of its group (another gateway of the peer site, another provider;
for an import, the next site of its `from:` list when the first one's links are down), only when

- it is known not to have reached an upstream (`unprocessed`): the stream was refused (RST_STREAM
  REFUSED_STREAM), it was above the last stream id of a GOAWAY, its connection was lost before its request was
  handed to the socket, or a peer gateway refused it before forwarding it (it says so with
  x-interlink-unprocessed, wire/link_headers.py) — or its method is one of `idempotent_methods` and the answer
  was UNAVAILABLE (a lost connection, a provider or gateway that said so);
- its request can be sent again whole: the gateway kept it (a Bolt request; a translated request's one message;
  a Triple request's bytes up to REPLAY_LIMIT, and only once the caller has ended it or before it sent any:
  a streaming call is never tried again once a message went out), and nothing of the answer reached the caller;
- it has tries left (`attempts`, the first included) and time left (MIN_TIME_LEFT before its deadline);
- the service's budget allows it: retries over the last WINDOW seconds stay within `budget_percent` of its calls
  (at least MIN_RETRIES), so that retries never multiply load on an upstream that is failing anyway.

`RetryBudgets` is one per gateway, kept across reloads, keyed by (ingress, service): bounded by the site file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from interlink.net import trips

if TYPE_CHECKING:
    from interlink.config import RetryConfig

log = structlog.get_logger("interlink.gateway.retries")

WINDOW = 10  # seconds a budget looks back (in one-second slots)
MIN_RETRIES = 10  # retries any service may make per window, however few its calls
MIN_TIME_LEFT = 0.005  # seconds before the deadline below which a call is not tried again
REPLAY_LIMIT = 64 * 1024  # request bytes kept per Triple call to send it again; beyond, it is not retried


class RetryBudget:
    """Calls and retries of one service over the last WINDOW seconds, in one-second slots."""

    __slots__ = ("calls", "retries", "second")

    def __init__(self) -> None:
        self.calls = [0] * WINDOW
        self.retries = [0] * WINDOW
        self.second = 0

    def _advance(self, now: float) -> int:
        second = int(now)
        if second != self.second:
            if not 0 < second - self.second < WINDOW:
                self.calls, self.retries = [0] * WINDOW, [0] * WINDOW
            else:
                for passed in range(self.second + 1, second + 1):
                    self.calls[passed % WINDOW] = self.retries[passed % WINDOW] = 0
            self.second = second
        return second % WINDOW

    def called(self, now: float) -> None:
        self.calls[self._advance(now)] += 1

    def spend(self, now: float, percent: int) -> bool:
        """One retry, if the budget has room for it."""
        slot = self._advance(now)
        if sum(self.retries) >= max(MIN_RETRIES, sum(self.calls) * percent // 100):
            return False
        self.retries[slot] += 1
        return True


class RetryBudgets:
    """The gateway's budgets, one per (ingress, service) that has a retry policy."""

    def __init__(self) -> None:
        self._budgets: dict[tuple[str, str], RetryBudget] = {}

    def of(self, ingress: str, service: str) -> RetryBudget:
        key = (ingress, service)
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = RetryBudget()
        return budget


def may_retry(policy: RetryConfig, attempts: int, status: str, unprocessed: bool, method: str | None) -> bool:
    """Whether a failed attempt qualifies for another (before replay, time and budget are asked)."""
    if attempts >= policy.attempts:
        return False
    return unprocessed or (status == "UNAVAILABLE" and policy.idempotent(method))


def over_budget(service: str, upstream: str) -> None:
    trips.trip(trips.RETRY_BUDGET)
    log.info("retry.over_budget", service=service, upstream=upstream)
