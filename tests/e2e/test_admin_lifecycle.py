"""A gateway with its admin endpoint and span export stops when told (SIGTERM): drained, spans flushed, exit 0;
and the admin endpoint reports the reload results SIGHUP brings."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

from interlink.demo.client import EchoClient
from tests.e2e.otlp_receiver import OtlpReceiver
from tests.e2e.topology import ALLOWED_APP, Gateway, consumer_site, echo_export, free_port, provider_site

APP = (("tri-consumer-appname", ALLOWED_APP),)


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("not within the time allowed")


def test_sigterm_drains_flushes_spans_and_exits_and_sighup_results_are_reported(certs, tmp_path, py_provider):
    a_peer, b_peer, b_local, a_admin, b_admin = (free_port() for _ in range(5))
    with OtlpReceiver() as receiver:
        tracing = {"otlp_endpoint": receiver.endpoint, "sample_ratio": 1.0}
        a_config = provider_site(certs, peer_port=a_peer, consumers={"site-b": b_peer},
                                 exports=[echo_export(py_provider.target, {"site-b": {"apps": [ALLOWED_APP]}})])
        a_config["listen"]["admin"] = f"127.0.0.1:{a_admin}"
        a_config["tracing"] = tracing
        b_config = consumer_site(certs, triple_port=b_local, peer_port=b_peer, provider_peer_port=a_peer)
        b_config["listen"]["admin"] = f"127.0.0.1:{b_admin}"
        b_config["tracing"] = tracing
        a, b = Gateway("life-a", a_config, tmp_path), Gateway("life-b", b_config, tmp_path)
        a.start()
        b.start()
        try:
            _wait(lambda: _get(b_admin, "/readyz")[0] == 200)
            with EchoClient(f"127.0.0.1:{b_local}") as client:
                for _ in range(3):
                    client.echo("hi", metadata=APP)

            b.process.send_signal(signal.SIGHUP)  # the same file: reloaded
            b.wait_for_event(lambda e: e.get("event") == "config.reloaded")
            b.path.write_text("site: [broken\n")
            b.process.send_signal(signal.SIGHUP)
            b.wait_for_event(lambda e: e.get("event") == "config.reload_failed")
            status = json.loads(_get(b_admin, "/status")[1])
            assert status["counters"]["reloads"] == {"ok": 1, "failed": 1}
            assert status["config"]["last_reload"]["result"] == "failed"
            metrics = _get(b_admin, "/metrics")[1].decode()
            assert 'interlink_config_reloads_total{result="ok"} 1.0' in metrics
            assert 'interlink_config_reloads_total{result="failed"} 1.0' in metrics

            started = time.monotonic()
            assert b.stop() == 0 and a.stop() == 0  # SIGTERM: drained, then the admin endpoint and exporter end
            assert time.monotonic() - started < 10
            # what was queued when they stopped was sent: three calls, one span per gateway each
            receiver.wait_for(lambda spans: len(spans) >= 6, timeout=5)
            sites = sorted(span["resource"]["interlink.site"] for span in receiver.spans)
            assert sites == ["site-a"] * 3 + ["site-b"] * 3
        finally:
            b.stop()
            a.stop()
