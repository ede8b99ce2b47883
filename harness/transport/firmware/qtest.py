"""The host's reader at the firmware hand-off: the qtest line protocol (guest memory, port I/O,
PCI config space through CF8/CFC) and the bounds of guest memory a table pointer may point at.
Shared by every firmware's probe module (seabios, ovmf) and by what reads behind the BARs."""

from __future__ import annotations

import base64
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from harness.errors import CaptureError
from harness.transport.framing import MAX_RECORD

MAX_TABLES = 256
MAX_BUSES = 256
FOUR_G = 1 << 32


class Qtest:
    """The qtest line protocol on a connected socket: one command per line, one `OK ...` reply
    (or `FAIL ...`) per command, in order; `batch` pipelines many commands."""

    def __init__(self, conn: socket.socket, deadline: float, alive: Any) -> None:
        self._conn = conn
        self._buf = b""
        self._deadline = deadline
        self._alive = alive

    def _line(self) -> str:
        while b"\n" not in self._buf:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise CaptureError("timed out talking to QEMU's qtest socket")
            self._conn.settimeout(min(remaining, 1.0))
            try:
                chunk = self._conn.recv(1 << 20)
            except TimeoutError:
                self._alive()
                continue
            except OSError:           # reset: QEMU is exiting (a bad option, too much memory)
                chunk = b""
            if not chunk:
                self._closed()
            self._buf += chunk
            if len(self._buf) > (64 << 20):
                raise CaptureError("qtest reply too long")
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("ascii", errors="replace")

    def _closed(self) -> None:
        """The socket closed: QEMU is exiting. Give it a moment, so that its own reason (stderr)
        is the error, and fall back to saying the socket closed."""
        end = time.monotonic() + 5
        while time.monotonic() < end:
            self._alive()
            time.sleep(0.05)
        raise CaptureError("QEMU closed its qtest socket")

    def batch(self, commands: list[str]) -> list[str]:
        """Send `commands`, return the text after `OK` of each reply (IRQ lines skipped)."""
        if not commands:
            return []
        self._conn.settimeout(max(0.1, self._deadline - time.monotonic()))
        try:
            self._conn.sendall("".join(c + "\n" for c in commands).encode())
        except OSError:
            self._closed()
        out: list[str] = []
        while len(out) < len(commands):
            line = self._line()
            if line.startswith("IRQ"):
                continue
            if not line.startswith("OK"):
                raise CaptureError(f"qtest refused {commands[len(out)][:40]!r}: {line[:80]}")
            out.append(line[2:].strip())
        return out

    def read(self, addr: int, length: int, before: tuple[str, ...] = ()) -> bytes:
        """`length` bytes at `addr`, after the commands `before` (one round trip for all)."""
        if length <= 0:
            return b""
        reply = self.batch([*before, f"b64read {addr:#x} {length:#x}"])[-1]
        try:
            data = base64.b64decode(reply, validate=True)
        except ValueError:
            raise CaptureError(f"qtest sent a malformed reply for {length} bytes at {addr:#x}") from None
        if len(data) != length:
            raise CaptureError(f"qtest returned {len(data)} bytes for {length} at {addr:#x}")
        return data

    def readl(self, addr: int) -> int:
        return int(self.batch([f"readl {addr:#x}"])[0], 16)

    def write(self, addr: int, data: bytes) -> None:
        """Guest memory (or MMIO) at `addr` := `data`."""
        if data:
            self.batch([self.write_command(addr, data)])

    @staticmethod
    def write_command(addr: int, data: bytes) -> str:
        return f"b64write {addr:#x} {len(data):#x} {base64.b64encode(data).decode()}"

    def values(self, commands: list[str]) -> list[int]:
        """Run `commands` (reads and writes: `readl A`, `inb P`, `writew A V`, `outl P V` …) and
        return the value of each read, in order (a write answers a bare OK and gives none)."""
        replies = self.batch(commands)
        out = []
        for cmd, reply in zip(commands, replies, strict=True):
            if cmd.startswith(("read", "in")):
                try:
                    out.append(int(reply, 16))
                except ValueError:
                    raise CaptureError(f"qtest sent a malformed reply to {cmd!r}: {reply[:40]!r}") from None
        return out

    def configs(self, bdfs: list[int], count: int = 64, ecam: int | None = None) -> list[bytes]:
        """The first 4*count bytes of the config space of each of `bdfs`, in one round trip: through ECAM (one read of each
        function's window at the MCFG base `ecam`, the same config-space accessors as CF8/CFC) when
        the machine has one, else two port accesses per dword."""
        if ecam is not None:
            replies = self.batch([f"b64read {ecam + (bdf << 12):#x} {4 * count:#x}" for bdf in bdfs])
            out = []
            for bdf, reply in zip(bdfs, replies, strict=True):
                try:
                    data = base64.b64decode(reply, validate=True)
                except ValueError:
                    raise CaptureError(f"qtest sent a malformed config read of {bdf:#06x}") from None
                if len(data) != 4 * count:
                    raise CaptureError(f"qtest returned {len(data)} config bytes of {bdf:#06x} for {4 * count}")
                out.append(data)
            return out
        cmds = []
        for bdf in bdfs:
            for i in range(count):
                cmds += [f"outl 0xcf8 {0x80000000 | bdf << 8 | i * 4:#x}", "inl 0xcfc"]
        replies = self.batch(cmds)
        dwords = [struct.pack("<I", int(replies[2 * i + 1], 16) & 0xFFFFFFFF) for i in range(count * len(bdfs))]
        return [b"".join(dwords[n * count:(n + 1) * count]) for n in range(len(bdfs))]


E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS = 1, 2, 3, 4


@dataclass(frozen=True)
class Memory:
    """Guest memory the firmware described: what a table pointer may point at."""

    ranges: tuple[tuple[int, int], ...]          # [start, end) ranges

    @classmethod
    def from_e820(cls, entries: list[tuple[int, int, int]]) -> Memory:
        """RAM, ACPI and NVS ranges, the first MiB, and reserved ranges that adjoin them (the
        firmware's own data at the top of RAM); reserved ranges elsewhere (MMIO windows, the
        flash) are not memory."""
        spans = [(0, 0x100000)] + [(a, a + n) for a, n, t in entries if t in (E820_RAM, E820_ACPI, E820_NVS)]
        reserved = sorted((a, a + n) for a, n, t in entries if t == E820_RESERVED)
        merged = _merge(spans)
        while True:
            joined = [r for r in reserved if any(a <= r[0] <= b or a <= r[1] <= b for a, b in merged)]
            grown = _merge(merged + joined)
            if grown == merged:
                return cls(tuple(merged))
            merged = grown

    def check(self, what: str, addr: int, length: int) -> None:
        if not any(a <= addr < b for a, b in self.ranges):
            raise CaptureError(f"{what} at {addr:#x} is outside guest RAM")
        if length > MAX_RECORD:
            raise CaptureError(f"{what} at {addr:#x} claims {length} bytes (more than {MAX_RECORD >> 20} MiB)")
        if not any(a <= addr and addr + length <= b for a, b in self.ranges):
            raise CaptureError(f"{what} at {addr:#x} is {length} bytes long and runs past guest memory")


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged
