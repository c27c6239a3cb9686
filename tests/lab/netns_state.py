"""What the machine looked like before a netns lab: `ip netns list` and the root namespace's links."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from interlink.labnet import namespace_names


def root_links() -> list[str]:
    done = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return sorted(line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines())


@dataclass(frozen=True)
class Before:
    namespaces: list[str]
    links: list[str]

    def assert_restored(self) -> None:
        assert namespace_names() == self.namespaces, "ip netns list is not as it was before the lab"
        assert root_links() == self.links, "the root namespace's links are not as they were before the lab"
