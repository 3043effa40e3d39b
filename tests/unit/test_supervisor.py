"""The supervisor's restart policy, with real child processes (``sleep``)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bulwark.supervisor import Child, Supervisor, backoff
from shared.config import load_settings


def test_backoff_doubles_up_to_thirty_seconds() -> None:
    assert [backoff(i) for i in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


@pytest.fixture
def sup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BULWARK_DATA_DIR", str(tmp_path))
    s = Supervisor(load_settings())
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn(name: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "60"])
        spawned.append(proc)
        return proc

    s._spawn = spawn  # type: ignore[method-assign]
    try:
        yield s, spawned
    finally:
        for proc in spawned:
            proc.kill()
            proc.wait()


def test_every_child_nats_included_is_restarted_after_its_backoff(sup, capsys) -> None:
    s, spawned = sup
    for name in ("nats", "fdholder", "feeder"):
        s.children[name] = Child(name, s._spawn(name), started=0.0)
    spawned[0].kill()
    spawned[0].wait()
    s.check(now=1.0)  # noted, restart due in 0.5 s
    assert s.children["nats"].due == 1.5 and s.children["nats"].proc is spawned[0]
    s.check(now=1.4)
    assert s.children["nats"].proc is spawned[0]
    s.check(now=1.6)
    assert s.children["nats"].proc is spawned[3] and s.children["nats"].restarts == 1
    assert s.nats is spawned[3]
    err = capsys.readouterr().err
    assert "nats exited with -9" in err and "restarting in 0.5s" in err and "nats restarted" in err


def test_a_child_that_ran_long_starts_its_backoff_over(sup) -> None:
    s, spawned = sup
    s.children["policy"] = Child("policy", s._spawn("policy"), restarts=5, started=0.0)
    spawned[0].kill()
    spawned[0].wait()
    s.check(now=61.0)
    assert s.children["policy"].due == 61.5


def test_the_holder_socket_fits_a_unix_socket_path(tmp_path: Path) -> None:
    from bulwark.supervisor import holder_socket

    assert holder_socket(tmp_path) == tmp_path / "run" / "fanotify.sock"
    long_dir = tmp_path / ("x" * 120)
    path = holder_socket(long_dir)
    assert len(str(path)) < 100 and path == holder_socket(long_dir) and path != holder_socket(tmp_path / "y")
