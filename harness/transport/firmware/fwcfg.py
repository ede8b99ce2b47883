"""fw_cfg at the hand-off: QEMU's firmware configuration device, read as the firmware reads it.

The selector port 0x510 (16 bits) picks an item, the data port 0x511 returns its bytes one at a
time; with the DMA interface (bit 1 of the ID item) a descriptor in guest memory, whose address
is written big-endian to ports 0x514/0x518, copies an item into guest memory in one transfer.
Items read: the signature (0x00) and ID (0x01), and the file directory (0x19: a big-endian count,
then 64-byte entries of size, selector, reserved and a 56-byte NUL-terminated name) with the
content of every file. Left out: the fixed items of `-kernel` boot (0x07-0x18: qabi's payload,
its size, addresses and command line) and files that carry qabi's own boot payload (`PAYLOAD`):
their bytes change with qabi, not with QEMU.

DMA writes guest memory: the transfers go to a scratch buffer in RAM whose previous bytes are
read first and written back afterwards (the descriptor's 16 bytes too). Reading fw_cfg has no
other effect on the guest (the item's read offset is internal to the device; the selector is
left at the signature, as after reset).

The records mirror Linux's /sys/firmware/qemu_fw_cfg (drivers/firmware/qemu_fw_cfg.c): `rev`
(the ID item, decimal), and `by_key/N/{name,size,key,raw}` per directory file; a file not read
has no `raw` (a payload file, or one over `MAX_FILE`).
"""

from __future__ import annotations

import struct

from harness.errors import CaptureError
from harness.transport.firmware.qtest import Qtest
from harness.transport.framing import Record

PORT_SELECTOR, PORT_DATA, PORT_DMA_HIGH, PORT_DMA_LOW = 0x510, 0x511, 0x514, 0x518
SIGNATURE, ID, FILE_DIR = 0x00, 0x01, 0x19
ID_DMA = 0x2
DMA_ERROR, DMA_READ, DMA_SELECT = 0x01, 0x02, 0x08
MAX_FILES = 1024
MAX_FILE = 1 << 20                 # bytes read of one file (larger ones are listed with their size)
CHUNK = 1 << 16                    # bytes of one DMA transfer (the scratch buffer's size)
ROOT = "/sys/firmware/qemu_fw_cfg"
PAYLOAD = ("etc/boot/*",)         # files carrying qabi's -kernel payload (QEMU >= 10.0: etc/boot/kernel)


def _bswap32(value: int) -> int:
    return int.from_bytes(value.to_bytes(4, "little"), "big")


class FwCfg:
    """One fw_cfg device on the I/O ports, read through qtest."""

    def __init__(self, qt: Qtest, scratch: int) -> None:
        self.qt = qt
        self.scratch = scratch          # guest RAM for DMA: CHUNK + 16 bytes, restored after use
        signature = self.port_read(SIGNATURE, 4)
        if signature != b"QEMU":
            raise CaptureError(f"no fw_cfg device at port {PORT_SELECTOR:#x} (signature {signature!r})")
        self.id = struct.unpack("<I", self.port_read(ID, 4))[0]

    def port_read(self, selector: int, length: int) -> bytes:
        """`length` bytes of item `selector` through the data port (one `inb` per byte)."""
        cmds = [f"outw {PORT_SELECTOR:#x} {selector:#x}"] + [f"inb {PORT_DATA:#x}"] * length
        return bytes(v & 0xFF for v in self.qt.values(cmds))

    def directory(self) -> list[tuple[int, int, str]]:
        """(selector, size, name) of every file, in directory order."""
        (count,) = struct.unpack(">I", self.port_read(FILE_DIR, 4))
        if count > MAX_FILES:
            raise CaptureError(f"the fw_cfg directory claims {count} files (more than {MAX_FILES})")
        body = self.read(FILE_DIR, 4 + 64 * count)[4:]
        out = []
        for i in range(count):
            size, selector, _reserved, name = struct.unpack_from(">IHH56s", body, 64 * i)
            out.append((selector, size, name.split(b"\0", 1)[0].decode("ascii", errors="replace")))
        return out

    def read(self, selector: int, length: int) -> bytes:
        """The first `length` bytes of item `selector` (DMA when the device has it: one round trip
        per CHUNK, into the scratch buffer that `fwcfg_records` saves first and writes back)."""
        if not self.id & ID_DMA:
            return self.port_read(selector, length)
        desc, buf = self.scratch, self.scratch + 16
        out = bytearray()
        control = selector << 16 | DMA_SELECT | DMA_READ
        while len(out) < length:
            n = min(CHUNK, length - len(out))
            data = self.qt.read(desc, 16 + n, before=(
                self.qt.write_command(desc, struct.pack(">IIQ", control, n, buf)),
                f"outl {PORT_DMA_HIGH:#x} {_bswap32(desc >> 32):#x}",
                f"outl {PORT_DMA_LOW:#x} {_bswap32(desc & 0xFFFFFFFF):#x}"))
            status = struct.unpack_from(">I", data)[0]
            if status:
                raise CaptureError(f"fw_cfg DMA of item {selector:#x} failed (control {status:#x})")
            out += data[16:]
            control = DMA_READ               # the next transfer continues the same item
        return bytes(out)


def is_payload(name: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, glob) for glob in PAYLOAD)


def fwcfg_records(qt: Qtest, scratch: int) -> list[Record]:
    """The fw_cfg records (see the module docstring)."""
    dev = FwCfg(qt, scratch)
    records = [Record(f"{ROOT}/rev", f"{dev.id}\n".encode())]
    saved = qt.read(scratch, 16 + CHUNK) if dev.id & ID_DMA else b""
    try:
        for selector, size, name in dev.directory():
            where = f"{ROOT}/by_key/{selector}"
            records += [Record(f"{where}/key", f"{selector}\n".encode()),
                        Record(f"{where}/name", f"{name}\n".encode()),
                        Record(f"{where}/size", f"{size}\n".encode())]
            if not is_payload(name) and size <= MAX_FILE:
                records.append(Record(f"{where}/raw", dev.read(selector, size)))
    finally:        # guest RAM as it was, the selector as after reset
        qt.batch(([qt.write_command(scratch, saved)] if saved else []) + [f"outw {PORT_SELECTOR:#x} {SIGNATURE:#x}"])
    return records
