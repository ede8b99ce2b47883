"""The records the reference guest's probe writes, made on the host from what a hand-off probe
recorded: /dev/cpu/0/cpuid (the probe's leaves and subleaves) and /sys/firmware/memmap/N (after
Linux's e820 sanitizing). Any firmware's probe module builds its bundle through these."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from harness.errors import CaptureError
from harness.transport.framing import Record

L40, L80, X1D = 0x40000000, 0x80000000, 0x8000001D
SUBLEAF_LEAVES = (4, 7, 11, 13, 15, 16, 18, 20, 23, 24, 29, 31, 0x8000001D, 0x80000020, 0x80000026)


@dataclass(frozen=True)
class HandOff:
    """What a firmware's hand-off probe recorded, as the transport's shared flow reads it: the memory
    map as e820 ranges, CPUID of the boot vCPU, where the firmware put the ACPI root (RSDP; None:
    search the BIOS areas) and the SMBIOS entry points (3.x, 2.x; None: search), extra records of
    the probe's own, and what it says about itself."""

    e820: list[tuple[int, int, int]]
    cpuid: dict[tuple[int, int], tuple[int, int, int, int]]
    records: list[Record] = field(default_factory=list)
    rsdp: int | None = None
    smbios: tuple[int | None, int | None] | None = None
    info: dict[str, str] = field(default_factory=dict)


def cpuid_from_entries(raw: bytes, count: int) -> tuple[dict[tuple[int, int], tuple[int, int, int, int]],
                                                        list[tuple[int, int]]]:
    """A probe's CPUID entries (24 bytes each: leaf, subleaf, eax, ebx, ecx, edx) by (leaf, subleaf),
    and their order."""
    cpuid: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    order = []
    for i in range(count):
        leaf, sub, a, b, c, d = struct.unpack_from("<6I", raw, 24 * i)
        cpuid[(leaf, sub)] = (a, b, c, d)
        order.append((leaf, sub))
    return cpuid, order


def _set_bits(mask: int, first: int) -> list[int]:
    return [n for n in range(first, 64) if mask >> n & 1]


def cpuid_record(regs: dict[tuple[int, int], tuple[int, int, int, int]]) -> bytes:
    """The /dev/cpu/N/cpuid record the guest probe (guests/reference/probe.sh) writes from the
    same CPUID answers: its ranges, its subleaf rules, leaf then subleaf order."""
    def get(leaf: int, sub: int) -> tuple[int, int, int, int]:
        try:
            return regs[(leaf, sub)]
        except KeyError:
            raise CaptureError(f"the payload did not record CPUID leaf {leaf:#x} subleaf {sub}") from None

    maxb = min(get(0, 0)[0], 255)
    maxh = get(L40, 0)[0]
    if not L40 <= maxh <= L40 + 255:
        maxh = L40
    maxe = get(L80, 0)[0]
    if not L80 <= maxe <= L80 + 255:
        maxe = L80
    hv = get(1, 0)[2] >> 31 & 1 if maxb >= 1 else 0
    out = bytearray()

    def emit(leaf: int, sub: int, r: tuple[int, int, int, int]) -> None:
        out.extend(struct.pack("<6I", leaf, sub, *r))

    def subleaves(leaf: int, r0: tuple[int, int, int, int]) -> list[int]:
        eax, ebx, _ecx, edx = r0
        wanted: list[int] = []
        if leaf in (4, X1D) or leaf in (11, 31, 0x80000026):
            reg, shift, mask = (0, 0, 31) if leaf in (4, X1D) else (2, 8, 255)
            if not r0[reg] >> shift & mask:
                return []
            for s in range(1, 64):
                if not get(leaf, s)[reg] >> shift & mask:
                    break
                wanted.append(s)
            return wanted
        if leaf in (7, 20, 23, 24, 29):
            return list(range(1, min(eax, 63) + 1))
        if leaf == 13:
            subs = {1, *_set_bits(eax | edx << 32, 2)}
            r1 = get(13, 1)
            subs |= set(_set_bits(r1[2] | r1[3] << 32, 2))
            return sorted(s for s in subs if s <= 63)
        if leaf == 15:
            return _set_bits(edx, 1)
        if leaf in (16, 0x80000020):
            return _set_bits(ebx, 1)
        if leaf == 18:
            sgx = [1]
            for s in range(2, 64):
                if not get(18, s)[0] & 15:
                    break
                sgx.append(s)
            return sgx
        return []

    for first, last in ((0, maxb), (L40, maxh), (L80, maxe)):
        if first == L40 and hv != 1:
            continue
        for leaf in range(first, last + 1):
            r0 = get(leaf, 0)
            emit(leaf, 0, r0)
            in_span = (leaf <= min(31, maxb)) if leaf < L80 else (leaf <= min(X1D + 9, maxe))
            if leaf in SUBLEAF_LEAVES and in_span:
                for s in subleaves(leaf, r0):
                    emit(leaf, s, get(leaf, s))
    return bytes(out)


E820_NAMES = {1: "System RAM", 3: "ACPI Tables", 4: "ACPI Non-volatile Storage", 5: "Unusable memory",
              7: "Persistent Memory", 12: "Persistent Memory (legacy)", 0xEFFFFFFF: "Soft Reserved"}


def sanitize_e820(entries: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Linux's e820__update_table: overlaps resolved to the higher type, zero sizes dropped,
    adjacent ranges of one type merged, sorted."""
    points: list[tuple[int, int, int]] = []          # (address, is_end, index)
    for i, (addr, size, _kind) in enumerate(entries):
        if size and addr + size > addr:
            points += [(addr, 0, i), (addr + size, 1, i)]
    points.sort(key=lambda p: (p[0], p[1]))
    active: set[int] = set()
    out: list[tuple[int, int, int]] = []
    last_kind, last_addr = 0, 0
    i = 0
    while i < len(points):
        addr = points[i][0]
        while i < len(points) and points[i][0] == addr:
            _, is_end, index = points[i]
            if is_end:
                active.discard(index)
            else:
                active.add(index)
            i += 1
        kind = max((entries[j][2] for j in active), default=0)
        if kind != last_kind:
            if last_kind:
                out.append((last_addr, addr - last_addr, last_kind))
            last_kind, last_addr = kind, addr
    return out


def memmap_records(entries: list[tuple[int, int, int]]) -> list[Record]:
    records = []
    for n, (addr, size, kind) in enumerate(sanitize_e820(entries)):
        base = f"/sys/firmware/memmap/{n}"
        records += [Record(f"{base}/start", f"{addr:#x}\n".encode()),
                    Record(f"{base}/end", f"{addr + size - 1:#x}\n".encode()),
                    Record(f"{base}/type", f"{E820_NAMES.get(kind, 'Reserved')}\n".encode())]
    return records
