"""Registers behind the BARs, as drivers read them at the hand-off: one decoder per device family.

The firmware transport (harness/transport/firmware/registers.py) writes, per PCI function it has
a reader for, files under raw/qabi/registers/<function>/ and an `index` (`<function> <family>`
per line). Each family module here turns its files into an entry keyed by the function address:

    {"label": "virtio block device", "family": "virtio", ...named registers and fields...,
     "not_compared": {register: why}}

`not_compared` names what was read (or deliberately not read) but is left out of the values:
registers that change by themselves (counters, timers, status bits), driver state the firmware
wrote, and registers whose read has a side effect; each also has a row in the policy table.

A capture without raw/qabi/registers/index (a serial or ssh capture, or one made before qabi
read registers) has no `registers` data: the category is *not collected* there and a comparison
with such a capture leaves it out with a note (harness/drift/engine.py).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import read_raw

ROOT = "qabi/registers"
INDEX = f"{ROOT}/index"
MAX_FUNCTIONS = 1024
MAX_FILE = 1 << 16
_LINE = re.compile(r"(0000:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) ([a-z0-9_]{1,32})")
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


def families() -> dict[str, Family]:
    from harness.fingerprint.registers import ahci, chipset, e1000, hda, vga, virtio, xhci

    return {"virtio": virtio.decode, "e1000": e1000.decode, "xhci": xhci.decode, "ahci": ahci.decode,
            "hda": hda.decode, "bochs": vga.decode_bochs, "qxl": vga.decode_qxl,
            "ich9_lpc": chipset.decode_lpc, "smbus": chipset.decode_smbus, "unread": _unread}


def _unread(files: Files) -> dict[str, Any]:
    """A function qabi has a reader for but could not read (the transport says why)."""
    reason = files.data("unread")[:200].decode("ascii", errors="backslashreplace").strip()
    return {"label": "registers not read", "reason": reason}


def collected(raw: Path) -> bool:
    return (raw / INDEX).is_file()


def decode(raw: Path) -> dict[str, Any]:
    """{function address: entry} for every function in the index (see the module docstring)."""
    text = read_raw(raw, INDEX, 1 << 16)
    try:
        lines = text.decode("ascii").splitlines()
    except UnicodeDecodeError as exc:
        raise DecodeError(INDEX, exc.start, "not ASCII text") from None
    if len(lines) > MAX_FUNCTIONS:
        raise DecodeError(INDEX, None, f"{len(lines)} functions (more than {MAX_FUNCTIONS})")
    table = families()
    out: dict[str, Any] = {}
    for n, line in enumerate(lines):
        m = _LINE.fullmatch(line)
        if not m or m.group(2) not in table:
            raise DecodeError(INDEX, None, f"line {n + 1} is not '<function> <family>': {line[:60]!r}")
        function, family = m.groups()
        entry = table[family](Files(raw, function))
        out[function] = {"family": family, **entry}
    return out


__all__ = ["INDEX", "ROOT", "Files", "collected", "decode", "named"]
