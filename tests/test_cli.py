"""The commands users type: interlink lab, check, certs, run (error paths)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "site-configs" / "lab"


def interlink(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "interlink", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_lab_runs_two_sites_and_reports_every_call_as_expected():
    done = interlink("lab")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "16 calls, all as expected" in done.stdout
    assert "DNS-SD lookup" in done.stdout
    assert "message orders.created B -> A (order-app)" in done.stdout and "dead-lettered" in done.stdout
    assert "[info" not in done.stdout  # the lab's own producer and consumer log nothing over the summary
    assert "PERMISSION_DENIED" in done.stdout and "UNIMPLEMENTED" in done.stdout


@pytest.fixture
def lab_copy(tmp_path):
    for site in ("site-a", "site-b"):
        shutil.copy(LAB / f"{site}.yaml", tmp_path)
        done = interlink("certs", "init-site", site, "--out", str(tmp_path / "certs" / site), "--dns", "127.0.0.1")
        assert done.returncode == 0, done.stderr
    return tmp_path


def test_check_accepts_the_lab_pair(lab_copy):
    done = interlink("check", str(lab_copy / "site-a.yaml"), str(lab_copy / "site-b.yaml"))
    assert done.returncode == 0, done.stderr
    assert "ok: 2 site file(s)" in done.stdout


def test_check_reports_mismatched_domains_with_file_and_line(lab_copy):
    site_b = lab_copy / "site-b.yaml"
    site_b.write_text(site_b.read_text().replace("site-b.gw.site-a.lab", "wrong.gw.site-a.lab"))
    done = interlink("check", str(lab_copy / "site-a.yaml"), str(site_b))
    assert done.returncode == 1
    assert "site-a.yaml:20: domains.site-b" in done.stderr and "site-b.yaml:22: peers.site-a.domain" in done.stderr, done.stderr


def test_run_refuses_a_bad_site_file_with_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: site-a\nlisten:\n  peer: 127.0.0.1\n")
    done = interlink("run", "-c", str(bad), timeout=30)
    assert done.returncode == 1
    assert f"{bad}:3:" in done.stderr and "host:port" in done.stderr, done.stderr


def test_run_says_which_address_is_taken(lab_copy, free_port):
    """A listener that cannot bind is named with the OS's reason (it once read "Exceptions from Trio nursery
    (1 sub-exception)": the error sat in a group nested in another)."""
    site_a = lab_copy / "site-a.yaml"
    text = re.sub(r"\n  admin: .*", "", site_a.read_text())  # (optional: one listener less to find free)
    site_a.write_text(text.replace("127.0.0.1:17443", f"127.0.0.1:{free_port}"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port))
        taken.listen()
        done = interlink("run", "-c", str(site_a), timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"interlink run: [Errno 98] cannot listen on 127.0.0.1:{free_port}: Address already in use", done.stderr


def test_certs_init_site_refuses_to_overwrite_a_ca(tmp_path):
    assert interlink("certs", "init-site", "site-x", "--out", str(tmp_path / "x")).returncode == 0
    again = interlink("certs", "init-site", "site-x", "--out", str(tmp_path / "x"))
    assert again.returncode == 1 and "ca" in again.stderr


# --- interlink lab call: the consumer of the docker and netns labs --------------------------------------


def test_lab_call_makes_each_call_and_prints_one_json_line_per_call(py_provider):
    done = interlink("lab", "call", "--target", py_provider.target, "--json", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["case"] for line in lines] == ["echo", "add", "count", "sum", "chat"]
    assert all(line["status"] == "OK" and line["target"] == py_provider.target for line in lines), lines
    assert "served by py-provider" in lines[0]["detail"]


def test_lab_call_prints_readable_lines_and_exits_1_when_nothing_answers(free_port):
    done = interlink("lab", "call", "--target", f"127.0.0.1:{free_port}", "--case", "add", "--timeout", "2", timeout=60)
    assert done.returncode == 1
    assert re.match(r"consumer: add\s+-> UNAVAILABLE", done.stdout), done.stdout


def test_lab_call_needs_a_target_or_a_registry():
    done = interlink("lab", "call", "--zone", "site-b.lab")
    assert done.returncode == 2 and "--registry" in done.stderr


def test_lab_netns_refuses_to_run_without_root(monkeypatch):
    from structlog.testing import capture_logs

    from interlink import labnet

    monkeypatch.setattr(labnet.os, "geteuid", lambda: 1000)
    with capture_logs() as events:
        assert labnet.run_netns_lab() == 1
    assert [e["event"] for e in events] == ["lab.netns_unavailable"] and "needs root" in events[0]["error"]


# --- interlink --version, the help examples, interlink status --------------------------------------------


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    done = interlink("--version", timeout=30)
    assert done.returncode == 0 and done.stdout == f"interlink {version('interlink')}\n"


@pytest.mark.parametrize("command", [["run"], ["check"], ["certs", "init-site"], ["certs", "issue"], ["lab"],
                                     ["lab", "call"], ["status"]])
def test_every_command_shows_an_example_in_its_help(command):
    done = interlink(*command, "--help", timeout=30)
    assert done.returncode == 0
    example = re.search(r"^examples?:\n  (interlink .+)$", done.stdout, re.MULTILINE)
    assert example and example[1].split()[1:1 + len(command)] == command, done.stdout


@pytest.fixture
def admin_sources():
    from tests.control.test_admin import FakeSources

    return FakeSources()


@pytest.fixture
def admin_address(admin_sources):
    from tests.control.test_admin import admin_server_in_thread

    with admin_server_in_thread(admin_sources) as (host, port):
        yield f"{host}:{port}"


def test_status_prints_the_table_and_exits_0_when_ready(admin_address):
    done = interlink("status", "--admin", admin_address, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("site site-a  version 0.1.0") and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines.index("PEERS AND LINKS") < lines.index("EXPORTS") < lines.index("COUNTERS")
    assert any(re.match(r"site-b +127\.0\.0\.1:9443 +triple +up +1/1 ", line) for line in lines), done.stdout


def test_status_json_prints_the_document(admin_address, admin_sources):
    done = interlink("status", "--admin", admin_address, "--json", timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == admin_sources.status_document


def test_status_exits_1_with_the_reasons_when_not_ready(admin_address, admin_sources):
    admin_sources.ready = (False, ["no link to site-b is up", "registry not synced"])
    done = interlink("status", "--admin", admin_address, timeout=30)
    assert done.returncode == 1
    assert done.stderr == "not ready: no link to site-b is up\nnot ready: registry not synced\n"
    assert "PEERS AND LINKS" in done.stdout  # the table still says what is going on


def test_status_reads_the_admin_address_from_the_site_file(admin_address, tmp_path):
    site = tmp_path / "site-a.yaml"
    site.write_text(SITE_WITHOUT_ADMIN.replace("listen:\n", f"listen:\n  admin: {admin_address}\n"))
    done = interlink("status", "-c", str(site), timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("site site-a")


def test_status_exits_2_and_says_how_to_fix_it_when_nothing_answers(free_port):
    done = interlink("status", "--admin", f"127.0.0.1:{free_port}", "--timeout", "2", timeout=30)
    assert done.returncode == 2 and done.stdout == ""
    assert f"http://127.0.0.1:{free_port}/status" in done.stderr and "is the gateway running" in done.stderr


SITE_WITHOUT_ADMIN = """\
site: site-a
listen:
  peer: 127.0.0.1:8443
tls: {ca: certs/ca.pem, cert: certs/gateway.pem, key: certs/gateway.key}
registry: {kind: static}
"""


def test_status_exits_2_when_the_site_file_has_no_admin_address(tmp_path):
    site = tmp_path / "site-a.yaml"
    site.write_text(SITE_WITHOUT_ADMIN)
    done = interlink("status", "-c", str(site), timeout=30)
    assert done.returncode == 2
    assert f"{site} has no listen.admin; add `listen: {{admin: 127.0.0.1:9901}}`" in done.stderr


def test_status_needs_an_admin_address_or_a_site_file():
    done = interlink("status", timeout=30)
    assert done.returncode == 2 and "--admin HOST:PORT, or -c SITE.yaml" in done.stderr


@pytest.mark.parametrize("argv", [["lab"], ["lab", "call", "--target", "127.0.0.1:1"]])
def test_the_lab_without_its_extra_says_what_to_install(argv, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "grpc" else real(name, *rest))
    from interlink.cli import main

    assert main(argv) == 1
    assert "pip install 'interlink[lab]'" in capsys.readouterr().err
