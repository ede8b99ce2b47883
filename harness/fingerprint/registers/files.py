"""The register files of one PCI function as the firmware transport wrote them (raw/qabi/registers/
<function>/), read on demand and bounded: what every family decoder in this package reads through."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import read_raw

ROOT = "qabi/registers"
MAX_FILE = 1 << 16
READ = struct.Struct("<IB3xI")
Family = Callable[["Files"], dict[str, Any]]


class Files:
    """The register files of one function, read on demand (bounded)."""

    def __init__(self, raw: Path, function: str) -> None:
        self.raw = raw
        self.function = function
        self.where = f"{ROOT}/{function}"

    def has(self, name: str) -> bool:
        return (self.raw / self.where / name).is_file()

    def data(self, name: str) -> bytes:
        return read_raw(self.raw, f"{self.where}/{name}", MAX_FILE)

    def reads(self, name: str) -> dict[int, int]:
        """A file of register reads (12 bytes each: offset, width, value) as {offset: value}."""
        data = self.data(name)
        if len(data) % READ.size:
            raise DecodeError(f"{self.where}/{name}", None, f"{len(data)} bytes: not a whole number of reads")
        out: dict[int, int] = {}
        for offset, width, value in READ.iter_unpack(data):
            if width not in (1, 2, 4) or value >> (8 * width):
                raise DecodeError(f"{self.where}/{name}", None, f"a {width}-byte read of {value:#x} at {offset:#x}")
            out[offset] = value
        return out

    def config(self) -> bytes:
        """The function's PCI config space (the pci category's input)."""
        return read_raw(self.raw, f"sys/bus/pci/devices/{self.function}/config", 4096)


def named(regs: dict[int, int], names: dict[int, str], width: dict[int, int] | None = None) -> dict[str, str]:
    """{name: hex value} of each read register in `names`; others as `+0xOFFSET`."""
    out = {}
    for offset, value in regs.items():
        digits = 2 * (width or {}).get(offset, 4)
        out[names.get(offset, f"+{offset:#06x}")] = f"0x{value:0{digits}x}"
    return out
