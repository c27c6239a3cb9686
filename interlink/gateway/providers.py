"""Our own providers, as the provider-side gateway sees them: one pool group per export, fed by the registry.

    registry subscription (or the site file's providers:) --set_providers(export, addresses)--> ProviderDirectory
        ├─ one ConnectionPool per (protocol, address, connections), shared by the exports that list it
        └─ one PoolGroup per export (ExportRoute.pool_key): what the request path picks from

A new address gets a pool at once (its first connection is awaited by the first call, within its deadline);
an address that left every export stops taking new calls at once and is closed when its calls in flight
have finished (or after RETIRE_GRACE), so a provider set that changes never fails a call already sent. An
export whose set is empty fails its calls at once with UNAVAILABLE ("no providers"), never hangs them.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import structlog
import trio

from interlink.config import HostPort, OutlierConfig, ProviderTags
from interlink.net.pool import UNTAGGED, ConnectionPool, Outliers, PoolGroup, Router
from registry_adapters.base import Registry, without_gateways
from registry_adapters.model import Instance, ServiceKey

log = structlog.get_logger("interlink.gateway")

RETIRE_GRACE = 60.0  # longest a removed provider's calls in flight are waited for

PoolFactory = Callable[[str, HostPort, int], ConnectionPool]  # (protocol, address, connections) -> pool


class ProviderDirectory:
    def __init__(self, make_pool: PoolFactory) -> None:
        self._make_pool = make_pool
        self._groups: dict[str, PoolGroup] = {}
        self._pools: dict[tuple[str, HostPort, int], ConnectionPool] = {}
        self._scopes: dict[tuple[str, HostPort, int], trio.CancelScope] = {}
        self._connections: dict[str, int] = {}  # pool_key -> connections per provider (exports[].connections)
        self._nursery: trio.Nursery | None = None
        # pool_key -> (registry name, unix time of its last set, whether that set was stale), for status
        self.synced: dict[str, tuple[str, float, bool]] = {}
        self._outlier_policies: dict[str, OutlierConfig] = {}  # pool_key -> exports[].outlier
        self._routing: dict[str, Router] = {}  # pool_key -> exports[].routing

    def group(self, pool_key: str) -> PoolGroup | None:
        return self._groups.get(pool_key)

    @property
    def exports(self) -> list[str]:
        return sorted(self._groups)

    def addresses(self, pool_key: str) -> list[str]:
        group = self._groups.get(pool_key)
        return [pool.name for pool in group.pools] if group else []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for key in list(self._pools):
                self._start(key)
            task_status.started()
            await trio.sleep_forever()

    def set_providers(self, pool_key: str, protocol: str, addresses: Iterable[HostPort],
                      tags: dict[HostPort, ProviderTags] | None = None) -> None:
        """Make `addresses` the providers of one export (a whole set, as registries deliver it); `tags`: where
        each runs and its weight, for the export's routing stages (none: untagged, weight 100)."""
        wanted = list(dict.fromkeys(addresses))
        size = self._connections.get(pool_key, 1)
        pools = []
        for address in wanted:
            key = (protocol, address, size)
            if key not in self._pools:
                self._pools[key] = self._make_pool(protocol, address, size)
                if self._nursery is not None:
                    self._start(key)
            pools.append(self._pools[key])
        group = self._groups.get(pool_key)
        if group is None:
            group = self._groups[pool_key] = PoolGroup(f"providers of {pool_key.partition(':')[2]}", pools)
            self._apply_outlier(pool_key, group)
            self._apply_routing(pool_key, group)
        else:
            before = {pool.name for pool in group.pools}
            group.pools = pools
            if before != {pool.name for pool in pools}:
                log.info("providers.changed", export=pool_key, providers=[str(a) for a in wanted])
        if tags is not None or group.tags:
            group.tags = {id(pool): (tags or {}).get(address, UNTAGGED) for pool, address in zip(pools, wanted)}
        self._retire_unused()

    def set_connections(self, pool_key: str, protocol: str, connections: int) -> None:
        """How many connections each provider of an export gets; a change (a reload) moves the export to pools of
        the new size at once, the old ones retire when their calls are done."""
        if self._connections.get(pool_key, 1) == connections:
            return
        self._connections[pool_key] = connections
        group = self._groups.get(pool_key)
        if group is not None:
            self.set_providers(pool_key, protocol, [address for *_, address in
                                                    (self._address_of(pool) for pool in group.pools)])

    def _address_of(self, pool: ConnectionPool) -> tuple[str, HostPort]:
        return next((key[0], key[1]) for key, known in self._pools.items() if known is pool)

    def retag(self, pool_key: str, tags: dict[HostPort, ProviderTags]) -> None:
        """New tags for an export's current providers (a reload of the site file's; registries send whole sets)."""
        group = self._groups.get(pool_key)
        if group is not None:
            group.tags = {id(pool): tags.get(self._address_of(pool)[1], UNTAGGED) for pool in group.pools}

    def set_routing(self, pool_key: str, stages: tuple[str, ...], zone: str | None, unit: str | None) -> None:
        """An export's routing stages, with this gateway's zone and unit (a reload may change them)."""
        if stages:
            self._routing[pool_key] = Router(stages, zone, unit)
        else:
            self._routing.pop(pool_key, None)
        group = self._groups.get(pool_key)
        if group is not None:
            self._apply_routing(pool_key, group)

    def _apply_routing(self, pool_key: str, group: PoolGroup) -> None:
        group.router = self._routing.get(pool_key)

    def set_outlier(self, pool_key: str, policy: OutlierConfig | None) -> None:
        """An export's outlier settings (a reload may change them: ejections in force stay until they end)."""
        if policy is None:
            self._outlier_policies.pop(pool_key, None)
        else:
            self._outlier_policies[pool_key] = policy
        group = self._groups.get(pool_key)
        if group is not None:
            self._apply_outlier(pool_key, group)

    def _apply_outlier(self, pool_key: str, group: PoolGroup) -> None:
        policy = self._outlier_policies.get(pool_key)
        if policy is None:
            group.outliers = None
        elif group.outliers is None:
            group.outliers = Outliers(policy)
        else:
            group.outliers.policy = policy

    async def follow(
        self, registry: Registry, pool_key: str, protocol: str, key: ServiceKey,
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep one export's providers equal to what `registry` says about `key`, until cancelled. Ready once
        the first set is applied. A stale set (registry unreachable) keeps the last known providers; what a
        gateway published (the loop guard) is never a provider."""
        started = False
        async with registry.subscribe(key) as sets:
            async for instance_set in sets:
                self.synced[pool_key] = (registry.name, time.time(), instance_set.stale)
                if instance_set.stale:
                    log.warning("registry.stale", export=pool_key, revision=instance_set.revision,
                                keeping=self.addresses(pool_key))
                else:
                    instances = sorted(without_gateways(instance_set.instances), key=lambda i: (i.host, i.port))
                    self.set_providers(pool_key, protocol, [HostPort(i.host, i.port) for i in instances],
                                       {HostPort(i.host, i.port): _tags(i) for i in instances})
                    log.info("registry.providers", export=pool_key, registry=registry.name,
                             revision=instance_set.revision, providers=[f"{i.host}:{i.port}" for i in instances])
                if not started:
                    started = True
                    task_status.started()

    def _start(self, key: tuple[str, HostPort, int]) -> None:
        assert self._nursery is not None
        scope = trio.CancelScope()
        self._scopes[key] = scope
        self._nursery.start_soon(self._run_pool, self._pools[key], scope)

    @staticmethod
    async def _run_pool(pool: ConnectionPool, scope: trio.CancelScope) -> None:
        with scope:
            await pool.run()

    def _retire_unused(self) -> None:
        used = {id(pool) for group in self._groups.values() for pool in group.pools}
        for key, pool in list(self._pools.items()):
            if id(pool) in used:
                continue
            del self._pools[key]
            scope = self._scopes.pop(key, None)
            if scope is not None and self._nursery is not None:
                self._nursery.start_soon(self._retire, pool, scope)

    @staticmethod
    async def _retire(pool: ConnectionPool, scope: trio.CancelScope) -> None:
        """Close a provider nobody routes to any more, once its calls in flight are done."""
        with trio.move_on_after(RETIRE_GRACE):
            while any(endpoint.streams for endpoint in pool.endpoints):
                await trio.sleep(0.05)
        pool.retired = True
        for endpoint in list(pool.endpoints):  # closed by their own readers (socket released, nothing cut)
            endpoint.close("the provider left the export's provider set")
        with trio.move_on_after(2):
            while pool.endpoints:
                await trio.sleep(0.01)
        log.info("providers.retired", pool=pool.name)
        scope.cancel()


def _tags(instance: Instance) -> ProviderTags:
    """What a registry says of a provider's place and share (SOFARPC URL parameters / DNS-SD TXT: zone, unit;
    the weight from the URL or the SRV record)."""
    meta = instance.meta
    return ProviderTags(zone=meta.get("zone") or None, unit=meta.get("unit") or None, weight=instance.weight)
