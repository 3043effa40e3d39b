"""AppArmor enforcing: per-workload profiles from compiled rules (``profiles``), loaded and removed
in the kernel (``kernel``), denials read back from audit records (``auditlog``, ``report``), and the
enforcer that ties them together (``enforcer``)."""
from __future__ import annotations

from services.enforcer.apparmor.enforcer import AppArmorEnforcer
from services.enforcer.apparmor.kernel import compile_profile
from services.enforcer.apparmor.profiles import Profile, generate_profile, profile_name

__all__ = ["AppArmorEnforcer", "Profile", "compile_profile", "generate_profile", "profile_name"]
