"""The example site files in site-configs/ are what users copy: they must load and their registry block
must validate (certificates are not checked: the examples point at files a user makes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from interlink.control.registry_sync import registry_settings
from interlink.control.sitefile import load_site

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "site-configs").glob("example-*.yaml"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"example-bolt.yaml", "example-dns.yaml", "example-zookeeper.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_its_registry_validates(path, tmp_path):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    config = load_site(copy)
    key_file = config.registry.options.get("tsig_file")
    if key_file:  # what `tsig-keygen interlink-gw` writes
        target = tmp_path / str(key_file)
        target.parent.mkdir(parents=True)
        target.write_text('key "interlink-gw" {\n\talgorithm hmac-sha256;\n\tsecret "c2VjcmV0c2VjcmV0";\n};\n')
    settings = registry_settings(config)
    assert settings.kind == {"static": "static", "zookeeper": "zookeeper", "dns": "dns-external"}[config.registry.kind]
