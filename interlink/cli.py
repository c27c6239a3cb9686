"""`interlink` command line: run, check, certs, lab."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interlink", description="Cross-site interconnect gateway")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="run one site's gateway in the foreground")
    run.add_argument("-c", "--config", required=True, type=Path, help="site file (YAML)")
    run.add_argument("--workers", type=_positive_int, default=1,
                     help="worker processes sharing the ports (SO_REUSEPORT); at least 1")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="json", choices=["json", "console"])
    run.add_argument("--drain-seconds", type=float, default=10.0, help="grace period for in-flight calls on SIGTERM")
    run.set_defaults(handler=_cmd_run)

    check = commands.add_parser("check", help="validate site files, alone and against each other")
    check.add_argument("files", nargs="+", type=Path)
    check.set_defaults(handler=_cmd_check)

    certs = commands.add_parser("certs", help="create site CAs and gateway certificates")
    certs_commands = certs.add_subparsers(title="certs commands", metavar="COMMAND")
    init_site = certs_commands.add_parser("init-site", help="new site CA + first gateway certificate")
    init_site.add_argument("name")
    init_site.add_argument("--out", required=True, type=Path)
    init_site.add_argument("--dns", action="append", default=[], help="gateway DNS name or IP (repeatable)")
    init_site.add_argument("--trust-domain", default="interlink")
    init_site.set_defaults(handler=_cmd_certs_init_site)
    issue = certs_commands.add_parser("issue", help="certificate for another gateway of a site")
    issue.add_argument("--ca", required=True, type=Path, help="folder holding the site's ca.pem and ca.key")
    issue.add_argument("--site", required=True)
    issue.add_argument("--out", required=True, type=Path)
    issue.add_argument("--dns", action="append", default=[])
    issue.add_argument("--trust-domain", default="interlink")
    issue.add_argument("--name", default="gateway", help="file name stem: NAME.pem, NAME.key")
    issue.set_defaults(handler=_cmd_certs_issue)
    certs.set_defaults(handler=lambda args: certs.print_help() or 2)

    lab = commands.add_parser("lab", help="two sites with demo providers; calls across; summary (loopback or --netns)")
    lab.add_argument("--keep", action="store_true", help="keep the temporary folder (certs, site files, logs)")
    lab.add_argument("--configs", type=Path, default=None, help="folder with the lab's site files")
    lab.add_argument("--netns", action="store_true",
                     help="build site-configs/lab/topology.yaml in Linux network namespaces instead (root)")
    lab.set_defaults(handler=_cmd_lab)
    lab_commands = lab.add_subparsers(title="lab commands", metavar="COMMAND")
    call = lab_commands.add_parser("call", help="a site's consumer: find an import in the site's registry, call it")
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


def _cmd_lab(args: argparse.Namespace) -> int:
    if args.netns:
        from interlink import logs
        from interlink.labnet import run_netns_lab

        logs.configure("info", json=False)  # the lab's own events, readable, on stderr; the table on stdout
        return run_netns_lab(keep=args.keep)
    from interlink.lab import run_lab

    return run_lab(keep=args.keep, configs=args.configs)


def _cmd_lab_call(args: argparse.Namespace) -> int:
    from interlink.lab import run_call

    return run_call(registry=args.registry, zone=args.zone, target=args.target, service=args.service, app=args.app,
                    cases=args.case, wait=args.wait, timeout=args.timeout, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
