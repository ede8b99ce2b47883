"""The probe's framed output: parse and verify it, and write the records under a capture's raw/.

The probe (guests/reference/probe.sh) prints ASCII lines; everything else on the console (kernel
messages, firmware) is noise and ignored outside records:

    @@QABI-BEGIN 1                           protocol version
    @@QABI-INFO <key> <value...>             facts and timestamps (also allowed before BEGIN)
    @@QABI-SKIP <path> <reason...>           a file the probe looked for and could not read
    @@QABI-REC <path> <size> <sha256>        a record: absolute guest path, byte count, hex digest
    <base64 lines>                           its body, any line length
    @@QABI-END <path>                        the same path again
    @@QABI-TRAILER <count>                   the number of REC records; the stream ends here
    @@QABI-ERROR <message...>                the probe gave up (a TRAILER 0 follows)

Guest output is untrusted: sizes are bounded, every record's byte count and sha256 are
checked, and any inconsistency is a `CaptureError` with a one-line reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from harness.errors import CaptureError

PROTOCOL = 1
MAX_RECORD = 16 << 20            # bytes in one record
MAX_STREAM = 64 << 20            # characters of console output
MAX_RECORDS = 100_000

PREFIX = "@@QABI-"
_B64_LINE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_COUNT = re.compile(r"[0-9]{1,12}")
_PATH = re.compile(r"/[\x21-\x7e]*")
# base64 characters of a MAX_RECORD body, with room for any line length
_MAX_B64 = (MAX_RECORD + 2) // 3 * 4


_KERNEL_LINE = re.compile(r"\[\s*\d+\.\d+\] ")


@dataclass(frozen=True)
class Record:
    """One file as the guest read it."""

    path: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Skip:
    """A file the probe could not read, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ProbeOutput:
    """Everything a complete probe stream carried."""

    records: tuple[Record, ...]
    skipped: tuple[Skip, ...]
    info: dict[str, str] = field(default_factory=dict, hash=False)
    protocol: int = PROTOCOL


NAME_MAX = 255      # bytes in one path component (Linux file systems)
PATH_MAX = 1024     # bytes in a whole record path (raw/ and the capture dir come on top)


def check_path(path: str) -> str:
    """`path` if it is an absolute guest path without empty, '.' or '..' components."""
    if not _PATH.fullmatch(path) or path == "/":
        raise CaptureError(f"bad record path {path[:80]!r} in probe output")
    parts = path[1:].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise CaptureError(f"bad record path {path[:80]!r} in probe output")
    # a name the host file system cannot hold is refused here, not by an OSError while writing raw/
    if any(len(part.encode()) > NAME_MAX for part in parts) or len(path.encode()) > PATH_MAX:
        raise CaptureError(f"bad record path {path[:80]!r}…: a component over {NAME_MAX} bytes or the whole "
                           f"over {PATH_MAX} bytes")
    return path


class StreamParser:
    """Incremental parser: feed console text as it arrives; `done` once the trailer is read."""

    def __init__(self) -> None:
        self._pending = ""
        self._chars = 0
        self._line_no = 0
        self.begun = False
        self.done = False
        self.records: list[Record] = []
        self.skipped: list[Skip] = []
        self.info: dict[str, str] = {}
        self._paths: set[str] = set()
        self._current: tuple[str, int, str] | None = None   # path, size, sha256
        self._body: list[str] = []
        self._body_len = 0

    # -- input --------------------------------------------------------------------------------
    def feed(self, text: str) -> None:
        """Feed a chunk of console text (any split, "\\r\\n" or "\\n" line ends)."""
        self._chars += len(text)
        if self._chars > MAX_STREAM:
            raise CaptureError(f"console output exceeds {MAX_STREAM >> 20} MiB")
        data = self._pending + text
        lines = data.split("\n")
        self._pending = lines.pop()
        if len(self._pending) > _MAX_B64 + 4096:
            raise CaptureError("console output has a line longer than any record could be")
        for line in lines:
            self.feed_line(line)

    def feed_line(self, line: str) -> None:
        self._line_no += 1
        line = line.rstrip("\r")
        if self.done:
            return
        if self._current is not None:
            self._record_line(line)
            return
        if not line.startswith(PREFIX):
            return                                          # kernel or firmware noise
        word, _, rest = line[len(PREFIX):].partition(" ")
        handler = {
            "BEGIN": self._begin, "INFO": self._info, "SKIP": self._skip, "REC": self._rec,
            "END": self._stray_end, "TRAILER": self._trailer, "ERROR": self._error,
        }.get(word)
        if handler is None:
            raise CaptureError(f"unknown probe directive {PREFIX}{word[:20]} (console line {self._line_no})")
        if not self.begun and word not in ("BEGIN", "INFO", "ERROR"):
            raise CaptureError(f"{PREFIX}{word} before {PREFIX}BEGIN (console line {self._line_no})")
        handler(rest)

    # -- directives ---------------------------------------------------------------------------
    def _begin(self, rest: str) -> None:
        if self.begun:
            raise CaptureError(f"the probe started twice (console line {self._line_no}): did the guest reboot?")
        if rest.strip() != str(PROTOCOL):
            raise CaptureError(f"unsupported probe protocol {rest.strip()[:20]!r} (this qabi reads "
                               f"protocol {PROTOCOL})")
        self.begun = True

    def _info(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        if key and len(self.info) < 1000:
            self.info[key] = value.strip()[:200]

    def _skip(self, rest: str) -> None:
        path, _, reason = rest.partition(" ")
        if not path.startswith("/"):
            raise CaptureError(f"malformed {PREFIX}SKIP line (console line {self._line_no})")
        self.skipped.append(Skip(path, reason.strip()[:200] or "unreadable"))

    def _rec(self, rest: str) -> None:
        fields = rest.split(" ")
        if len(fields) != 3 or not _COUNT.fullmatch(fields[1]) or not _SHA256.fullmatch(fields[2]):
            raise CaptureError(f"malformed {PREFIX}REC line (console line {self._line_no}): {rest[:100]!r}")
        path = check_path(fields[0])
        size = int(fields[1])
        if size > MAX_RECORD:
            raise CaptureError(f"record {path} is {size} bytes: more than the {MAX_RECORD >> 20} MiB limit")
        if path in self._paths:
            raise CaptureError(f"record {path} sent twice")
        if len(self.records) >= MAX_RECORDS:
            raise CaptureError(f"more than {MAX_RECORDS} records")
        self._current = (path, size, fields[2])
        self._body = []
        self._body_len = 0

    def _record_line(self, line: str) -> None:
        assert self._current is not None
        path, size, digest = self._current
        if line.startswith(PREFIX):
            word, _, rest = line[len(PREFIX):].partition(" ")
            if word != "END":
                raise CaptureError(f"probe output truncated: record {path} has no {PREFIX}END "
                                   f"before {PREFIX}{word[:20]} (console line {self._line_no})")
            if rest != path:
                raise CaptureError(f"{PREFIX}END {rest[:80]} does not match {PREFIX}REC {path}")
            self._finish(path, size, digest)
            return
        if not line:
            return
        if not _B64_LINE.fullmatch(line):
            if _KERNEL_LINE.match(line):
                # the kernel took over the console mid-record: the guest stopped (or died) sending
                raise CaptureError(f"probe output truncated inside record {path}: the kernel printed "
                                   f"{line[:60]!r} (console line {self._line_no})")
            raise CaptureError(f"non-base64 line inside record {path} (console line {self._line_no}): "
                               f"{line[:60]!r}")
        self._body_len += len(line)
        if self._body_len > _MAX_B64:
            raise CaptureError(f"record {path} body exceeds the {MAX_RECORD >> 20} MiB limit")
        self._body.append(line)

    def _finish(self, path: str, size: int, digest: str) -> None:
        try:
            data = base64.b64decode("".join(self._body), validate=True)
        except (binascii.Error, ValueError):
            raise CaptureError(f"record {path}: malformed base64 body") from None
        self._current = None
        self._body = []
        if len(data) != size:
            raise CaptureError(f"size mismatch for {path}: the probe said {size} bytes, "
                               f"received {len(data)}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise CaptureError(f"checksum mismatch for {path}: the probe said sha256 {digest}, "
                               f"received bytes hash to {actual}")
        self._paths.add(path)
        self.records.append(Record(path, data))

    def _stray_end(self, rest: str) -> None:
        raise CaptureError(f"{PREFIX}END {rest[:80]} without a {PREFIX}REC (console line {self._line_no})")

    def _trailer(self, rest: str) -> None:
        if not _COUNT.fullmatch(rest.strip()):
            raise CaptureError(f"malformed {PREFIX}TRAILER line (console line {self._line_no})")
        count = int(rest.strip())
        if count != len(self.records):
            raise CaptureError(f"record count mismatch: the trailer says {count}, received "
                               f"{len(self.records)}")
        self.done = True

    def _error(self, rest: str) -> None:
        raise CaptureError(f"guest probe failed: {rest.strip()[:200] or 'no reason given'}")

    # -- result -------------------------------------------------------------------------------
    def result(self) -> ProbeOutput:
        """The verified output; raises unless the stream was complete."""
        if self._pending:
            pending, self._pending = self._pending, ""
            self.feed_line(pending)
        if not self.begun:
            raise CaptureError(f"guest never started the probe (no {PREFIX}BEGIN in "
                               f"{self._line_no} lines of console output)")
        if self._current is not None:
            raise CaptureError(f"probe output truncated inside record {self._current[0]} "
                               f"(no {PREFIX}END)")
        if not self.done:
            raise CaptureError(f"probe output truncated: no {PREFIX}TRAILER after "
                               f"{len(self.records)} records")
        return ProbeOutput(tuple(self.records), tuple(self.skipped), dict(self.info))


def parse(text: str) -> ProbeOutput:
    """Parse and verify a whole console log."""
    parser = StreamParser()
    parser.feed(text)
    return parser.result()


def parse_stream(text: str) -> list[Record]:
    """The verified records of a whole console log."""
    return list(parse(text).records)


def relpath(path: str) -> PurePosixPath:
    """The path under raw/ of guest path `path` (no leading slash), refusing anything unsafe."""
    check_path(path)
    if "\\" in path:
        raise CaptureError(f"bad record path {path[:80]!r}: backslash")
    return PurePosixPath(path.lstrip("/"))


def write_raw(records: Iterable[Record], raw_dir: Path) -> dict[str, str]:
    """Write each record to raw_dir/<guest path without the leading slash>.

    Returns {relative path: sha256}. Refuses paths that would leave raw_dir, existing files and
    symlinks on the way (raw_dir is meant to be new and empty).
    """
    raw_dir.mkdir(parents=True, exist_ok=True)
    root = raw_dir.resolve()
    written: dict[str, str] = {}
    made: set[Path] = set()          # directories this call made (or found to be real ones) under root
    for record in records:
        rel = relpath(record.path)
        parent = root
        for part in rel.parts[:-1]:
            parent = parent / part
            if parent in made:
                continue
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                raise CaptureError(f"record {record.path}: {parent} is in the way")
            parent.mkdir(exist_ok=True)
            made.add(parent)
        target = parent / rel.name
        if parent not in made and os.path.commonpath([root, target.resolve()]) != str(root):
            raise CaptureError(f"record {record.path} would be written outside {raw_dir}")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            raise CaptureError(f"record {record.path}: {target} already exists") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(record.data)
        written[rel.as_posix()] = record.sha256
    return written
