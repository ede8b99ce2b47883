"""ACPI decoder on real captures: header fields, FADT/MADT/HPET/MCFG/WAET/FACS bodies, the AML
namespace index (iasl), determinism, and DecodeError on malformed tables."""

from __future__ import annotations

import functools
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA

from harness.drift.asl import split_table
from harness.errors import DecodeError, ToolMissing
from harness.fingerprint import acpi, aml
from harness.fingerprint.acpi_names import resolve
from harness.fingerprint.binary import Blob

CAPTURES = DATA / "captures"


def _complete(path: Path) -> bool:
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(manifest.get("complete")) and (path / "raw" / acpi.TABLES).is_dir()


NAMES = sorted(p.name for p in CAPTURES.iterdir() if _complete(p)) if CAPTURES.is_dir() else []


def manifest(name: str) -> dict[str, Any]:
    return json.loads((CAPTURES / name / "manifest.json").read_text())  # type: ignore[no-any-return]


@functools.cache
def _decoded(name: str) -> str:
    return json.dumps(acpi.decode(CAPTURES / name / "raw"))


def decoded(name: str) -> dict[str, Any]:
    """A fresh copy of the capture's decoded ACPI (decoded once per test session)."""
    return json.loads(_decoded(name))  # type: ignore[no-any-return]


def family(name: str) -> str:
    return str(manifest(name)["machine"]["family"])


def cpus(name: str) -> int:
    return int(manifest(name)["profile"]["smp"]["cpus"])


def table_path(name: str, key: str) -> Path:
    return CAPTURES / name / "raw" / acpi.TABLES / key


def test_there_are_captures() -> None:
    assert NAMES, "no complete captures with ACPI tables under tests/data/captures"
    assert {family(n) for n in NAMES} == {"i440fx", "q35"}


# -- headers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_table_file_is_an_entry_with_a_valid_header(name: str) -> None:
    d = decoded(name)
    files = sorted(p.relative_to(table_path(name, "")).as_posix()
                   for p in table_path(name, "").rglob("*") if p.is_file())
    assert sorted(d) == files
    for key, entry in d.items():
        assert entry["label"] == key
        head = entry["header"]
        assert head["length"] == table_path(name, key).stat().st_size
        assert re.sub(r"\d+$", "", key.rsplit("/", 1)[-1]) == head["signature"]
        if key == "FACS":
            assert head["checksum_valid"] is None
            continue
        assert head["checksum_valid"] is True, key
        assert head["oem_id"] == "BOCHS"
        assert head["oem_table_id"].startswith("BXPC")
        assert head["creator_id"] == "BXPC"
        assert set(head) == {"signature", "length", "revision", "checksum_valid", "oem_id", "oem_table_id",
                             "oem_revision", "creator_id", "creator_revision"}
        assert set(entry) >= {"label", "header", "fields", "pointers"}


@pytest.mark.parametrize("name", NAMES)
def test_qemu_pc_tables_are_present(name: str) -> None:
    d = decoded(name)
    assert {"DSDT", "FACP", "FACS", "APIC", "HPET", "WAET"} <= set(d)
    assert ("MCFG" in d) == (family(name) == "q35")


# -- FADT ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fadt(name: str) -> None:
    facp = decoded(name)["FACP"]
    f, p = facp["fields"], facp["pointers"]
    assert f["sci_int"] == 9
    assert f["smi_cmd"] == "0xb2"
    assert f["pm1a_evt_blk"] == "0x600" and f["pm1a_cnt_blk"] == "0x604" and f["pm_tmr_blk"] == "0x608"
    assert f["pm_tmr_len"] == 4 and f["pm1_evt_len"] == 4 and f["pm1_cnt_len"] == 2
    assert f["century"] == "0x32"
    assert f["preferred_pm_profile"] == "Unspecified"
    assert f["flags"]["wbinvd"] is True and f["flags"]["hw_reduced_acpi"] is False
    assert isinstance(f["iapc_boot_arch"]["8042"], bool)
    # allocation-only pointers are kept out of the fields
    assert "dsdt" in p and "firmware_ctrl" in p
    assert not {"dsdt", "firmware_ctrl", "x_dsdt", "x_firmware_ctrl"} & set(f)
    if family(name) == "q35":
        assert facp["header"]["length"] == 244 and facp["header"]["revision"] == 3
        assert (f["acpi_enable"], f["acpi_disable"]) == ("0x2", "0x3")        # ICH9 LPC
        assert f["gpe0_blk"] == "0x620" and f["gpe0_blk_len"] == 16
        assert f["reset_reg"] == {"space_id": "SystemIO", "bit_width": 8, "bit_offset": 0,
                                  "access_size": "undefined", "address": "0xcf9"}
        assert f["reset_value"] == "0xf"
        assert f["flags"]["reset_reg_sup"] is True
        assert f["x_pm_tmr_blk"]["address"] == "0x608" and f["x_pm_tmr_blk"]["bit_width"] == 32
        assert "x_dsdt" in p
    else:
        # i440fx keeps the ACPI 1.0 FADT (116 bytes): no reset register, no X_ fields
        assert facp["header"]["length"] == 116 and facp["header"]["revision"] == 1
        assert (f["acpi_enable"], f["acpi_disable"]) == ("0xf1", "0xf0")      # PIIX4 PM
        assert f["gpe0_blk"] == "0xafe0" and f["gpe0_blk_len"] == 4
        assert "reset_reg" not in f and "x_pm_tmr_blk" not in f and "x_dsdt" not in p


# -- MADT, HPET, MCFG, WAET, FACS ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_madt_lists_one_local_apic_per_vcpu_and_one_io_apic(name: str) -> None:
    f = decoded(name)["APIC"]["fields"]
    assert f["local_apic_address"] == "0xfee00000"
    assert f["flags"]["pcat_compat"] is True
    entries = f["entries"]
    local = [e for e in entries if e["name"] in ("Processor Local APIC", "Processor Local x2APIC")]
    assert len(local) == cpus(name)
    assert all(e["flags"]["enabled"] for e in local)
    ids = [e.get("apic_id", e.get("x2apic_id")) for e in local]
    assert len(set(ids)) == len(ids)
    io = [e for e in entries if e["type"] == 1]
    assert len(io) == 1
    assert io[0]["address"] == "0xfec00000" and io[0]["gsi_base"] == 0
    overrides = {e["source"]: e for e in entries if e["type"] == 2}
    assert overrides[0]["gsi"] == 2
    assert overrides[9]["flags"] == {"polarity": "active_high", "trigger_mode": "level"}
    nmi = [e for e in entries if e["type"] == 4]
    assert nmi and nmi[0]["processor_uid"] == "0xff" and nmi[0]["lint"] == 1
    assert sum(e["length"] for e in entries) + 44 == decoded(name)["APIC"]["header"]["length"]


@pytest.mark.parametrize("name", NAMES)
def test_hpet(name: str) -> None:
    f = decoded(name)["HPET"]["fields"]
    block = f["event_timer_block_id"]
    assert block["pci_vendor_id"] == "0x8086"
    assert block["comparators"] == 3
    assert block["counter_size_64bit"] is True and block["legacy_replacement"] is True
    assert f["base_address"]["space_id"] == "SystemMemory"
    assert f["base_address"]["address"] == "0xfed00000"
    assert f["page_protection"] == "none"


@pytest.mark.parametrize("name", [n for n in NAMES if family(n) == "q35"])
def test_q35_mcfg_has_one_allocation(name: str) -> None:
    allocations = decoded(name)["MCFG"]["fields"]["allocations"]
    assert allocations == [{"base_address": "0xb0000000", "segment": 0, "start_bus": 0, "end_bus": 255}]


@pytest.mark.parametrize("name", NAMES)
def test_waet_and_facs(name: str) -> None:
    d = decoded(name)
    assert d["WAET"]["fields"]["flags"] == {"rtc_good": False, "acpi_pm_timer_good": True}
    facs = d["FACS"]
    assert facs["header"]["length"] == 64
    assert facs["fields"]["flags"]["s4bios_f"] is False
    assert "firmware_waking_vector" in facs["pointers"]


# -- AML ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_dsdt_namespace(name: str) -> None:
    dsdt = decoded(name)["DSDT"]
    devices = dsdt["devices"]
    pci0 = devices["\\_SB.PCI0"]
    if family(name) == "q35":
        assert (pci0["hid"], pci0["cid"]) == ("PNP0A08", "PNP0A03")
    else:
        assert (pci0["hid"], pci0["cid"]) == ("PNP0A03", None)
    assert pci0["uid"] == "0x0"
    assert "_CRS" in pci0["names"] and "_HID" in pci0["names"]
    assert pci0["asl"].startswith("Device (PCI0)\n{") and pci0["asl"].endswith("}")
    # the ISA bridge's PNP devices, under the bridge whatever QEMU calls it (ISA, S08, SF8)
    by_hid = {e["hid"]: path for path, e in devices.items() if e["hid"]}
    for hid in ("PNP0303", "PNP0F13", "PNP0501", "PNP0B00"):
        assert by_hid[hid].startswith("\\_SB.PCI0."), hid
    assert devices[by_hid["PNP0501"]]["uid"] == "0x1"
    assert by_hid["PNP0103"] == "\\_SB.HPET"
    assert devices["\\_SB.CPUS"]["hid"] == "ACPI0010"
    cpu_objects = [p for p in devices if re.fullmatch(r"\\_SB\.CPUS\.C[0-9A-F]{3}", p)]
    assert len(cpu_objects) == cpus(name)
    for path, entry in devices.items():
        assert re.fullmatch(r"\\[A-Z0-9_]+(\.[A-Z0-9_]+)*", path), path
        assert not any(seg.endswith("_") and seg.strip("_") for seg in path[1:].split(".")), path
        assert entry["asl"].startswith(f"{entry['kind']} (")
        for method, text in entry["methods"].items():
            assert re.match(rf"Method \((\\[A-Z0-9_.]+\.)?{method}_*,", text), (path, method)
            assert text.endswith("}")
    # PCI slots carry their _ADR; the ASL text of the whole table is there, without the banner
    assert devices["\\_SB.PCI0.S00"]["adr"] == "0x0"
    assert dsdt["asl"].startswith('DefinitionBlock ("", "DSDT", 1, "BOCHS ", ')
    assert "Intel ACPI Component Architecture" not in dsdt["asl"]
    assert "Disassembly of" not in dsdt["asl"]
    assert dsdt["asl"].rstrip().endswith("}")


@pytest.mark.parametrize("name", NAMES)
def test_decoding_is_deterministic(name: str) -> None:
    assert acpi.decode(CAPTURES / name / "raw") == decoded(name)


def _pair(old: str, new: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if old not in NAMES or new not in NAMES:
        pytest.skip(f"needs captures {old} and {new}")
    return decoded(old), decoded(new)


def test_real_drift_between_72_and_100_on_q35_52() -> None:
    """What the product hunts for: same machine type, two QEMU builds, different guest ABI."""
    old, new = _pair("qemu-7.2-pc-q35-5.2-windows", "qemu-10.0-pc-q35-5.2-windows")
    assert (old["APIC"]["header"]["revision"], new["APIC"]["header"]["revision"]) == (1, 3)
    assert old["DSDT"]["devices"]["\\_SB.PCI0"]["adr"] == "0x0"
    assert new["DSDT"]["devices"]["\\_SB.PCI0"]["adr"] is None
    assert "EDSM" in new["DSDT"]["devices"]["\\_SB.PCI0"]["methods"]
    assert "EDSM" not in old["DSDT"]["devices"]["\\_SB.PCI0"]["methods"]
    assert set(new["DSDT"]["devices"]) - set(old["DSDT"]["devices"]) == {"\\_SB.PCI0.SFA"}
    assert old["FACP"]["fields"] == new["FACP"]["fields"]


def test_real_drift_between_52_and_72_on_i440fx_52() -> None:
    old, new = _pair("qemu-5.2-pc-i440fx-5.2-legacy", "qemu-7.2-pc-i440fx-5.2-legacy")
    assert old["DSDT"]["header"]["oem_table_id"] == "BXPCDSDT"
    assert new["DSDT"]["header"]["oem_table_id"] == "BXPC"
    assert "\\_SB.PCI0.ISA.KBD" in old["DSDT"]["devices"]
    assert "\\_SB.PCI0.ISA.KBD" not in new["DSDT"]["devices"]
    assert "\\_SB.PCI0.S08.KBD" in new["DSDT"]["devices"]
    assert "_DSM" in new["DSDT"]["devices"]["\\_SB.PCI0.S18"]["methods"]


def test_real_drift_between_100_and_111_on_q35_52() -> None:
    """11.1 describes COM1's interrupt as level-triggered, active-low and shared on pc-q35-5.2."""
    old, new = _pair("qemu-10.0-pc-q35-5.2-windows", "qemu-11.1-pc-q35-5.2-windows")
    path = "\\_SB.PCI0.SF8.COM1"
    assert "IRQNoFlags ()" in old["DSDT"]["devices"][path]["asl"]
    assert "IRQ (Level, ActiveLow, Shared, )" in new["DSDT"]["devices"][path]["asl"]
    assert "_INI" in old["DSDT"]["devices"]["\\_SB.PCI0.PRES"]["methods"]
    assert "_INI" not in new["DSDT"]["devices"]["\\_SB.PCI0.PRES"]["methods"]
    assert set(old["DSDT"]["devices"]) == set(new["DSDT"]["devices"])


# -- SSDTs, external references, dynamic tables --------------------------------------------------------


def _table(signature: bytes, oem_table_id: bytes, body: bytes, revision: int = 2) -> bytes:
    head = bytearray(signature + struct.pack("<IBB", 36 + len(body), revision, 0) + b"BOCHS "
                     + oem_table_id.ljust(8) + struct.pack("<I", 1) + b"BXPC" + struct.pack("<I", 1))
    data = head + body
    data[9] = (-sum(data)) & 0xFF
    return bytes(data)


def _compile(tmp: Path, name: str, source: str) -> bytes:
    (tmp / f"{name}.asl").write_text(source)
    subprocess.run([shutil.which("iasl") or "iasl", "-p", name, f"{name}.asl"], cwd=tmp, check=True,
                   capture_output=True, timeout=60)
    return (tmp / f"{name}.aml").read_bytes()


SSDT1_ASL = r"""
DefinitionBlock ("", "SSDT", 2, "BOCHS ", "QABI1", 1)
{
    External (\_SB.PCI0, DeviceObj)
    Scope (\_SB)
    {
        Method (QFOO, 2, NotSerialized)
        {
            Return (Arg0)
        }
    }
    Scope (\_SB.PCI0)
    {
        Device (QDEV)
        {
            Name (_HID, "QEMU9999")
            Name (_CID, Package () { EisaId ("PNP0C02"), "QEMU{,}X" })
            Name (_UID, "a}b{c")  /* braces in strings and comments: { */
            Name (_SUN, 0x2A)
            Method (_STA, 0, NotSerialized)
            {
                Name (LOCL, One)
                Return (0x0F)
            }
            Device (^^QSIB)
            {
                Name (_ADR, 0x00050000)
            }
        }
    }
}
"""

DYN_ASL = r"""
DefinitionBlock ("", "SSDT", 2, "BOCHS ", "QABIDYN", 1)
{
    Scope (\_SB)
    {
        Device (QDYN)
        {
            Name (_HID, EisaId ("PNP0C0F"))
        }
    }
}
"""


def _ssdt2() -> bytes:
    """SSDT calling \\_SB.QFOO (defined in SSDT1) with two arguments, without any External
    declaration: only the other tables can tell the disassembler how many arguments it takes."""
    method = b"\x14\x0dQBAR\x00\xa4QFOO\x01\x00"
    return _table(b"SSDT", b"QABI2", b"\x10\x14\\_SB_" + method)


@pytest.fixture
def capture_with_ssdts(tmp_path: Path) -> Path:
    q35 = [n for n in NAMES if family(n) == "q35"]
    if not q35:
        pytest.skip("no q35 capture")
    raw = tmp_path / "raw"
    shutil.copytree(CAPTURES / q35[-1] / "raw" / acpi.TABLES, raw / acpi.TABLES)
    tables = raw / acpi.TABLES
    (tables / "SSDT1").write_bytes(_compile(tmp_path, "s1", SSDT1_ASL))
    (tables / "SSDT2").write_bytes(_ssdt2())
    (tables / "dynamic").mkdir()
    (tables / "dynamic" / "SSDT1").write_bytes(_compile(tmp_path, "dyn", DYN_ASL))
    return raw


def test_ssdts_are_decompiled_with_their_external_references_resolved(capture_with_ssdts: Path) -> None:
    d = acpi.decode(capture_with_ssdts)
    assert {"SSDT1", "SSDT2", "dynamic/SSDT1", "DSDT"} <= set(d)
    assert d["dynamic/SSDT1"]["label"] == "dynamic/SSDT1"
    assert d["dynamic/SSDT1"]["devices"]["\\_SB.QDYN"]["hid"] == "PNP0C0F"
    ssdt2 = d["SSDT2"]["asl"]
    assert "QFOO (One, Zero)" in ssdt2
    assert "Unknown method" not in ssdt2 and "guessing" not in ssdt2
    # …which it needs: on its own the disassembler takes QFOO for an integer and its arguments
    # for separate statements
    alone = aml.disassemble({"SSDT2": ("SSDT2", _ssdt2())})["SSDT2"]
    assert "QFOO (One, Zero)" not in alone and "External (QFOO, IntObj)" in alone
    assert not d["SSDT2"]["devices"]


def test_ssdt_namespace_index(capture_with_ssdts: Path) -> None:
    devices = acpi.decode(capture_with_ssdts)["SSDT1"]["devices"]
    assert set(devices) == {"\\_SB.PCI0.QDEV", "\\_SB.QSIB"}
    qdev = devices["\\_SB.PCI0.QDEV"]
    assert qdev["hid"] == "QEMU9999"
    assert qdev["cid"] == ["PNP0C02", "QEMU{,}X"]
    assert qdev["uid"] == "a}b{c"
    assert qdev["sun"] == "0x2a"
    assert qdev["adr"] is None
    assert qdev["names"] == ["_HID", "_CID", "_UID", "_SUN"]      # LOCL is a method local
    assert list(qdev["methods"]) == ["_STA"]
    assert "Device (^^QSIB)" in qdev["asl"]
    assert devices["\\_SB.QSIB"]["adr"] == "0x50000"


def test_asl_index_resolves_scopes_carets_and_padding() -> None:
    asl = r"""DefinitionBlock ("", "SSDT", 1, "BOCHS ", "X", 0x00000001)
{
    External (_SB_.PCI0, DeviceObj)
    Scope (_SB)
    {
        Scope (PCI0)
        {
            Device (S08_)
            {
                Name (_ADR, 0x00010000)  // _ADR: Address
                Name (_S1D, "}") // }
                Device (^S09)
                {
                    Name (_ADR, Ones)
                }
            }
        }
        Scope (\_SB.PCI0.S08)
        {
            Method (_DSM, 4, NotSerialized)  // _DSM: Device-Specific Method
            {
                Return (Zero)
            }
            Name (EXTR, Zero)
        }
        Processor (C000, 0x00, 0x00000000, 0x00)
        {
            Method (_STA, 0, NotSerialized)
            {
                If (One) { Return (0x0F) }
                Return (Zero)
            }
        }
    }
    Device (\_SB.PCI0.S10)
    {
        Name (_ADR, 0x00020000)
    }
}
"""
    devices = aml.index(asl, "x", revision=1)
    assert list(devices) == ["\\_SB.PCI0.S08", "\\_SB.PCI0.S09", "\\_SB.C000", "\\_SB.PCI0.S10"]
    s08 = devices["\\_SB.PCI0.S08"]
    assert s08["adr"] == "0x10000"
    assert s08["names"] == ["_ADR", "_S1D", "EXTR"]
    assert list(s08["methods"]) == ["_DSM"]
    assert s08["asl"].startswith("Device (S08_)\n{\n    Name (_ADR")
    assert devices["\\_SB.PCI0.S09"]["adr"] == "0xffffffff"
    assert devices["\\_SB.C000"]["kind"] == "Processor"
    assert "If (One) { Return (0x0F) }" in devices["\\_SB.C000"]["methods"]["_STA"]
    assert devices["\\_SB.PCI0.S10"]["adr"] == "0x20000"


def test_decoder_and_asl_diff_resolve_a_scope_by_the_same_search_rules() -> None:
    r"""`Scope (HPET)` inside `\_SB.PCI0.S18` names the existing `\_SB.HPET` (ACPI search rules):
    the decoder gives HPET the method, and the ASL diff attributes the block to HPET too."""
    asl = r"""DefinitionBlock ("", "DSDT", 1, "BOCHS ", "BXPC    ", 0x00000001)
{
    Scope (_SB)
    {
        Device (PCI0)
        {
            Name (_HID, EisaId ("PNP0A03"))  // _HID: Hardware ID
            Device (S18)
            {
                Name (_ADR, 0x00030000)  // _ADR: Address
            }
        }

        Device (HPET)
        {
            Name (_HID, EisaId ("PNP0103"))  // _HID: Hardware ID
        }
    }

    Scope (\_SB.PCI0.S18)
    {
        Name (SNUM, One)
        Scope (HPET)
        {
            Method (XHPT, 0, NotSerialized)
            {
                Return (One)
            }
        }
    }
}
"""
    devices = aml.index(asl, "DSDT", revision=1)
    assert list(devices) == ["\\_SB.PCI0", "\\_SB.PCI0.S18", "\\_SB.HPET"]
    assert list(devices["\\_SB.HPET"]["methods"]) == ["XHPT"]
    assert devices["\\_SB.PCI0.S18"]["names"] == ["_ADR", "SNUM"]
    own, extensions = split_table(asl, devices)
    assert "XHPT" in extensions["\\_SB.HPET"] and "XHPT" not in extensions["\\_SB.PCI0.S18"]
    assert "SNUM" in extensions["\\_SB.PCI0.S18"] and "XHPT" not in own


def test_one_namespace_path_module() -> None:
    assert resolve("\\_SB.PCI0.S18", "HPET", {"\\_SB.HPET"}) == "\\_SB.HPET"
    assert resolve("\\_SB.PCI0.S18", "HPET") == "\\_SB.PCI0.S18.HPET"
    assert resolve("\\_SB.PCI0.S18", "^^HPET_", {"\\_SB.HPET"}) == "\\_SB.HPET"
    assert resolve("\\_SB.PCI0", "S18.X", {"\\X"}) == "\\_SB.PCI0.S18.X"
    defs = [p.read_text() for p in (Path(__file__).parent.parent / "harness").rglob("*.py")]
    assert sum(len(re.findall(r"^def norm_path\b", text, re.MULTILINE)) for text in defs) == 1


# -- malformed input ------------------------------------------------------------------------------------


@pytest.fixture
def raw_copy(tmp_path: Path) -> Path:
    if not NAMES:
        pytest.skip("no captures")
    raw = tmp_path / "raw"
    shutil.copytree(CAPTURES / NAMES[0] / "raw" / acpi.TABLES, raw / acpi.TABLES)
    return raw


def _rewrite(raw: Path, key: str, data: bytes) -> str:
    (raw / acpi.TABLES / key).write_bytes(data)
    return f"{acpi.TABLES}/{key}"


def test_length_mismatch_is_a_decode_error(raw_copy: Path) -> None:
    data = (raw_copy / acpi.TABLES / "APIC").read_bytes()
    rel = _rewrite(raw_copy, "APIC", data + b"\0")
    with pytest.raises(DecodeError) as err:
        acpi.decode(raw_copy)
    assert (err.value.file, err.value.offset) == (rel, 4)


def test_truncated_header_is_a_decode_error(raw_copy: Path) -> None:
    rel = _rewrite(raw_copy, "HPET", b"HPET\x10\0\0\0")
    with pytest.raises(DecodeError) as err:
        acpi.decode(raw_copy)
    assert (err.value.file, err.value.offset) == (rel, 0)


def test_overrunning_madt_entry_is_a_decode_error(raw_copy: Path) -> None:
    data = bytearray((raw_copy / acpi.TABLES / "APIC").read_bytes())
    data[45] = 0xF0                                  # first entry claims 240 bytes
    rel = _rewrite(raw_copy, "APIC", bytes(data))
    with pytest.raises(DecodeError) as err:
        acpi.decode(raw_copy)
    assert (err.value.file, err.value.offset) == (rel, 44)


def test_zero_length_madt_entry_is_a_decode_error(raw_copy: Path) -> None:
    data = bytearray((raw_copy / acpi.TABLES / "APIC").read_bytes())
    data[45] = 0
    rel = _rewrite(raw_copy, "APIC", bytes(data))
    with pytest.raises(DecodeError) as err:
        acpi.decode(raw_copy)
    assert (err.value.file, err.value.offset) == (rel, 45)


def test_garbage_aml_is_a_decode_error_naming_the_table(raw_copy: Path) -> None:
    dsdt = (raw_copy / acpi.TABLES / "DSDT").read_bytes()
    body = bytes((i * 151 + 7) % 256 for i in range(600))
    garbage = _table(b"DSDT", b"BXPC", body, revision=1)
    assert len(garbage) != len(dsdt)
    rel = _rewrite(raw_copy, "DSDT", garbage)
    with pytest.raises(DecodeError) as err:
        acpi.decode(raw_copy)
    assert err.value.file == rel
    assert err.value.offset is not None and aml.AML_START <= err.value.offset < len(garbage)
    assert "iasl" in str(err.value)


def test_iasl_names_the_offset_of_a_bad_opcode(raw_copy: Path) -> None:
    data = bytearray((raw_copy / acpi.TABLES / "DSDT").read_bytes())
    assert data[36] == 0x10                          # the DSDT opens with a Scope
    data[36] = 0x02                                  # not an AML opcode
    data[9] = (data[9] + 0x0E) & 0xFF
    rel = _rewrite(raw_copy, "DSDT", bytes(data))
    with pytest.raises(DecodeError) as err:
        acpi.decode(raw_copy)
    assert (err.value.file, err.value.offset) == (rel, 36)
    assert "Unknown opcode 0x02" in str(err.value)


def test_a_table_whose_signature_disagrees_with_its_file_name(raw_copy: Path) -> None:
    waet = (raw_copy / acpi.TABLES / "WAET").read_bytes()
    rel = _rewrite(raw_copy, "SSDT", waet)
    with pytest.raises(DecodeError) as err:
        acpi.decode(raw_copy)
    assert (err.value.file, err.value.offset) == (rel, 0)


def test_no_tables_is_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(DecodeError):
        acpi.decode(tmp_path)


def test_iasl_timeout_is_a_decode_error(raw_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aml, "IASL_TIMEOUT", 1e-6)
    with pytest.raises(DecodeError) as err:
        acpi.decode(raw_copy)
    assert err.value.file == f"{acpi.TABLES}/DSDT" and "did not finish" in str(err.value)


def test_missing_iasl_names_the_debian_package(raw_copy: Path, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissing, match="acpica-tools"):
        acpi.decode(raw_copy)


def test_unknown_tables_keep_their_body(raw_copy: Path) -> None:
    _rewrite(raw_copy, "QEMU", _table(b"QEMU", b"BXPC", b"\x01\x02\x03"))
    entry = acpi.decode(raw_copy)["QEMU"]
    assert entry["fields"] == {"body_hex": "010203"}
    assert entry["header"]["checksum_valid"] is True


def test_slit_and_srat(raw_copy: Path) -> None:
    slit = _table(b"SLIT", b"BXPC", struct.pack("<Q", 2) + bytes([10, 20, 20, 10]), revision=1)
    mem = struct.pack("<BBIHQQIIQ", 1, 40, 1, 0, 0x100000, 0x1000000, 0, 1, 0)
    cpu = struct.pack("<BBBBIB3sI", 0, 16, 0, 1, 1, 0, b"\0\0\0", 0)
    srat = _table(b"SRAT", b"BXPC", struct.pack("<IQ", 1, 0) + cpu + mem, revision=1)
    blob = acpi.decode_table(Blob("SLIT", slit))
    assert blob["fields"] == {"localities": 2, "distances": [[10, 20], [20, 10]]}
    entries = acpi.decode_table(Blob("SRAT", srat))["fields"]["entries"]
    assert entries[0]["apic_id"] == "0x1" and entries[0]["flags"] == {"enabled": True}
    assert entries[1]["proximity_domain"] == 1 and entries[1]["base_address"] == "0x100000"
    assert entries[1]["flags"]["enabled"] is True and entries[1]["flags"]["hot_pluggable"] is False
