"""``bulwark recommend``: hardening policies for Docker images, containers, or workloads the stack knows.

    bulwark recommend --image IMG [--image ...] [--container NAME|ID ...] [--workload NS/NAME ...]
                      [--rootfs DIR --name N] [-n NS] [--label K=V ...] [--tag T ...]
                      [--action Audit|Block] [-o DIR] [--docker-host URL]

Writes ``DIR/policies/<namespace>-<workload>/<rule>.yaml`` (one KubeArmorPolicy each, checked by the
same admission as ``bulwark policy validate``; ``bulwark apply -f DIR/policies`` applies them all) and
``DIR/report.{txt,json,html}``; prints the text report.
Exit 0 when every target was scanned, 1 when one could not be (named on stderr), 2 for bad options.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from bulwark.recommend.build import ACTIONS, Recommendation, Target, recommend
from bulwark.recommend.files import FileTree, docker_image_tree, tree_from_dir
from bulwark.recommend.library import BIN_DIRS, LIBRARY, rules_for_tags
from bulwark.recommend.report import render_html, render_json, render_text, report_data

__all__ = ["add_recommend_parser", "run_recommend", "write_results"]

_SLUG = re.compile(r"[^a-z0-9-]+")
DOCKER_NAMESPACE = "docker"  # what identity names plain Docker containers' namespace by default
CONTAINER_NAME_LABEL = "kubearmor.io/container.name"


def add_recommend_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``recommend`` on the CLI's subparsers."""
    p = sub.add_parser("recommend", help="hardening policies for images, containers or known workloads")
    p.add_argument("--image", action="append", default=[], metavar="IMAGE", help="a local Docker image")
    p.add_argument("--container", action="append", default=[], metavar="NAME|ID", help="a Docker container")
    p.add_argument("--workload", action="append", default=[], metavar="NS/NAME",
                   help="a workload known to the stack (its image from the stored records)")
    p.add_argument("--rootfs", type=Path, help="scan this directory instead of an image (with --name)")
    p.add_argument("--name", default="", help="workload name for --image/--rootfs (default: from the image)")
    p.add_argument("-n", "--namespace", default="", help=f"policy namespace (default {DOCKER_NAMESPACE!r} for "
                   "containers, 'default' for images)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="selector labels")
    p.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="only rules with this id, category or reference (MITRE/NIST/STIG id)")
    p.add_argument("--action", default="Audit", choices=ACTIONS)
    p.add_argument("-o", "--output", type=Path, default=Path("out"), help="output directory (default ./out)")
    p.add_argument("--docker-host", default=os.environ.get("BULWARK_DOCKER_HOST") or os.environ.get("DOCKER_HOST", ""))
    p.add_argument("--rest-port", type=int, help="REST port, for --workload (env BULWARK_REST_PORT)")
    p.add_argument("--rest-host", help="REST address, for --workload (env BULWARK_REST_HOST)")
    p.add_argument("--token", default=os.environ.get("BULWARK_API_TOKEN"), help="bearer token (env BULWARK_API_TOKEN)")
    p.add_argument("--list-rules", action="store_true", help="print the library (id, categories, references) and exit")
    p.set_defaults(func=run_recommend)
    return p


def _labels(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--label {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _slug(text: str) -> str:
    return _SLUG.sub("-", text.lower()).strip("-")[:63].strip("-") or "workload"


def _image_name(ref: str) -> str:
    return _slug(ref.rsplit("/", 1)[-1].split("@")[0].split(":")[0])


def _docker(args: argparse.Namespace) -> Any:
    import docker

    return docker.DockerClient(base_url=args.docker_host) if args.docker_host else docker.from_env()


def _workload_record(args: argparse.Namespace, spec: str) -> dict[str, Any]:
    """The newest stored record of workload ``NS/NAME`` (its image and labels)."""
    import httpx

    from shared.config import load_settings

    ns, sep, name = spec.partition("/")
    if not sep or not ns or not name:
        raise ValueError(f"--workload {spec!r}: expected NAMESPACE/NAME")
    url = load_settings(rest_port=args.rest_port, rest_host=args.rest_host).rest_url
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        for path in ("/api/v1/logs", "/api/v1/alerts"):
            resp = http.get(path, params={"namespace": ns, "container": name, "limit": 1})
            resp.raise_for_status()
            if resp.json():
                return dict(resp.json()[0])
    raise LookupError(f"--workload {spec}: the stack has no record of it")


def _targets(args: argparse.Namespace, client: Any) -> list[tuple[Target, FileTree]]:
    labels = _labels(args.label)
    out: list[tuple[Target, FileTree]] = []
    for ref in args.image:
        info, tree = docker_image_tree(client, ref)
        out.append((Target(args.name or _image_name(ref), args.namespace or "default", labels, ref, "image"), tree))
    for ref in args.container:
        container = client.containers.get(ref)
        image_ref = container.attrs.get("Config", {}).get("Image") or container.image.id
        info, tree = docker_image_tree(client, container.image.id)
        selector = labels or {k: v for k, v in (container.labels or {}).items() if info.labels.get(k) != v}
        name = container.name
        out.append((Target(name, args.namespace or DOCKER_NAMESPACE, selector or {CONTAINER_NAME_LABEL: f"[{name}]"},
                           image_ref, "container"), tree))
    for spec in args.workload:
        record = _workload_record(args, spec)
        image = str(record.get("ContainerImage") or "")
        if image in ("", "local"):  # `bulwark run` workloads see the host's files: there is no image
            raise LookupError(f"--workload {spec}: it has no image of its own (scan its files with --rootfs /)")
        info, tree = docker_image_tree(client, image)
        stored = dict(kv.split("=", 1) for kv in str(record.get("Labels", "")).split(",") if "=" in kv)
        name = str(record.get("ContainerName") or spec.partition("/")[2])
        out.append((Target(name, str(record.get("NamespaceName") or args.namespace or "default"),
                           labels or stored or {CONTAINER_NAME_LABEL: f"[{name}]"}, image, "workload"), tree))
    return out


def _rootfs_target(args: argparse.Namespace) -> tuple[Target, FileTree]:
    wanted = [f"{d}/{p}" for d in BIN_DIRS for r in LIBRARY for p in (*r.programs, *r.needs)]
    wanted += [p.rstrip("/") for r in LIBRARY for p in (*r.read_paths, *r.write_paths, *r.read_dirs, *r.write_dirs)
               if not p.startswith("~")]
    tree = tree_from_dir(args.rootfs, wanted)
    name = args.name or _slug(args.rootfs.name or "host")
    return Target(name, args.namespace or "default", _labels(args.label), str(args.rootfs), "directory"), tree


def write_results(results: list[tuple[Target, list[Recommendation]]], out_dir: Path, action: str,
                  tags: list[str]) -> dict[str, Any]:
    """Validate and write each policy, then the three reports; returns the report data.

    ValueError when a generated policy fails admission (a library bug: nothing is written then)."""
    from services.policy.validate import admit
    from shared.errors import ValidationFailed

    for _target, recs in results:
        for rec in recs:
            if rec.policy is not None:
                try:
                    admit(rec.policy, rec.rule.id)
                except ValidationFailed as exc:
                    raise ValueError(f"generated policy for {rec.rule.id} is invalid: {exc}") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, recs in results:
        folder = out_dir / "policies" / f"{_slug(target.namespace)}-{_slug(target.name)}"
        folder.mkdir(parents=True, exist_ok=True)
        for rec in recs:
            if rec.policy is not None:
                path = folder / f"{rec.rule.id}.yaml"
                path.write_text(yaml.safe_dump(rec.policy, sort_keys=False))
                rec.file = str(path)
    data = report_data(results, action, tags)
    (out_dir / "report.json").write_text(render_json(data))
    (out_dir / "report.txt").write_text(render_text(data))
    (out_dir / "report.html").write_text(render_html(data))
    return data


def _list_rules() -> int:
    for r in LIBRARY:
        print(f"{r.id:26} sev {r.severity:>2}  {','.join(r.categories)}")
        print(f"{'':26} {r.title}")
        print(f"{'':26} MITRE {','.join(r.mitre) or '-'}  NIST {','.join(r.nist) or '-'}  "
              f"STIG {','.join(r.stig) or '-'}")
    return 0


def run_recommend(args: argparse.Namespace) -> int:
    """Entry point of ``bulwark recommend``."""
    if args.list_rules:
        return _list_rules()
    rules = rules_for_tags(args.tag)
    if not rules:
        print(f"bulwark recommend: --tag {','.join(args.tag)}: no rule has these tags", file=sys.stderr)
        return 2
    if not (args.image or args.container or args.workload or args.rootfs):
        print("bulwark recommend: give --image, --container, --workload or --rootfs", file=sys.stderr)
        return 2
    try:
        pairs = [_rootfs_target(args)] if args.rootfs else []
        if args.image or args.container or args.workload:
            pairs += _targets(args, _docker(args))
    except ValueError as exc:
        print(f"bulwark recommend: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # docker.errors.*, httpx errors, LookupError: say which target and why
        print(f"bulwark recommend: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    results = [(target, recommend(target, tree, rules, args.action)) for target, tree in pairs]
    data = write_results(results, args.output, args.action, args.tag)
    print(render_text(data))
    print(f"policies written to {args.output / 'policies'}, report.{{txt,json,html}} to {args.output}")
    return 0
