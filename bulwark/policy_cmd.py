"""``bulwark policy validate``: check policy files offline, one line per document (plus its warnings)."""
from __future__ import annotations

from pathlib import Path

from shared.errors import ValidationFailed
from services.policy.parser import parse_documents
from services.policy.validate import check_document

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
        docs = parse_documents(path.read_text(errors="replace"), source=str(path))
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
