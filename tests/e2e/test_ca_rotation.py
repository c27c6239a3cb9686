"""Rotating a site's CA under load (issue 10, item 8): not one call may fail.

    grpcio caller (50 calls/s, 2 s deadline) --h2c--> GW-B --mTLS--> GW-A --h2c--> grpcio provider

Site A's CA is rotated, then site B's, each in three steps with a SIGHUP after each:
  1. the peer's trust for the site becomes a bundle: old CA + new CA;
  2. the site's gateway switches tls.cert / tls.key / tls.ca to a leaf of the new CA;
  3. the peer's trust becomes the new CA alone.
`interlink check` agrees with every state the gateways run, and refuses the states a gateway would refuse.
Once the old trust is gone, the link must run on connections made with the new material: GW-B replaces its
connections to GW-A (`pool.recycled` for each, `pool.connected` for its successor; GW-A logs `peer.accepted`).

Variants: a new self-signed site CA (`init_site`), and a new root whose intermediate signs the leaf (the
certificate file carries leaf + intermediate; peers trust the root only).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from interlink.control.certs import init_site
from interlink.control.check import check_files
from interlink.demo.client import EchoClient
from tests.e2e import rotation
from tests.e2e.rotation import CallLoad, events_named, interlink_check, links_to, log_size, reload_site
from tests.e2e.topology import ALLOWED_APP, Certs, TwoSites, access_domain, two_sites

APP = (("tri-consumer-appname", ALLOWED_APP),)
CONNECTIONS = 2  # GW-B's mTLS connections to GW-A (peers.site-a.connections)
SETTLE = 0.6  # seconds of load in each state
REPLACE_WITHIN = 6.0  # seconds for the link to be re-made after the old trust is gone


@dataclass(frozen=True)
class Material:
    """What a site's gateway uses after the rotation: `ca` is the trust anchor (its own tls.ca, and what
    peers pin), `cert` the certificate file (leaf, then intermediates), `key` its key."""

    ca: Path
    cert: Path
    key: Path
    refused_cert: Path  # a certificate file for this key that the gateway and check must both refuse
    refused_ca: Path


def new_material(variant: str, site: str, folder: Path, old_ca: Path) -> Material:
    dns = (f"gw.{site}.test", "127.0.0.1")
    if variant == "plain":
        paths = init_site(site, folder, dns_names=list(dns))
        # Refused: the new leaf with the old CA as tls.ca (it was not issued by it).
        return Material(paths.ca, paths.cert, paths.key, refused_cert=paths.cert, refused_ca=old_ca)
    root = rotation.new_root(f"interlink {site} root 2")
    intermediate = rotation.new_intermediate(root, f"interlink {site} intermediate 2")
    leaf = rotation.new_leaf(intermediate, site, dns)
    assert leaf.chain == (intermediate.cert,)
    cert, key = leaf.write(folder, "gateway")  # leaf + intermediate
    ca = rotation.write_cert(folder / "root.pem", root.cert)
    # Refused: the leaf alone, without the intermediate that links it to the root.
    leaf_only = rotation.write_cert(folder / "leaf-only.pem", leaf.cert)
    return Material(ca, cert, key, refused_cert=leaf_only, refused_ca=ca)


@dataclass
class Replacement:
    """Evidence that GW-B's connections to GW-A were made anew after a trust change."""

    phase: str
    before: set[int]  # GW-B's local ports of its links to GW-A before the change
    after: set[int] = field(default_factory=set)
    recycled: int = 0  # GW-B pool.recycled since the change
    connected: int = 0  # GW-B pool.connected since the change
    accepted: int = 0  # GW-A peer.accepted (site-b) since the change
    seconds: float = 0.0
    log_b: list[dict[str, Any]] = field(default_factory=list)

    @property
    def replaced(self) -> bool:
        return bool(self.after) and not (self.after & self.before) and len(self.after) >= CONNECTIONS


def _check_ok(sites: TwoSites, state: str) -> None:
    problems = check_files([sites.a.path, sites.b.path])
    assert problems == [], f"interlink check refuses the running state '{state}':\n" + "\n".join(map(str, problems))


def _wait_replaced(sites: TwoSites, phase: str, since: Before, need_recycled: bool) -> Replacement:
    """Wait (bounded) until none of GW-B's links of `since` is left and new ones carry the calls."""
    assert sites.b.process is not None
    before, b_offset, a_offset = since.links, since.b_offset, since.a_offset
    evidence = Replacement(phase, before)
    started = time.monotonic()
    while True:
        evidence.after = links_to(sites.b.process.pid, sites.a_peer_port)
        evidence.recycled = len(events_named(sites.b, "pool.recycled", b_offset))
        evidence.connected = len(events_named(sites.b, "pool.connected", b_offset))
        accepted = events_named(sites.a, "peer.accepted", a_offset)
        evidence.accepted = sum(1 for e in accepted if e.get("peer") == "site-b")
        evidence.seconds = round(time.monotonic() - started, 2)
        done = (
            evidence.replaced
            and evidence.connected >= len(before)
            and evidence.accepted >= len(before)
            and (evidence.recycled >= len(before) or not need_recycled)
        )
        if done or evidence.seconds > REPLACE_WITHIN:
            break
        time.sleep(0.1)
    evidence.log_b = [
        e for e in sites.b.events(b_offset) if str(e.get("event", "")).startswith(("pool.", "peer.", "config."))
    ]
    return evidence


@dataclass(frozen=True)
class Before:
    """Right before a step: GW-B's links to GW-A (its local ports) and both logs' sizes."""

    links: set[int]
    b_offset: int
    a_offset: int


def _before(sites: TwoSites) -> Before:
    assert sites.b.process is not None
    return Before(links_to(sites.b.process.pid, sites.a_peer_port), log_size(sites.b), log_size(sites.a))


def _rotate(sites: TwoSites, load: CallLoad, *, site: str, new: Material, folder: Path, marks: list,
            between_steps=None) -> tuple[Before, Before]:
    """Rotate `site`'s CA in three SIGHUP steps, load running through each state; returns what was
    there right before step 2 and right before step 3."""
    own, peer = (sites.a, sites.b) if site == "site-a" else (sites.b, sites.a)
    old_ca = Path(own.config["tls"]["ca"])

    # 1. The peer trusts the old and the new CA.
    bundle = rotation.write_bundle(folder / f"{peer.name}-trusts-{site}.pem", old_ca, new.ca)
    config = copy.deepcopy(peer.config)
    config["peers"][site]["ca"] = str(bundle)
    reload_site(peer, config)
    marks.append((f"{site} step 1: {peer.name} trusts old+new", load.now()))
    _check_ok(sites, f"{site} step 1")
    time.sleep(SETTLE)
    if between_steps is not None:
        between_steps()

    # 2. The site's gateway uses a leaf of the new CA.
    step_2 = _before(sites)
    config = copy.deepcopy(own.config)
    config["tls"] = {**config["tls"], "ca": str(new.ca), "cert": str(new.cert), "key": str(new.key)}
    reload_site(own, config)
    marks.append((f"{site} step 2: {own.name} presents the new leaf", load.now()))
    _check_ok(sites, f"{site} step 2")
    time.sleep(SETTLE)

    # 3. The peer trusts the new CA alone.
    step_3 = _before(sites)
    config = copy.deepcopy(peer.config)
    config["peers"][site]["ca"] = str(new.ca)
    reload_site(peer, config)
    marks.append((f"{site} step 3: {peer.name} trusts the new CA alone", load.now()))
    _check_ok(sites, f"{site} step 3")
    time.sleep(SETTLE)
    return step_2, step_3


@pytest.fixture
def rotation_sites(tmp_path, py_provider):
    certs = Certs(tmp_path / "certs")  # this test's own CAs: the session's stay untouched
    sites = two_sites(certs, tmp_path / "sites", py_provider.target, name="rot",
                      peer_options={"connections": CONNECTIONS})
    yield sites
    sites.stop()


@pytest.mark.parametrize("variant", ["plain", "intermediate"])
def test_ca_rotation_of_both_sites_under_load_fails_no_call(rotation_sites, tmp_path, variant):
    sites = rotation_sites
    assert sites.b.process is not None
    folder = tmp_path / "rotation"
    old_a = {k: Path(v) for k, v in sites.a.config["tls"].items()}
    old_b = {k: Path(v) for k, v in sites.b.config["tls"].items()}
    new_a = new_material(variant, "site-a", folder / "site-a-2", old_a["ca"])
    new_b = new_material(variant, "site-b", folder / "site-b-2", old_b["ca"])
    problems: list[str] = []
    notes: list[str] = []  # what check and the gateway said about the refused states (printed)

    initial = interlink_check(sites.a.path, sites.b.path)
    assert initial.returncode == 0 and "ok:" in initial.stdout, initial
    b_initial = folder / "site-b-initial.yaml"  # GW-B's file as it was: trusts site A's old CA alone
    b_initial.write_text(sites.b.path.read_text())

    def refused_states() -> None:
        """Between site A's steps 1 and 2: what check and the gateway must both refuse."""
        # GW-A on the new leaf while GW-B still trusts only the old CA: GW-B would refuse GW-A.
        a_ahead = copy.deepcopy(sites.a.config)
        a_ahead["tls"] = {**a_ahead["tls"], "ca": str(new_a.ca), "cert": str(new_a.cert), "key": str(new_a.key)}
        path = rotation.write_yaml(folder / "site-a-ahead.yaml", a_ahead)
        done = interlink_check(path, b_initial)
        notes.append(f"check {path.name} {b_initial.name}: exit {done.returncode}: {done.stderr.strip()}")
        if done.returncode != 1 or not any(k in done.stderr for k in ("peers.site-a.ca", "tls.cert")):
            problems.append(f"check said ok to GW-A's new leaf against GW-B's old trust: rc={done.returncode}"
                            f" stdout={done.stdout!r} stderr={done.stderr!r}")
        # A certificate file GW-A itself refuses: check says so too, naming tls.cert.
        broken = copy.deepcopy(sites.a.config)
        broken["tls"] = {**broken["tls"], "ca": str(new_a.refused_ca), "cert": str(new_a.refused_cert),
                         "key": str(new_a.key)}
        path = rotation.write_yaml(folder / "site-a-refused.yaml", broken)
        done = interlink_check(path, sites.b.path)
        notes.append(f"check {path.name} {sites.b.path.name}: exit {done.returncode}: {done.stderr.strip()}")
        if done.returncode != 1 or "tls.cert" not in done.stderr:
            problems.append(f"check said ok to a certificate GW-A refuses: rc={done.returncode} stderr={done.stderr!r}")
        good = copy.deepcopy(sites.a.config)
        _, failed = reload_site(sites.a, broken, expect="config.reload_failed")
        notes.append(f"GW-A SIGHUP with {path.name}: {failed}")
        if "tls.cert" not in failed.get("error", ""):
            problems.append(f"GW-A refused the broken certificate without naming tls.cert: {failed}")
        rotation.write_site(sites.a, good)  # the file on disk is the running one again

    load = CallLoad(sites.triple_target, APP, rate=50, deadline=2.0).start()
    marks: list[tuple[str, float]] = [("start", 0.0)]
    try:
        time.sleep(SETTLE)
        # --- site A (the provider side: GW-A's server certificate, GW-B's trust) ---
        _, a_step_3 = _rotate(sites, load, site="site-a", new=new_a, folder=folder, marks=marks,
                              between_steps=refused_states)
        # Once GW-B trusts only the new CA, its links to GW-A must be ones verified with it.
        site_a = _wait_replaced(sites, "site-a step 3", a_step_3, need_recycled=True)
        # --- site B (the client side: GW-B's client certificate, GW-A's trust) ---
        b_step_2, _ = _rotate(sites, load, site="site-b", new=new_b, folder=folder, marks=marks)
        # Links GW-B made with its old certificate must all be gone once GW-A trusts only the new CA.
        site_b = _wait_replaced(sites, "site-b steps 2-3", b_step_2, need_recycled=False)
        marks.append(("after both rotations", load.now()))
        time.sleep(SETTLE)
    finally:
        load.stop()

    final = interlink_check(sites.a.path, sites.b.path)
    if final.returncode != 0:
        problems.append(f"check refuses the final state: {final.stderr}")

    # Both sites now run on the new material only: fresh handshakes as a peer gateway makes them.
    port, domain = sites.a_peer_port, access_domain("site-b", "site-a")
    probes = {
        "GW-A's chain verifies with site A's new anchor alone": (
            rotation.tls_probe(port, sni=domain, cert=new_b.cert, key=new_b.key, trust=new_a.ca), True),
        "GW-A no longer verifies with site A's old CA": (
            rotation.tls_probe(port, sni=domain, cert=new_b.cert, key=new_b.key, trust=old_a["ca"]), False),
        "GW-A refuses site B's old leaf": (
            rotation.tls_probe(port, sni=domain, cert=old_b["cert"], key=old_b["key"], trust=new_a.ca), False),
    }
    for what, (result, expected) in probes.items():
        if result.accepted != expected:
            problems.append(f"probe '{what}': accepted={result.accepted} ({result.detail})")

    counts = load.counts
    failures = load.failures
    windows = _calls_per_state(load, marks)
    summary = (
        f"{variant}: {load.made} calls made, outcomes {dict(counts)}; calls per state {windows}\n"
        f"site A replacement: {_describe(site_a)}\nsite B replacement: {_describe(site_b)}\n"
        + "\n".join(notes)
    )
    print(summary)
    assert load.made >= 50 and sum(counts.values()) == load.made, summary
    assert not failures, f"{len(failures)} failed calls, first ones: {failures[:10]}\n{summary}"
    assert all(n >= 10 for n in windows.values()), summary  # load ran through every state
    if not site_a.replaced or site_a.recycled < len(site_a.before) or site_a.connected < len(site_a.before) \
            or site_a.accepted < len(site_a.before):
        problems.append(f"after site A's step 3 GW-B did not replace its links to GW-A: {_describe(site_a)}")
    if not site_b.replaced or site_b.connected < len(site_b.before) or site_b.accepted < len(site_b.before):
        problems.append(f"after site B's rotation links made with B's old leaf remain: {_describe(site_b)}")
    assert not problems, "\n".join(problems) + "\n" + summary


def _calls_per_state(load: CallLoad, marks: list[tuple[str, float]]) -> dict[str, int]:
    out = {}
    times = load.send_times()
    for index, (name, start) in enumerate(marks):
        end = marks[index + 1][1] if index + 1 < len(marks) else float("inf")
        out[name] = sum(1 for t in times if start <= t < end)
    return out


def _describe(evidence: Replacement) -> str:
    lines = [
        f"links before={sorted(evidence.before)} after={sorted(evidence.after)} replaced={evidence.replaced};"
        f" GW-B pool.recycled={evidence.recycled} pool.connected={evidence.connected};"
        f" GW-A peer.accepted={evidence.accepted}; waited {evidence.seconds}s"
    ]
    lines += [f"    GW-B log: {e}" for e in evidence.log_b[:12]]
    return "\n".join(lines)


# --- expiry warnings -------------------------------------------------------------------------------------


def test_certificates_that_expire_soon_are_logged_at_start_and_on_reload(tmp_path, py_provider):
    certs = Certs(tmp_path / "certs")
    # Site A's CA and gateway certificate expire in 3 days; site B's are healthy.
    certs.sites["site-a"] = init_site(
        "site-a", tmp_path / "certs" / "site-a", dns_names=["gw.site-a.test", "127.0.0.1"], ca_days=3, leaf_days=3
    )
    sites = two_sites(certs, tmp_path / "sites", py_provider.target, name="expiry")
    try:
        with EchoClient(sites.triple_target) as client:
            assert client.add(1, 2, metadata=APP) == 3  # a certificate about to expire still works

        def expiring(gateway, offset: int = 0) -> dict[str, dict[str, Any]]:
            return {e["key"]: e for e in events_named(gateway, "tls.certificate_expiring", offset)}

        # At start: GW-A about its own certificate, GW-B about the CA it trusts for site A; nothing else.
        at_start_a, at_start_b = expiring(sites.a), expiring(sites.b)
        assert set(at_start_a) == {"tls.cert"}, at_start_a
        assert set(at_start_b) == {"peers.site-a.ca"}, at_start_b
        for event in (at_start_a["tls.cert"], at_start_b["peers.site-a.ca"]):
            assert 2 <= event["days_left"] <= 3, event
            assert event["level"] == "warning", event
        assert at_start_b["peers.site-a.ca"]["path"] == str(certs.site("site-a").ca)

        # On reload: again (nothing changed, the certificate still expires).
        offset, _ = reload_site(sites.b)
        time.sleep(0.3)
        assert set(expiring(sites.b, offset)) == {"peers.site-a.ca"}
        offset, _ = reload_site(sites.a)
        time.sleep(0.3)
        assert set(expiring(sites.a, offset)) == {"tls.cert"}

        # tls.expiry_warning_days is the threshold: at 1 day, 2+ days left is no warning.
        quieter = copy.deepcopy(sites.b.config)
        quieter["tls"]["expiry_warning_days"] = 1
        offset, _ = reload_site(sites.b, quieter)
        time.sleep(0.3)
        assert expiring(sites.b, offset) == {}
        # ... and at 30 (the default) it warns again.
        quieter["tls"]["expiry_warning_days"] = 30
        offset, _ = reload_site(sites.b, quieter)
        time.sleep(0.3)
        assert set(expiring(sites.b, offset)) == {"peers.site-a.ca"}
    finally:
        sites.stop()
