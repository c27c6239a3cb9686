"""`interlink lab`: two sites on loopback, a demo provider in site A, real gRPC calls from site B.

It copies the lab's site files (site-configs/lab/) into a temporary folder, generates both sites' CAs and
gateway certificates there, checks the files, starts the two gateways as separate `interlink run`
processes and a grpcio provider, then makes calls through both gateways — allowed ones and ones that must
be refused — and prints what happened. Exit 0 when every call ended as expected.

`interlink lab call` (`run_call`) is the consumer of the networked labs (docker compose, `interlink lab
--netns`, see interlink/labnet/): it finds an import in its site's DNS-SD registry and calls it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import grpc
import structlog

LAB_SITES = ("site-a", "site-b")
CONSUMER_APP = "order-app"


@dataclass
class Outcome:
    name: str
    expected: str
    got: str
    ms: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.got == self.expected


def default_configs() -> Path:
    return Path(__file__).resolve().parent.parent / "site-configs" / "lab"


def run_lab(keep: bool = False, configs: Path | None = None) -> int:
    source = configs or default_configs()
    if not all((source / f"{site}.yaml").is_file() for site in LAB_SITES):
        print(f"interlink lab: site files {', '.join(s + '.yaml' for s in LAB_SITES)} not found in {source}; "
              "pass --configs DIR", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="interlink-lab-"))
    processes: list[subprocess.Popen] = []
    provider = None
    try:
        files = _prepare(source, work)
        if files is None:
            return 1
        from interlink.control.sitefile import load_site
        from interlink.demo import provider as demo_provider

        site_a, site_b = (load_site(path) for path in files)
        busy = [str(a) for a in _addresses(site_a, site_b) if not _port_free(a.host, a.port)]
        if busy:
            print(f"interlink lab: address(es) already in use: {', '.join(busy)}; stop what uses them "
                  "(an earlier lab?) or edit the lab site files", file=sys.stderr)
            return 1
        provider_address = site_a.exports[0].providers[0]
        provider = demo_provider.serve(str(provider_address), name="site-a-echo")
        brokers = _start_brokers((site_a, site_b), work)  # one nats-server (JetStream) per site with messaging:
        if brokers is None:
            return 1
        processes.extend(brokers)
        for path in files:
            processes.append(_start_gateway(path, work / "logs"))
        for config in (site_a, site_b):
            for address in (config.listen.peer, config.listen.triple):
                if address is not None and not _wait_listening(address.host, address.port, processes):
                    print(f"interlink lab: gateway of {config.site} did not start listening on {address}; "
                          f"see {work / 'logs' / (config.site + '.log')}", file=sys.stderr)
                    keep = True
                    return 1
        outcomes = _scenarios(str(site_b.listen.triple))
        outcomes.append(_registry_scenario(site_b))
        outcomes.extend(_operations_scenarios(site_a, site_b, work / "logs"))
        if site_a.messaging is not None and site_b.messaging is not None:
            outcomes.extend(_message_scenarios(site_a, site_b))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if provider is not None:
            provider.stop(0)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return summary(outcomes, work if keep else None)


def _prepare(source: Path, work: Path) -> list[Path] | None:
    files, problems = prepare_sites(
        {site: source / f"{site}.yaml" for site in LAB_SITES},
        work,
        {site: [f"gw.{site}.lab", "127.0.0.1"] for site in LAB_SITES},
    )
    for problem in problems:
        print(problem, file=sys.stderr)
    return None if problems else list(files.values())


def prepare_sites(
    sources: Mapping[str, Path], work: Path, names: Mapping[str, Sequence[str]]
) -> tuple[dict[str, Path], list[str]]:
    """Copy each site's file into `work`, make the site's CA and gateway certificate next to it (SAN DNS/IP
    `names`), and check the copies together. Returns (site -> copied file, problems)."""
    from interlink.control.certs import init_site
    from interlink.control.check import check_files

    files = {}
    for site, source in sources.items():
        target = work / f"{site}.yaml"
        work.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        files[site] = target
        init_site(site, work / "certs" / site, dns_names=list(names.get(site, ())))
    return files, [str(problem) for problem in check_files(list(files.values()))]


def _addresses(*configs):
    from interlink.control.registry_sync import embedded_dns

    for config in configs:
        dns = embedded_dns(config)
        if dns is not None:
            yield dns.listen
        for address in (config.listen.triple, config.listen.peer, config.listen.admin):
            if address is not None:
                yield address
        for export in config.exports:
            yield from export.providers


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _start_gateway(path: Path, log_dir: Path) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(log_dir / f"{path.stem}.log", "wb")  # noqa: SIM115 - owned by the child process
    return subprocess.Popen(
        [sys.executable, "-m", "interlink", "run", "-c", str(path)], stdout=log_file, stderr=subprocess.STDOUT
    )


def _wait_listening(host: str, port: int, processes: list[subprocess.Popen], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _scenarios(target: str) -> list[Outcome]:
    from interlink.demo.client import EchoClient, md_values

    app = (("tri-consumer-appname", CONSUMER_APP),)
    outcomes: list[Outcome] = []

    def attempt(name: str, expected: str, call: Callable[[], str]) -> None:
        started = time.perf_counter()
        detail = ""
        try:
            got = call()
        except grpc.RpcError as exc:
            got, detail = exc.code().name, exc.details() or ""
        outcomes.append(Outcome(name, expected, got, (time.perf_counter() - started) * 1000, detail))

    with EchoClient(target) as client:
        _wait_for_link(client, app)

        def echo() -> str:
            message, _, trailing = client.echo("hello from site-b", metadata=app)
            stamped = md_values(trailing, "x-caller-app")
            return "OK" if message == "hello from site-b" and stamped == [CONSUMER_APP] else f"wrong: {message!r} {stamped}"

        attempt("echo (order-app)", "OK", echo)
        attempt("add 2 + 3", "OK", lambda: "OK" if client.add(2, 3, metadata=app) == 5 else "wrong sum")
        attempt("server streaming count(3)", "OK",
                lambda: "OK" if client.count(3, metadata=app) == [1, 2, 3] else "wrong stream")
        attempt("client streaming sum", "OK",
                lambda: "OK" if client.sum([(1, 2), (3, 4)], metadata=app) == 10 else "wrong sum")
        attempt("bidi chat", "OK",
                lambda: "OK" if client.chat(["a", "b", "c"], metadata=app) == ["a", "b", "c"] else "wrong chat")
        attempt("provider error passes through", "INVALID_ARGUMENT", lambda: client.fail("boom", metadata=app) and "OK")
        attempt("deadline 300 ms on a 2 s call", "DEADLINE_EXCEEDED",
                lambda: client.sleep(2000, metadata=app, timeout=0.3) and "OK")
        attempt("app not in the ACL (intruder-app)", "PERMISSION_DENIED",
                lambda: client.echo("x", metadata=(("tri-consumer-appname", "intruder-app"),)) and "OK")
        attempt("forged x-interlink-caller-app", "PERMISSION_DENIED",
                lambda: client.echo("x", metadata=(("tri-consumer-appname", "intruder-app"),
                                                   ("x-interlink-caller-app", CONSUMER_APP))) and "OK")
        attempt("service not imported", "UNIMPLEMENTED", lambda: _call_unknown_service(target))
    return outcomes


def _registry_scenario(site_b) -> Outcome:
    """Seamless access: site B's gateway published the import into site B's own registry (embedded DNS-SD)
    with its own address, so a site-B caller discovers it like any local provider."""
    import trio

    from interlink.control.registry_sync import embedded_dns
    from registry_adapters.dnssd import browse
    from registry_adapters.model import ServiceKey

    dns = embedded_dns(site_b)
    item = site_b.imports[0]
    started = time.perf_counter()
    key = ServiceKey(interface=item.service, protocol="tri", version=item.version or "1.0")
    found = trio.run(browse, (dns.listen.host, dns.listen.port), key, dns.zone)
    got = ", ".join(sorted(f"{i.host}:{i.port}" for i in found)) or "nothing"
    expected = str(site_b.listen.triple)
    return Outcome(
        f"DNS-SD lookup of {item.service} in {dns.zone.rstrip('.')}",
        expected,
        got,
        (time.perf_counter() - started) * 1000,
    )


def _operations_scenarios(site_a, site_b, logs: Path) -> list[Outcome]:
    """What an operator sees of the calls above: both gateways ready on their admin endpoints, the calls
    counted in GW-B's Prometheus metrics, and one trace id in both gateways' access lines."""
    import re
    import urllib.error
    import urllib.request

    def get(address, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    outcomes = []
    started = time.perf_counter()
    ready = [get(site.listen.admin, "/readyz")[0] for site in (site_a, site_b) if site.listen.admin is not None]
    outcomes.append(Outcome("both gateways ready (/readyz)", "200 200", " ".join(map(str, ready)) or "no admin",
                            (time.perf_counter() - started) * 1000))
    started = time.perf_counter()
    _, text = get(site_b.listen.admin, "/metrics") if site_b.listen.admin is not None else (0, "")
    counted = sum(float(n) for n in re.findall(r'^interlink_calls_total\{[^}]*ingress="local"[^}]*\} (\S+)', text, re.M))
    outcomes.append(Outcome("calls counted by GW-B (/metrics)", "at least 10", "at least 10" if counted >= 10
                            else f"{counted:.0f}", (time.perf_counter() - started) * 1000))
    started = time.perf_counter()
    traces = []
    for site in (site_b, site_a):
        path = logs / f"{site.site}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        traces.append({line.get("trace_id") for line in map(_json_or_empty, lines) if line.get("event") == "call"
                       and line.get("method") == "add"})
    shared = traces[0] & traces[1] - {None}
    outcomes.append(Outcome("one trace across both gateways (add)", "same trace_id",
                            "same trace_id" if shared else "none shared", (time.perf_counter() - started) * 1000,
                            f"trace_id {sorted(shared)[0]}" if shared else ""))
    return outcomes


def _start_brokers(sites, work: Path) -> list[subprocess.Popen] | None:
    """A nats-server with JetStream for each site whose file has messaging: (on its broker URL's port)."""
    import urllib.parse

    wanted = [site for site in sites if site.messaging is not None]
    if not wanted:
        return []
    binary = shutil.which("nats-server") or next(
        (path for path in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(path).exists()), None)
    if binary is None:
        print("interlink lab: the lab's sites carry messages through NATS JetStream, but nats-server is not "
              "installed; run bash scripts/setup.sh (as root) or apt-get install nats-server", file=sys.stderr)
        return None
    started = []
    for site in wanted:
        url = urllib.parse.urlsplit(site.messaging.broker.url)
        host, port = url.hostname or "127.0.0.1", url.port or 4222
        if not _port_free(host, port):
            print(f"interlink lab: {host}:{port} (the broker of {site.site}) is in use; stop what uses it",
                  file=sys.stderr)
            break
        store = work / "nats" / site.site
        store.mkdir(parents=True, exist_ok=True)
        (work / "logs").mkdir(exist_ok=True)
        log = open(work / "logs" / f"nats-{site.site}.log", "ab")  # noqa: SIM115 - handed to the child
        started.append(subprocess.Popen([binary, "-js", "-a", host, "-p", str(port), "-sd", str(store)],
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        log.close()
        if not _wait_listening(host, port, started):
            print(f"interlink lab: nats-server for {site.site} did not start; see {work / 'logs'}", file=sys.stderr)
            break
    else:
        return started
    for process in started:
        process.kill()
    return None


def _message_scenarios(site_a, site_b) -> list[Outcome]:
    """A producer in site B publishes to its own broker; a consumer in site A reads its own broker: one message
    of order-app crosses, one of an app site A does not allow is dead-lettered in B with the reason."""
    import trio

    return trio.run(_messages_across, site_a, site_b)


async def _messages_across(site_a, site_b) -> list[Outcome]:
    import trio

    from broker_adapters.base import BrokerError
    from broker_adapters.nats import JetStreamBroker
    from interlink.gateway.messages import DEAD_LETTER_STREAM

    subject = site_b.messaging.imports[0].subject
    export = next(item for item in site_a.messaging.exports if item.subject == subject)
    outcomes = []
    quiet = structlog.wrap_logger(structlog.PrintLogger(), processors=[_drop_event])  # the summary says it all
    async with JetStreamBroker(site_b.messaging.broker.url, name="lab-producer", log=quiet) as producer, \
            JetStreamBroker(site_a.messaging.broker.url, name="lab-consumer", log=quiet) as consumer:
        async def crossing(name: str, app: str, want: str, reader, stream: str, consumer_name: str, shown) -> None:
            """Publish one message of `app` in site B; wait until it shows up in `reader`'s `stream`."""
            started = time.perf_counter()
            got, detail = "nothing", ""
            try:
                with trio.fail_after(15):
                    while await producer.stream_of_subject(subject) is None:  # GW-B makes it at start
                        await trio.sleep(0.1)
                    body = f"order from {app} at {time.strftime('%H:%M:%S')}".encode()
                    await producer.publish(subject, body, headers=[("Interlink-App", app)]).wait(5)
                    await reader.ensure_consumer(stream, consumer_name, filter_subject=">", max_ack_pending=100,
                                                 ack_wait=30)
                    while got == "nothing":
                        for message in await reader.fetch(stream, consumer_name, batch=100, wait=0.5):
                            await reader.ack(message)
                            if message.data == body:
                                got, detail = want, shown(message, dict(message.headers))
            except (BrokerError, trio.TooSlowError) as exc:
                detail = str(exc) or "no message within 15 s"
            outcomes.append(Outcome(name, want, got, (time.perf_counter() - started) * 1000, detail))

        await crossing(f"message {subject} B -> A (order-app)", "order-app", "delivered", consumer, export.stream,
                       "lab-consumer", lambda message, headers: f"{export.stream} #{message.stream_sequence} from "
                       f"{headers.get('Interlink-Origin-Site')} / {headers.get('Interlink-Caller-App')}")
        await crossing(f"message {subject} of intruder-app", "intruder-app", "dead-lettered", producer,
                       DEAD_LETTER_STREAM, "lab-dead-letters", lambda message, headers:
                       f"{headers.get('Interlink-Dead-Letter-Status')}: {headers.get('Interlink-Dead-Letter-Reason')}")
    return outcomes


def _drop_event(logger: object, method: str, event: dict) -> dict:
    raise structlog.DropEvent


def _json_or_empty(line: str) -> dict:
    import json

    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _wait_for_link(client, app, timeout: float = 10.0) -> None:
    """The gateways connect to each other in the background; the first call waits for that at most once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.echo("warm-up", metadata=app, timeout=2)
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                return
            time.sleep(0.1)


def _call_unknown_service(target: str) -> str:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/com.example.NotImported/echo")
        call(b"", timeout=5)
    return "OK"


def summary(outcomes: list[Outcome], kept: Path | None,
            title: str = "interlink lab: site-b caller -> GW-B -> mTLS -> GW-A -> site-a provider",
            noun: str = "calls") -> int:
    width = max(len(o.name) for o in outcomes)
    print(title)
    for o in outcomes:
        mark = "ok  " if o.ok else "FAIL"
        print(f"  {mark} {o.name:<{width}}  expected {o.expected:<18} got {o.got:<18} {o.ms:7.1f} ms")
        if o.detail:
            print(f"       {'':<{width}}  \"{o.detail}\"")
    failed = [o for o in outcomes if not o.ok]
    verdict = "all as expected" if not failed else f"{len(failed)} NOT as expected"
    print(f"{title.split(':')[0]}: {len(outcomes)} {noun}, {verdict}")
    if kept is not None:
        print(f"certs, site files and gateway logs kept in {kept}")
    return 1 if failed else 0


# --- `interlink lab call`: a site's consumer, as the docker and netns labs run it ---------------------------


def _call_cases(client, metadata, timeout: float, app: str) -> dict[str, Callable[[], tuple[bool, str]]]:
    """Each case: make the call, say whether the answer was right and what is worth showing about it."""
    from interlink.demo.client import md_value, md_values

    def echo() -> tuple[bool, str]:
        message, initial, trailing = client.echo(f"hello from {app}", metadata=metadata, timeout=timeout)
        served, stamped = md_value(initial, "x-served-by"), md_values(trailing, "x-caller-app")
        return message == f"hello from {app}", f"served by {served}, caller app {stamped}"

    return {
        "echo": echo,
        "add": lambda: (client.add(2, 3, metadata=metadata, timeout=timeout) == 5, ""),
        "count": lambda: (client.count(3, metadata=metadata, timeout=timeout) == [1, 2, 3], ""),
        "sum": lambda: (client.sum([(1, 2), (3, 4)], metadata=metadata, timeout=timeout) == 10, ""),
        "chat": lambda: (client.chat(["a", "b", "c"], metadata=metadata, timeout=timeout) == ["a", "b", "c"], ""),
    }


CALL_CASES = ("echo", "add", "count", "sum", "chat")


def run_call(
    *,
    registry: str | None,
    zone: str | None,
    target: str | None,
    service: str = "com.example.EchoService",
    app: str = CONSUMER_APP,
    cases: Sequence[str] = (),
    wait: float = 0.0,
    timeout: float = 5.0,
    as_json: bool = False,
) -> int:
    """Find `service` in the site's registry (DNS-SD) or take `target`, call it once per case, print what
    happened (one line per call, JSON with `as_json`); exit 0 when every call succeeded.

    With `wait`, a registry that does not answer yet, an import not yet published and UNAVAILABLE on the
    first call (the gateways are still linking up) are retried for that many seconds.
    """
    import json

    from interlink.demo.client import EchoClient

    deadline = time.monotonic() + wait

    def say(**fields) -> None:
        if as_json:
            print(json.dumps(fields), flush=True)
        elif "discovered" in fields:
            found = fields["discovered"] or "nothing"
            print(f"consumer: {service} in {fields['registry']}: {found} ({fields['ms']:.1f} ms)", flush=True)
        else:
            detail = f"  {fields['detail']}" if fields.get("detail") else ""
            print(f"consumer: {fields['case']:<6} -> {fields['status']:<18} {fields['ms']:7.1f} ms{detail}", flush=True)

    if target is None:
        if not registry or not zone:
            print("interlink lab call: give --target, or --registry and --zone", file=sys.stderr)
            return 2
        target = _discover(registry, zone, service, deadline, say)
        if target is None:
            return 1
    failed = 0
    with EchoClient(target) as client:
        calls = _call_cases(client, (("tri-consumer-appname", app),), timeout, app)
        for index, case in enumerate(cases or CALL_CASES):
            while True:
                started = time.perf_counter()
                try:
                    right, detail = calls[case]()
                    status = "OK" if right else "WRONG REPLY"
                except grpc.RpcError as exc:
                    status, detail = exc.code().name, exc.details() or ""
                if index == 0 and status == "UNAVAILABLE" and time.monotonic() < deadline:
                    time.sleep(0.2)  # the gateways are still linking up
                    continue
                break
            failed += status != "OK"
            say(case=case, target=target, status=status, ms=(time.perf_counter() - started) * 1000, detail=detail)
    return 1 if failed else 0


def _discover(registry: str, zone: str, service: str, deadline: float, say) -> str | None:
    """The first instance of the Triple import `service` in the site's DNS-SD registry."""
    import trio

    from registry_adapters.dnssd import browse
    from registry_adapters.model import ServiceKey

    host, _, port = registry.rpartition(":")
    key = ServiceKey(interface=service, protocol="tri", version="1.0")
    while True:
        started = time.perf_counter()
        error = ""
        try:
            found = trio.run(browse, (host, int(port)), key, zone)
        except Exception as exc:  # noqa: BLE001 - a registry not answering (yet) is reported, not raised
            found, error = frozenset(), f"{type(exc).__name__}: {exc}"
        if found or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    instance = min(found, key=lambda i: (i.host, i.port), default=None)
    discovered = f"{instance.host}:{instance.port}" if instance else None
    ms = (time.perf_counter() - started) * 1000
    say(discovered=discovered, registry=f"{zone.rstrip('.')} at {registry}", ms=ms, detail=error)
    if instance is None:
        print(f"interlink lab call: {service} is not published in {zone} at {registry}. {error}", file=sys.stderr)
    return discovered
