"""The ``bulwark`` command: up, status, apply, delete, get, run, probe, policy, logs, summary, recommend, discover,
nats-auth."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bulwark.client import Api, ApiError
from shared.bounded import InputError, load_documents, read_text_file
from shared.config import Settings, load_settings

__all__ = ["main", "build_parser"]

def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(data_dir=getattr(args, "data_dir", None), rest_port=getattr(args, "rest_port", None),
                         grpc_port=getattr(args, "grpc_port", None), nats_port=getattr(args, "nats_port", None),
                         nats_url=getattr(args, "nats_url", None), rest_host=getattr(args, "rest_host", None),
                         node_name=getattr(args, "node_name", None), nats_auth=getattr(args, "nats_auth", None),
                         nats_server_tls_cert=getattr(args, "nats_tls_cert", None),
                         nats_server_tls_key=getattr(args, "nats_tls_key", None))


def _api(args: argparse.Namespace, timeout: float = 10.0) -> Api:
    """The REST client, with the bearer token from --token or BULWARK_API_TOKEN when one is set."""
    token = getattr(args, "token", None) or os.environ.get("BULWARK_API_TOKEN")
    return Api(_settings(args).rest_url, timeout=timeout, token=token)


def _policy_files(targets: list[str]) -> list[Path]:
    """Every policy file the ``-f`` arguments name, in order (all resolved before any is used)."""
    from bulwark.commands.policy import policy_files

    try:
        return [path for target in targets for path in policy_files(target)]
    except FileNotFoundError as exc:
        raise SystemExit(f"bulwark: {exc}") from None


def _print_api_error(exc: ApiError) -> int:
    body = exc.body if isinstance(exc.body, dict) else {}
    errors = body.get("errors") or body.get("detail")
    if isinstance(errors, list):
        for err in errors:
            if isinstance(err, dict):
                where = f"{err.get('document', '')}: " if err.get("document") else ""
                print(f"error: {where}{err.get('path', '')}: {err.get('message', err.get('msg', ''))}", file=sys.stderr)
            else:
                print(f"error: {err}", file=sys.stderr)
    else:
        print(f"error: {exc}{': ' + str(exc.body) if exc.body else ''}", file=sys.stderr)
    return 1


def cmd_up(args: argparse.Namespace) -> int:
    from bulwark.supervisor import run_up

    settings = _settings(args)
    if not args.nats_url and "BULWARK_NATS_URL" not in os.environ:
        settings.nats_url = f"nats://127.0.0.1:{settings.nats_port}"
    try:
        settings.nats_server_tls()
    except ValueError as exc:
        print(f"bulwark up: {exc}", file=sys.stderr)
        return 2
    return run_up(settings)


def _resources(by_node: dict[str, Any]) -> str:
    """`` cpu 0.4% rss 61.2 MiB`` per node (the node named when there are several)."""
    parts = []
    for node, use in sorted(by_node.items()):
        if "cpu_percent" in use and "rss_bytes" in use:
            where = f" {node}:" if len(by_node) > 1 else ""
            parts.append(f"{where} cpu {float(use['cpu_percent']):.1f}% rss {int(use['rss_bytes']) / 2**20:.1f} MiB")
    return "".join(parts)


def cmd_status(args: argparse.Namespace) -> int:
    api = _api(args, timeout=3)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            code, body = api.health()
            if code == 200 and body.get("healthy"):
                for name, info in sorted(body.get("services", {}).items()):
                    print(f"{name:10} {info.get('status', '?'):9}{_resources(info.get('resources') or {})}")
                return 0
            last = body
        except ApiError as exc:
            last = str(exc)
        if time.monotonic() >= deadline:
            print(f"not healthy: {json.dumps(last) if not isinstance(last, str) else last}", file=sys.stderr)
            return 1
        time.sleep(0.5)


def cmd_apply(args: argparse.Namespace) -> int:
    api = _api(args)
    status = 0
    for path in _policy_files(args.file):
        try:
            reply = api.apply(path.read_text(), "application/json" if path.suffix == ".json" else "application/yaml")
        except ApiError as exc:
            print(f"{path}:", file=sys.stderr)
            status = _print_api_error(exc)
            continue
        for res in reply.get("results", []):
            ns = f"{res.get('namespace')}/" if res.get("namespace") else ""
            print(f"{res.get('kind')} {ns}{res.get('name')} {res.get('status')}")
        for w in reply.get("warnings", []):
            where = ": ".join(str(w[k]) for k in ("document", "path") if w.get(k))
            print(f"warning: {where}: {w.get('message', '')}" if where else f"warning: {w.get('message', '')}",
                  file=sys.stderr)
    return status


def cmd_delete(args: argparse.Namespace) -> int:
    api = _api(args)
    status = 0
    for path in _policy_files(args.file):
        try:
            docs = load_documents(read_text_file(path))
        except InputError as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            status = 1
            continue
        for doc in docs:
            if not isinstance(doc, dict):
                continue
            meta = doc.get("metadata") or {}
            kind, name = doc.get("kind", ""), meta.get("name", "")
            namespace = meta.get("namespace", "default" if kind == "KubeArmorPolicy" else "")
            try:
                api.delete(kind, name, namespace)
                print(f"{kind} {namespace + '/' if namespace else ''}{name} deleted")
            except ApiError as exc:
                status = _print_api_error(exc)
    return status


def cmd_get(args: argparse.Namespace) -> int:
    api = _api(args)
    try:
        if args.what == "policies":
            body = api.policies()
            rows = body.get("policies", []) if isinstance(body, dict) else body
            if args.output == "json":
                print(json.dumps(rows, indent=2))
                return 0
            print(f"{'KIND':24} {'NAMESPACE':16} {'NAME':32} {'STATUS':10} SELECTS")
            for p in rows:
                print(f"{p.get('kind', ''):24} {p.get('namespace', ''):16} {p.get('name', ''):32} "
                      f"{p.get('status', ''):10} {','.join(p.get('selects', []))}")
                if p.get("reason"):
                    print(f"{'':24} reason: {p['reason']}")
                for warning in p.get("warnings") or []:
                    print(f"{'':24} warning: {warning}")
        else:
            alerts = api.alerts(namespace=args.namespace, policy=args.policy, limit=args.limit)
            for alert in alerts:
                print(json.dumps(alert))
    except ApiError as exc:
        return _print_api_error(exc)
    return 0


def _labels(values: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"bulwark run: --label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def cmd_run(args: argparse.Namespace) -> int:
    from bulwark.launcher import run_workload

    argv = args.command[1:] if args.command and args.command[0] == "--" else args.command
    if not argv:
        raise SystemExit("bulwark run: no command given (bulwark run [options] -- CMD [ARGS...])")
    settings = _settings(args)
    if not args.nats_url and "BULWARK_NATS_URL" not in os.environ:
        from bulwark.natsserver.config import launcher_url

        settings.nats_url = launcher_url(settings.data_dir) or settings.nats_url
    return run_workload(settings, argv, namespace=args.namespace, labels=_labels(args.label),
                        name=args.name, image=args.image, enforce_timeout=args.enforce_timeout)


def cmd_policy_validate(args: argparse.Namespace) -> int:
    from bulwark.commands.policy import validate_paths

    lines, ok = validate_paths(args.paths)
    for line in lines:
        print(line)
    return 0 if ok else 1


def cmd_policy_simulate(args: argparse.Namespace) -> int:
    from bulwark.simulate import run_simulate

    return run_simulate(args)


def cmd_probe(args: argparse.Namespace) -> int:
    from services.enforcer.select import choose, probe_all
    from services.monitor.probe import probe_monitor

    settings = _settings(args)
    print(probe_monitor().line())
    for name, supported, reason in probe_all():
        print(f"{name:12} {'supported' if supported else 'unsupported':12} {reason}")
    active = choose(settings.enforcer_order)
    print(f"active: {active.name} (order {settings.enforcer_order})")
    for line in preset_lines(active):
        print(line)
    active.close()
    return 0


def preset_lines(enforcer: Any) -> list[str]:
    """Per policy preset, which active enforcer blocks it here, or that its Block is only reported."""
    from shared.presets import PRESETS, route_of

    by_operation = getattr(enforcer, "by_operation", None)
    claims = dict(by_operation()) if by_operation else {op: enforcer.name for op in getattr(enforcer, "operations", ())}
    out = []
    for name, info in PRESETS.items():
        who = claims.get(route_of(name))
        what = f"Block enforced by {who}" if who else "Block only reported here, as Audit (Block)"
        out.append(f"preset {name:12} {what}; catches {info.catches}")
    return out


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rest-port", type=int, help="REST port (env BULWARK_REST_PORT, default 8080)")
    p.add_argument("--rest-host", help="REST address (env BULWARK_REST_HOST, default 127.0.0.1)")
    p.add_argument("--nats-url", help="NATS URL (env BULWARK_NATS_URL)")
    p.add_argument("--token", help="bearer token for the REST API (env BULWARK_API_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="bulwark", description="Runtime security that speaks KubeArmor.")
    sub = parser.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="run NATS and every service on this host, in the foreground")
    _common(up)
    up.add_argument("--data-dir", type=Path, help="state directory (env BULWARK_DATA_DIR, default /var/lib/bulwark)")
    up.add_argument("--grpc-port", type=int, help="gRPC port (env BULWARK_GRPC_PORT, default 32767)")
    up.add_argument("--nats-port", type=int, help="embedded nats-server port (env BULWARK_NATS_PORT, default 4222)")
    up.add_argument("--node-name", help="this node's name (env BULWARK_NODE_NAME, default the hostname)")
    up.add_argument("--nats-auth", action="store_true", default=None,
                    help="one NATS user per service with only the subjects it needs (env BULWARK_NATS_AUTH)")
    up.add_argument("--nats-tls-cert", type=Path, metavar="PEM",
                    help="nats-server speaks only TLS with this certificate (env BULWARK_NATS_SERVER_TLS_CERT; "
                         "services trust it unless BULWARK_NATS_TLS_CA names a CA)")
    up.add_argument("--nats-tls-key", type=Path, metavar="PEM", help="its key (env BULWARK_NATS_SERVER_TLS_KEY)")
    up.set_defaults(func=cmd_up)

    status = sub.add_parser("status", help="exit 0 once every service reports healthy")
    _common(status)
    status.add_argument("--wait", type=float, default=0.0, help="keep trying for this many seconds")
    status.set_defaults(func=cmd_status)

    apply = sub.add_parser("apply", help="apply the policies in files or directories")
    _common(apply)
    apply.add_argument("-f", "--file", action="append", required=True, metavar="FILE|DIR",
                       help="a policy file or a directory of them; repeat for more")
    apply.set_defaults(func=cmd_apply)

    delete = sub.add_parser("delete", help="delete the policies named in files")
    _common(delete)
    delete.add_argument("-f", "--file", action="append", required=True, metavar="FILE|DIR",
                        help="a policy file or a directory of them; repeat for more")
    delete.set_defaults(func=cmd_delete)

    get = sub.add_parser("get", help="list policies or alerts")
    _common(get)
    get.add_argument("what", choices=["policies", "alerts"])
    get.add_argument("-o", "--output", choices=["table", "json"], default="table")
    get.add_argument("-n", "--namespace")
    get.add_argument("--policy")
    get.add_argument("--limit", type=int, default=50)
    get.set_defaults(func=cmd_get)

    probe = sub.add_parser("probe", help="what this node supports and which enforcer would be active")
    probe.set_defaults(func=cmd_probe)

    policy = sub.add_parser("policy", help="work with policy files offline")
    policy_sub = policy.add_subparsers(dest="policy_cmd", required=True)
    validate = policy_sub.add_parser("validate", help="validate policy files: OK or INVALID per document")
    validate.add_argument("paths", nargs="+", metavar="FILE|DIR")
    validate.set_defaults(func=cmd_policy_validate)
    simulate = policy_sub.add_parser("simulate", help="judge recorded accesses (JSON lines) against policy files")
    simulate.add_argument("-f", "--file", action="extend", nargs="+", required=True, metavar="FILE|DIR")
    simulate.add_argument("--events", metavar="EVENTS.jsonl", help="one access per line; - for stdin")
    simulate.add_argument("--default-posture", default="", metavar="file=block,network=audit,capabilities=audit")
    from bulwark.simulate import add_history_arguments

    add_history_arguments(simulate)
    simulate.set_defaults(func=cmd_policy_simulate)

    run = sub.add_parser("run", help="run a command as a local workload")
    _common(run)
    run.add_argument("--namespace", default="default")
    run.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--name")
    run.add_argument("--image", default="")
    run.add_argument("--enforce-timeout", type=float, default=10.0, metavar="S",
                     help="how long to wait for the enforcer to cover the workload before refusing to start")
    run.add_argument("--node-name", help="this node's name (env BULWARK_NODE_NAME)")
    run.add_argument("--data-dir", type=Path, help="where `bulwark up --nats-auth` left the launcher's NATS user")
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(func=cmd_run)

    from bulwark.commands.logs import add_logs_parser
    from bulwark.commands.natsauth import add_nats_auth_parser
    from bulwark.commands.summary import add_summary_parser

    add_logs_parser(sub)
    add_summary_parser(sub)
    from bulwark.discover import add_discover_parser
    from bulwark.recommend.cmd import add_recommend_parser

    add_recommend_parser(sub)
    add_discover_parser(sub)
    add_nats_auth_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``bulwark`` command."""
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
