"""UEFI: what the firmware hands an OS beyond ACPI and SMBIOS (recorded by the OVMF hand-off probe,
harness/transport/firmware/ovmf.py): the Secure Boot state and key databases (PCR 7's inputs: what
BitLocker seals to), which configuration tables the firmware installed, and the UEFI memory map as
the OS keeps it (runtime services, reserved, ACPI and MMIO ranges; boot-services, loader and free
memory become the OS's RAM and are left to the e820 category).

A SeaBIOS capture has none of it: {}.

    {"firmware": {"label", "vendor", "revision", "uefi_revision"}   (the EFI system table's),
     "secure_boot": {"label", "SecureBoot", "SetupMode", "AuditMode", "DeployedMode"},
     "keys/PK" | "keys/KEK" | "keys/db" | "keys/dbx": {"label", "sha256", "size", "attributes",
                                                     "entries": ["x509 OWNER sha256:…", …]},
     "config_table": {"label", "tables": ["ACPI 2.0", "SMBIOS 3", "TCG2 final events", "GUID", …]},
     "memmap": {"label", "ranges": [{"type", "start", "pages", "attribute"}, …]}}
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
from pathlib import Path
from typing import Any

from harness.errors import DecodeError

EFI = Path("sys/firmware/efi")
EFIVARS = EFI / "efivars"
MEMMAP_FILE = EFI / "qabi" / "memmap"
CONFIG_TABLE_FILE = EFI / "qabi" / "config_table"
FIRMWARE_FILE = EFI / "qabi" / "firmware"
_FIRMWARE = re.compile(r"vendor=('[^'\n]{0,128}'|\"[^\"\n]{0,128}\")\nrevision=(0x[0-9a-f]{1,8})\n"
                       r"uefi_revision=(\d{1,5}\.\d{1,5})\n")
STATE_VARS = ("SecureBoot", "SetupMode", "AuditMode", "DeployedMode")
KEY_VARS = ("PK", "KEK", "db", "dbx")
MAX_VAR = 1 << 20
MAX_LIST_ENTRIES = 4096
MAX_CONFIG = 64
SIGNATURE_TYPES = {
    uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072"): "x509",
    uuid.UUID("c1c41626-504c-4092-aca9-41f936934328"): "sha256",
    uuid.UUID("3bd2a492-96c0-4079-b420-fcf98ef103ed"): "x509-sha256",
    uuid.UUID("452e8ced-dfff-4b8c-ae01-5118862e682c"): "x509-sha512",
}
CONFIG_NAMES = {
    "8868e871-e4f1-11d3-bc22-0080c73c8881": "ACPI 2.0", "eb9d2d30-2d88-11d3-9a16-0090273fc14d": "ACPI 1.0",
    "eb9d2d31-2d88-11d3-9a16-0090273fc14d": "SMBIOS", "f2fd1544-9794-4a2c-992e-e5bbcf20e394": "SMBIOS 3",
    "1e2ed096-30e2-4254-bd89-863bbef82325": "TCG2 final events",
    "d719b2cb-3d3a-4596-a3bc-dad00e67656f": "image execution info (Secure Boot)",
    "7739f24c-93d7-11d4-9a3a-0090273fc14d": "HOB list", "05ad34ba-6f02-4214-952e-4da0398e2bb9": "DXE services",
    "49152e77-1ada-4764-b7a2-7afefed95e8b": "debug image info", "060cc026-4c0d-4dda-8f41-595fef00a502": "memory status code",
    "ee4e5898-3914-4259-9d6e-dc7bd79403cf": "LZMA custom decompress", "4c19049f-4137-4dd3-9c10-8b97a83ffdfa": "memory type information",
    "dcfa911d-26eb-469f-a220-38b7dc461220": "memory attributes table",
}
# EFI memory types; the ones the OS keeps apart from its RAM are listed in the fingerprint
MEMORY_TYPES = {0: "reserved", 1: "loader code", 2: "loader data", 3: "boot services code",
                4: "boot services data", 5: "runtime services code", 6: "runtime services data",
                7: "conventional", 8: "unusable", 9: "ACPI reclaim", 10: "ACPI NVS", 11: "MMIO",
                12: "MMIO port space", 13: "PAL code", 14: "persistent", 15: "unaccepted"}
OS_RAM = {1, 2, 3, 4, 7, 15}
_CONFIG_LINE = re.compile(r"([0-9a-f-]{36}) 0x[0-9a-f]{1,16}")


def _var(raw: Path, name: str, owner: str) -> tuple[int, bytes] | None:
    path = raw / EFIVARS / f"{name}-{owner}"
    if not path.is_file():
        return None
    data = path.read_bytes()
    if len(data) < 4 or len(data) > MAX_VAR:
        raise DecodeError(str(path.relative_to(raw)), None, f"{len(data)} bytes is not an efivarfs variable")
    return struct.unpack_from("<I", data)[0], data[4:]


def signature_entries(data: bytes, where: str) -> list[str]:
    """An EFI_SIGNATURE_LIST sequence as "TYPE OWNER sha256:DATA" lines (the data's hash)."""
    out: list[str] = []
    off = 0
    while off < len(data):
        if off + 28 > len(data):
            raise DecodeError(where, off, "a signature list header runs past the variable")
        kind = uuid.UUID(bytes_le=data[off:off + 16])
        list_size, header_size, sig_size = struct.unpack_from("<III", data, off + 16)
        if list_size < 28 + header_size or off + list_size > len(data) or sig_size < 16 \
                or (list_size - 28 - header_size) % sig_size:
            raise DecodeError(where, off, f"a signature list of {list_size} bytes with entries of {sig_size}")
        pos = off + 28 + header_size
        while pos < off + list_size:
            owner = uuid.UUID(bytes_le=data[pos:pos + 16])
            digest = hashlib.sha256(data[pos + 16:pos + sig_size]).hexdigest()
            out.append(f"{SIGNATURE_TYPES.get(kind, str(kind))} {owner} sha256:{digest}")
            if len(out) > MAX_LIST_ENTRIES:
                raise DecodeError(where, pos, f"more than {MAX_LIST_ENTRIES} signatures")
            pos += sig_size
        off += list_size
    return out


def _memmap(raw: Path) -> list[dict[str, Any]]:
    path = raw / MEMMAP_FILE
    data = path.read_bytes()
    rel = str(MEMMAP_FILE)
    if len(data) < 8:
        raise DecodeError(rel, 0, "shorter than its header")
    desc_size = struct.unpack_from("<I", data)[0]
    if not 40 <= desc_size <= 256 or (len(data) - 8) % desc_size:
        raise DecodeError(rel, 0, f"descriptor size {desc_size} does not divide {len(data) - 8} bytes")
    ranges: list[dict[str, Any]] = []
    for off in range(8, len(data), desc_size):
        kind, _pad, start, _virt, pages, attr = struct.unpack_from("<IIQQQQ", data, off)
        if kind in OS_RAM:
            continue
        ranges.append({"type": MEMORY_TYPES.get(kind, f"type {kind}"), "start": hex(start), "pages": pages,
                       "attribute": hex(attr)})
    return ranges


def _config_table(raw: Path) -> list[str]:
    text = (raw / CONFIG_TABLE_FILE).read_bytes()
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise DecodeError(str(CONFIG_TABLE_FILE), exc.start, "not ASCII text") from None
    if len(lines) > MAX_CONFIG or not all(_CONFIG_LINE.fullmatch(line) for line in lines):
        raise DecodeError(str(CONFIG_TABLE_FILE), None, "not GUID / pointer lines")
    return sorted(CONFIG_NAMES.get(line[:36], line[:36]) for line in lines)


def decode(raw: Path) -> dict[str, Any]:
    if not (raw / EFI).is_dir():
        return {}
    out: dict[str, Any] = {}
    state: dict[str, Any] = {"label": "Secure Boot state"}
    for name in STATE_VARS:
        var = _var(raw, name, "8be4df61-93ca-11d2-aa0d-00e098032b8c")
        state[name] = None if var is None else (var[1][0] if len(var[1]) == 1 else var[1].hex())
    out["secure_boot"] = state
    for name in KEY_VARS:
        owner = "d719b2cb-3d3a-4596-a3bc-dad00e67656f" if name in ("db", "dbx") else \
            "8be4df61-93ca-11d2-aa0d-00e098032b8c"
        var = _var(raw, name, owner)
        if var is None:
            continue
        attr, data = var
        out[f"keys/{name}"] = {"label": f"Secure Boot {name}", "sha256": hashlib.sha256(data).hexdigest(),
                               "size": len(data), "attributes": hex(attr),
                               "entries": signature_entries(data, f"{EFIVARS}/{name}")}
    if (raw / FIRMWARE_FILE).is_file():
        text = (raw / FIRMWARE_FILE).read_bytes()[:1024].decode("utf-8", errors="replace")
        match = _FIRMWARE.fullmatch(text)
        if not match:
            raise DecodeError(str(FIRMWARE_FILE), None, "not the probe's vendor / revision lines")
        out["firmware"] = {"label": "firmware (EFI system table)", "vendor": match.group(1)[1:-1],
                           "revision": match.group(2), "uefi_revision": match.group(3)}
    if (raw / CONFIG_TABLE_FILE).is_file():
        out["config_table"] = {"label": "EFI configuration tables", "tables": _config_table(raw)}
    if (raw / MEMMAP_FILE).is_file():
        out["memmap"] = {"label": "UEFI memory map (what the OS keeps apart)", "ranges": _memmap(raw)}
    return out
