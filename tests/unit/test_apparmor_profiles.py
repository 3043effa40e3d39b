"""AppArmor profiles from compiled rules: generated KubeArmor-like and compiled (not loaded) by apparmor_parser."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared.schemas.rules import Rule
from services.enforcer.apparmor import compile_profile, generate_profile, profile_name


def r(op: str, action: str = "Block", **kw: object) -> Rule:
    return Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="d", operation=op, action=action,
                **kw)  # type: ignore[arg-type]


RULES = [
    r("Process", path="/usr/bin/sleep"),
    r("Process", "Audit", dir="/usr/sbin/", recursive=True),
    r("File", path="/etc/shadow"),
    r("File", path="/etc/hosts", read_only=True),
    r("File", path="/home/u/.ssh/id_rsa", owner_only=True),
    r("File", "Audit", dir="/var/log/"),
    r("File", pattern="/tmp/.*\\.sh"),
    r("File", path="/etc/passwd", from_source=[{"path": "/bin/cat"}]),
    *(r("Network", protocol=p) for p in ("tcp", "udp", "icmp", "icmpv6", "raw", "sctp", "stream")),
    r("Capabilities", capability="net_raw"),
    r("Capabilities", "Audit", capability="CAP_SYS_ADMIN"),
]


def test_profile_lines() -> None:
    text = generate_profile("wl/1 x", RULES)
    assert f"profile {profile_name('wl/1 x')} " in text and "bulwark-wl_1_x" in text
    for line in ("file,", "network,", "capability,", "deny /usr/bin/sleep mx,", "audit /usr/sbin/** ix,",
                 "deny /etc/shadow rwkl,", "deny /etc/hosts w,", "deny other /home/u/.ssh/id_rsa rw,",
                 "audit /var/log/* rwkl,", "deny network inet udp,", "deny network raw,",
                 "deny capability net_raw,", "audit capability sys_admin,"):
        assert f"  {line}\n" in text, line
    assert "rules not expressible: 2" in text  # the pattern and the fromSource rule


def test_allow_list_with_block_posture_drops_the_catch_all() -> None:
    text = generate_profile("w", [r("Process", "Allow", path="/usr/bin/cat")], file_posture="block")
    assert "  file,\n" not in text and "  /usr/bin/cat ix,\n" in text and "  network,\n" in text


@pytest.mark.skipif(shutil.which("apparmor_parser") is None, reason="apparmor_parser not installed")
def test_profiles_compile(tmp_path: Path) -> None:
    for i, (rules, posture) in enumerate(((RULES, "audit"), ([r("Process", "Allow", path="/usr/bin/cat")], "block"))):
        d = tmp_path / str(i)
        d.mkdir()
        out = compile_profile(generate_profile(f"w{i}", rules, file_posture=posture), d)
        assert out.stat().st_size > 0
