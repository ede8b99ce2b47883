"""newc cpio archives for the initramfs, byte for byte deterministic: entries sorted by path, inode
numbers in that order, mtime 0, owner 0:0."""

from __future__ import annotations

import gzip
import stat
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from harness.guest.recipe import ImageError


@dataclass(frozen=True)
class CpioEntry:
    """One archive member."""

    path: str                  # without leading slash
    mode: int                  # full st_mode
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _cpio_header(ino: int, mode: int, nlink: int, size: int, rdev: tuple[int, int], namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return b"070701" + b"".join(b"%08X" % value for value in fields)


def write_cpio(entries: list[CpioEntry], existing: Iterable[str] = (), first_ino: int = 1) -> bytes:
    """A newc archive of `entries`: sorted by path, inodes first_ino.. in that order, mtime 0, owner 0:0.

    `existing`: directories an earlier archive of the same initramfs already made (parents of
    entries that this archive does not contain itself).
    """
    out = bytearray()
    ordered = sorted(entries, key=lambda e: e.path.split("/"))
    seen: set[str] = set()
    made = set(existing)
    for ino, entry in enumerate(ordered, start=first_ino):
        if entry.path in seen or entry.path in made or not entry.path or entry.path.startswith("/"):
            raise ImageError(f"bad or duplicate initramfs path {entry.path!r}")
        seen.add(entry.path)
        parent = entry.path.rpartition("/")[0]
        if parent and parent not in seen and parent not in made:
            raise ImageError(f"initramfs entry {entry.path} has no parent directory entry")
        name = entry.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        out += _cpio_header(ino, entry.mode, nlink, len(entry.data), entry.rdev, len(name))
        out += name + pad4(110 + len(name))
        out += entry.data + pad4(len(entry.data))
    name = b"TRAILER!!!\0"
    out += _cpio_header(0, 0, 1, 0, (0, 0), len(name)) + name + pad4(110 + len(name))
    return bytes(out)


def read_cpio(data: bytes) -> list[tuple[str, int, bytes]]:
    """(path, mode, data) of every entry of a newc archive (for tests and inspection)."""
    entries: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != b"070701":
            raise ImageError(f"not a newc cpio archive at offset {pos:#x}")
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append((name, mode, data[body:body + size]))
        pos = body + size + (-size % 4)


def split_initramfs(data: bytes, base_size: int) -> tuple[bytes, bytes]:
    """(the deterministic cpio, the per-build cpio) of an initramfs whose first segment (gzip'd)
    is `base_size` bytes long; the padding between them is dropped."""
    if data[:2] != b"\x1f\x8b" or not 0 < base_size <= len(data):
        raise ImageError("not a qabi initramfs (gzip'd cpio, then a cpio of per-build files)")
    try:
        base = gzip.decompress(data[:base_size])
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageError(f"initramfs: the deterministic segment is not valid gzip: {exc}") from None
    return base, data[base_size:].lstrip(b"\0")


def with_parents(entries: list[CpioEntry]) -> list[CpioEntry]:
    """`entries` and a 0755 directory entry for every ancestor directory they lack."""
    have = {e.path for e in entries}
    out = list(entries)
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        while parent and parent not in have:
            have.add(parent)
            out.append(CpioEntry(parent, stat.S_IFDIR | 0o755))
            parent = parent.rpartition("/")[0]
    return out
