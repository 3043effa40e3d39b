"""The recommendation report: the same content as JSON, plain text and a self-contained HTML page."""
from __future__ import annotations

import html
import json
from typing import Any

from bulwark.recommend.build import Recommendation, Target

__all__ = ["report_data", "render_text", "render_json", "render_html"]

Results = list[tuple[Target, list[Recommendation]]]


def report_data(results: Results, action: str, tags: list[str]) -> dict[str, Any]:
    """The report as plain data: per workload, the rules that apply (with their policy file) and the others."""
    workloads = []
    for target, recs in results:
        workloads.append({
            "workload": target.name, "namespace": target.namespace, "image": target.image, "source": target.source,
            "selector": dict(sorted(target.selector.items())),
            "policies": [{"rule": r.rule.id, "title": r.rule.title, "description": r.rule.description,
                          "severity": r.rule.severity, "action": action, "file": r.file,
                          "policy": (r.policy or {}).get("metadata", {}).get("name", ""),
                          "evidence": r.evidence, "references": r.rule.references(),
                          "categories": list(r.rule.categories)} for r in recs if r.applies],
            "not_applicable": [r.rule.id for r in recs if not r.applies],
        })
    return {"action": action, "tags": tags, "workloads": workloads}


def render_json(data: dict[str, Any]) -> str:
    """The report as indented JSON."""
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def _refs(refs: dict[str, list[str]]) -> str:
    return "; ".join((f"{k.upper()} " if k != "cis" else "") + ", ".join(v) for k, v in refs.items() if v)


def render_text(data: dict[str, Any]) -> str:
    """The report as plain text, one block per workload."""
    lines = [f"Bulwark hardening recommendations (action {data['action']}"
             + (f", tags {', '.join(data['tags'])}" if data["tags"] else "") + ")", ""]
    for wl in data["workloads"]:
        sel = ", ".join(f"{k}={v}" for k, v in wl["selector"].items()) or "(whole namespace)"
        lines += [f"WORKLOAD {wl['namespace']}/{wl['workload']}  image {wl['image']}  selector {sel}"]
        for p in wl["policies"]:
            lines.append(f"  [{p['severity']:>2}] {p['rule']}: {p['title']}")
            lines.append(f"       policy {p['policy']} -> {p['file']}")
            if p["evidence"]:
                more = len(p["evidence"]) - 6
                shown = ", ".join(p["evidence"][:6]) + (f" (+{more})" if more > 0 else "")
                lines.append(f"       found: {shown}")
            lines.append(f"       refs: {_refs(p['references'])}")
        if wl["not_applicable"]:
            lines.append(f"  not applicable (nothing they guard in the image): {', '.join(wl['not_applicable'])}")
        lines.append("")
    return "\n".join(lines)


def render_html(data: dict[str, Any]) -> str:
    """The report as one HTML page without scripts or external resources."""
    e = html.escape
    out = ["<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Bulwark recommendations</title>",
           "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;width:100%}"
           "td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}"
           "th{background:#eee}code{font-size:90%}</style></head><body>",
           f"<h1>Bulwark hardening recommendations</h1><p>Action: <b>{e(data['action'])}</b>"
           + (f"; tags: {e(', '.join(data['tags']))}" if data["tags"] else "") + "</p>"]
    for wl in data["workloads"]:
        sel = ", ".join(f"{k}={v}" for k, v in wl["selector"].items()) or "(whole namespace)"
        out.append(f"<h2>{e(wl['namespace'])}/{e(wl['workload'])}</h2><p>Image <code>{e(wl['image'])}</code>, "
                   f"selector <code>{e(sel)}</code></p>")
        out.append("<table><tr><th>Severity</th><th>Rule</th><th>Why</th><th>Found in the image</th>"
                   "<th>References</th><th>Policy file</th></tr>")
        for p in wl["policies"]:
            refs = "<br>".join(f"{e(k.upper())}: {e(', '.join(v))}" for k, v in p["references"].items() if v)
            out.append(f"<tr><td>{p['severity']}</td><td><b>{e(p['rule'])}</b><br>{e(p['title'])}</td>"
                       f"<td>{e(p['description'])}</td><td>{'<br>'.join(e(x) for x in p['evidence'][:20])}</td>"
                       f"<td>{refs}</td><td><code>{e(p['file'])}</code></td></tr>")
        out.append("</table>")
        if wl["not_applicable"]:
            out.append(f"<p>Not applicable: {e(', '.join(wl['not_applicable']))}</p>")
    out.append("</body></html>\n")
    return "\n".join(out)
