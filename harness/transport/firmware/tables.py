"""ACPI and SMBIOS as Linux finds them: in a BIOS boot the RSDP in the EBDA or 0xE0000-0xFFFFF and
the SMBIOS entry point in 0xF0000-0xFFFFF; under UEFI where the EFI configuration table points
(ACPI 2.0 / 1.0, SMBIOS3 / SMBIOS); every table read over qtest, bounded by guest memory."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from harness.errors import CaptureError
from harness.transport.firmware.qtest import MAX_TABLES, Memory, Qtest
from harness.transport.framing import Record


def _checksum_ok(data: bytes) -> bool:
    return sum(data) & 0xFF == 0


def find_rsdp(qt: Qtest) -> tuple[int, bytes]:
    """Linux's acpi_find_root_pointer: the first 1 KiB of the EBDA, then 0xE0000-0xFFFFF."""
    ebda = struct.unpack("<H", qt.read(0x40E, 2))[0] << 4
    areas = [(ebda, 1024)] if 0x400 <= ebda < 0xA0000 else []
    areas.append((0xE0000, 0x20000))
    for start, length in areas:
        block = qt.read(start, length)
        for off in range(0, length - 20 + 1, 16):
            if block[off:off + 8] != b"RSD PTR " or not _checksum_ok(block[off:off + 20]):
                continue
            rev = block[off + 15]
            if rev >= 2:
                length2 = struct.unpack_from("<I", block, off + 20)[0]
                if length2 < 36 or off + length2 > len(block):
                    length2 = 36
                if not _checksum_ok(block[off:off + length2]):
                    continue
                return start + off, block[off:off + length2]
            return start + off, block[off:off + 20]
    raise CaptureError("no ACPI RSDP in the EBDA or 0xE0000-0xFFFFF: did the firmware run?")


def rsdp_at(qt: Qtest, mem: Memory, addr: int) -> tuple[int, bytes]:
    """The RSDP the EFI configuration table points at (checked as the BIOS search checks it)."""
    mem.check("the ACPI RSDP", addr, 36)
    block = qt.read(addr, 36)
    if block[:8] != b"RSD PTR " or not _checksum_ok(block[:20]):
        raise CaptureError(f"the EFI configuration table's ACPI pointer {addr:#x} is not a valid RSDP")
    if block[15] >= 2:
        length = struct.unpack_from("<I", block, 20)[0]
        if length == 36 and _checksum_ok(block):
            return addr, block
        raise CaptureError(f"the ACPI 2.0 RSDP at {addr:#x} has a bad length or extended checksum")
    return addr, block[:20]


def _table(qt: Qtest, mem: Memory, addr: int, what: str) -> bytes:
    mem.check(what, addr, 8)
    head = qt.read(addr, 8)
    length = struct.unpack_from("<I", head, 4)[0]
    if length < 8:
        raise CaptureError(f"{what} at {addr:#x} has an impossible length {length}")
    mem.check(what, addr, length)
    return qt.read(addr, length)


def acpi_records(qt: Qtest, mem: Memory, rsdp_addr: int | None = None) -> list[Record]:
    """Every ACPI table; the RSDP searched as in a BIOS boot, or at `rsdp_addr` (UEFI)."""
    _rsdp_addr, rsdp = find_rsdp(qt) if rsdp_addr is None else rsdp_at(qt, mem, rsdp_addr)
    rev = rsdp[15]
    xsdt = struct.unpack_from("<Q", rsdp, 24)[0] if rev >= 2 and len(rsdp) >= 32 else 0
    if xsdt:
        root = _table(qt, mem, xsdt, "XSDT")
        size = 8
    else:
        root = _table(qt, mem, struct.unpack_from("<I", rsdp, 16)[0], "RSDT")
        size = 4
    if len(root) < 36:
        raise CaptureError(f"the ACPI root table is {len(root)} bytes long (shorter than its header)")
    body = root[36:]
    pointers = [int.from_bytes(body[i:i + size], "little") for i in range(0, len(body) - size + 1, size)]
    if len(pointers) > MAX_TABLES:
        raise CaptureError(f"the ACPI root table lists {len(pointers)} tables (more than {MAX_TABLES})")
    tables: list[bytes] = []
    seen: set[int] = set()

    def add(addr: int, what: str) -> bytes | None:
        if not addr or addr in seen:
            return None
        seen.add(addr)
        data = _table(qt, mem, addr, what)
        tables.append(data)
        return data

    for index, addr in enumerate(pointers):
        data = add(addr, f"ACPI table #{index} of the {'XSDT' if xsdt else 'RSDT'}")
        if data is not None and data[:4] == b"FACP":
            def field(offset: int, width: int, fadt: bytes = data) -> int:
                return int.from_bytes(fadt[offset:offset + width], "little") if len(fadt) >= offset + width else 0
            x_dsdt, dsdt = field(140, 8), field(40, 4)
            add(x_dsdt or dsdt, "DSDT")
            add(field(36, 4), "FACS")
            add(field(132, 8), "FACS (X_FIRMWARE_CTRL)")
    counts: dict[bytes, int] = {}
    for data in tables:
        counts[data[:4]] = counts.get(data[:4], 0) + 1
    records = []
    seq: dict[bytes, int] = {}
    for data in tables:
        sig = data[:4]
        name = sig.decode("ascii", errors="replace")
        if not all(0x21 <= c < 0x7F and chr(c) not in "/\\" for c in sig):
            raise CaptureError(f"an ACPI table has the unusable signature {sig!r}")
        if counts[sig] > 1:
            seq[sig] = seq.get(sig, 0) + 1
            name += str(seq[sig])
        records.append(Record(f"/sys/firmware/acpi/tables/{name}", data))
    return records


def smbios_records(qt: Qtest, mem: Memory, efi: tuple[int | None, int | None] | None = None) -> list[Record]:
    """Linux's dmi_scan_machine: a valid _SM3_ first, then _SM_ (with _DMI_); searched in
    0xF0000-0xFFFFF, or under EFI (`efi`: the SMBIOS3 and SMBIOS pointers) only where they point."""
    sm3: Sequence[int]
    sm2: Sequence[int]
    if efi is None:
        area = qt.read(0xF0000, 0x10000)
        sm3 = sm2 = range(0, 0x10000 - 32 + 1, 16)
    else:
        area, sm3, sm2 = _efi_entry_points(qt, mem, efi), [0], [32]
    entry = None
    for off in sm3:
        if area[off:off + 5] == b"_SM3_":
            n = area[off + 6]
            if 24 <= n <= 32 and _checksum_ok(area[off:off + n]):
                table_len = struct.unpack_from("<I", area, off + 12)[0]
                addr = struct.unpack_from("<Q", area, off + 16)[0]
                entry = (area[off:off + n], addr, table_len, None)
                break
    if entry is None:
        for off in sm2:
            if area[off:off + 4] == b"_SM_":
                n = area[off + 5]
                if 0x1E <= n <= 32 and _checksum_ok(area[off:off + n]) and area[off + 16:off + 21] == b"_DMI_" \
                        and _checksum_ok(area[off + 16:off + 31]):
                    table_len = struct.unpack_from("<H", area, off + 0x16)[0]
                    addr = struct.unpack_from("<I", area, off + 0x18)[0]
                    count = struct.unpack_from("<H", area, off + 0x1C)[0]
                    entry = (area[off:off + n], addr, table_len, count)
                    break
    if entry is None:
        raise CaptureError("no SMBIOS entry point in 0xF0000-0xFFFFF" if efi is None else
                           "no valid SMBIOS entry point where the EFI configuration table points")
    point, addr, table_len, count = entry
    mem.check("the SMBIOS table", addr, table_len)
    table = qt.read(addr, table_len)
    # dmi_decode_table: walk the structures, stop after `count` (2.x) or after type 127 (3.x)
    pos = done = 0
    while pos + 4 <= len(table) and (count is None or done < count):
        kind, length = table[pos], table[pos + 1]
        end = pos + length
        while end + 1 < len(table) and table[end:end + 2] != b"\0\0":
            end += 1
        pos = end + 2
        done += 1
        if count is None and kind == 127:
            break
    if pos < len(table):
        table = table[:pos]
    return [Record("/sys/firmware/dmi/tables/smbios_entry_point", point),
            Record("/sys/firmware/dmi/tables/DMI", table)]


def _efi_entry_points(qt: Qtest, mem: Memory, efi: tuple[int | None, int | None]) -> bytes:
    """The 32 bytes at the SMBIOS3 and at the SMBIOS pointer (zeros for one that is absent), as one
    area with the offsets 0 (3.x) and 32 (2.x)."""
    area = b""
    for addr in efi:
        if addr:
            mem.check("the SMBIOS entry point", addr, 32)
            area += qt.read(addr, 32)
        else:
            area += bytes(32)
    return area + bytes(32)
