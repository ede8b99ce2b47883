"""The probe's framing, host side: parse and verify every record, the same for serial and SSH.

    @@QABI-BEGIN 1
    @@QABI-INFO <key> <value>              facts and timestamps, outside records
    @@QABI-SKIP <path> <reason>            a file the probe could not read
    @@QABI-REC <path> <size> <sha256>      then the body as base64 lines
    @@QABI-END <path>
    @@QABI-TRAILER <number of REC records>
    @@QABI-ERROR <message>                 the probe failed

Lines outside records that are not frames (kernel noise) are ignored; inside a record any line
that is not base64 is an error. Guest output is untrusted: sizes are bounded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from harness.errors import CaptureError

MAX_RECORD = 16 << 20
MAX_STREAM = 64 << 20
_B64_LINE = re.compile(r"[A-Za-z0-9+/=]*")
_REC = re.compile(r"@@QABI-REC (\S+) (\d+) ([0-9a-f]{64})")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_.:@,+/-]+")


@dataclass(frozen=True)
class Record:
    path: str
    data: bytes


@dataclass
class Stream:
    """Everything the probe said: its records plus the facts and skips around them."""

    records: list[Record] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _check_path(path: str) -> None:
    if not _SAFE_PATH.fullmatch(path) or ".." in PurePosixPath(path).parts:
        raise CaptureError(f"probe stream: refusing record path {path[:100]!r}")


def parse(text: str) -> Stream:
    """Parse and verify a whole probe stream; raise CaptureError on anything incomplete or corrupt."""
    if len(text) > MAX_STREAM:
        raise CaptureError(f"probe stream exceeds {MAX_STREAM >> 20} MiB")
    lines = text.replace("\r", "").split("\n")
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("@@QABI-BEGIN "))
    except StopIteration:
        raise CaptureError("guest never started the probe (no @@QABI-BEGIN on the console)") from None
    out = Stream()
    current: tuple[str, int, str] | None = None
    body: list[str] = []
    body_len = 0
    seen: set[str] = set()
    for number, line in enumerate(lines[start + 1:], start=start + 2):
        if current is not None:
            if line.startswith("@@QABI-END "):
                path, size, digest = current
                if line[len("@@QABI-END "):].strip() != path:
                    raise CaptureError(f"probe stream: record {path} ends as {line[11:].strip()!r} (line {number})")
                try:
                    data = base64.b64decode("".join(body), validate=True)
                except (binascii.Error, ValueError):
                    raise CaptureError(f"probe stream: record {path} is not valid base64") from None
                if len(data) != size:
                    raise CaptureError(f"probe stream: record {path} has {len(data)} bytes, header says {size}")
                if hashlib.sha256(data).hexdigest() != digest:
                    raise CaptureError(f"probe stream: checksum mismatch in record {path}")
                out.records.append(Record(path, data))
                current, body, body_len = None, [], 0
            elif line.startswith("@@QABI-"):
                raise CaptureError(f"probe stream truncated: record {current[0]} interrupted at line {number}")
            elif _B64_LINE.fullmatch(line.strip()):
                body_len += len(line)
                if body_len > (MAX_RECORD * 4) // 3 + 8:
                    raise CaptureError(f"probe stream: record {current[0]} exceeds {MAX_RECORD >> 20} MiB")
                body.append(line.strip())
            else:
                raise CaptureError(f"probe stream: garbage inside record {current[0]} at line {number}")
            continue
        if line.startswith("@@QABI-REC "):
            m = _REC.fullmatch(line.strip())
            if not m:
                raise CaptureError(f"probe stream: malformed record header at line {number}")
            path, size = m.group(1), int(m.group(2))
            _check_path(path)
            if size > MAX_RECORD:
                raise CaptureError(f"probe stream: record {path} announces {size} bytes (limit {MAX_RECORD})")
            if path in seen:
                raise CaptureError(f"probe stream: record {path} sent twice")
            seen.add(path)
            current = (path, size, m.group(3))
        elif line.startswith("@@QABI-INFO "):
            key, _, value = line[len("@@QABI-INFO "):].partition(" ")
            out.info[key] = value.strip()
        elif line.startswith("@@QABI-SKIP "):
            path, _, reason = line[len("@@QABI-SKIP "):].partition(" ")
            out.skipped[path] = reason.strip()
        elif line.startswith("@@QABI-ERROR "):
            raise CaptureError(f"the probe failed in the guest: {line[len('@@QABI-ERROR '):].strip()}")
        elif line.startswith("@@QABI-TRAILER "):
            count = line[len("@@QABI-TRAILER "):].strip()
            if not count.isdigit() or int(count) != len(out.records):
                raise CaptureError(f"probe stream: record count mismatch (trailer says {count}, "
                                   f"received {len(out.records)})")
            return out
    if current is not None:
        raise CaptureError(f"probe stream truncated inside record {current[0]}")
    raise CaptureError(f"probe stream truncated: no trailer after {len(out.records)} records")


def parse_stream(text: str) -> list[Record]:
    return parse(text).records


def write_raw(records: list[Record], raw_dir: Path) -> dict[str, str]:
    """Write every record under `raw_dir` at its guest path; return {relative path: sha256}."""
    hashes: dict[str, str] = {}
    root = raw_dir.resolve()
    for rec in records:
        _check_path(rec.path)
        rel = rec.path.lstrip("/")
        dest = (root / rel).resolve()
        if not dest.is_relative_to(root):
            raise CaptureError(f"probe stream: record path {rec.path} escapes the capture")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(rec.data)
        hashes[rel] = hashlib.sha256(rec.data).hexdigest()
    return hashes
