"""Interlink: a cross-site interconnect gateway.

Its per-call modules are compiled with mypyc when it is installed (setup.py, interlink/_build.py); with
INTERLINK_PURE=1 in the environment a process runs their Python sources instead."""

from interlink import _build

_build.choose()
