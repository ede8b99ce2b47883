"""The one archive reader: a tar (plain, gzip, xz or bzip2) read as a stream, bounded before it costs.

Archives are hostile input (`qabi cache import`, a baseline's raw.tar.xz). Python's tarfile keeps
every member's header in memory and reads a pax or GNU long-name header whole, so a 520 KB file
of many members or one declaring a 100 MB pax header can cost gigabytes. This reader decompresses
incrementally (at most `CHUNK` bytes at a time) and parses the ustar/pax headers itself, keeping
nothing of a member once it is passed: the member count, each header, each name, each member's
size, the total of decompressed bytes and the wall time are bounded (`Limits`), and the first
bound crossed refuses the archive with one line (`QabiError`). Only regular files and directories
are members; links, devices and anything else are refused, as are absolute names and `..`.
"""

from __future__ import annotations

import bz2
import lzma
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from harness.errors import QabiError

BLOCK = 512
CHUNK = 1 << 20
_ZLIB = type(zlib.decompressobj())


@dataclass(frozen=True)
class Limits:
    members: int                    # files and directories
    member_bytes: int               # one member's size
    total_bytes: int                # the whole decompressed stream
    seconds: float                  # wall time to read it all
    name_bytes: int = 1024          # one member's path (UTF-8)
    header_bytes: int = 64 << 10    # one pax extended header or GNU long name


@dataclass(frozen=True)
class Member:
    name: str
    kind: Literal["file", "dir"]
    size: int


class ArchiveRefused(QabiError):
    """The archive crossed a bound or is not a well-formed tar of files and directories."""


def read_tar(source: Path, limits: Limits) -> Iterator[tuple[Member, Iterator[bytes]]]:
    """Each member of the tar `source` with an iterator over its bytes (a directory's is empty);
    what the caller leaves unread is skipped. ArchiveRefused (naming `source`) at the first bound
    crossed, a malformed header or a truncated stream."""
    try:
        handle = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ArchiveRefused(f"{source}: cannot read it: {exc.strerror or exc}") from None
    with handle:
        stream = _Stream(source, _decompressed(source, handle, limits))
        yield from _members(source, stream, limits)


def _refuse(source: Path, why: str) -> ArchiveRefused:
    return ArchiveRefused(f"{source}: {why}; refusing the archive")


def _decompressed(source: Path, handle: BinaryIO, limits: Limits) -> Iterator[bytes]:
    """The decompressed bytes of `handle`, in chunks of at most CHUNK, bounded in total and time."""
    deadline = time.monotonic() + limits.seconds
    total = 0

    def bounded(chunk: bytes) -> bytes:
        nonlocal total
        total += len(chunk)
        if total > limits.total_bytes:
            raise _refuse(source, f"it unpacks to more than {limits.total_bytes} bytes")
        if time.monotonic() > deadline:
            raise _refuse(source, f"reading it took more than {limits.seconds:g} s")
        return chunk

    data = handle.read(6)
    kind = ("gzip" if data.startswith(b"\x1f\x8b") else "xz" if data.startswith(b"\xfd7zXZ\x00")
            else "bzip2" if data.startswith(b"BZh") else "plain")
    if kind == "plain":
        while data:
            yield bounded(data)
            data = handle.read(CHUNK)
        return
    decomp = _new(kind)
    try:
        while True:
            if not data:
                data = handle.read(CHUNK)
                if not data:
                    if not decomp.eof:
                        raise _refuse(source, f"its {kind} stream is truncated")
                    return
            if decomp.eof:            # another stream follows (gzip members, xz streams) or padding
                if not data.strip(b"\0"):
                    data = b""
                    continue
                decomp = _new(kind)
            for out in _inflate(decomp, data):
                yield bounded(out)
            data = decomp.unused_data if decomp.eof else b""
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
        raise _refuse(source, f"its {kind} stream is corrupt ({exc})") from None


def _new(kind: str) -> Any:
    if kind == "gzip":
        return zlib.decompressobj(wbits=31)
    if kind == "xz":
        return lzma.LZMADecompressor()
    return bz2.BZ2Decompressor()


def _inflate(decomp: Any, data: bytes) -> Iterator[bytes]:
    """All the output `data` gives, at most CHUNK bytes at a time (never a whole bomb in memory).
    zlib keeps the input it could not yet inflate in `unconsumed_tail`; lzma and bz2 buffer it."""
    if isinstance(decomp, _ZLIB):
        while True:
            out = decomp.decompress(data, CHUNK)
            data = decomp.unconsumed_tail
            if out:
                yield out
            if decomp.eof or (not data and len(out) < CHUNK):
                return
    out = decomp.decompress(data, CHUNK)
    while True:
        if out:
            yield out
        if decomp.eof or decomp.needs_input:
            return
        out = decomp.decompress(b"", CHUNK)


class _Stream:
    """Exact reads over the chunk iterator; at most one chunk and one request are held."""

    def __init__(self, source: Path, chunks: Iterator[bytes]) -> None:
        self.source, self.chunks, self.buf, self.pos = source, chunks, b"", 0

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, or fewer only at the end of the stream."""
        parts, have = [], 0
        while have < size:
            if self.pos == len(self.buf):
                self.buf, self.pos = next(self.chunks, b""), 0
                if not self.buf:
                    break
            take = self.buf[self.pos:self.pos + size - have]
            self.pos += len(take)
            parts.append(take)
            have += len(take)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def pieces(self, size: int) -> Iterator[bytes]:
        """`size` bytes as they come, in chunks; a short stream is a truncated archive."""
        left = size
        while left:
            piece = self.read(min(left, CHUNK))
            if not piece:
                raise _refuse(self.source, "it is truncated (a member's data is cut short)")
            left -= len(piece)
            yield piece


def _members(source: Path, stream: _Stream, limits: Limits) -> Iterator[tuple[Member, Iterator[bytes]]]:
    count = 0
    first = True
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        header = stream.read(BLOCK)
        if not header:
            raise _refuse(source, "it is empty (not a tar archive)" if first else
                          "it is truncated (no end-of-archive marker)")
        first = False
        if header == bytes(BLOCK):
            return          # the end-of-archive blocks
        if len(header) < BLOCK:
            raise _refuse(source, "it is truncated (a header is cut short)")
        _check_sum(source, header)
        typeflag = header[156:157]
        size = _number(source, header[124:136], "size")
        if typeflag in (b"x", b"L"):
            if size > limits.header_bytes:
                raise _refuse(source, f"a {'pax' if typeflag == b'x' else 'long-name'} header of {size} bytes "
                                      f"(over {limits.header_bytes})")
            body = b"".join(stream.pieces(_padded(size)))[:size]
            if typeflag == b"x":
                pax = _pax_records(source, body)
            else:
                long_name = _text(source, body.rstrip(b"\0"))
            continue
        count += 1
        if count > limits.members:
            raise _refuse(source, f"more than {limits.members} members")
        name = pax.get("path") or long_name or _ustar_name(source, header)
        if "size" in pax:
            if not pax["size"].isdigit():
                raise _refuse(source, f"member {name[:80]!r} has a bad pax size")
            size = int(pax["size"])
        pax, long_name = {}, None
        if len(name.encode("utf-8", "surrogateescape")) > limits.name_bytes:
            raise _refuse(source, f"a member name over {limits.name_bytes} bytes")
        name = name.rstrip("/") if typeflag == b"5" else name
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise _refuse(source, f"member {name[:200]!r} escapes the capture folder")
        if typeflag in (b"0", b"\0", b"7"):
            kind: Literal["file", "dir"] = "file"
        elif typeflag == b"5":
            kind, size = "dir", 0
        else:
            raise _refuse(source, f"member {name[:200]!r} is not a regular file or directory")
        if size > limits.member_bytes:
            raise _refuse(source, f"member {name[:200]!r} has {size} bytes (over {limits.member_bytes})")
        data = stream.pieces(size)
        yield Member(name, kind, size), data
        for _rest in data:    # what the caller left unread
            pass
        stream.read(_padded(size) - size)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _check_sum(source: Path, header: bytes) -> None:
    stored = _number(source, header[148:156], "checksum")
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored != unsigned:
        raise _refuse(source, "a header's checksum does not match (not a tar, or corrupt)")


def _number(source: Path, field: bytes, what: str) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise _refuse(source, f"a header's {what} field is not an octal number") from None


def _text(source: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(source, "a member name is not UTF-8") from None


def _ustar_name(source: Path, header: bytes) -> str:
    name = _text(source, header[0:100].split(b"\0", 1)[0])
    if header[257:262] == b"ustar":
        prefix = _text(source, header[345:500].split(b"\0", 1)[0])
        if prefix:
            name = f"{prefix}/{name}"
    return name


def _pax_records(source: Path, body: bytes) -> dict[str, str]:
    """The `LENGTH KEY=VALUE\\n` records of a pax extended header (bounded by its size already)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos:pos + 1] != b"\0":
        space = body.find(b" ", pos, pos + 20)
        if space < 0 or not body[pos:space].isdigit():
            raise _refuse(source, "a pax header is malformed")
        length = int(body[pos:space])
        record = body[space + 1:pos + length]
        if length <= space - pos or pos + length > len(body) or not record.endswith(b"\n") or b"=" not in record:
            raise _refuse(source, "a pax header is malformed")
        key, _, value = record[:-1].partition(b"=")
        out[_text(source, key)] = _text(source, value)
        pos += length
    return out
