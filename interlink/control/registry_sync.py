"""Seamless access: the gateway and its site's registry.

    consumer side  every import is PUBLISHED with the gateway's advertised address once the listeners are
                   bound, so local callers discover the gateway as an ordinary provider; withdrawn first on
                   graceful shutdown (before draining)
    provider side  every export without `providers:` in the site file SUBSCRIBES to the registry; each whole
                   instance set replaces the export's providers (gateway/providers.py) within a second, calls
                   in flight finish on the connections they started on; an empty set fails calls at once

Registries (site file `registry: {kind: ...}`; every problem is reported with the file and line):

    static     nothing to run; exports list their providers (the default)
    dns        mode embedded: the gateway answers DNS-SD for its zone itself (listen, zone, advertise)
               mode external: RFC 2136 updates signed with TSIG to an authoritative server, read back by
               SOA polling / NOTIFY (server, zone, tsig_name, tsig_secret | tsig_file, tsig_algorithm, ttl,
               poll_interval_ms, notify_listen, advertise)
    zookeeper  SOFARPC tree (Bolt) and Dubbo tree (Triple) in ZooKeeper (address, root, dubbo_root,
               session_timeout_ms, advertise)
"""

from __future__ import annotations

import ipaddress
import re
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from interlink.config import HostPort, ImportConfig, SiteConfig
from registry_adapters.base import GATEWAY_MARK, Publication, Registry, RegistryError, RegistryHealth
from registry_adapters.model import Instance, ServiceKey

if TYPE_CHECKING:
    from interlink.gateway.gateway import Gateway

log = structlog.get_logger("interlink.registry")

DNS_KEYS = ("mode", "listen", "zone", "advertise")
DNS_EXTERNAL_KEYS = (
    "mode", "server", "zone", "tsig_name", "tsig_secret", "tsig_file", "tsig_algorithm", "ttl", "poll_interval_ms",
    "notify_listen", "advertise",
)
ZOOKEEPER_KEYS = ("address", "root", "dubbo_root", "session_timeout_ms", "advertise")
STATIC_KEYS = ("advertise",)


class RegistryConfigError(Exception):
    """The site file's `registry:` cannot be served; the message names the key, its line and the fix."""

    def __init__(self, path: Path, line: int | None, key: str, detail: str) -> None:
        self.path, self.line, self.key, self.detail = path, line, key, detail
        super().__init__(f"{path}:{line}: {key}: {detail}" if line else f"{path}: {key}: {detail}")


@dataclass(frozen=True)
class EmbeddedDns:
    listen: HostPort
    zone: str
    advertise: str | None  # the address callers should dial; None: the listener's own (if not a wildcard)


@dataclass(frozen=True)
class RegistrySettings:
    kind: str  # static | dns-embedded | dns-external | zookeeper
    advertise: str | None = None
    embedded: EmbeddedDns | None = None
    options: dict[str, object] = field(default_factory=dict)  # the adapter's constructor arguments

    @property
    def subscribes(self) -> bool:
        """Whether exports may leave out `providers:` and follow the registry instead."""
        return self.kind in ("dns-external", "zookeeper")


# --- reading the site file's registry block ---------------------------------------------------------------


def registry_settings(config: SiteConfig) -> RegistrySettings:
    """The validated `registry:` block of a site file; RegistryConfigError names the key, line and fix."""
    registry = config.registry
    options = dict(registry.options)
    where = _Where(config)
    if registry.kind == "static":
        _known(options, STATIC_KEYS, where, "static")
        settings = RegistrySettings("static", advertise=_advertise(options, where))
    elif registry.kind == "dns":
        mode = options.get("mode", "embedded")
        if mode == "embedded":
            embedded = _embedded(config, options, where)
            settings = RegistrySettings("dns-embedded", advertise=embedded.advertise, embedded=embedded)
        elif mode == "external":
            settings = _dns_external(config, options, where)
        else:
            raise where("mode", f"{mode!r} is not a DNS registry mode; use embedded or external")
    elif registry.kind == "zookeeper":
        settings = _zookeeper(options, where)
    else:  # the site-file reader allows only the kinds above
        raise where("kind", f"unknown registry kind {registry.kind!r}")
    _check_wildcards(config, settings, where)
    if not settings.subscribes:
        for index, export in enumerate(config.exports):
            if not export.providers:
                raise where.export(index, f"export {export.service} lists no providers, and a {registry.kind} registry "
                    "cannot supply them; list providers: [host:port], or use registry kind zookeeper or dns (mode external)"
                )
    return settings


def embedded_dns(config: SiteConfig) -> EmbeddedDns | None:
    """The embedded DNS-SD settings of a site file, or None when its registry is something else."""
    return registry_settings(config).embedded


class _Where:
    """`file:line: registry.key` prefixes for messages."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config

    def __call__(self, key: str, detail: str) -> RegistryConfigError:
        line = self.config.lines.get(f"registry.{key}") or self.config.lines.get("registry")
        return RegistryConfigError(self.config.path, line, f"registry.{key}", detail)

    def export(self, index: int, detail: str) -> RegistryConfigError:
        return RegistryConfigError(self.config.path, self.config.lines.get(f"exports[{index}]"), f"exports[{index}]", detail)


def _known(options: dict[str, object], keys: tuple[str, ...], where: _Where, kind: str) -> None:
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise where(unknown[0], f"unknown key(s) {', '.join(unknown)} for a {kind} registry; known: {', '.join(keys)}")


def _advertise(options: dict[str, object], where: _Where) -> str | None:
    advertise = options.get("advertise")
    if advertise is None:
        return None
    try:
        address = ipaddress.ip_address(str(advertise))
    except ValueError:
        raise where("advertise", f"{advertise!r} is not an IP address callers can dial") from None
    if address.is_unspecified:
        raise where("advertise", f"{advertise} is a wildcard; write the gateway's own address")
    return str(address)


def _embedded(config: SiteConfig, options: dict[str, object], where: _Where) -> EmbeddedDns:
    _known(options, DNS_KEYS, where, "dns (mode embedded)")
    listen = _host_port(options.get("listen"), where, "listen", "listen: 127.0.0.1:5353")
    zone = _zone(options, where, f"the DNS zone to answer for is required, e.g. zone: {config.site}.interlink.test")
    return EmbeddedDns(listen=listen, zone=zone, advertise=_advertise(options, where))


def _zone(options: dict[str, object], where: _Where, missing: str) -> str:
    """The zone, as an absolute name (trailing dot)."""
    zone = options.get("zone")
    if not isinstance(zone, str) or not zone.strip("."):
        raise where("zone", missing)
    return zone.strip(".") + "."


def _dns_external(config: SiteConfig, options: dict[str, object], where: _Where) -> RegistrySettings:
    _known(options, DNS_EXTERNAL_KEYS, where, "dns (mode external)")
    server = _host_port(options.get("server"), where, "server", "server: 10.0.0.53:53")
    zone = _zone(options, where, f"the zone the gateway may update is required, e.g. zone: {config.site}.example")
    name = options.get("tsig_name")
    if not isinstance(name, str) or not name:
        raise where("tsig_name", "the TSIG key name is required (tsig-keygen NAME)")
    secret = options.get("tsig_secret")
    if secret is None and options.get("tsig_file") is not None:
        secret = _secret_from_key_file(config.path.parent / str(options["tsig_file"]), name, where)
    if not isinstance(secret, str) or not secret:
        raise where("tsig_secret", "the TSIG secret (base64) is required, or tsig_file: a BIND key file")
    notify = options.get("notify_listen")
    return RegistrySettings(
        "dns-external",
        advertise=_advertise(options, where),
        options={
            "server": str(server),
            "zone": zone,
            "tsig_name": name,
            "tsig_secret": secret,
            "tsig_algorithm": str(options.get("tsig_algorithm", "hmac-sha256")),
            "ttl": _int(options, "ttl", 30, 1, 86400, where),
            "poll_interval": _int(options, "poll_interval_ms", 1000, 100, 600_000, where) / 1000,
            "notify_listen": str(_host_port(notify, where, "notify_listen", "notify_listen: 127.0.0.1:5300")) if notify else None,
            "site": config.site,
        },
    )


def _zookeeper(options: dict[str, object], where: _Where) -> RegistrySettings:
    _known(options, ZOOKEEPER_KEYS, where, "zookeeper")
    address = options.get("address")
    if not isinstance(address, str) or not address:
        raise where("address", "the ZooKeeper connect string is required, e.g. address: 10.0.0.7:2181")
    for part in address.split(","):
        _host_port(part, where, "address", "address: 10.0.0.7:2181,10.0.0.8:2181")
    root = str(options.get("root", "/sofa-rpc"))
    dubbo_root = str(options.get("dubbo_root", "/dubbo"))
    for key, value in (("root", root), ("dubbo_root", dubbo_root)):
        if not value.startswith("/") or value.endswith("/") and value != "/":
            raise where(key, f"{value!r} must be an absolute ZooKeeper path like /sofa-rpc")
    return RegistrySettings(
        "zookeeper",
        advertise=_advertise(options, where),
        options={
            "address": address,
            "root": root,
            "dubbo_root": dubbo_root,
            "session_timeout": _int(options, "session_timeout_ms", 10_000, 4_000, 120_000, where) / 1000,
        },
    )


def _int(options: dict[str, object], key: str, default: int, low: int, high: int, where: _Where) -> int:
    value = options.get(key, default)
    try:
        number = int(str(value))
    except ValueError:
        raise where(key, f"{value!r} is not a whole number") from None
    if not low <= number <= high:
        raise where(key, f"{number} is out of range; use {low}..{high}")
    return number


def _secret_from_key_file(path: Path, name: str, where: _Where) -> str:
    try:
        text = path.read_text()
    except OSError as exc:
        raise where("tsig_file", f"cannot read {path}: {exc.strerror}") from None
    match = re.search(r'secret\s+"([^"]+)"', text)
    if match is None:
        raise where("tsig_file", f"{path} has no secret \"...\"; make it with tsig-keygen {name}")
    return match.group(1)


def _host_port(value: object, where: _Where, key: str, example: str) -> HostPort:
    text = str(value or "")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise where(key, f"{value!r} is not host:port; write e.g. {example}")
    return HostPort(host.strip("[]"), int(port))


def _check_wildcards(config: SiteConfig, settings: RegistrySettings, where: _Where) -> None:
    """Publishing needs an address callers can dial: a wildcard listener needs `advertise`."""
    if settings.kind == "static" or settings.advertise is not None:
        return
    for item in config.imports:
        listener = config.listen.bolt if item.protocol == "bolt" else config.listen.triple
        if listener is not None and _unspecified(listener.host):
            raise where("advertise", f"required, because the {item.protocol} listener is on {listener.host}, "
                "an address callers cannot dial; write the gateway's address, e.g. advertise: 10.0.0.5"
            )


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name: callers resolve it


# --- keys -------------------------------------------------------------------------------------------------


def import_key(item: ImportConfig) -> ServiceKey:
    return ServiceKey(interface=item.service, protocol="bolt" if item.protocol == "bolt" else "tri", version=item.version or "1.0")


# --- running --------------------------------------------------------------------------------------------


class EmbeddedDnsRegistry:
    """The embedded DNS-SD responder behind the Registry interface: it holds only this gateway's own
    publications (a killed gateway's records die with it), so there is nothing to subscribe to."""

    name = "dns-embedded"

    def __init__(self, settings: EmbeddedDns, site: str) -> None:
        self.settings = settings
        self.site = site
        # dnspython (1.8 MiB of a gateway's resident size at start) is loaded only by sites with a DNS registry
        from registry_adapters.dnssd import EmbeddedResponder

        self.responder = EmbeddedResponder(settings.zone, listen_host=settings.listen.host, port=settings.listen.port)
        self.bound: tuple[str, int] | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> EmbeddedDnsRegistry:
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._stack.callback(nursery.cancel_scope.cancel)
        self.bound = await nursery.start(self.responder.run)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def publish(self, key: ServiceKey, instance: Instance) -> Publication:
        label = f"{self.site}-gateway"
        self.responder.publish(key, instance, label, site=self.site)
        return Publication(key, instance, liveness="responder", handle=label)

    async def unpublish(self, publication: Publication) -> None:
        self.responder.unpublish(publication.key, str(publication.handle))

    def subscribe(self, key: ServiceKey):  # noqa: ANN201 - see class docstring
        raise RegistryError("the embedded DNS registry holds only this gateway's publications; list providers: in the export")

    def health(self) -> RegistryHealth:
        return RegistryHealth(connected=True)


def open_registry(settings: RegistrySettings, site: str) -> Registry | None:
    """The adapter for a site's registry (not yet entered), or None for `static`."""
    if settings.kind == "static":
        return None
    if settings.kind == "dns-embedded":
        assert settings.embedded is not None
        return EmbeddedDnsRegistry(settings.embedded, site)  # type: ignore[return-value]
    if settings.kind == "dns-external":
        from registry_adapters.dnsupdate import DnsUpdateRegistry

        return DnsUpdateRegistry(**settings.options)  # type: ignore[return-value]
    from registry_adapters.zookeeper import ZooKeeperRegistry

    return ZooKeeperRegistry(**settings.options, site=site)  # type: ignore[return-value]


async def run_registry(
    gateway: Gateway, settings: RegistrySettings, *, publish: bool = True,
    task_status: trio.TaskStatus[Registry | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Follow the exports' providers and (when `publish`) publish the imports, until cancelled; the
    publications are withdrawn on the way out (the adapter's exit). Reports the entered adapter once
    everything is published and every subscription has delivered its first set.

    With `--workers N` every worker follows (each serves calls and needs the providers), and only worker 0
    publishes (one publication per gateway: a worker that exits must not withdraw what the others serve)."""
    config = gateway.config
    registry = open_registry(settings, config.site)
    follows = [route for route in gateway.snapshot.export_routes if not route.providers]
    if registry is None or not (publish or follows):
        task_status.started(None)
        await trio.sleep_forever()
    assert registry is not None
    async with registry as entered, trio.open_nursery() as nursery:
        for route in follows:
            await nursery.start(gateway.providers.follow, entered, route.pool_key, route.protocol, route.registry_key)
        if publish:
            for item in config.imports:
                await _publish_import(entered, gateway, settings, item)
        task_status.started(entered)
        await trio.sleep_forever()


async def _publish_import(registry: Registry, gateway: Gateway, settings: RegistrySettings, item: ImportConfig) -> None:
    listener = gateway.bound.bolt if item.protocol == "bolt" else gateway.bound.triple
    if listener is None:
        log.warning("registry.import_not_published", service=item.service, protocol=item.protocol,
                    reason=f"no local {item.protocol} listener")
        return
    host = settings.advertise or listener.host
    instance = Instance(
        host=host,
        port=listener.port,
        meta={GATEWAY_MARK: gateway.config.site, "from": item.from_site, "appName": f"interlink-{gateway.config.site}"},
    )
    try:
        publication = await registry.publish(import_key(item), instance)
    except RegistryError as exc:
        log.error("registry.publish_failed", service=item.service, error=str(exc))
        return
    gateway.published.add((item.service, item.protocol))
    log.info("registry.published", service=item.service, protocol=item.protocol, address=f"{host}:{listener.port}",
             registry=registry.name, liveness=publication.liveness)
