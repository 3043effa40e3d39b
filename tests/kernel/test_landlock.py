"""Landlock exec allow-lists applied by the sandbox's command process before it execs (EACCES inline)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bulwark.sandbox import start_sandbox
from services.enforcer.landlock import abi_version, encode, spec_for
from shared.schemas.rules import Rule
from tests.conftest import require_root
from tests.kernel.nsutil import host_run, private_copy

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]


def allow(path: str = "", dir: str = "", **kw: object) -> Rule:
    return Rule(policy="allow", policy_kind="KubeArmorPolicy", policy_namespace="d", operation="Process",
                action="Allow", path=path, dir=dir, **kw)  # type: ignore[arg-type]


def run(argv: list[str], spec: bytes) -> int:
    sandbox = start_sandbox(argv, hostname="landlock-test")
    sandbox.open_gate(spec)
    return sandbox.wait()


def test_exec_allow_list_in_the_sandbox_only(tmp_path: Path) -> None:
    require_root()
    assert abi_version() >= 1
    ok, bad = private_copy("/usr/bin/true", tmp_path, "ok"), private_copy("/usr/bin/true", tmp_path, "bad")
    out = tmp_path / "out"
    spec = spec_for([allow(ok), allow("/usr/bin/dash")], "block")
    assert spec is not None and any(p.startswith("/lib") or "ld-linux" in p for p, _ in spec["allow"])
    script = f"{ok}; echo ok=$? > {out}; {bad} 2>> {out}; echo bad=$? >> {out}"
    assert run(["/usr/bin/dash", "-c", script], encode(spec)) == 0
    text = out.read_text()
    assert "ok=0" in text and "bad=126" in text and "Permission denied" in text
    assert host_run(bad) == (0, "")                       # the host is not restricted
    assert run([bad], b"") == 0                           # a sandbox without a spec is not either


def test_directory_allow_and_refused_command(tmp_path: Path) -> None:
    require_root()
    (tmp_path / "bin").mkdir()
    inside = private_copy("/usr/bin/true", tmp_path / "bin", "t")
    outside = private_copy("/usr/bin/true", tmp_path, "t2")
    spec = encode(spec_for([allow(dir=f"{tmp_path / 'bin'}/"), allow("/usr/bin/dash")], "block"))
    assert run([inside], spec) == 0
    assert run([outside], spec) == 126                    # the command itself: EACCES before it starts


def test_what_landlock_cannot_express_is_not_applied() -> None:
    assert spec_for([allow("/usr/bin/true")], "audit") is None                      # no block posture
    assert spec_for([allow("/usr/bin/true")], "block", audited=True) is None
    assert spec_for([allow("/usr/bin/true", from_source=[{"path": "/bin/sh"}])], "block") is None
    block = Rule(policy="b", policy_kind="K", policy_namespace="d", operation="Process", action="Block",
                 path="/usr/bin/true")
    assert spec_for([block], "block") is None                                         # Block: fanotify's
