"""``bulwark logs``: watch alerts and logs over gRPC with ``karmor logs``' flags.

--logFilter policy (alerts: WatchAlerts), system (logs: WatchLogs) or all (both); the other flags
filter on the client, as karmor does: --namespace/--pod/--container/--operation/--logType exact,
--resource/--source substrings, --labels a subset of the record's ``k=v`` labels. --json prints one
object a line with KubeArmor's PascalCase names; --limit stops after N records.

Credentials as for the REST commands: ``--token`` or ``BULWARK_API_TOKEN`` is sent as
``authorization: Bearer <token>`` metadata; TLS with ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for
mutual TLS, what karmor presents).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["add_logs_parser", "run_logs", "matches", "to_dict", "render"]


def add_logs_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``logs`` on the CLI's subparsers."""
    p = sub.add_parser("logs", help="watch alerts and logs over gRPC (karmor logs' flags)")
    p.add_argument("--gRPC", dest="grpc", help="host:port of the LogService (default from BULWARK_GRPC_HOST/PORT)")
    p.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) when the LogService uses TLS")
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", type=Path, help="client key (PEM) for mutual TLS")
    p.add_argument("--token", help="bearer token (env BULWARK_API_TOKEN)")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.add_argument("--logFilter", default="policy", choices=["policy", "system", "all"],
                   help="policy: alerts, system: logs, all: both")
    p.add_argument("-n", "--namespace", default="")
    p.add_argument("--logType", default="", help="e.g. ContainerLog, HostLog, MatchedPolicy")
    p.add_argument("--operation", default="", help="Process, File, Network, ...")
    p.add_argument("--container", default="")
    p.add_argument("--pod", default="")
    p.add_argument("--resource", default="", help="substring of Resource")
    p.add_argument("--source", default="", help="substring of Source")
    p.add_argument("-l", "--labels", default="", help="k=v[,k2=v2]: all must be among the record's labels")
    p.add_argument("--limit", type=int, default=0, help="stop after this many records (0: no limit)")
    p.add_argument("--timeout", type=float, default=0, help="stop after this many seconds (0: never)")
    p.set_defaults(func=run_logs)
    return p


def to_dict(msg: Any) -> dict[str, Any]:
    """A LogService message as a PascalCase map (empty fields left out)."""
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(msg, preserving_proto_field_name=True)


def _labels(text: str) -> set[str]:
    return {part.strip() for part in text.split(",") if part.strip()}


def matches(record: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether ``record`` passes the client-side filters of ``args``."""
    exact = (("namespace", "NamespaceName"), ("pod", "PodName"), ("container", "ContainerName"),
             ("operation", "Operation"), ("logType", "Type"))
    for opt, fld in exact:
        want = getattr(args, opt)
        if want and str(record.get(fld, "")) != want:
            return False
    if args.resource and args.resource not in str(record.get("Resource", "")):
        return False
    if args.source and args.source not in str(record.get("Source", "")):
        return False
    return not args.labels or _labels(args.labels) <= _labels(str(record.get("Labels", "")))


def render(kind: str, record: dict[str, Any], as_json: bool, out: TextIO) -> None:
    """Print one record: a JSON line, or karmor's ``== Alert / time ==`` block."""
    if as_json:
        out.write(json.dumps(record) + "\n")
    else:
        out.write(f"== {kind} / {record.get('UpdatedTime', '')} ==\n")
        for key, value in record.items():
            if key not in ("UpdatedTime",):
                out.write(f"{key}: {value}\n")
    out.flush()


def _describe(exc: BaseException) -> str:
    """A gRPC error as ``CODE: details`` (UNAUTHENTICATED: missing or invalid bearer token, ...)."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return str(exc)


def _channel(args: argparse.Namespace, target: str) -> Any:
    """A TLS channel when --tls-ca/--tls-cert is given, else a plaintext one."""
    import grpc

    if not (args.tls_ca or args.tls_cert):
        return grpc.aio.insecure_channel(target)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("bulwark logs: --tls-cert and --tls-key go together")
    creds = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None)
    return grpc.aio.secure_channel(target, creds)


async def _watch(args: argparse.Namespace, target: str) -> int:

    from shared.proto_gen import kubearmor_pb2 as pb
    from shared.proto_gen import kubearmor_pb2_grpc as pb_grpc

    channel = _channel(args, target)
    token = getattr(args, "token", None) or os.environ.get("BULWARK_API_TOKEN")
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    queue: asyncio.Queue[tuple[str, Any] | BaseException] = asyncio.Queue()
    stub = pb_grpc.LogServiceStub(channel)
    calls = []
    if args.logFilter in ("policy", "all"):
        calls.append(("Alert", stub.WatchAlerts(pb.RequestMessage(Filter=args.logFilter), metadata=metadata)))
    if args.logFilter in ("system", "all"):
        calls.append(("Log", stub.WatchLogs(pb.RequestMessage(Filter=args.logFilter), metadata=metadata)))

    async def pump(kind: str, call: AsyncIterator[Any]) -> None:
        try:
            async for msg in call:
                await queue.put((kind, msg))
        except BaseException as exc:  # the stream ended or failed: tell the main loop
            await queue.put(exc)

    pumps = [asyncio.create_task(pump(kind, call)) for kind, call in calls]
    shown = 0
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                if isinstance(item, asyncio.CancelledError):
                    continue
                sys.stderr.write(f"bulwark logs: {target}: {_describe(item)}\n")
                return 1
            kind, msg = item
            record = to_dict(msg)
            if matches(record, args):
                render(kind, record, args.json, sys.stdout)
                shown += 1
                if args.limit and shown >= args.limit:
                    return 0
    finally:
        for task in pumps:
            task.cancel()
        for _, call in calls:
            call.cancel()
        await channel.close()


def run_logs(args: argparse.Namespace) -> int:
    """Entry point of ``bulwark logs``."""
    from shared.config import load_settings

    settings = load_settings()
    target = args.grpc or f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        if args.timeout:
            return asyncio.run(asyncio.wait_for(_watch(args, target), args.timeout))
        return asyncio.run(_watch(args, target))
    except TimeoutError:
        return 0
    except KeyboardInterrupt:
        return 130
