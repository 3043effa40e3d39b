"""The images KubeArmor's tests run in, built here with no registry, once, and cached.

* ``ubuntu-w-utils``: KubeArmor's test image (``examples/multiubuntu/build``) built from our adapted
  Dockerfile (``image/Dockerfile``) on a Debian bookworm rootfs made by ``debootstrap
  --no-merged-usr``: like Ubuntu 18.04, /bin and /usr/bin are separate directories, so /bin/ls,
  /bin/cat, /bin/dash and /bin/sleep are the real paths the policies name. Used for every pod whose
  upstream image is ubuntu-w-utils, and for the wordpress (Debian stretch: split /usr too),
  mysql and nginx:alpine stand-ins.
* ``debian``: the merged-/usr bookworm rootfs ``scripts/build-images.sh --rootfs-only`` caches, as
  ``nginx`` and ``debian:latest`` are (their cat is /usr/bin/cat, which the cluster policies name).

The rootfs tarballs and the built image (``docker save``) are cached in ``BULWARK_IMAGE_CACHE``
(default /var/cache/bulwark), the image under a hash of its Dockerfile, KubeArmor's build files and
the base rootfs: a warm session only ``docker load``s it. Only Debian's mirror is contacted (builds use
the host's network: no bridge exists on the private engine).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.docker.engine import PrivateDocker

__all__ = ["Images", "ensure_images", "CACHE"]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("BULWARK_IMAGE_CACHE", "/var/cache/bulwark"))
MIRROR = os.environ.get("BULWARK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SPLIT_ROOTFS = "rootfs-bookworm-minbase-splitusr.tar"
MERGED_ROOTFS = "rootfs-bookworm-minbase.tar"  # scripts/build-images.sh's
UBUNTU = "kubearmor-suite/ubuntu-w-utils"
DEBIAN = "kubearmor-suite/debian:bookworm"
SPLIT_BASE = "kubearmor-suite/base-splitusr"


@dataclass(frozen=True)
class Images:
    """Image names by role: ``ubuntu`` (kubearmor/ubuntu-w-utils) and ``debian`` (merged /usr)."""

    ubuntu: str
    debian: str
    busybox: str

    def by_role(self, role: str) -> str:
        return {"ubuntu": self.ubuntu, "debian": self.debian, "busybox": self.busybox}[role]


@contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder at a time per cache directory (two sessions may start together)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".kubearmor-suite.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(args: list[str], what: str, timeout: float, env: dict[str, str] | None = None,
         log: Path | None = None) -> None:
    """Run a build step; its output goes to ``log`` (kept for diagnosis) or is captured."""
    if log is None:
        done = subprocess.run(args, capture_output=True, timeout=timeout, env=env)
        text = (done.stdout + done.stderr).decode(errors="replace")
    else:
        with open(log, "wb") as out:
            done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=env)
        text = log.read_text(errors="replace")
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{text[-4000:]}")


def _split_rootfs() -> Path:
    """Debian bookworm minbase WITHOUT merged /usr, as a tarball (made once, then cached)."""
    tar = CACHE / SPLIT_ROOTFS
    if tar.is_file() and tar.stat().st_size > 0:
        return tar
    if not shutil.which("debootstrap"):
        raise RuntimeError("debootstrap missing (scripts/setup-system.sh installs it)")
    work = Path(tempfile.mkdtemp(prefix="rootfs-split.", dir=CACHE))
    try:
        _run(["debootstrap", "--variant=minbase", "--no-merged-usr", "bookworm", str(work), MIRROR],
             "debootstrap --no-merged-usr bookworm", 900, log=CACHE / "debootstrap-splitusr.log")
        subprocess.run(["chroot", str(work), "apt-get", "clean"], capture_output=True, timeout=120)
        for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "tmp/*", "proc/*", "sys/*", "dev/*"):
            for entry in work.glob(pattern):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        partial = tar.with_suffix(".tmp")
        _run(["tar", "--numeric-owner", "-C", str(work), "-cf", str(partial), "."], "tar of the rootfs", 600)
        partial.rename(tar)
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)
    return tar


def _unmount_below(path: Path) -> None:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(str(path))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _merged_rootfs() -> Path:
    """scripts/build-images.sh's cached merged-/usr rootfs (it makes it when missing)."""
    tar = CACHE / MERGED_ROOTFS
    if not (tar.is_file() and tar.stat().st_size > 0):
        env = {**os.environ, "BULWARK_IMAGE_CACHE": str(CACHE), "BULWARK_DEBIAN_MIRROR": MIRROR}
        _run(["bash", str(ROOT / "scripts/build-images.sh"), "--rootfs-only"], "build-images.sh --rootfs-only",
             900, env=env)
    return tar


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_context(upstream_build: Path, dest: Path) -> Path:
    """KubeArmor's build directory plus our Dockerfile, in ``dest``."""
    shutil.copytree(upstream_build, dest)
    shutil.copy(HERE / "image" / "Dockerfile", dest / "Dockerfile")
    return dest


def _context_digest(ctx: Path, base_digest: str) -> str:
    h = hashlib.sha256(base_digest.encode())
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(ctx)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _image_present(docker: PrivateDocker, name: str) -> bool:
    return docker.cli("image", "inspect", name, check=False).returncode == 0


def _ubuntu_image(docker: PrivateDocker, upstream_build: Path, work: Path) -> str:
    rootfs = _split_rootfs()
    base_digest = _file_digest(rootfs)
    base = f"{SPLIT_BASE}:{base_digest[:16]}"
    ctx = build_context(upstream_build, work / "ctx")
    digest = _context_digest(ctx, base_digest)
    name = f"{UBUNTU}:{digest}"
    saved = CACHE / f"kubearmor-suite-ubuntu-w-utils-{digest}.tar"
    if _image_present(docker, name):
        return name
    if saved.is_file():
        docker.cli("load", "-i", str(saved), timeout=600)
        if _image_present(docker, name):
            return name
    if not _image_present(docker, base):
        # No LANG: ubuntu:18.04 sets none (with C.UTF-8 every program opens locale files under /usr/lib)
        docker.cli("import", "-c", 'CMD ["/bin/bash"]', str(rootfs), base, timeout=600)
    env = {**os.environ, "DOCKER_HOST": docker.host, "DOCKER_CONFIG": str(docker.root / "cli"), "DOCKER_BUILDKIT": "0"}
    _run(["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-t", name, str(ctx)],
         "docker build of ubuntu-w-utils", 1800, env=env, log=work / "build.log")
    partial = saved.with_suffix(".tmp")
    docker.cli("save", "-o", str(partial), name, timeout=600)
    partial.rename(saved)
    for old in CACHE.glob("kubearmor-suite-ubuntu-w-utils-*.tar"):
        if old != saved:
            old.unlink(missing_ok=True)  # an older Dockerfile's image
    return name


def ensure_images(docker: PrivateDocker, upstream_build: Path) -> Images:
    """Every image the suite's pods use, present in ``docker`` (built or loaded from the cache)."""
    work = Path(tempfile.mkdtemp(prefix="ka-images-"))
    try:
        with _cache_lock():
            ubuntu = _ubuntu_image(docker, upstream_build, work)
            merged = _merged_rootfs()
        if not _image_present(docker, DEBIAN):
            docker.cli("import", "-c", 'CMD ["/bin/bash"]', str(merged), DEBIAN, timeout=600)
        busybox = docker.build_busybox_image("kubearmor-suite/busybox:1")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Images(ubuntu=ubuntu, debian=DEBIAN, busybox=busybox)
