"""SIGHUP: a new site file takes effect without a restart; a bad one is refused and the old one serves."""

from __future__ import annotations

import copy
import signal
import time

import grpc
import pytest
import yaml

from interlink.demo.client import EchoClient
from tests.e2e.topology import ALLOWED_APP, two_sites

APP = (("tri-consumer-appname", ALLOWED_APP),)


def _reload(gateway, config=None, text=None, event="config.reloaded"):
    """Write the site file, SIGHUP, and return the new `event` line the gateway logs about it."""
    gateway.path.write_text(text if text is not None else yaml.safe_dump(config, sort_keys=False))
    before = [e for e in gateway.events() if e.get("event") == event]
    gateway.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = [e for e in gateway.events() if e.get("event") == event]
        if len(now) > len(before):
            return now[-1]
        time.sleep(0.05)
    raise AssertionError(f"no new {event} within 10 s:\n{gateway.log_text()[-3000:]}")


def test_sighup_applies_a_new_acl_and_refuses_bad_files(certs, tmp_path, py_provider):
    sites = two_sites(certs, tmp_path, py_provider.target, name="reload")
    try:
        with EchoClient(sites.triple_target) as client:
            assert client.add(1, 2, metadata=APP) == 3

            # Site A stops allowing order-app: the next call is denied, no restart.
            stricter = copy.deepcopy(sites.a.config)
            stricter["exports"][0]["allow"]["site-b"]["apps"] = ["billing-app"]
            _reload(sites.a, stricter)
            with pytest.raises(grpc.RpcError) as info:
                client.add(1, 2, metadata=APP)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

            # A broken file is refused with its line, and the last good configuration keeps serving.
            failed = _reload(sites.a, text="site: site-a\nlisten: [oops\n", event="config.reload_failed")
            assert "reload-site-a.yaml" in failed["error"]
            with pytest.raises(grpc.RpcError) as info:
                client.add(1, 2, metadata=APP)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED

            # What needs new sockets is refused too, with the reason.
            moved = copy.deepcopy(stricter)
            moved["listen"]["peer"] = "127.0.0.1:1"
            failed = _reload(sites.a, moved, event="config.reload_failed")
            assert "listen addresses changed; restart" in failed["error"]

            # And back: order-app is allowed again.
            _reload(sites.a, sites.a.config)
            assert client.add(2, 2, metadata=APP) == 4
    finally:
        sites.stop()


def test_sighup_moves_an_export_to_other_providers_without_failing_calls_in_flight(
    certs, tmp_path, py_provider, node_server
):
    import threading

    from interlink.demo.client import md_value

    sites = two_sites(certs, tmp_path, py_provider.target, name="move")
    try:
        with EchoClient(sites.triple_target) as client:
            _, initial, _ = client.echo("x", APP)
            assert md_value(initial, "x-served-by") == "py-provider"
            outcome: dict[str, object] = {}

            def slow_call() -> None:
                try:
                    outcome["ms"] = client.sleep(800, timeout=5, metadata=APP)[0]
                except grpc.RpcError as exc:  # pragma: no cover - reported by the assert below
                    outcome["error"] = exc

            in_flight = threading.Thread(target=slow_call)
            in_flight.start()
            time.sleep(0.2)
            moved = copy.deepcopy(sites.a.config)
            moved["exports"][0]["providers"] = [node_server.target]
            _reload(sites.a, moved)
            _, initial, _ = client.echo("y", APP)
            assert md_value(initial, "x-served-by") == "node-provider"
            in_flight.join(5)
            assert outcome == {"ms": 800}  # finished on the old provider's connection
            sites.a.wait_for_event(lambda e: e.get("event") == "providers.retired")
    finally:
        sites.stop()
