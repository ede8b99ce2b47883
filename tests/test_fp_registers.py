"""Registers behind the BARs and fw_cfg files: decoders on real captured bytes (tests/data/registers,
see its README), the comparisons the issue asks for, hostile bytes, a capture without them, and one
firmware capture on real QEMU under TCG."""

from __future__ import annotations

import copy
import json
import shutil
import struct
from pathlib import Path

import pytest
from conftest import DATA
from drift_samples import REGISTERS, registers_fingerprint

from harness.drift import compare
from harness.errors import DecodeError
from harness.fingerprint import fingerprint_capture, fwcfg, registers

BLK_52 = "qemu-7.2.22-pc-q35-5.2-linux-virtio"
BLK_51 = "qemu-7.2.22-pc-q35-5.1-linux-virtio"
BOOKWORM = "qemu-7.2.22-pc-q35-7.2-linux-virtio"
TRIXIE = "qemu-10.0.13-pc-q35-7.2-linux-virtio"
WINDOWS_Q35 = "qemu-7.2.22-pc-q35-7.2-windows"
WINDOWS_I440FX = "qemu-7.2.22-pc-i440fx-7.2-windows"
CATS = ("registers", "fwcfg")


def test_virtio_blk_one_queue_instead_of_two_is_named_on_00_04_0():
    """hw_compat_5_1 pins virtio-blk num-queues to 1: pc-q35-5.2 (2 queues) -> pc-q35-5.1 (1), same build."""
    drifts = compare(registers_fingerprint(BLK_52), registers_fingerprint(BLK_51), categories=CATS).drifts
    blk = {d.path: d for d in drifts if d.key == "0000:00:04.0"}
    assert blk["num_queues"].old == 2 and blk["num_queues"].new == 1 and blk["num_queues"].severity == "break"
    assert blk["config.num_queues"].change == "removed"            # VIRTIO_BLK_F_MQ withdrawn: no field
    assert blk["features.VIRTIO_BLK_F_MQ"].change == "removed" and blk["features.VIRTIO_BLK_F_MQ"].severity == "break"
    assert (blk["queue_sizes"].old, blk["queue_sizes"].new) == ("256 ×2", "256")
    assert blk["num_queues"].subject == "registers 0000:00:04.0 virtio block"
    assert blk["num_queues"].impact is not None and blk["num_queues"].impact.linux == "driver"
    scsi = {d.path: (d.old, d.new) for d in drifts if d.key == "0000:00:05.0"}
    assert scsi["config.num_queues"] == (2, 1) and scsi["num_queues"] == (4, 3)   # + control and event queues
    files = [(d.subject, d.path, d.old, d.severity) for d in drifts if d.category == "fwcfg"]
    assert files[:1] == [("fw_cfg etc/smi/supported-features", "decoded.features[1]", "CPU_HOTPLUG", "warn")]
    # the SMBIOS blob differs too (the smbios category decodes it): info; etc/acpi/tables is not in
    # the samples (tests/data/registers/README.md)
    assert sorted(f[:2] for f in files[1:]) == [("fw_cfg etc/smbios/smbios-tables", "sha256")]
    assert {f[3] for f in files[1:]} == {"info"}


def test_a_fw_cfg_file_the_new_build_adds_is_reported_by_name():
    """QEMU 10.0 (trixie) adds etc/boot/kernel for a -kernel boot; its content (qabi's payload) is not read."""
    old, new = registers_fingerprint(BOOKWORM), registers_fingerprint(TRIXIE)
    assert "etc/boot/kernel" not in old["fwcfg"]
    assert new["fwcfg"]["etc/boot/kernel"] == {"label": "etc/boot/kernel", "size": 2560, "content": "not read"}
    assert not (REGISTERS / TRIXIE / "raw/sys/firmware/qemu_fw_cfg/by_key/37/raw").exists()
    drifts = compare(old, new, categories=("fwcfg",)).drifts
    added = [d for d in drifts if d.change == "added"]
    assert [(d.subject, d.path, d.severity) for d in added] == [("fw_cfg etc/boot/kernel", "(file)", "info")]
    # the files after it move one selector (0x25 -> 0x26 …): that follows from the names, no drift each
    assert not [d for d in drifts if d.key == "etc/e820"]
    assert new["fwcfg"]["(interface)"]["selectors"] == old["fwcfg"]["(interface)"]["selectors"] == \
        "in name order from 0x0020"


def test_windows_fingerprint_has_xhci_hcsparams_and_hda_gcap_decoded():
    regs = registers_fingerprint(WINDOWS_Q35)["registers"]
    xhci = regs["0000:00:05.0"]
    assert xhci["family"] == "xhci" and xhci["HCIVERSION"] == "0x0100"
    assert xhci["HCSPARAMS1.fields"] == {"MaxSlots": 64, "MaxIntrs": 16, "MaxPorts": 8}
    assert [(c["revision"], c["compatible_port_offset"], c["compatible_port_count"])
            for c in xhci["extended_capabilities"]] == [("2.00", 5, 4), ("3.00", 1, 4)]
    hda = regs["0000:00:04.0"]
    assert hda["registers"]["GCAP"] == "0x4401" and hda["GCAP.fields"]["OSS"] == 4 and hda["GCAP.fields"]["ISS"] == 4
    assert hda["version"] == "1.0" and "WALCLK" in hda["not_compared"]
    codec = hda["codecs"]["0"]                                              # hda-duplex, through ICW/IRR
    assert (codec["vendor_id"], codec["device_id"]) == ("0x1af4", "0x0022")
    assert codec["nodes"]["0x01"]["type"] == "audio" and codec["nodes"]["0x01"]["subsystem_id"] == "0x1af40022"
    assert [n["type"] for k, n in sorted(codec["nodes"].items()) if k > "0x01"] == [
        "audio output", "pin complex", "audio input", "pin complex"]
    assert hda["registers"]["GCTL"] == "0x00000000"                         # CRST never set
    nic = regs["0000:00:03.0"]                                              # e1000e
    assert nic["eeprom_mac"] == "52:54:00:a3:00:01" and nic["eeprom"]["device_id"] == "0x10d3"
    ahci = regs["0000:00:1f.2"]
    assert ahci["CAP.fields"]["NP"] == 6 and ahci["ports"]["1"]["PxSIG"] == "0xeb140101"    # the CD-ROM: ATAPI
    qxl = regs["0000:00:02.0"]
    assert qxl["rom"]["surface0_area_size"] == 16 << 20 and qxl["modes"][0].startswith("0: 640x480x16")
    lpc = regs["0000:00:1f.0"]
    assert lpc["pmio"]["TCO_TMR"] == "0x0004" and "PM1_STS" not in lpc["pmio"] and "PM1_TMR" in lpc["not_compared"]
    i440fx = registers_fingerprint(WINDOWS_I440FX)["registers"]
    assert i440fx["0000:00:03.0"]["eeprom"]["device_id"] == "0x100e"       # e1000
    assert i440fx["0000:00:04.0"]["codecs"] == hda["codecs"]                # intel-hda (ICH6), the same codec
    assert i440fx["0000:00:01.3"]["label"] == "SMBus and PIIX4 PM"


def test_linux_virtio_fingerprint_names_every_virtio_devices_feature_bits():
    regs = registers_fingerprint(BOOKWORM)["registers"]
    virtio = {k: e for k, e in regs.items() if e["family"] == "virtio"}
    assert sorted(virtio) == [f"0000:00:0{n}.0" for n in range(3, 9)]
    for entry in virtio.values():
        assert entry["features"]["VIRTIO_F_VERSION_1"] == 32
        assert not [name for name in entry["features"] if name.startswith("bit ")], entry["label"]
        assert int(entry["device_feature"], 16) == sum(1 << b for b in entry["features"].values())
    assert virtio["0000:00:03.0"]["config"]["mac"] == "52:54:00:a1:00:01"
    assert "VIRTIO_NET_F_MAC" in virtio["0000:00:03.0"]["features"]
    assert virtio["0000:00:04.0"]["config"]["capacity"] == 2048             # the profile's 1M disk
    assert virtio["0000:00:05.0"]["config"]["max_target"] == 255
    assert virtio["0000:00:06.0"]["config"]["max_nr_ports"] == 31
    assert [e["label"] for e in virtio.values()] == ["virtio network", "virtio block", "virtio SCSI host",
                                                     "virtio console", "virtio memory balloon", "virtio entropy"]


def test_legacy_only_virtio_is_read_through_its_io_bar():
    """disable-modern=on: no virtio capabilities; features, queue sizes (QUEUE_SEL/QUEUE_NUM) and the
    device configuration (after the 20-byte legacy header, MSI-X off) from I/O BAR 0."""
    regs = registers_fingerprint("qemu-7.2.22-pc-i440fx-7.2-legacy-virtio")["registers"]
    net, blk = regs["0000:00:03.0"], regs["0000:00:04.0"]
    assert net["transport"] == blk["transport"] == "legacy"
    assert (net["num_queues"], net["queue_sizes"]) == (3, "256 ×2, 64")
    assert net["config"]["mac"] == "52:54:00:a9:00:01" and "VIRTIO_NET_F_GSO" in net["features"]
    assert "VIRTIO_F_VERSION_1" not in net["features"] and "VIRTIO_F_BAD_FEATURE" in net["features"]
    assert (blk["num_queues"], blk["config"]["capacity"], blk["config"]["seg_max"]) == (1, 2048, 254)
    assert "VIRTIO_BLK_F_SCSI" in blk["features"]


def test_the_same_build_twice_is_unchanged():
    """Nothing read changes by itself between two captures (the timers are not in the values)."""
    a, b = registers_fingerprint(BOOKWORM), registers_fingerprint(BOOKWORM)
    assert compare(a, b, categories=CATS).drifts == ()


def test_fw_cfg_decodes_known_formats():
    files = registers_fingerprint(BOOKWORM)["fwcfg"]
    assert files["(interface)"] == {"label": "fw_cfg interface", "revision": 3, "dma": True,
                                    "selectors": "in name order from 0x0020"}
    assert files["etc/e820"]["decoded"]["ranges"] == ["0xfd00000000+0x300000000 reserved", "0x0+0x20000000 RAM"]
    assert files["bootorder"]["decoded"]["lines"] == ["/rom@genroms/linuxboot_dma.bin"]
    assert files["etc/smi/supported-features"]["decoded"]["features"] == [
        "ICH9_BROADCAST", "CPU_HOTPLUG", "CPU_HOT_UNPLUG"]
    assert files["etc/system-states"]["decoded"]["states"]["S3"] == "enabled 0x1"
    assert "decoded" not in files["etc/acpi/rsdp"]                             # binary, not text


def _copy(tmp_path: Path, name: str) -> Path:
    raw = tmp_path / name / "raw"
    shutil.copytree(REGISTERS / name / "raw", raw)
    return raw


@pytest.mark.parametrize(("edit", "message"), [
    (lambda raw: (raw / "qabi/registers/0000:00:05.0/bar0").write_bytes(b"\0" * 13), "not a whole number"),
    (lambda raw: (raw / "qabi/registers/0000:00:05.0/bar0").write_bytes(struct.pack("<IB3xI", 0, 1, 0x1FF)),
     "1-byte read"),
    (lambda raw: (raw / "qabi/registers/index").write_text("0000:00:05.0 ../../etc\n"), "line 1"),
    (lambda raw: (raw / "qabi/registers/0000:00:03.0/eeprom").write_bytes(b"\1" * 7), "64 words"),
    (lambda raw: (raw / "qabi/registers/0000:00:02.0/rom").write_bytes(b"\0" * 64), "not a QXL ROM"),
    (lambda raw: (raw / "qabi/registers/0000:00:02.0/rom").write_bytes(
        struct.pack("<I20xI", 0x4F525851, 72).ljust(72, b"\0") + struct.pack("<I", 1 << 30)), "modes"),
    (lambda raw: (raw / "qabi/registers/0000:00:04.0/bar0").unlink(), "missing"),
])
def test_hostile_register_bytes_are_a_decode_error(tmp_path, edit, message):
    raw = _copy(tmp_path, WINDOWS_Q35)
    edit(raw)
    with pytest.raises(DecodeError, match=message):
        registers.decode(raw)


def test_a_function_the_transport_could_not_read_is_in_the_fingerprint_with_its_reason(tmp_path):
    raw = _copy(tmp_path, WINDOWS_Q35)
    (raw / "qabi/registers/index").write_text((raw / "qabi/registers/index").read_text()
                                              .replace("0000:00:05.0 xhci", "0000:00:05.0 unread"))
    (raw / "qabi/registers/0000:00:05.0/unread").write_text("an unassigned BAR behind a bridge\n")
    entry = registers.decode(raw)["0000:00:05.0"]
    assert entry == {"family": "unread", "label": "registers not read", "reason": "an unassigned BAR behind a bridge"}


def _e820_of(raw: Path, size: int) -> None:
    (raw / "sys/firmware/qemu_fw_cfg/by_key/37/raw").write_bytes(b"\0" * size)
    (raw / "sys/firmware/qemu_fw_cfg/by_key/37/size").write_text(f"{size}\n")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda raw: (raw / "sys/firmware/qemu_fw_cfg/by_key/37/raw").write_bytes(b"\0" * 41), "40"),
    (lambda raw: (raw / "sys/firmware/qemu_fw_cfg/by_key/37/size").write_text("-1\n"), "not a decimal"),
    (lambda raw: (raw / "sys/firmware/qemu_fw_cfg/by_key/38/name").write_text("etc/e820\n"), "repeated"),
    (lambda raw: (raw / "sys/firmware/qemu_fw_cfg/by_key/x").mkdir(), "unexpected"),
    (lambda raw: _e820_of(raw, 39), "20-byte entries"),
])
def test_hostile_fw_cfg_bytes_are_a_decode_error(tmp_path, edit, message):
    raw = _copy(tmp_path, BOOKWORM)
    assert (raw / "sys/firmware/qemu_fw_cfg/by_key/37/name").read_text() == "etc/e820\n"
    edit(raw)
    with pytest.raises(DecodeError, match=message):
        fwcfg.decode(raw)


def test_a_capture_without_them_is_not_collected_and_not_compared_with_a_note():
    """A serial capture (tests/data/captures) has no registers or fw_cfg: its fingerprint says so,
    and against a firmware fingerprint those categories are left out with a note, not reported
    as every register removed."""
    serial = fingerprint_capture(DATA / "captures" / "qemu-7.2-pc-q35-5.2-windows")
    assert "registers" not in serial and serial["source"]["not_collected"] == ["registers", "fwcfg"]
    firmware = copy.deepcopy(serial)
    firmware.update(registers_fingerprint(WINDOWS_Q35))
    firmware["source"] = {**serial["source"], "transport": "firmware"}
    del firmware["source"]["not_collected"]
    comparison = compare(serial, firmware)
    assert "registers" not in comparison.categories and "fwcfg" not in comparison.categories
    assert not [d for d in comparison.drifts if d.category in CATS]
    assert any(n.startswith("registers: not compared: the old capture (serial transport)") for n in comparison.notes)
    both = compare(firmware, copy.deepcopy(firmware))
    assert {"registers", "fwcfg"} <= set(both.categories) and both.drifts == ()


@pytest.mark.integration
def test_a_firmware_capture_reads_registers_and_fw_cfg_and_lists_them_in_the_manifest(tmp_path):
    from harness.capture import capture, load_capture, plan_capture
    from harness.guest.profile import load_profile
    from harness.qemu import resolve

    build = resolve("debian:bookworm")
    cap = capture(plan_capture(build, load_profile("linux-virtio"), "pc-q35-5.1"), tmp_path / "cap")
    cap = load_capture(cap.path)
    manifest = json.loads((cap.path / "manifest.json").read_text())
    assert "raw/qabi/registers/0000:00:04.0/virtio-queues" in manifest["files"]
    assert "raw/sys/firmware/qemu_fw_cfg/by_key/37/raw" in manifest["files"]
    fp = fingerprint_capture(cap)
    # another boot, the same values as the committed sample of this build and machine type: nothing
    # read changes by itself, and what the firmware's driver leaves is the same every boot
    assert fp["registers"] == registers_fingerprint(BLK_51)["registers"]
    sample = registers_fingerprint(BLK_51)["fwcfg"]
    assert fp["fwcfg"]["etc/acpi/tables"].pop("sha256") and sample["etc/acpi/tables"].pop("content") == "not read"
    assert fp["fwcfg"] == sample           # the sample leaves out that one file's bytes (its README)
    assert fp["registers"]["0000:00:04.0"]["num_queues"] == 1
