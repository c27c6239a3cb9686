"""The cheap parts of the process wiring: ConnectionLimits.of (site-file limits -> per-connection settings)
and ProviderDirectory (one pool per provider address, one group per export, retiring what left)."""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from interlink.config import HostPort, Limits, Listen, PeerConfig, SiteConfig, TlsFiles
from interlink.gateway.gateway import OUTBOUND_OUTPUT_BYTES, ConnectionLimits
from interlink.gateway.providers import ProviderDirectory
from interlink.net.connection import IdleRule
from interlink.net.pool import ConnectionPool
from registry_adapters.base import GATEWAY_MARK
from registry_adapters.model import Instance, InstanceSet, ServiceKey


def site(peers: dict[str, int]) -> SiteConfig:
    return SiteConfig(
        path=Path("site.yaml"), site="site-b", listen=Listen(), tls=TlsFiles(Path("ca"), Path("c"), Path("k")),
        peers={name: PeerConfig(name, (), Path("ca"), "d", max_concurrent_streams=streams) for name, streams in peers.items()},
    )


def test_connection_limits_carry_the_site_files_limits_to_each_kind_of_connection():
    limits = Limits(max_concurrent_streams=7, initial_window=1000, connection_window=5000, peer_initial_window=2000,
                    peer_connection_window=9000, idle_timeout=3.0, peer_idle_timeout=30.0, preface_timeout=2.0,
                    connection_output_bytes=1234, max_header_list_bytes=4096)
    got = ConnectionLimits.of(limits, site({"site-a": 40, "site-c": 90}))
    assert (got.local_h2.max_concurrent_streams, got.local_h2.initial_window, got.local_h2.connection_window) == (7, 1000, 5000)
    assert (got.peer_h2.max_concurrent_streams, got.peer_h2.initial_window, got.peer_h2.connection_window) == (90, 2000, 9000)
    assert got.local_h2.max_header_list_bytes == got.peer_h2.max_header_list_bytes == 4096
    assert (got.local_h2_policy.idle_rule, got.local_h2_policy.idle_timeout, got.local_h2_policy.preface_timeout) == (
        IdleRule.NO_CALLS, 3.0, 2.0)
    assert (got.local_bolt_policy.idle_rule, got.local_bolt_policy.preface_timeout) == (IdleRule.NO_FRAMES, math.inf)
    assert (got.peer_policy.idle_timeout, got.peer_policy.preface_timeout, got.peer_bolt_policy.preface_timeout) == (
        30.0, 2.0, math.inf)
    assert got.outbound_policy.output_limit == 1234 and got.outbound_bolt_policy.output_limit == OUTBOUND_OUTPUT_BYTES
    assert ConnectionLimits.of(Limits(), site({})).peer_h2.max_concurrent_streams == 256  # no peers: the default


class Factory:
    """Pools whose connections never come up: the directory's bookkeeping is what is tested."""

    def __init__(self) -> None:
        self.made: list[tuple[str, HostPort]] = []

    def __call__(self, protocol: str, address: HostPort, connections: int = 1) -> ConnectionPool:
        self.made.append((protocol, address) if connections == 1 else (protocol, address, connections))
        return ConnectionPool(str(address), trio.sleep_forever, size=connections, connect_timeout=1e6)


A, B, C = HostPort("10.0.0.1", 1), HostPort("10.0.0.2", 2), HostPort("::1", 3)


async def test_providers_get_one_pool_per_address_shared_by_exports_and_one_group_per_export(autojump_clock):
    factory = Factory()
    directory = ProviderDirectory(factory)
    directory.set_providers("triple:demo.Echo", "triple", [A, B, A])  # a duplicate is one provider
    async with trio.open_nursery() as nursery:
        await nursery.start(directory.run)
        directory.set_providers("triple:demo.Other", "triple", [B, C])  # B is shared; C starts at once
        assert factory.made == [("triple", A), ("triple", B), ("triple", C)]
        assert directory.exports == ["triple:demo.Echo", "triple:demo.Other"]
        assert directory.addresses("triple:demo.Echo") == ["10.0.0.1:1", "10.0.0.2:2"]
        assert directory.group("triple:demo.Other").name == "providers of demo.Other"
        assert directory.group("triple:demo.Other").pools[0] is directory.group("triple:demo.Echo").pools[1]
        await wait_for(lambda: all(pool.connecting for pool in directory._pools.values()))
        retired = directory._pools["triple", A, 1]
        directory.set_providers("triple:demo.Echo", "triple", [B])  # A left every export: retired
        assert directory.addresses("triple:demo.Echo") == ["10.0.0.2:2"] and directory.addresses("nope") == []
        await wait_for(lambda: retired.retired)
        assert ("triple", A) not in directory._pools and ("triple", A) not in directory._scopes
        nursery.cancel_scope.cancel()


async def wait_for(predicate, timeout: float = 120.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


class Registry:
    """Delivers the given instance sets, then waits."""

    name = "fake"

    def __init__(self, sets: list[InstanceSet]) -> None:
        self.sets = sets

    @asynccontextmanager
    async def subscribe(self, key):
        async def sets():
            for item in self.sets:
                yield item
            await trio.sleep_forever()
        yield sets()


async def test_a_registry_feeds_an_exports_providers_and_a_stale_set_keeps_the_last_known(autojump_clock):
    key = ServiceKey("demo.Echo", "tri")
    gateway = Instance("10.9.9.9", 9, meta={GATEWAY_MARK: "site-b"})
    fresh = InstanceSet(key, frozenset({Instance("10.0.0.2", 2), Instance("10.0.0.1", 1), gateway}), "1", False)
    stale = InstanceSet(key, frozenset(), "2", True)
    directory = ProviderDirectory(Factory())
    async with trio.open_nursery() as nursery:
        await nursery.start(directory.run)
        await nursery.start(directory.follow, Registry([fresh, stale]), "triple:demo.Echo", "triple", key)
        await trio.sleep(1)
        assert directory.addresses("triple:demo.Echo") == ["10.0.0.1:1", "10.0.0.2:2"]
        nursery.cancel_scope.cancel()


async def test_an_exports_connection_count_makes_its_pools_and_a_change_moves_it(autojump_clock):
    factory = Factory()
    directory = ProviderDirectory(factory)
    directory.set_connections("triple:demo.Echo", "triple", 3)
    directory.set_providers("triple:demo.Echo", "triple", [A, B])
    directory.set_providers("triple:demo.Other", "triple", [B])  # the default: its own pool of one
    async with trio.open_nursery() as nursery:
        await nursery.start(directory.run)
        assert factory.made == [("triple", A, 3), ("triple", B, 3), ("triple", B)]
        assert [pool.size for pool in directory.group("triple:demo.Echo").pools] == [3, 3]
        old = directory.group("triple:demo.Echo").pools[0]
        directory.set_connections("triple:demo.Echo", "triple", 2)  # a reload: new pools, the old ones retire
        assert [pool.size for pool in directory.group("triple:demo.Echo").pools] == [2, 2]
        assert directory.addresses("triple:demo.Echo") == ["10.0.0.1:1", "10.0.0.2:2"]
        await wait_for(lambda: old.retired)
        nursery.cancel_scope.cancel()


async def test_a_reload_retags_the_site_files_providers(autojump_clock):
    from interlink.config import ProviderTags

    directory = ProviderDirectory(Factory())
    directory.set_providers("triple:demo.Echo", "triple", [A, B], {A: ProviderTags("hz-a", None, 80)})
    group = directory.group("triple:demo.Echo")
    assert [group.tags[id(pool)] for pool in group.pools] == [ProviderTags("hz-a", None, 80), ProviderTags()]
    directory.retag("triple:demo.Echo", {B: ProviderTags("hz-b", "u01", 20)})
    assert [group.tags[id(pool)] for pool in group.pools] == [ProviderTags(), ProviderTags("hz-b", "u01", 20)]
