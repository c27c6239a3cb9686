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


def test_the_limits_example_lists_every_key_with_its_default(tmp_path):
    """site-configs/example-limits.yaml is the reference users copy: every key of `limits:`, defaults."""
    from interlink.config import Limits
    from interlink.control.sitefile import LIMIT_KEYS

    path = Path(__file__).resolve().parents[2] / "site-configs" / "example-limits.yaml"
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    config = load_site(copy)
    assert config.limits == Limits()
    text = path.read_text()
    assert all(f"  {key}:" in text for key in LIMIT_KEYS)


def test_limits_are_read_with_their_units_and_checked_with_file_and_line(tmp_path):
    from interlink.control.sitefile import SiteFileError

    base = (Path(__file__).resolve().parents[2] / "site-configs" / "example-limits.yaml").read_text()
    head = base.split("\nlimits:")[0] + "\n"
    good = tmp_path / "good.yaml"
    good.write_text(head + "limits:\n  idle_timeout_ms: 1500\n  bolt_max_frame_bytes: 2048\n")
    limits = load_site(good).limits
    assert limits.idle_timeout == 1.5 and limits.bolt_max_frame_bytes == 2048
    bad = tmp_path / "bad.yaml"
    bad.write_text(head + "limits:\n  idle_timeout_ms: 10\n  nonsense: 3\n")
    with pytest.raises(SiteFileError) as info:
        load_site(bad)
    text = str(info.value)
    line = head.count("\n") + 2
    assert f"bad.yaml:{line}: limits.idle_timeout_ms: 10 is out of range" in text
    assert f"bad.yaml:{line + 1}: limits.nonsense: unknown key" in text
