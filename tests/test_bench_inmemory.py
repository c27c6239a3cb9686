"""bench/inmemory.py keeps working (its numbers are never asserted): every shape it offers runs calls through a
CallCore, and a call that does not end OK would stop it. (In a process of its own: it configures logging for
the whole process.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("role", "caller", "upstream", "shape"), [
    ("peer", "triple", "triple", "triple"),
    ("local", "triple", "triple", "triple"),
    ("peer", "bolt", "bolt", "bolt"),
    ("local", "bolt", "bolt", "bolt"),
    ("peer", "bolt", "triple", "bolt->triple"),
    ("peer", "triple", "bolt", "triple->bolt"),
])
def test_the_in_memory_bench_runs_calls_through_the_call_core(role: str, caller: str, upstream: str, shape: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.inmemory", "--role", role, "--caller", caller, "--upstream", upstream,
         "--calls", "128", "--rounds", "2", "--concurrency", "16"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{role} {shape} c=16: min "), done.stdout
