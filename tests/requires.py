"""What a test needs that is not Python: real servers, peers and tools (ZooKeeper, BIND9, Node and its
packages, root with iproute2, the Compose schema).

`missing(reason, fix)` is the one rule for their absence: with CI=true it is a failure (CI installs all of
them, so a missing one is a broken setup, never a silent pass); on a developer's machine the test is
skipped with the reason and how to install what is missing.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

SETUP = "run: bash scripts/setup.sh --test"


def missing(reason: str, fix: str = SETUP) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required on CI; {fix})")
    pytest.skip(f"{reason}; {fix}")
