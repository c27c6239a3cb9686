"""`interlink` command line: run, check, certs, lab, status."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed; run at least 1 worker")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed; give a positive number of seconds")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("interlink")
    except PackageNotFoundError:
        return "unknown"


def _example(*lines: str) -> dict[str, Any]:
    """add_parser keywords for a command whose --help ends with examples (kept as written)."""
    label = "example:" if len(lines) == 1 else "examples:"
    return {"epilog": "\n".join([label, *(f"  {line}" for line in lines)]),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interlink", description="Cross-site interconnect gateway")
    parser.add_argument("--version", action="version", version=f"interlink {_version()}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="run one site's gateway in the foreground",
                              **_example("interlink run -c site-configs/lab/site-a.yaml --workers 2"))
    run.add_argument("-c", "--config", required=True, type=Path, help="site file (YAML)")
    run.add_argument("--workers", type=_positive_int, default=1,
                     help="worker processes sharing the ports (SO_REUSEPORT); at least 1")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="json", choices=["json", "console"])
    run.add_argument("--drain-seconds", type=float, default=10.0, help="grace period for in-flight calls on SIGTERM")
    run.set_defaults(handler=_cmd_run)

    check = commands.add_parser("check", help="validate site files, alone and against each other",
                                **_example("interlink check site-configs/lab/site-a.yaml site-configs/lab/site-b.yaml"))
    check.add_argument("files", nargs="+", type=Path)
    check.set_defaults(handler=_cmd_check)

    certs = commands.add_parser("certs", help="create site CAs and gateway certificates")
    certs_commands = certs.add_subparsers(title="certs commands", metavar="COMMAND")
    init_site = certs_commands.add_parser(
        "init-site", help="new site CA + first gateway certificate",
        **_example("interlink certs init-site site-a --out certs/site-a --dns gw1.site-a.example --dns 10.0.0.5"))
    init_site.add_argument("name")
    init_site.add_argument("--out", required=True, type=Path)
    init_site.add_argument("--dns", action="append", default=[], help="gateway DNS name or IP (repeatable)")
    init_site.add_argument("--trust-domain", default="interlink")
    init_site.set_defaults(handler=_cmd_certs_init_site)
    issue = certs_commands.add_parser(
        "issue", help="certificate for another gateway of a site",
        **_example("interlink certs issue --ca certs/site-a --site site-a --out certs/site-a-gw2 --dns gw2.site-a.example"
                   " --name gw2"))
    issue.add_argument("--ca", required=True, type=Path, help="folder holding the site's ca.pem and ca.key")
    issue.add_argument("--site", required=True)
    issue.add_argument("--out", required=True, type=Path)
    issue.add_argument("--dns", action="append", default=[])
    issue.add_argument("--trust-domain", default="interlink")
    issue.add_argument("--name", default="gateway", help="file name stem: NAME.pem, NAME.key")
    issue.set_defaults(handler=_cmd_certs_issue)
    certs.set_defaults(handler=lambda args: certs.print_help() or 2)

    lab = commands.add_parser("lab", help="two sites with demo providers; calls across; summary (loopback or --netns)",
                              **_example("interlink lab", "interlink lab --keep", "sudo interlink lab --netns"))
    lab.add_argument("--keep", action="store_true", help="keep the temporary folder (certs, site files, logs)")
    lab.add_argument("--configs", type=Path, default=None, help="folder with the lab's site files")
    lab.add_argument("--netns", action="store_true",
                     help="build site-configs/lab/topology.yaml in Linux network namespaces instead (root)")
    lab.set_defaults(handler=_cmd_lab)
    lab_commands = lab.add_subparsers(title="lab commands", metavar="COMMAND")
    call = lab_commands.add_parser(
        "call", help="a site's consumer: find an import in the site's registry, call it",
        **_example("interlink lab call --registry 198.18.2.10:53 --zone site-b.lab --wait 60",
                   "interlink lab call --target 127.0.0.1:50051 --case echo --json"))
    call.add_argument("--registry", metavar="HOST:PORT", help="the site's DNS-SD registry")
    call.add_argument("--zone", help="the registry's zone, e.g. site-b.lab")
    call.add_argument("--target", metavar="HOST:PORT", help="call this address instead of looking the service up")
    call.add_argument("--service", default="com.example.EchoService")
    call.add_argument("--app", default="order-app", help="caller application (tri-consumer-appname)")
    call.add_argument("--case", action="append", default=[], choices=["echo", "add", "count", "sum", "chat"],
                      help="call to make (repeatable; default: all)")
    call.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the registry and the link")
    call.add_argument("--timeout", type=float, default=5.0, help="deadline of each call, seconds")
    call.add_argument("--json", action="store_true", help="one JSON line per call")
    call.set_defaults(handler=_cmd_lab_call)

    status = commands.add_parser(
        "status", help="a running gateway's peers, links, certificate expiry, registry sync and counters",
        description="Ask a running gateway's admin endpoint (listen.admin) for its status.\n"
                    "Exit 0 when the gateway is ready, 1 when it is not (the reasons go to stderr),\n"
                    "2 when it cannot be reached.",
        **_example("interlink status -c /etc/interlink/site-a.yaml", "interlink status --admin 127.0.0.1:9901 --json"))
    where = status.add_mutually_exclusive_group()
    where.add_argument("--admin", metavar="HOST:PORT", help="the gateway's admin address (its listen.admin)")
    where.add_argument("-c", "--config", type=Path, metavar="SITE.yaml", help="read listen.admin from this site file")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    status.add_argument("--timeout", type=_positive_seconds, default=5.0, metavar="SECONDS",
                        help="how long to wait for the gateway's answer (default 5)")
    status.set_defaults(handler=_cmd_status)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from interlink.control.runner import StartupError, run_gateway

    try:
        return run_gateway(
            args.config,
            workers=args.workers,
            log_level=args.log_level,
            log_format=args.log_format,
            drain_seconds=args.drain_seconds,
        )
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return 1


def _cmd_check(args: argparse.Namespace) -> int:
    from interlink.control.check import check_files

    problems = check_files(list(args.files))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"ok: {len(args.files)} site file(s) valid and consistent")
    return 0


def _cmd_certs_init_site(args: argparse.Namespace) -> int:
    from interlink.control.certs import CertError, init_site

    try:
        paths = init_site(args.name, args.out, args.dns, trust_domain=args.trust_domain)
    except CertError as exc:
        print(f"interlink certs init-site: {exc}", file=sys.stderr)
        return 1
    print(f"site {args.name}: CA {paths.ca}, gateway certificate {paths.cert}, key {paths.key}")
    return 0


def _cmd_certs_issue(args: argparse.Namespace) -> int:
    from interlink.control.certs import CertError, issue

    try:
        paths = issue(args.ca, args.site, args.out, args.dns, trust_domain=args.trust_domain, name=args.name)
    except CertError as exc:
        print(f"interlink certs issue: {exc}", file=sys.stderr)
        return 1
    print(f"site {args.site}: certificate {paths.cert}, key {paths.key}")
    return 0


_LAB_EXTRA = (
    "interlink lab needs the lab's demo gRPC peers (grpcio), which a plain install leaves out: "
    "pip install 'interlink[lab]' (from a checkout: pip install -e '.[lab]', or bash scripts/setup.sh)"
)


def _lab_missing() -> str | None:
    """Why the lab cannot run here (its optional dependencies are not installed), or None."""
    from importlib.util import find_spec

    return _LAB_EXTRA if find_spec("grpc") is None else None


def _cmd_lab(args: argparse.Namespace) -> int:
    missing = _lab_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 1
    if args.netns:
        from interlink import logs
        from interlink.labnet import run_netns_lab

        logs.configure("info", json=False)  # the lab's own events, readable, on stderr; the table on stdout
        return run_netns_lab(keep=args.keep)
    from interlink.lab import run_lab

    return run_lab(keep=args.keep, configs=args.configs)


def _cmd_lab_call(args: argparse.Namespace) -> int:
    missing = _lab_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 1
    from interlink.lab import run_call

    return run_call(registry=args.registry, zone=args.zone, target=args.target, service=args.service, app=args.app,
                    cases=args.case, wait=args.wait, timeout=args.timeout, as_json=args.json)


STATUS_MAX_BYTES = 16 << 20  # a status document is a few KiB; refuse to buffer without bound


class _StatusUnavailable(Exception):
    """`interlink status` could not get an answer; the message says what was tried and how to fix it."""


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from interlink.control.status_view import render_table

    try:
        host, port = _admin_address(args)
        base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        status = _fetch_status(base, args.timeout)
        ready, reasons = _fetch_readiness(base, args.timeout)
    except _StatusUnavailable as exc:
        print(f"interlink status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        print(render_table(status), end="")
    if ready:
        return 0
    for reason in reasons or [""]:
        print(f"not ready: {reason}" if reason else "not ready", file=sys.stderr)
    return 1


def _admin_address(args: argparse.Namespace) -> tuple[str, int]:
    """Where to ask: --admin, or the listen.admin of -c's site file (a wildcard bind means loopback)."""
    from interlink.control.sitefile import SiteFileError, load_site, parse_host_port

    if args.admin is not None:
        try:
            address = parse_host_port(args.admin)
        except ValueError as exc:
            raise _StatusUnavailable(f"--admin {args.admin!r} {exc}") from None
    elif args.config is not None:
        try:
            site = load_site(args.config)
        except SiteFileError as exc:
            raise _StatusUnavailable(f"cannot read the site file:\n{exc}") from None
        if site.listen.admin is None:
            raise _StatusUnavailable(
                f"{args.config} has no listen.admin; add `listen: {{admin: 127.0.0.1:9901}}` and restart the gateway"
            )
        address = site.listen.admin
    else:
        raise _StatusUnavailable("say which gateway to ask: --admin HOST:PORT, or -c SITE.yaml (its listen.admin)")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
    return host, address.port


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """GET url directly (never through a proxy from the environment); (status code, body)."""
    import http.client
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        try:
            with opener.open(url, timeout=timeout) as response:
                code, body = response.status, response.read(STATUS_MAX_BYTES + 1)
        except urllib.error.HTTPError as exc:
            with exc:
                code, body = exc.code, exc.read(STATUS_MAX_BYTES + 1)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _StatusUnavailable(
            f"cannot reach the admin endpoint at {url} ({reason or type(reason).__name__}); is the gateway running "
            "(interlink run -c SITE.yaml), and is this the listen.admin of its site file?"
        ) from None
    if len(body) > STATUS_MAX_BYTES:
        raise _StatusUnavailable(f"{url} answered more than {STATUS_MAX_BYTES} bytes; is that an interlink gateway?")
    return code, body


def _fetch_status(base: str, timeout: float) -> dict:
    import json

    url = f"{base}/status"
    code, body = _http_get(url, timeout)
    if code != 200:
        first_line = body.decode("utf-8", "replace").strip().splitlines()[:1]
        raise _StatusUnavailable(f"{url} answered HTTP {code} {' '.join(first_line)}; see the gateway's log")
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        raise _StatusUnavailable(f"{url} did not answer a JSON status document; is that an interlink gateway?")
    return status


def _fetch_readiness(base: str, timeout: float) -> tuple[bool, list[str]]:
    """(ready, reasons) from /readyz: 200 ready; 503 one `not ready: REASON` line per reason."""
    url = f"{base}/readyz"
    code, body = _http_get(url, timeout)
    if code == 200:
        return True, []
    if code != 503:
        raise _StatusUnavailable(f"{url} answered HTTP {code}; see the gateway's log")
    lines = body.decode("utf-8", "replace").splitlines()
    return False, [line.removeprefix("not ready:").strip() for line in lines if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
