"""Issue 18 item 1 end to end: `bulwark recommend` for a locally built image, then its policies in Block
stop a package manager and a cron write in a container of that image.

Everything is real: a private dockerd, an image built from a tarball (busybox plus a fake apt, dpkg and
/etc/cron.d), `bulwark up` (nats-server, the five services, bcc, fanotify), `docker exec`, the REST API.
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.docker.engine import PrivateDocker, busybox_rootfs_tar
from tests.e2e.stack import Stack, healthy_stack, wait_for_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
IMAGE = "bulwark-test/recommend:1"
PKG_SCRIPT = b"#!/bin/sh\necho installed\n"


def _add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def build_image(engine: PrivateDocker) -> str:
    """busybox, plus /usr/bin/apt and /usr/bin/dpkg (scripts standing for the real ones), /etc/cron.d, /root."""
    tar_path = busybox_rootfs_tar(engine.root / "recommend-rootfs.tar", ("sh", "cat", "true", "ls", "echo"))
    with tarfile.open(tar_path, "a") as tar:
        for d in ("usr", "usr/bin", "etc/cron.d", "root"):
            _add(tar, d, None)
        _add(tar, "usr/bin/apt", PKG_SCRIPT)
        _add(tar, "usr/bin/dpkg", PKG_SCRIPT)
        _add(tar, "etc/cron.d/backup", b"0 3 * * * root /bin/true\n", 0o644)
        _add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    engine.cli("import", "-c", 'CMD ["/bin/sleep", "3600"]', str(tar_path), IMAGE)
    return IMAGE


@pytest.fixture(scope="module")
def engine() -> Iterator[PrivateDocker]:
    why = PrivateDocker.available()
    if why:
        pytest.skip(why)
    dockerd = PrivateDocker()
    try:
        dockerd.start()
        yield dockerd
    finally:
        dockerd.stop()


@pytest.fixture(scope="module")
def rec_stack(engine: PrivateDocker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    build_image(engine)
    engine.run("rec-web", IMAGE, {"app": "rec-web"})
    try:
        with healthy_stack(tmp_path_factory.mktemp("recommend") / "data", node="rec-node",
                           extra_env={"BULWARK_DOCKER_HOST": engine.host}) as stack:
            yield stack
    finally:
        engine.cli("rm", "-f", "rec-web", check=False)


def _exec(engine: PrivateDocker, *cmd: str) -> tuple[int, str]:
    done = engine.cli("exec", "rec-web", *cmd, check=False)
    return done.returncode, done.stdout + done.stderr


def test_recommend_for_an_image_validates_and_reports(rec_stack: Stack, engine: PrivateDocker, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = rec_stack.cli("recommend", "--image", IMAGE, "-n", "shop", "--label", "app=web", "--tag", "cron",
                         "--tag", "T1105", "-o", str(out), "--docker-host", engine.host)
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in (out / "policies" / "shop-recommend").iterdir())
    assert files == ["cron-jobs.yaml", "package-manager-exec.yaml"], files  # no downloader (T1105) in the image
    checked = rec_stack.cli("policy", "validate", str(out / "policies"))
    assert checked.returncode == 0 and all(line.startswith("OK ") for line in checked.stdout.splitlines()), checked
    pkg = yaml.safe_load((out / "policies" / "shop-recommend" / "package-manager-exec.yaml").read_text())
    assert pkg["metadata"] == {"name": "recommend-package-manager-exec", "namespace": "shop"}
    assert pkg["spec"]["selector"] == {"matchLabels": {"app": "web"}} and pkg["spec"]["action"] == "Audit"
    assert [e["path"] for e in pkg["spec"]["process"]["matchPaths"]] == ["/usr/bin/apt", "/usr/bin/dpkg"]
    assert "MITRE-T1105" in pkg["spec"]["tags"]
    report = json.loads((out / "report.json").read_text())
    [wl] = report["workloads"]
    by_rule = {p["rule"]: p for p in wl["policies"]}
    assert by_rule["package-manager-exec"]["evidence"] == ["/usr/bin/apt", "/usr/bin/dpkg"]
    assert "/etc/cron.d/" in by_rule["cron-jobs"]["evidence"]
    assert by_rule["cron-jobs"]["references"]["mitre"] == ["T1053.003"]
    assert "package-manager-exec" in (out / "report.html").read_text()
    assert "WORKLOAD shop/recommend" in (out / "report.txt").read_text()


def test_recommended_policies_in_block_stop_a_package_manager(rec_stack: Stack, engine: PrivateDocker,
                                                              tmp_path: Path) -> None:
    assert _exec(engine, "/usr/bin/apt", "install", "nmap") == (0, "installed\n")  # it runs before
    out = tmp_path / "out"
    done = rec_stack.cli("recommend", "--container", "rec-web", "--action", "Block", "-o", str(out),
                         "--docker-host", engine.host)
    assert done.returncode == 0, done.stderr
    folder = out / "policies" / "docker-rec-web"
    pkg = yaml.safe_load((folder / "package-manager-exec.yaml").read_text())
    assert pkg["metadata"]["namespace"] == "docker"
    assert pkg["spec"]["selector"] == {"matchLabels": {"app": "rec-web"}} and pkg["spec"]["action"] == "Block"
    assert rec_stack.cli("policy", "validate", str(folder)).returncode == 0
    applied = rec_stack.cli("apply", "-f", str(folder))
    assert applied.returncode == 0, applied.stderr

    deadline, (code, output) = time.monotonic() + 30, (0, "")
    while time.monotonic() < deadline:  # rules reach the enforcer asynchronously
        code, output = _exec(engine, "/usr/bin/apt", "install", "nmap")
        if code != 0:
            break
        time.sleep(0.3)
    assert code != 0 and "operation not permitted" in output.lower(), f"{output}\n{rec_stack.logs()}"
    assert _exec(engine, "/usr/bin/dpkg", "-i", "x.deb")[0] != 0
    code, output = _exec(engine, "/bin/sh", "-c", "echo '* * * * * root /tmp/x' > /etc/cron.d/evil")
    assert code != 0, output
    assert _exec(engine, "/bin/cat", "/etc/cron.d/backup") == (0, "0 3 * * * root /bin/true\n")  # reads still work
    assert _exec(engine, "/bin/true")[0] == 0

    alerts = wait_for_alerts(rec_stack.rest_url, 1, timeout=20.0, namespace="docker",
                             policy="rec-web-package-manager-exec")
    assert alerts, rec_stack.logs()
    alert = alerts[0]
    assert (alert["Action"], alert["Operation"], alert["ContainerName"]) == ("Block", "Process", "rec-web")
    assert alert["Resource"] in ("/usr/bin/apt", "/usr/bin/dpkg") and "MITRE-T1105" in alert["ATags"]


def test_recommend_for_a_workload_the_stack_knows(rec_stack: Stack, engine: PrivateDocker, tmp_path: Path) -> None:
    """--workload NS/NAME: the image and labels come from the workload's stored records."""
    assert _exec(engine, "/bin/true")[0] == 0  # at least one stored record of rec-web
    deadline = time.monotonic() + 30
    done = None
    while time.monotonic() < deadline:
        done = rec_stack.cli("recommend", "--workload", "docker/rec-web", "--tag", "package-manager", "-o",
                             str(tmp_path / "out"), "--docker-host", engine.host)
        if done.returncode == 0:
            break
        time.sleep(1.0)  # the record may still be on its way to the store
    assert done is not None and done.returncode == 0, done.stderr if done else ""
    pkg = yaml.safe_load((tmp_path / "out" / "policies" / "docker-rec-web" / "package-manager-exec.yaml").read_text())
    assert pkg["metadata"] == {"name": "rec-web-package-manager-exec", "namespace": "docker"}
    assert pkg["spec"]["selector"] == {"matchLabels": {"app": "rec-web"}}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["workloads"][0]["image"] == IMAGE and report["workloads"][0]["source"] == "workload"
