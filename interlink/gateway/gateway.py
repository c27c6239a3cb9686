"""One site's gateway process: listeners, connection pools, timers — one nursery tree. Every request the
listeners' connections receive becomes a call of the call core (gateway/call.py).

    Gateway.run
      ├─ DeadlineTimers.run                      every call's deadline, one heap
      ├─ ConnectionTable.run                     every connection's timeouts (preface, idle, partial frame,
      │                                          write), one watchdog
      ├─ ConnectionPool.run  (per peer endpoint)  long-lived mTLS to peer gateways: HTTP/2 and Bolt
      ├─ ConnectionPool.run  (per provider)       h2c or Bolt to our providers
      ├─ local triple listener                    h2c from our site's callers
      ├─ local bolt listener                      Bolt from our site's callers
      └─ peer listener                            mTLS from peer gateways: identity, then HTTP/2 or
                                                  Bolt as negotiated by ALPN

Every listener caps its connections (interlink.net.listener); every connection gets the limits of the site
file's `limits:` for its kind (local caller, peer gateway, our own outbound connection).
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass, replace

import structlog
import trio

from interlink.config import HostPort, Limits, PeerConfig, SiteConfig
from interlink.gateway.call import CallCore
from interlink.gateway.deadlines import DeadlineTimers
from interlink.gateway.providers import ProviderDirectory
from interlink.net import heap, tls
from interlink.net.boltlink import BoltEndpoint, PartialFrameBudget
from interlink.net.connection import ConnectionPolicy, ConnectionTable, FlushQueue, IdleRule
from interlink.net.h2link import H2Endpoint, H2Settings
from interlink.net.listener import FD_RESERVE, Listener, bind, raise_fd_limit
from interlink.net.peerlink import PeerRefused, accept_peer, connect_tcp, dial_peer
from interlink.net.pool import ConnectionPool, PoolGroup
from interlink.net.transport import SocketTransport, TlsTransport, remote_of
from interlink.routes import Snapshot
from registry_adapters.model import Instance, ServiceKey
from registry_adapters.static import StaticRegistry

log = structlog.get_logger("interlink.gateway")

PROVIDER_MAX_STREAMS = 1000
OUTBOUND_OUTPUT_BYTES = 16 << 20  # queued for one provider or peer link before it counts as congested


@dataclass
class BoundAddresses:
    """Where the listeners actually listen (the ports the OS chose, when a test asks for port 0)."""

    triple: HostPort | None = None
    bolt: HostPort | None = None
    peer: HostPort | None = None


@dataclass(frozen=True)
class ConnectionLimits:
    """The site file's `limits:` as each kind of connection needs them."""

    local_h2: H2Settings
    peer_h2: H2Settings
    local_h2_policy: ConnectionPolicy
    local_bolt_policy: ConnectionPolicy
    peer_policy: ConnectionPolicy
    peer_bolt_policy: ConnectionPolicy
    outbound_policy: ConnectionPolicy  # HTTP/2 to providers and peers
    outbound_bolt_policy: ConnectionPolicy

    @classmethod
    def of(cls, limits: Limits, config: SiteConfig) -> ConnectionLimits:
        def h2(max_streams: int, window: int, connection_window: int) -> H2Settings:
            return H2Settings(
                max_concurrent_streams=max_streams,
                initial_window=window,
                connection_window=connection_window,
                max_header_list_bytes=limits.max_header_list_bytes,
                premature_reset_streams=limits.premature_reset_streams,
                premature_reset_window=limits.premature_reset_window,
                control_frame_burst=limits.control_frame_burst,
                control_frames_per_second=limits.control_frames_per_second,
            )

        def inbound(idle: float, rule: IdleRule, preface: float = limits.preface_timeout) -> ConnectionPolicy:
            return ConnectionPolicy(
                preface_timeout=preface, idle_timeout=idle, idle_rule=rule,
                partial_frame_timeout=limits.partial_frame_timeout, write_timeout=limits.write_timeout,
                output_limit=limits.connection_output_bytes,
            )

        peer_streams = max((peer.max_concurrent_streams for peer in config.peers.values()), default=256)
        return cls(
            local_h2=h2(limits.max_concurrent_streams, limits.initial_window, limits.connection_window),
            peer_h2=h2(peer_streams, limits.peer_initial_window, limits.peer_connection_window),
            local_h2_policy=inbound(limits.idle_timeout, IdleRule.NO_CALLS),
            # Bolt has no preface: a client may open a connection and send nothing until its first call or
            # heartbeat (Java SOFARPC does); such a connection is judged by the idle timeout instead.
            local_bolt_policy=inbound(limits.idle_timeout, IdleRule.NO_FRAMES, preface=math.inf),
            peer_policy=inbound(limits.peer_idle_timeout, IdleRule.NO_FRAMES),
            peer_bolt_policy=inbound(limits.peer_idle_timeout, IdleRule.NO_FRAMES, preface=math.inf),
            # HTTP/2: the output limit caps what queues ahead of a new call's bytes (head-of-line latency).
            outbound_policy=ConnectionPolicy(
                partial_frame_timeout=limits.partial_frame_timeout, write_timeout=limits.write_timeout,
                output_limit=limits.connection_output_bytes,
            ),
            # Bolt has no flow control: a congested connection takes no new calls, and it carries every
            # caller's requests, so its limit is generous (the write timeout still ends a dead one).
            outbound_bolt_policy=ConnectionPolicy(
                partial_frame_timeout=limits.partial_frame_timeout, write_timeout=limits.write_timeout,
                output_limit=max(OUTBOUND_OUTPUT_BYTES, limits.connection_output_bytes),
            ),
        )


class Gateway:
    def __init__(self, snapshot: Snapshot) -> None:
        """`snapshot`: what control/ built from the site file (build_snapshot); SIGHUP brings a new one (`install`)."""
        config = snapshot.config
        self.config = config
        self._snapshot = snapshot
        self.limits = ConnectionLimits.of(config.limits, config)
        self.flush_queue = FlushQueue()
        self.timers = DeadlineTimers(self.flush_queue)
        self.connections = ConnectionTable()
        self.partial_frames = PartialFrameBudget(config.limits.partial_frame_budget_bytes)
        self.bound = BoundAddresses()
        # We dial only the peers we import from (per protocol); the others only call us.
        self.peer_groups = self._peer_groups("triple")
        self.bolt_peer_groups = self._peer_groups("bolt")
        self.providers = ProviderDirectory(self._provider_pool)
        # Providers listed in the site file come through the `static` registry adapter, like any registry's.
        self.static_registry = StaticRegistry(_static_sets(self._snapshot))
        self._followed_static: set[str] = set()
        self._all_pools = [
            pool for groups in (self.peer_groups, self.bolt_peer_groups) for group in groups.values() for pool in group.pools
        ]
        self.reuse_port = False  # set for --workers N: several processes share the listening ports
        self._nursery: trio.Nursery | None = None
        self.calls = CallCore(
            snapshot, peer_group=self._peer_group, provider_group=self.providers.group, timers=self.timers,
            flush_queue=self.flush_queue,
        )
        self._listener_scopes: list[trio.CancelScope] = []
        self._ingress: set[H2Endpoint | BoltEndpoint] = set()
        self.listening = False  # every configured listener is open
        self.published: set[tuple[str, str]] = set()  # (service, protocol) of the imports in our registry

    def _peer_group(self, protocol: str, site: str) -> PoolGroup | None:
        return (self.peer_groups if protocol == "triple" else self.bolt_peer_groups).get(site)

    def _peer_groups(self, protocol: str) -> dict[str, PoolGroup]:
        dialed = {site for item in self.config.imports if item.protocol == protocol for site in item.sites}
        if protocol == "triple" and self.config.messaging is not None:  # messages cross as MessageLink calls
            dialed |= {item.to for item in self.config.messaging.imports}
        dial = self._peer_pool if protocol == "triple" else self._bolt_peer_pool
        return {
            name: PoolGroup(f"site {name}", [dial(peer, address) for address in peer.endpoints])
            for name, peer in self.config.peers.items()
            if name in dialed
        }

    async def _follow_static(self, nursery: trio.Nursery, snapshot: Snapshot) -> None:
        """Exports that list their providers in the site file follow the static registry (ready when each
        has its first set); the others follow the site's registry (control/registry_sync.py)."""
        for route in snapshot.export_routes:
            if route.providers and route.pool_key not in self._followed_static:
                self._followed_static.add(route.pool_key)
                await nursery.start(
                    self.providers.follow, self.static_registry, route.pool_key, route.protocol, route.registry_key
                )

    def _set_shadow_providers(self, snapshot: Snapshot) -> None:
        """Load-test calls' providers (exports with shadow_providers:), from the site file only; and every
        export's connections per provider, outlier settings and routing stages."""
        for route in snapshot.export_routes:
            self.providers.set_connections(route.pool_key, route.protocol, route.connections)
            self.providers.set_outlier(route.pool_key, route.outlier)
            self.providers.set_routing(route.pool_key, route.routing, snapshot.config.zone, snapshot.config.unit)
            if route.providers:  # the site file's tags (a registry's come with its sets)
                self.providers.retag(route.pool_key, dict(route.provider_tags))
        for route in snapshot.export_routes:
            if route.shadow_pool_key is not None:
                self.providers.set_providers(route.shadow_pool_key, route.protocol, route.shadow_providers)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def install(self, snapshot: Snapshot) -> None:
        """Swap in a new snapshot (routes, ACLs, access domains, certificates and trust anchors): calls in
        flight finish on the snapshot they started with, new calls and new connections use the new one.
        Providers listed in the site file change in place (a removed provider's calls in flight finish).
        What needs a restart (control/snapshot.py `restart_needed`) is refused before this is called."""
        config = snapshot.config
        self.static_registry.replace(_static_sets(snapshot))  # removed exports get an empty set
        if self._nursery is not None:
            self._nursery.start_soon(self._follow_static, self._nursery, snapshot)
        self._set_shadow_providers(snapshot)
        previous, self._snapshot = self._snapshot, snapshot
        self.calls.install(snapshot)
        self.config = config
        log.info("config.reloaded", site=config.site, path=str(config.path))
        self._retrust(previous, snapshot)

    def _retrust(self, previous: Snapshot, snapshot: Snapshot) -> None:
        """Live peer connections judged again after a reload. A connection from a peer whose certificate no
        longer chains to that peer's CA bundle (or whose access domain is gone) is closed: removing a CA
        takes effect at once. Our own connections to a peer are replaced without failing a call (a new one
        is dialled, the old one finishes its calls) when our certificate changed, so that the peer sees the
        new one, or when theirs no longer chains to the new bundle."""
        own_changed = previous.own_identity != snapshot.own_identity
        for endpoint in list(self._ingress):
            site = endpoint.attributes.get("site")
            if site is None:
                continue  # a local caller
            reason = _inbound_refusal(snapshot, site, endpoint.attributes.get("sni"), endpoint.attributes.get("chain"))
            if reason is not None:
                log.warning("peer.revoked", peer=site, remote=endpoint.remote, reason=reason)
                self.calls.audit("deny", {"site": snapshot.site, "ingress": "peer", "peer": site, "remote": endpoint.remote},
                                 f"connection closed after reload: {reason}", "revoked")
                endpoint.shutdown(f"no longer trusted: {reason}")
        for name, group in [*self.peer_groups.items(), *self.bolt_peer_groups.items()]:
            for pool in group.pools:
                for endpoint in list(pool.endpoints):
                    reason = "our certificate changed" if own_changed else _untrusted(endpoint.attributes.get("chain"), snapshot, name)
                    if reason is not None:
                        pool.recycle(endpoint, reason)
        self.flush_queue.flush()

    async def run(self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
        fd_limit = raise_fd_limit()
        heap.tune()
        self.connections.max_total = max(16, fd_limit - FD_RESERVE)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.calls.nursery = nursery
            nursery.start_soon(self.timers.run)
            nursery.start_soon(self.connections.run)
            await nursery.start(self.providers.run)
            await self._follow_static(nursery, self._snapshot)
            self._set_shadow_providers(self._snapshot)
            for pool in self._all_pools:
                nursery.start_soon(pool.run)
            listen = self.config.listen
            if listen.triple is not None:
                self.bound.triple = await nursery.start(self._listen, "triple", listen.triple, self._serve_local_connection)
            if listen.bolt is not None:
                self.bound.bolt = await nursery.start(self._listen, "bolt", listen.bolt, self._serve_local_bolt_connection)
            if listen.peer is not None:
                self.bound.peer = await nursery.start(self._listen, "peer", listen.peer, self._serve_peer_connection)
            log.info(
                "gateway.started",
                site=self.config.site,
                triple=str(self.bound.triple) if self.bound.triple else None,
                bolt=str(self.bound.bolt) if self.bound.bolt else None,
                peer=str(self.bound.peer) if self.bound.peer else None,
                peers=sorted(self.peer_groups),
                exports=self.providers.exports,
                imports=sorted([*self._snapshot.imports, *self._snapshot.bolt_imports]),
                fd_limit=fd_limit,
            )
            self.listening = True
            task_status.started(self)

    def stop(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def calls_in_flight(self) -> int:
        return sum(endpoint.in_flight for endpoint in self._ingress)

    @property
    def ingress(self) -> frozenset[H2Endpoint | BoltEndpoint]:
        """The connections callers and peers opened to us (a peer's carry attributes["site"])."""
        return frozenset(self._ingress)

    def calls_in_flight_by_ingress(self) -> dict[str, int]:
        counts = {"local": 0, "peer": 0}
        for endpoint in self._ingress:
            counts["peer" if "site" in endpoint.attributes else "local"] += endpoint.in_flight
        return counts

    async def drain(self, grace: float) -> None:
        """Stop accepting, tell every caller and peer (GOAWAY) to go elsewhere, let in-flight calls finish
        for up to `grace` seconds, then stop."""
        for scope in self._listener_scopes:
            scope.cancel()
        self.listening = False
        for endpoint in list(self._ingress):
            endpoint.goaway()
        self.flush_queue.flush()
        log.info("gateway.draining", site=self.config.site, calls_in_flight=self.calls_in_flight, grace=grace)
        with trio.move_on_after(grace):
            while self.calls_in_flight:
                await trio.sleep(0.05)
        log.info("gateway.stopped", site=self.config.site, abandoned_calls=self.calls_in_flight)
        self.stop()

    # --- listeners -----------------------------------------------------------------------------------------

    async def _listen(self, name: str, address: HostPort, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        limits = self.config.limits
        listener = Listener(
            name, bind(address.host, address.port, reuse_port=self.reuse_port), self.connections,
            max_connections=min(limits.max_connections, self.connections.max_total),
            max_per_source=limits.max_connections_per_source,
        )
        host, port = listener.address
        task_status.started(HostPort(host, port))
        with trio.CancelScope() as scope:
            self._listener_scopes.append(scope)
            # Connections live in the gateway's nursery, not the listener's: closing the listener on drain
            # must not cut the calls in flight.
            assert self._nursery is not None
            await listener.serve(handler, self._nursery)

    async def _serve_local_connection(self, sock: socket.socket) -> None:
        transport = SocketTransport(sock)
        endpoint = H2Endpoint(
            transport,
            client_side=False,
            flush_queue=self.flush_queue,
            settings=self.limits.local_h2,
            on_request=self.calls.on_local_h2,
            name=f"local:{transport.remote}",
            policy=self.limits.local_h2_policy,
        )
        await self._serve_ingress(endpoint, "triple")

    async def _serve_local_bolt_connection(self, sock: socket.socket) -> None:
        transport = SocketTransport(sock)
        endpoint = BoltEndpoint(
            transport,
            flush_queue=self.flush_queue,
            on_request=self.calls.on_local_bolt,
            on_refused=self.calls.on_local_bolt_refused,
            max_pending=self.config.limits.bolt_max_pending,
            max_frame_size=self.config.limits.bolt_max_frame_bytes,
            partial_budget=self.partial_frames,
            name=f"local-bolt:{transport.remote}",
            policy=self.limits.local_bolt_policy,
        )
        await self._serve_ingress(endpoint, "bolt")

    async def _serve_ingress(self, endpoint: H2Endpoint | BoltEndpoint, listener: str) -> None:
        self._ingress.add(endpoint)
        self.connections.add(endpoint, listener)
        try:
            await endpoint.run()
        finally:
            self._ingress.discard(endpoint)
            self.connections.discard(endpoint)

    async def _serve_peer_connection(self, sock: socket.socket) -> None:
        snapshot = self._snapshot
        assert snapshot.server_tls is not None
        remote = remote_of(sock)
        try:
            link = await accept_peer(
                sock, snapshot.server_tls, snapshot.config.trust_domain, self.config.limits.handshake_timeout, remote
            )
        except PeerRefused as exc:
            log.warning("peer.handshake_refused", remote=remote, error=str(exc))
            self.calls.audit("deny", {"site": snapshot.site, "ingress": "peer", "remote": remote}, str(exc), "handshake")
            return
        transport, site, sni, alpn = link.transport, link.site, link.sni, link.alpn
        chain = transport.verified_chain()
        current = self._snapshot
        if current is not snapshot:  # a reload during the handshake: judged by what is configured now
            reason = _inbound_refusal(current, site, sni, chain)
            if reason is not None:
                log.warning("peer.revoked", peer=site, remote=remote, reason=reason)
                self.calls.audit("deny", {"site": current.site, "ingress": "peer", "peer": site, "remote": remote},
                                 f"handshake finished after a reload: {reason}", "revoked")
                transport.close()
                return
        endpoint: H2Endpoint | BoltEndpoint
        if alpn == tls.ALPN_BOLT:
            endpoint = BoltEndpoint(
                transport, flush_queue=self.flush_queue, on_request=self.calls.on_peer_bolt,
                on_refused=self.calls.on_peer_bolt_refused,
                max_pending=self.config.limits.bolt_max_pending,
                max_frame_size=self.config.limits.bolt_max_frame_bytes, partial_budget=self.partial_frames,
                name=f"peer-in-bolt:{site}@{remote}", policy=self.limits.peer_bolt_policy, link=True,
            )
        else:
            endpoint = H2Endpoint(
                transport,
                client_side=False,
                flush_queue=self.flush_queue,
                settings=self.limits.peer_h2,
                on_request=self.calls.on_peer_h2,
                on_refused=self._audit_peer_refusal,
                name=f"peer-in:{site}@{remote}",
                policy=self.limits.peer_policy,
            )
        endpoint.attributes["site"] = site
        endpoint.attributes["sni"] = sni
        endpoint.attributes["chain"] = chain
        log.info("peer.accepted", peer=site, remote=remote, sni=sni, tls=transport.version(), alpn=alpn)
        await self._serve_ingress(endpoint, "peer")
        log.info("peer.closed", peer=site, remote=remote, reason=endpoint.close_reason)

    def _audit_peer_refusal(self, endpoint: H2Endpoint, stream_id: int, reason: str) -> None:
        """Every refusal on the peer port is audited, malformed requests and cut connections included."""
        self.calls.audit("deny", {"site": self.config.site, "ingress": "peer", "peer": endpoint.attributes.get("site"),
                                  "remote": endpoint.remote, "stream_id": stream_id or None}, reason, "protocol")

    # --- dialers ------------------------------------------------------------------------------------------

    def _peer_pool(self, peer: PeerConfig, address: HostPort) -> ConnectionPool:
        settings = _with_streams(self.limits.peer_h2, peer.max_concurrent_streams)

        async def connect() -> H2Endpoint:
            transport, site = await self._dial_peer(peer, address, tls.ALPN_H2)
            endpoint = H2Endpoint(
                transport,
                client_side=True,
                flush_queue=self.flush_queue,
                settings=settings,
                name=f"peer-out:{site}@{address}",
                policy=self.limits.outbound_policy,
            )
            endpoint.attributes["chain"] = transport.verified_chain()
            return endpoint

        return self._peer_connection_pool(peer, address, connect)

    def _bolt_peer_pool(self, peer: PeerConfig, address: HostPort) -> ConnectionPool:
        async def connect() -> BoltEndpoint:
            transport, site = await self._dial_peer(peer, address, tls.ALPN_BOLT)
            endpoint = BoltEndpoint(
                transport,
                flush_queue=self.flush_queue,
                max_pending=peer.max_concurrent_streams,
                max_frame_size=self.config.limits.bolt_max_frame_bytes,
                name=f"peer-out-bolt:{site}@{address}",
                policy=self.limits.outbound_bolt_policy,
                link=True,
            )
            endpoint.attributes["chain"] = transport.verified_chain()
            return endpoint

        return self._peer_connection_pool(peer, address, connect)

    def _peer_connection_pool(self, peer: PeerConfig, address: HostPort, connect) -> ConnectionPool:
        return ConnectionPool(
            f"site {peer.name} at {address}",
            connect,
            size=peer.connections,
            keepalive_interval=peer.keepalive_interval_ms / 1000,
            keepalive_timeout=peer.keepalive_timeout_ms / 1000,
            table=self.connections,
        )

    async def _dial_peer(self, peer: PeerConfig, address: HostPort, alpn: str) -> tuple[TlsTransport, str]:
        """mTLS to one gateway of `peer` (interlink.net.peerlink.dial_peer), with the snapshot's context."""
        snapshot = self._snapshot
        contexts = snapshot.client_tls if alpn == tls.ALPN_H2 else snapshot.client_tls_bolt
        transport = await dial_peer(address, contexts[peer.name], peer.domain, alpn, snapshot.config.trust_domain, peer.name)
        current = self._snapshot
        if current is not snapshot and (
            current.own_identity != snapshot.own_identity or _untrusted(transport.verified_chain(), current, peer.name)
        ):  # a reload during the handshake changed our certificate or the peer's trust: dial again
            transport.close()
            raise ConnectionError("the configuration was reloaded during the handshake; dialling again")
        return transport, peer.name

    def _provider_pool(self, protocol: str, address: HostPort, connections: int) -> ConnectionPool:
        if protocol == "bolt":
            return self._bolt_provider_pool(address, connections)
        settings = _with_streams(self.limits.peer_h2, PROVIDER_MAX_STREAMS)

        async def connect() -> H2Endpoint:
            transport = SocketTransport(await connect_tcp(address))
            return H2Endpoint(
                transport, client_side=True, flush_queue=self.flush_queue, settings=settings,
                name=f"provider:{address}", policy=self.limits.outbound_policy,
            )

        return ConnectionPool(f"provider {address}", connect, size=connections, table=self.connections,
                              idle_timeout=self.config.limits.provider_idle_timeout)

    def _bolt_provider_pool(self, address: HostPort, connections: int) -> ConnectionPool:
        async def connect() -> BoltEndpoint:
            transport = SocketTransport(await connect_tcp(address))
            return BoltEndpoint(
                transport, flush_queue=self.flush_queue, max_frame_size=self.config.limits.bolt_max_frame_bytes,
                name=f"bolt-provider:{address}", policy=self.limits.outbound_bolt_policy,
            )

        # Heartbeat idle provider connections every 15 s, as Java Bolt clients do (servers close at 90 s).
        return ConnectionPool(
            f"provider {address}", connect, size=connections, keepalive_interval=15.0, keepalive_timeout=3.0,
            table=self.connections, idle_timeout=self.config.limits.provider_idle_timeout,
        )


def _untrusted(chain: object, snapshot: Snapshot, site: str) -> str | None:
    """Why a connection with `site` whose verified chain (DER certificates) is `chain` is not covered by the
    snapshot's trust, or None."""
    anchors = snapshot.peer_anchors.get(site)
    if anchors is None:
        return f"site {site} is no longer a peer"
    if not anchors.intersection(chain or ()):  # type: ignore[arg-type]
        return f"its certificate no longer chains to the CA bundle of peers.{site}.ca"
    return None


def _inbound_refusal(snapshot: Snapshot, site: str, sni: object, chain: object) -> str | None:
    """Why a peer's connection to us is not let in by the snapshot (trust, or its access domain), or None."""
    reason = _untrusted(chain, snapshot, site)
    if reason is None and sni not in (snapshot.server_tls.by_domain if snapshot.server_tls else {}):
        reason = "its access domain is no longer configured"
    return reason


def _with_streams(settings: H2Settings, max_streams: int) -> H2Settings:
    return replace(settings, max_concurrent_streams=max_streams)


def _static_sets(snapshot: Snapshot) -> dict[ServiceKey, frozenset[Instance]]:
    """The site file's providers as a registry would give them (tags as weight and zone / unit meta)."""
    def instance(route, address: HostPort) -> Instance:  # noqa: ANN001 - ExportRoute
        tags = route.provider_tags.get(address)
        if tags is None:
            return Instance(address.host, address.port)
        meta = {key: value for key, value in (("zone", tags.zone), ("unit", tags.unit)) if value is not None}
        return Instance(address.host, address.port, weight=tags.weight, meta=meta)

    return {
        route.registry_key: frozenset(instance(route, address) for address in route.providers)
        for route in snapshot.export_routes
        if route.providers
    }
