"""Where KubeArmor's reference tests are (``BULWARK_KUBEARMOR_CONFORMANCE``, default the shared copy)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONFORMANCE", "K8S_ENV", "HOST_POLICIES", "missing_reference"]

CONFORMANCE = Path(os.environ.get("BULWARK_KUBEARMOR_CONFORMANCE", "/work/shared/conformance/kubearmor"))
K8S_ENV = CONFORMANCE / "tests" / "tests" / "k8s_env"
HOST_POLICIES = CONFORMANCE / "policies" / "examples" / "host-security-policies"


def missing_reference() -> str:
    """Why KubeArmor's tests cannot be read ("" when they can)."""
    for path in (K8S_ENV / "scenarios", K8S_ENV / "ksp", CONFORMANCE / "tests" / "examples" / "multiubuntu" / "build"):
        if not path.is_dir():
            return f"KubeArmor's reference tests not found: {path} (set BULWARK_KUBEARMOR_CONFORMANCE)"
    return ""
