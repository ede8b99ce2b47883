"""The SeaBIOS hand-off probe: guests/payload/payload.bin, booted as `-kernel` (a bzImage stub), runs
INT 15h E820 and CPUID on the boot vCPU, stores the results at 0x30000 and halts."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.errors import CaptureError
from harness.transport.firmware.qtest import Qtest
from harness.transport.firmware.records import HandOff, cpuid_from_entries

PAYLOAD_DIR = Path(__file__).resolve().parents[3] / "guests" / "payload"
PAYLOAD = PAYLOAD_DIR / "payload.bin"

RESULT = 0x30000
MARKER = 0x4E4F4451            # "QDON"
E820_AT = RESULT + 0x100
CPUID_AT = RESULT + 0x1000
MAX_E820 = 128
MAX_CPUID = (0x10000 - 0x1000) // 24


@dataclass(frozen=True)
class PayloadResult:
    e820: list[tuple[int, int, int]]
    e820_status: int
    cpuid: dict[tuple[int, int], tuple[int, int, int, int]]
    cpuid_order: list[tuple[int, int]]


def read_payload(qt: Qtest) -> PayloadResult:
    header = qt.read(RESULT, 0x28)
    _marker, version, n_e820, n_cpuid, status = struct.unpack_from("<5I", header)
    if version != 1:
        raise CaptureError(f"the payload wrote result version {version} (this qabi reads 1)")
    if n_e820 > MAX_E820 or n_cpuid > MAX_CPUID:
        raise CaptureError(f"the payload wrote absurd counts ({n_e820} e820, {n_cpuid} cpuid entries)")
    raw = qt.read(E820_AT, 20 * n_e820)
    e820 = [struct.unpack_from("<QQI", raw, 20 * i) for i in range(n_e820)]
    cpuid, order = cpuid_from_entries(qt.read(CPUID_AT, 24 * n_cpuid), n_cpuid)
    return PayloadResult([(a, n, t) for a, n, t in e820], status, cpuid, order)


def ready(qt: Qtest) -> bool:
    return qt.readl(RESULT) == MARKER


def handoff(qt: Qtest) -> HandOff:
    """The payload's result as the shared flow reads it (ACPI and SMBIOS: the BIOS areas)."""
    result = read_payload(qt)
    if result.e820_status not in (0, 3) or not result.e820:
        raise CaptureError(f"the firmware's INT 15h E820 failed (status {result.e820_status}, "
                           f"{len(result.e820)} entries)")
    return HandOff(e820=result.e820, cpuid=result.cpuid, info={"payload": "1"})


def payload_bytes() -> bytes:
    try:
        return PAYLOAD.read_bytes()
    except OSError as exc:
        raise CaptureError(f"the reference payload {PAYLOAD} is unreadable: {exc.strerror}") from None


def payload_sha256() -> str:
    """The sha256 of the payload that boots (it decides a firmware capture's bytes: cache keys)."""
    return hashlib.sha256(payload_bytes()).hexdigest()
