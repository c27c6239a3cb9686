"""nginx instances of the benchmark: configs rendered from bench/templates/ into a temp dir, run in the
foreground as `nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`, one worker each."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from bench.processes import Child, Children, wait_for_port

TEMPLATES = Path(__file__).parent / "templates"


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("nginx not found: run bench/run.sh (it installs Debian's nginx)")


def nginx_version() -> str:
    out = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def render(template: str, values: dict[str, object]) -> str:
    """Fill @@NAME@@ placeholders (nginx itself owns `$name`); every placeholder must be given."""
    text = (TEMPLATES / template).read_text()
    text = re.sub(r"@@([A-Z_]+)@@", lambda m: str(values[m.group(1)]), text)
    return text


def start(children: Children, name: str, template: str, prefix: Path, values: dict[str, object]) -> Child:
    """Render `template` into `prefix` and start nginx there; returns once its port accepts connections."""
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "body").mkdir(exist_ok=True)
    values = {"PREFIX": prefix, **values}
    (prefix / "common.conf").write_text(render("common.conf.in", values))
    conf = prefix / "nginx.conf"
    conf.write_text(render(template, values))
    argv = [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
    check = subprocess.run([*argv[:5], "-t", "-q"], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nginx config {conf} is invalid:\n{check.stderr.strip()}")
    child = children.start(name, argv, cwd=prefix, log=prefix / "stdout.log")
    if not wait_for_port(int(values["PORT"]), child):
        error_log = (prefix / "error.log").read_text(errors="replace") if (prefix / "error.log").exists() else ""
        raise RuntimeError(f"{name} did not start listening on {values['PORT']}:\n{child.log_tail()}\n{error_log}")
    return child
