"""What files a workload's image holds: a Docker image (exported through the Docker API) or a directory.

:class:`FileTree` keeps each entry's kind (file, dir, link) and link targets, and resolves paths the
way the kernel would inside the image (symlinks in any component, relative or absolute, at most 40
hops), so ``/bin/apt`` exists in a merged-/usr image that only ships ``/usr/bin/apt``. The export is
read as a stream (``tarfile`` mode ``r|``): memory grows with the number of entries, not their size,
and is capped by ``max_entries``.
"""
from __future__ import annotations

import io
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FileTree", "ImageInfo", "tree_from_tar", "tree_from_dir", "docker_image_tree", "TooManyEntries"]

MAX_ENTRIES = 2_000_000
_MAX_HOPS = 40


class TooManyEntries(ValueError):
    """The image holds more entries than we agreed to keep in memory."""


@dataclass
class FileTree:
    """Entries of a filesystem: path -> ``f`` (file), ``d`` (directory) or ``l`` (link, target in ``links``)."""

    kinds: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def add(self, path: str, kind: str, target: str = "") -> None:
        """Record one entry (``path`` absolute or relative to the root); parents are directories."""
        path = "/" + path.strip("/").removeprefix("./").strip("/") if path not in ("", ".", "./", "/") else "/"
        self.kinds[path] = kind
        if kind == "l":
            self.links[path] = target
        parent = posixpath.dirname(path)
        while parent != "/" and parent not in self.kinds:
            self.kinds[parent] = "d"
            parent = posixpath.dirname(parent)

    def resolve(self, path: str) -> str | None:
        """``path`` with every symlink followed; None when it leads nowhere (missing, loop)."""
        parts = [p for p in path.split("/") if p]
        current, hops = "/", 0
        while parts:
            name = parts.pop(0)
            if name == ".":
                continue
            if name == "..":
                current = posixpath.dirname(current)
                continue
            candidate = posixpath.join(current, name)
            kind = self.kinds.get(candidate)
            if kind is None:
                return None
            if kind == "l":
                hops += 1
                if hops > _MAX_HOPS:
                    return None
                target = self.links[candidate]
                parts = [p for p in target.split("/") if p] + parts
                current = "/" if target.startswith("/") else current
                continue
            current = candidate
        return current

    def kind(self, path: str) -> str | None:
        """``f``, ``d`` or None for the entry ``path`` leads to."""
        real = self.resolve(path)
        return None if real is None else ("d" if real == "/" else self.kinds.get(real))

    def is_file(self, path: str) -> bool:
        """Whether ``path`` leads to a file."""
        return self.kind(path) == "f"

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` leads to a directory."""
        return self.kind(path) == "d"

    def homes(self) -> list[str]:
        """``/root`` (when present) and every directory directly under ``/home``."""
        out = ["/root"] if self.is_dir("/root") else []
        home = self.resolve("/home")
        if home is not None:
            prefix = home.rstrip("/") + "/"
            out += sorted(p for p, k in self.kinds.items()
                          if k == "d" and p.startswith(prefix) and "/" not in p[len(prefix):])
        return out

    def __len__(self) -> int:
        return len(self.kinds)


@dataclass
class ImageInfo:
    """What Docker says about an image: its id, tags, labels, user and entry point."""

    ref: str
    id: str = ""
    tags: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)


def tree_from_tar(stream: io.RawIOBase | io.BufferedIOBase | Any, max_entries: int = MAX_ENTRIES) -> FileTree:
    """The entries of a tar stream (read once, front to back)."""
    tree = FileTree()
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if len(tree) >= max_entries:
                raise TooManyEntries(f"more than {max_entries} entries")
            if member.issym():
                tree.add(member.name, "l", member.linkname)
            elif member.isdir():
                tree.add(member.name, "d")
            else:
                tree.add(member.name, "f")
    return tree


def tree_from_dir(root: Path, wanted: Iterable[str], max_entries: int = MAX_ENTRIES) -> FileTree:
    """The entries of a directory tree that matter for ``wanted`` paths (their components, and the
    children of home directories), read with lstat so links stay links."""
    tree = FileTree()
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen or len(seen) >= max_entries:
            return
        seen.add(path)
        full = root / path.lstrip("/")
        try:
            os.lstat(full)
        except OSError:
            return
        if os.path.islink(full):
            target = os.readlink(full)
            tree.add(path, "l", target)
            absolute = target if target.startswith("/") else posixpath.join(posixpath.dirname(path), target)
            visit(posixpath.normpath(absolute))
        elif os.path.isdir(full):
            tree.add(path, "d")
        else:
            tree.add(path, "f")

    for want in [*wanted, "/root", "/home"]:
        parts = [p for p in want.split("/") if p]
        for i in range(1, len(parts) + 1):
            visit("/" + "/".join(parts[:i]))
    home = root / "home"
    if home.is_dir():
        for child in sorted(os.listdir(home))[:1000]:
            visit(f"/home/{child}")
    return tree


class _ChunkReader(io.RawIOBase):
    """A file-like view of an iterator of byte chunks (Docker's export stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buf = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            try:
                self.buf = next(self.chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


def docker_image_tree(client: Any, ref: str, max_entries: int = MAX_ENTRIES) -> tuple[ImageInfo, FileTree]:
    """The files of image ``ref`` (a name or id): a container is created (never started) and exported.

    ``client`` is a ``docker.DockerClient``; docker.errors.ImageNotFound when there is no such image.
    """
    image = client.images.get(ref)
    config = image.attrs.get("Config") or {}
    info = ImageInfo(ref=ref, id=image.id, tags=list(image.tags), labels=dict(config.get("Labels") or {}),
                     user=str(config.get("User") or ""), entrypoint=list(config.get("Entrypoint") or []))
    created = client.api.create_container(image.id, command=["/bulwark-recommend-never-started"],
                                          network_disabled=True, labels={"bulwark.recommend": "scan"})
    try:
        stream = client.api.export(created["Id"])
        tree = tree_from_tar(io.BufferedReader(_ChunkReader(iter(stream)), 1 << 16), max_entries)
    finally:
        client.api.remove_container(created["Id"], force=True)
    return info, tree
