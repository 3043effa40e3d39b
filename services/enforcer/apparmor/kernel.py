"""The kernel's AppArmor: is it active, which profiles are loaded, load/replace and remove them.

Profiles are loaded (or replaced in place: confined tasks move to the new version at once) with
``apparmor_parser -r`` reading the text on stdin, and removed by writing the profile's name to
securityfs' ``.remove`` (``apparmor_parser -R`` would need the text again).
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["SECURITYFS", "inactive_reason", "loaded_profiles", "load_profile", "remove_profile",
           "compile_profile", "ProfileError", "PARSER_TIMEOUT"]

SECURITYFS = Path("/sys/kernel/security")
PARSER_TIMEOUT = 120.0  # seconds; apparmor_parser under software emulation takes a few
_MAX_PROFILES_FILE = 16 << 20


class ProfileError(RuntimeError):
    """apparmor_parser refused a profile (its message says why)."""


def inactive_reason(securityfs: Path = SECURITYFS) -> str:
    """Why AppArmor cannot be used here ("" when it can: active, securityfs mounted, parser found)."""
    enabled = Path("/sys/module/apparmor/parameters/enabled")
    try:
        if enabled.read_text().strip() != "Y":
            return "AppArmor is built into this kernel but disabled (apparmor=0 or another major LSM)"
    except OSError:
        return "this kernel has no AppArmor (/sys/module/apparmor absent)"
    lsm = securityfs / "lsm"
    if not (securityfs / "apparmor").is_dir():
        return f"securityfs is not mounted at {securityfs} (mount -t securityfs securityfs {securityfs})"
    try:
        if "apparmor" not in lsm.read_text().split(","):
            return f"AppArmor is not among the active LSMs ({lsm.read_text().strip()})"
    except OSError:
        pass  # kernels before 4.20 have no lsm file; the apparmor directory says enough
    if shutil.which("apparmor_parser") is None:
        return "apparmor_parser is not installed (Debian package apparmor)"
    if not os.access(securityfs / "apparmor" / ".replace", os.W_OK):
        return "no write access to AppArmor's .replace (needs root with CAP_MAC_ADMIN)"
    return ""


def loaded_profiles(prefix: str = "", securityfs: Path = SECURITYFS) -> dict[str, str]:
    """Loaded profile name -> mode (``enforce``, ``complain``...), only names starting with ``prefix``."""
    out: dict[str, str] = {}
    with open(securityfs / "apparmor" / "profiles", encoding="utf-8", errors="replace") as f:
        text = f.read(_MAX_PROFILES_FILE)
    for line in text.splitlines():
        name, _, mode = line.rpartition(" (")
        if name.startswith(prefix):
            out[name] = mode.rstrip(")")
    return out


def _parser(args: list[str], text: str) -> None:
    try:
        res = subprocess.run(["apparmor_parser", *args], input=text, capture_output=True, text=True,
                             timeout=PARSER_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise ProfileError(f"apparmor_parser {' '.join(args)} took more than {PARSER_TIMEOUT}s") from exc
    if res.returncode != 0:
        lines = [ln for ln in res.stderr.splitlines() if "Cache read/write disabled" not in ln]
        raise ProfileError(f"apparmor_parser {' '.join(args)}: exit {res.returncode}: {' '.join(lines)[:500]}")


def load_profile(text: str) -> None:
    """Load the profile, or replace the loaded one of the same name (ProfileError when refused)."""
    _parser(["-r", "-K", "-q"], text)


def compile_profile(text: str, out: Path) -> Path:
    """Compile (never load) a profile into a binary policy at ``out``; ProfileError when invalid."""
    _parser(["-Q", "-K", "-o", str(out)], text)
    return out


def remove_profile(name: str, securityfs: Path = SECURITYFS) -> bool:
    """Unload profile ``name``; False when it was not loaded. Tasks it confined become unconfined."""
    if "\n" in name or "\0" in name:
        raise ValueError(f"bad profile name {name!r}")
    try:
        fd = os.open(securityfs / "apparmor" / ".remove", os.O_WRONLY)
    except OSError as exc:
        raise ProfileError(f"cannot open AppArmor's .remove: {exc}") from exc
    try:
        os.write(fd, name.encode())
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise ProfileError(f"removing profile {name}: {exc}") from exc
    finally:
        os.close(fd)
    return True
