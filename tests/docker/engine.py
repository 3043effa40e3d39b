"""A private Docker engine for tests: its own dockerd, socket, data root and exec root under /tmp.

Nothing here touches a Docker engine the machine may already run; everything it creates (containers,
images, the daemon, its containerd, mounts, files) is removed by :meth:`PrivateDocker.stop`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from bulwark.procs import terminate

__all__ = ["PrivateDocker", "DOCKERD", "busybox_rootfs_tar"]

DOCKERD = "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"


def busybox_rootfs_tar(dest: Path, applets: tuple[str, ...] = ("sh", "cat", "true", "ls")) -> Path:
    """A tiny rootfs tarball: static busybox, applet symlinks, and /bin/sleep as its own file."""
    with tarfile.open(dest, "w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, "bin/busybox")
        tar.add(BUSYBOX, "bin/sleep")  # a separate inode: blocking it blocks nothing else
        for applet in applets:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    return dest


class PrivateDocker:
    """``dockerd`` with private paths; ``host`` is its ``unix://`` URL for BULWARK_DOCKER_HOST."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bk-dockerd-"))
        self.socket = self.root / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.root / "dockerd.log"

    @staticmethod
    def available() -> str:
        """Why a private engine cannot run here ("" when it can)."""
        if os.geteuid() != 0:
            return "needs root"
        for tool in (DOCKERD, BUSYBOX):
            if not os.access(tool, os.X_OK):
                return f"{tool} missing (scripts/setup-system.sh installs docker.io and busybox-static)"
        if not shutil.which("docker"):
            return "docker CLI missing"
        return ""

    def start(self, timeout: float = 60.0) -> None:
        """Start dockerd (no bridge, no iptables: no networks are created) and wait for its API."""
        args = [DOCKERD, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.root / "dockerd.pid"), "-H", self.host, "--iptables=false",
                "--ip-masq=false", "--bridge=none", "--containerd-namespace", "bulwark-test",
                "--containerd-plugins-namespace", "bulwark-test-plugins"]
        self.proc = subprocess.Popen(args, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {self.proc.returncode}:\n{self.tail()}")
            if self.cli("version", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within {timeout}s:\n{self.tail()}")

    def tail(self) -> str:
        """The end of dockerd's log."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def exec_until_refused(self, name: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`docker exec NAME CMD` until it fails (rules reach the enforcer asynchronously) or ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.cli("exec", name, *(cmd or ("/bin/sleep", "0")), check=False)
            if done.returncode != 0 or time.monotonic() > deadline:
                return done
            time.sleep(0.3)

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this engine only."""
        env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_CONFIG": str(self.root / "cli")}
        done = subprocess.run(["docker", *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {done.returncode}\n{done.stderr}")
        return done

    def build_busybox_image(self, name: str = "bulwark-test/busybox:1") -> str:
        """Import the busybox rootfs as ``name`` (no registry needed); returns the name."""
        tar = busybox_rootfs_tar(self.root / "rootfs.tar")
        self.cli("import", "-c", 'CMD ["/bin/sleep", "3600"]', str(tar), name)
        return name

    def run(self, name: str, image: str, labels: dict[str, str], *cmd: str) -> str:
        """Start a detached container without networking; returns its 64-hex id."""
        args = ["run", "-d", "--network", "none", "--name", name]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        return self.cli(*args, image, *cmd).stdout.strip()

    def stop(self) -> None:
        """Remove every container, stop dockerd (and its containerd), unmount and delete its paths."""
        if self.proc is not None and self.proc.poll() is None:
            ids = self.cli("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.cli("rm", "-f", *ids, check=False, timeout=60)
            terminate(self.proc, grace=30, group=True)
        self._unmount()
        shutil.rmtree(self.root, ignore_errors=True)

    def _unmount(self) -> None:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            points = [line.split()[1] for line in f if line.split()[1].startswith(str(self.root))]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
