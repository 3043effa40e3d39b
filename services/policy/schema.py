"""A small OpenAPI v3 (structural schema) checker: our own walker over a CRD's ``openAPIV3Schema``.

Supports what Kubernetes CRDs use: type, enum, pattern, format int32/int64, minimum/maximum,
minLength/maxLength, minItems/maxItems, required, properties, additionalProperties, items, nullable,
x-kubernetes-preserve-unknown-fields. Fields a schema does not declare are *unknown*: an API server
prunes them, so they are reported separately (not as errors). Errors carry the path as parts
(``["spec", "process", "matchPaths", 0, "path"]``) plus a machine code, so callers can render them
for users (``spec.process.matchPaths[0].path``) or compare them with other validators.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SchemaIssue", "check", "go_pattern", "MAX_ISSUES", "dotted", "slashed", "load_crd_schemas",
           "default_crd_dir", "prune"]

Part = str | int

_INT_RANGES = {"int32": (-(2 ** 31), 2 ** 31 - 1), "int64": (-(2 ** 63), 2 ** 63 - 1)}
_TYPE_NAMES = {"object": "a map", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false"}


@dataclass(frozen=True)
class SchemaIssue:
    """One schema violation: where (path parts), what rule (code) and a readable message."""

    parts: tuple[Part, ...]
    code: str
    message: str
    rule: str = ""
    value: Any = None

    @property
    def path(self) -> str:
        """The dotted path, e.g. ``spec.process.matchPaths[0].path``."""
        return dotted(self.parts)


def dotted(parts: tuple[Part, ...] | list[Part]) -> str:
    """``("spec", "a", 0, "b")`` -> ``spec.a[0].b``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def slashed(parts: tuple[Part, ...] | list[Part]) -> str:
    """``("spec", "a", 0)`` -> ``spec/a/0`` (the JSON-pointer-ish form of conformance files)."""
    return "/".join(str(p) for p in parts)


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def go_pattern(pattern: str) -> str:
    """A CRD pattern (Go RE2 syntax) in Python's: ``$`` outside a class means end of text (``\\Z``).

    Python's ``$`` also matches before a final newline, so ``^[a-z]+$`` would accept ``"abc\\n"``
    where the API server refuses it.
    """
    out, escaped, in_class = [], False, False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "$":
            out.append("\\Z")
            continue
        out.append(ch)
    return "".join(out)


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(go_pattern(pattern))


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _enum_message(allowed: list[Any], value: Any) -> str:
    """``'Kill' is not one of: Allow, Audit, Block``, with a hint when only the case is wrong."""
    if len(allowed) > 12:
        text = f"{_describe(value)} is not one of the {len(allowed)} allowed values"
    else:
        text = f"{_describe(value)} is not one of: {', '.join(str(v) for v in allowed)}"
    if isinstance(value, str):
        near = [v for v in allowed if isinstance(v, str) and v.lower() == value.lower()]
        if near:
            text += f" (values are case-sensitive: did you mean {near[0]!r}?)"
    return text


MAX_ISSUES = 100  # per document: enough to act on, and a reply stays small whatever the input


class _Walker:
    """Collects issues (the first MAX_ISSUES) and unknown-field paths while walking one value."""

    def __init__(self) -> None:
        self.issues: list[SchemaIssue] = []
        self.unknown: list[tuple[Part, ...]] = []
        self.dropped = 0

    def add(self, parts: tuple[Part, ...], code: str, message: str, rule: str = "", value: Any = None) -> None:
        if len(self.issues) >= MAX_ISSUES:
            self.dropped += 1
            return
        self.issues.append(SchemaIssue(parts, code, message, rule, value))

    def walk(self, schema: dict[str, Any], value: Any, parts: tuple[Part, ...]) -> None:
        if value is None:
            if not schema.get("nullable"):
                self.add(parts, "type", "must not be null")
            return
        kind = schema.get("type")
        if kind and not _type_ok(kind, value):
            self.add(parts, "type", f"must be {_TYPE_NAMES.get(kind, kind)}, got {_describe(value)}")
            return
        if "enum" in schema and value not in schema["enum"]:
            self.add(parts, "enum", _enum_message(schema["enum"], value), value=value)
        if isinstance(value, str):
            self._string(schema, value, parts)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            self._number(schema, value, parts)
        elif isinstance(value, list):
            self._array(schema, value, parts)
        elif isinstance(value, dict):
            self._object(schema, value, parts)

    def _string(self, schema: dict[str, Any], value: str, parts: tuple[Part, ...]) -> None:
        if "minLength" in schema and len(value) < schema["minLength"]:
            self.add(parts, "minLength", f"must be at least {schema['minLength']} characters long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            self.add(parts, "maxLength", f"must be at most {schema['maxLength']} characters long")
        pattern = schema.get("pattern")
        if pattern and _regex(pattern).search(value) is None:
            self.add(parts, "pattern", f"{_describe(value)} does not match {pattern}", pattern, value)

    def _number(self, schema: dict[str, Any], value: float, parts: tuple[Part, ...]) -> None:
        if "minimum" in schema and value < schema["minimum"]:
            self.add(parts, "minimum", f"must be at least {schema['minimum']}, got {value}")
        if "maximum" in schema and value > schema["maximum"]:
            self.add(parts, "maximum", f"must be at most {schema['maximum']}, got {value}")
        bounds = _INT_RANGES.get(schema.get("format", ""))
        if bounds and not bounds[0] <= value <= bounds[1]:
            self.add(parts, "format", f"does not fit in {schema['format']}")

    def _array(self, schema: dict[str, Any], value: list[Any], parts: tuple[Part, ...]) -> None:
        if "minItems" in schema and len(value) < schema["minItems"]:
            self.add(parts, "minItems", f"must have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            self.add(parts, "maxItems", f"must have at most {schema['maxItems']} items")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                self.walk(items, item, parts + (i,))

    def _object(self, schema: dict[str, Any], value: dict[str, Any], parts: tuple[Part, ...]) -> None:
        props: dict[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        open_ended = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or (
            not props and extra is None)
        for key, item in value.items():
            if key in props:
                self.walk(props[key], item, parts + (key,))
            elif isinstance(extra, dict):
                self.walk(extra, item, parts + (key,))
            elif extra is False:
                self.add(parts + (key,), "additionalProperties", "is not an allowed field")
            elif not open_ended:
                self.unknown.append(parts + (key,))
        for name in schema.get("required") or ():
            if name not in value:
                self.add(parts + (name,), "required", "is required")


def check(schema: dict[str, Any], value: Any,
          parts: tuple[Part, ...] = ()) -> tuple[list[SchemaIssue], list[tuple[Part, ...]]]:
    """Check ``value`` against ``schema``: (errors, paths of unknown fields the server would prune)."""
    walker = _Walker()
    walker.walk(schema, value, parts)
    if walker.dropped:
        walker.issues.append(SchemaIssue(parts, "more", f"... and {walker.dropped} more errors"))
    return walker.issues, walker.unknown


def prune(value: Any, unknown: list[tuple[Part, ...]]) -> Any:
    """A copy of ``value`` without the fields at the ``unknown`` paths (as an API server stores it)."""
    drop = {tuple(p) for p in unknown}

    def go(v: Any, parts: tuple[Part, ...]) -> Any:
        if isinstance(v, dict):
            return {k: go(x, parts + (k,)) for k, x in v.items() if parts + (k,) not in drop}
        if isinstance(v, list):
            return [go(x, parts + (i,)) for i, x in enumerate(v)]
        return v

    return go(value, ())


def default_crd_dir() -> Path:
    """Where the CRDs we ship live: ``deploy/k8s/crds`` in the source tree."""
    return Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "crds"


@lru_cache(maxsize=4)
def load_crd_schemas(crd_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """``kind -> openAPIV3Schema`` (served version v1) from every CRD file in ``crd_dir``."""
    out: dict[str, dict[str, Any]] = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in sorted((crd_dir or default_crd_dir()).glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=loader):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            kind = doc["spec"]["names"]["kind"]
            for version in doc["spec"].get("versions", []):
                if version.get("name") == "v1":
                    out[kind] = version["schema"]["openAPIV3Schema"]
    return out
