"""What drivers read behind the BARs, at the hand-off: one reader per device family.

Read after ACPI, SMBIOS, PCI config space and fw_cfg, so nothing here can change what those
measured. Per function, records under /qabi/registers/<function>/ (see SCHEMA.md "registers"):

- virtio (1af4:1000-107f): modern, through its vendor capabilities: `virtio-common` (the common
  configuration's fields 0x00-0x1f, each read at its own width), `virtio-features` (device_feature
  with device_feature_select 0 and 1), `virtio-queues` (per queue: queue_size and queue_notify_off
  with queue_select = n), `virtio-device` (the device-specific configuration, up to 256 bytes);
  both selectors are written back. Legacy only (no modern capability): `virtio-legacy` (the host
  features, then per queue the queue size, selected through QUEUE_SEL, written back) and
  `virtio-device`. Never read: the ISR status (cleared by a read) and the notify region.
- e1000/e1000e: `bar0` (registers that reset to values the driver checks; never ICR, which
  clears on read, nor the statistics counters 0x4000-0x40ff, which clear on read) and `eeprom`
  (64 words through EERD; EERD written back).
- xHCI (class 0c0330): `bar0`, the capability registers and the extended capability list.
- AHCI (class 010601): `bar5`, the generic host control registers and each implemented port's
  PxCMD, PxTFD, PxSIG, PxSSTS.
- HDA (class 0403): `bar0`, the global registers (no wall clock: it counts), then, last, `codecs`:
  for each codec STATESTS lists, the root node's and each function group's and widget's
  parameters (GET_PARAMETER), subsystem id and pin configuration defaults, sent through the
  immediate command interface (ICW/ICS/IRR: QEMU answers them with the controller in reset, so
  GCTL.CRST is never set); ICW and ICS are written back, IRR keeps the last response.
- VGA/bochs (1234:1111): `bar2`, the DISPI registers at 0x500 (index n at 0x500 + 2n).
- QXL (1b36:0100): `rom`, the QXLRom block and its mode list (BAR 2, RAM-backed).
- chipset: ICH9 LPC (8086:2918) `pmio` (PM1, GPE0, SMI, TCO registers at PMBASE) and `rcrb`
  (the 16 KiB root complex register block at RCBA); ICH9 SMBus (8086:2930) and PIIX4 PM
  (8086:7113) `smbus` (host registers; never HOST_BLOCK_DB, whose read moves the block index) and
  for PIIX4 `pmio`.
Afterwards every function read has its config space read again: a read that changed it (a BAR or
COMMAND not written back) fails the capture. A function that has a family but could not be read
(an unassigned BAR behind a bridge) gets an `unread` record with the reason; the records' `index`
lists every function and its family (`unread` for those).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from harness.errors import CaptureError
from harness.transport.firmware.bars import Bar, Function, Reads, Windows, functions, mapped
from harness.transport.firmware.qtest import Qtest
from harness.transport.framing import Record

ROOT = "/qabi/registers"
MAX_QUEUES = 1024
MAX_DEVICE_CONFIG = 256
VIRTIO_CAP = 0x09
COMMON_FIELDS = ((0x00, 4), (0x04, 4), (0x08, 4), (0x0C, 4), (0x10, 2), (0x12, 2), (0x14, 1), (0x15, 1),
                 (0x16, 2), (0x18, 2), (0x1A, 2), (0x1C, 2), (0x1E, 2))
Reader = Callable[[Qtest, Function], dict[str, bytes]]


def _caps(config: bytes) -> list[tuple[int, int]]:
    """(offset, id) of each capability in the standard list."""
    out: list[tuple[int, int]] = []
    if not config[6] & 0x10:
        return out
    pos, seen = config[0x34] & 0xFC, set()
    while pos >= 0x40 and pos not in seen and pos + 2 <= min(len(config), 256):
        seen.add(pos)
        out.append((pos, config[pos]))
        pos = config[pos + 1] & 0xFC
    return out


def _virtio_caps(f: Function) -> dict[int, tuple[Bar, int, int]]:
    """cfg_type -> (BAR, offset, length) of the first virtio PCI capability of each type."""
    out: dict[int, tuple[Bar, int, int]] = {}
    for pos, cap in _caps(f.config):
        if cap != VIRTIO_CAP or pos + 16 > len(f.config):
            continue
        cfg_type, bar = f.config[pos + 3], f.config[pos + 4]
        offset, length = struct.unpack_from("<II", f.config, pos + 8)
        if bar in f.bars and cfg_type not in out:
            out[cfg_type] = (f.bars[bar], int(offset), int(length))
    return out


def _mem_bar(f: Function, index: int) -> Bar | None:
    bar = f.bars.get(index)
    return None if bar is None or bar.io else bar


def on_bar(index: int, body: Callable[[Reads, Bar], None]) -> Reader:
    """A reader of register reads on one memory BAR: `body` reads, the record is `barN`."""
    def read(qt: Qtest, f: Function) -> dict[str, bytes]:
        bar = _mem_bar(f, index)
        if bar is None:
            return {}
        reads = Reads(qt)
        body(reads, bar)
        return {f"bar{index}": bytes(reads.data)} if reads.data else {}
    read.__name__ = f"read_{body.__name__.lstrip('_')}"
    return read


def _msix_enabled(f: Function) -> bool:
    return any(cap == 0x11 and f.config[pos + 3] & 0x80 for pos, cap in _caps(f.config))


def read_virtio(qt: Qtest, f: Function) -> dict[str, bytes]:
    caps = _virtio_caps(f)
    out: dict[str, bytes] = {}
    if 1 in caps:
        bar, base, _length = caps[1]
        values = qt.values([bar.read(base + off, w) for off, w in COMMON_FIELDS])
        out["virtio-common"] = b"".join(v.to_bytes(w, "little") for (_o, w), v in zip(COMMON_FIELDS, values, strict=True))
        feature_select, queue_select, num_queues = values[0], values[8], min(values[5], MAX_QUEUES)
        cmds = [bar.write(base, 0), bar.read(base + 4), bar.write(base, 1), bar.read(base + 4)]
        for n in range(num_queues):
            cmds += [bar.write(base + 0x16, n, 2), bar.read(base + 0x18, 2), bar.read(base + 0x1E, 2)]
        cmds += [bar.write(base, feature_select), bar.write(base + 0x16, queue_select, 2)]
        got = qt.values(cmds)
        out["virtio-features"] = struct.pack("<II", got[0], got[1])
        out["virtio-queues"] = b"".join(struct.pack("<HH", got[2 + 2 * n], got[3 + 2 * n]) for n in range(num_queues))
        if 4 in caps:
            bar, base, length = caps[4]
            out["virtio-device"] = qt.read(bar.address + base, min(length, MAX_DEVICE_CONFIG)) if length else b""
    elif 0 in f.bars and f.bars[0].io:
        io = f.bars[0]
        features, queue_select = qt.values([io.read(0), io.read(14, 2)])
        sizes = []
        for n in range(0, MAX_QUEUES, 16):
            got = qt.values([c for q in range(n, n + 16) for c in (io.write(14, q, 2), io.read(12, 2))])
            sizes += got
            if 0 in got:
                break
        sizes = sizes[:sizes.index(0)] if 0 in sizes else sizes
        qt.values([io.write(14, queue_select, 2)])
        out["virtio-legacy"] = struct.pack(f"<I{len(sizes)}H", features, *sizes)
        start = 24 if _msix_enabled(f) else 20
        length = min(max(io.size - start, 0), MAX_DEVICE_CONFIG)
        out["virtio-device"] = bytes(v & 0xFF for v in qt.values([io.read(start + i, 1) for i in range(length)]))
    return out


E1000_REGS = (0x0000, 0x0008, 0x0010, 0x0018, 0x0028, 0x002C, 0x0030, 0x0038, 0x00D0, 0x0100, 0x0170, 0x0178,
              0x0180, 0x0400, 0x0410, 0x0E00, 0x1000, 0x5400, 0x5404, 0x5800, 0x5820, 0x5B50, 0x5B54)
E1000E_REGS = (0x00E4, 0x0F00, 0x0F08, 0x0F10, 0x1008, 0x5008, 0x5818, 0x5B00, 0x5B64)
EERD, EEPROM_WORDS = 0x14, 64
E1000E_DEVICES = {0x10D3}


def read_e1000(qt: Qtest, f: Function) -> dict[str, bytes]:
    bar = _mem_bar(f, 0)
    if bar is None:
        return {}
    e1000e = f.ids[1] in E1000E_DEVICES
    reads = Reads(qt)
    regs = E1000_REGS + (E1000E_REGS if e1000e else ())
    reads.run(bar, [(off, 4) for off in regs])
    shift, start = (2, 1) if e1000e else (8, 1)
    (eerd,) = qt.values([bar.read(EERD)])
    cmds = []
    for word in range(EEPROM_WORDS):
        cmds += [bar.write(EERD, word << shift | start), bar.read(EERD)]
    cmds.append(bar.write(EERD, eerd))
    words = qt.values(cmds)
    return {"bar0": bytes(reads.data), "eeprom": struct.pack(f"<{EEPROM_WORDS}H", *(w >> 16 for w in words))}


XHCI_CAPS = ((0x00, 4), (0x04, 4), (0x08, 4), (0x0C, 4), (0x10, 4), (0x14, 4), (0x18, 4), (0x1C, 4))
MAX_EXT_CAPS = 64


def _xhci(reads: Reads, bar: Bar) -> None:
    caps = reads.run(bar, list(XHCI_CAPS))
    pos = (caps[0x10] >> 16) << 2
    for _ in range(MAX_EXT_CAPS):
        if not pos or pos + 16 > bar.size:
            break
        (head,) = reads.run(bar, [(pos, 4)]).values()
        if head & 0xFF == 2:                                    # supported protocol
            body = reads.run(bar, [(pos + 4, 4), (pos + 8, 4), (pos + 12, 4)])
            psic = body[pos + 8] >> 28
            reads.run(bar, [(pos + 16 + 4 * i, 4) for i in range(psic)])
        step = (head >> 8 & 0xFF) << 2
        pos = pos + step if step else 0


AHCI_GHC = ((0x00, 4), (0x04, 4), (0x0C, 4), (0x10, 4), (0x14, 4), (0x18, 4), (0x1C, 4), (0x20, 4),
            (0x24, 4), (0x28, 4))
AHCI_PORT = (0x18, 0x20, 0x24, 0x28)


def _ahci(reads: Reads, bar: Bar) -> None:
    ghc = reads.run(bar, list(AHCI_GHC))
    ports = [n for n in range(32) if ghc[0x0C] >> n & 1]
    reads.run(bar, [(0x100 + 0x80 * n + off, 4) for n in ports for off in AHCI_PORT])


HDA_REGS = ((0x00, 2), (0x02, 1), (0x03, 1), (0x04, 2), (0x06, 2), (0x08, 4), (0x0C, 2), (0x0E, 2), (0x10, 2),
            (0x18, 2), (0x1A, 2), (0x20, 4), (0x4E, 1), (0x5E, 1))


ICW, IRR, ICS = 0x60, 0x64, 0x68
ICS_BUSY, ICS_VALID = 0x1, 0x2
GET_PARAMETER, GET_SUBSYSTEM_ID, GET_CONFIG_DEFAULT, GET_CONNECTIONS = 0xF00, 0xF20, 0xF1C, 0xF02
MAX_NODES = 64


class Codec:
    """Verbs through the immediate command interface (ICW/ICS/IRR), a batch per step of the walk:
    each verb is ICW := verb, ICS := busy, read ICS and IRR, ICS := valid (write 1 to clear)."""

    def __init__(self, qt: Qtest, bar: Bar, cad: int, reads: Reads) -> None:
        self.qt, self.bar, self.cad, self.reads = qt, bar, cad, reads

    def verbs(self, asked: list[tuple[int, int, int]]) -> list[int]:
        """The responses to (node, verb, payload) verbs, recorded as (verb word, response) reads."""
        words = [self.cad << 28 | (nid & 0x7F) << 20 | verb << 8 | payload for nid, verb, payload in asked]
        cmds = []
        for word in words:
            cmds += [self.bar.write(ICW, word), self.bar.write(ICS, ICS_BUSY, 2), self.bar.read(ICS, 2),
                     self.bar.read(IRR), self.bar.write(ICS, ICS_VALID, 2)]
        got = self.qt.values(cmds)
        out = []
        for i, word in enumerate(words):
            ics, response = got[2 * i], got[2 * i + 1]
            if ics & ICS_BUSY or not ics & ICS_VALID:
                raise CaptureError(f"HDA codec {self.cad} did not answer verb {word:#010x} (ICS {ics:#x})")
            self.reads.add(word, 4, response)
            out.append(response)
        return out

    def walk(self) -> None:
        """The root node's ids, each function group's ids and widgets, each widget's capabilities."""
        _vendor, _revision, groups = self.verbs([(0, GET_PARAMETER, p) for p in (0x00, 0x02, 0x04)])
        for fg in range(groups >> 16 & 0xFF, (groups >> 16 & 0xFF) + min(groups & 0xFF, MAX_NODES)):
            got = self.verbs([(fg, GET_PARAMETER, 0x05), (fg, GET_SUBSYSTEM_ID, 0)]
                             + [(fg, GET_PARAMETER, p) for p in (0x08, 0x0A, 0x0B, 0x0D, 0x0F, 0x12, 0x04)])
            first, count = got[-1] >> 16 & 0xFF, min(got[-1] & 0xFF, MAX_NODES)
            nodes = list(range(first, first + count))
            caps = self.verbs([(nid, GET_PARAMETER, 0x09) for nid in nodes])
            params = {0: (0x0A, 0x0B, 0x12), 1: (0x0A, 0x0B, 0x0D, 0x0E), 4: (0x0C, 0x0D, 0x12, 0x0E)}
            asked = []
            for nid, cap in zip(nodes, caps, strict=True):
                kind = cap >> 20 & 0xF
                asked += [(nid, GET_PARAMETER, p) for p in params.get(kind, (0x0E,))]
                if kind == 4:
                    asked.append((nid, GET_CONFIG_DEFAULT, 0))
            self.verbs(asked)


def read_hda(qt: Qtest, f: Function) -> dict[str, bytes]:
    bar = _mem_bar(f, 0)
    if bar is None:
        return {}
    reads = Reads(qt)
    regs = reads.run(bar, list(HDA_REGS))
    out = {"bar0": bytes(reads.data)}
    # codec verbs last: the command and response registers keep the last verb and response
    icw, ics = qt.values([bar.read(ICW), bar.read(ICS, 2)])
    verbs = Reads(qt)
    for cad in range(15):
        if regs[0x0E] >> cad & 1:
            Codec(qt, bar, cad, verbs).walk()
    qt.values([bar.write(ICW, icw), bar.write(ICS, ics & ICS_VALID, 2)])
    out["codecs"] = bytes(verbs.data)
    return out


DISPI_REGS = 11


def _bochs(reads: Reads, bar: Bar) -> None:
    if bar.size >= 0x600:
        reads.run(bar, [(0x500 + 2 * i, 2) for i in range(DISPI_REGS)])


QXL_ROM_MAGIC = 0x4F525851
MAX_QXL_ROM = 1 << 16


def read_qxl(qt: Qtest, f: Function) -> dict[str, bytes]:
    bar = _mem_bar(f, 2)
    if bar is None:
        return {}
    return {"rom": qt.read(bar.address, min(bar.size, MAX_QXL_ROM))}


ICH9_PMIO = ((0x00, 2), (0x02, 2), (0x04, 4), (0x20, 4), (0x24, 4), (0x28, 4), (0x2C, 4), (0x30, 4), (0x34, 4),
             (0x62, 1), (0x63, 1), (0x64, 2), (0x66, 2), (0x68, 2), (0x6A, 2), (0x6C, 1), (0x6D, 1), (0x6E, 1),
             (0x70, 1), (0x72, 2))
PIIX4_PMIO = ((0x00, 2), (0x02, 2), (0x04, 2), (0x0C, 2), (0x0E, 2), (0x10, 4))
SMBUS_REGS = tuple((off, 1) for off in (0x00, 0x02, 0x03, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0A, 0x0C, 0x0D))
RCRB_SIZE = 0x4000


def _io_at(config: bytes, offset: int, mask: int) -> Bar | None:
    base = struct.unpack_from("<I", config, offset)[0] & mask
    return Bar(-1, True, base, 0x100) if base else None


def read_ich9_lpc(qt: Qtest, f: Function) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pm = _io_at(f.config, 0x40, 0xFF80)
    if pm is not None and f.config[0x44] & 0x80:
        reads = Reads(qt)
        reads.run(pm, list(ICH9_PMIO))
        out["pmio"] = bytes(reads.data)
    rcba = struct.unpack_from("<I", f.config, 0xF0)[0]
    if rcba & 1:
        out["rcrb"] = qt.read(rcba & ~0x3FFF, RCRB_SIZE)
    return out


def read_smbus(qt: Qtest, f: Function) -> dict[str, bytes]:
    """ICH9 SMBus (BAR 4) or PIIX4 PM (SMBus base at 0x90, PM base at 0x40)."""
    out: dict[str, bytes] = {}
    if f.ids == (0x8086, 0x7113):
        smb = _io_at(f.config, 0x90, 0xFFF0) if f.config[0xD2] & 1 else None
        pm = _io_at(f.config, 0x40, 0xFFC0) if f.config[0x80] & 1 else None
        if pm is not None:
            reads = Reads(qt)
            reads.run(pm, list(PIIX4_PMIO))
            out["pmio"] = bytes(reads.data)
    else:
        smb = f.bars.get(4)
    if smb is not None and smb.io:
        reads = Reads(qt)
        reads.run(smb, list(SMBUS_REGS))
        out["smbus"] = bytes(reads.data)
    return out


def reader_for(f: Function) -> Reader | None:
    vendor, device = f.ids
    if vendor == 0x1AF4 and 0x1000 <= device <= 0x107F:
        return read_virtio
    if vendor == 0x8086 and device in (0x100E, 0x100C, 0x100F, 0x10D3):
        return read_e1000
    if f.class_code == 0x0C0330:
        return on_bar(0, _xhci)
    if f.class_code == 0x010601:
        return on_bar(5, _ahci)
    if f.class_code >> 8 == 0x0403:
        return read_hda
    if (vendor, device) == (0x1234, 0x1111):
        return on_bar(2, _bochs)
    if (vendor, device) == (0x1B36, 0x0100):
        return read_qxl
    if (vendor, device) == (0x8086, 0x2918):
        return read_ich9_lpc
    if (vendor, device) in ((0x8086, 0x2930), (0x8086, 0x7113)):
        return read_smbus
    return None


def register_records(qt: Qtest, pci: list[Record], sizes: dict[tuple[int, int, int], dict[int, int]],
                     ecam: int | None = None) -> list[Record]:
    """The register records of every function qabi has a reader for (module docstring)."""
    funcs = functions(pci, sizes)
    windows = Windows(funcs)
    records: list[Record] = []
    index: list[str] = []
    read: list[Function] = []
    for f in funcs:
        reader = reader_for(f)
        if reader is None:
            continue
        with mapped(qt, f, windows) as ok:
            if not ok:
                index.append(f"{f.name} unread")
                records.append(Record(f"{ROOT}/{f.name}/unread", b"an unassigned BAR behind a bridge\n"))
                continue
            try:
                files = reader(qt, f)
            except (IndexError, struct.error) as exc:
                raise CaptureError(f"reading the registers of {f.name}: {exc}") from None
        index.append(f"{f.name} {reader.__name__.removeprefix('read_')}")
        records += [Record(f"{ROOT}/{f.name}/{name}", data) for name, data in files.items()]
        read.append(f)
    # what the pci category measured must be what a driver finds after qabi's reads
    for f, config in zip(read, qt.configs([f.bdf for f in read], 64, ecam), strict=True):
        if config != f.config[:256]:
            raise CaptureError(f"reading the registers of {f.name} changed its PCI config space")
    records.append(Record(f"{ROOT}/index", "".join(line + "\n" for line in index).encode()))
    return records
