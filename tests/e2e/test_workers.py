"""`interlink run --workers N` against a real ZooKeeper (issue 10, item 9).

    sofa-rpc-node client --finds GW-B in--> ZK-B <--publishes (worker 0 only)-- GW-B (2 workers)
        --Bolt--> GW-B --mTLS, 16 links per worker--> GW-A (2 workers) --Bolt--> sofa-rpc-node provider
    sofa-rpc-node provider --registers in--> ZK-A <--every GW-A worker follows-- GW-A

GW-A's export lists no providers: each worker must learn them from ZooKeeper. Before the fix only worker 0
did, and the calls that GW-B's links carried to worker 1 failed (54 of 64 with UNAVAILABLE). SO_REUSEPORT
spreads GW-B's links over GW-A's workers by a hash; the test first proves (from /proc) that each GW-B worker
holds links to both GW-A workers, so that whichever GW-B worker the client reaches, its calls reach both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Peer, bolt_server_argv, start_process_peer, stop_process
from tests.e2e.rotation import children_of, events_named, links_from, links_to, log_size
from tests.e2e.topology import (
    ALLOWED_APP, SERVICE, Certs, Gateway, consumer_site, echo_export, free_port, provider_site,
)

WORKERS = 2
LINKS = 16  # GW-B's Bolt links to GW-A per worker (peers.site-a.connections)
CALLS = 64
PROVIDERS_PATH = f"/sofa-rpc/{SERVICE}/providers"


def start_workers(gateway: Gateway, workers: int = WORKERS, timeout: float = 30.0) -> list[int]:
    """`interlink run -c FILE --workers N`; ready once each worker has
    logged `gateway.ready`. Returns the workers' pids."""
    gateway.launch(["--workers", str(workers)]).wait_ready(timeout, count=workers)
    assert gateway.process is not None
    pids = children_of(gateway.process.pid)
    assert len(pids) == workers, f"{gateway.name}: {len(pids)} worker processes, expected {workers}"
    return pids


def stop_workers(gateway: Gateway, pids: list[int]) -> int | None:
    """SIGTERM to the supervisor (it passes it on to its workers); a worker left behind is killed by pid."""
    code = gateway.stop()
    for pid in pids:
        if _our_worker(pid):
            os.kill(pid, signal.SIGKILL)
    return code


def _our_worker(pid: int) -> bool:
    """Still running (not a zombie) and still an `interlink run` of ours (a pid is not reused that fast,
    but never kill a stranger)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return state != "Z" and b"interlink" in command and b"run" in command


@pytest.fixture
def worker_sites(tmp_path, zk, own_zookeeper, bolt_peers) -> Iterator[dict]:
    certs = Certs(tmp_path / "certs")
    a_peer, b_peer, b_bolt = free_port(), free_port(), free_port()
    export = echo_export("", {"site-b": {"apps": [ALLOWED_APP], "methods": ["echo", "whoami"]}}, protocol="bolt")
    export["version"] = "1.0"
    del export["providers"]  # no providers: in the site file: GW-A follows ZooKeeper for them
    a_config = provider_site(certs, peer_port=a_peer, consumers={"site-b": b_peer}, exports=[export])
    a_config["registry"] = {"kind": "zookeeper", "address": zk.address, "session_timeout_ms": 4000}
    b_config = consumer_site(
        certs, triple_port=b_bolt, peer_port=b_peer, provider_peer_port=a_peer, protocol="bolt",
        peer_options={"connections": LINKS},
    )
    b_config["registry"] = {"kind": "zookeeper", "address": own_zookeeper.address, "session_timeout_ms": 4000}
    folder = tmp_path / "sites"
    folder.mkdir()
    a, b = Gateway("workers-site-a", a_config, folder), Gateway("workers-site-b", b_config, folder)
    provider: Peer | None = None
    a_pids: list[int] = []
    b_pids: list[int] = []
    try:
        # The sofa-rpc-node provider registers itself in site A's ZooKeeper.
        provider = start_process_peer(
            [*bolt_server_argv(bolt_peers, name="zk-provider"), "--zk", zk.address], "zk-provider"
        )
        a_pids = start_workers(a)
        b_pids = start_workers(b)
        yield {"a": a, "b": b, "a_pids": a_pids, "b_pids": b_pids, "a_peer": a_peer,
               "b_bolt": f"127.0.0.1:{b_bolt}", "provider": provider}
    finally:
        stop_workers(b, b_pids)
        stop_workers(a, a_pids)
        if provider is not None and provider.process is not None:
            stop_process(provider.process)


def _links_by_worker(sites: dict, timeout: float = 15.0) -> dict[int, dict[int, int]]:
    """GW-B worker pid -> {GW-A worker pid: links}, once each GW-B worker's LINKS links are up and accepted."""
    port = sites["a_peer"]
    deadline = time.monotonic() + timeout
    while True:
        dialed = {pid: links_to(pid, port) for pid in sites["b_pids"]}
        accepted = {pid: links_from(pid, port) for pid in sites["a_pids"]}
        links = {
            b_pid: {a_pid: len(ports & accepted[a_pid]) for a_pid in sites["a_pids"]}
            for b_pid, ports in dialed.items()
        }
        if all(sum(per_a.values()) >= LINKS for per_a in links.values()) or time.monotonic() > deadline:
            return links
        time.sleep(0.1)


def test_both_gateways_with_two_workers_serve_every_call_of_a_zookeeper_fed_export(
    worker_sites, own_zookeeper, run_bolt_client
):
    sites = worker_sites
    a, b, provider = sites["a"], sites["b"], sites["provider"]

    # Every GW-A worker follows ZooKeeper for the export: each logs the provider set.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = [e for e in events_named(a, "registry.providers") if e.get("providers") == [provider.target]]
        if len(seen) >= WORKERS:
            break
        time.sleep(0.1)
    assert len(seen) >= WORKERS, f"{len(seen)} of {WORKERS} GW-A workers know the provider:\n{a.log_text()[-4000:]}"

    # Precondition (the kernel's SO_REUSEPORT hash): every GW-B worker has links to both GW-A workers.
    links = _links_by_worker(sites)
    assert all(sum(per_a.values()) == LINKS for per_a in links.values()), links
    assert all(all(n > 0 for n in per_a.values()) for per_a in links.values()), (
        f"a GW-B worker reaches only one GW-A worker, the test would prove nothing: {links}"
    )

    # GW-B's import is published once (by worker 0), not once per worker.
    client = own_zookeeper.client()
    try:
        published = client.get_children(PROVIDERS_PATH)
    finally:
        client.stop()
        client.close()
    assert len(published) == 1, published
    assert len(events_named(b, "registry.published")) == 1, events_named(b, "registry.published")

    # 64 calls; the client finds GW-B in site B's ZooKeeper.
    offset = log_size(a)
    result = run_bolt_client(
        "", "echo", app=ALLOWED_APP, args=["workers"], count=CALLS, concurrency=16, timeout_ms=3000,
        extra_args=["--zk", own_zookeeper.address],
    )
    assert result["providers"] == [sites["b_bolt"]], result
    assert (result["calls"], result["errors"]) == (CALLS, 0), result
    deadline = time.monotonic() + 5  # the access line is written after the reply went out
    while True:
        served = [e for e in events_named(a, "call", offset) if e.get("ingress", "").startswith("peer")]
        if len(served) >= CALLS or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    statuses = {str(e.get("status")) for e in served}
    assert len(served) == CALLS, f"GW-A logged {len(served)} calls: {served[:3]}"
    assert statuses == {"OK"}, statuses
    print(f"links GW-B worker -> GW-A worker: {links}; client: {result}; GW-A call statuses: {statuses}")


def test_workers_below_one_is_a_usage_error(tmp_path):
    certs = Certs(tmp_path / "certs")
    config = provider_site(certs, peer_port=free_port(), consumers={}, exports=[])
    gateway = Gateway("zero-workers", config, tmp_path)
    for workers in ("0", "-1"):
        done = subprocess.run(
            [sys.executable, "-m", "interlink", "run", "-c", str(gateway.path), "--workers", workers],
            capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 2, done
        assert "usage:" in done.stderr and "--workers" in done.stderr, done.stderr
        assert "gateway.started" not in done.stderr + done.stdout
