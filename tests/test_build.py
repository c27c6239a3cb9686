"""The compiled build (setup.py, interlink/_build.py): what runs is what was tested, and never stale code."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from interlink import _build

ROOT = Path(__file__).resolve().parent.parent


def _module_name(source: str) -> str:
    return source[: -len(".py")].replace("/", ".")


def test_the_per_call_modules_run_compiled_after_setup():
    """scripts/setup.sh builds them; in CI a pure install would test something else than users run."""
    if _build.pure():
        pytest.skip("INTERLINK_PURE is set: this process runs the sources on purpose")
    built = [source for source in _build.COMPILED if _build.compiled_module(source) is not None]
    if not built and os.environ.get("CI") != "true":
        pytest.skip("installed without the compiled build (INTERLINK_PURE=1 at setup)")
    assert built == list(_build.COMPILED), "some modules were not compiled: run bash scripts/setup.sh"
    assert _build.stale_sources() == []
    for source in _build.COMPILED:
        module = importlib.import_module(_module_name(source))
        assert module.__file__ == _build.compiled_module(source), source


def test_interlink_pure_runs_the_sources():
    code = ("import importlib, interlink._build as b\n"
            "print(all(importlib.import_module(s[:-3].replace('/', '.')).__file__.endswith('.py') for s in b.COMPILED))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "INTERLINK_PURE": "1"},
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True", out.stderr


def test_a_source_changed_after_the_build_is_found(tmp_path: Path):
    source = _build.COMPILED[0]
    (tmp_path / "setup.py").write_text("")  # a source checkout
    (tmp_path / source).parent.mkdir(parents=True)
    (tmp_path / source).write_text("")
    assert _build.stale_sources(str(tmp_path)) == []  # no build: nothing stale
    built = tmp_path / (source[: -len(".py")] + importlib.machinery.EXTENSION_SUFFIXES[0])
    built.write_bytes(b"")
    os.utime(tmp_path / source, (1_000, 1_000))
    os.utime(built, (2_000, 2_000))
    assert _build.stale_sources(str(tmp_path)) == []
    os.utime(tmp_path / source, (3_000, 3_000))  # edited after the build
    assert _build.stale_sources(str(tmp_path)) == [source]
    (tmp_path / "setup.py").unlink()  # an installed package: its times say nothing
    assert _build.stale_sources(str(tmp_path)) == []


def test_a_stale_build_runs_the_sources_with_a_warning(tmp_path: Path):
    """An edited checkout not rebuilt yet must not run the old compiled code."""
    if _build.compiled_module(_build.COMPILED[-1]) is None:
        pytest.skip("installed without the compiled build")
    copy = tmp_path / "tree"
    copy.mkdir()
    shutil.copytree(ROOT / "interlink", copy / "interlink")  # (copy2 keeps the times: the build stays newer)
    shutil.copy2(ROOT / "setup.py", copy)
    for lib in ROOT.glob("*__mypyc*.so"):
        shutil.copy2(lib, copy)
    edited = copy / _build.COMPILED[-1]
    edited.write_text(edited.read_text() + "\n")
    code = ("import warnings, importlib\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    import interlink.gateway.call as call\n"
            "print(call.__file__.endswith('.py'), any('changed after the compiled build' in str(w.message) for w in seen))")
    env = {name: value for name, value in os.environ.items() if name != "INTERLINK_PURE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env={**env, "PYTHONPATH": str(copy)},
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True", "True"], out.stderr
