"""What a valid rule asks that Bulwark cannot (fully) do, said in the policy's status and, for allowedArgs,
in the answer to its apply (one warning per policy for write protection: hardening policies have many).

* ``allowedArgs`` (process.matchPaths): Bulwark does not match process arguments, so the rule applies to
  every run of its path, whatever the arguments: a Block refuses every run (also the allowed ones).
* File write protection (a Block on a directory or pattern, a readOnly path): fanotify and BPF-LSM
  judge opens and execs only. An open that creates a file is refused, and for directory rules the
  fanotify enforcer removes the file that open created (services.enforcer.fanotify.creates; BPF-LSM
  leaves it, empty); nothing refuses removing, renaming or linking entries, mkdir, or metadata changes
  (chmod, chown, utimes: ``touch`` of a file already there succeeds). AppArmor does.
"""
from __future__ import annotations

from typing import Any

from shared.errors import FieldError

__all__ = ["args_warnings", "write_warnings", "rule_warnings"]

_NOT_JUDGED = ("removing, renaming or linking entries, mkdir and metadata changes (chmod, chown, utimes: `touch` "
               "of a file already there) are not refused: fanotify and BPF-LSM judge opens and execs only "
               "(AppArmor refuses them)")


def _action(item: dict[str, Any], section: dict[str, Any], spec: dict[str, Any]) -> str:
    for layer in (item, section, spec):
        value = str(layer.get("action") or "").strip().lower()
        if value:
            return value
    return "block"


def _args(spec: dict[str, Any], document: str) -> list[FieldError]:
    section = spec.get("process")
    if not isinstance(section, dict):
        return []
    out = []
    for i, item in enumerate(section.get("matchPaths") or []):
        if not isinstance(item, dict) or not item.get("allowedArgs"):
            continue
        what = item.get("path") or item.get("execname") or "the program"
        effect = {"allow": "every run is allowed", "audit": "every run is reported"}.get(
            _action(item, section, spec), "every run is refused, also those with only the allowed arguments")
        out.append(FieldError(f"spec.process.matchPaths[{i}].allowedArgs",
                              f"Bulwark does not match process arguments: the rule applies to every run of {what} "
                              f"whatever its arguments ({effect})", document))
    return out


def _protected(spec: dict[str, Any]) -> list[str]:
    """The File Block rules that protect against writes: directories, patterns, readOnly paths."""
    section = spec.get("file")
    if not isinstance(section, dict):
        return []
    out = []
    for list_name in ("matchDirectories", "matchPatterns", "matchPaths"):
        for i, item in enumerate(section.get(list_name) or []):
            if isinstance(item, dict) and _action(item, section, spec) == "block" and (
                    list_name != "matchPaths" or item.get("readOnly")):
                out.append(f"{list_name}[{i}]")
    return out


def write_warnings(spec: dict[str, Any], document: str = "") -> list[FieldError]:
    """One warning for the File Block rules of ``spec`` that protect against writes (module docstring)."""
    rules = _protected(spec) if isinstance(spec, dict) else []
    if not rules:
        return []
    return [FieldError("spec.file", f"write protection ({', '.join(rules)}): opens that write or create are "
                       "refused; the file a refused create made is removed only for directory rules under the "
                       "fanotify enforcer (under patterns or BPF-LSM it stays, empty); " + _NOT_JUDGED, document)]


def args_warnings(spec: dict[str, Any], document: str = "") -> list[FieldError]:
    """One warning per process rule with ``allowedArgs`` (see the module docstring)."""
    return _args(spec, document) if isinstance(spec, dict) else []


def rule_warnings(spec: dict[str, Any], document: str = "") -> list[FieldError]:
    """Everything the rules of ``spec`` ask that Bulwark does not (fully) enforce."""
    return args_warnings(spec, document) + write_warnings(spec, document)
