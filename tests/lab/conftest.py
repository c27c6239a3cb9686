"""Fixtures of the netns lab (interlink/labnet/): site-configs/lab/topology.yaml in network namespaces.

* ``netns_ready`` -- this machine can build the lab (root, iproute2); fails on CI (``CI=true``, where the
  tests run as root), else skips. Removes namespaces left by lab processes that no longer run, then
  returns what ``ip netns list`` and ``ip link`` showed before the lab.
* ``netns_lab`` -- the two sites running in namespaces (module scope: gateways, demo providers, a capture
  of the interconnect); after the module, asserts that teardown left ``ip netns list`` and the root
  namespace's links exactly as they were and that no process of the lab still runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from interlink.labnet import NetnsLab, NetnsUnavailable, namespace_names, remove_stale, require_netns
from tests.lab.netns_state import Before, root_links
from tests.requires import missing


def unavailable(reason: str) -> None:
    missing(reason, "run the tests as root with iproute2 and tcpdump installed")


@pytest.fixture(scope="module")
def netns_ready() -> Before:
    try:
        require_netns()
    except NetnsUnavailable as exc:
        unavailable(str(exc))
    remove_stale()
    return Before(namespace_names(), root_links())


@pytest.fixture(scope="module")
def tcpdump_ready() -> str:
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        unavailable("tcpdump is not installed (apt-get install tcpdump)")
    return tcpdump


@pytest.fixture(scope="module")
def netns_lab(netns_ready: Before, tmp_path_factory) -> Iterator[NetnsLab]:
    lab = NetnsLab(tmp_path_factory.mktemp("netns-lab"))
    with lab:
        yield lab
    assert all(process.poll() is not None for process in lab.namespaces.processes), "a lab process still runs"
    netns_ready.assert_restored()
