"""Full and read-only disks: tmpfs mounts when running as root (skipped otherwise), chmod otherwise."""

import os

import faults_lib
import pytest

needs_mount = pytest.mark.skipif(not faults_lib.can_mount(), reason="needs root and permission to mount a tmpfs")


@needs_mount
def test_full_disk(tmp_path):
    mount = faults_lib.tmpfs(tmp_path / "disk", size="8m")
    with mount as root:
        report = faults_lib.unwritable_disk_checks(root, lambda: faults_lib.fill(root))
    print(report.report("full disk (tmpfs)"))
    assert report.checks > 5 and report.failures == []


@needs_mount
def test_read_only_disk(tmp_path):
    mount = faults_lib.tmpfs(tmp_path / "disk", size="8m")
    with mount as root:
        report = faults_lib.unwritable_disk_checks(root, mount.read_only)
    print(report.report("read-only disk (tmpfs remounted ro)"))
    assert report.checks > 5 and report.failures == []


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not bind root")
def test_read_only_folder(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()

    def read_only():
        for folder in (root / "checkpoints", root / "pretrained", root):
            folder.chmod(0o555)

    try:
        report = faults_lib.unwritable_disk_checks(root, read_only)
    finally:
        for folder in (root, root / "checkpoints", root / "pretrained"):
            folder.chmod(0o755)
    print(report.report("read-only folder (chmod)"))
    assert report.checks > 5 and report.failures == []
