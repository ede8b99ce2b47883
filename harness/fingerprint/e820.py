"""Memory map: the firmware's e820 ranges as the guest kernel got them (/sys/firmware/memmap)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.errors import DecodeError

MEMMAP = Path("sys/firmware/memmap")
MAX_RANGES = 4096
_HEX = re.compile(r"0x[0-9a-fA-F]{1,16}")


def _read(path: Path, raw: Path, limit: int = 128) -> str:
    data = path.read_bytes()
    rel = str(path.relative_to(raw))
    if len(data) > limit:
        raise DecodeError(rel, 0, f"{len(data)} bytes where a short text value is expected")
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise DecodeError(rel, exc.start, "not ASCII text") from None


def decode(raw: Path) -> dict[str, Any]:
    """{"map": {"label": "memory map", "ranges": [{start, end, type}, ...]}} in address order."""
    base = raw / MEMMAP
    if not base.is_dir():
        raise DecodeError(str(MEMMAP), None, "the capture has no firmware memory map")
    entries = [p for p in base.iterdir() if p.is_dir()]
    if len(entries) > MAX_RANGES:
        raise DecodeError(str(MEMMAP), None, f"{len(entries)} ranges (more than {MAX_RANGES})")
    ranges = []
    for entry in entries:
        if not entry.name.isdigit():
            raise DecodeError(str(entry.relative_to(raw)), None, "unexpected entry in the memory map")
        values = {}
        for field in ("start", "end", "type"):
            f = entry / field
            if not f.is_file():
                raise DecodeError(str(f.relative_to(raw)), None, "missing")
            values[field] = _read(f, raw)
        for field in ("start", "end"):
            if not _HEX.fullmatch(values[field]):
                raise DecodeError(str((entry / field).relative_to(raw)), 0, f"not a hex address: {values[field]!r}")
        start, end = int(values["start"], 16), int(values["end"], 16)
        if end < start:
            raise DecodeError(str(entry.relative_to(raw)), None, f"range ends before it starts ({start:#x} > {end:#x})")
        ranges.append((start, end, values["type"]))
    ranges.sort()
    return {"map": {"label": "memory map",
                    "ranges": [{"start": hex(s), "end": hex(e), "type": t} for s, e, t in ranges]}}
