"""ArcSight CEF encoding of alerts and logs for SIEMs (pure: record map in, one text line out).

``CEF:0|Bulwark|Bulwark|<version>|<Type>:<Operation>|<name>|<severity>|<extensions>``; the name is the
policy (alerts) or the operation (logs); severity is the policy's 1-10 (0 for logs). Extensions use
CEF's standard keys where one fits (``rt``, ``dvchost``, ``act``, ``outcome``, ``cat``, ``msg``,
``sproc``, ``spid``, ``suid``, ``filePath``, ``externalId``) and labelled custom strings for the
Kubernetes fields (``cs1`` namespace, ``cs2`` pod, ``cs3`` container, ``cs4`` policy, ``cs5`` labels,
``cs6`` tags).
"""
from __future__ import annotations

from typing import Any

__all__ = ["to_cef", "VENDOR", "PRODUCT", "VERSION"]

VENDOR, PRODUCT, VERSION = "Bulwark", "Bulwark", "0.1.0"

_CUSTOM = (("cs1", "namespace", "NamespaceName"), ("cs2", "pod", "PodName"), ("cs3", "container", "ContainerName"),
           ("cs4", "policy", "PolicyName"), ("cs5", "labels", "Labels"), ("cs6", "tags", "Tags"))
_STANDARD = (("dvchost", "HostName"), ("act", "Action"), ("outcome", "Result"), ("cat", "Operation"),
             ("msg", "Message"), ("sproc", "ProcessName"), ("spid", "HostPID"), ("suid", "UID"),
             ("filePath", "Resource"), ("cs7", "Source"), ("externalId", "EventID"), ("cn1", "MaxAlertsPerSec"),
             ("cn2", "DroppingAlertsInterval"))


def _header(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _ext(value: Any) -> str:
    return (str(value).replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n"))


def _severity(record: dict[str, Any]) -> int:
    try:
        return max(0, min(10, int(record.get("Severity") or 0)))
    except ValueError:
        return 0


def to_cef(record: dict[str, Any]) -> str:
    """One CEF line for an alert or a log."""
    rtype, operation = str(record.get("Type", "")), str(record.get("Operation", ""))
    name = record.get("PolicyName") or record.get("Message") or operation or rtype
    head = ["CEF:0", VENDOR, PRODUCT, VERSION, f"{rtype}:{operation}", name, _severity(record)]
    ext = [f"rt={int(record.get('Timestamp', 0)) * 1000}"]
    for key, fld in _STANDARD:
        value = record.get(fld)
        if value not in (None, ""):
            ext.append(f"{key}={_ext(value)}")
            if key == "cs7":
                ext.append("cs7Label=source")
    for key, label, fld in _CUSTOM:
        value = record.get(fld)
        if value not in (None, ""):
            ext.append(f"{key}Label={label} {key}={_ext(value)}")
    return "|".join(_header(h) for h in head) + "|" + " ".join(ext)
