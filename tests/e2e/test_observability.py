"""Observability of two real gateway processes, read the way an operator reads it (issue 13).

    grpcio / sofa-rpc-node caller -> GW-B (site-b) -> mTLS link -> GW-A (site-a) -> demo provider(s)

* a real Prometheus scrapes both gateways' admin endpoints and counts exactly the calls made (OK, a
  provider error, ACL denials of an app and of a method), and promtool accepts each exposition;
* /readyz and `interlink status` follow the peer link down (GW-A killed) and up again (GW-A restarted);
* one trace id on both gateways' access and audit lines (W3C traceparent, SOFATracer ids on Triple and
  Bolt), and OTLP spans of both hops with the right parents;
* load-test marks: shadow providers take marked calls only, `loadtest: deny` refuses them;
* headless Chromium renders a live gateway's page;
* `--workers 2`: one admin endpoint per worker (port, port + 1);
* SIGTERM still ends a gateway that serves an admin endpoint and exports spans (and flushes them).

Counts are exact whatever order the tests run in: the Prometheus test has a pair of gateways of its own, and
the tests sharing the main pair compare before/after or find their calls' lines by trace id. Everything
listens on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from interlink.demo.client import EchoClient, md_value
from tests.conftest import Peer, start_process_peer, stop_process
from tests.control.test_status_view import PageTables
from tests.e2e.otlp_receiver import OtlpReceiver
from tests.e2e.rotation import children_of
from tests.e2e.topology import (
    ALLOWED_APP, SERVICE, Certs, Gateway, TwoSites, consumer_site, echo_export, free_port, provider_site, two_sites,
)
from tests.requires import missing

ALLOWED_METHODS = ["echo", "add", "fail", "sleep"]  # "count" is left out: the method the ACL refuses
BOLT_METHODS = ["echo", "add", "fail", "slow", "whoami"]
APP = ("tri-consumer-appname", ALLOWED_APP)
INTRUDER = ("tri-consumer-appname", "intruder-app")
REAL, SHADOW = "py-provider", "shadow-provider"  # the x-served-by of the real and the shadow provider
SOFA_TRACE_ID = "0a0fe9271570779823341100130000"  # a SOFATracer trace id (30 hex digits)
FAST_KEEPALIVE = {"keepalive_interval_ms": 300, "keepalive_timeout_ms": 300}
PROMETHEUS_FIX = "run: bash scripts/setup.sh --test (installs the Debian package prometheus)"


# --- topologies ------------------------------------------------------------------------------------------------


@dataclass
class Pair:
    """GW-B (local Triple ingress `target`) -> GW-A -> provider, both with an admin endpoint."""

    a: Gateway
    b: Gateway
    target: str
    a_admin: str
    b_admin: str

    def stop(self) -> None:
        for gateway in (self.b, self.a):
            stop_gateway(gateway)


def stop_gateway(gateway: Gateway, processes: int = 1, timeout: float = 15.0) -> None:
    """SIGTERM; SIGKILL once the gateway (each of its `processes`) has logged gateway.stopped and still runs a
    second later, or after `timeout`: a gateway that hangs after stopping costs a teardown one second, not
    Gateway.stop's 15 (test_sigterm_ends_both_gateways_and_flushes_their_last_spans is the test of that exit)."""
    process = gateway.process
    if process is None or process.poll() is not None:
        return
    offset = gateway.log_path.stat().st_size
    process.terminate()
    deadline = time.monotonic() + timeout
    stopped_at = None
    while process.poll() is None and time.monotonic() < deadline:
        if stopped_at is None:
            if sum(e.get("event") == "gateway.stopped" for e in gateway.events(offset)) >= processes:
                stopped_at = time.monotonic()
        elif time.monotonic() - stopped_at > 1.0:
            break
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        process.wait(5)


def start_pair(
    certs: Certs,
    folder: Path,
    name: str,
    provider: str,
    *,
    export: dict[str, Any] | None = None,
    site_a: dict[str, Any] | None = None,
    site_b: dict[str, Any] | None = None,
    peer_options: dict[str, Any] | None = None,
) -> Pair:
    """Like topology.two_sites, plus `listen.admin` on both sites and top-level keys (`tracing`) per site."""
    folder.mkdir(parents=True, exist_ok=True)
    a_peer, b_peer, b_local, a_admin, b_admin = (free_port() for _ in range(5))
    item = echo_export(provider, {"site-b": {"apps": [ALLOWED_APP], "methods": ALLOWED_METHODS}})
    item.update(export or {})
    a_config = provider_site(certs, peer_port=a_peer, consumers={"site-b": b_peer}, exports=[item])
    b_config = consumer_site(
        certs, triple_port=b_local, peer_port=b_peer, provider_peer_port=a_peer, peer_options=peer_options
    )
    a_config["listen"]["admin"] = f"127.0.0.1:{a_admin}"
    b_config["listen"]["admin"] = f"127.0.0.1:{b_admin}"
    a_config.update(site_a or {})
    b_config.update(site_b or {})
    a = Gateway(f"{name}-site-a", a_config, folder)
    b = Gateway(f"{name}-site-b", b_config, folder)
    a.start()
    try:
        b.start()
    except BaseException:
        stop_gateway(a)
        raise
    return Pair(a, b, f"127.0.0.1:{b_local}", f"127.0.0.1:{a_admin}", f"127.0.0.1:{b_admin}")


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def shadow_provider() -> Iterator[Peer]:
    """A second demo provider process: it answers with x-served-by: shadow-provider."""
    peer = start_process_peer(
        [sys.executable, "-m", "interlink.demo.provider", "--listen", "127.0.0.1:0", "--name", SHADOW], SHADOW
    )
    yield peer
    assert peer.process is not None
    stop_process(peer.process)


@pytest.fixture(scope="module")
def sites(certs, tmp_path_factory, py_provider, shadow_provider, otlp) -> Iterator[Pair]:
    """The main pair: spans to `otlp` from both gateways, an export with a shadow provider."""
    tracing = {"tracing": {"otlp_endpoint": otlp.endpoint, "sample_ratio": 1.0}}
    pair = start_pair(
        certs, tmp_path_factory.mktemp("obs-sites"), "obs", py_provider.target,
        export={"shadow_providers": [shadow_provider.target]}, site_a=tracing, site_b=tracing,
    )
    yield pair
    pair.stop()


@pytest.fixture(scope="module")
def deny_sites(certs, tmp_path_factory, py_provider) -> Iterator[Pair]:
    """A pair whose export refuses load-test calls."""
    pair = start_pair(certs, tmp_path_factory.mktemp("obs-deny"), "obs-deny", py_provider.target,
                      export={"loadtest": "deny"})
    yield pair
    pair.stop()


@pytest.fixture(scope="module")
def bolt_sites(certs, tmp_path_factory, bolt_server) -> Iterator[TwoSites]:
    """sofa-rpc-node client -> GW-B (Bolt) -> GW-A -> sofa-rpc-node provider."""
    pair = two_sites(certs, tmp_path_factory.mktemp("obs-bolt"), bolt_server.target, name="obs-bolt",
                     protocol="bolt", methods=BOLT_METHODS)
    yield pair
    for gateway in (pair.b, pair.a):
        stop_gateway(gateway)


# --- helpers -----------------------------------------------------------------------------------------------------


def http_get(address: str, path: str, headers: dict[str, str] | None = None, timeout: float = 5.0
             ) -> tuple[int, dict[str, str], str]:
    """GET http://address/path directly (no proxy); (status, lower-case headers, body text)."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


def poll(what: str, probe: Callable[[], Any], done: Callable[[Any], bool], timeout: float, every: float = 0.2) -> Any:
    """probe() until done(its value), at most `timeout` seconds; AssertionError with the last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (OSError, http.client.HTTPException) as exc:
            value = exc
        if not isinstance(value, Exception) and done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s; last: {value!r}")
        time.sleep(every)


def metric_samples(admin: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called `name` on a gateway's /metrics (Prometheus text), keyed by their sorted labels."""
    status, _, body = http_get(admin, "/metrics")
    assert status == 200, body
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def calls_by(admin: str, *keys: str) -> dict[tuple[str, ...], float]:
    """interlink_calls_total summed by the label values `keys`."""
    out: dict[tuple[str, ...], float] = {}
    for labels, value in metric_samples(admin, "interlink_calls_total").items():
        key = tuple(dict(labels)[k] for k in keys)
        out[key] = out.get(key, 0) + value
    return out


def delta(after: dict, before: dict) -> dict:
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


def traceparent(n: int, span: str = "00f067aa0ba902b7") -> tuple[str, str]:
    """A distinct sampled W3C trace context per n: (trace id, traceparent header)."""
    trace = f"4bf92f3577b34da6a3ce929d{n:08x}"
    return trace, f"00-{trace}-{span}-01"


def events_of(gateway: Gateway, event: str, trace_id: str) -> list[dict[str, Any]]:
    return [e for e in gateway.events() if e.get("event") == event and e.get("trace_id") == trace_id]


def wait_events(gateway: Gateway, event: str, trace_id: str, count: int = 1, timeout: float = 5.0
                ) -> list[dict[str, Any]]:
    """The `event` lines of one trace, once there are `count` (a line is written after the reply went out)."""
    deadline = time.monotonic() + timeout
    while True:
        found = events_of(gateway, event, trace_id)
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, (
                f"{gateway.name}: {len(found)} {event!r} lines of trace {trace_id}, expected {count}:\n"
                f"{gateway.log_text()[-3000:]}"
            )
            return found
        time.sleep(0.05)


def served_by(client: EchoClient, metadata: list[tuple[str, str]]) -> tuple[str, str]:
    """(x-served-by, x-saw-keys) of one echo call."""
    message, initial, trailing = client.echo("who", metadata=metadata)
    assert message == "who"
    return md_value(initial, "x-served-by"), md_value(trailing, "x-saw-keys")


def interlink_status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interlink", "status", *args], capture_output=True, text=True,
                          timeout=30)


def certificate_date(path: Path) -> str:
    """A certificate's notAfter as YYYY-MM-DD."""
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.strftime("%Y-%m-%d")


# --- 1. a real Prometheus ----------------------------------------------------------------------------------------


def prometheus_tools() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        missing("prometheus / promtool not installed", PROMETHEUS_FIX)
    return prometheus, promtool


@dataclass
class Prometheus:
    address: str
    log_path: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        status, _, body = http_get(self.address, "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert status == 200, body
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def vector(self, expr: str, *keys: str) -> dict[tuple[str, ...], float]:
        """An instant vector as {label values of `keys`: value}."""
        return {tuple(item["metric"].get(k, "") for k in keys): float(item["value"][1]) for item in self.query(expr)}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@contextmanager
def running_prometheus(binary: str, folder: Path, targets: dict[str, str]) -> Iterator[Prometheus]:
    """`prometheus` scraping `targets` ({gateway label: admin address}) every second, until the block ends."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "interlink",
            "static_configs": [{"targets": [address], "labels": {"gateway": name}}
                               for name, address in targets.items()],
        }],
    }
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    address = f"127.0.0.1:{free_port()}"
    log_path = folder / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address={address}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    prometheus = Prometheus(address, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"prometheus exited with {process.returncode}:\n{prometheus.log()}")
            try:
                if http_get(address, "/-/ready", timeout=1)[0] == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready within 30s:\n{prometheus.log()}")
            time.sleep(0.1)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def test_prometheus_scrapes_both_gateways_and_counts_exactly_the_calls_made(certs, tmp_path, py_provider):
    prometheus_binary, promtool = prometheus_tools()
    pair = start_pair(certs, tmp_path / "sites", "obs-prom", py_provider.target)
    try:
        made: dict[tuple[str, str], int] = {}

        def made_call(method: str, status: str) -> None:
            made[(method, status)] = made.get((method, status), 0) + 1

        with EchoClient(pair.target) as client:
            for _ in range(3):
                assert client.echo("hi", metadata=[APP])[0] == "hi"
                made_call("echo", "OK")
            for _ in range(2):
                assert client.add(40, 2, metadata=[APP]) == 42
                made_call("add", "OK")
            with pytest.raises(grpc.RpcError) as error:  # the provider's own error: allowed, counted as such
                client.fail("boom", metadata=[APP])
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            made_call("fail", "INVALID_ARGUMENT")
            for _ in range(2):  # an app the ACL does not name
                with pytest.raises(grpc.RpcError) as error:
                    client.echo("hi", metadata=[INTRUDER])
                assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value
                made_call("echo", "PERMISSION_DENIED")
            with pytest.raises(grpc.RpcError) as error:  # a method the ACL does not name
                client.count(3, metadata=[APP])
            assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value
            made_call("count", "PERMISSION_DENIED")
        denied = sum(n for (_, status), n in made.items() if status == "PERMISSION_DENIED")
        allowed = sum(made.values()) - denied

        # promtool lints each gateway's exposition (Prometheus text 0.0.4, as served without an Accept header).
        for name, admin in (("site-a", pair.a_admin), ("site-b", pair.b_admin)):
            status, headers, body = http_get(admin, "/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), headers
            checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True,
                                     timeout=30)
            assert checked.returncode == 0, (
                f"promtool check metrics on {name}'s /metrics exited {checked.returncode}:\n"
                f"{checked.stdout}{checked.stderr}\n--- body ---\n{body}"
            )

        # What Prometheus asks for (and gets): OpenMetrics 1.0.0, ended by "# EOF".
        status, headers, body = http_get(pair.a_admin, "/metrics",
                                         {"Accept": "application/openmetrics-text;version=1.0.0,*/*;q=0.1"})
        assert headers["content-type"].startswith("application/openmetrics-text; version=1.0.0"), headers
        assert body.endswith("# EOF\n") and "interlink_calls_total{" in body, body[-500:]

        expected = {
            "site-b": {("local", "site-a", SERVICE, m, s, "false"): float(n) for (m, s), n in made.items()},
            "site-a": {("peer", "site-b", SERVICE, m, s, "false"): float(n) for (m, s), n in made.items()},
        }
        keys = ("ingress", "peer_site", "service", "method", "status", "loadtest")
        with running_prometheus(prometheus_binary, tmp_path / "prometheus",
                                {"site-a": pair.a_admin, "site-b": pair.b_admin}) as prometheus:

            def seen() -> dict[str, Any]:
                return {
                    "up": prometheus.vector('up{job="interlink"}', "gateway"),
                    **{site: prometheus.vector(f'interlink_calls_total{{gateway="{site}"}}', *keys)
                       for site in expected},
                }

            want = {"up": {("site-a",): 1.0, ("site-b",): 1.0}, **expected}
            try:
                poll("Prometheus has every call of both gateways", seen, lambda got: got == want, timeout=30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nexpected: {want}\nprometheus log:\n{prometheus.log()}") from None
            time.sleep(2.5)  # two more scrapes: the counts stay exact (nothing counted late, nothing twice)
            assert seen() == want

            # The same calls through the other families, as queried in PromQL.
            by_status = prometheus.vector("sum by (gateway, status) (interlink_calls_total)", "gateway", "status")
            per_status = {"OK": 5.0, "INVALID_ARGUMENT": 1.0, "PERMISSION_DENIED": 3.0}
            assert by_status == {(g, s): n for g in ("site-a", "site-b") for s, n in per_status.items()}, by_status
            durations = prometheus.vector("sum by (gateway) (interlink_call_duration_seconds_count)", "gateway")
            assert durations == {("site-a",): 9.0, ("site-b",): 9.0}, durations
            # GW-A audits every call on its peer port: the allowed ones, and the denials with their reason.
            audit = prometheus.vector('interlink_audit_decisions_total{gateway="site-a"}',
                                      "peer_site", "decision", "reason")
            assert audit == {("site-b", "allow", ""): float(allowed), ("site-b", "deny", "acl"): float(denied)}, audit
            # GW-B's local callers are not audited (audit lines are the peer port's).
            assert prometheus.vector('sum(interlink_audit_decisions_total{gateway="site-b"})') in ({}, {(): 0.0})
            link = prometheus.vector('interlink_peer_link_up{gateway="site-b"}', "peer_site", "protocol")
            assert link == {("site-a", "triple"): 1.0}, link
            assert prometheus.vector('interlink_build_info{gateway="site-a"}', "site") == {("site-a",): 1.0}
            expiry = prometheus.vector('interlink_certificate_expiry_timestamp_seconds{gateway="site-b"}',
                                       "site", "role")
            assert {("site-b", "gateway"), ("site-b", "ca"), ("site-a", "peer_ca"), ("site-a", "peer_gateway")} <= set(
                expiry), expiry
            assert all(value > time.time() for value in expiry.values()), expiry
            print(f"prometheus saw {want}; audit {audit}")
    finally:
        pair.stop()


# --- 2. readiness follows the peer link ------------------------------------------------------------------------


def test_readiness_and_interlink_status_follow_the_peer_link(certs, tmp_path, py_provider):
    pair = start_pair(certs, tmp_path / "sites", "obs-ready", py_provider.target, peer_options=FAST_KEEPALIVE)
    try:
        poll("GW-B ready", lambda: http_get(pair.b_admin, "/readyz"), lambda r: r[0] == 200, timeout=15)
        assert http_get(pair.b_admin, "/readyz")[2] == "ready\n"
        with EchoClient(pair.target) as client:
            assert client.add(1, 2, metadata=[APP]) == 3
        up = interlink_status("--admin", pair.b_admin)
        assert up.returncode == 0, up

        pair.a.kill()
        killed = time.monotonic()
        status, _, body = poll("GW-B not ready once GW-A is gone", lambda: http_get(pair.b_admin, "/readyz"),
                               lambda r: r[0] == 503, timeout=10)
        print(f"GW-B /readyz 503 {time.monotonic() - killed:.2f}s after GW-A was killed: {body!r}")
        reasons = body.splitlines()
        assert any(line.startswith("not ready: no link up to site site-a") for line in reasons), body
        down = interlink_status("--admin", pair.b_admin)
        assert down.returncode == 1, down
        assert "not ready: no link up to site site-a" in down.stderr, down.stderr
        assert "NOT READY" in down.stdout, down.stdout
        link_rows = [line for line in down.stdout.splitlines() if line.startswith("site-a ")]
        assert link_rows and all(" down" in line for line in link_rows), down.stdout
        document = json.loads(interlink_status("--admin", pair.b_admin, "--json").stdout)
        assert document["ready"] is False
        assert [link["up"] for link in document["peers"][0]["links"]] == [False], document["peers"]
        assert http_get(pair.b_admin, "/healthz")[0] == 200  # alive, only not ready

        pair.a.start()
        restarted = time.monotonic()
        poll("GW-B ready again once GW-A is back", lambda: http_get(pair.b_admin, "/readyz"),
             lambda r: r[0] == 200, timeout=20)
        print(f"GW-B /readyz 200 {time.monotonic() - restarted:.2f}s after GW-A was restarted")
        ours = certificate_date(certs.site("site-b").cert)
        theirs = certificate_date(certs.site("site-a").cert)
        again = poll("interlink status exits 0 and shows the peer certificate",
                     lambda: interlink_status("--admin", pair.b_admin),
                     lambda r: r.returncode == 0 and theirs in r.stdout, timeout=10)
        assert again.stderr == "", again.stderr
        lines = again.stdout.splitlines()
        assert lines[1] == "READY", again.stdout
        certificate_line = next(line for line in lines if line.startswith("certificate "))
        assert f"expires {ours}" in certificate_line, again.stdout
        link_rows = [line for line in lines if line.startswith("site-a ")]
        assert link_rows and all(" up " in line and theirs in line for line in link_rows), again.stdout
        document = json.loads(interlink_status("--admin", pair.b_admin, "--json").stdout)
        link = document["peers"][0]["links"][0]
        assert link["up"] is True and link["peer_certificate"]["not_after"].startswith(theirs), link
        assert document["certificate"]["not_after"].startswith(ours), document["certificate"]
        # the same through -c SITE.yaml (its listen.admin)
        assert interlink_status("-c", str(pair.b.path)).returncode == 0
        with EchoClient(pair.target) as client:
            assert client.add(2, 2, metadata=[APP]) == 4
    finally:
        pair.stop()
    gone = interlink_status("--admin", pair.b_admin, "--timeout", "2")
    assert gone.returncode == 2 and "cannot reach the admin endpoint" in gone.stderr, gone


# --- 3. tracing ------------------------------------------------------------------------------------------------


def test_traceparent_trace_id_on_both_gateways_and_spans_with_their_parents(sites, otlp):
    trace, header = traceparent(1, span="00f067aa0ba902b7")
    with EchoClient(sites.target) as client:
        assert client.echo("traced", metadata=[APP, ("traceparent", header)])[0] == "traced"
    b_call = wait_events(sites.b, "call", trace)[0]
    a_call = wait_events(sites.a, "call", trace)[0]
    a_audit = wait_events(sites.a, "audit", trace)[0]
    assert (b_call["ingress"], b_call["status"], a_call["ingress"], a_call["status"]) == ("local", "OK", "peer", "OK")
    assert a_audit["decision"] == "allow" and a_audit["span_id"] == a_call["span_id"], a_audit
    assert b_call["span_id"] != a_call["span_id"] and len(b_call["span_id"]) == 16
    # GW-B's local callers are not audited: audit lines belong to the peer port (CallCore.audit).
    assert events_of(sites.b, "audit", trace) == []

    spans = otlp.wait_for(lambda got: len([s for s in got if s["trace_id"] == trace]) >= 2, timeout=10)
    spans = [s for s in spans if s["trace_id"] == trace]
    by_site = {s["attributes"].get("interlink.site"): s for s in spans}
    assert set(by_site) == {"site-a", "site-b"} and len(spans) == 2, spans
    a_span, b_span = by_site["site-a"], by_site["site-b"]
    assert b_span["span_id"] == b_call["span_id"] and a_span["span_id"] == a_call["span_id"]
    assert b_span["parent_span_id"] == "00f067aa0ba902b7"  # the caller's span
    assert a_span["parent_span_id"] == b_span["span_id"]  # GW-B's span
    for span in spans:
        assert span["name"] == f"{SERVICE}/echo" and span["kind"] == 2, span  # SERVER
        assert span["start_ns"] <= span["end_ns"] and span["status_code"] != 2, span  # not ERROR
    assert (a_span["resource"].get("interlink.site"), b_span["resource"].get("interlink.site")) == ("site-a", "site-b")
    # GW-A's hop lies within GW-B's (5 ms of slack: each gateway reads its own clock)
    assert b_span["start_ns"] <= a_span["start_ns"] + 5_000_000 and a_span["end_ns"] <= b_span["end_ns"] + 5_000_000

    # No trace context from the caller: GW-B starts the trace (a root span), GW-A continues it.
    with EchoClient(sites.target) as client:
        assert client.add(20, 22, metadata=[APP]) == 42  # the only `add` on this pair
    b_line = poll("GW-B's access line of the add call",
                  lambda: [e for e in sites.b.events() if e.get("event") == "call" and e.get("method") == "add"],
                  lambda found: len(found) == 1, timeout=5)[0]
    new_trace = b_line["trace_id"]
    assert len(new_trace) == 32 and new_trace != trace
    a_line = wait_events(sites.a, "call", new_trace)[0]
    wait_events(sites.a, "audit", new_trace)
    spans = otlp.wait_for(lambda got: len([s for s in got if s["trace_id"] == new_trace]) >= 2, timeout=10)
    by_site = {s["attributes"].get("interlink.site"): s for s in spans if s["trace_id"] == new_trace}
    assert by_site["site-b"]["parent_span_id"] == "" and by_site["site-b"]["span_id"] == b_line["span_id"]
    assert by_site["site-a"]["parent_span_id"] == b_line["span_id"]
    assert by_site["site-a"]["span_id"] == a_line["span_id"]
    assert otlp.errors == []


def test_triple_sofa_trace_id_becomes_the_trace_id_on_both_gateways(sites):
    for n, key in enumerate(("sofa-traceid", "tri-trace-traceid")):
        sofa = f"{SOFA_TRACE_ID[:-1]}{n}"
        with EchoClient(sites.target) as client:
            client.echo("sofa", metadata=[APP, (key, sofa)])
        trace = sofa.zfill(32)
        wait_events(sites.b, "call", trace)
        wait_events(sites.a, "call", trace)
        wait_events(sites.a, "audit", trace)


def test_bolt_sofa_trace_id_from_request_props_on_both_gateways(bolt_sites, run_bolt_client):
    result = run_bolt_client(bolt_sites.triple_target, "echo", app=ALLOWED_APP, args=["sofa traced"],
                             props={"rpc_trace_context.sofaTraceId": SOFA_TRACE_ID})
    assert (result["ok"], result["result"]) == (True, "sofa traced"), result
    trace = SOFA_TRACE_ID.zfill(32)
    assert len(trace) == 32 and trace == "00" + SOFA_TRACE_ID
    b_call = wait_events(bolt_sites.b, "call", trace)[0]
    a_call = wait_events(bolt_sites.a, "call", trace)[0]
    assert (b_call["ingress"], a_call["ingress"]) == ("local-bolt", "peer-bolt"), (b_call, a_call)
    assert b_call["status"] == a_call["status"] == "OK"
    assert wait_events(bolt_sites.a, "audit", trace)[0]["decision"] == "allow"

    # The SOFATracer system baggage mark on Bolt (requestProps rpc_trace_context.sysPenAttrs) crosses the link.
    marked = SOFA_TRACE_ID[:-1] + "7"
    result = run_bolt_client(bolt_sites.triple_target, "echo", app=ALLOWED_APP, args=["marked"],
                             props={"rpc_trace_context.sofaTraceId": marked,
                                    "rpc_trace_context.sysPenAttrs": "mark=T"})
    assert result["ok"], result
    for gateway in (bolt_sites.b, bolt_sites.a):
        line = wait_events(gateway, "call", marked.zfill(32))[0]
        assert line.get("loadtest") is True, line
    for gateway in (bolt_sites.b, bolt_sites.a):
        assert "loadtest" not in wait_events(gateway, "call", trace)[0]


def _bolt_echo(sites: TwoSites, header: dict[str, str], props: dict[str, Any], request_id: int) -> None:
    """One SofaRequest echo("raw") written here (not by sofa-rpc-node), so that the trace context can sit where
    the node client cannot put it: a nested requestProps map, or the Bolt header map."""
    from interlink.wire import bolt, sofarpc
    from interlink.wire.hessian2 import HessianObject, SofaHessianWriter

    service = "com.example.EchoService:1.0"
    writer = SofaHessianWriter()
    writer.write_object(HessianObject(bolt.SOFA_REQUEST_CLASS.decode(), {
        "methodName": "echo", "methodArgSigs": ["java.lang.String"], "targetServiceUniqueName": service,
        "targetAppName": None, "requestProps": {"service": service, "app": ALLOWED_APP, **props},
    }))
    writer.write_string("raw")
    frame = bolt.BoltFrame(
        proto=1, type=bolt.TYPE_REQUEST, cmdcode=bolt.CMD_RPC_REQUEST, request_id=request_id, timeout=3000,
        class_name=bolt.SOFA_REQUEST_CLASS, header=bolt.encode_header_map({"service": service, **header}),
        content=writer.getvalue(),
    )
    host, port = sites.triple_target.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(bolt.encode(frame))
        decoder = bolt.BoltDecoder()
        while not (frames := decoder.feed(sock.recv(65536))):
            pass
    response = frames[0]
    assert response.request_id == request_id and response.status == bolt.ResponseStatus.SUCCESS, response
    is_error, message = sofarpc.read_response_summary(response.content)
    assert not is_error, message


def test_bolt_sofa_trace_id_in_a_nested_map_or_the_header_map(bolt_sites):
    nested, in_header = SOFA_TRACE_ID[:-2] + "a1", SOFA_TRACE_ID[:-2] + "b2"
    _bolt_echo(bolt_sites, {}, {"rpc_trace_context": {"sofaTraceId": nested, "sysPenAttrs": "mark=T"}}, 5)
    _bolt_echo(bolt_sites, {"rpc_trace_context.sofaTraceId": in_header}, {}, 6)
    for sofa, marked in ((nested, True), (in_header, False)):
        for gateway in (bolt_sites.b, bolt_sites.a):
            line = wait_events(gateway, "call", sofa.zfill(32))[0]
            assert line["status"] == "OK" and line.get("loadtest", False) is marked, line
    # an id that is not hex is hashed, the same way on both gateways
    from interlink.wire.tracecontext import trace_id_of_sofa

    opaque = "not-hex:sofa/trace"
    _bolt_echo(bolt_sites, {}, {"rpc_trace_context.sofaTraceId": opaque}, 7)
    hashed = trace_id_of_sofa(opaque.encode())
    assert hashed is not None and len(hashed) == 32
    wait_events(bolt_sites.b, "call", hashed)
    wait_events(bolt_sites.a, "call", hashed)


# --- 4. load-test marks ----------------------------------------------------------------------------------------


def test_marked_calls_go_to_the_shadow_provider_only_and_are_counted_apart(sites):
    before = {site: calls_by(admin, "ingress", "loadtest", "status")
              for site, admin in (("a", sites.a_admin), ("b", sites.b_admin))}
    marks = [
        ("x-interlink-loadtest", "1"), ("x-interlink-loadtest", "true"), ("x-interlink-loadtest", "1"),
        ("tri-trace-sys-baggage", "mark=T"), ("tri-trace-sys-baggage", "k=v&mark=T"),
    ]
    traces = {}
    with EchoClient(sites.target) as client:
        for n, mark in enumerate(marks, start=100):
            trace, header = traceparent(n)
            who, saw = served_by(client, [APP, ("traceparent", header), mark])
            assert who == SHADOW, (mark, who)
            # the shadow provider gets the call still marked
            assert "x-interlink-loadtest" in saw.split(","), (mark, saw)
            traces[trace] = True
        for n in range(200, 203):
            trace, header = traceparent(n)
            who, saw = served_by(client, [APP, ("traceparent", header)])
            assert who == REAL, who
            assert "x-interlink-loadtest" not in saw.split(","), saw
            traces[trace] = False
        # an unmarked value of the mark header does not mark
        trace, header = traceparent(203)
        assert served_by(client, [APP, ("traceparent", header), ("x-interlink-loadtest", "0")])[0] == REAL
        traces[trace] = False

    for trace, marked in traces.items():
        b_line = wait_events(sites.b, "call", trace)[0]
        a_line = wait_events(sites.a, "call", trace)[0]
        assert b_line.get("loadtest", False) is marked and a_line.get("loadtest", False) is marked, (b_line, a_line)
        upstream = f"shadow providers of {SERVICE}" if marked else f"providers of {SERVICE}"
        assert a_line["upstream"] == upstream, a_line

    n_marked, n_plain = sum(traces.values()), len(traces) - sum(traces.values())

    def counted() -> dict[str, dict]:
        return {site: delta(calls_by(admin, "ingress", "loadtest", "status"), before[site])
                for site, admin in (("a", sites.a_admin), ("b", sites.b_admin))}

    want = {
        "a": {("peer", "true", "OK"): n_marked, ("peer", "false", "OK"): n_plain},
        "b": {("local", "true", "OK"): n_marked, ("local", "false", "OK"): n_plain},
    }
    poll("loadtest calls counted apart on both gateways", counted, lambda got: got == want, timeout=5)
    providers = metric_samples(sites.a_admin, "interlink_registry_providers")
    assert providers == {(("pool", "providers"), ("service", SERVICE)): 1.0,
                         (("pool", "shadow"), ("service", SERVICE)): 1.0}, providers
    status, _, body = http_get(sites.a_admin, "/status")
    export = json.loads(body)["exports"][0]
    assert export["shadow_providers"] and export["loadtest"] == "allow", export


def test_loadtest_deny_refuses_marked_calls_and_lets_unmarked_through(deny_sites):
    with EchoClient(deny_sites.target) as client:
        for mark in (("x-interlink-loadtest", "1"), ("tri-trace-sys-baggage", "mark=T")):
            with pytest.raises(grpc.RpcError) as error:
                client.echo("marked", metadata=[APP, mark])
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION, error.value
            assert "loadtest: deny" in error.value.details(), error.value.details()
        assert served_by(client, [APP])[0] == REAL
    audit = poll("the refusals audited on GW-A",
                 lambda: metric_samples(deny_sites.a_admin, "interlink_audit_decisions_total"),
                 lambda got: got.get((("decision", "deny"), ("peer_site", "site-b"), ("reason", "loadtest"))) == 2,
                 timeout=5)
    assert audit.get((("decision", "allow"), ("peer_site", "site-b"), ("reason", ""))) == 1, audit
    calls = poll("the calls counted on GW-B", lambda: calls_by(deny_sites.b_admin, "loadtest", "status"),
                 lambda got: sum(got.values()) == 3, timeout=5)
    assert calls == {("true", "FAILED_PRECONDITION"): 2, ("false", "OK"): 1}, calls


# --- 5. Chromium renders a live gateway's page --------------------------------------------------------------------


def test_chromium_renders_the_live_page_of_gw_b(sites, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("chromium not installed", "run: bash scripts/setup.sh --test (installs the Debian package chromium)")
    with EchoClient(sites.target) as client:
        for _ in range(3):
            client.echo("page", metadata=[APP])
        with pytest.raises(grpc.RpcError):
            client.echo("page", metadata=[INTRUDER])
    document = poll("GW-B's counters", lambda: json.loads(http_get(sites.b_admin, "/status")[2]),
                    lambda d: d["counters"]["calls"].get("PERMISSION_DENIED", 0) >= 1, timeout=5)
    done = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", f"http://{sites.b_admin}/"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = PageTables(done.stdout)
    peers = [(i, row) for i, row in enumerate(dom.row_attributes.get("peers", [])) if row.get("class") == "peer"]
    assert [row["data-peer"] for _, row in peers] == ["site-a"], done.stdout[:3000]
    row = dom.tables["peers"][peers[0][0]]  # (row_attributes counts the heading row too)
    assert row[1:4] == [sites.b.config["peers"]["site-a"]["endpoints"][0], "triple", "up"], row
    counters = dict(tuple(r) for r in dom.tables["counters"][1:])
    assert counters["calls OK"] == str(document["counters"]["calls"]["OK"]), counters
    assert counters["calls PERMISSION_DENIED"] == str(document["counters"]["calls"]["PERMISSION_DENIED"]), counters
    assert int(counters["calls OK"]) >= 3
    assert '<span id="site">site-b</span>' in done.stdout
    assert "script" not in dom.tags


# --- 6. --workers 2: an admin endpoint per worker ------------------------------------------------------------------


def two_free_ports() -> int:
    """A port p such that p and p + 1 are both free now."""
    for _ in range(100):
        port = free_port()
        if port >= 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def _our_worker(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return state != "Z" and b"interlink" in command and b"run" in command


def test_each_of_two_workers_serves_its_own_admin_endpoint(certs, tmp_path, py_provider):
    admin = two_free_ports()
    config = provider_site(certs, peer_port=free_port(), consumers={"site-b": free_port()},
                           exports=[echo_export(py_provider.target, {"site-b": {"apps": [ALLOWED_APP]}})])
    config["listen"]["admin"] = f"127.0.0.1:{admin}"
    gateway = Gateway("obs-workers", config, tmp_path)
    pids: list[int] = []
    try:
        gateway.launch(["--workers", "2"]).wait_ready(30, count=2)
        assert gateway.process is not None
        pids = children_of(gateway.process.pid)
        assert len(pids) == 2, pids
        seen = {}
        for worker in (0, 1):
            address = f"127.0.0.1:{admin + worker}"
            status, headers, body = http_get(address, "/metrics")
            assert status == 200 and "interlink_build_info{" in body, body[:2000]
            assert 'site="site-a"' in body.split("interlink_build_info{", 1)[1].split("}", 1)[0]
            document = json.loads(http_get(address, "/status")[2])
            assert document["worker"] == worker and document["listen"]["admin"] == address, document
            seen[worker] = document["pid"]
            assert http_get(address, "/readyz")[0] == 200
        assert sorted(seen.values()) == pids, (seen, pids)
    finally:
        stop_gateway(gateway, processes=len(pids) or 1)
        for pid in pids:
            if _our_worker(pid):
                os.kill(pid, signal.SIGKILL)


# --- shutdown with the new tasks -------------------------------------------------------------------------------


def test_sigterm_ends_both_gateways_and_flushes_their_last_spans(certs, tmp_path, py_provider):
    """The admin endpoint and the span exporter end with the gateway: SIGTERM exits (0) promptly, and the spans of
    a call made just before are at the collector by then (the exporter's last flush)."""
    with OtlpReceiver() as receiver:
        tracing = {"tracing": {"otlp_endpoint": receiver.endpoint, "sample_ratio": 1.0}}
        pair = start_pair(certs, tmp_path / "sites", "obs-sigterm", py_provider.target, site_a=tracing,
                          site_b=tracing)
        try:
            trace, header = traceparent(300)
            with EchoClient(pair.target) as client:
                assert client.echo("last", metadata=[APP, ("traceparent", header)])[0] == "last"
            wait_events(pair.b, "call", trace)
            for gateway in (pair.b, pair.a):
                assert gateway.process is not None
                gateway.process.terminate()
            for gateway in (pair.b, pair.a):
                assert gateway.process is not None
                try:
                    code = gateway.process.wait(8)
                except subprocess.TimeoutExpired:
                    code = None
                assert code == 0, f"{gateway.name}: {code} 8 s after SIGTERM:\n{gateway.log_text()[-2000:]}"
            spans = [span for span in receiver.snapshot() if span["trace_id"] == trace]
            assert sorted(span["attributes"]["interlink.site"] for span in spans) == ["site-a", "site-b"], spans
        finally:
            pair.stop()


def test_status_gives_days_until_each_certificate_expires(sites):
    document = json.loads(http_get(sites.b_admin, "/status")[2])
    ours = document["certificate"]
    theirs = document["peers"][0]["links"][0]["peer_certificate"]
    for certificate in (ours, theirs):
        days = (certificate["not_after_ts"] - time.time()) / 86400
        assert abs(certificate.get("expires_in_days", -1e9) - days) < 1, certificate
    shown = interlink_status("--admin", sites.b_admin)
    assert shown.stdout.count(" (in ") >= 2, shown.stdout
