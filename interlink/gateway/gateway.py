"""One site's gateway process: listeners, connection pools, timers — one nursery tree.

    Gateway.run
      ├─ DeadlineTimers.run                      every call's deadline, one heap
      ├─ ConnectionPool.run  (per peer endpoint)  long-lived mTLS to peer gateways: HTTP/2 and Bolt
      ├─ ConnectionPool.run  (per provider)       h2c or Bolt to our providers
      ├─ local triple listener                    h2c from our site's callers
      ├─ local bolt listener                      Bolt from our site's callers
      └─ peer listener                            mTLS from peer gateways: identity, then HTTP/2 or
                                                  Bolt as negotiated by ALPN
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import structlog
import trio

from interlink.control.config import HostPort, PeerConfig, SiteConfig
from interlink.control.snapshot import Snapshot, build_snapshot
from interlink.gateway.bolt import BoltForwarder
from interlink.gateway.providers import ProviderDirectory
from interlink.gateway.relay import DeadlineTimers
from interlink.gateway.triple import TripleForwarder
from interlink.net import tls
from interlink.net.boltlink import BoltEndpoint
from interlink.net.connection import FlushQueue
from interlink.net.h2link import H2Endpoint
from interlink.net.pool import ConnectionPool, PoolGroup
from registry_adapters.model import Instance, ServiceKey
from registry_adapters.static import StaticRegistry

log = structlog.get_logger("interlink.gateway")
audit_log = structlog.get_logger("interlink.audit")

HANDSHAKE_TIMEOUT = 10.0
PROVIDER_CONNECTIONS = 1
LOCAL_MAX_STREAMS = 1000


@dataclass
class BoundAddresses:
    """Where the listeners actually listen (ports chosen by the OS when the site file says :0)."""

    triple: HostPort | None = None
    bolt: HostPort | None = None
    peer: HostPort | None = None


class Gateway:
    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self._snapshot = build_snapshot(config)
        self.flush_queue = FlushQueue()
        self.timers = DeadlineTimers(self.flush_queue)
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
        self._forwarder: TripleForwarder | None = None
        self._bolt: BoltForwarder | None = None
        self._listener_scopes: list[trio.CancelScope] = []
        self._ingress: set[H2Endpoint | BoltEndpoint] = set()

    def _peer_groups(self, protocol: str) -> dict[str, PoolGroup]:
        dialed = {item.from_site for item in self.config.imports if item.protocol == protocol}
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

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def reload(self, config: SiteConfig) -> None:
        """Swap in a new snapshot (routes, ACLs, access domains, certificates and trust anchors): calls in
        flight finish on the snapshot they started with, new calls and new connections use the new one.
        Providers listed in the site file change in place (a removed provider's calls in flight finish).
        Changes to what the gateway listens on or dials (listen addresses, peer endpoints and connection
        counts) need a restart; such a reload is refused and the old snapshot keeps serving."""
        changed = _wiring_changes(self.config, config)
        if changed:
            raise ReloadError(
                f"{config.path}: {', '.join(changed)} changed; restart the gateway to apply that "
                "(nothing was changed, the running configuration keeps serving)"
            )
        snapshot = build_snapshot(config)
        self.static_registry.replace(_static_sets(snapshot))  # removed exports get an empty set
        if self._nursery is not None:
            self._nursery.start_soon(self._follow_static, self._nursery, snapshot)
        self._snapshot = snapshot
        self.config = config
        log.info("config.reloaded", site=config.site, path=str(config.path))

    async def run(self, *, task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._forwarder = TripleForwarder(
                snapshot=lambda: self._snapshot,
                peer_groups=self.peer_groups.get,
                provider_group=self.providers.group,
                timers=self.timers,
                flush_queue=self.flush_queue,
                nursery=nursery,
            )
            self._bolt = BoltForwarder(
                snapshot=lambda: self._snapshot,
                peer_groups=self.bolt_peer_groups.get,
                provider_group=self.providers.group,
                timers=self.timers,
                flush_queue=self.flush_queue,
                nursery=nursery,
            )
            nursery.start_soon(self.timers.run)
            await nursery.start(self.providers.run)
            await self._follow_static(nursery, self._snapshot)
            for pool in self._all_pools:
                nursery.start_soon(pool.run)
            listen = self.config.listen
            if listen.triple is not None:
                self.bound.triple = await nursery.start(self._listen, listen.triple, self._serve_local_connection)
            if listen.bolt is not None:
                self.bound.bolt = await nursery.start(self._listen, listen.bolt, self._serve_local_bolt_connection)
            if listen.peer is not None:
                self.bound.peer = await nursery.start(self._listen, listen.peer, self._serve_peer_connection)
            log.info(
                "gateway.started",
                site=self.config.site,
                triple=str(self.bound.triple) if self.bound.triple else None,
                bolt=str(self.bound.bolt) if self.bound.bolt else None,
                peer=str(self.bound.peer) if self.bound.peer else None,
                peers=sorted(self.peer_groups),
                exports=self.providers.exports,
                imports=sorted([*self._snapshot.imports, *self._snapshot.bolt_imports]),
            )
            task_status.started(self)

    def stop(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def calls_in_flight(self) -> int:
        return sum(endpoint.in_flight for endpoint in self._ingress)

    async def drain(self, grace: float) -> None:
        """Stop accepting, tell every caller and peer (GOAWAY) to go elsewhere, let in-flight calls finish
        for up to `grace` seconds, then stop."""
        for scope in self._listener_scopes:
            scope.cancel()
        for endpoint in list(self._ingress):
            endpoint.goaway()
        await self.flush_queue.flush()
        log.info("gateway.draining", site=self.config.site, calls_in_flight=self.calls_in_flight, grace=grace)
        with trio.move_on_after(grace):
            while self.calls_in_flight:
                await trio.sleep(0.05)
        log.info("gateway.stopped", site=self.config.site, abandoned_calls=self.calls_in_flight)
        self.stop()

    # --- listeners -----------------------------------------------------------------------------------------

    async def _listen(self, address: HostPort, handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listener = await _tcp_listener(address, reuse_port=self.reuse_port)
        host, port = listener.socket.getsockname()[:2]
        task_status.started(HostPort(host, port))
        with trio.CancelScope() as scope:
            self._listener_scopes.append(scope)
            # Connections live in the gateway's nursery, not the listener's: closing the listener on drain
            # must not cut the calls in flight.
            await trio.serve_listeners(_guarded(handler), [listener], handler_nursery=self._nursery)

    async def _serve_local_connection(self, stream: trio.SocketStream) -> None:
        assert self._forwarder is not None
        endpoint = H2Endpoint(
            stream,
            client_side=False,
            flush_queue=self.flush_queue,
            max_concurrent_streams=LOCAL_MAX_STREAMS,
            on_request=self._forwarder.on_local_request,
            name=f"local:{_remote(stream)}",
        )
        await self._serve_ingress(endpoint)

    async def _serve_local_bolt_connection(self, stream: trio.SocketStream) -> None:
        assert self._bolt is not None
        endpoint = BoltEndpoint(
            stream, flush_queue=self.flush_queue, on_request=self._bolt.on_local_request, name=f"local-bolt:{_remote(stream)}"
        )
        await self._serve_ingress(endpoint)

    async def _serve_ingress(self, endpoint: H2Endpoint | BoltEndpoint) -> None:
        self._ingress.add(endpoint)
        try:
            await endpoint.run()
        finally:
            self._ingress.discard(endpoint)

    async def _serve_peer_connection(self, tcp: trio.SocketStream) -> None:
        assert self._forwarder is not None
        snapshot = self._snapshot
        remote = _remote(tcp)
        assert snapshot.server_tls is not None
        stream = trio.SSLStream(tcp, snapshot.server_tls.default, server_side=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await stream.do_handshake()
            alpn = stream.selected_alpn_protocol()
            if alpn not in (tls.ALPN_H2, tls.ALPN_BOLT):
                raise tls.PeerIdentityError(f"ALPN {alpn!r} offered; the peer link speaks h2 or bolt")
            site = tls.verify_peer_site(
                stream.getpeercert(binary_form=True), snapshot.config.trust_domain, snapshot.peer_cas
            )
        except (trio.BrokenResourceError, trio.TooSlowError, tls.PeerIdentityError) as exc:
            reason = _handshake_error(exc)
            log.warning("peer.handshake_refused", remote=remote, error=reason)
            audit_log.info("audit", decision="deny", site=snapshot.site, ingress="peer", remote=remote, reason=reason)
            await trio.aclose_forcefully(stream)
            return
        sni = snapshot.server_tls.domain_of(stream.context)
        endpoint: H2Endpoint | BoltEndpoint
        if alpn == tls.ALPN_BOLT:
            assert self._bolt is not None
            endpoint = BoltEndpoint(
                stream, flush_queue=self.flush_queue, on_request=self._bolt.on_peer_request, name=f"peer-in-bolt:{site}@{remote}"
            )
        else:
            endpoint = H2Endpoint(
                stream,
                client_side=False,
                flush_queue=self.flush_queue,
                max_concurrent_streams=max((p.max_concurrent_streams for p in self.config.peers.values()), default=256),
                on_request=self._forwarder.on_peer_request,
                name=f"peer-in:{site}@{remote}",
            )
        endpoint.attributes["site"] = site
        endpoint.attributes["sni"] = sni
        log.info("peer.accepted", peer=site, remote=remote, sni=sni, tls=stream.version(), alpn=alpn)
        await self._serve_ingress(endpoint)
        log.info("peer.closed", peer=site, remote=remote, reason=endpoint.close_reason)

    # --- dialers ------------------------------------------------------------------------------------------

    def _peer_pool(self, peer: PeerConfig, address: HostPort) -> ConnectionPool:
        async def connect() -> H2Endpoint:
            stream, site = await self._dial_peer(peer, address, tls.ALPN_H2)
            return H2Endpoint(
                stream,
                client_side=True,
                flush_queue=self.flush_queue,
                max_concurrent_streams=peer.max_concurrent_streams,
                name=f"peer-out:{site}@{address}",
            )

        return self._peer_connection_pool(peer, address, connect)

    def _bolt_peer_pool(self, peer: PeerConfig, address: HostPort) -> ConnectionPool:
        async def connect() -> BoltEndpoint:
            stream, site = await self._dial_peer(peer, address, tls.ALPN_BOLT)
            return BoltEndpoint(
                stream,
                flush_queue=self.flush_queue,
                max_pending=peer.max_concurrent_streams,
                name=f"peer-out-bolt:{site}@{address}",
            )

        return self._peer_connection_pool(peer, address, connect)

    def _peer_connection_pool(self, peer: PeerConfig, address: HostPort, connect) -> ConnectionPool:
        return ConnectionPool(
            f"site {peer.name} at {address}",
            connect,
            size=peer.connections,
            keepalive_interval=peer.keepalive_interval_ms / 1000,
            keepalive_timeout=peer.keepalive_timeout_ms / 1000,
        )

    async def _dial_peer(self, peer: PeerConfig, address: HostPort, alpn: str) -> tuple[trio.SSLStream, str]:
        """TCP + mTLS to one gateway of `peer`, SNI = the access domain it gave us; the server must select
        `alpn` and prove, by a certificate from that site's CA, that it is that site."""
        snapshot = self._snapshot
        contexts = snapshot.client_tls if alpn == tls.ALPN_H2 else snapshot.client_tls_bolt
        tcp = await trio.open_tcp_stream(address.host, address.port)
        stream = trio.SSLStream(tcp, contexts[peer.name], server_hostname=peer.domain)
        try:
            await stream.do_handshake()
            if stream.selected_alpn_protocol() != alpn:
                raise tls.PeerIdentityError(f"peer did not select ALPN {alpn} ({stream.selected_alpn_protocol()!r})")
            site = tls.verify_peer_site(
                stream.getpeercert(binary_form=True),
                snapshot.config.trust_domain,
                {peer.name: snapshot.peer_cas[peer.name]},
            )
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, trio.BrokenResourceError):
                raise ConnectionError(_handshake_error(exc)) from exc
            raise
        return stream, site

    def _provider_pool(self, protocol: str, address: HostPort) -> ConnectionPool:
        if protocol == "bolt":
            return self._bolt_provider_pool(address)

        async def connect() -> H2Endpoint:
            stream = await trio.open_tcp_stream(address.host, address.port)
            return H2Endpoint(
                stream, client_side=True, flush_queue=self.flush_queue, name=f"provider:{address}"
            )

        return ConnectionPool(f"provider {address}", connect, size=PROVIDER_CONNECTIONS)

    def _bolt_provider_pool(self, address: HostPort) -> ConnectionPool:
        async def connect() -> BoltEndpoint:
            stream = await trio.open_tcp_stream(address.host, address.port)
            return BoltEndpoint(stream, flush_queue=self.flush_queue, name=f"bolt-provider:{address}")

        # Heartbeat idle provider connections every 15 s, as Java Bolt clients do (servers close at 90 s).
        return ConnectionPool(
            f"provider {address}", connect, size=PROVIDER_CONNECTIONS, keepalive_interval=15.0, keepalive_timeout=3.0
        )


def _static_sets(snapshot: Snapshot) -> dict[ServiceKey, frozenset[Instance]]:
    return {
        route.registry_key: frozenset(Instance(address.host, address.port) for address in route.providers)
        for route in snapshot.export_routes
        if route.providers
    }


class ReloadError(Exception):
    """A new site file that cannot be applied without a restart."""


def _wiring_changes(old: SiteConfig, new: SiteConfig) -> list[str]:
    """What a reload cannot change in place: the sockets the gateway owns and the pools it keeps."""
    def dialled(config: SiteConfig) -> dict[str, tuple]:
        imported = {item.from_site for item in config.imports}
        return {
            name: (peer.endpoints, peer.connections, peer.max_concurrent_streams, peer.domain)
            for name, peer in config.peers.items()
            if name in imported
        }

    def imports(config: SiteConfig) -> set[tuple[str, str, str]]:
        return {(i.service, i.from_site, i.protocol) for i in config.imports}

    def followed(config: SiteConfig) -> set[tuple[str, str | None, str]]:  # exports whose providers the registry gives
        return {(e.service, e.version, e.protocol) for e in config.exports if not e.providers}

    checks = [
        ("site", old.site != new.site),
        ("listen addresses", old.listen != new.listen),
        ("dialled peers (endpoints, connections, streams, domain)", dialled(old) != dialled(new)),
        ("imports", imports(old) != imports(new)),
        ("registry", old.registry != new.registry),
        ("exports that follow the registry (no providers: list)", followed(old) != followed(new)),
    ]
    return [what for what, differs in checks if differs]


async def _tcp_listener(address: HostPort, *, reuse_port: bool) -> trio.SocketListener:
    family = trio.socket.AF_INET6 if ":" in address.host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind((address.host, address.port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {address}: {exc.strerror}") from exc
    return trio.SocketListener(sock)


def _guarded(handler):
    """A bug while serving one connection is logged and ends that connection, never the gateway."""

    async def serve(stream: trio.SocketStream) -> None:
        try:
            await handler(stream)
        except Exception:
            log.exception("connection.crashed", remote=_remote(stream))
            await trio.aclose_forcefully(stream)

    return serve


def _remote(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def _handshake_error(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and isinstance(cause, ssl.SSLError):
        return f"TLS handshake failed: {cause.reason or cause}"
    if isinstance(exc, trio.TooSlowError):
        return f"TLS handshake did not finish within {HANDSHAKE_TIMEOUT:g}s"
    return str(exc) or type(exc).__name__
