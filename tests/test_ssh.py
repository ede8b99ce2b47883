"""The SSH transport: the reference guest's network mode, bring-your-own images, and every way it fails.

Real QEMU (debian:bookworm) under TCG, the real reference guest in network mode (dropbear), a real
paramiko client; the fault cases boot recipes whose /init or probe misbehaves on purpose.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import REPO, run_qabi
from test_capture import _qemu_pids_with, _with_uuid

pytestmark = pytest.mark.integration   # every test here boots QEMU, or checks options before it would

BUILD = "debian:bookworm"
FOUR = ("sys/firmware/acpi/tables", "sys/firmware/dmi/tables", "sys/bus/pci/devices", "dev/cpu")


def _raw(capture: Path) -> dict[str, bytes]:
    return {str(p.relative_to(capture / "raw")): p.read_bytes() for p in (capture / "raw").rglob("*") if p.is_file()}


def _capture(out: Path, guest: str, *extra: str, machine: str = "pc-q35-7.2", timeout: str = "180"):
    return run_qabi("capture", "--qemu", BUILD, "--machine", machine, "--guest", guest, "--timeout", timeout,
                    "-o", str(out), *extra)


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
    from harness.capture import SERIAL, plan_capture
    from harness.check import captured
    from harness.guest.profile import load_profile
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
    from harness.capture import GuestAccess

    with pytest.raises(CaptureError, match=r"wrong SSH host key|host key is not pinned") as err:
        capture(plan_capture(resolve(BUILD), load_profile("linux-virtio"), "pc-q35-7.2", timeout=120,
                             access=GuestAccess(transport="ssh")), tmp_path / "c")
    assert pinned_wrong == [(image.host_key,)]
    assert image.host_key.split()[1] in str(err.value)  # it names the key the guest really offered
    assert not (tmp_path / "c" / "manifest.json").exists() and (tmp_path / "c" / "FAILED").exists()


def _recipe(folder: Path, faults: dict[str, tuple[str, str]]) -> Path:
    """A copy of the reference recipe with one fault per SMBIOS UUID: `faults` maps a UUID's last
    group to (where, shell lines). One image serves every fault (one image build); each case boots
    its own copy of the profile under that UUID, read by the guest in /init and in the probe.

    where: `init` runs the lines once the kernel's views are mounted; `probe` runs them first in
    the probe; `tools` runs them after the probe's list of required tools (to change it)."""
    recipe = folder / "recipe"
    shutil.copytree(REPO / "guests" / "reference", recipe)

    def cases(where: str) -> str:
        chosen = "".join(f"*-{last})\n{lines}\n;;\n" for last, (w, lines) in faults.items() if w == where)
        return f"read -r uuid </sys/class/dmi/id/product_uuid\ncase $uuid in\n{chosen}esac\n"

    def insert(name: str, after: str, where: str) -> None:
        text = (recipe / name).read_text()
        assert after in text, (name, after)
        at = text.index(after) + len(after)
        (recipe / name).write_text(text[:at] + cases(where) + text[at:])

    insert("init", "mount -t devtmpfs devtmpfs /dev\n", "init")
    insert("probe.sh", "printf '@@QABI-BEGIN 1\\n'\n", "probe")
    insert("probe.sh", 'tools="dd od base64 sha256sum wc mkdir rm"\n', "tools")
    return recipe


# the dropbear process serving this session is the parent of the `sh -c` that runs the probe
KILL_SESSION = r'''printf '@@QABI-REC /sys/firmware/acpi/tables/DSDT 4 0000000000000000000000000000000000000000000000000000000000000000\n'
read -r _a _b _c _pp _rest </proc/$PPID/stat
kill -9 "$_pp"
sleep 5 2>/dev/null || read -r _x </dev/console'''
# id: (the UUID's last group, (where, the fault), --timeout, what the one stderr line says)
SSH_FAULTS = {
    # /init never gets as far as starting dropbear (it waits for the timeout: a short one)
    "sshd-never-answers": ("0000000000e1", ("init", "read -r never </dev/console"), "10",
                           r"sshd never answered within 10s .*console log: .*console\.log"),
    # the guest lacks a tool the probe needs (busybox finds its applets without links, so the
    # reference guest cannot lose one: the probe asks for one it does not have)
    "missing-tool": ("0000000000e2", ("tools", 'tools="$tools perl"'), "120",
                     r"missing tool: perl \(needed by the qabi probe\)"),
    # the connection drops while the probe is sending
    "connection-dropped": ("0000000000e3", ("probe", KILL_SESSION), "120", r"SSH connection dropped"),
}


@pytest.fixture(scope="module")
def faulty_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _recipe(tmp_path_factory.mktemp("faulty"), {last: fault for last, fault, _t, _m in SSH_FAULTS.values()})


@pytest.mark.parametrize("fault", list(SSH_FAULTS))
def test_faulty_ssh_guest_is_exit_2_with_no_capture(tmp_path, faulty_recipe, fault):
    last, _fault, timeout, message = SSH_FAULTS[fault]
    recipe = faulty_recipe
    out = tmp_path / "out"
    done = _capture(out, str(_with_uuid(tmp_path, "linux-virtio", last)), "--transport", "ssh",
                    "--reference", str(recipe), timeout=timeout)
    assert done.returncode == 2, done.stdout + done.stderr
    import re

    line = done.stderr.strip().splitlines()[-1]
    assert re.search(message, line), line
    assert not (out / "manifest.json").exists() and (out / "FAILED").exists() and (out / "console.log").exists()
    from harness.guest import build_reference_image

    assert _qemu_pids_with(str(build_reference_image(recipe).initramfs)) == []


def test_wrong_client_key_is_an_authentication_failure(tmp_path, monkeypatch):
    from harness.capture import GuestAccess, capture, plan_capture
    from harness.errors import CaptureError
    from harness.guest.profile import load_profile
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
