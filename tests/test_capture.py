"""Capture: real QEMU builds boot the real reference guest under TCG and bring back every byte."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import FAULTS, run_qabi, with_uuid

PROFILES = ["minimal", "linux-virtio", "windows", "legacy"]
BULLSEYE = "debian:bullseye=1:5.2+dfsg-11+deb11u3"
MATRIX = [(spec, machine, guest) for spec in ("debian:bookworm", "debian:trixie")
          for machine in ("pc-i440fx-7.2", "pc-q35-7.2") for guest in PROFILES]
MATRIX.append((BULLSEYE, "pc-i440fx-5.2", "minimal"))

pytestmark = pytest.mark.integration


def _qemu_pids_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and b"qemu-system" in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("spec,machine,guest", MATRIX, ids=[f"{s.split('=')[0]}-{m}-{g}" for s, m, g in MATRIX])
def test_capture_is_complete_and_verified(spec, machine, guest):
    from harness.capture import load_capture, plan_capture
    from harness.check import captured
    from harness.guest.profile import load_profile
    from harness.plan import SERIAL
    from harness.qemu import resolve

    folder = captured(plan_capture(resolve(spec), load_profile(guest), machine, access=SERIAL)).path
    cap = load_capture(folder)  # re-verifies every sha256
    m = cap.manifest
    assert m["complete"] and m["machine"]["resolved"] == machine and m["profile"]["name"] == guest
    files = set(m["files"])
    assert "raw/sys/firmware/acpi/tables/DSDT" in files and "raw/sys/firmware/acpi/tables/FACP" in files
    assert {"raw/sys/firmware/dmi/tables/DMI", "raw/sys/firmware/dmi/tables/smbios_entry_point"} <= files
    cpus = dict(m["profile"]["smp"])["cpus"]
    assert {f"raw/dev/cpu/{n}/cpuid" for n in range(cpus)} <= files
    assert not any(f.startswith(f"raw/dev/cpu/{cpus}/") for f in files)
    pci = {f.split("/")[5] for f in files if f.startswith("raw/sys/bus/pci/devices/")}
    assert "0000:00:00.0" in pci
    if guest == "linux-virtio":
        assert {"0000:00:03.0", "0000:00:04.0", "0000:00:08.0", "0000:00:09.0"} <= pci
    if machine.startswith("pc-q35"):
        assert {"0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"} <= pci
    sizes = {d: (cap.raw / "sys/bus/pci/devices" / d / "config").stat().st_size for d in pci}
    assert set(sizes.values()) <= {256, 4096}
    if machine.startswith("pc-q35") and guest == "windows":
        assert sizes["0000:00:03.0"] == 4096  # e1000e is PCI Express: its extended config space too
    assert any(f.startswith("raw/sys/firmware/memmap/") for f in files)
    assert m["argv"].count("-accel") == 1 and m["argv"][m["argv"].index("-accel") + 1] == "tcg,thread=single"
    assert m["build"]["spec"] == spec and len(m["build"]["sha256"]) == 64


def test_cli_capture_twice_gives_identical_raw(tmp_path):
    outs = []
    for name in ("one", "two"):
        out = tmp_path / name
        done = run_qabi("capture", "--qemu", "debian:bookworm", "--machine", "q35", "--guest", "linux-virtio",
                        "-o", str(out))
        assert done.returncode == 0, done.stderr
        outs.append(out)
    a = {p.relative_to(outs[0]): p.read_bytes() for p in (outs[0] / "raw").rglob("*") if p.is_file()}
    b = {p.relative_to(outs[1]): p.read_bytes() for p in (outs[1] / "raw").rglob("*") if p.is_file()}
    assert a.keys() == b.keys() and len(a) > 40
    assert [k for k in a if a[k] != b[k]] == []
    m = json.loads((outs[0] / "manifest.json").read_text())
    assert m["machine"] == {"asked": "q35", "resolved": "pc-q35-7.2", "family": "q35"}


@pytest.mark.parametrize("name", list(FAULTS))
def test_faulty_guest_is_exit_2_and_leaves_no_qemu(tmp_path, faulty_recipe, qemu_tmp, name):
    fault, recipe, out = FAULTS[name], faulty_recipe, tmp_path / "cap"
    done = run_qabi("capture", "--qemu", "debian:bookworm", "--machine", "pc-q35-7.2",
                    "--guest", str(with_uuid(tmp_path, "minimal", fault.uuid_last)), "--reference", str(recipe),
                    "--timeout", fault.timeout, "--transport", "serial", "-o", str(out), env={"TMPDIR": str(qemu_tmp)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.search(fault.message, done.stderr), done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert str(out / "console.log") in done.stderr
    assert (out / "console.log").is_file() and (out / "FAILED").is_file()
    assert not (out / "manifest.json").exists()  # a failed capture never looks complete
    assert _qemu_pids_with(str(qemu_tmp)) == []    # its QEMU (other workers boot the same image)


def test_unknown_machine_lists_close_ones(tmp_path):
    done = run_qabi("capture", "--qemu", "debian:bookworm", "--machine", "pc-q35-7.3", "--guest", "minimal",
                    "-o", str(tmp_path / "x"))
    assert done.returncode == 2
    assert "unknown machine type 'pc-q35-7.3'" in done.stderr and "pc-q35-7.2" in done.stderr


def _profile(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "custom.toml"
    path.write_text('description = "test"\ncpu = "qemu64"\nmemory = 256\nsmp = { cpus = 1 }\n'
                    'uuid = "6a1e0d3c-0000-4000-8000-0000000000ff"\n' + body)
    return path


def test_missing_device_is_unsupported(tmp_path):
    # igb is on the driver allow-list and came with QEMU 8.0: bookworm's 7.2 lacks it
    profile = _profile(tmp_path, '[[device]]\ndriver = "igb"\n')
    done = run_qabi("capture", "--qemu", "debian:bookworm", "--machine", "pc-q35-7.2", "--guest", str(profile),
                    "-o", str(tmp_path / "x"))
    assert done.returncode == 2 and "unsupported on this build: igb" in done.stderr


def test_missing_property_is_unsupported(tmp_path):
    # guest_uso4 is on virtio-net-pci's allow-list and came with QEMU 8.2: bookworm's 7.2 lacks it
    profile = _profile(tmp_path, '[[device]]\ndriver = "virtio-net-pci"\nprops = { guest_uso4 = false }\n')
    done = run_qabi("capture", "--qemu", "debian:bookworm", "--machine", "pc-q35-7.2", "--guest", str(profile),
                    "-o", str(tmp_path / "x"))
    assert done.returncode == 2 and "unsupported on this build" in done.stderr and "guest_uso4" in done.stderr


def test_qemu_exiting_early_shows_its_stderr(tmp_path):
    # a topology QEMU refuses at start (the profile schema bounds memory and vCPU counts)
    profile = _profile(tmp_path, "").read_text().replace("smp = { cpus = 1 }", "smp = { cpus = 2, maxcpus = 1 }")
    (tmp_path / "huge.toml").write_text(profile)
    done = run_qabi("capture", "--qemu", "debian:bookworm", "--machine", "pc-q35-7.2", "--guest",
                    str(tmp_path / "huge.toml"), "-o", str(tmp_path / "x"))
    assert done.returncode == 2 and "QEMU exited early" in done.stderr
    assert "qemu-system-x86_64" in done.stderr or "memory" in done.stderr.lower()


def test_existing_capture_is_never_overwritten(tmp_path):
    out = tmp_path / "cap"
    assert run_qabi("capture", "--qemu", "debian:bookworm", "--machine", "pc-q35-7.2", "--guest", "minimal",
                    "-o", str(out)).returncode == 0
    before = (out / "manifest.json").read_bytes()
    done = run_qabi("capture", "--qemu", "debian:bookworm", "--machine", "pc-q35-7.2", "--guest", "minimal",
                    "-o", str(out))
    assert done.returncode == 2 and "refusing to overwrite" in done.stderr
    assert (out / "manifest.json").read_bytes() == before


# -- where a capture's short-lived files go -----------------------------------------------------------

def test_run_dirs_go_to_memory_unless_tmpdir_is_set(monkeypatch, tmp_path):
    from harness.cache import SHARED_MEMORY, memory_scratch
    from harness.qemu.process import private_dir

    monkeypatch.delenv("TMPDIR", raising=False)
    expected = str(SHARED_MEMORY) if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK) else None
    assert memory_scratch() == expected
    with private_dir(memory=True) as run:
        assert (expected is None or run.parent == SHARED_MEMORY) and oct(run.stat().st_mode & 0o777) == "0o700"
    assert not run.exists()
    monkeypatch.setenv("TMPDIR", str(tmp_path))       # the user's choice wins
    assert memory_scratch() is None
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)     # tempfile reads TMPDIR again
    with private_dir(memory=True) as run:
        assert run.parent == tmp_path
