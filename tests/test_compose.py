"""docker-compose.yml: valid Compose, and the same topology as the netns lab (CI has no Docker engine).

The file is validated against the Compose specification's JSON schema (compose-spec.json as shipped by
the check-jsonschema package), then compared with site-configs/lab/topology.yaml and the site files it
names: networks, subnets, internal flags, which service is on which network with which address, and every
address a service's command or health check names. The lab's two helper scripts run here too.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from interlink.control.check import check_files
from interlink.control.registry_sync import embedded_dns
from interlink.control.sitefile import load_site
from interlink.labnet import INTERCONNECT, load_topology
from tests.requires import missing

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


def compose_schema() -> dict:
    try:
        vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        missing(
            "check-jsonschema (ships the Compose specification schema) is not installed",
            "it belongs to the test extra: pip install -e '.[test]'",
        )
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def topology():
    return load_topology()


def errors_of(document: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(document)]


def test_compose_file_is_valid_against_the_compose_specification(compose):
    assert errors_of(compose) == []


def test_the_schema_check_would_catch_a_mistake(compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway-a"]["netwroks"] = broken["services"]["gateway-a"].pop("networks")
    broken["services"]["consumer-b"]["depends_on"]["gateway-b"]["condition"] = "service_ready"
    errors = errors_of(broken)
    assert any("netwroks" in e for e in errors), errors
    assert any(e.startswith("services/consumer-b/depends_on") for e in errors), errors


def test_networks_subnets_and_internal_flags_are_the_topology_s(compose, topology):
    assert set(compose["networks"]) == set(topology.networks)
    for name, network in topology.networks.items():
        spec = compose["networks"][name]
        assert spec.get("internal", False) is network.internal, name
        assert [ipaddress.ip_network(c["subnet"]) for c in spec["ipam"]["config"]] == [network.subnet], name


def test_every_node_is_a_service_on_its_networks_with_its_addresses(compose, topology):
    services = compose["services"]
    for name, node in topology.nodes.items():
        assert name in services, f"topology node {name} has no service"
        networks = services[name].get("networks") or {}
        assert set(networks) == set(node.addresses), name
        for network, address in node.addresses.items():
            assert ipaddress.ip_address(networks[network]["ipv4_address"]) == address, (name, network)
    for name, service in services.items():
        if name not in topology.nodes:  # helpers such as the certs one-shot are on no network at all
            assert "networks" not in service and service.get("network_mode") == "none", name


def test_only_the_gateways_are_on_the_interconnect(compose):
    on_interconnect = {name for name, s in compose["services"].items() if INTERCONNECT in (s.get("networks") or {})}
    assert on_interconnect == {"gateway-a", "gateway-b"}


def test_every_address_a_service_names_is_on_a_network_it_is_on(compose, topology):
    """Isolation in the configuration itself: no command or health check aims across the sites."""
    for name, node in topology.nodes.items():
        service = compose["services"][name]
        text = json.dumps([service.get("command"), service.get("entrypoint"), service.get("healthcheck")])
        for address in map(ipaddress.ip_address, IPV4.findall(text)):
            assert any(address in topology.networks[n].subnet for n in node.addresses), (name, str(address))


def test_gateways_run_the_topology_s_site_files_with_their_certificates(compose, topology):
    for site_name, site in topology.sites.items():
        gateway = topology.gateway(site_name)
        service = compose["services"][gateway.name]
        mounted = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        site_file = service["command"][service["command"].index("-c") + 1]
        assert (ROOT / mounted[site_file]).resolve() == site.site_file, gateway.name
        assert mounted[str(Path(site_file).parent / "certs")] == f"certs-{site_name}"
        assert service["depends_on"]["certs"]["condition"] == "service_completed_successfully"
        assert service["healthcheck"]["test"][0] == "CMD"
    certs = compose["services"]["certs"]
    assert certs["command"] == list(topology.sites)
    assert {f"certs-{site}:/var/lib/interlink/out/{site}" for site in topology.sites} <= set(certs["volumes"])


def test_providers_and_consumers_use_the_site_files_addresses(compose, topology):
    services = compose["services"]
    site_a, site_b = (load_site(topology.sites[s].site_file) for s in ("site-a", "site-b"))
    providers = {e.protocol: str(e.providers[0]) for e in site_a.exports}
    for node in topology.nodes_of("site-a", "provider"):
        command = services[node.name]["command"]
        assert command[command.index("--listen") + 1] == providers[node.protocol], node.name
    triple = services["consumer-b"]["command"]
    dns = embedded_dns(site_b)
    assert triple[triple.index("--registry") + 1] == str(dns.listen)
    assert triple[triple.index("--zone") + 1] == dns.zone.rstrip(".")
    assert services["consumer-b-bolt"]["command"][0] == str(site_b.listen.bolt)
    for consumer in ("consumer-b", "consumer-b-bolt"):
        conditions = {k: v["condition"] for k, v in services[consumer]["depends_on"].items()}
        assert conditions["gateway-a"] == conditions["gateway-b"] == "service_healthy", consumer


def test_the_dockerfile_has_the_targets_and_files_compose_uses(compose):
    text = DOCKERFILE.read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))
    targets = {s["build"]["target"] for s in compose["services"].values() if "build" in s}
    assert targets == stages == {"interlink", "bolt-peer"}
    for source in re.findall(r"^COPY (.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "**/node_modules" in ignored and "**/*.key" in ignored


def test_the_certs_service_gives_each_gateway_what_its_site_file_needs(tmp_path, topology):
    """docker/lab-certs.sh as the certs service runs it; then each gateway's view checks out together."""
    if shutil.which("sh") is None:
        missing("sh is not installed", "install a POSIX shell (Debian: dash)")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "LAB_CERTS_PKI": str(tmp_path / "pki"),
        "LAB_CERTS_OUT": str(tmp_path / "out"),
        "LAB_CERTS_OWNER": f"{os.getuid()}:{os.getgid()}",
    }
    script = ROOT / "docker" / "lab-certs.sh"
    for _ in range(2):  # a second run keeps the CAs
        done = subprocess.run(["sh", str(script), *topology.sites], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    views = []
    for site_name, site in topology.sites.items():
        etc = tmp_path / f"etc-{site_name}"  # what the gateway container sees as /etc/interlink
        etc.mkdir()
        shutil.copy(site.site_file, etc / f"{site_name}.yaml")
        shutil.copytree(tmp_path / "out" / site_name, etc / "certs")
        files = sorted(str(p.relative_to(etc / "certs")) for p in (etc / "certs").rglob("*") if p.is_file())
        others = [f"{other}/ca.pem" for other in topology.sites if other != site_name]
        assert files == sorted([f"{site_name}/ca.pem", f"{site_name}/gateway.key", f"{site_name}/gateway.pem", *others])
        assert (etc / "certs" / site_name / "gateway.key").stat().st_mode & 0o777 == 0o600
        views.append(etc / f"{site_name}.yaml")
    assert [str(p) for p in check_files(views)] == []


def test_the_bolt_consumer_script_calls_and_reports(bolt_peers, spawn_peer):
    """docker/bolt-consumer.sh against a Bolt provider directly (in compose it calls GW-B's Bolt port)."""
    peers = ROOT / "tests" / "peers"
    provider = spawn_peer([bolt_peers, str(peers / "bolt_server.js"), "--listen", "127.0.0.1:0"], "bolt-provider")
    env = {
        **os.environ,
        "BOLT_CLIENT": str(peers / "bolt_client.js"),
        "PATH": f"{Path(bolt_peers).parent}{os.pathsep}{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["sh", str(ROOT / "docker" / "bolt-consumer.sh"), provider.target, "order-app"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"result":42' in done.stdout and "echo and add answered" in done.stdout
