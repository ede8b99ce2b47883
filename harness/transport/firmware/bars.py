"""Access to the registers behind a PCI function's BARs at the hand-off, over qtest.

A BAR the firmware assigned is used where it is. A BAR the firmware left unassigned (address 0
with a size in QEMU's query-pci) on bus 0 is mapped in a scratch window (memory: below the lowest
assigned 32-bit memory BAR; I/O: above the highest assigned I/O BAR) with decoding enabled in
COMMAND, and both the BAR and COMMAND are written back to the values the firmware left when the
function is done (`mapped`). A function behind a bridge whose BAR is unassigned is not read (the
bridge's window would have to move): its records say so (`unread`).

Reads and writes are qtest commands (`readl ADDR`, `inb PORT`, `writew ADDR V` …) built by
`Bar.read`/`Bar.write` and run in batches (Qtest.values). `Reads` is the raw record of a series of
register reads: 12 bytes each, little-endian offset (u32), width in bytes (u8), 3 bytes zero,
value (u32), in the order read; the decoders in harness/fingerprint/registers/ name them.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from harness.errors import CaptureError
from harness.transport.firmware.qtest import Qtest
from harness.transport.framing import Record

READ = struct.Struct("<IB3xI")
_CONFIG = re.compile(r"/sys/bus/pci/devices/0000:([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])/config")
_WIDTH = {1: "b", 2: "w", 4: "l"}
E820_RAM = 1


@dataclass(frozen=True)
class Bar:
    index: int
    io: bool
    address: int
    size: int

    def read(self, offset: int, width: int = 4) -> str:
        if self.io:
            return f"in{_WIDTH[width]} {self.address + offset:#x}"
        return f"read{_WIDTH[width]} {self.address + offset:#x}"

    def write(self, offset: int, value: int, width: int = 4) -> str:
        if self.io:
            return f"out{_WIDTH[width]} {self.address + offset:#x} {value:#x}"
        return f"write{_WIDTH[width]} {self.address + offset:#x} {value:#x}"


@dataclass
class Function:
    """A PCI function as the PCI records give it."""

    bus: int
    dev: int
    fn: int
    config: bytes
    sizes: dict[int, int]
    bars: dict[int, Bar] = field(default_factory=dict)

    @property
    def bdf(self) -> int:
        return self.bus << 8 | self.dev << 3 | self.fn

    @property
    def name(self) -> str:
        return f"0000:{self.bus:02x}:{self.dev:02x}.{self.fn}"

    @property
    def ids(self) -> tuple[int, int]:
        vendor, device = struct.unpack_from("<HH", self.config, 0)
        return int(vendor), int(device)

    @property
    def class_code(self) -> int:
        return self.config[0x0B] << 16 | self.config[0x0A] << 8 | self.config[0x09]

    def bar_registers(self) -> list[tuple[int, int, bool, bool]]:
        """(index, raw BAR value, is I/O, is 64-bit) of each BAR with a size."""
        nbars = {0: 6, 1: 2}.get(self.config[0x0E] & 0x7F, 0)
        out, i = [], 0
        while i < nbars:
            value = struct.unpack_from("<I", self.config, 0x10 + 4 * i)[0]
            is64 = not value & 1 and value >> 1 & 3 == 2
            if self.sizes.get(i):
                out.append((i, int(value), bool(value & 1), is64))
            i += 2 if is64 else 1
        return out


def functions(pci: list[Record], sizes: dict[tuple[int, int, int], dict[int, int]]) -> list[Function]:
    """The functions of the PCI records, with the BARs the firmware assigned."""
    out = []
    for rec in pci:
        m = _CONFIG.fullmatch(rec.path)
        if not m:
            continue
        bus, dev, fn = (int(g, 16) for g in m.groups())
        f = Function(bus, dev, fn, rec.data, sizes.get((bus, dev, fn), {}))
        for index, value, io, is64 in f.bar_registers():
            address = value & ~3 if io else value & ~0xF
            if is64:
                address |= struct.unpack_from("<I", f.config, 0x14 + 4 * index)[0] << 32
            f.bars[index] = Bar(index, io, address, f.sizes[index])
        out.append(f)
    return out


def scratch_ram(e820: list[tuple[int, int, int]], need: int = 1 << 17) -> int:
    """An address in guest RAM above 2 MiB with `need` bytes (for DMA; restored by the user)."""
    for start, length, kind in sorted(e820):
        base = max(start, 0x200000)
        if kind == E820_RAM and start + length >= base + need:
            return base
    raise CaptureError("no guest RAM above 2 MiB for a scratch buffer")


def config_write(bdf: int, offset: int, value: int, width: int) -> list[str]:
    return [f"outl 0xcf8 {0x80000000 | bdf << 8 | offset & 0xFC:#x}",
            f"out{_WIDTH[width]} {0xCFC + (offset & 3):#x} {value:#x}"]


class Windows:
    """Where unassigned BARs go: free address space next to what the firmware assigned."""

    def __init__(self, funcs: list[Function]) -> None:
        mem = [b.address for f in funcs for b in f.bars.values() if not b.io and 0 < b.address < 1 << 32]
        io = [b.address + b.size for f in funcs for b in f.bars.values() if b.io and b.address]
        self.mem_top = min(mem, default=0xFE000000)
        self.io_bottom = max(io, default=0xC000)

    def place(self, bar_size: int, io: bool) -> int:
        if io:
            address = (self.io_bottom + bar_size - 1) // bar_size * bar_size
            if address + bar_size > 0x10000:
                raise CaptureError("no free I/O space for an unassigned BAR")
            self.io_bottom = address + bar_size
            return address
        address = (self.mem_top - bar_size) // bar_size * bar_size
        if address < 0xC0000000:
            raise CaptureError("no free memory space below the assigned BARs for an unassigned BAR")
        self.mem_top = address
        return address


@contextmanager
def mapped(qt: Qtest, f: Function, windows: Windows) -> Iterator[bool]:
    """The function's BARs decodable for the block: unassigned ones mapped in a scratch window,
    COMMAND's I/O and memory decoding on; everything written back afterwards. Yields False for a
    function behind a bridge that has an unassigned BAR (nothing is mapped)."""
    command = struct.unpack_from("<H", f.config, 4)[0]
    unassigned = [b for b in f.bars.values() if b.address == 0]
    if unassigned and f.bus != 0:
        yield False
        return
    restore: list[str] = []
    setup: list[str] = []
    for bar in unassigned:
        address = windows.place(bar.size, bar.io)
        offset = 0x10 + 4 * bar.index
        original = struct.unpack_from("<I", f.config, offset)[0]
        setup += config_write(f.bdf, offset, address | (original & (3 if bar.io else 0xF)), 4)
        restore += config_write(f.bdf, offset, original, 4)
        f.bars[bar.index] = Bar(bar.index, bar.io, address, bar.size)
    want = command | (1 if any(b.io for b in f.bars.values()) else 0) | (2 if any(not b.io for b in f.bars.values()) else 0)
    if want != command:
        setup += config_write(f.bdf, 4, want, 2)
        restore = config_write(f.bdf, 4, command, 2) + restore
    try:
        if setup:
            qt.values(setup)
        yield True
    finally:
        if restore:
            qt.values(restore)
        for bar in unassigned:
            f.bars[bar.index] = bar


class Reads:
    """A series of register reads and the raw record they make (see the module docstring)."""

    def __init__(self, qt: Qtest) -> None:
        self.qt = qt
        self.data = bytearray()

    def run(self, where: Bar, regs: list[tuple[int, int]]) -> dict[int, int]:
        """Read each (offset, width) of `where`; record and return {offset: value}."""
        values = self.qt.values([where.read(off, width) for off, width in regs])
        for (off, width), value in zip(regs, values, strict=True):
            self.data += READ.pack(off, width, value & 0xFFFFFFFF)
        return {off: value for (off, _w), value in zip(regs, values, strict=True)}

    def add(self, offset: int, width: int, value: int) -> None:
        self.data += READ.pack(offset, width, value & 0xFFFFFFFF)
