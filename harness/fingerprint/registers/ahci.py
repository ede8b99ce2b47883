"""AHCI generic host control (AHCI 1.3.1, 3.1) and per implemented port the registers that say
what is attached (PxSIG, PxSSTS) and how the port is set up (PxCMD, PxTFD)."""

from __future__ import annotations

from typing import Any

from harness.fingerprint.binary import hx
from harness.fingerprint.registers.files import Files, named

GHC = {0x00: "CAP", 0x04: "GHC", 0x0C: "PI", 0x10: "VS", 0x14: "CCC_CTL", 0x18: "CCC_PORTS", 0x1C: "EM_LOC",
       0x20: "EM_CTL", 0x24: "CAP2", 0x28: "BOHC"}
PORT = {0x18: "PxCMD", 0x20: "PxTFD", 0x24: "PxSIG", 0x28: "PxSSTS"}
NOT_COMPARED = {"IS": "not read: interrupt status (a status register, set by events)"}


def decode(files: Files) -> dict[str, Any]:
    regs = files.reads("bar5")
    out: dict[str, Any] = {"label": "AHCI", "registers": named({o: v for o, v in regs.items() if o < 0x100}, GHC)}
    cap = regs.get(0, 0)
    out["CAP.fields"] = {"NP": (cap & 0x1F) + 1, "NCS": (cap >> 8 & 0x1F) + 1, "ISS": cap >> 20 & 0xF,
                         "S64A": cap >> 31, "SNCQ": cap >> 30 & 1, "SSS": cap >> 27 & 1, "SALP": cap >> 26 & 1,
                         "SAL": cap >> 25 & 1, "SCLO": cap >> 24 & 1, "SAM": cap >> 18 & 1, "SPM": cap >> 17 & 1,
                         "PMD": cap >> 15 & 1, "SSC": cap >> 14 & 1, "PSC": cap >> 13 & 1, "EMS": cap >> 6 & 1,
                         "SXS": cap >> 5 & 1}
    vs = regs.get(0x10, 0)
    out["version"] = f"{vs >> 16}.{vs >> 8 & 0xFF}{'.' + str(vs & 0xFF) if vs & 0xFF else ''}"
    ports: dict[str, Any] = {}
    for offset, value in regs.items():
        if offset >= 0x100:
            n, reg = divmod(offset - 0x100, 0x80)
            ports.setdefault(str(n), {})[PORT.get(reg, f"+{reg:#04x}")] = hx(value, 8)
    out["ports"] = ports
    out["not_compared"] = dict(NOT_COMPARED)
    return out
