"""Policy text -> documents: YAML (one or several documents) or JSON, as kubectl would read it.

The text is read by :mod:`shared.bounded` (size, depth, alias and expanded-size limits; duplicate
keys are errors; only JSON-like values), so the REST API, the NATS policy API and ``bulwark policy
validate`` read it the same way. YAML timestamps stay strings (kubectl converts YAML to JSON first),
nulls in maps are dropped (an API server never stores them), empty documents are skipped, and a
``kind: List`` is expanded.
"""
from __future__ import annotations

from typing import Any

from services.policy.schema import dotted
from shared.bounded import DEFAULT_LIMITS, InputError, Limits, load_documents
from shared.errors import FieldError, ValidationFailed

__all__ = ["parse_documents", "drop_nulls", "document_label", "input_error"]


def document_label(index: int, source: str = "") -> str:
    """How errors name the ``index``-th (0-based) document: ``document 2`` or ``file.yaml#2``."""
    return f"{source}#{index + 1}" if source else f"document {index + 1}"


def drop_nulls(value: Any) -> Any:
    """``value`` with every null map entry removed, recursively (lists keep their length).

    Only for values already bounded in depth and size (what :mod:`shared.bounded` returns).
    """
    if isinstance(value, dict):
        return {str(k): drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def input_error(exc: InputError, source: str = "") -> ValidationFailed:
    """The ValidationFailed naming the document and field path of a reader's InputError."""
    message = exc.message if exc.line is None or "line" in exc.message else f"{exc.message} (line {exc.line})"
    return ValidationFailed([FieldError(dotted(exc.path), message, document_label(exc.document, source))])


def parse_documents(text: str, source: str = "",
                    limits: Limits = DEFAULT_LIMITS) -> list[tuple[str, dict[str, Any]]]:
    """Every non-empty document in ``text`` as ``(label, body)``; ValidationFailed on bad syntax or size.

    A document that is not a map is an error naming that document.
    """
    try:
        raw_docs = load_documents(text, limits)
    except InputError as exc:
        raise input_error(exc, source) from exc
    out: list[tuple[str, dict[str, Any]]] = []
    errors: list[FieldError] = []
    for i, raw in enumerate(raw_docs):
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
    if len(out) > limits.max_documents:
        errors.append(FieldError("", f"too many documents (more than {limits.max_documents})"))
    if errors:
        raise ValidationFailed(errors[:_MAX_ERRORS] + _more(len(errors)))
    return out


_MAX_ERRORS = 100


def _more(count: int) -> list[FieldError]:
    return [FieldError("", f"... and {count - _MAX_ERRORS} more errors")] if count > _MAX_ERRORS else []
