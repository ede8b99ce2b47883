"""The errors qabi raises. Every one of them means "could not decide": exit status 2."""

from __future__ import annotations


class QabiError(Exception):
    """A user-facing failure: one clear line, exit status 2."""

    exit_code = 2


class ToolMissing(QabiError):
    """An external program is not installed."""


class ArchiveError(QabiError):
    """The Debian archive could not give us a verified package set."""


class VerificationError(ArchiveError):
    """A signature or checksum did not match: never a warning."""


class BuildError(QabiError):
    """A QEMU build could not be resolved, provisioned or queried."""


class CaptureError(QabiError):
    """A capture could not be completed and verified."""


class UnsupportedError(QabiError):
    """The profile needs something this build does not have."""


class DecodeError(QabiError):
    """Malformed guest bytes: names the file and the offset."""

    def __init__(self, file: str, offset: int | None, message: str) -> None:
        where = f"{file}" if offset is None else f"{file} at offset {offset:#x}"
        super().__init__(f"cannot decode {where}: {message}")
        self.file = file
        self.offset = offset


def note(message: str) -> None:
    """One `qabi: note: …` line on stderr (control characters escaped): something a run did instead
    of what was asked, which is not an error (e.g. a cached capture it would not reuse)."""
    import sys

    from harness.escape import escape_controls

    print(f"qabi: note: {escape_controls(' '.join(message.split()), keep='')}", file=sys.stderr)
