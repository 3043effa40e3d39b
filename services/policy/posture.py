"""Default postures and the audited flag of a workload, from settings and annotations.

KubeArmor's rules: a global default per kind (file, network, capabilities; ``audit`` unless
configured), overridden per namespace by the annotations ``kubearmor-file-posture``,
``kubearmor-network-posture`` and ``kubearmor-capabilities-posture`` (``audit`` or ``block``; any
other value is ignored, i.e. the global default applies). A workload annotated
``kubearmor-policy: audited`` only reports what Block rules and a block posture would stop;
``kubearmor-policy: disabled`` turns policy enforcement off for that workload.
"""
from __future__ import annotations

from typing import Any

from shared.matcher import DEFAULT_POSTURE, POSTURE_VALUES, Posture
from shared.schemas.identity import Workload

__all__ = ["ANNOTATIONS", "POLICY_ANNOTATION", "parse_posture_spec", "posture_from_settings", "workload_posture",
           "policy_mode"]

ANNOTATIONS = {"file": "kubearmor-file-posture", "network": "kubearmor-network-posture",
               "capabilities": "kubearmor-capabilities-posture"}
POLICY_ANNOTATION = "kubearmor-policy"


def _value(raw: Any) -> str | None:
    value = str(raw or "").strip().lower()
    return value if value in POSTURE_VALUES else None


def parse_posture_spec(spec: str, base: Posture = DEFAULT_POSTURE) -> Posture:
    """``file=block,network=audit`` on top of ``base``; ValueError naming the bad part otherwise."""
    values = {"file": base.file, "network": base.network, "capabilities": base.capabilities}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, sep, raw = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in values:
            raise ValueError(f"{part!r}: expected file=, network= or capabilities= followed by audit or block")
        value = _value(raw)
        if value is None:
            raise ValueError(f"{part!r}: the posture must be audit or block")
        values[key] = value
    return Posture(values["file"], values["network"], values["capabilities"])


def posture_from_settings(settings: Any) -> Posture:
    """The global default posture of ``settings`` (invalid values fall back to audit)."""
    return Posture(_value(getattr(settings, "default_file_posture", "")) or "audit",
                   _value(getattr(settings, "default_network_posture", "")) or "audit",
                   _value(getattr(settings, "default_capabilities_posture", "")) or "audit")


def policy_mode(wl: Workload) -> str:
    """``enabled``, ``audited`` or ``disabled`` from the workload's ``kubearmor-policy`` annotation."""
    value = str((wl.annotations or {}).get(POLICY_ANNOTATION, "")).strip().lower()
    return value if value in ("audited", "disabled") else "enabled"


def workload_posture(wl: Workload, default: Posture = DEFAULT_POSTURE) -> Posture:
    """The posture that applies to ``wl``: namespace annotations over the global default."""
    notes = wl.namespace_annotations or {}
    return Posture(_value(notes.get(ANNOTATIONS["file"])) or default.file,
                   _value(notes.get(ANNOTATIONS["network"])) or default.network,
                   _value(notes.get(ANNOTATIONS["capabilities"])) or default.capabilities,
                   audited=policy_mode(wl) == "audited")
