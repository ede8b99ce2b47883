"""The chipset's power management, TCO, SMBus and root complex registers that reset to non-zero
values: ICH9 LPC (PMBASE I/O block and the RCRB at RCBA), ICH9 SMBus, PIIX4 PM/SMBus (Intel's
ICH9 and PIIX4 datasheets' names)."""

from __future__ import annotations

import struct
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import hx
from harness.fingerprint.registers.files import Files, named

ICH9_PMIO = {0x00: "PM1_STS", 0x02: "PM1_EN", 0x04: "PM1_CNT", 0x20: "GPE0_STS", 0x24: "GPE0_STS_HI",
             0x28: "GPE0_EN", 0x2C: "GPE0_EN_HI", 0x30: "SMI_EN", 0x34: "SMI_STS", 0x62: "TCO_DAT_IN",
             0x63: "TCO_DAT_OUT", 0x64: "TCO1_STS", 0x66: "TCO2_STS", 0x68: "TCO1_CNT", 0x6A: "TCO2_CNT",
             0x6C: "TCO_MESSAGE1", 0x6D: "TCO_MESSAGE2", 0x6E: "TCO_WDCNT", 0x70: "SW_IRQ_GEN", 0x72: "TCO_TMR"}
ICH9_WIDTH = {0x00: 2, 0x02: 2, 0x62: 1, 0x63: 1, 0x64: 2, 0x66: 2, 0x68: 2, 0x6A: 2, 0x6C: 1, 0x6D: 1, 0x6E: 1,
              0x70: 1, 0x72: 2}
PIIX4_PMIO = {0x00: "PMSTS", 0x02: "PMEN", 0x04: "PMCNTRL", 0x0C: "GPSTS", 0x0E: "GPEN", 0x10: "PCNTRL"}
PIIX4_WIDTH = {0x00: 2, 0x02: 2, 0x04: 2, 0x0C: 2, 0x0E: 2}
SMBUS = {0x00: "HST_STS", 0x02: "HST_CNT", 0x03: "HST_CMD", 0x04: "XMIT_SLVA", 0x05: "HST_D0", 0x06: "HST_D1",
         0x08: "PEC", 0x09: "RCV_SLVA", 0x0A: "SLV_DATA", 0x0C: "AUX_STS", 0x0D: "AUX_CTL"}
RCRB = {0x3400: "RC", 0x3404: "HPTC", 0x3410: "GCS", 0x3414: "BUC", 0x3418: "FD", 0x341C: "CG"}
STATUS = {"PM1_STS", "GPE0_STS", "GPE0_STS_HI", "SMI_STS", "TCO1_STS", "TCO2_STS", "PMSTS", "GPSTS", "HST_STS",
          "AUX_STS"}
PM_NOT_COMPARED = {
    "PM1_TMR": "not read: the ACPI PM timer counts by itself",
    "status": "status registers (PM1_STS, GPE0_STS, SMI_STS, TCO1/2_STS, PMSTS, GPSTS) are set by events "
              "and timers (PM1_STS.TMR_STS flips with the PM timer): read, left out",
}
TCO_NOT_COMPARED = {"TCO_RLD": "not read: the TCO timer counts down by itself"}
SMBUS_NOT_COMPARED = {
    "HOST_BLOCK_DB": "not read: reading the SMBus block data register moves its index",
    "smbus_status": "HST_STS and AUX_STS are set by bus events: read, left out",
}


def _split(fields: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k not in STATUS}


def decode_lpc(files: Files) -> dict[str, Any]:
    out: dict[str, Any] = {"label": "ICH9 LPC: PM, TCO and RCRB"}
    if files.has("pmio"):
        out["pmio"] = _split(named(files.reads("pmio"), ICH9_PMIO, ICH9_WIDTH))
    if files.has("rcrb"):
        data = files.data("rcrb")
        if len(data) % 4:
            raise DecodeError(f"{files.where}/rcrb", None, f"{len(data)} bytes: not whole dwords")
        out["rcrb"] = {RCRB.get(4 * i, f"+{4 * i:#06x}"): hx(v, 8)
                       for i, (v,) in enumerate(struct.iter_unpack("<I", data)) if v}
    out["not_compared"] = {**PM_NOT_COMPARED, **TCO_NOT_COMPARED}
    return out


def decode_smbus(files: Files) -> dict[str, Any]:
    out: dict[str, Any] = {"label": "SMBus" + (" and PIIX4 PM" if files.has("pmio") else "")}
    if files.has("pmio"):
        out["pmio"] = _split(named(files.reads("pmio"), PIIX4_PMIO, PIIX4_WIDTH))
    if files.has("smbus"):
        out["smbus"] = _split(named(files.reads("smbus"), SMBUS, dict.fromkeys(SMBUS, 1)))
    out["not_compared"] = {**(PM_NOT_COMPARED if "pmio" in out else {}), **SMBUS_NOT_COMPARED}
    return out
