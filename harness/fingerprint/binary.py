"""Bounds-checked little-endian reads over untrusted guest bytes: every failure is a DecodeError
naming the file and the offset."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from harness.errors import DecodeError

MAX_FILE = 16 << 20


def read_raw(raw: Path, rel: str, limit: int = MAX_FILE) -> bytes:
    """The bytes of raw/`rel`, refusing files larger than `limit`."""
    path = raw / rel
    try:
        size = path.stat().st_size
    except OSError:
        raise DecodeError(rel, None, "missing from the capture") from None
    if size > limit:
        raise DecodeError(rel, None, f"{size} bytes (limit {limit})")
    return path.read_bytes()


@dataclass(frozen=True)
class Blob:
    """Named bytes with checked fixed-width reads."""

    name: str
    data: bytes

    def __len__(self) -> int:
        return len(self.data)

    def need(self, offset: int, size: int, what: str = "field") -> None:
        if offset < 0 or size < 0 or offset + size > len(self.data):
            raise DecodeError(self.name, offset, f"{what} of {size} bytes runs past the end ({len(self.data)} bytes)")

    def u8(self, offset: int) -> int:
        self.need(offset, 1)
        return self.data[offset]

    def u16(self, offset: int) -> int:
        self.need(offset, 2)
        return int(struct.unpack_from("<H", self.data, offset)[0])

    def u32(self, offset: int) -> int:
        self.need(offset, 4)
        return int(struct.unpack_from("<I", self.data, offset)[0])

    def u64(self, offset: int) -> int:
        self.need(offset, 8)
        return int(struct.unpack_from("<Q", self.data, offset)[0])

    def bytes(self, offset: int, size: int, what: str = "field") -> bytes:
        self.need(offset, size, what)
        return self.data[offset:offset + size]

    def text(self, offset: int, size: int) -> str:
        """A fixed-width ASCII field (NULs and trailing spaces trimmed; other bytes escaped)."""
        raw = self.bytes(offset, size).split(b"\0", 1)[0]
        return raw.decode("ascii", errors="backslashreplace").rstrip()

    def fail(self, offset: int | None, message: str) -> DecodeError:
        return DecodeError(self.name, offset, message)


def hx(value: int, width: int = 0) -> str:
    """A register value, id or address as a hex string: hx(0x1af4, 4) == '0x1af4'."""
    return f"0x{value:0{width}x}"
