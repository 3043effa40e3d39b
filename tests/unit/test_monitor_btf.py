"""BTF tree fixing and the self-check's comparison logic (no kernel needed)."""
from __future__ import annotations

from pathlib import Path

from services.monitor.selfcheck import compare_offsets, parse_field_list
from shared.bpf.headers import fix_vmlinux_text

REPO = Path(__file__).resolve().parents[2]


def test_fix_names_pads_and_packs_one_byte_enums() -> None:
    text = "struct a {\n\tint x;\n\tlong: 64;\n\tlong: 64;\n};\nenum small {\n\tA = 0,\n};\nenum big {\n\tB = 0,\n};"
    fixed, pads, packed = fix_vmlinux_text(text, {"small": 1, "big": 4})
    assert (pads, packed) == (2, 1)
    assert "long __bw_pad1;" in fixed and "long __bw_pad2;" in fixed and "long: 64" not in fixed
    assert "enum small {\n\tA = 0,\n} __attribute__((packed));" in fixed
    assert "enum big {\n\tB = 0,\n};" in fixed


def test_field_list_is_read_from_the_c_header() -> None:
    fields, sizes = parse_field_list((REPO / "bpf/include/bw_fields.h").read_text())
    assert ("task_struct", "nsproxy") in fields and ("dentry", "d_name.name") in fields
    assert ("mount", "mnt_parent") in fields and sizes == ["upid", "path"]


class FakeBtf:
    def offsetof(self, s: str, m: str) -> int:
        return {"task_struct.nsproxy": 1840, "dentry.d_parent": 24}[f"{s}.{m}"]

    def sizeof(self, s: str) -> int:
        return 16


def test_compare_reports_every_mismatch() -> None:
    fields = [("task_struct", "nsproxy"), ("dentry", "d_parent")]
    assert compare_offsets(FakeBtf(), fields, [(1840, 1840), (24, 24)], ["upid"], [16]) == []  # type: ignore[arg-type]
    problems = compare_offsets(FakeBtf(), fields, [(1840, 1848), (24, 24)], ["upid"], [12])  # type: ignore[arg-type]
    assert problems == ["task_struct.nsproxy: BTF 1840, offsetof 1840, access 1848",
                        "sizeof(struct upid): BTF 16, compiled 12"]
