"""Policy text -> documents: YAML (one or several documents) or JSON, as kubectl would read it.

YAML timestamps stay strings (kubectl converts YAML to JSON first), nulls in maps are dropped (an
API server never stores them), empty documents are skipped, and a ``kind: List`` is expanded.
"""
from __future__ import annotations

import json
from typing import Any

import yaml

from shared.errors import FieldError, ValidationFailed

__all__ = ["parse_documents", "drop_nulls", "document_label"]

_BASE_LOADER: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BASE_LOADER):  # type: ignore[misc, valid-type]
    """A safe loader that leaves timestamps as strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _BASE_LOADER.yaml_implicit_resolvers.items()
}


def document_label(index: int, source: str = "") -> str:
    """How errors name the ``index``-th (0-based) document: ``document 2`` or ``file.yaml#2``."""
    return f"{source}#{index + 1}" if source else f"document {index + 1}"


def drop_nulls(value: Any) -> Any:
    """``value`` with every null map entry removed, recursively (lists keep their length)."""
    if isinstance(value, dict):
        return {str(k): drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def _load_all(text: str, source: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            label = document_label(0, source)
            raise ValidationFailed([FieldError("", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                                               label)]) from exc
        return obj if isinstance(obj, list) else [obj]
    docs: list[Any] = []
    loader = _Loader(text)
    try:
        while loader.check_data():
            docs.append(loader.get_data())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationFailed([FieldError("", f"invalid YAML{where}: {problem}",
                                           document_label(len(docs), source))]) from exc
    finally:
        loader.dispose()
    return docs


def parse_documents(text: str, source: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every non-empty document in ``text`` as ``(label, body)``; ValidationFailed on bad syntax.

    A document that is not a map is an error naming that document.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    errors: list[FieldError] = []
    for i, raw in enumerate(_load_all(text, source)):
        if raw is None:
            continue
        label = document_label(i, source)
        if not isinstance(raw, dict):
            errors.append(FieldError("", f"a document must be a map, got {type(raw).__name__}", label))
            continue
        body = drop_nulls(raw)
        if body.get("kind") == "List" and isinstance(body.get("items"), list):
            for j, item in enumerate(body["items"]):
                if isinstance(item, dict):
                    out.append((f"{label} item {j + 1}", item))
                else:
                    errors.append(FieldError(f"items[{j}]", "a list item must be a map", label))
            continue
        out.append((label, body))
    if errors:
        raise ValidationFailed(errors)
    return out
