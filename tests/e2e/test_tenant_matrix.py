"""The tenant matrix: three sites, real gateways, and GW-A's peer port probed along every dimension of who may
call what (tests/e2e/tenants.py sets the sites up and has the raw clients).

Site A serves two tenants. Over Triple, A exports com.example.EchoService (grpcio demo provider) to site-b
(apps [order-app], methods [echo, add]); over Bolt, com.example.EchoService:1.0 (sofa-rpc-node provider) to
site-c (apps [billing-app], methods [echo, whoami]). Each tenant has its own CA and its own access domain.

Contract (what the gateway must do, whatever the current code does):
- Handshake-level refusals: the TLS handshake fails, or the connection is closed right after it without
  serving anything; GW-A logs exactly one {"event": "audit", "decision": "deny", "ingress": "peer",
  "remote": "127.0.0.1:<client port>", "reason": ...} for that connection. For: no SNI, an SNI that is not
  one of A's access domains, a client certificate that does not chain to the CA of the site that owns the
  SNI's access domain (another tenant's valid certificate, a tenant CA's certificate claiming another site,
  self-signed, unknown CA, expired, not yet valid, wrong trust domain, none), and an ALPN other than h2/bolt.
- Request-level refusals on a good connection: Triple PERMISSION_DENIED (access domain, ACL) or UNIMPLEMENTED
  (not exported); Bolt an error response. One audit line each ("ingress": "peer" / "peer-bolt", "peer":
  the caller's site, service, method, reason).
- Allowed calls are served by the provider and audited with "decision": "allow".
- No denial message and no audit reason names a site other than A and the site(s) the caller itself brought
  (its certificate's issuer and claimed site): e.g. site-c using site-b's access domain never reads "site-b".
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from interlink.control.certs import init_site
from interlink.demo.client import EchoClient
from interlink.model import Status
from tests.e2e.rawgrpc import RawResult
from tests.e2e.tenants import (
    ADD_2_3,
    APP,
    BOLT_SERVICE,
    ECHO_HI,
    MISSING,
    MISSING_BOLT,
    SERVICE,
    BoltAnswer,
    BoltSession,
    ClientCert,
    TenantSites,
    TripleSession,
    client_context,
    dial,
    domain_of,
    grpc_payload,
    log_offset,
    make_leaf,
    names_other_sites,
    recent_audit,
    site_uri,
    start_tenant_sites,
    wait_audit,
)
from tests.e2e.topology import free_port

UNKNOWN_DOMAIN = "internal.site-a.test"  # a name GW-A answers to nowhere
TIMEOUT_S = 5.0  # grpcio calls through the consumer gateways


# --- the sites ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, py_provider, request) -> Iterator[TenantSites]:
    folder = tmp_path_factory.mktemp("tenant-matrix")
    try:
        bolt_target = request.getfixturevalue("bolt_server").target
    except pytest.skip.Exception:  # no Node peers here: the Bolt rows skip themselves (bolt_tenants)
        bolt_target = f"127.0.0.1:{free_port()}"
    sites = start_tenant_sites(folder, triple_provider=py_provider.target, bolt_provider=bolt_target)
    sites.clients = _client_certs(sites, folder / "clients")
    yield sites
    sites.stop()


@pytest.fixture(scope="module")
def bolt_tenants(tenants, bolt_server) -> TenantSites:
    """The same sites, for rows that need the sofa-rpc-node provider (skipped without it, failed on CI)."""
    return tenants


def _client_certs(sites: TenantSites, folder) -> dict[str, ClientCert]:
    now = dt.datetime.now(dt.timezone.utc)
    day = dt.timedelta(days=1)
    certs = sites.certs

    def leaf(name: str, issuer: str | None, claims: str, trust_domain: str = "interlink", **validity) -> ClientCert:
        cert, key = make_leaf(
            folder, name, uri=site_uri(claims, trust_domain), issuer=certs[issuer] if issuer else None, **validity
        )
        return ClientCert(cert, key, issuer_site=issuer, claims=claims)

    rogue = init_site("site-b", folder / "rogue-site-b-ca", dns_names=["gw.site-b.test"])  # a CA A never saw
    return {
        "site-b": sites.own_cert("site-b"),
        "site-c": sites.own_cert("site-c"),
        "site-d": sites.own_cert("site-d"),
        "c-ca-claims-site-b": leaf("c-ca-claims-site-b", "site-c", "site-b"),
        "c-ca-claims-site-d": leaf("c-ca-claims-site-d", "site-c", "site-d"),
        "self-signed-site-b": leaf("self-signed-site-b", None, "site-b"),
        "unknown-ca-site-b": ClientCert(rogue.cert, rogue.key, issuer_site=None, claims="site-b"),
        "no-cert": ClientCert(None, None),
        "expired-site-b": leaf("expired-site-b", "site-b", "site-b", not_before=now - 10 * day, not_after=now - day),
        "not-yet-valid-site-b": leaf(
            "not-yet-valid-site-b", "site-b", "site-b", not_before=now + day, not_after=now + 10 * day
        ),
        "other-trust-domain-site-b": leaf("other-trust-domain-site-b", "site-b", "site-b", "other-domain"),
    }


class Sessions:
    """Long-lived peer connections per (protocol, tenant), with the tenant's own certificate and access
    domain: reused by every request-level row (a denial must not cost the caller its connection)."""

    def __init__(self, sites: TenantSites) -> None:
        self.sites = sites
        self._open: dict[tuple[str, str], TripleSession | BoltSession] = {}

    def get(self, protocol: str, tenant: str) -> TripleSession | BoltSession:
        session = self._open.get((protocol, tenant))
        if session is None or session.closed:
            if session is not None:
                session.close()
            context = client_context(self.sites.certs["site-a"].ca, self.sites.own_cert(tenant), [protocol])
            dialed = dial(self.sites.a_peer_port, context, domain_of(tenant))
            assert dialed.tls is not None, f"{tenant} cannot connect over {protocol}: {dialed.handshake_error}"
            assert dialed.tls.selected_alpn_protocol() == protocol
            session = TripleSession(dialed.tls) if protocol == "h2" else BoltSession(dialed.tls)
            self._open[(protocol, tenant)] = session
        return session

    def close(self) -> None:
        for session in self._open.values():
            session.close()


@pytest.fixture(scope="module")
def sessions(tenants) -> Iterator[Sessions]:
    opened = Sessions(tenants)
    yield opened
    opened.close()


# --- shared checks ------------------------------------------------------------------------------------------


def _triple_text(result: RawResult) -> str:
    return (
        f"grpc-status {result.grpc_status} message {result.grpc_message!r} reset {result.reset} "
        f"closed {result.closed!r}"
    )


def _audit_text(sites: TenantSites, offset: int) -> str:
    keys = ("decision", "ingress", "peer", "remote", "service", "method", "caller_app", "reason")
    lines = [{k: e.get(k) for k in keys if e.get(k) is not None} for e in recent_audit(sites.a, offset)]
    return f"GW-A audit lines since the attempt: {json.dumps(lines)}"


def _check_request_audit(
    sites: TenantSites, offset: int, *, ingress: str, caller: str, service: str, method: str, decision: str
) -> dict:
    lines = wait_audit(
        sites.a,
        offset,
        lambda e: e.get("ingress") == ingress and e.get("peer") == caller and e.get("service") == service
        and e.get("method") == method,
    )
    assert len(lines) == 1, f"expected one audit line for {caller} {service}/{method}; {_audit_text(sites, offset)}"
    line = lines[0]
    assert line.get("decision") == decision, line
    if decision == "deny":
        assert line.get("reason"), line
        leaked = names_other_sites(line["reason"], [caller])
        assert not leaked, f"the audit reason names {leaked}: {line['reason']!r}"
    return line


# --- handshake-level refusals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HandshakeCase:
    id: str
    client: str  # key of tenants.clients
    sni: str | None

    def brought(self, sites: TenantSites) -> list[str]:
        """The sites the caller itself named (certificate issuer and claimed site): a reason may name those."""
        client = sites.clients[self.client]
        return sorted({site for site in (client.issuer_site, client.claims) if site})


HANDSHAKE_CASES = [
    # SNI
    HandshakeCase("sni-missing", "site-c", None),
    HandshakeCase("sni-of-the-other-tenant", "site-b", domain_of("site-c")),
    HandshakeCase("sni-unknown", "site-c", UNKNOWN_DOMAIN),
    # certificate site
    HandshakeCase("c-cert-with-b-domain", "site-c", domain_of("site-b")),
    HandshakeCase("c-ca-cert-claiming-site-b", "c-ca-claims-site-b", domain_of("site-b")),
    HandshakeCase("c-ca-cert-claiming-non-peer-site-d", "c-ca-claims-site-d", domain_of("site-c")),
    HandshakeCase("non-peer-site-d-own-cert", "site-d", domain_of("site-b")),
    # CA
    HandshakeCase("self-signed-site-b", "self-signed-site-b", domain_of("site-b")),
    HandshakeCase("unknown-ca-site-b", "unknown-ca-site-b", domain_of("site-b")),
    HandshakeCase("no-client-cert", "no-cert", domain_of("site-b")),
    # validity window
    HandshakeCase("expired-site-b", "expired-site-b", domain_of("site-b")),
    HandshakeCase("not-yet-valid-site-b", "not-yet-valid-site-b", domain_of("site-b")),
    # trust domain
    HandshakeCase("other-trust-domain-site-b", "other-trust-domain-site-b", domain_of("site-b")),
]


@dataclass
class Attempt:
    remote: str  # as GW-A logs it
    answered: bool  # anything came back at the HTTP/2 or Bolt level (refused calls included)
    detail: str


def _attempt(sites: TenantSites, client: ClientCert, sni: str | None, alpn: list[str] | None, send: str) -> Attempt:
    """Connect to GW-A's peer port as `client`; if the handshake goes through, make one call (Triple if `send`
    is h2, Bolt if bolt) that would be allowed on the right connection, and see whether anything answers."""
    context = client_context(sites.certs["site-a"].ca, client, alpn)
    dialed = dial(sites.a_peer_port, context, sni)
    try:
        if dialed.tls is None:
            return Attempt(dialed.remote_as_seen, False, f"handshake failed: {dialed.handshake_error}")
        selected = dialed.tls.selected_alpn_protocol()
        if send == "h2":
            authority = sni or domain_of(client.claims if client.claims in APP else "site-b")
            result = TripleSession(dialed.tls).call(SERVICE, "echo", authority, APP["site-b"], ECHO_HI)
            answered = bool(result.headers or result.trailers)
            detail = f"handshake ok (ALPN {selected!r}), then {_triple_text(result)}"
            return Attempt(dialed.remote_as_seen, answered, detail)
        answer = BoltSession(dialed.tls).call(BOLT_SERVICE, "echo", APP["site-c"], ["hi"], ["java.lang.String"])
        detail = f"handshake ok (ALPN {selected!r}), then {answer.describe()}"
        return Attempt(dialed.remote_as_seen, answer.frame is not None, detail)
    finally:
        dialed.close()


def _check_handshake_refused(sites: TenantSites, offset: int, attempt: Attempt, brought: list[str]) -> None:
    assert not attempt.answered, (
        f"the connection was accepted and answered, not refused at the handshake: {attempt.detail}; "
        f"{_audit_text(sites, offset)}"
    )
    lines = wait_audit(sites.a, offset, lambda e: str(e.get("remote", "")).endswith(":" + attempt.remote.split(":")[1]))
    assert len(lines) == 1, (
        f"expected one audit line with remote {attempt.remote} ({attempt.detail}); {_audit_text(sites, offset)}"
    )
    line = lines[0]
    assert (line.get("decision"), line.get("ingress")) == ("deny", "peer"), line
    assert line.get("reason"), line
    leaked = names_other_sites(line["reason"], brought)
    assert not leaked, f"the audit reason names {leaked}: {line['reason']!r}"


@pytest.mark.parametrize("alpn", ["h2", "bolt"])
@pytest.mark.parametrize("case", HANDSHAKE_CASES, ids=[case.id for case in HANDSHAKE_CASES])
def test_refused_at_the_handshake(tenants, case: HandshakeCase, alpn: str) -> None:
    offset = log_offset(tenants.a)
    attempt = _attempt(tenants, tenants.clients[case.client], case.sni, [alpn], alpn)
    _check_handshake_refused(tenants, offset, attempt, case.brought(tenants))


@pytest.mark.parametrize("send", ["h2", "bolt"], ids=["then-h2", "then-bolt"])
@pytest.mark.parametrize("offered", [None, ["http/1.1"]], ids=["alpn-none", "alpn-http1.1"])
def test_alpn_other_than_h2_or_bolt_is_refused(tenants, offered, send) -> None:
    """Site B's own certificate and access domain, but no (or the wrong) ALPN: nothing may be served."""
    offset = log_offset(tenants.a)
    attempt = _attempt(tenants, tenants.own_cert("site-b"), domain_of("site-b"), offered, send)
    _check_handshake_refused(tenants, offset, attempt, ["site-b"])


# --- the right connection is served -------------------------------------------------------------------------


def test_right_sni_and_alpn_h2_is_served(tenants) -> None:
    offset = log_offset(tenants.a)
    context = client_context(tenants.certs["site-a"].ca, tenants.own_cert("site-b"), ["h2"])
    dialed = dial(tenants.a_peer_port, context, domain_of("site-b"))
    assert dialed.tls is not None, dialed.handshake_error
    try:
        assert dialed.tls.selected_alpn_protocol() == "h2"
        result = TripleSession(dialed.tls).call(SERVICE, "echo", domain_of("site-b"), APP["site-b"], ECHO_HI)
    finally:
        dialed.close()
    assert result.grpc_status == Status.OK, _triple_text(result)
    assert grpc_payload(result) == ECHO_HI
    _check_request_audit(tenants, offset, ingress="peer", caller="site-b", service=SERVICE, method="echo",
                         decision="allow")


def test_right_sni_and_alpn_bolt_is_served(bolt_tenants) -> None:
    tenants = bolt_tenants
    offset = log_offset(tenants.a)
    context = client_context(tenants.certs["site-a"].ca, tenants.own_cert("site-c"), ["bolt"])
    dialed = dial(tenants.a_peer_port, context, domain_of("site-c"))
    assert dialed.tls is not None, dialed.handshake_error
    try:
        assert dialed.tls.selected_alpn_protocol() == "bolt"
        answer = BoltSession(dialed.tls).call(BOLT_SERVICE, "echo", APP["site-c"], ["hi"], ["java.lang.String"])
    finally:
        dialed.close()
    assert answer.frame is not None and not answer.is_error, answer.describe()
    assert answer.app_response() == "hi"
    _check_request_audit(tenants, offset, ingress="peer-bolt", caller="site-c", service=BOLT_SERVICE, method="echo",
                         decision="allow")


# --- :authority (Triple) -------------------------------------------------------------------------------------

AUTHORITY_CASES = [
    # (caller, :authority, expected grpc-status)
    ("site-b", domain_of("site-c"), Status.PERMISSION_DENIED),
    ("site-c", domain_of("site-b"), Status.PERMISSION_DENIED),
    ("site-b", UNKNOWN_DOMAIN, Status.PERMISSION_DENIED),
    ("site-b", domain_of("site-b"), Status.OK),
]


@pytest.mark.parametrize(
    ("caller", "authority", "status"),
    AUTHORITY_CASES,
    ids=["b-uses-c-domain", "c-uses-b-domain", "b-uses-unknown-domain", "b-uses-own-domain"],
)
def test_authority_on_ones_own_connection(tenants, sessions, caller, authority, status) -> None:
    """The connection is the caller's own (its certificate, its SNI); only :authority varies."""
    offset = log_offset(tenants.a)
    session = sessions.get("h2", caller)
    result = session.call(SERVICE, "echo", authority, APP[caller], ECHO_HI)
    assert result.grpc_status == status, _triple_text(result)
    if status == Status.OK:
        assert grpc_payload(result) == ECHO_HI
        _check_request_audit(tenants, offset, ingress="peer", caller=caller, service=SERVICE, method="echo",
                             decision="allow")
        return
    leaked = names_other_sites(result.grpc_message, [caller])
    assert not leaked, f"the denial names {leaked}: {result.grpc_message!r}"
    _check_request_audit(tenants, offset, ingress="peer", caller=caller, service=SERVICE, method="echo",
                         decision="deny")
    assert not session.closed, f"a refused call cost {caller} its connection: {session.closed}"


# --- ACL: Triple ---------------------------------------------------------------------------------------------

TRIPLE_ACL = [
    # (id, caller, service, method, app, message, expected grpc-status, expected reply)
    ("allowed-echo", "site-b", SERVICE, "echo", APP["site-b"], ECHO_HI, Status.OK, ECHO_HI),
    ("allowed-add", "site-b", SERVICE, "add", APP["site-b"], ADD_2_3, Status.OK, b"\x08\x05"),
    ("wrong-app", "site-b", SERVICE, "echo", APP["site-c"], ECHO_HI, Status.PERMISSION_DENIED, None),
    ("wrong-method", "site-b", SERVICE, "fail", APP["site-b"], ECHO_HI, Status.PERMISSION_DENIED, None),
    ("no-app", "site-b", SERVICE, "echo", None, ECHO_HI, Status.PERMISSION_DENIED, None),
    ("not-exported", "site-b", MISSING, "echo", APP["site-b"], ECHO_HI, Status.UNIMPLEMENTED, None),
    ("exported-only-to-site-b", "site-c", SERVICE, "echo", APP["site-c"], ECHO_HI, Status.PERMISSION_DENIED, None),
    ("exported-only-to-site-b-b-app", "site-c", SERVICE, "echo", APP["site-b"], ECHO_HI, Status.PERMISSION_DENIED,
     None),
]


@pytest.mark.parametrize(
    ("caller", "service", "method", "app", "message", "status", "reply"),
    [case[1:] for case in TRIPLE_ACL],
    ids=[case[0] for case in TRIPLE_ACL],
)
def test_triple_acl(tenants, sessions, caller, service, method, app, message, status, reply) -> None:
    offset = log_offset(tenants.a)
    session = sessions.get("h2", caller)
    result = session.call(service, method, domain_of(caller), app, message)
    assert result.grpc_status == status, _triple_text(result)
    if status == Status.OK:
        assert grpc_payload(result) == reply, _triple_text(result)
        _check_request_audit(tenants, offset, ingress="peer", caller=caller, service=service, method=method,
                             decision="allow")
        return
    leaked = names_other_sites(result.grpc_message, [caller])
    assert not leaked, f"the denial names {leaked}: {result.grpc_message!r}"
    _check_request_audit(tenants, offset, ingress="peer", caller=caller, service=service, method=method,
                         decision="deny")
    assert not session.closed, f"a refused call cost {caller} its connection: {session.closed}"


# --- ACL: Bolt -----------------------------------------------------------------------------------------------

STRING = ["java.lang.String"]
BOLT_ACL = [
    # (id, caller, service, method, app, args, arg sigs, served?)
    ("allowed-echo", "site-c", BOLT_SERVICE, "echo", APP["site-c"], ["hi"], STRING, True),
    ("allowed-whoami", "site-c", BOLT_SERVICE, "whoami", APP["site-c"], [], [], True),
    ("wrong-app", "site-c", BOLT_SERVICE, "echo", APP["site-b"], ["hi"], STRING, False),
    ("wrong-method", "site-c", BOLT_SERVICE, "add", APP["site-c"], [2, 3], ["int", "int"], False),
    ("no-app", "site-c", BOLT_SERVICE, "echo", None, ["hi"], STRING, False),
    ("not-exported", "site-c", MISSING_BOLT, "echo", APP["site-c"], ["hi"], STRING, False),
    ("exported-only-to-site-c", "site-b", BOLT_SERVICE, "echo", APP["site-b"], ["hi"], STRING, False),
    ("exported-only-to-site-c-c-app", "site-b", BOLT_SERVICE, "echo", APP["site-c"], ["hi"], STRING, False),
]


@pytest.mark.parametrize(
    ("caller", "service", "method", "app", "args", "arg_sigs", "served"),
    [case[1:] for case in BOLT_ACL],
    ids=[case[0] for case in BOLT_ACL],
)
def test_bolt_acl(bolt_tenants, sessions, caller, service, method, app, args, arg_sigs, served) -> None:
    tenants = bolt_tenants
    offset = log_offset(tenants.a)
    session = sessions.get("bolt", caller)
    answer: BoltAnswer = session.call(service, method, app, args, arg_sigs)
    assert answer.frame is not None, answer.describe()
    if served:
        assert not answer.is_error, answer.describe()
        value = answer.app_response()
        if method == "echo":
            assert value == "hi"
        else:  # whoami: what the provider saw; GW-A stamped the caller's site and app
            seen = json.loads(str(value))
            assert seen["headers"]["x-interlink-caller-site"] == caller, seen
            assert seen["headers"]["x-interlink-caller-app"] == app, seen
        _check_request_audit(tenants, offset, ingress="peer-bolt", caller=caller, service=service, method=method,
                             decision="allow")
        return
    assert answer.is_error, f"served instead of refused: {answer.describe()}"
    leaked = names_other_sites(answer.error_message, [caller])
    assert not leaked, f"the denial names {leaked}: {answer.error_message!r}"
    expected = "UNIMPLEMENTED" if service == MISSING_BOLT else "PERMISSION_DENIED"
    assert expected in answer.error_message, answer.describe()
    _check_request_audit(tenants, offset, ingress="peer-bolt", caller=caller, service=service, method=method,
                         decision="deny")
    assert not session.closed, f"a refused call cost {caller} its connection: {session.closed}"


# --- the normal path: local callers of GW-B and GW-C ---------------------------------------------------------


@pytest.mark.parametrize(("caller", "served"), [("site-b", True), ("site-c", False)])
def test_local_triple_callers_through_their_gateway(tenants, caller, served) -> None:
    """grpcio callers in site B are served; those of site C are refused (A exported the Triple service to B)."""
    offset = log_offset(tenants.a)
    metadata = [("tri-consumer-appname", APP[caller])]
    with EchoClient(tenants.local_triple[caller]) as client:
        if served:
            message, _, _ = client.echo("hi", metadata=metadata, timeout=TIMEOUT_S)
            assert message == "hi"
            assert client.add(40, 2, metadata=metadata, timeout=TIMEOUT_S) == 42
        else:
            with pytest.raises(grpc.RpcError) as refused:
                client.echo("hi", metadata=metadata, timeout=TIMEOUT_S)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value
            leaked = names_other_sites(refused.value.details(), [caller])
            assert not leaked, f"the denial names {leaked}: {refused.value.details()!r}"
    _check_request_audit(tenants, offset, ingress="peer", caller=caller, service=SERVICE, method="echo",
                         decision="allow" if served else "deny")


@pytest.mark.parametrize(("caller", "served"), [("site-c", True), ("site-b", False)])
def test_local_bolt_callers_through_their_gateway(bolt_tenants, run_bolt_client, caller, served) -> None:
    """sofa-rpc-node callers in site C are served; those of site B are refused (A exported the Bolt service to C)."""
    tenants = bolt_tenants
    offset = log_offset(tenants.a)
    result = run_bolt_client(tenants.local_bolt[caller], "echo", app=APP[caller], args=["hi"], process_timeout=20)
    if served:
        assert (result["ok"], result["result"]) == (True, "hi"), result
    else:
        assert result["ok"] is False and "PERMISSION_DENIED" in result["error"]["message"], result
        leaked = names_other_sites(result["error"]["message"], [caller])
        assert not leaked, f"the denial names {leaked}: {result['error']['message']!r}"
    _check_request_audit(tenants, offset, ingress="peer-bolt", caller=caller, service=BOLT_SERVICE, method="echo",
                         decision="allow" if served else "deny")

