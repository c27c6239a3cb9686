"""The one small interface every registry adapter implements (REGISTRIES.md 7.1).

    registry = SomeAdapter(...)            # from the site file's `registry:` block
    async with registry:                   # connects; leaving it withdraws all publications and stops watches
        pub = await registry.publish(key, instance)        # idempotent; kept alive by the adapter
        await registry.unpublish(pub)
        async with registry.subscribe(key) as sets:        # whole InstanceSets, latest value wins
            async for instance_set in sets: ...

Rules every adapter keeps (and its tests check):
- the first item of a subscription is the current set (possibly empty), then one item per change; bursts
  coalesce and a slow reader never blocks the adapter (`LatestValue`);
- stale beats empty: a lost registry connection re-sends the last set with `stale=True`; an empty set means
  the registry said "empty";
- every publication carries the loop-guard marker (`GATEWAY_MARK`), and subscriptions made for exports drop
  instances that carry it (a gateway never routes to another gateway's publication of the same service);
- one malformed registry entry is logged and skipped; it never poisons the rest of the set.

Adapters depend only on `registry_adapters.model`, trio and their client library, never on the gateway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import trio

from registry_adapters.model import Instance, InstanceSet, ServiceKey

__all__ = ["GATEWAY_MARK", "LatestValue", "Publication", "Registry", "RegistryError", "RegistryHealth"]

GATEWAY_MARK = "interlink.gw"  # meta key (URL parameter, TXT key) naming the site whose gateway published it


class RegistryError(Exception):
    """The registry refused or could not do what was asked; the message says which server and what to do."""


@dataclass(frozen=True)
class Publication:
    """A handle for one published instance; `liveness` says what keeps it alive (`session(10s)`,
    `reassert(30s)`, `responder` ...), for logs and `interlink status`."""

    key: ServiceKey
    instance: Instance
    liveness: str
    handle: object = field(default=None, compare=False)  # adapter-private (a znode path, a DNS name ...)


@dataclass
class RegistryHealth:
    connected: bool = False
    last_sync: float | None = None  # trio.current_time() of the last complete read
    stale_since: float | None = None
    errors: int = 0
    last_error: str | None = None


class Registry(Protocol):
    name: str  # the adapter kind, for logs

    async def __aenter__(self) -> "Registry": ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def publish(self, key: ServiceKey, instance: Instance) -> Publication: ...

    async def unpublish(self, publication: Publication) -> None: ...

    def subscribe(self, key: ServiceKey) -> AbstractAsyncContextManager[AsyncIterator[InstanceSet]]: ...

    def health(self) -> RegistryHealth: ...


T = TypeVar("T")


class LatestValue(Generic[T]):
    """A one-slot channel with latest-value semantics: `set` never blocks and overwrites what the reader has
    not taken yet; iterating yields each value at most once, always the newest. `close` ends the iteration."""

    def __init__(self) -> None:
        self._value: T | None = None
        self._fresh = False
        self._closed = False
        self._event = trio.Event()

    def set(self, value: T) -> None:
        self._value = value
        self._fresh = True
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            if not self._fresh:
                if self._closed:
                    return
                await self._event.wait()
                self._event = trio.Event()
                continue
            self._fresh = False
            yield self._value  # type: ignore[misc]


def without_gateways(instances: frozenset[Instance]) -> frozenset[Instance]:
    """The loop guard for export subscriptions: drop what a gateway published."""
    return frozenset(inst for inst in instances if GATEWAY_MARK not in inst.meta)

