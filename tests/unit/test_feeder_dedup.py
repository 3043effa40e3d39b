"""EnforcementDedup: the monitor's record and the enforcer's report of one refused act are one alert."""
from __future__ import annotations

from services.feeder.dedup import EnforcementDedup, enforced

S = 1_000_000_000


def _seen(d: EnforcementDedup, *, tid: int = 7, op: str = "File", ts: int = 10 * S, res: str = "/etc/shadow",
          enforcer: bool = False, node: str = "n1") -> bool:
    return d.duplicate(node=node, tid=tid, operation=op, ts_ns=ts, resource=res, from_enforcer=enforcer)


def test_the_other_sources_account_of_one_act_is_a_duplicate_either_way_round() -> None:
    d = EnforcementDedup()
    assert not _seen(d) and _seen(d, enforcer=True)
    assert not _seen(d, tid=8, enforcer=True) and _seen(d, tid=8)


def test_two_acts_are_two_alerts() -> None:
    d = EnforcementDedup()
    assert not _seen(d) and not _seen(d)                                  # two refusals the monitor saw
    assert _seen(d, enforcer=True) and _seen(d, enforcer=True)            # each has its report
    assert not _seen(d, enforcer=True)                                    # a third report: a third act
    assert not _seen(d, tid=9, res="/etc/a") and not _seen(d, tid=9, res="/etc/b", enforcer=True)
    assert not _seen(d, tid=10) and not _seen(d, tid=10, ts=13 * S, enforcer=True)     # too far apart
    assert not _seen(d, tid=11) and not _seen(d, tid=11, op="Process", enforcer=True)
    assert not _seen(d, tid=12) and not _seen(d, tid=12, node="n2", enforcer=True)


def test_paths_agree_by_their_last_part_and_sockets_by_operation() -> None:
    d = EnforcementDedup()
    assert not _seen(d, op="Process", res="/bin/dash") and _seen(d, op="Process", res="/usr/bin/dash", enforcer=True)
    assert not _seen(d, op="Network", res="domain=AF_INET type=SOCK_RAW protocol=1")
    assert _seen(d, op="Network", res="raw", enforcer=True)


def test_memory_is_bounded() -> None:
    d = EnforcementDedup(max_keys=4)
    for tid in range(10):
        assert not _seen(d, tid=tid)
    assert not _seen(d, tid=0, enforcer=True)                             # forgotten: let through
    assert _seen(d, tid=9, enforcer=True)


def test_only_blocks_that_took_effect_are_enforcement() -> None:
    assert enforced({"Action": "Block", "Result": "Permission denied"})
    assert enforced({"Action": "Block", "Result": "Killed (SIGKILL)"})
    assert not enforced({"Action": "Block", "Result": "Passed"})
    assert not enforced({"Action": "Audit", "Result": "Permission denied"})
