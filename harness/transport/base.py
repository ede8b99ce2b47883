"""The capture-transport protocol: how a transport plugs into capture, and the table that finds it.

A transport is one module with one class. For a capture it says what goes on QEMU's command line
(`setup`: boot, its channel, a host forward for the first NIC) and then runs QEMU and returns the
guest's files as framed records (`run`). The one launcher (launch.py) assembles the whole argv;
capture.py writes the same bundle whatever the transport.

    class Mine:
        name = "mine"
        needs_nic = False
        def setup(self, plan, workdir, console_log): return Setup(args=(...), image={...})
        def run(self, session): return TransportResult(records=[...], info={}, timings={})

    register_transport(Mine())
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import CaptureError, QabiError, UnsupportedError
from harness.transport.framing import Record

if TYPE_CHECKING:
    from harness.capture import CapturePlan


@dataclass(frozen=True)
class Setup:
    """What a transport adds to the launch: QEMU options (boot, console, control channel), a host
    forward for the first NIC's user-mode backend, a disk image to back the first disk with, and
    the manifest's `image` record (what booted)."""

    args: tuple[str, ...] = ()
    hostfwd: str | None = None
    boot_disk: tuple[Path, str] | None = None      # (path, format), attached with snapshot=on
    image: dict[str, Any] = field(default_factory=dict)
    state: Any = None                              # the transport's own, handed back in Session


@dataclass(frozen=True)
class Session:
    """One launch, as the launcher built it: run `argv` (the whole QEMU command line) under `env`."""

    argv: list[str]
    env: dict[str, str]
    workdir: Path           # private 0700 run dir; QMP listens on workdir/"qmp.sock"
    console_log: Path       # where the guest's console goes, whatever happens
    timeout: float
    setup: Setup


@dataclass(frozen=True)
class TransportResult:
    records: list[Record]                 # files as the guest read them, paths relative to raw/
    info: dict[str, str]                  # what the probe said about itself (manifest "probe")
    timings: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)   # manifest[transport name], if any


class Transport(Protocol):
    name: str
    needs_nic: bool          # reaches the guest over its first NIC

    def setup(self, plan: CapturePlan, workdir: Path, console_log: Path) -> Setup: ...

    def run(self, session: Session) -> TransportResult: ...


_TABLE: dict[str, Transport] = {}


def _builtins() -> None:
    from harness.transport import firmware, serial, ssh

    for transport in (firmware.TRANSPORT, serial.TRANSPORT, ssh.TRANSPORT):
        _TABLE.setdefault(transport.name, transport)


def transports() -> dict[str, Transport]:
    """Every transport by name (the built-in ones first)."""
    if not _TABLE:
        _builtins()
    return _TABLE


def get_transport(name: str) -> Transport:
    table = transports()
    if name not in table:
        raise QabiError(f"unknown transport '{name}' (use {' or '.join(table)})")
    return table[name]


def register_transport(transport: Transport) -> None:
    table = transports()
    if transport.name in table:
        raise ValueError(f"transport {transport.name!r} is already registered")
    table[transport.name] = transport


@contextmanager
def registered_transport(transport: Transport) -> Iterator[Transport]:
    register_transport(transport)
    try:
        yield transport
    finally:
        transports().pop(transport.name, None)


_UNSUPPORTED = re.compile(
    r"'([^']+)' is not a valid device model name|Property '([^']+)' not found|"
    r"Parameter 'driver' expects a pluggable device type|can't apply global ([^ ]+)|"
    r"(?:Bus|bus) '([^']+)' not found")


def early_exit_error(stderr: str, console_log: Path) -> Exception:
    text = stderr.strip()
    match = _UNSUPPORTED.search(text)
    if match:
        what = next(g for g in match.groups() if g)
        return UnsupportedError(f"unsupported on this build: {what}")
    last = text.splitlines()[-1] if text else "no message"
    return CaptureError(f"QEMU exited early: {last} (console log: {console_log})")
