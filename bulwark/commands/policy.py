"""``bulwark policy validate``: check policy files offline, one line per document (plus its warnings).

Files are read by the same bounded reader, parser and admission as the policy service's (size, depth,
alias and duplicate-key checks included), so a file this command calls OK is one the service admits.
"""
from __future__ import annotations

from pathlib import Path

from services.policy.parser import input_error, parse_documents
from services.policy.validate import check_document
from shared.bounded import InputError, read_text_file
from shared.errors import ValidationFailed

__all__ = ["validate_paths", "policy_files"]

POLICY_SUFFIXES = (".yaml", ".yml", ".json")


def policy_files(target: str) -> list[Path]:
    """The policy files a path names: the file itself, or every YAML/JSON file below a directory."""
    path = Path(target)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in POLICY_SUFFIXES and p.is_file())
    if not path.exists():
        raise FileNotFoundError(f"{target}: no such file or directory")
    return [path]


def _validate_file(path: Path) -> tuple[list[str], bool]:
    try:
        try:
            text = read_text_file(path)
        except InputError as exc:
            raise input_error(exc, str(path)) from exc
        docs = parse_documents(text, source=str(path))
    except ValidationFailed as exc:
        return [f"INVALID {e.document or path}: {e.path or '(document)'}: {e.message}" for e in exc.errors], False
    lines, ok = [], True
    for label, doc in docs:
        errors, warnings = check_document(doc, label)
        if errors:
            ok = False
            lines += [f"INVALID {label}: {e.path or '(document)'}: {e.message}" for e in errors]
            continue
        meta = doc.get("metadata") or {}
        ns = meta.get("namespace") or ("default" if doc.get("kind") == "KubeArmorPolicy" else "")
        lines.append(f"OK {doc.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}")
        lines += [f"WARNING {label}: {w.path or '(document)'}: {w.message}" for w in warnings]
    return lines, ok


def validate_paths(targets: list[str]) -> tuple[list[str], bool]:
    """Validate every document under ``targets``; (report lines, all valid)."""
    out, all_ok = [], True
    for target in targets:
        try:
            files = policy_files(target)
        except FileNotFoundError as exc:
            out.append(f"INVALID {exc}")
            all_ok = False
            continue
        for path in files:
            lines, ok = _validate_file(path)
            out += lines
            all_ok &= ok
    return out, all_ok
