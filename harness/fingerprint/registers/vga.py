"""Display adapters: the Bochs VBE "DISPI" registers of QEMU's standard VGA (bochs-display too)
and the QXL ROM (spice's QXLRom: RAM/VRAM layout and the mode list)."""

from __future__ import annotations

import struct
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import Blob, hx
from harness.fingerprint.registers.files import Files, named

DISPI = {0x500: "ID", 0x502: "XRES", 0x504: "YRES", 0x506: "BPP", 0x508: "ENABLE", 0x50A: "BANK",
         0x50C: "VIRT_WIDTH", 0x50E: "VIRT_HEIGHT", 0x510: "X_OFFSET", 0x512: "Y_OFFSET", 0x514: "VIDEO_MEMORY_64K"}
QXL_MAGIC = 0x4F525851
MAX_MODES = 1024
ROM_FIELDS = (("id", 4, 4), ("update_id", 8, 4), ("compression_level", 12, 4), ("log_level", 16, 4),
              ("mode", 20, 4), ("modes_offset", 24, 4), ("num_pages", 28, 4), ("pages_offset", 32, 4),
              ("draw_area_offset", 36, 4), ("surface0_area_size", 40, 4), ("ram_header_offset", 44, 4),
              ("n_surfaces", 52, 4), ("flags", 56, 8), ("slots_start", 64, 1), ("slots_end", 65, 1),
              ("slot_gen_bits", 66, 1), ("slot_id_bits", 67, 1), ("slot_generation", 68, 1))


def decode_bochs(files: Files) -> dict[str, Any]:
    regs = files.reads("bar2")
    fields = named(regs, DISPI, dict.fromkeys(DISPI, 2))
    return {"label": "Bochs VBE (DISPI)", "registers": fields,
            "vram_bytes": regs.get(0x514, 0) * 65536}


def decode_qxl(files: Files) -> dict[str, Any]:
    rom = Blob(f"{files.where}/rom", files.data("rom"))
    if rom.u32(0) != QXL_MAGIC:
        raise DecodeError(rom.name, 0, f"not a QXL ROM (magic {rom.u32(0):#x})")
    fields: dict[str, Any] = {}
    for name, offset, size in ROM_FIELDS:
        fields[name] = {1: rom.u8, 4: rom.u32, 8: rom.u64}[size](offset)
    modes_at = fields["modes_offset"]
    count = rom.u32(modes_at)
    if count > MAX_MODES:
        raise DecodeError(rom.name, modes_at, f"{count} modes (more than {MAX_MODES})")
    modes = []
    for i in range(count):
        mid, x, y, bits, stride, xm, ym, orient = struct.unpack("<8I", rom.bytes(modes_at + 4 + 32 * i, 32))
        modes.append(f"{mid}: {x}x{y}x{bits} stride {stride} {xm}x{ym}mm orientation {orient}")
    return {"label": "QXL ROM", "rom": {k: hx(v) if k == "flags" else v for k, v in fields.items()},
            "modes": modes, "not_compared": {"mm_clock": "the multimedia clock counts by itself",
                                             "client_*": "what a connected SPICE client reported"}}
