"""The SSH transport: the reference guest's network mode, bring-your-own images, and every way it fails.

Real QEMU (debian:bookworm) under TCG, the real reference guest in network mode (dropbear), a real
paramiko client; the fault cases boot recipes whose /init or probe misbehaves on purpose.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import SSH_FAULTS, run_qabi, with_uuid
from test_capture import _qemu_pids_with

pytestmark = pytest.mark.integration   # every test here boots QEMU, or checks options before it would

BUILD = "debian:bookworm"
FOUR = ("sys/firmware/acpi/tables", "sys/firmware/dmi/tables", "sys/bus/pci/devices", "dev/cpu")


def _raw(capture: Path) -> dict[str, bytes]:
    return {str(p.relative_to(capture / "raw")): p.read_bytes() for p in (capture / "raw").rglob("*") if p.is_file()}


def _capture(out: Path, guest: str, *extra: str, machine: str = "pc-q35-7.2", timeout: str = "180",
             env: dict[str, str] | None = None):
    return run_qabi("capture", "--qemu", BUILD, "--machine", machine, "--guest", guest, "--timeout", timeout,
                    "-o", str(out), *extra, env=env)


def _new_key() -> tuple[bytes, bytes]:
    """A fresh ed25519 key pair: (OpenSSH private key file bytes, OpenSSH public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    return (private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                  serialization.NoEncryption()),
            private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))


@pytest.mark.parametrize("guest", ["linux-virtio", "windows"])
def test_ssh_and_serial_captures_are_byte_identical(tmp_path, guest):
    from harness.capture import plan_capture
    from harness.check import captured
    from harness.guest.profile import load_profile
    from harness.plan import SERIAL
    from harness.qemu import resolve

    over_ssh = tmp_path / "ssh"
    # the serial side from the capture cache (test_capture and test_pci_state need the same one)
    cap = captured(plan_capture(resolve(BUILD), load_profile(guest), "pc-q35-7.2", access=SERIAL))
    serial, serial_seconds = cap.path, cap.manifest["timings"]["total"]
    started = time.monotonic()
    done = _capture(over_ssh, guest, "--transport", "ssh")
    assert done.returncode == 0, done.stderr
    ssh_seconds = time.monotonic() - started
    a, b = _raw(serial), _raw(over_ssh)
    for prefix in FOUR:
        mine = {k for k in a if k.startswith(prefix)}
        assert mine, f"serial capture has nothing under {prefix}"
        assert mine == {k for k in b if k.startswith(prefix)}, prefix
        assert [k for k in sorted(mine) if a[k] != b[k]] == [], f"{prefix} differs between serial and ssh"
    m = json.loads((over_ssh / "manifest.json").read_text())
    assert m["transport"] == "ssh" and m["ssh"]["user"] == "root" and m["ssh"]["shutdown"] == "clean"
    assert m["ssh"]["upload"] == "sftp"
    # the pinned key is the one recorded with the image, and the NIC kept its profile model
    from harness.guest import build_reference_image

    assert m["ssh"]["host_key"] == build_reference_image().host_key
    assert "qabi.transport=ssh" in m["image"]["cmdline"]
    assert any("hostfwd=tcp:127.0.0.1:0-:22" in arg for arg in m["argv"])
    print(f"{guest}: serial {serial_seconds:.1f}s (capture), ssh {ssh_seconds:.1f}s (CLI wall time)")


def test_wrong_pinned_host_key_is_refused(tmp_path, monkeypatch):
    """The reference guest's sshd with a different key pinned: refused before login, no capture."""
    from harness.capture import capture, plan_capture
    from harness.errors import CaptureError
    from harness.guest import build_reference_image
    from harness.guest.profile import load_profile
    from harness.qemu import resolve
    from harness.transport import ssh

    other = _new_key()[1].decode()
    image = build_reference_image()
    assert other.split()[1] != image.host_key.split()[1]
    original = ssh.SshLogin
    pinned_wrong = []

    def wrong_pin(user, key, host_keys, **kw):  # the capture pins `other` instead of the image's key
        pinned_wrong.append(host_keys)
        return original(user, key, (other,), **kw)

    monkeypatch.setattr(ssh, "SshLogin", wrong_pin)
    from harness.plan import GuestAccess

    with pytest.raises(CaptureError, match=r"wrong SSH host key|host key is not pinned") as err:
        capture(plan_capture(resolve(BUILD), load_profile("linux-virtio"), "pc-q35-7.2", timeout=120,
                             access=GuestAccess(transport="ssh")), tmp_path / "c")
    assert pinned_wrong == [(image.host_key,)]
    assert image.host_key.split()[1] in str(err.value)  # it names the key the guest really offered
    assert not (tmp_path / "c" / "manifest.json").exists() and (tmp_path / "c" / "FAILED").exists()


@pytest.mark.parametrize("name", list(SSH_FAULTS))
def test_faulty_ssh_guest_is_exit_2_with_no_capture(tmp_path, faulty_recipe, qemu_tmp, name):
    fault, recipe, out = SSH_FAULTS[name], faulty_recipe, tmp_path / "out"
    done = _capture(out, str(with_uuid(tmp_path, "linux-virtio", fault.uuid_last)), "--transport", "ssh",
                    "--reference", str(recipe), timeout=fault.timeout, env={"TMPDIR": str(qemu_tmp)})
    assert done.returncode == 2, done.stdout + done.stderr
    import re

    line = done.stderr.strip().splitlines()[-1]
    assert re.search(fault.message, line), line
    assert not (out / "manifest.json").exists() and (out / "FAILED").exists() and (out / "console.log").exists()
    assert _qemu_pids_with(str(qemu_tmp)) == []    # its QEMU (other workers boot the same image)


def test_wrong_client_key_is_an_authentication_failure(tmp_path, monkeypatch):
    from harness.capture import capture, plan_capture
    from harness.errors import CaptureError
    from harness.guest.profile import load_profile
    from harness.plan import GuestAccess
    from harness.qemu import resolve
    from harness.transport import ssh

    key = tmp_path / "id"
    key.write_bytes(_new_key()[0])
    original = ssh.SshLogin

    def other_key(user, _key, host_keys, **kw):
        return original(user, key, host_keys, **kw)

    monkeypatch.setattr(ssh, "SshLogin", other_key)
    with pytest.raises(CaptureError, match=r"SSH authentication failed for user 'root'"):
        capture(plan_capture(resolve(BUILD), load_profile("windows"), "pc-q35-7.2", timeout=120,
                             access=GuestAccess(transport="ssh")), tmp_path / "c")


# -- bad input: one line, exit 2, nothing booted ----------------------------------------------------
@pytest.mark.parametrize("args,message", [
    (["--guest", "minimal", "--transport", "ssh"], "profile 'minimal' has no NIC"),
    (["--guest", "windows", "--guest-image", "/etc/hostname"], "--guest-image needs --transport ssh"),
    (["--guest", "windows", "--transport", "ssh", "--guest-image", "/etc/hostname"], "needs --ssh-key"),
    (["--guest", "windows", "--transport", "ssh", "--ssh-user", "me"], "only apply with --guest-image"),
    (["--guest", "windows", "--transport", "ssh", "--guest-image", "/nonexistent.qcow2", "--ssh-key", "/etc/hostname"],
     "does not exist"),
])
def test_bad_ssh_options_are_one_line_exit_2(tmp_path, args, message):
    done = run_qabi("capture", "--qemu", BUILD, "--machine", "pc-q35-7.2", "-o", str(tmp_path / "o"), *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_foreign_image_formats_are_refused(tmp_path):
    vmdk = tmp_path / "disk.vmdk"
    vmdk.write_bytes(b"KDMV" + b"\0" * 4096)
    key = tmp_path / "k"
    key.write_text("x")
    done = run_qabi("capture", "--qemu", BUILD, "--machine", "pc-q35-7.2", "--guest", "windows", "--transport", "ssh",
                    "--guest-image", str(vmdk), "--ssh-key", str(key), "-o", str(tmp_path / "o"))
    assert done.returncode == 2 and "is a VMDK image" in done.stderr, done.stderr


# -- bring your own image: a real Debian built by guests/byo/build-debian-image -------------------------
def _test_key() -> tuple[Path, Path]:
    """A login key kept in the cache, so the cached Debian image (keyed by it) is built only once."""
    from harness.cache import atomic_write_bytes, cache_dir, file_lock

    folder = cache_dir("byo")
    key, pub = folder / "test_id_ed25519", folder / "test_id_ed25519.pub"
    with file_lock(folder / "test_id_ed25519.lock"):
        if not (key.is_file() and pub.is_file()):
            private, public = _new_key()
            atomic_write_bytes(key, private)
            key.chmod(0o600)
            atomic_write_bytes(pub, public + b"\n")
    return key, pub


@pytest.mark.slow
@pytest.mark.parametrize("guest", ["linux-virtio"])
def test_own_debian_image_over_ssh_matches_the_reference_guest(tmp_path, guest):
    from byo_image import debian_image, image_sha256

    from harness.drift import compare
    from harness.fingerprint import fingerprint_capture

    key, pub = _test_key()
    started = time.monotonic()
    image = debian_image(pub)
    build_seconds = time.monotonic() - started
    before = image_sha256(image.path)
    pins = tmp_path / "hostkeys"
    pins.write_text("\n".join(image.host_keys) + "\n")
    own, ref = tmp_path / "own", tmp_path / "ref"
    started = time.monotonic()
    done = _capture(own, guest, "--transport", "ssh", "--guest-image", str(image.path), "--ssh-user", image.user,
                    "--ssh-key", str(key), "--ssh-host-key", str(pins), timeout="600")
    own_seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert _capture(ref, guest, "--transport", "serial").returncode == 0
    assert image_sha256(image.path) == before, "the guest image was written to"
    m = json.loads((own / "manifest.json").read_text())
    assert m["image"]["sha256"] == before and m["image"]["kind"] == "user"
    assert m["ssh"]["user"] == image.user and m["ssh"]["shutdown"] == "clean"
    assert m["probe"]["kernel"] != "" and any("snapshot=on" in a for a in m["argv"])
    comparison = compare(fingerprint_capture(ref), fingerprint_capture(own))
    mismatched = [(d.category, d.subject, d.path) for d in comparison.drifts if d.category in ("pci", "smbios")]
    assert mismatched == []
    print(f"own Debian image over ssh: {own_seconds:.1f}s capture (image ready after {build_seconds:.1f}s)")


def test_own_image_with_a_wrong_pinned_host_key_is_refused(tmp_path):
    """--ssh-host-key that is not the image's key: refused, the error shows what the guest offered."""
    import os

    if os.environ.get("QABI_BYO_TESTS") != "1" and not _byo_cached():
        pytest.skip("the Debian test image is not built (run the slow tests, or QABI_BYO_TESTS=1)")
    from byo_image import debian_image

    from harness.transport.ssh import openssh_line, parse_public_key

    key, pub = _test_key()
    image = debian_image(pub)
    wrong = tmp_path / "wrong.pub"
    wrong.write_text(pub.read_text())  # a valid key, but not the host's
    done = _capture(tmp_path / "o", "linux-virtio", "--transport", "ssh", "--guest-image", str(image.path),
                    "--ssh-user", image.user, "--ssh-key", str(key), "--ssh-host-key", str(wrong), timeout="600")
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    offered = {openssh_line(parse_public_key(k)).split()[1] for k in image.host_keys}
    assert ("host key is not pinned" in line or "wrong SSH host key" in line) and any(k in line for k in offered), line


def _byo_cached() -> bool:
    from byo_image import cache_key

    from harness.cache import cache_dir

    _key, pub = _test_key()
    return (cache_dir("byo") / cache_key(pub.read_bytes(), "qabi", "bookworm") / "image.qcow2").is_file()
