"""`qabi fingerprint` on real capture bundles: the whole capture decoded, or exit 2 with one line."""

from __future__ import annotations

import json
import shutil

from conftest import DATA, run_qabi

CAPTURE = DATA / "captures" / "qemu-7.2-pc-q35-5.2-windows"


def test_fingerprint_of_a_real_capture(tmp_path):
    out = tmp_path / "fp.json"
    done = run_qabi("fingerprint", str(CAPTURE), "-o", str(out))
    assert done.returncode == 0, done.stderr
    fp = json.loads(out.read_text())
    assert fp["schema"] == 1
    assert set(fp) >= {"pci", "cpuid", "acpi", "smbios", "e820", "source"}
    assert fp["pci"]["0000:00:1f.2"]["vendor"] == "0x8086" and fp["pci"]["0000:00:1f.2"]["device"] == "0x2922"
    assert fp["source"]["machine_resolved"] == "pc-q35-5.2" and fp["source"]["guest"] == "windows"
    assert fp["smbios"]["1/0"]["fields"]["version"] == "pc-q35-5.2"


def test_tampered_capture_is_refused(tmp_path):
    cap = tmp_path / "cap"
    shutil.copytree(CAPTURE, cap)
    victim = cap / "raw" / "sys" / "firmware" / "dmi" / "tables" / "DMI"
    data = bytearray(victim.read_bytes())
    data[10] ^= 0x20
    victim.write_bytes(bytes(data))
    done = run_qabi("fingerprint", str(cap))
    assert done.returncode == 2 and done.stdout == ""
    assert "does not match its sha256" in done.stderr and done.stderr.strip().count("\n") == 0


def test_partial_capture_is_refused(tmp_path):
    cap = tmp_path / "cap"
    shutil.copytree(CAPTURE, cap)
    (cap / "manifest.json").unlink()  # what a failed capture looks like
    done = run_qabi("fingerprint", str(cap))
    assert done.returncode == 2 and "not a capture" in done.stderr


def test_missing_raw_file_is_refused(tmp_path):
    cap = tmp_path / "cap"
    shutil.copytree(CAPTURE, cap)
    (cap / "raw" / "sys" / "firmware" / "acpi" / "tables" / "DSDT").unlink()
    done = run_qabi("fingerprint", str(cap))
    assert done.returncode == 2 and "missing" in done.stderr
