"""The OVMF hand-off probe: guests/efi/probe.efi (probe-signed.efi under Secure Boot), booted as
`-kernel` (OVMF loads it through fw_cfg as an EFI application), records CPUID of the boot vCPU, the
EFI configuration table, the Secure Boot variables and the UEFI memory map into a RAM buffer it
allocates, announces the buffer in a mailbox page at the first free address of MAILBOXES (never
0x30000: with SMM that is SMBASE), and halts. The host reads it here; ACPI and SMBIOS are then
read from the configuration table's pointers (as Linux finds them under EFI), not the BIOS areas."""

from __future__ import annotations

import hashlib
import struct
import uuid
from pathlib import Path

from harness.errors import CaptureError
from harness.transport.firmware.qtest import FOUR_G, Qtest
from harness.transport.firmware.records import HandOff, cpuid_from_entries
from harness.transport.framing import Record

PROBE_DIR = Path(__file__).resolve().parents[3] / "guests" / "efi"
PROBE = PROBE_DIR / "probe.efi"
PROBE_SIGNED = PROBE_DIR / "probe-signed.efi"      # sbsign'ed with guests/efi/keys/db.key

MAILBOXES = (0x00300000, 0x00500000, 0x00700000, 0x01100000)
MAILBOX_MARKER = 0x41464551    # "QEFA"
MARKER = 0x49464551            # "QEFI"
RESULT_BYTES = 64 * 4096
MAX_CONFIG = 64
MAX_CPUID = 768
MEMMAP_AT, MEMMAP_MAX = 0x6000, 0xA000
VARS = ("SecureBoot", "SetupMode", "PK", "KEK", "db", "dbx", "AuditMode", "DeployedMode")
EFI_NOT_FOUND = 14
GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
SECURITY_DB_GUID = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
# where the records go: efivarfs's names and layout (u32 attributes, then the bytes) for the
# variables; the memory map (u32 descriptor size, u32 version, the descriptors) and the configuration
# table (one "GUID 0xPOINTER" line each) under qabi's own names beside them
EFIVARS = "/sys/firmware/efi/efivars"
MEMMAP_FILE = "/sys/firmware/efi/qabi/memmap"
CONFIG_TABLE_FILE = "/sys/firmware/efi/qabi/config_table"
FIRMWARE_FILE = "/sys/firmware/efi/qabi/firmware"        # the system table's vendor and revisions

# configuration-table GUIDs, by the names the capture files carry
ACPI20 = uuid.UUID("8868e871-e4f1-11d3-bc22-0080c73c8881")
ACPI10 = uuid.UUID("eb9d2d30-2d88-11d3-9a16-0090273fc14d")
SMBIOS = uuid.UUID("eb9d2d31-2d88-11d3-9a16-0090273fc14d")
SMBIOS3 = uuid.UUID("f2fd1544-9794-4a2c-992e-e5bbcf20e394")
TCG2_FINAL_EVENTS = uuid.UUID("1e2ed096-30e2-4254-bd89-863bbef82325")
CONFIG_NAMES = {ACPI20: "acpi20", ACPI10: "acpi", SMBIOS: "smbios", SMBIOS3: "smbios3",
                TCG2_FINAL_EVENTS: "tcg2_final_events"}

# EFI memory types -> e820 types, as Linux's EFI stub builds the e820 table it boots with
# (drivers/firmware/efi/libstub/x86-stub.c setup_e820): loader, boot-services and conventional
# memory become RAM (the OS keeps them), ACPI reclaim ACPI, NVS NVS, unusable 5, persistent 7,
# everything else (reserved, runtime services, MMIO) reserved.
EFI_TO_E820 = {1: 1, 2: 1, 3: 1, 4: 1, 7: 1, 9: 3, 10: 4, 8: 5, 14: 7, 15: 1}
E820_RESERVED = 2


def probe_path(secure_boot: bool) -> Path:
    return PROBE_SIGNED if secure_boot else PROBE


def probe_sha256(secure_boot: bool) -> str:
    try:
        return hashlib.sha256(probe_path(secure_boot).read_bytes()).hexdigest()
    except OSError as exc:
        raise CaptureError(f"the EFI probe {probe_path(secure_boot)} is unreadable: {exc.strerror}") from None


def ready(qt: Qtest) -> int | None:
    """The result buffer's address once the probe announced it, else None."""
    for box in MAILBOXES:
        head = qt.read(box, 16)
        marker, version, addr = struct.unpack("<IIQ", head)
        if marker == MAILBOX_MARKER:
            if version != 1 or not 0 < addr <= FOUR_G - RESULT_BYTES:
                raise CaptureError(f"the EFI probe announced a bad result buffer (version {version}, at {addr:#x})")
            return addr
    return None


def efi_e820(memmap: bytes, desc_size: int) -> list[tuple[int, int, int]]:
    """The e820 ranges of a UEFI memory map (EFI_TO_E820)."""
    out = []
    for off in range(0, len(memmap) - desc_size + 1, desc_size):
        kind, _pad, start, _virt, pages, _attr = struct.unpack_from("<IIQQQQ", memmap, off)
        out.append((start, pages * 4096, EFI_TO_E820.get(kind, E820_RESERVED)))
    return out


def read_probe(qt: Qtest, addr: int) -> HandOff:
    buf = qt.read(addr, 0x10000)
    marker, version, n_cpuid, mm_bytes, desc_size, desc_version, n_config, n_vars, status, uefi_rev, \
        fw_rev, vendor_len = struct.unpack_from("<12I", buf)
    if marker != MARKER or version != 1:
        raise CaptureError(f"the EFI probe's result has marker {marker:#x} version {version} (this qabi reads 1)")
    if n_cpuid > MAX_CPUID or n_config > MAX_CONFIG or n_vars != len(VARS) or mm_bytes > MEMMAP_MAX \
            or not 40 <= desc_size <= 256 or status & 1 or vendor_len > 128:
        raise CaptureError(f"the EFI probe wrote absurd counts ({n_cpuid} cpuid, {n_config} config entries, "
                           f"{n_vars} variables, memory map {mm_bytes} bytes / {desc_size}, status {status})")
    cpuid, _order = cpuid_from_entries(buf[0x1000:0x1000 + 24 * n_cpuid], n_cpuid)
    config: dict[str, int] = {}
    table_lines = []
    for i in range(n_config):
        guid = uuid.UUID(bytes_le=buf[0x100 + 24 * i:0x110 + 24 * i])
        pointer = struct.unpack_from("<Q", buf, 0x110 + 24 * i)[0]
        table_lines.append(f"{guid} {pointer:#x}")
        if guid in CONFIG_NAMES:
            config.setdefault(CONFIG_NAMES[guid], pointer)
    memmap = buf[MEMMAP_AT:MEMMAP_AT + mm_bytes]
    vendor = buf[0x30:0x30 + 2 * vendor_len].decode("utf-16-le", errors="replace")
    firmware = f"vendor={vendor!r}\nrevision={fw_rev:#x}\nuefi_revision={uefi_rev >> 16}.{uefi_rev & 0xFFFF}\n"
    records = [Record(MEMMAP_FILE, struct.pack("<II", desc_size, desc_version) + memmap),
               Record(CONFIG_TABLE_FILE, ("\n".join(table_lines) + "\n").encode()),
               Record(FIRMWARE_FILE, firmware.encode("utf-8"))]
    for i, name in enumerate(VARS):
        attr, size, offset, var_status = struct.unpack_from("<4I", buf, 0x800 + 16 * i)
        if var_status == EFI_NOT_FOUND:
            continue
        if var_status != 0 or not 0x10000 <= offset <= RESULT_BYTES - size:
            raise CaptureError(f"the EFI probe could not read the variable {name} (status {var_status:#x})")
        data = qt.read(addr + offset, size) if size else b""
        owner = SECURITY_DB_GUID if name in ("db", "dbx") else GLOBAL_GUID
        records.append(Record(f"{EFIVARS}/{name}-{owner}", struct.pack("<I", attr) + data))
    e820 = efi_e820(memmap, desc_size)
    acpi_root = config.get("acpi20") or config.get("acpi")
    return HandOff(e820=e820, cpuid=cpuid, records=records, rsdp=acpi_root,
                   smbios=(config.get("smbios3"), config.get("smbios")),
                   info={"uefi": "1", "efi_config_entries": str(n_config)})
