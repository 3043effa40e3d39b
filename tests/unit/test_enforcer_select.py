"""Choosing an enforcer from ``enforcer_order``, and waiting until applied rules cover a workload."""
from __future__ import annotations

import asyncio

from services.enforcer.applied import AppliedRules
from services.enforcer.audit import AuditOnlyEnforcer
from services.enforcer.base import Enforcer
from services.enforcer.select import choose, parse_order, probe_all
from shared.schemas.rules import RuleSet, WorkloadRules


class Stub:
    """An enforcer whose probe answers what the test says."""

    closed: list[str] = []

    def __init__(self, name: str, supported: bool | None) -> None:
        self.name = name
        self.supported = supported

    def probe(self) -> tuple[bool, str]:
        if self.supported is None:
            raise RuntimeError("probe exploded")
        return self.supported, f"{self.name} says {self.supported}"

    def apply(self, ruleset: RuleSet) -> None:
        pass

    def close(self) -> None:
        Stub.closed.append(self.name)

    def stats(self) -> dict[str, int]:
        return {}


def registry(**support: bool | None) -> dict:
    return {k: (lambda k=k, v=v: Stub(k.upper(), v)) for k, v in support.items()}


def test_parse_order() -> None:
    assert parse_order(" bpflsm, Fanotify,,audit ") == ["bpflsm", "fanotify", "audit"]


def test_first_supported_wins_and_skipped_ones_are_closed(caplog) -> None:
    Stub.closed = []
    chosen = choose("bpflsm,fanotify,audit", registry(bpflsm=False, fanotify=True, audit=True))
    assert chosen.name == "FANOTIFY"
    assert Stub.closed == ["BPFLSM"]
    assert any(getattr(r, "reason", "") == "BPFLSM says False" for r in caplog.records)


def test_unknown_and_exploding_probes_are_skipped() -> None:
    chosen = choose("nope,bpflsm,audit", registry(bpflsm=None, audit=True))
    assert chosen.name == "AUDIT"


def test_nothing_supported_falls_back_to_audit_only() -> None:
    assert isinstance(choose("bpflsm", registry(bpflsm=False)), AuditOnlyEnforcer)
    assert isinstance(choose("", registry()), AuditOnlyEnforcer)


def test_probe_all_lists_every_enforcer() -> None:
    assert probe_all(registry(bpflsm=False, fanotify=True, audit=None)) == [
        ("BPFLSM", False, "BPFLSM says False"), ("FANOTIFY", True, "FANOTIFY says True"),
        ("AUDIT", False, "probe raised RuntimeError('probe exploded')")]


def test_audit_only_is_an_enforcer() -> None:
    audit = AuditOnlyEnforcer()
    assert isinstance(audit, Enforcer)
    assert audit.probe()[0] is True
    audit.apply(RuleSet(node="n", version=3, policy_seq=0, identity_seq=0))
    audit.close()
    assert audit.stats()["denied"] == 0


def _rs(version: int, *workloads: str) -> RuleSet:
    return RuleSet(node="n", version=version, policy_seq=0, identity_seq=0,
                   workloads={w: WorkloadRules(w, 1, 1) for w in workloads})


async def test_many_waiters_wake_when_a_rule_set_covers_them() -> None:
    applied = AppliedRules()
    assert applied.version == 0
    waiters = [asyncio.create_task(applied.wait_covering("b", 5)) for _ in range(50)]
    other = asyncio.create_task(applied.wait_covering("zzz", 0.3))
    await applied.set(_rs(1, "a"))
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)
    await applied.set(_rs(2, "a", "b"))
    results = await asyncio.gather(*waiters)
    assert {r.version for r in results} == {2}
    assert await other is None


async def test_already_covered_answers_at_once_and_timeouts_are_clamped() -> None:
    applied = AppliedRules()
    await applied.set(_rs(7, "a"))
    assert (await applied.wait_covering("a", 0)).version == 7
    assert await applied.wait_covering("b", -1) is None
