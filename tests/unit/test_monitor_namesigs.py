"""The open prefilter's names (services.monitor.namesigs): last names of trie entries, symlink
targets resolved in the entry's namespace, and the signature bitset the kernel reads."""
from __future__ import annotations

import os
from pathlib import Path

from services.monitor.loader import kernel_cflags
from services.monitor.namesigs import SIG_BITS, SIG_BYTES, entry_name, entry_names, name_signature, signature_bits
from shared.bpf.btf import Btf, BtfError


def test_entry_name_is_the_last_component() -> None:
    assert entry_name(b"/etc/shadow\0") == b"shadow"
    assert entry_name(b"/etc/ssh/") == b"ssh"
    assert entry_name(b"/etc/ssh\0") == b"ssh"
    assert entry_name(b"/") == b"/"                  # the root dentry's own name


def test_signature_depends_on_length_and_first_eight_bytes_only() -> None:
    assert 0 <= name_signature(b"shadow") < 1 << SIG_BITS
    assert name_signature(b"abcdefgh-one") != name_signature(b"abcdefgh")   # length differs
    assert name_signature(b"abcdefgh-one") == name_signature(b"abcdefgh-two")  # same kernel words
    assert name_signature(b"ab") != name_signature(b"ba")


def test_signature_bits_set_one_bit_per_name() -> None:
    bits = signature_bits([b"shadow", b"ssh"])
    assert len(bits) == SIG_BYTES
    for name in (b"shadow", b"ssh"):
        sig = name_signature(name)
        assert bits[sig >> 3] & (1 << (sig & 7))
    assert sum(bin(b).count("1") for b in bits) == 2


def test_entry_names_add_symlink_targets_in_the_namespace(tmp_path: Path) -> None:
    (tmp_path / "target.conf").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link.conf").symlink_to(tmp_path / "target.conf")
    (tmp_path / "linkdir").symlink_to("real")
    own = os.stat("/proc/self/ns/mnt").st_ino
    entries = [(own, f"{tmp_path}/link.conf\0".encode()), (own, f"{tmp_path}/linkdir/".encode()),
               (own, f"{tmp_path}/absent\0".encode()), (12345, b"/no/such/namespace\0")]
    assert entry_names(entries) == {b"link.conf", b"target.conf", b"linkdir", b"real", b"absent", b"namespace"}
    assert entry_names(entries, resolve=False) == {b"link.conf", b"linkdir", b"absent", b"namespace"}


class _OldKernelBtf:
    """A dentry without d_shortname (kernels before 6.14 call it d_iname)."""

    def offsetof(self, struct_name: str, path: str) -> int:
        raise BtfError(f"struct {struct_name} has no member {path}")

    def sizeof(self, struct_name: str) -> int:
        raise BtfError(f"no struct {struct_name} in BTF")


def test_prefilter_is_built_only_where_the_dentry_has_d_shortname() -> None:
    assert kernel_cflags(_OldKernelBtf()) == []  # type: ignore[arg-type]
    if Path("/sys/kernel/btf/vmlinux").exists():
        btf = Btf.load()
        try:
            btf.offsetof("dentry", "d_shortname")
        except BtfError:
            return
        names = [f for f in kernel_cflags(btf) if "_NAME" in f]
        assert names == ["-DBW_NAMES_PREFILTER=1", f"-DBW_NAME_INLINE={btf.sizeof('shortname_store')}"]
