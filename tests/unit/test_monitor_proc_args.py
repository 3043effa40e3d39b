"""Command lines from process records (the acting process's arguments on every later event) and the
owners of exec'd programs (exec events, for ownerOnly rules)."""
from __future__ import annotations

from services.monitor.decode.records import RecordDecoder, command_args
from shared.bpf.abi import BW_ARGS_FAULT, BW_ARGS_TRUNCATED
from shared.schemas.events import RawEvent
from tests.unit.test_monitor_decoder import exec_rec
from tests.unit.test_monitor_records import CTX, proc_rec, sys_rec, with_ktime


def test_command_args_drop_argv0_and_join_the_rest_with_spaces() -> None:
    assert command_args(b"/usr/bin/cat\0/etc/host.conf\0") == "/etc/host.conf"
    assert command_args(b"curl\0-sS\0http://127.0.0.1/x.html\0") == "-sS http://127.0.0.1/x.html"
    assert command_args(b"sleep\0") == "" and command_args(b"") == ""
    assert command_args(b"echo\0\0b\0") == " b"                      # an empty argument stays one
    assert command_args(b"cat\0/very/long/na") == "/very/long/na"     # cut by the kernel: kept as it came
    assert command_args(b"x\0caf\xc3\xa9\0\xff\0") == "caf\u00e9 \ufffd"


def test_events_carry_the_arguments_of_their_process() -> None:
    dec = RecordDecoder(CTX)
    assert dec.feed(proc_rec(100, ["usr", "bin", "cat"], argv=b"cat\0/etc/host.conf\0")) is None
    e = dec.feed(sys_rec(5, 257, (-100, 0, 0, 0, 0, 0), ret=3, name="/etc/host.conf"))
    assert (e["exe"], e["proc_args"]) == ("/usr/bin/cat", "/etc/host.conf")
    assert RawEvent.from_wire(e).to_wire() == e


def test_a_record_that_could_not_read_the_command_line_gives_no_arguments() -> None:
    dec = RecordDecoder(CTX)
    dec.feed(proc_rec(100, ["usr", "bin", "cat"], argv=b"", args_flags=BW_ARGS_FAULT))
    assert dec.feed(sys_rec(5, 257, name="/a"))["proc_args"] == ""
    dec.feed(proc_rec(100, ["usr", "bin", "cat"], argv=b"cat\0" + b"a" * 252, args_flags=BW_ARGS_TRUNCATED))
    assert dec.feed(sys_rec(5, 257, name="/b"))["proc_args"] == "a" * 252


def test_an_exec_with_the_same_program_refreshes_repeated_records() -> None:
    dec = RecordDecoder(CTX)
    rec = sys_rec(5, 257, name="/etc/hosts")
    dec.feed(proc_rec(100, ["bin", "sh"], argv=b"sh\0-c\0one\0"))
    assert dec.feed(rec)["proc_args"] == "-c one"
    dec.feed(proc_rec(100, ["bin", "sh"], argv=b"sh\0-c\0two\0"))   # exec'd the same program again
    assert dec.feed(with_ktime(rec, 9_000))["proc_args"] == "-c two"
    dec.feed(proc_rec(100, ["bin", "sh"]))                            # and then with no arguments
    assert dec.feed(with_ktime(rec, 9_500))["proc_args"] == ""


def test_the_exit_record_still_has_the_arguments_then_they_are_forgotten() -> None:
    dec = RecordDecoder(CTX)
    dec.feed(proc_rec(100, ["bin", "sleep"], argv=b"sleep\x001\0"))
    assert dec.feed(sys_rec(4, -1, (0, 0, 0, 0, 0, 0)))["proc_args"] == "1"
    assert dec.procs.args(100) == ""


def test_the_exec_record_names_no_arguments_of_its_caller() -> None:
    dec = RecordDecoder(CTX)
    dec.exec_owners = False
    dec.feed(proc_rec(4242, ["usr", "bin", "dash"], argv=b"sh\0-c\0true\0"))
    assert dec.feed(exec_rec())["proc_args"] == ""


class FakeFiles:
    """Owners and real paths by (mntns, path); records what was asked."""

    def __init__(self, table: dict[tuple[int, str], int], real: dict[tuple[int, str], str] | None = None) -> None:
        self.table, self.real, self.asked = table, real or {}, []  # type: ignore[var-annotated]
        self.lookups = self.unknown = 0

    def real_path(self, mntns: int, path: str, pids: tuple[int, ...]) -> str:
        return self.real.get((mntns, path), "")

    def owner(self, mntns: int, path: str, pids: tuple[int, ...]) -> int:
        self.asked.append((mntns, path, pids))
        return self.table.get((mntns, path), -1)


def test_exec_events_carry_the_owner_of_the_program_while_owners_are_read() -> None:
    owners = FakeFiles({(4026532000, "/home/user1/hello"): 1000})
    dec = RecordDecoder(CTX, files=owners)  # type: ignore[arg-type]
    e = dec.feed(exec_rec(filename="/home/user1/hello"))
    assert e["extra"]["owner_uid"] == 1000 and owners.asked == [(4026532000, "/home/user1/hello", (4242, 4000))]
    assert "owner_uid" not in dec.feed(exec_rec(filename="/gone"))["extra"]      # unknown: not claimed
    dec.exec_owners = False                                                      # no ownerOnly rule left
    assert "owner_uid" not in dec.feed(exec_rec(filename="/home/user1/hello"))["extra"]
    assert len(owners.asked) == 2


def test_exec_events_carry_the_real_path_of_a_symlinked_program_while_real_paths_are_read() -> None:
    files = FakeFiles({}, {(4026532000, "/usr/bin/python3"): "/usr/bin/python3.6",
                           (4026532000, "/usr/bin/true"): "/usr/bin/true"})
    dec = RecordDecoder(CTX, files=files)  # type: ignore[arg-type]
    assert dec.feed(exec_rec(filename="/usr/bin/python3"))["extra"]["real_path"] == "/usr/bin/python3.6"
    assert "real_path" not in dec.feed(exec_rec(filename="/usr/bin/true"))["extra"]    # the same: not repeated
    assert "real_path" not in dec.feed(exec_rec(filename="/gone"))["extra"]            # unknown: not claimed
    dec.exec_real_paths = False                                                         # no Process path rule
    assert "real_path" not in dec.feed(exec_rec(filename="/usr/bin/python3"))["extra"]
