"""Intel e1000 (8254x) and e1000e (82574L): registers that reset to values a driver checks, and
the EEPROM/NVM words (Intel's 8254x and 82574 datasheets' names).

Never read: ICR (interrupt cause, cleared by a read) and the statistics counters 0x4000-0x40ff
(cleared by a read). EEPROM words through EERD (written back)."""

from __future__ import annotations

import struct
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.registers.files import Files, named

REGS = {0x0000: "CTRL", 0x0008: "STATUS", 0x0010: "EECD", 0x0018: "CTRL_EXT", 0x0028: "FCAL", 0x002C: "FCAH",
        0x0030: "FCT", 0x0038: "VET", 0x00D0: "IMS", 0x00E4: "IVAR", 0x0100: "RCTL", 0x0170: "FCTTV",
        0x0178: "TXCW", 0x0180: "RXCW", 0x0400: "TCTL", 0x0410: "TIPG", 0x0E00: "LEDCTL", 0x0F00: "EXTCNF_CTRL",
        0x0F08: "EXTCNF_SIZE", 0x0F10: "PHY_CTRL", 0x1000: "PBA", 0x1008: "PBS", 0x5008: "RFCTL",
        0x5400: "RAL0", 0x5404: "RAH0", 0x5800: "WUC", 0x5818: "MRQC", 0x5820: "MANC", 0x5B00: "GCR",
        0x5B50: "SWSM", 0x5B54: "FWSM", 0x5B64: "GCR2"}
EEPROM = {0: "mac[0]", 1: "mac[1]", 2: "mac[2]", 8: "pba[0]", 9: "pba[1]", 0x0A: "init_control_1",
          0x0B: "subsystem_id", 0x0C: "subsystem_vendor_id", 0x0D: "device_id", 0x0E: "vendor_id",
          0x0F: "init_control_2", 0x3F: "checksum"}
NOT_COMPARED = {"ICR": "not read: the interrupt cause register is cleared by a read",
                "statistics": "not read: the statistics counters (0x4000-0x40ff) are cleared by a read"}


def decode(files: Files) -> dict[str, Any]:
    regs = files.reads("bar0")
    words = files.data("eeprom")
    if len(words) != 128:
        raise DecodeError(f"{files.where}/eeprom", None, f"{len(words)} bytes where 64 words are expected")
    values = struct.unpack("<64H", words)
    eeprom = {EEPROM.get(i, f"word[{i:#04x}]"): f"0x{w:04x}" for i, w in enumerate(values)}
    mac = b"".join(struct.pack("<H", w) for w in values[:3])
    return {"label": "Intel NIC", "registers": named(regs, REGS), "eeprom": eeprom,
            "eeprom_mac": ":".join(f"{b:02x}" for b in mac), "not_compared": dict(NOT_COMPARED)}
