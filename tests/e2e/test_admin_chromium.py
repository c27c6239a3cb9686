"""The admin page as a real browser renders it: headless Chromium loads `/` from a running AdminServer and
dumps the DOM it built; the peers and counters must be there, and no script may have run."""

from __future__ import annotations

import copy
import shutil
import subprocess

from interlink.control.status_view import render_html
from tests.control.test_admin import FakeSources, admin_server_in_thread
from tests.control.test_status_view import SAMPLE_STATUS, PageTables
from tests.requires import missing


def test_chromium_renders_the_peers_and_the_counters(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("chromium not installed", "run: bash scripts/setup.sh --test (installs the Debian package chromium)")
    status = copy.deepcopy(SAMPLE_STATUS)
    status["counters"]["calls"] = {"OK": 1234, "PERMISSION_DENIED": 56}
    with admin_server_in_thread(FakeSources(status)) as (host, port):
        done = subprocess.run(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
             "--dump-dom", f"http://{host}:{port}/"],
            capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = PageTables(done.stdout)
    peers = [row["data-peer"] for row in dom.row_attributes.get("peers", []) if row.get("class") == "peer"]
    assert peers == ["site-b", "site-c"], done.stdout[:2000]
    counters = dict(row for row in dom.tables["counters"][1:])
    assert counters["calls OK"] == "1234" and counters["calls PERMISSION_DENIED"] == "56"
    assert dom.tables["peers"][1][1:4] == ["127.0.0.1:9443", "triple", "up"]
    assert "script" not in dom.tags
    # what Chromium built is what the server sent (nothing added, nothing blocked by the page's own policy)
    assert PageTables(render_html(status)).tables == dom.tables
