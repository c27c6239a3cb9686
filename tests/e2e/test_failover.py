"""Cross-site failover between real gateway processes: site B imports the echo service `from: [site-a,
site-c]`; while site A's gateway is away, site C serves (within a second of A going), and site A serves again
once it is back. A standby site that is down does not make GW-B unready."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import grpc

from interlink.demo import provider as demo_provider
from interlink.demo.client import EchoClient, md_value
from tests.e2e.topology import ALLOWED_APP, METHODS, SERVICE, Gateway, access_domain, free_port

APP = (("tri-consumer-appname", ALLOWED_APP),)


def _site(certs, name: str, peer_port: int, peers: dict[str, int], **extra) -> dict:
    own = certs.site(name)
    return {
        "site": name,
        "listen": {"peer": f"127.0.0.1:{peer_port}", **extra.pop("listen", {})},
        "tls": {"ca": str(own.ca), "cert": str(own.cert), "key": str(own.key)},
        "peers": {peer: {"endpoints": [f"127.0.0.1:{port}"], "ca": str(certs.site(peer).ca),
                         "domain": access_domain(name, peer)} for peer, port in peers.items()},
        "domains": {peer: access_domain(peer, name) for peer in peers},
        **extra,
    }


def _served_by(client: EchoClient) -> str:
    try:
        _, initial, _ = client.echo("who", metadata=APP, timeout=2)
    except grpc.RpcError as exc:
        return exc.code().name
    return md_value(initial, "x-served-by")


def test_an_import_fails_over_to_the_next_site_and_back(certs, tmp_path):
    ports = {name: free_port() for name in ("a", "b", "c", "b_local", "b_admin", "prov_a", "prov_c")}
    providers = [demo_provider.serve(f"127.0.0.1:{ports['prov_a']}", name="echo-of-site-a"),
                 demo_provider.serve(f"127.0.0.1:{ports['prov_c']}", name="echo-of-site-c")]
    export = {"service": SERVICE, "allow": {"site-b": {"apps": [ALLOWED_APP], "methods": METHODS}}}
    a = Gateway("failover-site-a", _site(certs, "site-a", ports["a"], {"site-b": ports["b"]}, exports=[
        {**export, "providers": [f"127.0.0.1:{ports['prov_a']}"]}]), tmp_path)
    c = Gateway("failover-site-c", _site(certs, "site-c", ports["c"], {"site-b": ports["b"]}, exports=[
        {**export, "providers": [f"127.0.0.1:{ports['prov_c']}"]}]), tmp_path)
    b = Gateway("failover-site-b", _site(
        certs, "site-b", ports["b"], {"site-a": ports["a"], "site-c": ports["c"]},
        listen={"triple": f"127.0.0.1:{ports['b_local']}", "admin": f"127.0.0.1:{ports['b_admin']}"},
        imports=[{"service": SERVICE, "from": ["site-a", "site-c"]}]), tmp_path)
    try:
        for gateway in (a, c, b):
            gateway.start()
        with EchoClient(f"127.0.0.1:{ports['b_local']}") as client:
            deadline = time.monotonic() + 10
            while _served_by(client) != "echo-of-site-a" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _served_by(client) == "echo-of-site-a"  # the first site, while it is up

            stopped_at = time.monotonic()
            a.stop()  # SIGTERM: GOAWAY, drain, exit
            outcomes = []
            while time.monotonic() - stopped_at < 3.0:
                outcomes.append((time.monotonic() - stopped_at, _served_by(client)))
            served_by_c = [at for at, who in outcomes if who == "echo-of-site-c"]
            assert served_by_c and served_by_c[0] < 1.0, outcomes[:20]
            assert {who for at, who in outcomes if at > served_by_c[0]} == {"echo-of-site-c"}, outcomes
            assert _status(ports["b_admin"], "/readyz")[0] == 200  # site C covers: B stays ready
            (imported,) = json.loads(_status(ports["b_admin"], "/status")[1])["imports"]
            assert (imported["from"], imported["link_up"], imported["failover"]) == (
                "site-a", False, [{"site": "site-c", "link_up": True}])

            a.start()
            deadline = time.monotonic() + 20
            while _served_by(client) != "echo-of-site-a" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _served_by(client) == "echo-of-site-a"  # back to the first site
        calls = [e for e in b.events() if e.get("event") == "call" and e.get("ingress") == "local"]
        assert {e.get("peer") for e in calls} == {"site-a", "site-c"}
    finally:
        for gateway in (b, a, c):
            gateway.stop()
        for server in providers:
            server.stop(0)


def _status(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
