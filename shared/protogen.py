"""Generate the Python gRPC stubs (LogService, PolicyService): ``python -m shared.protogen``.

Writes ``<name>_pb2.py``, ``<name>_pb2.pyi`` and ``<name>_pb2_grpc.py`` for each shared/proto/*.proto into
``shared/proto_gen/`` (gitignored) and rewrites the grpc module's import so it works as a package.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["generate", "main", "PROTO_DIR", "OUT_DIR"]

PROTO_DIR = Path(__file__).resolve().parent / "proto"
OUT_DIR = Path(__file__).resolve().parent / "proto_gen"
_PACKAGE = "shared.proto_gen"


def _fix_imports(out_dir: Path) -> None:
    """protoc writes ``import kubearmor_pb2``; make it ``from shared.proto_gen import kubearmor_pb2``."""
    for grpc_file in out_dir.glob("*_pb2_grpc.py"):
        text = grpc_file.read_text()
        fixed = re.sub(r"^import (\w+_pb2) as (\w+)$", rf"from {_PACKAGE} import \1 as \2", text, flags=re.M)
        grpc_file.write_text(fixed)


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path = OUT_DIR) -> list[Path]:
    """Run grpc_tools.protoc on every .proto in ``proto_dir``; return the files written."""
    import grpc_tools
    from grpc_tools import protoc  # imported here: only needed at setup time

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "__init__.py").write_text('"""Generated gRPC stubs (python -m shared.protogen); do not edit."""\n')
    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    protos = sorted(str(p) for p in proto_dir.glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files in {proto_dir}")
    args = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit code {rc}")
    _fix_imports(out_dir)
    return sorted(out_dir.glob("*.py*"))


def main() -> int:
    """Command-line entry point."""
    try:
        written = generate()
    except (RuntimeError, FileNotFoundError) as exc:
        sys.stderr.write(f"protogen: {exc}\n")
        return 1
    sys.stderr.write("protogen: wrote " + ", ".join(p.name for p in written) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
