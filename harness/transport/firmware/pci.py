"""PCI at the hand-off: every function's config space (CF8/CFC, ECAM for PCI Express) and the sysfs
`resource` text Linux would print, from the BARs the firmware assigned and QEMU's query-pci sizes."""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

from harness.errors import CaptureError
from harness.transport.firmware.qtest import MAX_BUSES, Qtest
from harness.transport.framing import Record

IORESOURCE_IO, IORESOURCE_MEM = 0x100, 0x200
IORESOURCE_PREFETCH, IORESOURCE_READONLY = 0x2000, 0x4000
IORESOURCE_SIZEALIGN, IORESOURCE_MEM_64 = 0x40000, 0x100000
IORESOURCE_PCI_FIXED, IORESOURCE_ROM_SHADOW = 0x10, 0x2
LEGACY_IO = IORESOURCE_IO | IORESOURCE_PCI_FIXED
LINES_ENDPOINT, LINES_BRIDGE = 13, 17      # PCI_BRIDGE_RESOURCES / PCI_NUM_RESOURCES (with IOV)


def _find_cap(config: bytes, cap_id: int) -> int | None:
    if not config[6] & 0x10:
        return None
    pos, seen = config[0x34] & 0xFC, set()
    while pos >= 0x40 and pos not in seen and pos + 2 <= len(config):
        seen.add(pos)
        if config[pos] == cap_id:
            return pos
        pos = config[pos + 1] & 0xFC
    return None


def _mcfg_base(tables: list[Record]) -> int | None:
    for rec in tables:
        if rec.path.rsplit("/", 1)[-1].startswith("MCFG") and len(rec.data) >= 44 + 16:
            base, segment, first_bus = struct.unpack_from("<QHB", rec.data, 44)
            if segment == 0 and first_bus == 0:
                return int(base)
    return None


def qmp_query_pci(qmp_path: Path, deadline: float, alive: Any) -> dict[tuple[int, int, int], dict[int, int]]:
    """(bus, slot, function) -> {region index (6 = ROM): size}, from QEMU's query-pci."""
    conn = None
    while conn is None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(qmp_path))
            conn = s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            alive()
            if time.monotonic() > deadline:
                raise CaptureError("QEMU did not answer on its QMP socket") from None
            time.sleep(0.01)
    try:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        reader = conn.makefile("rb")

        def reply() -> Any:
            while True:
                line = reader.readline(16 << 20)
                if not line:
                    raise CaptureError("QEMU closed its QMP socket")
                msg = json.loads(line)
                if "return" in msg:
                    return msg["return"]
                if "error" in msg:
                    raise CaptureError(f"QMP error: {msg['error'].get('desc', msg['error'])}")
        json.loads(reader.readline(1 << 20) or b"{}")           # greeting
        conn.sendall(b'{"execute":"qmp_capabilities"}\n')
        reply()
        conn.sendall(b'{"execute":"query-pci"}\n')
        buses = reply()
    except (OSError, ValueError) as exc:
        alive()
        raise CaptureError(f"cannot read the PCI regions over QMP: {exc}") from None
    finally:
        conn.close()
    out: dict[tuple[int, int, int], dict[int, int]] = {}

    def walk(devices: list[dict[str, Any]], bus: int, depth: int) -> None:
        if depth > MAX_BUSES:
            raise CaptureError("query-pci nests bridges absurdly deep")
        for dev in devices:
            key = (int(dev["bus"]), int(dev["slot"]), int(dev["function"]))
            out[key] = {int(r["bar"]): int(r["size"]) for r in dev.get("regions", [])}
            bridge = dev.get("pci_bridge")
            if bridge:
                walk(bridge.get("devices", []), int(bridge["bus"]["secondary"]), depth + 1)

    for bus in buses:
        walk(bus.get("devices", []), int(bus["bus"]), 0)
    return out


def resource_text(config: bytes, sizes: dict[int, int], boot_vga: bool) -> bytes:
    """The sysfs `resource` file Linux prints for this function (see the module docstring)."""
    header_type = config[0x0E] & 0x7F
    nbars = {0: 6, 1: 2}.get(header_type, 0)
    lines = [(0, 0, 0)] * (LINES_BRIDGE if header_type == 1 else LINES_ENDPOINT)
    i = 0
    while i < nbars:
        value = struct.unpack_from("<I", config, 0x10 + 4 * i)[0]
        size = sizes.get(i, 0)
        step = 1
        if size:
            if value & 1:
                start, flags = value & ~3, IORESOURCE_IO | (value & 3) | IORESOURCE_SIZEALIGN
            else:
                start, flags = value & ~0xF, IORESOURCE_MEM | (value & 0xF) | IORESOURCE_SIZEALIGN
                if value & 8:
                    flags |= IORESOURCE_PREFETCH
                if value >> 1 & 3 == 2:
                    flags |= IORESOURCE_MEM_64
                    if i + 1 < nbars:
                        start |= struct.unpack_from("<I", config, 0x14 + 4 * i)[0] << 32
                    step = 2
            lines[i] = (start, start + size - 1, flags)
        i += step
    rom_offset = {0: 0x30, 1: 0x38}.get(header_type)
    if rom_offset is not None and sizes.get(6):
        rom = struct.unpack_from("<I", config, rom_offset)[0]
        start = rom & ~0x7FF
        flags = (rom & 1) | IORESOURCE_MEM | IORESOURCE_PREFETCH | IORESOURCE_READONLY | IORESOURCE_SIZEALIGN
        lines[6] = (start, start + sizes[6] - 1, flags)
    class_code = config[0x0B] << 8 | config[0x0A]
    if header_type == 0 and class_code == 0x0101:               # pci_setup_device: legacy IDE
        prog_if = config[0x09]
        if not prog_if & 1:
            lines[0], lines[1] = (0x1F0, 0x1F7, LEGACY_IO), (0x3F6, 0x3F6, LEGACY_IO)
        if not prog_if & 4:
            lines[2], lines[3] = (0x170, 0x177, LEGACY_IO), (0x376, 0x376, LEGACY_IO)
    if boot_vga:                                                # pci_fixup_video
        lines[6] = (0xC0000, 0xDFFFF, IORESOURCE_MEM | IORESOURCE_ROM_SHADOW | IORESOURCE_PCI_FIXED)
    return "".join(f"0x{a:016x} 0x{b:016x} 0x{f:016x}\n" for a, b, f in lines).encode()


def pci_records(qt: Qtest, ecam: int | None, sizes: dict[tuple[int, int, int], dict[int, int]]) -> list[Record]:
    """Every function from bus 0, bridges followed; config and resource records."""
    records: list[Record] = []
    pending, seen = [0], {0}
    vga_done = False
    while pending:
        bus = pending.pop(0)
        # a bus in three round trips: function 0 of every slot (id, header type), the other functions
        # of multi-function slots, then the config space of every function present
        heads = qt.configs([bus << 8 | dev << 3 for dev in range(32)], 4, ecam)
        present = [(dev, 0) for dev, head in enumerate(heads) if head[:2] not in (b"\xff\xff", b"\x00\x00")]
        multi = [(dev, fn) for dev, _ in present if heads[dev][0x0E] & 0x80 for fn in range(1, 8)]
        if multi:
            ids = qt.configs([bus << 8 | dev << 3 | fn for dev, fn in multi], 1, ecam)
            present += [slot for slot, ident in zip(multi, ids, strict=True) if ident[:2] not in (b"\xff\xff", b"\x00\x00")]
        present.sort()
        for (dev, fn), config in zip(present, qt.configs([bus << 8 | dev << 3 | fn for dev, fn in present], 64, ecam),
                                     strict=True):
            bdf = bus << 8 | dev << 3 | fn
            if ecam is not None and _find_cap(config, 0x10) is not None:
                ext = qt.read(ecam + (bdf << 12), 4096)
                if ext[0x100:0x104] != b"\xff\xff\xff\xff":
                    config = config + ext[256:]
            class_code = config[0x0B] << 8 | config[0x0A]
            command = struct.unpack_from("<H", config, 4)[0]
            boot_vga = False
            if class_code == 0x0300 and command & 3 and not vga_done:
                boot_vga = vga_done = True
            where = f"/sys/bus/pci/devices/0000:{bus:02x}:{dev:02x}.{fn}"
            records.append(Record(f"{where}/config", config))
            records.append(Record(f"{where}/resource", resource_text(config, sizes.get((bus, dev, fn), {}), boot_vga)))
            if config[0x0E] & 0x7F == 1:
                secondary = config[0x19]
                if secondary in seen or secondary <= bus:
                    raise CaptureError(f"PCI bridge {where[21:]} leads to bus {secondary:#04x}, which was "
                                       "already scanned: a looping bridge chain")
                if len(seen) >= MAX_BUSES:
                    raise CaptureError(f"more than {MAX_BUSES} PCI buses")
                seen.add(secondary)
                pending.append(secondary)
    return records
