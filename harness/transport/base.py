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

import importlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import CaptureError, QabiError, UnsupportedError
from harness.transport.framing import Record

if TYPE_CHECKING:
    from harness.plan import CapturePlan


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
    """`name` and `needs_nic` (reaches the guest over its first NIC); a transport whose host side reads
    the VM itself also says what it reads (`reads`, a versioned string: a capture input, so a new
    reader never reuses an old capture)."""

    name: str
    needs_nic: bool

    def setup(self, plan: CapturePlan, workdir: Path, console_log: Path) -> Setup: ...

    def run(self, session: Session) -> TransportResult: ...


# the built-in transports by name, each imported on first use (a verb that reads no guest imports none)
_BUILTIN = {"firmware": "harness.transport.firmware", "serial": "harness.transport.serial",
            "ssh": "harness.transport.ssh"}
_TABLE: dict[str, Transport] = {}     # the transports loaded or registered so far


def transport_names() -> list[str]:
    """Every transport's name (the built-in ones first), without importing any of them."""
    return [*_BUILTIN, *(name for name in _TABLE if name not in _BUILTIN)]


def check_transport(name: str) -> str:
    """`name` if it is a transport's name (nothing imported), else a QabiError listing them."""
    if name not in _BUILTIN and name not in _TABLE:
        raise QabiError(f"unknown transport '{name}' (use {' or '.join(transport_names())})")
    return name


def get_transport(name: str) -> Transport:
    check_transport(name)
    if name not in _TABLE:
        _TABLE[name] = importlib.import_module(_BUILTIN[name]).TRANSPORT
    return _TABLE[name]


def transports() -> dict[str, Transport]:
    """Every transport by name (the built-in ones first), each loaded."""
    return {name: get_transport(name) for name in transport_names()}


def register_transport(transport: Transport) -> None:
    if transport.name in _BUILTIN or transport.name in _TABLE:
        raise ValueError(f"transport {transport.name!r} is already registered")
    _TABLE[transport.name] = transport


@contextmanager
def registered_transport(transport: Transport) -> Iterator[Transport]:
    register_transport(transport)
    try:
        yield transport
    finally:
        _TABLE.pop(transport.name, None)


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
