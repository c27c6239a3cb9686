"""Message interop's moving parts in a gateway process (site file `messaging:`; gateway/messages.py has the
per-message path): this site's broker connection, the streams our message exports land in, and one
MessagePump per messaging import.

    MessagingRuntime.run
      ├─ the broker adapter (connects, reconnects with backoff)
      ├─ export streams: each export's stream exists and captures its subject (checked again after a reload
      │  and after the broker comes back)
      └─ MessagePump per import (worker 0 only: one reader per durable consumer keeps per-subject order)

Brokers (messaging.broker.kind):

    nats       NATS JetStream (broker_adapters/nats.py): url nats://[user:password@]host:port
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
import trio

from broker_adapters.base import Broker, BrokerError
from interlink.config import BrokerConfig, MessagingConfig
from interlink.gateway.messages import BACKOFF_MAX, MessagePump
from interlink.routes import MessageExportRoute

if TYPE_CHECKING:
    from interlink.gateway.gateway import Gateway

log = structlog.get_logger("interlink.messages")

BROKER_KINDS = ("nats",)
EXPORT_STREAMS_CHECK = 5.0  # seconds between checks that the export streams are there
FIRST_CONNECT_WAIT = 5.0  # at start, how long the gateway waits for its broker before it says it is ready


def open_broker(config: BrokerConfig, *, name: str) -> Broker:
    """The adapter for `messaging.broker` (only kinds in BROKER_KINDS pass the site file's checks)."""
    from broker_adapters.nats import JetStreamBroker

    return JetStreamBroker(config.url, name=name)


def shown_url(url: str) -> str:
    """A broker URL without its credentials (for logs and /status)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


class MessagingRuntime:
    def __init__(self, gateway: Gateway, settings: MessagingConfig, *, pumps: bool) -> None:
        """`pumps`: this process reads the imports (worker 0 of --workers N)."""
        self.gateway = gateway
        self.settings = settings
        self.broker = open_broker(settings.broker, name=f"interlink-{gateway.config.site}")
        self.pumps: list[MessagePump] = []
        self.export_streams_error: str | None = None
        self._run_pumps = pumps
        self._pump_scope = trio.CancelScope()

    @property
    def url(self) -> str:
        return shown_url(self.settings.broker.url)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        gateway = self.gateway
        async with self.broker:
            gateway.calls.broker = self.broker
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._keep_export_streams)
                    if self._run_pumps:
                        nursery.start_soon(self._run_pumps_until_stopped)
                    log.info("messages.started", site=gateway.config.site, broker=self.url,
                             imports=len(self.settings.imports) if self._run_pumps else 0,
                             exports=len(self.settings.exports))
                    task_status.started()
            finally:
                gateway.calls.broker = None

    def stop_pumps(self) -> None:
        """Draining: no new message crosses (those in flight go back to the broker); exports keep taking
        messages until the gateway stops."""
        self._pump_scope.cancel()

    async def _run_pumps_until_stopped(self) -> None:
        gateway = self.gateway
        with self._pump_scope:
            async with trio.open_nursery() as nursery:
                for item in self.settings.imports:
                    pump = MessagePump(
                        gateway.config.site, item, self.settings, self.broker,
                        group=lambda to=item.to: gateway.peer_groups.get(to),
                        authority=lambda to=item.to: _authority(gateway, to),
                        flush=gateway.flush_queue.flush, calls=gateway.calls.metrics,
                        counters=gateway.calls.message_metrics.of_import(item.subject, item.to),
                    )
                    self.pumps.append(pump)
                    nursery.start_soon(pump.run)

    async def _keep_export_streams(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every message export's stream exists and captures its subject: made at start (the gateway is ready
        once they are, or once the broker has had FIRST_CONNECT_WAIT to answer), then checked every
        EXPORT_STREAMS_CHECK seconds (a reload's new exports, a broker that was away, a stream deleted)."""
        delay = 0.2
        with trio.move_on_after(FIRST_CONNECT_WAIT):
            await self.broker.wait_connected(FIRST_CONNECT_WAIT)
        while True:
            pause = 0.5  # the broker is away: look again soon
            if self.broker.connected:  # (again every few seconds: a stream deleted meanwhile is made again)
                try:
                    for stream, subjects in _streams(self.gateway.snapshot.message_exports.routes()):
                        await self.broker.ensure_stream(stream, list(subjects))
                except BrokerError as exc:
                    self.export_streams_error = str(exc)
                    log.warning("messages.export_stream_failed", error=str(exc))
                    pause, delay = delay, min(delay * 2, BACKOFF_MAX)
                else:
                    pause, delay, self.export_streams_error = EXPORT_STREAMS_CHECK, 0.2, None
            # (once: ready when the streams are there, or when the broker is away or refuses: the rest of the
            # gateway does not wait for it)
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            await trio.sleep(pause)


def _streams(routes: tuple[MessageExportRoute, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    by_stream: dict[str, list[str]] = {}
    for route in routes:
        subjects = by_stream.setdefault(route.stream, [])
        if route.subject not in subjects:
            subjects.append(route.subject)
    return tuple((stream, tuple(subjects)) for stream, subjects in by_stream.items())


def _authority(gateway: Gateway, peer: str) -> bytes | None:
    config = gateway.config.peers.get(peer)
    return config.domain.lower().encode() if config is not None else None
