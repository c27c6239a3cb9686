"""The `zookeeper` registry: SOFARPC's tree (Bolt, Triple) or Dubbo's (Triple/Dubbo) on ZooKeeper
(REGISTRIES.md 2).

    /sofa-rpc/<interface>/providers/<urlencode(bolt://host:port?interface=...&uniqueId=...&...)>   flavour "sofa"
    /dubbo/<interface>/providers/<urlencode(tri://host:port/<interface>?application=...&side=provider...)>  "dubbo"

Each provider is an EPHEMERAL node whose *name* is the whole description; consumers watch the children of
`providers`. Publishing writes exactly what a stock consumer accepts (SOFA: the Java/Node rules of
REGISTRIES.md 2.5, so `uniqueId=` is always present; Dubbo: sorted parameters, `side=provider`), plus the
loop-guard marker `interlink.gw=<site>`. Subscribing follows one `providers` node with an exists-watch and a
children-watch (a `providers` node created later, reaped or deleted and recreated is still followed) and
yields whole `InstanceSet`s; names are parsed leniently and one bad name is logged once and skipped.

kazoo is a blocking, thread-based client: every call runs in `trio.to_thread.run_sync` behind a
`CapacityLimiter`, and kazoo's watch and connection-state callbacks come back to trio through
`TrioToken.run_sync_soon`, never blocking either side. Sessions: a new session (after expiry) gets every
publication re-created; a lost connection re-sends each subscription's last set with `stale=True`; the next
connection re-reads (and re-arms the watches, which kazoo drops on every disconnect) with `stale=False`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, quote, unquote_plus, urlsplit

import structlog
import trio
from kazoo.client import KazooClient
from kazoo.exceptions import (
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState
from kazoo.retry import KazooRetry

from registry_adapters.base import GATEWAY_MARK, LatestValue, Publication, RegistryError, RegistryHealth
from registry_adapters.model import Instance, InstanceSet, ServiceKey

__all__ = [
    "Flavour",
    "ZooKeeperRegistry",
    "dubbo_provider_url",
    "parse_dubbo_provider_url",
    "parse_provider_url",
    "parse_sofa_provider_url",
    "provider_matches",
    "provider_node_name",
    "sofa_provider_url",
]

log = structlog.get_logger("interlink.registry")

Flavour = Literal["sofa", "dubbo"]
DEFAULT_ROOTS: Mapping[str, str] = {"sofa": "/sofa-rpc", "dubbo": "/dubbo"}
RPC_VERSION = "50400"  # what sofa-rpc-node writes; Java 5.14.3 writes 51403 (only informative for consumers)
DUBBO_VERSION = "2.0.2"  # the `dubbo=` protocol-version parameter Dubbo 2.7/3.x providers write
DUBBO_RELEASE = "3.3.0"
DEFAULT_SERIALIZATION = "hessian2"
DEFAULT_TIMEOUT_MS = "3000"
# SOFA parameters the adapter writes itself, in this order (meta may override only the two below).
SOFA_OWN_KEYS = (
    "interface", "version", "uniqueId", "appName", "serialization", "weight", "timeout", "protocol",
    "dynamic", "startTime", "pid", "rpcVer", "group",
)  # fmt: skip
META_OVERRIDABLE = frozenset({"serialization", "timeout"})
DUBBO_OWN_KEYS = frozenset(
    {"anyhost", "application", "deprecated", "dubbo", "dynamic", "generic", "group", "interface", "pid",
     "release", "side", "timestamp", "version", "weight", GATEWAY_MARK}
)  # fmt: skip
# Parameters that describe the ServiceKey rather than the instance (not copied into Instance.meta).
KEY_PARAMS = frozenset({"interface", "uniqueId", "version", "group", "weight"})
# Extra meta is written only when it survives every consumer unchanged (Java never percent-decodes values).
_SAFE_META_KEY = re.compile(r"^[A-Za-z0-9._-]+$")
_SAFE_META_VALUE = re.compile(r"^[A-Za-z0-9._:,*-]*$")
_SAFE_VALUE_CHARS = ":,*$"  # besides quote()'s unreserved set: kept as is inside parameter values
_CONNECTION_ERRORS = (ConnectionLoss, SessionExpiredError, ConnectionClosedError)
T = TypeVar("T")


# --------------------------------------------------------------------------- URLs (pure functions)


def _q(value: object) -> str:
    return quote(str(value), safe=_SAFE_VALUE_CHARS)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _extra_meta(meta: Mapping[str, str], own: frozenset[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """Instance meta worth writing: not one of our own keys, and safe for every consumer's parser."""
    extra = []
    for k, v in sorted(meta.items()):
        if k in own or k == GATEWAY_MARK or k in META_OVERRIDABLE:
            continue
        if _SAFE_META_KEY.match(k) and _SAFE_META_VALUE.match(str(v)):
            extra.append((k, str(v)))
    return extra


def sofa_provider_url(
    key: ServiceKey,
    instance: Instance,
    *,
    app_name: str,
    site: str,
    start_time_ms: int,
    pid: int,
) -> str:
    """The provider URL SOFARPC consumers (Java and sofa-rpc-node) accept, not yet URL-encoded::

        bolt://127.0.0.1:12200?interface=com.example.EchoService&version=1.0&uniqueId=&appName=...
            &serialization=hessian2&weight=100&timeout=3000&protocol=bolt&dynamic=true&startTime=...
            &pid=...&rpcVer=50400&group=SOFA[&<safe extra meta>]&interlink.gw=<site>

    `uniqueId` is always present (a Java consumer ignores a node without it, REGISTRIES.md pitfall 4).
    `serialization` and `timeout` come from `instance.meta` when set there; other meta keys are appended
    when key and value are plain `[A-Za-z0-9._:,*-]` (others would not read the same everywhere).
    """
    params: dict[str, str] = {
        "interface": key.interface,
        "version": key.version,
        "uniqueId": key.unique_id,
        "appName": app_name,
        "serialization": str(instance.meta.get("serialization", DEFAULT_SERIALIZATION)),
        "weight": str(instance.weight),
        "timeout": str(instance.meta.get("timeout", DEFAULT_TIMEOUT_MS)),
        "protocol": key.protocol,
        "dynamic": "true",
        "startTime": str(start_time_ms),
        "pid": str(pid),
        "rpcVer": RPC_VERSION,
        "group": key.group,
    }
    pairs = [(k, params[k]) for k in SOFA_OWN_KEYS]
    pairs += _extra_meta(instance.meta, SOFA_OWN_KEYS)
    pairs.append((GATEWAY_MARK, site))
    query = "&".join(f"{k}={_q(v)}" for k, v in pairs)
    return f"{key.protocol}://{_host_port(instance.host, instance.port)}?{query}"


def dubbo_provider_url(
    key: ServiceKey,
    instance: Instance,
    *,
    app_name: str,
    site: str,
    start_time_ms: int,
    pid: int,
) -> str:
    """A Dubbo interface-level provider URL (REGISTRIES.md 2.7), parameters sorted as Dubbo writes them::

        tri://127.0.0.1:50051/com.example.EchoService?anyhost=false&application=...&deprecated=false
            &dubbo=2.0.2&dynamic=true&generic=false[&group=G]&interface=com.example.EchoService
            &interlink.gw=<site>&pid=...&release=3.3.0&side=provider&timestamp=...[&version=V]&weight=100

    An empty `key.group` / `key.version` is left out (Dubbo's "no group" / "no version").
    """
    params: dict[str, str] = {
        "anyhost": "false",
        "application": app_name,
        "deprecated": "false",
        "dubbo": DUBBO_VERSION,
        "dynamic": "true",
        "generic": "false",
        "interface": key.interface,
        GATEWAY_MARK: site,
        "pid": str(pid),
        "release": DUBBO_RELEASE,
        "side": "provider",
        "timestamp": str(start_time_ms),
        "weight": str(instance.weight),
    }
    if key.group:
        params["group"] = key.group
    if key.version:
        params["version"] = key.version
    for k in META_OVERRIDABLE:
        if k in instance.meta and _SAFE_META_VALUE.match(str(instance.meta[k])):
            params[k] = str(instance.meta[k])
    params.update(_extra_meta(instance.meta, DUBBO_OWN_KEYS))
    query = "&".join(f"{k}={_q(v)}" for k, v in sorted(params.items()))
    path = quote(key.interface, safe="$")
    return f"{key.protocol}://{_host_port(instance.host, instance.port)}/{path}?{query}"


def provider_node_name(url: str) -> str:
    """The znode name of a provider URL: Java `URLEncoder` / Node `encodeURIComponent` (same bytes here)."""
    return quote(url, safe="")


def parse_provider_url(name: str) -> tuple[ServiceKey, Instance] | None:
    """A provider znode name (URL-encoded) or URL, as (the key it offers, the instance); None if unusable.

    Lenient on purpose (REGISTRIES.md pitfall 5): `protocol=` may be empty (sofa-rpc-node), parameters may
    come in any order, the interface may be the URL path (Dubbo), `weight` may be missing or garbage
    (-> 100). A missing `uniqueId` / `version` / `group` reads as "" ("not stated"). Everything else (and
    `protocol`, `category`, `enabled`, `appName`, the gateway marker ...) goes to `Instance.meta`.
    Unusable: no `scheme://host:port`, a port outside 1..65535, no interface.
    """
    url = name if "://" in name else unquote_plus(name)
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        return None
    if not parts.scheme or not host or port is None or not 0 < port < 65536:
        return None
    params: dict[str, str] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        params.setdefault(k, v)  # the first value wins, as URLSearchParams.get does
    interface = params.get("interface") or parts.path.strip("/")
    if not interface:
        return None
    try:
        weight = max(0, int(params.get("weight", "100")))
    except ValueError:
        weight = 100
    key = ServiceKey(
        interface=interface,
        protocol=parts.scheme.lower(),
        unique_id=params.get("uniqueId", ""),
        version=params.get("version") or params.get("default.version", ""),
        group=params.get("group") or params.get("default.group", ""),
    )
    meta = {k: v for k, v in params.items() if k not in KEY_PARAMS}
    return key, Instance(host=host, port=port, weight=weight, meta=meta)


parse_sofa_provider_url = parse_provider_url
parse_dubbo_provider_url = parse_provider_url


def provider_matches(flavour: Flavour, want: ServiceKey, offered: ServiceKey, meta: Mapping[str, str]) -> bool:
    """Would a consumer of `want` use a provider offering `offered`?

    Both flavours: same scheme as `want.protocol` (case-insensitive, as Java compares), same interface
    (exact), `category` absent or `providers`, `enabled` absent or `true`.
    SOFA: `uniqueId` equal (a missing one counts as ""; Java would ignore such a node, sofa-rpc-node would
    not check at all); `version` and `group` compared only when both sides state one (sofa-rpc-node's rule).
    Dubbo: `group` and `version` equal ("" = none), `*` on our side matches anything, and a
    comma-separated group list matches any of its groups.
    """
    if offered.protocol.lower() != want.protocol.lower() or offered.interface != want.interface:
        return False
    category = meta.get("category")
    if category and category != "providers":
        return False
    enabled = meta.get("enabled")
    if enabled and enabled != "true":
        return False
    if flavour == "sofa":
        if offered.unique_id != want.unique_id:
            return False
        if want.version and offered.version and want.version != offered.version:
            return False
        if want.group and offered.group and want.group != offered.group:
            return False
        return True
    if want.group != "*" and offered.group != want.group and offered.group not in want.group.split(","):
        return False
    if want.version != "*" and offered.version != want.version:
        return False
    return True


# --------------------------------------------------------------------------- the adapter


class _NotConnected(Exception):
    """The kazoo client is between connections; the call was not sent."""


@dataclasses.dataclass(eq=False)
class _Subscription:
    key: ServiceKey
    path: str
    flavour: Flavour
    watch: Callable[[Any], None]  # the path's one kazoo watch function
    channel: LatestValue[InstanceSet] = dataclasses.field(default_factory=LatestValue)
    dirty: trio.Event = dataclasses.field(default_factory=trio.Event)
    last: InstanceSet | None = None
    logged_bad: set[str] = dataclasses.field(default_factory=set)

    def mark_dirty(self) -> None:
        self.dirty.set()

    def emit(self, instance_set: InstanceSet) -> None:
        self.last = instance_set
        self.channel.set(instance_set)

    def go_stale(self) -> None:
        if self.last is not None and not self.last.stale:
            self.emit(dataclasses.replace(self.last, stale=True))


class ZooKeeperRegistry:
    """A Registry (registry_adapters/base.py) on ZooKeeper, SOFARPC or Dubbo layout.

    `address` is a ZooKeeper connection string, `host:port[,host:port...][/chroot]` (kazoo applies the
    chroot; the tree then lives under `<chroot><root>`, as Java SOFARPC puts it). `root` defaults to
    `/sofa-rpc` (flavour `sofa`) or `/dubbo` (flavour `dubbo`). `session_timeout` (seconds) is what we ask
    for (and what `Publication.liveness` says); the server clamps it to its [min, max]SessionTimeout (kazoo
    does not expose the negotiated value), and that is how long a crashed gateway's nodes outlive it.
    `app_name` is written as `appName`/`application`, `site` as the loop-guard marker `interlink.gw=<site>`
    (the app name when no site is given). For the Dubbo flavour, key an empty `group`/`version` as "none"
    (the ServiceKey defaults `SOFA`/`1.0` are SOFA's). `dubbo_root` (flavour `sofa` only) puts Triple keys
    in the Dubbo tree under that root, so one session serves SOFA Bolt and Dubbo Triple callers; without it
    Triple keys go to the SOFA tree as `tri://` (what SOFARPC's own Triple consumers read).
    """

    name = "zookeeper"

    def __init__(
        self,
        address: str,
        root: str | None = None,
        flavour: Flavour = "sofa",
        session_timeout: float = 10.0,
        app_name: str = "interlink-gateway",
        site: str = "",
        *,
        dubbo_root: str | None = None,
        connect_timeout: float | None = None,
        max_threads: int = 4,
    ) -> None:
        if flavour not in DEFAULT_ROOTS:
            raise ValueError(f"flavour must be one of {', '.join(DEFAULT_ROOTS)}, not {flavour!r}")
        root = DEFAULT_ROOTS[flavour] if root is None else root
        for name, value in (("root", root), ("dubbo_root", dubbo_root)):
            if value is not None and (not value.startswith("/") or value.endswith("/") and value != "/"):
                raise ValueError(f"{name} must be an absolute ZooKeeper path without a trailing '/': {value!r}")
        if dubbo_root is not None and (flavour != "sofa" or dubbo_root == root):
            raise ValueError("dubbo_root goes with flavour 'sofa' and a different root")
        self.address = address
        self.root = "" if root == "/" else root
        self.flavour: Flavour = flavour
        self.dubbo_root = None if dubbo_root is None else ("" if dubbo_root == "/" else dubbo_root)
        self.session_timeout = session_timeout
        self.connect_timeout = session_timeout if connect_timeout is None else connect_timeout
        self.app_name = app_name
        self.site = site or app_name
        self._limiter = trio.CapacityLimiter(max_threads)
        self._client: KazooClient | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._health = RegistryHealth()
        self._connected = False
        self._closing = False
        self._session_id: int | None = None
        self._published: dict[str, Publication] = {}  # znode path -> publication
        self._identity: dict[tuple[ServiceKey, Instance], str] = {}  # -> znode path
        self._node_data: dict[str, bytes] = {}  # znode path -> data written with it
        self._withdrawn: set[str] = set()  # unpublished while disconnected: delete on reconnect
        self._pub_lock = trio.Lock()
        self._reconcile = trio.Event()
        self._resync_after_reconcile = False
        self._subs: set[_Subscription] = set()
        self._path_watches: dict[str, Callable[[Any], None]] = {}
        self._start_ms = int(time.time() * 1000)
        self._log = log.bind(registry="zookeeper", address=address, root=root, flavour=flavour)
        self.republished = 0  # nodes the reconciler created (a new session; deferred publications)

    # -- lifecycle

    async def __aenter__(self) -> ZooKeeperRegistry:
        if self._stack is not None:
            raise RuntimeError("ZooKeeperRegistry is not reentrant")
        self._token = trio.lowlevel.current_trio_token()
        client = KazooClient(
            hosts=self.address,
            timeout=self.session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=2.0),
        )
        client.add_listener(self._on_kazoo_state)
        self._client = client
        started = trio.current_time()
        try:
            await trio.to_thread.run_sync(client.start, self.connect_timeout, limiter=self._limiter)
        except (KazooTimeoutError, KazooException, OSError) as exc:
            client.remove_listener(self._on_kazoo_state)
            await trio.to_thread.run_sync(_close_client, client)
            self._client = None
            raise RegistryError(
                f"cannot connect to ZooKeeper at {self.address} within {self.connect_timeout:g}s ({exc!r}); "
                "is the server running and the address right?"
            ) from exc
        self._connected = True
        self._session_id = _session_of(client)
        self._health.connected = True
        self._health.last_sync = trio.current_time()
        self._log.info(
            "registry.zookeeper.connected",
            session=_hex(self._session_id),
            session_timeout_s=self.session_timeout,
            ms=round((trio.current_time() - started) * 1000, 1),
        )
        stack = AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        self._nursery.start_soon(self._reconciler)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Withdraw every publication (graceful: the nodes are deleted now, not at session expiry), stop
        every watch, close the session; open subscriptions end. Runs to completion (shielded, bounded)
        even when the caller is being cancelled."""
        if self._closing or self._client is None:
            return
        self._closing = True
        client = self._client
        client.remove_listener(self._on_kazoo_state)
        for sub in list(self._subs):
            sub.mark_dirty()  # _follow sees _closing and returns
            sub.channel.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # the reconciler stops at its next checkpoint
        paths = list(self._published)
        deleted = 0
        with trio.CancelScope(shield=True):
            with trio.move_on_after(max(2.0, self.session_timeout / 2)):
                for path in paths:
                    try:
                        await self._call(_delete_quietly, client, path)
                        deleted += 1
                    except (KazooException, _NotConnected, trio.TooSlowError):
                        break  # closing the session below removes them anyway
            self._log.info("registry.zookeeper.closing", withdrawn=deleted, published=len(paths))
            self._published.clear()
            self._node_data.clear()
            self._identity.clear()
            self._connected = False
            self._health.connected = False
            await trio.to_thread.run_sync(_close_client, client)  # closeSession: ephemerals go at once
            self._client = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()  # the nursery opened in __aenter__ (already cancelled)

    # -- publishing

    def layout(self, key: ServiceKey) -> tuple[Flavour, str]:
        """(flavour, root) of the tree that holds `key`: the adapter's own, except that with `dubbo_root`
        Dubbo Triple keys (group other than SOFARPC's "SOFA") live in the Dubbo tree there (one session for
        a SOFA Bolt + Dubbo Triple site); SOFARPC Triple keys stay in the SOFA tree as tri:// URLs."""
        if self.dubbo_root is not None and key.protocol == "tri" and key.group != "SOFA":
            return "dubbo", self.dubbo_root
        return self.flavour, self.root

    def _parent_path(self, key: ServiceKey) -> str:
        flavour, root = self.layout(key)
        segment = key.interface if flavour == "sofa" else quote(key.interface, safe="$")
        if not key.interface or "/" in segment or segment in (".", ".."):
            raise RegistryError(f"interface {key.interface!r} cannot be a ZooKeeper path segment")
        return f"{root}/{segment}/providers"

    def provider_url(self, key: ServiceKey, instance: Instance) -> str:
        """The URL this adapter writes for (key, instance) (decoded form of the znode name)."""
        format_url = sofa_provider_url if self.layout(key)[0] == "sofa" else dubbo_provider_url
        return format_url(
            key, instance, app_name=self.app_name, site=self.site, start_time_ms=self._start_ms, pid=os.getpid()
        )

    async def publish(self, key: ServiceKey, instance: Instance) -> Publication:
        """Create the EPHEMERAL provider node (idempotent: the same key and instance, with the same meta,
        give back the same publication). While disconnected the publication is kept and created on the next
        connection; a refusal from ZooKeeper (auth, bad path) raises RegistryError."""
        self._check_open()
        if key.protocol not in ("bolt", "tri"):
            raise RegistryError(f"protocol {key.protocol!r}: the zookeeper adapter publishes bolt or tri")
        async with self._pub_lock:
            old_path = self._identity.get((key, instance))
            if old_path is not None:
                old = self._published[old_path]
                if dict(old.instance.meta) == dict(instance.meta):
                    return old
                await self._unpublish_locked(old)
            path = f"{self._parent_path(key)}/{provider_node_name(self.provider_url(key, instance))}"
            self._node_data[path] = b"\x01" if self.layout(key)[0] == "sofa" else b""  # Java: 1 = dynamic
            publication = Publication(
                key, instance, liveness=f"session({self.session_timeout:g}s)", handle=path
            )
            self._published[path] = publication
            self._identity[(key, instance)] = path
            self._withdrawn.discard(path)
            started = trio.current_time()
            try:
                outcome = await self._call(self._ensure_node_sync, path)
            except (_NotConnected, *_CONNECTION_ERRORS, trio.TooSlowError) as exc:
                self._log.warning("registry.zookeeper.publish_deferred", path=path, error=repr(exc))
                return publication
            except (KazooException, RegistryError) as exc:
                del self._published[path]
                del self._node_data[path]
                del self._identity[(key, instance)]
                self._note_error(exc)
                raise RegistryError(f"ZooKeeper {self.address} refused to create {path}: {exc!r}") from exc
            self._log.info(
                "registry.zookeeper.published",
                interface=key.interface,
                protocol=key.protocol,
                instance=f"{instance.host}:{instance.port}",
                outcome=outcome,
                ms=round((trio.current_time() - started) * 1000, 1),
            )
            return publication

    async def unpublish(self, publication: Publication) -> None:
        """Delete the publication's node now (a second call, or an unknown publication, is a no-op)."""
        async with self._pub_lock:
            await self._unpublish_locked(publication)

    async def _unpublish_locked(self, publication: Publication) -> None:
        path = publication.handle
        if not isinstance(path, str) or path not in self._published:
            return
        del self._published[path]
        self._node_data.pop(path, None)
        self._identity.pop((publication.key, publication.instance), None)
        if self._client is None:
            return
        try:
            await self._call(_delete_quietly, self._client, path)
        except (_NotConnected, *_CONNECTION_ERRORS, trio.TooSlowError):
            self._withdrawn.add(path)  # same session back -> the node is still there: delete it then
            return
        except KazooException as exc:
            self._note_error(exc)
            raise RegistryError(f"ZooKeeper {self.address} refused to delete {path}: {exc!r}") from exc
        self._log.info("registry.zookeeper.unpublished", path=path)

    def _ensure_node_sync(self, path: str) -> str:
        """(kazoo thread) Make `path` an EPHEMERAL node of the current session."""
        client = self._require_client()
        session = client.client_id
        if session is None:
            raise _NotConnected
        data = self._node_data.get(path, b"")
        for _ in range(5):
            stat = client.exists(path)
            if stat is not None:
                if stat.ephemeralOwner == session[0]:
                    return "present"
                # A leftover of one of our older sessions (the name holds our pid and start time): the
                # same thing SOFA providers do with a node they find in their way.
                _delete_quietly(client, path)
            try:
                client.create(path, data, ephemeral=True, makepath=True)
                return "created"
            except NodeExistsError:
                continue
            except NoNodeError:  # a parent reaped between makepath's ensure_path and the create
                continue
        raise RegistryError(f"could not create {path}: it keeps coming back or going away")

    async def _reconciler(self) -> None:
        """After every (re)connection: re-create publications a new session lost, and delete what was
        unpublished while we were away."""
        while True:
            await self._reconcile.wait()
            self._reconcile = trio.Event()
            if not self._connected or self._client is None:
                continue
            started = trio.current_time()
            created = removed = 0
            failed = False
            async with self._pub_lock:
                for path in list(self._published):
                    try:
                        if await self._call(self._ensure_node_sync, path) == "created":
                            created += 1
                    except (_NotConnected, *_CONNECTION_ERRORS, trio.TooSlowError):
                        failed = True  # the next CONNECTED runs this again
                        break
                    except (KazooException, RegistryError) as exc:
                        self._note_error(exc)
                        self._log.error("registry.zookeeper.republish_failed", path=path, error=repr(exc))
                for path in list(self._withdrawn):
                    try:
                        await self._call(_delete_quietly, self._client, path)
                        self._withdrawn.discard(path)
                        removed += 1
                    except (_NotConnected, *_CONNECTION_ERRORS, trio.TooSlowError):
                        failed = True
                        break
                    except KazooException as exc:
                        self._note_error(exc)
            if self._resync_after_reconcile:
                self._resync_after_reconcile = False
                self._mark_all_dirty()
            if created or removed or failed:
                self.republished += created
                self._log.info(
                    "registry.zookeeper.republished",
                    created=created,
                    withdrawn=removed,
                    complete=not failed,
                    ms=round((trio.current_time() - started) * 1000, 1),
                )

    # -- subscribing

    @asynccontextmanager
    async def subscribe(self, key: ServiceKey) -> AsyncIterator[AsyncIterator[InstanceSet]]:
        """Whole InstanceSets of the providers matching `key` (`provider_matches`), the current one first.
        Gateway-published instances are included (they carry GATEWAY_MARK in meta; `without_gateways`)."""
        self._check_open()
        path = self._parent_path(key)
        sub = _Subscription(key=key, path=path, flavour=self.layout(key)[0], watch=self._path_watch(path))
        sub.dirty.set()
        self._subs.add(sub)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, sub)
                try:
                    yield sub.channel
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._subs.discard(sub)
            sub.channel.close()

    def _path_watch(self, path: str) -> Callable[[Any], None]:
        """One watch function per path (kazoo keeps a set of them per path: this keeps that set small)."""
        watch = self._path_watches.get(path)
        if watch is None:

            def watch(event: Any, path: str = path) -> None:  # kazoo's callback thread
                self._soon(self._path_changed, path)

            self._path_watches[path] = watch
        return watch

    def _mark_all_dirty(self) -> None:
        for sub in self._subs:
            sub.mark_dirty()  # kazoo dropped our watches on disconnect: read again, re-arm, stale=False

    def _path_changed(self, path: str) -> None:
        for sub in self._subs:
            if sub.path == path:
                sub.mark_dirty()

    async def _follow(self, sub: _Subscription) -> None:
        backoff = 0.1
        while not self._closing:
            await sub.dirty.wait()
            sub.dirty = trio.Event()
            if self._closing:
                return
            if not self._connected:
                if sub.last is None:  # nothing known yet: say so rather than keep the reader waiting
                    sub.emit(InstanceSet(sub.key, frozenset(), revision="", stale=True))
                continue  # re-read when the connection is back (_on_state marks every subscription)
            try:
                instances, revision, bad = await self._call(self._read_sync, sub)
            except (_NotConnected, *_CONNECTION_ERRORS, trio.TooSlowError):
                if sub.last is None:
                    sub.emit(InstanceSet(sub.key, frozenset(), revision="", stale=True))
                # normally the connection-state change follows and its CONNECTED re-reads; if it does not
                # (a stuck call on a live connection), try again after a pause
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                if self._connected:
                    sub.mark_dirty()
                continue
            except KazooException as exc:
                self._note_error(exc)
                self._log.warning("registry.zookeeper.read_failed", path=sub.path, error=repr(exc))
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                sub.mark_dirty()
                continue
            backoff = 0.1
            self._health.last_sync = trio.current_time()
            for name in bad - sub.logged_bad:
                self._health.errors += 1
                self._health.last_error = f"bad provider entry under {sub.path}"
                self._log.warning("registry.zookeeper.bad_entry", path=sub.path, entry=name[:500])
            sub.logged_bad = set(bad)
            fresh = InstanceSet(sub.key, instances, revision=revision, stale=False)
            if fresh != sub.last or _metas(fresh) != _metas(sub.last):
                sub.emit(fresh)

    def _read_sync(self, sub: _Subscription) -> tuple[frozenset[Instance], str, set[str]]:
        """(kazoo thread) Read the children of `providers` and re-arm the watches: a children-watch when
        the node exists, else an exists-watch that fires when it is created (REGISTRIES.md pitfall 3)."""
        client = self._require_client()
        if not client.connected:
            raise _NotConnected
        watch = sub.watch
        while True:
            try:
                children, stat = client.get_children(sub.path, watch=watch, include_data=True)
                revision = str(stat.pzxid)
                break
            except NoNodeError:
                if client.exists(sub.path, watch=watch) is None:
                    return frozenset(), "0", set()
        instances: set[Instance] = set()
        bad: set[str] = set()
        for child in children:
            parsed = parse_provider_url(child)
            if parsed is None:
                bad.add(child)
                continue
            offered, instance = parsed
            if provider_matches(sub.flavour, sub.key, offered, instance.meta):
                instances.add(instance)
        return frozenset(instances), revision, bad

    # -- health and connection state

    def health(self) -> RegistryHealth:
        return dataclasses.replace(self._health)

    def _on_kazoo_state(self, state: str) -> None:
        """kazoo's connection thread: must not block; hand the state to trio."""
        self._soon(self._on_state, state)

    def _soon(self, fn: Callable[..., object], *args: object) -> None:
        token = self._token
        if token is None:
            return
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def _on_state(self, state: str) -> None:
        if self._closing or self._client is None:
            return
        now = trio.current_time()
        if state == KazooState.CONNECTED:
            session = _session_of(self._client)
            new_session = session != self._session_id
            if self._connected and not new_session:
                return  # the first CONNECTED, already handled by __aenter__
            self._session_id = session
            self._connected = True
            self._health.connected = True
            self._health.stale_since = None
            self._log.info(
                "registry.zookeeper.connected",
                session=_hex(session),
                new_session=new_session,
                session_timeout_s=self.session_timeout,
            )
            self._reconcile.set()
            if new_session and self._published:
                self._resync_after_reconcile = True  # re-read once our nodes are back: no 1 -> 0 -> 1 blip
            else:
                self._mark_all_dirty()
            return
        self._connected = False
        self._health.connected = False
        if self._health.stale_since is None:
            self._health.stale_since = now
        self._health.errors += 1
        self._health.last_error = f"ZooKeeper connection {str(state).lower()}"
        event = "registry.zookeeper.session_lost" if state == KazooState.LOST else "registry.zookeeper.suspended"
        self._log.warning(event, session=_hex(self._session_id), subscriptions=len(self._subs))
        for sub in self._subs:
            sub.go_stale()

    # -- plumbing

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """Run one blocking kazoo operation in a worker thread, bounded in time (a stuck call is abandoned
        and reported as TooSlowError)."""
        if not self._connected:
            raise _NotConnected
        with trio.fail_after(max(5.0, self.session_timeout)):
            return await trio.to_thread.run_sync(
                functools.partial(fn, *args), limiter=self._limiter, abandon_on_cancel=True
            )

    def _require_client(self) -> KazooClient:
        client = self._client
        if client is None:
            raise _NotConnected
        return client

    def _check_open(self) -> None:
        if self._client is None or self._closing:
            raise RegistryError("the ZooKeeper registry is not open (use `async with ZooKeeperRegistry(...)`)")

    def _note_error(self, exc: BaseException) -> None:
        self._health.errors += 1
        self._health.last_error = repr(exc)

    @property
    def session_id(self) -> int | None:
        """The current ZooKeeper session id (None while disconnected); for status output and tests."""
        return _session_of(self._client)

    @property
    def client_id(self) -> tuple[int, bytes] | None:
        """kazoo's (session id, password) while connected: lets a test expire the session on purpose."""
        return self._client.client_id if self._client is not None else None


def _metas(instance_set: InstanceSet | None) -> object:
    if instance_set is None:
        return None
    return sorted((i.host, i.port, i.weight, sorted(i.meta.items())) for i in instance_set.instances)


def _session_of(client: KazooClient | None) -> int | None:
    if client is None:
        return None
    client_id = client.client_id
    return client_id[0] if client_id else None


def _hex(session: int | None) -> str | None:
    return None if session is None else f"0x{session:x}"


def _delete_quietly(client: KazooClient, path: str) -> None:
    try:
        client.delete(path)
    except NoNodeError:
        pass


def _close_client(client: KazooClient) -> None:
    try:
        client.stop()
    finally:
        client.close()
