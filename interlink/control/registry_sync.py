"""Seamless access, consumer side: publish every import into the site's own registry with the gateway's
address, so local callers discover the gateway as an ordinary provider.

Today's registry: the embedded DNS-SD responder (`registry: {kind: dns, mode: embedded, ...}`), served by
the gateway itself on a configured port; nothing external to run. Publications are made once the
listeners are bound and withdrawn when the gateway stops (a killed gateway's records die with it, since
the responder is the gateway).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import structlog
import trio

from interlink.control.config import HostPort, SiteConfig
from registry_adapters.dnssd import EmbeddedResponder
from registry_adapters.model import Instance, ServiceKey

log = structlog.get_logger("interlink.registry")

DNS_KEYS = ("mode", "listen", "zone", "advertise")


class RegistryConfigError(Exception):
    """The site file's `registry:` cannot be served; the message names the key and the fix."""


@dataclass(frozen=True)
class EmbeddedDns:
    listen: HostPort
    zone: str
    advertise: str | None  # the address callers should dial; None: the listener's own (if not a wildcard)


def embedded_dns(config: SiteConfig) -> EmbeddedDns | None:
    """The embedded DNS-SD settings of a site file, or None when its registry is not `dns`."""
    registry = config.registry
    if registry.kind != "dns":
        return None
    where = f"{config.path}: registry"
    options = dict(registry.options)
    unknown = sorted(set(options) - set(DNS_KEYS))
    if unknown:
        raise RegistryConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(DNS_KEYS)}")
    mode = options.get("mode", "embedded")
    if mode != "embedded":
        raise RegistryConfigError(
            f"{where}.mode: {mode!r} is not available yet; use mode: embedded (the gateway answers DNS itself)"
        )
    listen = _host_port(options.get("listen"), f"{where}.listen", "listen: 127.0.0.1:5353")
    zone = options.get("zone")
    if not isinstance(zone, str) or not zone.strip("."):
        raise RegistryConfigError(f"{where}.zone: the DNS zone to answer for is required, e.g. zone: {config.site}.interlink.test")
    advertise = options.get("advertise")
    if advertise is not None:
        try:
            ipaddress.ip_address(str(advertise))
        except ValueError:
            raise RegistryConfigError(f"{where}.advertise: {advertise!r} is not an IP address callers can dial") from None
    if advertise is None:
        for item in config.imports:
            listener = config.listen.bolt if item.protocol == "bolt" else config.listen.triple
            if listener is not None and _unspecified(listener.host):
                raise RegistryConfigError(
                    f"{where}.advertise: required, because the {item.protocol} listener is on {listener.host}, "
                    "an address callers cannot dial; write the gateway's address, e.g. advertise: 10.0.0.5"
                )
    return EmbeddedDns(listen=listen, zone=zone.strip(".") + ".", advertise=str(advertise) if advertise else None)


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name: callers resolve it


def _host_port(value: object, where: str, example: str) -> HostPort:
    text = str(value or "")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise RegistryConfigError(f"{where}: {value!r} is not host:port; write e.g. {example}")
    return HostPort(host.strip("[]"), int(port))


async def publish_imports(
    config: SiteConfig,
    dns: EmbeddedDns,
    ports: dict[str, HostPort | None],
    *,
    task_status: trio.TaskStatus[HostPort] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the embedded responder and publish each import under the gateway's address for the protocol
    its callers speak (`ports`: "bolt"/"triple" -> the bound local listener). Runs until cancelled; the
    publications are withdrawn on the way out."""
    responder = EmbeddedResponder(dns.zone, listen_host=dns.listen.host, port=dns.listen.port)
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(responder.run)
        published = []
        try:
            for item in config.imports:
                listener = ports.get(item.protocol)
                if listener is None:
                    log.warning("registry.import_not_published", service=item.service, protocol=item.protocol,
                                reason=f"no local {item.protocol} listener")
                    continue
                address = dns.advertise or listener.host  # embedded_dns() refused wildcard listeners
                key = ServiceKey(
                    interface=item.service,
                    protocol="bolt" if item.protocol == "bolt" else "tri",
                    version=item.version or "1.0",
                )
                instance = Instance(host=address, port=listener.port, meta={"from": item.from_site})
                label = f"{config.site}-gateway"
                responder.publish(key, instance, label, site=config.site)
                published.append((key, label))
                log.info("registry.published", service=item.service, protocol=item.protocol,
                         address=f"{address}:{listener.port}", dns=f"{host}:{port}", zone=dns.zone)
            task_status.started(HostPort(host, port))
            await trio.sleep_forever()
        finally:
            for key, label in published:
                responder.unpublish(key, label)
            nursery.cancel_scope.cancel()
