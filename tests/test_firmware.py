"""The firmware transport: the payload builds from source, the host-side walkers refuse bad
pointers and loops, and (real QEMU under TCG) a firmware capture sees what the serial capture sees."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
from pathlib import Path

import pytest

from harness.capture import capture, load_capture, plan_capture
from harness.drift import compare
from harness.errors import CaptureError
from harness.fingerprint import fingerprint_capture
from harness.guest.profile import load_profile, profile_names
from harness.plan import GuestAccess
from harness.qemu import resolve
from harness.transport import firmware
from harness.transport.base import get_transport
from harness.transport.firmware import seabios

REPO = Path(__file__).resolve().parents[1]
FIRMWARE = GuestAccess(transport="firmware")
MACHINES = ("pc-i440fx-7.2", "pc-q35-7.2")


# -- payload -------------------------------------------------------------------------------------

@pytest.mark.skipif(not all(shutil.which(t) for t in ("as", "ld", "objcopy")), reason="needs binutils")
def test_payload_rebuilds_byte_identical(tmp_path):
    out = tmp_path / "payload.bin"
    subprocess.run(["sh", str(REPO / "guests/payload/build.sh"), str(out)], check=True, timeout=60)
    assert out.read_bytes() == firmware.PAYLOAD.read_bytes()


def test_payload_is_a_bzimage_setup_header():
    data = firmware.PAYLOAD.read_bytes()
    assert data[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", data, 0x206)[0] == 0x0202
    assert data[0x211] & 1                                   # LOADED_HIGH: setup at 0x10000
    assert len(data) > (data[0x1F1] + 1) * 512               # a protected-mode part, as QEMU needs


def test_transport_is_registered():
    assert get_transport("firmware") is firmware.TRANSPORT
    assert not firmware.TRANSPORT.needs_nic


# -- host-side walkers ---------------------------------------------------------------------------

def test_e820_sanitized_like_linux():
    entries = [(0x100000, 0x1000, 1), (0, 0x9fc00, 1), (0x9fc00, 0x400, 2), (0x101000, 0x1000, 1),
               (0x100800, 0x100, 2), (0x200000, 0, 1)]
    assert firmware.sanitize_e820(entries) == [
        (0, 0x9fc00, 1), (0x9fc00, 0x400, 2), (0x100000, 0x800, 1), (0x100800, 0x100, 2), (0x100900, 0x1700, 1)]


def test_table_pointers_out_of_ram_and_past_memory_are_refused():
    mem = firmware.Memory.from_e820([(0, 0x9fc00, 1), (0x9fc00, 0x400, 2), (0xf0000, 0x10000, 2),
                                     (0x100000, 0xff00000, 1), (0x10000000, 0x20000, 2),
                                     (0xfffc0000, 0x40000, 2)])
    mem.check("t", 0x1001ff00, 0x100)                        # firmware data at the top of RAM
    with pytest.raises(CaptureError, match="outside guest RAM"):
        mem.check("RSDT", 0xfffc0000, 36)
    with pytest.raises(CaptureError, match="runs past guest memory"):
        mem.check("DSDT", 0x1001ff00, 0x1000)


class _Bridges:
    """Config space of two bridges whose secondary buses point at each other (a unit test of the
    walker's loop guard; real QEMU cannot be configured into a loop)."""

    def __init__(self) -> None:
        self.funcs = {}
        for bus, secondary in ((0, 1), (1, 1)):
            cfg = bytearray(256)
            cfg[0:4] = struct.pack("<HH", 0x1b36, 0x0001)
            cfg[0x0E] = 1
            cfg[0x18:0x1B] = bytes((bus, secondary, secondary))
            self.funcs[bus << 8 | 3 << 3] = bytes(cfg)

    def config_dwords(self, bdf: int, count: int = 64) -> bytes:
        return self.funcs.get(bdf, b"\xff" * 256)[:4 * count]

    def configs(self, bdfs: list[int], count: int = 64, ecam: int | None = None) -> list[bytes]:
        return [self.config_dwords(bdf, count) for bdf in bdfs]


def test_looping_bridge_chain_is_an_error():
    with pytest.raises(CaptureError, match="looping bridge chain"):
        firmware.pci_records(_Bridges(), None, {})  # type: ignore[arg-type]


# -- real QEMU -----------------------------------------------------------------------------------

def _capture(spec: str, machine: str, guest: str, out: Path, access: GuestAccess = FIRMWARE, timeout: float = 120):
    build = resolve(spec)
    return capture(plan_capture(build, load_profile(guest), machine, access=access, timeout=timeout), out)


def _files(cap, prefix: str) -> dict[str, bytes]:
    return {p.relative_to(cap.raw).as_posix(): p.read_bytes() for p in (cap.raw / prefix).rglob("*") if p.is_file()}


@pytest.mark.integration
def test_firmware_capture_bundle(tmp_path):
    cap = _capture("system", "pc-q35-7.2", "minimal", tmp_path / "fw")
    assert cap.manifest["transport"] == "firmware"
    assert cap.manifest["probe"]["cpuid_vcpus"] == "0"
    load_capture(cap.path)                                   # every sha256 verified
    assert any("-qtest" == a for a in cap.manifest["argv"]) and "-kernel" in cap.manifest["argv"]
    fp = fingerprint_capture(cap)
    assert fp["source"]["transport"] == "firmware"


@pytest.mark.integration
def test_payload_that_never_signals_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(seabios, "MARKER", 0x12345678)
    with pytest.raises(CaptureError, match="never signalled completion") as info:
        _capture("system", "pc-i440fx-7.2", "minimal", tmp_path / "fw", timeout=3)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "fw" / "manifest.json").exists() and (tmp_path / "fw" / "FAILED").exists()


# the SeaBIOS profiles (the reference kernel under OVMF over serial is not compared here yet)
EQUIVALENCE = [(s, m, g) for s in ("debian:bookworm", "debian:trixie") for m in MACHINES for g in profile_names()
               if not load_profile(g).uefi and load_profile(g).applies_to(m)]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("spec,machine,guest", EQUIVALENCE, ids=[f"{s[7:]}-{m}-{g}" for s, m, g in EQUIVALENCE])
def test_firmware_sees_what_the_serial_guest_sees(tmp_path, spec, machine, guest):
    fw = _capture(spec, machine, guest, tmp_path / "fw")
    serial = _capture(spec, machine, guest, tmp_path / "serial", access=GuestAccess(transport="serial"))
    for prefix in ("sys/firmware/acpi/tables", "sys/firmware/dmi/tables", "sys/firmware/memmap"):
        assert _files(fw, prefix) == _files(serial, prefix), prefix
    a, b = fingerprint_capture(fw), fingerprint_capture(serial)
    if (fw.raw / "dev/cpu/0/cpuid").read_bytes() != (serial.raw / "dev/cpu/0/cpuid").read_bytes():
        # the one explained difference: SYSCALL on an Intel model (windows: Nehalem) under QEMU >= 10.0
        # is reported only in 64-bit mode; the payload runs CPUID in real mode
        diff = [k for k in a["cpuid"] if a["cpuid"][k] != b["cpuid"].get(k)]
        assert diff == ["0/0x80000001/0x0"], diff
        assert int(a["cpuid"][diff[0]]["edx"], 16) ^ int(b["cpuid"][diff[0]]["edx"], 16) == 1 << 11
    result = compare(b, a, categories=("cpuid",))             # across transports: vCPU 0, that bit out
    assert result.drifts == (), [d.subject for d in result.drifts]
    assert a["pci"].keys() == b["pci"].keys()
    for key, entry in a["pci"].items():
        other = b["pci"][key]
        for field in ("vendor", "device", "class", "revision", "subsystem_vendor", "subsystem", "header_type",
                      "interrupt_pin", "rom_size"):
            assert entry.get(field) == other.get(field), (key, field)
        assert [(x["index"], x["kind"], x["size"]) for x in entry.get("bars", [])] == \
               [(x["index"], x["kind"], x["size"]) for x in other.get("bars", [])], key
        for caps in ("capabilities", "extended_capabilities"):
            assert [(c["id"], c["offset"]) for c in entry.get(caps) or []] == \
                   [(c["id"], c["offset"]) for c in other.get(caps) or []], (key, caps)


def _wrapper(tmp_path: Path, extra: str) -> str:
    real = shutil.which("qemu-system-x86_64")
    assert real
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(f'#!/bin/sh\nexec {real} {extra} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["firmware", "serial"])
def test_injected_read_only_capability_change_is_reported(tmp_path, transport):
    """virtio-net's MSI-X table size (Message Control bits 10:0, read-only) from 4 to 6 vectors."""
    access = GuestAccess(transport=transport)
    old = _capture("system", "pc-i440fx-7.2", "linux-virtio", tmp_path / "old", access=access)
    new = _capture(_wrapper(tmp_path, "-global virtio-net-pci.vectors=6"), "pc-i440fx-7.2", "linux-virtio",
                   tmp_path / "new", access=access)
    drifts = compare(fingerprint_capture(old), fingerprint_capture(new), categories=("pci",)).drifts
    hit = [d for d in drifts if d.subject.startswith("pci 0000:00:03.0") and "MSI-X" in d.path]
    assert hit, [f"{d.subject} {d.path}" for d in drifts]


def test_no_orphaned_qemu_after_failed_capture():
    mine = os.getpid()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat_line = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            assert not (" qemu-system" in stat_line and int(stat_line.rsplit(")", 1)[1].split()[1]) == mine)


# -- the real releases: the same drift subjects over firmware as over serial --------------------

BULLSEYE = "debian:bullseye=1:5.2+dfsg-11+deb11u3"
RELEASES = [("debian:bookworm", "debian:trixie", "pc-i440fx-7.2"), ("debian:trixie", "debian:sid", "pc-i440fx-7.2"),
            ("debian:trixie", "debian:sid", "pc-q35-7.2"), (BULLSEYE, "debian:bookworm", "pc-q35-5.2")]
# What the firmware transport sees beyond the guest probe, outside PCI (which may always show more):
# SYSCALL (leaf 0x80000001 edx bit 11) on Intel models is reported only in 64-bit mode by QEMU 10.0
# and later; the payload reads CPUID in real mode, the probe in 64-bit Linux.
FIRMWARE_ONLY = {"cpuid leaf 0x80000001 edx bit 11 (syscall)"}


def _read_only_at_handoff() -> set[str]:
    """The categories only the firmware transport collects (registers, fw_cfg): a serial capture has none."""
    from harness.categories import registry

    return {name for name, category in registry().items() if category.collected is not None}


def _subjects(old: str, new: str, machine: str, guest: str, transport: str) -> set[tuple[str, str]]:
    from harness.check import captured, load_waivers_option

    access = GuestAccess(transport=transport)
    fps = [fingerprint_capture(captured(plan_capture(resolve(spec), load_profile(guest), machine, access=access,
                                                     timeout=600))) for spec in (old, new)]
    return {(d.category, d.subject) for d in compare(*fps, load_waivers_option(None)).drifts}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("old,new,machine", RELEASES, ids=[f"{o.split(':')[1].split('=')[0]}-{n[7:]}-{m}"
                                                            for o, n, m in RELEASES])
def test_real_releases_give_the_same_drift_subjects(old, new, machine):
    for guest in (g for g in profile_names() if not load_profile(g).uefi and load_profile(g).applies_to(machine)):
        serial = _subjects(old, new, machine, guest, "serial")
        fw = _subjects(old, new, machine, guest, "firmware")
        lost = sorted(s for s in serial - fw)
        more = sorted(s for s in fw - serial
                      if s[0] != "pci" and s[0] not in _read_only_at_handoff() and s[1] not in FIRMWARE_ONLY)
        assert (lost, more) == ([], []), guest
        print(f"{old} -> {new} {machine} {guest}: serial {len(serial)} subjects, firmware {len(fw)} "
              f"(+{sorted(fw - serial)})")


# -- the instruction-count clock SeaBIOS runs on under TCG -------------------------------------------

@pytest.mark.integration
def test_seabios_clock_changes_no_byte_and_keys_the_capture(tmp_path, monkeypatch):
    """A USB-heavy profile (xHCI + tablet, the waits the clock skips) gives the same raw bytes on the
    instruction-count clock as on the host's clock; the clock is in the argv and in the cache key."""
    on = _capture("debian:bookworm", "pc-q35-7.2", "linux-virtio", tmp_path / "on")
    argv = on.manifest["argv"]
    assert argv[argv.index("-icount") + 1] == "shift=7"
    monkeypatch.setattr(firmware, "SEABIOS_CLOCK", ())
    off = _capture("debian:bookworm", "pc-q35-7.2", "linux-virtio", tmp_path / "off")
    assert "-icount" not in off.manifest["argv"]
    assert _files(on, "") == _files(off, "")
    assert "-icount shift=7" in on.manifest["inputs"]["reads"]


def test_seabios_clock_only_under_tcg_and_seabios(tmp_path):
    build = resolve("system")
    for guest, accel, clocked in (("minimal", "tcg", True), ("minimal", "kvm", False), ("win11", "tcg", False)):
        plan = plan_capture(build, load_profile(guest), "pc-q35-7.2", accel=accel, access=FIRMWARE)
        args = firmware.TRANSPORT.setup(plan, tmp_path, tmp_path / "console.log").args
        assert ("-icount" in args) is clocked, (guest, accel)
