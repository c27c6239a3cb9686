"""The `static` registry: provider lists written in the site file (`exports[].providers`).

Subscribing yields the configured set at once and again whenever the site file is reloaded with a different
list (`replace`); publications are kept in memory only (there is no server to tell), so `interlink status`
and the tests can still see what the gateway would publish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from registry_adapters.base import LatestValue, Publication, RegistryHealth
from registry_adapters.model import Instance, InstanceSet, ServiceKey

__all__ = ["StaticRegistry"]


class StaticRegistry:
    name = "static"

    def __init__(self, sets: Mapping[ServiceKey, frozenset[Instance]] | None = None) -> None:
        self._sets: dict[ServiceKey, frozenset[Instance]] = dict(sets or {})
        self._revision = 1
        self._watchers: dict[ServiceKey, list[LatestValue[InstanceSet]]] = {}
        self.published: dict[tuple[ServiceKey, Instance], Publication] = {}

    async def __aenter__(self) -> StaticRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.published.clear()
        for channels in self._watchers.values():
            for channel in channels:
                channel.close()

    def replace(self, sets: Mapping[ServiceKey, frozenset[Instance]]) -> None:
        """A reloaded site file: every subscriber whose set changed gets the new one."""
        old, self._sets = self._sets, dict(sets)
        self._revision += 1
        for key, channels in self._watchers.items():
            if old.get(key, frozenset()) != self._sets.get(key, frozenset()):
                for channel in channels:
                    channel.set(self._current(key))

    async def publish(self, key: ServiceKey, instance: Instance) -> Publication:
        publication = Publication(key, instance, liveness="memory")
        self.published[(key, instance)] = publication
        return publication

    async def unpublish(self, publication: Publication) -> None:
        self.published.pop((publication.key, publication.instance), None)

    @asynccontextmanager
    async def subscribe(self, key: ServiceKey) -> AsyncIterator[AsyncIterator[InstanceSet]]:
        channel: LatestValue[InstanceSet] = LatestValue()
        channel.set(self._current(key))
        self._watchers.setdefault(key, []).append(channel)
        try:
            yield channel
        finally:
            self._watchers[key].remove(channel)
            channel.close()

    def health(self) -> RegistryHealth:
        return RegistryHealth(connected=True)

    def _current(self, key: ServiceKey) -> InstanceSet:
        return InstanceSet(key, self._sets.get(key, frozenset()), revision=str(self._revision), stale=False)
