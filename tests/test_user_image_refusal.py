"""Issue 16 class 2: a bring-your-own qcow2 must not make QEMU open other host files (a backing file
or an external data file) that the guest could read back. Real qemu-img images, the real CLI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_qabi

from harness.errors import QabiError
from harness.guest.user_image import GuestImageError, open_guest_image

QEMU_IMG = shutil.which("qemu-img")
pytestmark = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img (qemu-utils) is not installed")


def _qemu_img(*args: str) -> None:
    subprocess.run([str(QEMU_IMG), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    backed = tmp_path / "backed.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw", str(backed))
    missing = tmp_path / "missing-backing.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-b", str(tmp_path / "gone.raw"), "-F", "raw", "-u", str(missing), "1M")
    external = tmp_path / "external.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", str(external), "1M")
    plain = tmp_path / "plain.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(plain), "1M")
    return {"backed": backed, "missing": missing, "external": external, "plain": plain}


@pytest.mark.parametrize("name,message", [
    ("backed", "has a backing file ('/etc/hostname'); refused"),
    ("missing", "has a backing file ("),
    ("external", "has an external data file ("),
])
def test_images_naming_other_files_are_refused(images, name, message):
    with pytest.raises(GuestImageError) as info:
        open_guest_image(images[name])
    assert isinstance(info.value, QabiError) and info.value.exit_code == 2
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_self_contained_qcow2_is_accepted_and_hashed(images):
    image = open_guest_image(images["plain"])
    assert image.format == "qcow2" and len(image.sha256) == 64


@pytest.mark.parametrize("name", ["backed", "external"])
def test_the_cli_refuses_them_in_one_line_before_booting(images, tmp_path, name):
    key = tmp_path / "key"
    key.write_text("x")
    done = run_qabi("capture", "--qemu", "system", "--machine", "pc-q35-7.2", "--guest", "windows",
                    "--transport", "ssh", "--guest-image", str(images[name]), "--ssh-key", str(key),
                    "-o", str(tmp_path / "o"), timeout=300)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0], done.stderr
    assert not (tmp_path / "o").exists()
