"""UEFI guests: the EFI probe builds from source, the profile's platform keys are strict, the uefi,
TPM2 and BGRT decoders read real bytes (tests/data/uefi, see its README), their drifts carry the
BitLocker impact, and (real QEMU under TCG) a Windows 11 profile captures under OVMF with Secure
Boot, SMM and a TPM on swtpm."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from harness.capture import plan_capture
from harness.check import Check, RunRequest
from harness.errors import QabiError
from harness.fingerprint import acpi, uefi
from harness.fingerprint.binary import Blob
from harness.guest.profile import load_profile
from harness.qemu import resolve
from harness.transport.firmware import ovmf

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "uefi"
WIN11 = DATA / "trixie-pc-q35-9.2-win11" / "raw"
PROXMOX = DATA / "trixie-pc-q35-9.2-win11-proxmox" / "raw"
CERT = REPO / "guests" / "efi" / "keys" / "db.crt"


# -- the probe ------------------------------------------------------------------------------------
def test_efi_probe_rebuilds_byte_identical(tmp_path):
    out = tmp_path / "probe.efi"
    subprocess.run(["sh", str(REPO / "guests/efi/build.sh"), str(out)], check=True, timeout=120)
    assert out.read_bytes() == ovmf.PROBE.read_bytes()


def test_signed_probe_is_the_probe_signed_with_the_test_key(tmp_path):
    subprocess.run(["sbverify", "--cert", str(CERT), str(ovmf.PROBE_SIGNED)], check=True, timeout=60,
                   capture_output=True)
    stripped = tmp_path / "stripped.efi"
    shutil.copyfile(ovmf.PROBE_SIGNED, stripped)
    subprocess.run(["sbattach", "--remove", str(stripped)], check=True, timeout=60, capture_output=True)
    image, unsigned = bytearray(ovmf.PROBE.read_bytes()), bytearray(stripped.read_bytes())
    # sbsign pads the image to 8 bytes and rewrites the PE checksum and the certificate table entry
    pe = struct.unpack_from("<I", image, 0x3C)[0]
    for data in (image, unsigned):
        data[pe + 88:pe + 92] = bytes(4)                      # CheckSum
        data[pe + 168:pe + 176] = bytes(8)                    # data directory 4: the certificate table
    assert unsigned.rstrip(b"\0") == image.rstrip(b"\0") and len(unsigned) - len(image) < 8


# -- the profile schema ----------------------------------------------------------------------------
BASE = 'cpu = "qemu64"\nmemory = 512\nuuid = "6a1e0d3c-0000-4000-8000-0000000000aa"\n'


@pytest.mark.parametrize("extra,message", [
    ('firmware = "uboot"', "firmware = 'uboot' is not one of seabios, ovmf, ovmf-secboot"),
    ('tpm = "spi"', "tpm = 'spi' is not one of crb, tis"),
    ('hyperv = ["relaxed", "turbo"]', "hyperv: 'turbo' is not a known enlightenment"),
    ('hyperv = ["spinlocks=0x10"]', "hyperv: spinlocks=0x10 is out of range"),
    ('hyperv = ["spinlocks"]', "hyperv: spinlocks needs a value"),
    ('hyperv = ["relaxed=1"]', "hyperv: relaxed takes no value"),
    ('hyperv = ["relaxed", "relaxed"]', "hyperv: relaxed is given twice"),
    ('hyperv = ["relaxed,romfile=/etc/passwd"]', "is not a known enlightenment"),
    ('hyperv = "relaxed"', "hyperv must be a list"),
    ('smm = "yes"', "smm must be true or false"),
    ('hpet = 0', "hpet must be true or false"),
    ('families = ["arm"]', "families must be a non-empty list"),
    ('firmware = "ovmf-secboot"\nfamilies = ["q35"]', "needs smm = true"),
    ('firmware = "ovmf-secboot"\nsmm = true', 'needs families = ["q35"]'),
])
def test_platform_keys_are_strict(tmp_path, extra, message):
    path = tmp_path / "p.toml"
    path.write_text(BASE + extra + "\n")
    with pytest.raises(QabiError, match=None) as info:
        load_profile(str(path))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("cpu", ["host", "max", "qemu64,host-phys-bits=on", "Skylake-Client,host-cache-info=on"])
def test_host_cpu_passthrough_is_refused(tmp_path, cpu):
    path = tmp_path / "p.toml"
    path.write_text(BASE.replace('"qemu64"', f'"{cpu}"'))
    with pytest.raises(QabiError, match="host CPU passthrough"):
        load_profile(str(path))


def test_shipped_windows_11_profiles():
    win11, pve = load_profile("win11"), load_profile("win11-proxmox")
    assert (win11.firmware, win11.smm, win11.tpm, win11.hpet, win11.families) == \
        ("ovmf-secboot", True, "crb", False, ("q35",))
    assert (pve.firmware, pve.tpm) == ("ovmf-secboot", "tis")
    assert "tpm-crb" in win11.drivers_for("pc-q35-7.2") and "tpm-tis" in pve.drivers_for("pc-q35-7.2")
    assert dict(win11.hyperv)["spinlocks"] == "0x1fff" and "time" in dict(pve.hyperv)
    assert win11.cpu_option() == ("Skylake-Client-v4,hv-relaxed=on,hv-vapic=on,hv-spinlocks=0x1fff,hv-vpindex=on,"
                                  "hv-runtime=on,hv-synic=on,hv-stimer=on,hv-frequencies=on,hv-tlbflush=on,hv-ipi=on")
    assert win11.cpu_option(hyperv=False) == "Skylake-Client-v4"
    assert not win11.applies_to("pc-i440fx-7.2") and win11.applies_to("pc-q35-7.2")


# -- planning: a q35-only profile is not a run on i440fx --------------------------------------------
def test_q35_only_profile_is_not_planned_on_i440fx():
    check = Check(RunRequest(old="system", new="system", machines=("pc-i440fx-7.2", "pc-q35-7.2"),
                             guests=("win11", "minimal")))
    assert check.planned() == [("pc-i440fx-7.2", "minimal"), ("pc-q35-7.2", "win11"), ("pc-q35-7.2", "minimal")]


def test_q35_only_profile_asked_on_i440fx_only_is_an_error():
    check = Check(RunRequest(old="system", new="system", machines=("pc-i440fx-7.2",), guests=("win11",)))
    with pytest.raises(QabiError, match="runs on q35 machine types only"):
        check.planned()


def test_capture_of_a_q35_only_profile_on_i440fx_is_refused():
    with pytest.raises(QabiError, match="runs on q35 machine types only, not on pc-i440fx-7.2"):
        plan_capture(resolve("system"), load_profile("win11"), "pc-i440fx-7.2")


# -- decoders on real bytes -----------------------------------------------------------------------
def _table(raw: Path, name: str) -> dict:
    path = raw / "sys/firmware/acpi/tables" / name
    return acpi.decode_table(Blob(name, path.read_bytes()))


def test_tpm2_table_crb_and_tis():
    crb, tis = _table(WIN11, "TPM2"), _table(PROXMOX, "TPM2")
    assert crb["fields"]["start_method_name"] == "CRB" and crb["fields"]["control_area_address"] == "0xfed40040"
    assert tis["fields"]["start_method"] == 6 and tis["fields"]["control_area_address"] == "0x0"
    for t in (crb, tis):
        assert t["fields"]["log_area_minimum_length"] == 0x10000
        assert "log_area_start_address" in t["pointers"]          # allocated: a pointer (info)


def test_bgrt_image_address_is_a_pointer():
    bgrt = _table(WIN11, "BGRT")
    assert bgrt["fields"]["image_type"] == "bitmap" and bgrt["fields"]["status"]["displayed"] is True
    assert set(bgrt["pointers"]) == {"image_address"} and "image_address" not in bgrt["fields"]


def test_tpm_device_in_the_dsdt():
    fp = acpi.decode(WIN11)
    tpm = next(v for k, v in fp["DSDT"]["devices"].items() if k.endswith(".TPM"))
    assert tpm["hid"] == "MSFT0101" and "_DSM" in tpm["asl"] and "_CRS" in tpm["asl"] and "_STR" in tpm["asl"]


def test_uefi_category_secure_boot_keys_and_firmware():
    fp = uefi.decode(WIN11)
    assert fp["secure_boot"]["SecureBoot"] == 1 and fp["secure_boot"]["SetupMode"] == 0
    assert fp["firmware"]["vendor"] == "Debian distribution of EDK II"
    der = subprocess.run(["openssl", "x509", "-in", str(CERT), "-outform", "DER"], check=True,
                         capture_output=True, timeout=30).stdout
    ours = f"x509 {uefi_owner()} sha256:{hashlib.sha256(der).hexdigest()}"
    assert ours in fp["keys/db"]["entries"] and len(fp["keys/db"]["entries"]) == 3   # two Microsoft CAs + ours
    assert {"ACPI 2.0", "SMBIOS", "TCG2 final events"} <= set(fp["config_table"]["tables"])
    assert all(r["type"] not in ("conventional", "boot services data") for r in fp["memmap"]["ranges"])


def uefi_owner() -> str:
    from harness.transport.platform import TEST_CERT_OWNER

    return TEST_CERT_OWNER


def test_seabios_capture_has_no_uefi_entries(tmp_path):
    assert uefi.decode(tmp_path) == {}


def _without_our_db_entry(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest)
    db = next((dest / uefi.EFIVARS).glob("db-*"))
    data = db.read_bytes()
    attr, lists = data[:4], data[4:]
    out, off = b"", 0
    while off < len(lists):
        size = struct.unpack_from("<I", lists, off + 16)[0]
        chunk = lists[off:off + size]
        if uefi_owner().encode() not in str(uefi.signature_entries(chunk, "x")).encode():
            out += chunk
        off += size
    db.write_bytes(attr + out)


def test_a_changed_db_is_a_break_with_bitlocker_recovery(tmp_path):
    _without_our_db_entry(WIN11, tmp_path / "raw")
    drifts = _compare_uefi(uefi.decode(WIN11), uefi.decode(tmp_path / "raw"))
    assert drifts and all(d.subject == "uefi Secure Boot db" for d in drifts)
    assert {d.severity for d in drifts} == {"break"}
    assert {d.impact.windows for d in drifts} == {"recovery"}


def _compare_uefi(old: dict, new: dict):
    from harness.categories import get
    from harness.drift.impact import impact_for

    return [replace(d, impact=impact_for(d)) for d in get("uefi").compare(old, new)]


# -- real QEMU under TCG ----------------------------------------------------------------------------
def _swtpm_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "swtpm"], check=False, capture_output=True, text=True, timeout=10).stdout
    return {int(p) for p in out.split()}


@pytest.mark.integration
def test_windows_11_captures_under_ovmf_with_secure_boot_tpm_and_smm(tmp_path):
    """The must-show capture: trixie, pc-q35-9.2, win11 (OVMF Secure Boot with the Microsoft keys and the
    probe's test key, SMM, TPM CRB on swtpm, Hyper-V): the TPM2 table, MSFT0101, OVMF's SMBIOS and
    the Secure Boot state are in its fingerprint; swtpm is gone afterwards."""
    from harness.capture import capture
    from harness.fingerprint import fingerprint_capture

    before = _swtpm_pids()
    build = resolve("debian:trixie")
    cap = capture(plan_capture(build, load_profile("win11"), "pc-q35-9.2", timeout=120), tmp_path / "cap")
    assert _swtpm_pids() <= before                               # killed with QEMU
    argv = cap.manifest["argv"]
    assert "pc-q35-9.2,smm=on,hpet=off" in argv and "driver=cfi.pflash01,property=secure,value=on" in argv
    assert any(a.endswith("OVMF_CODE_4M.secboot.fd") and "readonly=on" in a for a in argv)
    assert cap.manifest["build"]["ovmf"]["package_version"].startswith("2025.02")
    fp = fingerprint_capture(cap)
    assert fp["acpi"]["TPM2"]["fields"]["start_method_name"] == "CRB"
    assert any(d.get("hid") == "MSFT0101" for d in fp["acpi"]["DSDT"]["devices"].values())
    bios = fp["smbios"]["0/0"]["fields"]
    assert bios["vendor"] == "Debian distribution of EDK II" and "UEFI is supported" in \
        bios["bios_characteristics_extension_2"]
    assert fp["uefi"]["secure_boot"]["SecureBoot"] == 1 and fp["uefi"]["secure_boot"]["SetupMode"] == 0
    assert len(fp["uefi"]["keys/db"]["entries"]) == 3
    assert cap.manifest["timings"]["total"] < 60


def test_firmware_from_swaps_ovmf(tmp_path):
    """--firmware-from: the new build's binary with the other build's OVMF (code and vars template)."""
    from harness.transport.platform import ovmf_images, vars_template

    trixie = resolve("debian:trixie")
    mixed = resolve("debian:trixie", firmware_from="debian:bookworm")
    code, template = ovmf_images(mixed, "ovmf-secboot")
    bookworm_dir = resolve("debian:bookworm").ovmf_dir()
    assert code.parent == template.parent == bookworm_dir != trixie.ovmf_dir()
    assert mixed.provenance()["ovmf"]["package_version"].startswith("2022.11")
    assert vars_template(mixed, "ovmf-secboot") != vars_template(trixie, "ovmf-secboot")


@pytest.mark.integration
def test_secure_boot_profile_boots_the_reference_guest_over_serial(tmp_path):
    """Under Secure Boot the serial transport boots the reference kernel with a second signature by
    the test key the vars enroll (sbsign, deterministic) and lets it load its module certificates
    (lockdown verifies every module /init loads); the guest reads the firmware's tables as the EFI
    probe's hand-off capture has them. (BGRT holds where OVMF put its boot logo, which moves with what
    it booted; the OS-written state of a booted guest is the cross-transport comparison's business.)"""
    from harness.capture import capture
    from harness.plan import SERIAL
    build, profile = resolve("debian:trixie"), load_profile("win11")
    plan = plan_capture(build, profile, "pc-q35-7.2", access=SERIAL, timeout=240)
    fw = capture(plan_capture(build, profile, "pc-q35-7.2", timeout=120), tmp_path / "fw")
    serial = capture(plan, tmp_path / "serial")
    assert serial.manifest["transport"] == "serial" and serial.manifest["complete"]
    for prefix in ("sys/firmware/acpi/tables", "sys/firmware/dmi/tables", "sys/firmware/memmap"):
        files = [{p.relative_to(c.raw).as_posix(): p.read_bytes() for p in (c.raw / prefix).rglob("*")
                  if p.is_file() and p.name != "BGRT"} for c in (fw, serial)]
        assert files[0] == files[1] and files[0], prefix
    signed = [a for a in serial.manifest["argv"] if a.endswith(".efi") and "signed-kernels" in a]
    assert signed, "the serial capture boots the signed copy of the reference kernel"


def test_a_debian_build_carries_its_suites_ovmf_and_system_the_hosts():
    import json as _json

    trixie = resolve("debian:trixie")
    assert str(trixie.ovmf_dir()) in trixie.firmware_dirs and trixie.prefix is not None
    manifest = _json.loads((Path(trixie.prefix) / "qabi-prefix.json").read_text())
    ovmf_pkg = next(p for p in manifest["packages"] if p["name"] == "ovmf")
    prov = trixie.provenance()["ovmf"]
    assert prov["package_version"] == ovmf_pkg["version"]
    assert prov["files"]["OVMF_CODE_4M.secboot.fd"] == hashlib.sha256(
        (trixie.ovmf_dir() / "OVMF_CODE_4M.secboot.fd").read_bytes()).hexdigest()
    system = resolve("system")
    assert system.ovmf_dir() == Path("/usr/share/OVMF") and system.provenance()["ovmf"]["package_version"]
    assert "/usr/share/OVMF" in " ".join(trixie.argv())          # hidden from the isolated build


PLAIN_OVMF = '''description = "plain OVMF (no Secure Boot, no TPM): the reference kernel's EFI stub boots under it"
families = ["q35"]
firmware = "ovmf"
cpu = "qemu64"
memory = 512
smp = { cpus = 1 }
uuid = "6a1e0d3c-0000-4000-8000-0000000000ab"
'''


@pytest.mark.integration
def test_serial_under_ovmf_agrees_with_the_hand_off_capture(tmp_path):
    """Under OVMF the reference kernel boots through its EFI stub; over serial it reads the same
    ACPI, SMBIOS and memory map bytes as the EFI probe's hand-off capture, and the comparison of
    the two has no drift (uefi, which the guest probe does not read, is left out with a note)."""
    from harness.capture import capture
    from harness.drift import compare
    from harness.fingerprint import fingerprint_capture
    from harness.plan import SERIAL

    path = tmp_path / "plain-ovmf.toml"
    path.write_text(PLAIN_OVMF)
    build, profile = resolve("debian:trixie"), load_profile(str(path))
    fw = capture(plan_capture(build, profile, "pc-q35-9.2", timeout=120), tmp_path / "fw")
    serial = capture(plan_capture(build, profile, "pc-q35-9.2", access=SERIAL, timeout=240), tmp_path / "serial")
    for prefix in ("sys/firmware/acpi/tables", "sys/firmware/dmi/tables", "sys/firmware/memmap"):
        files = [{p.relative_to(c.raw).as_posix(): p.read_bytes() for p in (c.raw / prefix).rglob("*") if p.is_file()}
                 for c in (fw, serial)]
        assert files[0] == files[1] and files[0], prefix
    result = compare(fingerprint_capture(fw), fingerprint_capture(serial))
    assert not result.drifts, [(d.subject, d.path) for d in result.drifts]
    assert any(n.startswith("uefi: not compared") for n in result.notes)


def test_uefi_is_left_out_only_where_the_other_transport_cannot_read_it():
    from harness.drift.uefi import across_transports

    entries = uefi.decode(WIN11)
    fw = {"source": {"transport": "firmware"}, "uefi": entries}
    serial = {"source": {"transport": "serial"}, "uefi": {}}
    assert across_transports(fw, serial)[:2] == ({}, {}) and "not compared" in across_transports(fw, serial)[2][0]
    # over the same transport, a side without UEFI entries is a change of firmware: compared
    seabios = {"source": {"transport": "firmware"}, "uefi": {}}
    assert across_transports(fw, seabios) == (entries, {}, [])
    assert _compare_uefi(entries, {}) and all(d.severity == "break" for d in _compare_uefi(entries, {})
                                              if d.key in ("secure_boot", "keys/db", "firmware"))


def test_hyperv_properties_of_the_boot_vcpu():
    from harness.drift.host import compare_hyperv, hyperv_across_transports
    from harness.fingerprint import hyperv

    fp = hyperv.decode(WIN11)
    props = fp["vcpu0"]["props"]
    assert props["hv-vendor-id"] == "Microsoft Hv" and props["hv-version-id-build"] == 14393
    assert props["hv-relaxed"] is False            # TCG: the profile's enlightenments are not applied
    assert hyperv.decode(PROXMOX) == {}            # a capture without the record
    changed = {"vcpu0": {**fp["vcpu0"], "props": {**props, "hv-version-id-build": 20348, "hv-new": True}}}
    assert {(d.path, d.severity) for d in compare_hyperv(fp, changed)} == {
        ("hv-version-id-build", "warn"), ("only-new.hv-new", "info")}
    fw, serial = {"source": {"transport": "firmware"}, "hyperv": fp}, {"source": {"transport": "serial"}, "hyperv": {}}
    assert hyperv_across_transports(fw, serial)[:2] == ({}, {})
