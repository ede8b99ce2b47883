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
from pathlib import Path
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import read_raw
from harness.fingerprint.registers.files import ROOT, Family, Files

INDEX = f"{ROOT}/index"
MAX_FUNCTIONS = 1024
_LINE = re.compile(r"(0000:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) ([a-z0-9_]{1,32})")


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
