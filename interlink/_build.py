"""The compiled build (setup.py compiles COMPILED with mypyc), and running from the sources instead.

A compiled module is an extension module beside its source (interlink/gateway/call.cpython-311-*.so beside
call.py); Python's import system prefers it. The sources are loaded instead when INTERLINK_PURE=1 is set (line
coverage, a debugger, an A/B of the two), and when a source changed after the build (an edited checkout not yet
rebuilt: its compiled modules would run the old code): then with a warning that says how to rebuild."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

# The modules every call runs through, compiled in one group (calls between them are native). What they use from
# outside the list stays interpreted: routes, config, the control plane. model.py is in: its frozen dataclasses
# are built per call (a translated call builds a Reply, two Payloads and two Identities), an interpreted one
# field by field through object.__setattr__ (Reply 1.3 µs; compiled, reply_from_triple went 2.4 -> 1.6 µs). Left
# out after measuring: with
# mypyc 2.4.1 net/transport.py compiles once its `receive = _receive_raw` alias is a method of its own, but two
# full bench runs in one hour, with and without it, differed by what nginx's own hops differed by
# (bench/README.md, "The compiled build"); net/pool.py compiled takes only real ConnectionPool and
# ConnectionTable objects (its tests pass stand-ins); net/heap.py subclasses ctypes.Structure and runs once a
# watchdog tick.
COMPILED = (
    "interlink/model.py",
    "interlink/logs.py",
    "interlink/wire/cache.py",
    "interlink/wire/h2frames.py",
    "interlink/wire/hpack.py",
    "interlink/wire/h2headers.py",
    "interlink/wire/h2conn.py",
    "interlink/wire/grpc.py",
    "interlink/wire/tracecontext.py",
    "interlink/wire/link_headers.py",
    "interlink/wire/bolt.py",
    "interlink/wire/bolt_call.py",
    "interlink/wire/triple_call.py",
    "interlink/net/trips.py",
    "interlink/net/connection.py",
    "interlink/net/h2link.py",
    "interlink/net/boltlink.py",
    "interlink/gateway/deadlines.py",
    "interlink/gateway/metrics.py",
    "interlink/gateway/filters.py",
    "interlink/gateway/limits.py",
    "interlink/gateway/retries.py",
    "interlink/gateway/translation.py",
    "interlink/gateway/h2legs.py",
    "interlink/gateway/boltlegs.py",
    "interlink/gateway/call.py",
)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compiled_module(source: str, root: str = _ROOT) -> str | None:
    """The extension module built from `source` (a COMPILED path), or None when there is none."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    path = os.path.join(root, source[: -len(".py")] + suffix)
    return path if os.path.exists(path) else None


def stale_sources(root: str = _ROOT) -> list[str]:
    """COMPILED sources changed after their extension module was built, in a source checkout (an installed wheel
    holds no setup.py, and its files' times are those of the unpacking)."""
    if not os.path.exists(os.path.join(root, "setup.py")):
        return []
    stale = []
    for source in COMPILED:
        built = compiled_module(source, root)
        if built is not None and os.path.getmtime(os.path.join(root, source)) > os.path.getmtime(built):
            stale.append(source)
    return stale


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds `interlink.*` modules as their .py files (packages are left to the finders after it)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:  # noqa: ARG002
        if not fullname.startswith("interlink.") or not path:
            return None
        leaf = fullname.rpartition(".")[2]
        for directory in path:
            source = os.path.join(directory, leaf + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def pure() -> bool:
    """INTERLINK_PURE is set (not empty, not 0): install without compiling (setup.py), run the sources (choose)."""
    return os.environ.get("INTERLINK_PURE", "") not in ("", "0")


def choose() -> None:
    """Called once, by interlink/__init__.py, before any other module of the package is imported."""
    if pure():
        _load_sources()
        return
    stale = stale_sources()
    if stale:
        warnings.warn(f"interlink: {', '.join(stale)} changed after the compiled build; running the Python sources "
                      "(rebuild with `bash scripts/setup.sh`)", RuntimeWarning, stacklevel=3)
        _load_sources()


def _load_sources() -> None:
    if not any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourcesFirst())
