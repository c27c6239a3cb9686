"""`interlink run`: load a site file, run its gateway, drain on SIGTERM/SIGINT; `--workers N` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import structlog
import trio

from interlink import logs
from registry_adapters.base import RegistryError

log = structlog.get_logger("interlink.run")

WORKER_ENV = "INTERLINK_WORKER"  # set in worker processes started by --workers N


class StartupError(Exception):
    """The gateway cannot start; the message says why and what to do (the CLI prints it, exit 1)."""


def run_gateway(
    config_path: Path, *, workers: int = 1, log_level: str = "info", log_format: str = "json", drain_seconds: float = 10.0
) -> int:
    from interlink.control.sitefile import SiteFileError, load_site
    from interlink.control.snapshot import SnapshotError, build_snapshot, log_expiring_certificates
    from interlink.gateway.gateway import Gateway

    from interlink.control.registry_sync import RegistryConfigError, registry_settings

    logs.configure(log_level, json=log_format == "json")
    if workers < 1:
        raise StartupError(f"--workers {workers}: run at least 1 worker")
    try:
        config = load_site(config_path)
        snapshot = build_snapshot(config)
        gateway = Gateway(snapshot)
        registry = registry_settings(config)
    except (SiteFileError, SnapshotError, RegistryConfigError) as exc:
        raise StartupError(str(exc)) from exc
    if workers > 1:
        return _supervise_workers(config_path, workers, log_level, log_format, drain_seconds)
    gateway.reuse_port = os.environ.get(WORKER_ENV) is not None
    log_expiring_certificates(snapshot)
    logs.hold_call_lines(True)  # written once per batch of calls, not one system call per line (logs.py)
    try:
        trio.run(_serve_until_signalled, gateway, registry, drain_seconds)
    except* OSError as group:  # listening failed: port in use, address not local ...
        raise StartupError(f"interlink run: {_first_leaf(group)}") from None
    except* RegistryError as group:  # the registry cannot be reached or refused us at start
        raise StartupError(f"interlink run: registry: {_first_leaf(group)}") from None
    finally:
        logs.hold_call_lines(False)
    return 0


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first error itself: trio nests a nursery's group in its parent's, and a group's text is only
    "Exceptions from Trio nursery (1 sub-exception)"."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def admin_port(port: int, worker: int) -> int:
    """With --workers N, worker i serves its own admin endpoint on listen.admin's port + i (port 0: any)."""
    return port + worker if port else 0


async def _serve_until_signalled(gateway, registry_settings, drain_seconds: float) -> None:
    from interlink.control.admin import AdminServer
    from interlink.control.registry_sync import run_registry
    from interlink.control.status import GatewayStatus

    config = gateway.config
    worker = int(os.environ.get(WORKER_ENV, "0"))
    status = GatewayStatus(gateway, worker=worker)
    registry = trio.CancelScope()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write_held_lines)
            if config.tracing.otlp_endpoint:
                from interlink.net.otlp import SpanExporter  # OpenTelemetry's messages: only when spans are exported

                exporter = SpanExporter(config.tracing.otlp_endpoint, service_name="interlink",
                                        resource_attributes={"interlink.site": config.site,
                                                             "service.instance.id": f"{config.site}/{os.getpid()}"})
                gateway.calls.spans = status.exporter = exporter
                nursery.start_soon(exporter.run)
            if config.listen.admin is not None:  # first: /healthz and /readyz answer while the rest starts
                admin = config.listen.admin
                host, port = await nursery.start(AdminServer(status).run, admin.host, admin_port(admin.port, worker))
                status.admin_address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                log.info("admin.listening", site=config.site, address=status.admin_address, worker=worker)
            await nursery.start(gateway.run)

            # With --workers N every worker follows the registry for its exports; worker 0 alone publishes
            # the imports (one publication per gateway; a worker that exits cannot withdraw what the
            # others still serve).
            publish = os.environ.get(WORKER_ENV, "0") == "0"

            async def follow_registry(task_status=trio.TASK_STATUS_IGNORED) -> None:
                with registry:
                    await run_registry(gateway, registry_settings, publish=publish, task_status=task_status)

            await nursery.start(follow_registry)
            status.registry_ready = True
            if config.messaging is not None:  # worker 0 alone reads the imports (one reader keeps their order)
                from interlink.control.messaging import MessagingRuntime

                status.messaging = MessagingRuntime(gateway, config.messaging, pumps=publish)
                await nursery.start(status.messaging.run)
            log.info("gateway.ready", site=gateway.config.site, registry=registry_settings.kind)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    status.reloaded(reload(gateway))
                    continue
                log.info("gateway.signal", signal=signal.Signals(signum).name)
                registry.cancel()  # withdraw first, so callers stop choosing this gateway; then drain
                if status.messaging is not None:
                    status.messaging.stop_pumps()  # no new message crosses; those in flight go back to the broker
                nursery.start_soon(_drain_then_stop, gateway, drain_seconds, nursery.cancel_scope)
                break


async def _write_held_lines() -> None:
    """Call lines made outside a batch of input (a refused handshake's audit line) wait no longer than this."""
    while True:
        await trio.sleep(logs.HELD_LINES_INTERVAL)
        logs.write_held()


async def _drain_then_stop(gateway, drain_seconds: float, everything: trio.CancelScope) -> None:
    """Drain the gateway; then the admin endpoint and the span export (its last flush) end with it."""
    await gateway.drain(drain_seconds)
    everything.cancel()


def reload(gateway) -> str | None:
    """SIGHUP: read the site file again and swap the snapshot; any problem leaves the old one serving (and is
    returned)."""
    from interlink.control.sitefile import SiteFileError, load_site
    from interlink.control.snapshot import SnapshotError, build_snapshot, log_expiring_certificates, restart_needed

    try:
        config = load_site(gateway.config.path)
        changed = restart_needed(gateway.config, config)
        if changed:
            raise SnapshotError(
                f"{config.path}: {', '.join(changed)} changed; restart the gateway to apply that "
                "(nothing was changed, the running configuration keeps serving)"
            )
        snapshot = build_snapshot(config)
        gateway.install(snapshot)
        log_expiring_certificates(snapshot)
    except (SiteFileError, SnapshotError) as exc:
        log.error("config.reload_failed", path=str(gateway.config.path), error=str(exc))
        return str(exc)
    return None


def _supervise_workers(config_path: Path, workers: int, log_level: str, log_format: str, drain_seconds: float) -> int:
    """N identical worker processes share the listening ports through SO_REUSEPORT; signals are passed on."""
    command = [
        sys.executable, "-m", "interlink", "run", "-c", str(config_path),
        "--log-level", log_level, "--log-format", log_format, "--drain-seconds", str(drain_seconds),
    ]
    children = [
        subprocess.Popen(command, env={**os.environ, WORKER_ENV: str(index)}) for index in range(workers)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
