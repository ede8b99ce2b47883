"""Intel High Definition Audio controller global registers (HDA 1.0a, 3.3)."""

from __future__ import annotations

from typing import Any

from harness.fingerprint.registers import Files, named

REGS = {0x00: "GCAP", 0x02: "VMIN", 0x03: "VMAJ", 0x04: "OUTPAY", 0x06: "INPAY", 0x08: "GCTL", 0x0C: "WAKEEN",
        0x0E: "STATESTS", 0x10: "GSTS", 0x18: "OUTSTRMPAY", 0x1A: "INSTRMPAY", 0x20: "INTCTL", 0x4E: "CORBSIZE",
        0x5E: "RIRBSIZE"}
WIDTH = {0x00: 2, 0x02: 1, 0x03: 1, 0x04: 2, 0x06: 2, 0x0C: 2, 0x0E: 2, 0x10: 2, 0x18: 2, 0x1A: 2, 0x4E: 1, 0x5E: 1}
NOT_COMPARED = {"WALCLK": "not read: the wall clock counter counts by itself",
                "INTSTS": "not read: interrupt status (set by events)",
                "codecs": "not read: codec verbs need the controller out of reset (GCTL.CRST), which the "
                          "firmware leaves in reset; setting it would change what the guest sees"}


def decode(files: Files) -> dict[str, Any]:
    regs = files.reads("bar0")
    gcap = regs.get(0, 0)
    return {"label": "HD Audio controller", "registers": named(regs, REGS, WIDTH),
            "GCAP.fields": {"OSS": gcap >> 12 & 0xF, "ISS": gcap >> 8 & 0xF, "BSS": gcap >> 3 & 0x1F,
                            "NSDO": gcap >> 1 & 3, "64OK": gcap & 1},
            "version": f"{regs.get(3, 0)}.{regs.get(2, 0)}", "not_compared": dict(NOT_COMPARED)}
