"""Fuzzing the site-file loader (interlink.control.sitefile.load_site).

Declared: `SiteFileError` only, whatever the file holds: wrong types, unknown and duplicate keys, huge
numbers, explicit YAML tags on the wrong text, anchors and aliases (including alias and merge-key "billion
laughs" bombs and anchors that contain themselves), deep nesting, `limits:` sections with random keys and
values, paths that cannot be expanded, binary junk and invalid UTF-8.

Oracles: a loaded file is a `SiteConfig`; a refused one has at least one problem, each with a line that is
None or a line number, and the error formats as text. The valid files this suite starts from must load.
No input may run longer than the time guard; bombs must also stay within a memory budget.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from interlink.control import sitefile
from interlink.config import SiteConfig
from interlink.control.sitefile import Problem, SiteFileError, load_site

from .conftest import FULL_INPUTS, SIZES, Mutator, TimeGuard, fuzz_loop, given_settings, guarded

MINIMAL = """\
site: site-a
listen: {peer: 127.0.0.1:8443}
tls: {ca: ca.pem, cert: gateway.pem, key: gateway.key}
"""

FULL = """\
site: site-a
trust_domain: interlink
listen:
  triple: 127.0.0.1:50051
  bolt: 127.0.0.1:12200
  peer: 127.0.0.1:8443
  admin: 127.0.0.1:9901
tls:
  ca: certs/site-a/ca.pem
  cert: certs/site-a/gateway.pem
  key: certs/site-a/gateway.key
  expiry_warning_days: 14
registry: {kind: static}
peers:
  site-b:
    endpoints: [127.0.0.1:9443]
    ca: certs/site-b/ca.pem
    domain: site-a.gw.site-b.test
  site-c:
    endpoints: [10.0.0.3:8443, "[fd00::3]:8443"]
    ca: /etc/interlink/site-c-ca.pem
    domain: site-a.gw.site-c.test
    connections: 4
    max_concurrent_streams: 1000
    keepalive_interval_ms: 10000
domains:
  site-b: site-b.gw.site-a.test
  site-c: site-c.gw.site-a.test
exports:
  - service: com.example.EchoService
    version: "1.0"
    protocol: triple
    flavour: grpc
    providers: [127.0.0.1:50061]
    timeout_ms: 2000
    allow:
      site-b: {apps: [order-app], methods: [echo, add]}
      site-c: {}
  - service: com.example.BoltService
    protocol: bolt
    codec: hessian2
    unique_id: blue
    providers: [127.0.0.1:12300, 127.0.0.1:12301]
    allow: [site-b, site-c]
imports:
  - service: com.example.PaymentService
    from: site-b
    protocol: bolt
  - service: com.example.StockService
    version: "2.1"
    from: site-c
default_timeout_ms: 15000
limits:
  max_connections: 5000
  idle_timeout_ms: 30000
  bolt_max_frame_bytes: 1048576
"""

ANCHORED = """\
site: site-b
listen: &listen
  peer: 0.0.0.0:8443
  bolt: 127.0.0.1:12200
tls: {ca: ca.pem, cert: gateway.pem, key: gateway.key}
registry: {kind: zookeeper, hosts: [zk1:2181, zk2:2181], options: &opts {session_ms: 30000, tags: [a, b]}, more: *opts}
peers:
  site-a: &peer
    endpoints: [10.0.0.1:8443]
    ca: a-ca.pem
    domain: site-b.gw.site-a.test
  site-c:
    <<: *peer
    domain: site-b.gw.site-c.test
domains: {site-a: site-a.gw.site-b.test, site-c: site-c.gw.site-b.test}
exports:
  - &export {service: com.example.A, protocol: bolt, allow: [site-a]}
  - {<<: *export, service: com.example.B}
imports:
  - {service: com.example.C, from: site-a, protocol: bolt}
limits: {<<: {max_connections: 10}, write_timeout_ms: 1000}
"""

BASES = (MINIMAL, FULL, ANCHORED)

LIMIT_KEYS: dict = getattr(sitefile, "LIMIT_KEYS", {})  # key -> (field, scale, low, high)
KNOWN_KEYS = sorted(
    {*sitefile.SITE_KEYS, *sitefile.LISTEN_KEYS, *sitefile.TLS_KEYS, *sitefile.PEER_KEYS, *sitefile.EXPORT_KEYS,
     *sitefile.IMPORT_KEYS, *sitefile.ACL_KEYS, *LIMIT_KEYS, "kind"}
)  # fmt: skip

# Scalars written as YAML text: each one is a trap for some reader (tags, numbers Python cannot print...).
NASTY_SCALARS = (
    "!!int abc", "!!int ''", "!!int 0x", "!!int 1e3", "!!float abc", "!!bool maybe", "!!timestamp yesterday",
    "!!timestamp 2020-13-45", "!!binary '!!!'", "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a]",
    "!!null x", "!!str 5", "!!seq x", "!!map x", "!!python/object:os.system x", "!custom x", "!<tag:x> y",
    "9" * 5000, "-" + "9" * 5000, "0x" + "f" * 5000, "-0x" + "f" * 5000, "0o" + "7" * 6000, "0b" + "1" * 20000,
    "1" + ":59" * 2000, "1_000", "1__0", "0x_ff", "+12", "-0", "0", "-1", ".inf", "-.inf", ".nan", "1e400", "0.5",
    "~", "null", "''", '""', "' '", "yes", "no", "on", "2020-01-01", "2020-01-01T00:00:00Z", "'100'", '"100"',
    "~nosuchuser/ca.pem", "'~nosuchuser/ca.pem'", '"~\\0/x"', '"\\0"', '"a\\x00b"', "~", "~/ca.pem",
    '"\\ud800"', '"\\U0001F600"', "\u00e9t\u00e9", "x" * 3000, "127.0.0.1:0", "127.0.0.1:99999", "[::1]:1",
    "[::1", "*:80", "1.2.3.4.5:80", "host:\u00b2", "host:" + "9" * 5000, "SITE-A", "site-a.", "a" * 300,
    "*alias_missing", "&anchor", "[", "{", "}", "]", "|", ">", "? x", "- x", "%", "@", "`", "\t", "\ufeff",
)  # fmt: skip
NASTY_KEYS = ("<<", "? [a]", "[a, b]", "{a: b}", "!!int 5", "~", "null", "'site'", "site ", "Site", "sit", "ltimits")
TOKENS = [t.encode() for t in (
    "&a ", "*a", "<<: *a", "<<: [*a, *a]", "!!int ", "!!float ", "!!str ", "!!binary ", "!!timestamp ", "!!set ",
    "!!python/name:os.system ", "[", "]", "{", "}", ": ", "- ", "? ", "|", ">", "'", '"', "#", "%YAML 1.1\n", "---\n",
    "...\n", "\t", "\\0", "\x00", "\ufeff", "~", "null", "0x", "1:30", ".inf", "~nosuchuser/", "\n  ", "\n- ", ",",
    "\r",
)]  # fmt: skip


# --- generators (random.Random) -------------------------------------------------------------------------------------


def alias_bomb(rng: random.Random) -> str:
    """Nine levels of ten aliases each (10**9 leaves if expanded), in a place the loader reads."""
    levels = rng.randint(6, 10)
    width = rng.randint(5, 10)
    mapping = rng.random() < 0.3
    lines = ["  l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        if mapping:
            items = ", ".join(f"k{j}: *l{i - 1}" for j in range(width))
            lines.append(f"  l{i}: &l{i} {{{items}}}")
        else:
            lines.append(f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    top = f"*l{levels - 1}"
    where = rng.choice(["registry", "exports", "limits", "peers", "domains", "allow", "unknown"])
    body = MINIMAL + "registry:\n  kind: static\n" + "\n".join(lines) + "\n"
    if where == "registry":
        return body + f"  bomb: {top}\n"
    if where == "exports":
        return body + f"exports: {top}\n"
    if where == "limits":
        return body + f"limits: {{max_connections: {top}}}\n"
    if where == "peers":
        return body + f"peers: {{site-b: {{endpoints: {top}, ca: x, domain: {top}}}}}\n"
    if where == "domains":
        return body + f"domains: {top}\n"
    if where == "allow":
        return body + f"exports: [{{service: s, allow: {top}}}, {{service: t, allow: {{site-b: {{apps: {top}}}}}}}]\n"
    return body + f"bomb: {top}\n"


def merge_bomb(rng: random.Random) -> str:
    """Merge keys whose sources merge the level below, many times over."""
    levels = rng.randint(6, 12)
    width = rng.randint(5, 10)
    lines = ["  m0: &m0 {k0: v, k1: w}"]
    for i in range(1, levels):
        sources = ", ".join([f"*m{i - 1}"] * width)
        extra = f", key{i}: {i}" if rng.random() < 0.5 else ""
        lines.append(f"  m{i}: &m{i} {{<<: [{sources}]{extra}}}")
    section = rng.choice(["limits", "registry", "peer", "export"])
    body = MINIMAL + "registry:\n  kind: static\n" + "\n".join(lines) + "\n"
    top = f"*m{levels - 1}"
    if section == "limits":
        return body + f"limits: {{<<: {top}}}\n"
    if section == "peer":
        return body + f"peers: {{site-b: {{<<: {top}, endpoints: [1.2.3.4:5], ca: x, domain: a.b}}}}\n"
    if section == "export":
        return body + f"exports: [{{<<: {top}, service: s}}]\n"
    return body + f"  more: {{<<: {top}}}\n"


def recursive_anchor(rng: random.Random) -> str:
    return MINIMAL + rng.choice([
        "registry: &r {kind: static, o: *r}\n",
        "registry: {kind: static, o: &a [*a, *a]}\n",
        "registry: {kind: static, o: &a {k: *a}}\n",
        "registry: {kind: static, o: &a {<<: *a, k: 1}}\n",
        "limits: &l {<<: *l}\n",
        "limits: &l {<<: [*l, *l], max_connections: 5}\n",
        "peers: &p {site-b: *p}\n",
        "exports: &e [*e]\n",
        "exports: &e [{service: s, allow: *e}]\n",
        "domains: &d {site-b: *d}\n",
        "listen: &l {peer: *l}\n",
        "limits: &l {max_connections: *l}\n",
        "x: &x {<<: *x}\nlimits: {<<: *x}\n",
    ])  # fmt: skip


def deep_nesting(rng: random.Random) -> str:
    """Nested collections, flow and block style, around the loader's flow-nesting limit and far beyond the
    depth at which PyYAML's recursive composer gives up."""
    kind = rng.randrange(5)
    depth = rng.choice((20, 63, 64, 65, 200, 400, 800, 2000, 5000))
    if kind == 0:
        value = "[" * depth + "]" * depth
    elif kind == 1:
        value = "{a: " * depth + "1" + "}" * depth
    elif kind == 2:
        value = "{<<: " * depth + "{}" + "}" * depth
    elif kind == 3:
        value = "\n" + "".join(" " * (i + 2) + "- \n" for i in range(min(depth, 1200)))
    else:
        value = "\n" + "".join(" " * (2 * i + 2) + f"k{i}:\n" for i in range(min(depth, 600))) + " " * 1300 + "v\n"
    where = rng.choice(["registry: {kind: static, o: %s}", "limits: %s", "exports: %s", "unknown: %s", "peers: %s"])
    if kind >= 3:
        where = rng.choice(["registry:\n  kind: static\n  o: %s", "exports: %s", "limits: %s", "zzz: %s"])
    return MINIMAL + (where % value) + "\n"


def alias_chain(rng: random.Random) -> str:
    """Thousands of anchors, each a list holding the previous one, defined where nothing reads them and
    used (the last one only) where the loader constructs values: recursion as deep as the chain is long."""
    length = rng.choice((50, 300, 1200, 3000))
    lines = ["  a0: &a0 [x]"] + [f"  a{i}: &a{i} [*a{i - 1}]" for i in range(1, length)]
    use = rng.choice(["registry: {kind: static, o: *%s}", "default_timeout_ms: *%s", "limits: {max_connections: *%s}"])
    return MINIMAL + "unused:\n" + "\n".join(lines) + "\n" + use % f"a{length - 1}" + "\n"


def merge_chain(rng: random.Random) -> str:
    """Thousands of anchors, each merging the previous one: flatten_mapping recurses once per link."""
    length = rng.choice((50, 300, 1200, 3000))
    lines = ["  m0: &m0 {k: v}"] + [f"  m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, length)]
    use = rng.choice(["limits: {<<: *%s}", "registry: {<<: *%s, kind: static}", "exports: [{<<: *%s, service: s}]"])
    return MINIMAL + "unused:\n" + "\n".join(lines) + "\n" + use % f"m{length - 1}" + "\n"


def random_limits(rng: random.Random) -> dict:
    limits: dict = {}
    for _ in range(rng.choice((0, 1, 2, 4, 8))):
        key = rng.choice([*LIMIT_KEYS, *LIMIT_KEYS, "max_conections", "idle_timeout", "", "x" * 40])
        bounds = LIMIT_KEYS.get(key, ("", 1, 0, 100))
        low, high = bounds[2], bounds[3]
        limits[key] = rng.choice(
            (low, high, low - 1, high + 1, rng.randint(low, high), -(10**30), 10**30, 0, -1, str(low), float(low),
             True, None, [low], {"a": low}, rng.randint(-(2**70), 2**70), 1.5, "1e3", dt.date(2020, 1, 1))
        )  # fmt: skip
    return limits


def random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.randrange(14 if depth < 3 else 11)
    if roll == 0:
        return None
    if roll == 1:
        return rng.random() < 0.5
    if roll == 2:
        return rng.choice((0, 1, -1, 65535, 65536, 2**31, -(2**63), 10**40, rng.randint(-(10**6), 10**6)))
    if roll == 3:
        return rng.choice((0.0, -0.0, 1.5, float("inf"), float("nan"), 1e300))
    if roll in (4, 5, 6):
        return rng.choice(("site-a", "site-b", "127.0.0.1:8443", "[::1]:9443", "triple", "bolt", "grpc", "sofa",
                           "hessian2", "com.example.Svc", "", " ", "a b", "x:y", "a/b", "\u00e9", "~", "~root/x",
                           "site-b.gw.site-a.test", "static", "dns", "zookeeper"))  # fmt: skip
    if roll == 7:
        size = rng.randrange(20)
        return "".join(chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x80, 0xD7FF)))) for _ in range(size))
    if roll == 8:
        return rng.randbytes(rng.randrange(8))  # !!binary
    if roll == 9:
        return dt.datetime(2020, 1, 1, 12, 30) if rng.random() < 0.5 else dt.date(1999, 12, 31)  # !!timestamp
    if roll == 10:
        return {1, 2} if rng.random() < 0.5 else {"a"}  # !!set
    if roll == 11:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if roll == 12:
        return {rng.choice(KNOWN_KEYS + ["zz"]): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"service": "com.example.S", "from": "site-b", "allow": random_value(rng, depth + 1)}


def mutate_tree(rng: random.Random, tree: object) -> object:
    """One change at a random place of a loaded site file: a new value, a removed or renamed key, an
    added key (known or not), a random `limits:` section."""
    if rng.random() < 0.1 and isinstance(tree, dict):
        tree["limits"] = random_limits(rng)
        return tree
    path: list[tuple[object, object]] = []  # (container, key)
    node = tree
    while isinstance(node, dict | list) and node and rng.random() < 0.75:
        key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
        path.append((node, key))
        node = node[key]
    if not path:
        return random_value(rng)
    container, key = path[-1]
    action = rng.randrange(5)
    if action <= 1:
        container[key] = random_value(rng)
    elif action == 2 and isinstance(container, dict):
        del container[key]
    elif action == 3 and isinstance(container, dict):
        container[rng.choice(KNOWN_KEYS + ["unknown_key", "Site", str(key) + "s"])] = random_value(rng)
    elif isinstance(container, list):
        container.append(random_value(rng))
    else:
        container[key] = random_limits(rng)
    return tree


def dump(rng: random.Random, tree: object) -> str:
    return yaml.safe_dump(tree, default_flow_style=rng.choice((None, False, True)), sort_keys=False, allow_unicode=True)


def mutate_text(rng: random.Random, text: str) -> str:
    """Line and token edits on YAML text: duplicate keys, broken indentation, anchors, tags, nasty scalars."""
    lines = text.split("\n")
    for _ in range(rng.choice((1, 1, 2, 3))):
        at = rng.randrange(len(lines))
        line = lines[at]
        action = rng.randrange(8)
        if action == 0:  # duplicate a line: a duplicate key, or a repeated list item
            lines.insert(at, line)
        elif action == 1:
            del lines[at]
            if not lines:
                lines = [""]
        elif action == 2:  # indentation
            lines[at] = rng.choice((" ", "  ", "\t", "")) + line if rng.random() < 0.6 else line.lstrip()
        elif action == 3 and ": " in line:  # a nasty value
            lines[at] = line.split(": ", 1)[0] + ": " + rng.choice(NASTY_SCALARS)
        elif action == 4 and ": " in line:  # a nasty key
            indent = line[: len(line) - len(line.lstrip())]
            lines[at] = indent + rng.choice(NASTY_KEYS) + ": " + line.split(": ", 1)[1]
        elif action == 5 and ": " in line:  # anchor here, alias somewhere else
            lines[at] = line.replace(": ", ": &x ", 1)
            other = rng.randrange(len(lines))
            if ": " in lines[other]:
                lines[other] = lines[other].split(": ", 1)[0] + ": *x"
        elif action == 6:
            pos = rng.randrange(len(line) + 1)
            lines[at] = line[:pos] + rng.choice(TOKENS).decode() + line[pos:]
        else:
            lines.insert(at, rng.choice(("<<: *x", "<<: {}", "? [a]\n: b", "%TAG ! tag:x,2000:", "---", "...")))
    return "\n".join(lines)


def random_site(rng: random.Random, mutator: Mutator) -> bytes:
    roll = rng.random()
    if roll < 0.03:
        return alias_bomb(rng).encode()
    if roll < 0.06:
        return merge_bomb(rng).encode()
    if roll < 0.08:
        return recursive_anchor(rng).encode()
    if roll < 0.085:
        return deep_nesting(rng).encode()
    if roll < 0.09:
        return (alias_chain(rng) if rng.random() < 0.5 else merge_chain(rng)).encode()
    base = rng.choice((MINIMAL, MINIMAL, FULL, ANCHORED))
    if roll < 0.55:  # structural: a changed tree, dumped again, sometimes edited as text as well
        tree = yaml.safe_load(base)
        for _ in range(rng.choice((1, 1, 2, 4))):
            tree = mutate_tree(rng, tree)
        try:
            text = dump(rng, tree)
        except ValueError:  # an int too long to print: write the base instead
            text = base
        if rng.random() < 0.3:
            text = mutate_text(rng, text)
    elif roll < 0.9:
        text = mutate_text(rng, base)
    else:  # bytes: invalid UTF-8, NULs, control characters
        return mutator.mutate(base.encode())
    return text.encode("utf-8", "surrogatepass")


# --- the oracle ---------------------------------------------------------------------------------------------------


def check_site(data: bytes, path: Path) -> None:
    path.write_bytes(data)
    try:
        config = load_site(path)
    except SiteFileError as exc:
        assert exc.problems, "a SiteFileError without problems"
        for problem in exc.problems:
            assert isinstance(problem, Problem) and problem.file == path
            assert problem.line is None or (type(problem.line) is int and problem.line >= 1)
            assert isinstance(problem.message, str) and problem.message
        assert str(exc)
        return
    assert isinstance(config, SiteConfig)


@pytest.fixture
def site_path(tmp_path: Path) -> Path:
    return tmp_path / "site.yaml"


@pytest.mark.parametrize("text", BASES, ids=["minimal", "full", "anchored"])
def test_the_bases_are_valid(site_path, text):
    site_path.write_text(text)
    assert isinstance(load_site(site_path), SiteConfig)


# --- hypothesis -------------------------------------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=20), st.binary(max_size=8),
    st.sampled_from(["site-a", "site-b", "127.0.0.1:8443", "bolt", "triple", "static", "~", "~nosuchuser/x", "a b"]),
    st.dates(), st.sets(st.integers(0, 3), max_size=2),
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(KNOWN_KEYS + ["zz"]), children, max_size=3),
    max_leaves=8,
)
_LIMIT_VALUES = st.one_of(
    st.integers(-(2**40), 2**40), st.sampled_from([0, 1, 99, 100, 1023, 1024, 65534, 65535, 600000, 600001, 2**31 - 1]),
    _SCALARS,
)  # fmt: skip


@st.composite
def site_texts(draw: st.DrawFn) -> bytes:
    tree = yaml.safe_load(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(sorted(set(KNOWN_KEYS) | set(tree))))
        action = draw(st.sampled_from(["set", "set", "delete", "limits", "nested"]))
        if action == "set":
            tree[key] = draw(_VALUES)
        elif action == "delete":
            tree.pop(key, None)
        elif action == "limits":
            keys = st.one_of(st.sampled_from(sorted(LIMIT_KEYS) or ["max_connections"]), st.text(max_size=12))
            tree["limits"] = draw(st.dictionaries(keys, _LIMIT_VALUES, max_size=6))
        elif isinstance(tree.get(key), dict) and tree[key]:
            inner = draw(st.sampled_from(sorted(tree[key], key=str)))
            tree[key][inner] = draw(_VALUES)
    try:
        text = yaml.safe_dump(tree, default_flow_style=draw(st.sampled_from([None, False, True])), sort_keys=False)
    except ValueError:
        text = MINIMAL
    lines = text.split("\n")
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["duplicate", "nasty", "token"]))
        if edit == "duplicate":
            lines.insert(at, lines[at])
        elif edit == "nasty" and ": " in lines[at]:
            lines[at] = lines[at].split(": ", 1)[0] + ": " + draw(st.sampled_from(NASTY_SCALARS))
        elif edit == "token":
            pos = draw(st.integers(0, len(lines[at])))
            lines[at] = lines[at][:pos] + draw(st.sampled_from(TOKENS)).decode() + lines[at][pos:]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("size", SIZES)
def test_structured_site_files(size, site_path):
    @given_settings(size, quick=500, full=4000)
    @given(site_texts())
    def run(data):
        guarded(check_site, data, site_path)

    run()


@pytest.mark.parametrize("size", SIZES)
def test_arbitrary_text_and_bytes(size, site_path):
    @given_settings(size, quick=200, full=2000)
    @given(
        st.one_of(
            st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.binary(max_size=200),
            st.sampled_from(BASES).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n].encode())),
        )
    )
    def run(data):
        guarded(check_site, data, site_path)

    run()


# --- bombs, nesting, recursion: time and memory -----------------------------------------------------------------------

MEMORY_BUDGET = 64 << 20  # bytes a single site file may make the loader allocate


@pytest.mark.parametrize(("make", "rounds", "measure_memory"), [
    pytest.param(alias_bomb, 12, True, id="alias_bomb"),
    pytest.param(merge_bomb, 12, True, id="merge_bomb"),
    pytest.param(recursive_anchor, 12, True, id="recursive_anchor"),
    pytest.param(alias_chain, 4, True, id="alias_chain"),
    pytest.param(merge_chain, 4, True, id="merge_chain"),
    pytest.param(deep_nesting, 8, False, id="deep_nesting"),  # recursion, not memory (and slow under tracemalloc)
])  # fmt: skip
def test_bombs_and_nesting_stay_small_and_fast(site_path, make, rounds, measure_memory):
    rng = random.Random(7)
    for _ in range(rounds):
        data = make(rng).encode()
        guarded(check_site, data, site_path)  # within the time guard
        if not measure_memory:
            continue
        tracemalloc.start()  # and, measured again (tracemalloc makes it slower), within the memory budget
        try:
            guarded(check_site, data, site_path, seconds=30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < MEMORY_BUDGET, f"{peak} bytes for {make.__name__}:\n{data[:2000]!r}"


def _chain(line: str, first: str, length: int) -> str:
    return "x:\n" + first + "".join(line.format(i=i, prev=i - 1) for i in range(1, length))


# What the fuzzer found: each input escaped load_site as another exception (or took seconds) before
# sitefile.py handled it. id -> (site file, text the SiteFileError must contain)
REGRESSIONS = {
    "int-tag-text": (MINIMAL + "default_timeout_ms: !!int abc\n", "default_timeout_ms"),  # ValueError
    "int-tag-empty": (MINIMAL + "default_timeout_ms: !!int ''\n", "default_timeout_ms"),  # IndexError
    "int-5000-digits": (MINIMAL + "default_timeout_ms: " + "9" * 5000 + "\n", "default_timeout_ms"),  # ValueError
    "hex-too-long-to-print": (MINIMAL + "limits: {max_connections: 0x" + "f" * 5000 + "}\n", "limits.max_connections"),
    "negative-hex-too-long": (MINIMAL + "default_timeout_ms: -0x" + "f" * 5000 + "\n", "default_timeout_ms"),
    "tilde-unknown-user": (MINIMAL.replace("ca.pem", "'~nosuchuser-interlink/ca.pem'"), "tls.ca"),  # RuntimeError
    "tilde-nul": (MINIMAL.replace("ca.pem", '"~\\0/ca.pem"'), "tls.ca"),  # ValueError: embedded null byte
    "deep-flow-list": (MINIMAL + "registry: {kind: static, o: " + "[" * 2000 + "]" * 2000 + "}\n", "nested"),
    "deep-block-list": (
        MINIMAL + "registry:\n  kind: static\n  o:\n" + "".join(" " * (i + 4) + "- \n" for i in range(3000)),
        "nested",
    ),  # RecursionError in yaml.compose
    "tagged-registry-options": (
        MINIMAL + "registry: {kind: static, o: !!bool maybe, p: !!timestamp soon, q: !!float x, r: !!int y}\n",
        "registry",
    ),  # KeyError, AttributeError, ValueError from PyYAML's SafeConstructor
    "deep-unknown-key": (MINIMAL + "unknown: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested"),
    "merge-chain": (
        MINIMAL + _chain("  m{i}: &m{i} {{<<: *m{prev}}}\n", "  m0: &m0 {k: v}\n", 2000) + "limits: {<<: *m1999}\n",
        "limits",
    ),  # RecursionError in flatten_mapping
    "alias-chain": (
        MINIMAL + _chain("  a{i}: &a{i} [*a{prev}]\n", "  a0: &a0 [x]\n", 2000)
        + "registry: {kind: static, o: *a1999}\n",
        "registry.o",
    ),  # RecursionError in construct_object
    "slow-flow-nesting": (
        MINIMAL + "unused:\n" + "".join(f"  k{i}: " + "[" * 450 + "]" * 450 + "\n" for i in range(60)),
        "nested deeper",
    ),  # 3 s in PyYAML's scanner, whose time is quadratic in the depth of flow collections
    "failed-node-reused": (
        MINIMAL + "registry: {kind: static, o: &n !!int abc}\n"
        "peers: {site-b: {endpoints: [1.2.3.4:5], ca: x, domain: a.b, connections: *n}}\n",
        "peers.site-b.connections",
    ),  # ValueError, then a poisoned constructor
}


@pytest.mark.parametrize(("text", "message"), list(REGRESSIONS.values()), ids=list(REGRESSIONS))
def test_regressions_are_site_file_errors(site_path, text, message):
    """Each input the fuzzer found is now a SiteFileError naming the place, within the time guard."""
    site_path.write_text(text)
    with TimeGuard() as guard, pytest.raises(SiteFileError) as info:
        guard.call(load_site, site_path)
    assert message in str(info.value)


# --- the counted mutation loop -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "inputs", "cap", "workers"), [
    pytest.param("quick", 1_500, 60, 1, id="quick"),
    pytest.param("full", FULL_INPUTS, 500, 2, id="full", marks=pytest.mark.slow),
])  # fmt: skip
def test_mutation_loop(size, inputs, cap, workers, tmp_path):
    mutator = Mutator(random.Random(), [b.encode() for b in BASES], TOKENS)

    def make(rng: random.Random) -> bytes:
        mutator.rng = rng
        return random_site(rng, mutator)

    def check(data: bytes) -> None:
        check_site(data, tmp_path / f"site-{os.getpid()}.yaml")

    fuzz_loop("sitefile", inputs, make, check, time_cap=cap, workers=workers)


def test_the_oracle_catches_an_undeclared_exception(monkeypatch, site_path):
    def broken(path, reader):
        raise RuntimeError("boom")

    monkeypatch.setattr(sitefile, "_compose", broken)
    with pytest.raises(AssertionError, match="RuntimeError"):
        fuzz_loop(
            "sitefile-sanity", 1, lambda rng: MINIMAL.encode(), lambda data: check_site(data, site_path),
            time_cap=10, seed=1,
        )  # fmt: skip
