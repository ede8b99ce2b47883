"""Serial transport: boot QEMU with the guest's ttyS0 on a unix socket and read the probe with pexpect.

The console is the only channel: adding a device to carry results would change the ABI being
measured. QEMU's own stderr goes to a file so that its complaints never mix with guest output.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pexpect
from pexpect import fdpexpect
from pexpect.fdpexpect import fdspawn

from harness.errors import CaptureError
from harness.guest import build_reference_image
from harness.qemu.process import spawn, wait_for
from harness.transport.base import Session, Setup, TransportResult, early_exit_error
from harness.transport.framing import parse
from harness.transport.platform import reference_boot

if TYPE_CHECKING:
    from harness.plan import CapturePlan

BEGIN = re.compile(rb"@@QABI-BEGIN \d+\r?\n")
TRAILER = re.compile(rb"@@QABI-TRAILER \d+\r?\n")
MAX_CONSOLE = 64 << 20
READ_CHUNK = 1 << 14
# the markers are one short line: searching only the tail of what arrived keeps the matcher linear
# (pexpect rescans its whole buffer otherwise); the window is larger than one read, so a marker split
# across reads, or anywhere inside one read, is still seen
SEARCH_WINDOW = 4 * READ_CHUNK
SOCKET = "serial.sock"
class BoundedConsole(fdpexpect.fdspawn):
    """The console as pexpect reads it, refusing more than `limit` bytes as they arrive (a guest that
    floods its console is stopped at the cap, not after it has filled the host's memory)."""

    def __init__(self, fd: int, limit: int = MAX_CONSOLE, **kwargs: Any) -> None:
        super().__init__(fd, maxread=READ_CHUNK, searchwindowsize=SEARCH_WINDOW, **kwargs)
        self.limit = limit
        self.total = 0

    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> bytes:
        data: bytes = super().read_nonblocking(size, timeout)  # type: ignore[no-untyped-call]
        self.total += len(data)
        if self.total > self.limit:
            raise CaptureError(f"console output exceeds {self.limit >> 20} MiB")
        return data


def _connect(sock_path: Path, proc: Any, timeout: float) -> socket.socket | None:
    """Connect to QEMU's serial socket; None if QEMU exited first.

    The socket file appears when QEMU binds it, a moment before it listens: a refused connection
    is retried until QEMU listens, exits, or `timeout` passes.
    """
    deadline = time.monotonic() + timeout
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(sock_path))
            return conn
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            conn.close()
            if proc.poll() is not None:
                return None
            if time.monotonic() > deadline:
                raise CaptureError(f"QEMU did not accept a connection on its serial socket: {exc}") from None
            time.sleep(0.01)
        except OSError:
            conn.close()
            if proc.poll() is not None:
                return None
            raise


class SerialTransport:
    """The reference guest's probe writes framed records on ttyS0, a unix socket on the host."""

    name = "serial"
    needs_nic = False

    def setup(self, plan: CapturePlan, workdir: Path, console_log: Path, stay: bool = False) -> Setup:
        """`stay`: the guest stays up after the probe and probes again on request (LiveConsole)."""
        image = build_reference_image(plan.reference)
        kernel, cmdline = reference_boot(plan, image.kernel, image.cmdline_for(self.name, stay=stay))
        return Setup(args=("-kernel", str(kernel), "-initrd", str(image.initramfs), "-append", cmdline,
                           "-chardev", f"socket,id=qabicon,path={workdir / SOCKET},server=on,wait=on",
                           "-serial", "chardev:qabicon"),
                     image={"sha256": image.sha256, "cmdline": cmdline, "kernel": image.kernel_version})

    def run(self, session: Session) -> TransportResult:
        return run(session.argv, session.env, session.workdir, session.console_log, session.timeout)


def run(argv: list[str], env: dict[str, str], workdir: Path, console_log: Path, timeout: float) -> TransportResult:
    """Run `argv` (whose serial port is the socket WORKDIR/serial.sock) and return the verified
    probe records.

    `console_log` receives everything the console printed, whatever happens.
    """
    sock_path = workdir / SOCKET
    stderr_path = workdir / "qemu.stderr"
    started = time.monotonic()
    deadline = started + timeout
    timings: dict[str, float] = {}
    console = b""
    try:
        with spawn(argv, env, stderr_path=stderr_path) as proc:
            if not wait_for(lambda: sock_path.exists() or proc.poll() is not None, min(timeout, 60)):
                raise CaptureError(f"QEMU did not open its serial socket within {min(timeout, 60):.0f}s")
            if proc.poll() is not None:
                raise early_exit_error(stderr_path.read_text(errors="replace"), console_log)
            conn = _connect(sock_path, proc, min(timeout, 60))
            if conn is None:
                raise early_exit_error(stderr_path.read_text(errors="replace"), console_log)
            child = BoundedConsole(conn.fileno(), timeout=timeout)
            try:
                index = child.expect([BEGIN, pexpect.EOF, pexpect.TIMEOUT],
                                     timeout=max(1.0, deadline - time.monotonic()))
                console += (child.before or b"") + (child.after if isinstance(child.after, bytes) else b"")
                if index != 0:
                    if index == 1:  # the console closed: QEMU is exiting; let it finish to read why
                        wait_for(lambda: proc.poll() is not None, 10)
                    if proc.poll() not in (None, 0):
                        raise early_exit_error(stderr_path.read_text(errors="replace"), console_log)
                    why = "timed out" if index == 2 else "the console closed"
                    raise CaptureError(f"guest never started the probe ({why} after "
                                       f"{time.monotonic() - started:.1f}s; console log: {console_log})")
                timings["boot_to_probe"] = round(time.monotonic() - started, 3)
                index = child.expect([TRAILER, pexpect.EOF, pexpect.TIMEOUT],
                                     timeout=max(1.0, deadline - time.monotonic()))
                console += (child.before or b"") + (child.after if isinstance(child.after, bytes) else b"")
                if index == 2:
                    raise CaptureError(f"timed out after {timeout:.0f}s while the probe was sending "
                                       f"(console log: {console_log})")
                timings["transfer"] = round(time.monotonic() - started - timings["boot_to_probe"], 3)
                if index == 0:
                    # let the guest power off; whatever it prints meanwhile goes to the log
                    with contextlib.suppress(pexpect.EOF, pexpect.TIMEOUT):
                        child.expect(pexpect.EOF, timeout=10)
                    console += child.before or b""
                    wait_for(lambda: proc.poll() is not None, 5)
            finally:
                with contextlib.suppress(OSError):
                    conn.close()
            timings["total"] = round(time.monotonic() - started, 3)
    finally:
        console_log.parent.mkdir(parents=True, exist_ok=True)
        console_log.write_bytes(console)
    return result_of(console, console_log, timings)


def result_of(console: bytes, console_log: Path, timings: dict[str, float]) -> TransportResult:
    """The verified records of one probe run in `console` (a capture missing data is an error)."""
    text = console.decode("ascii", errors="replace").replace("\r\n", "\n")
    try:
        output = parse(text)
    except CaptureError as exc:
        raise CaptureError(f"{exc} (console log: {console_log})") from None
    if output.skipped:
        # a capture missing data is never compared as if it were complete
        first = output.skipped[0]
        raise CaptureError(f"the probe could not read {len(output.skipped)} file(s), e.g. {first.path}: "
                           f"{first.reason} (console log: {console_log})")
    return TransportResult(list(output.records), dict(output.info), timings)


WAITING = re.compile(rb"@@QABI-WAITING\r?\n")


class LiveConsole:
    """The serial console of a running reference guest booted with `stay` (live migration): read
    a probe run, then ask the same guest for another one ("probe" line) after it moved to another
    QEMU (`attach` a new connection: the destination's console socket)."""

    request = b"probe\n"      # the line that makes the waiting guest probe again

    def __init__(self, console_log: Path) -> None:
        self.console_log = console_log
        self.console = b""
        self._conn: socket.socket | None = None
        self._child: Any = None

    def attach(self, sock_path: Path, proc: Any, timeout: float) -> None:
        """Connect to a QEMU's console socket (QEMU waits for it before it starts: wait=on)."""
        self.close()
        if not wait_for(lambda: sock_path.exists() or proc.poll() is not None, timeout):
            raise CaptureError(f"QEMU did not open its serial socket within {timeout:.0f}s")
        conn = _connect(sock_path, proc, timeout) if proc.poll() is None else None
        if conn is None:
            raise CaptureError("QEMU exited before its serial console was connected")
        self._conn = conn
        self._child = fdspawn(conn.fileno(), timeout=timeout, maxread=1 << 16)

    def probe(self, timeout: float, ask: bool) -> TransportResult:
        """One probe run's records (`ask`: send "probe" first); CaptureError when the guest does not
        start it, or stops sending, within `timeout`."""
        assert self._child is not None and self._conn is not None
        started = time.monotonic()
        deadline = started + timeout
        if ask:
            self._conn.sendall(self.request)
        mark = len(self.console)
        for pattern, what in ((BEGIN, "start the probe"), (TRAILER, "finish the probe"),
                              (WAITING, "wait for the next request")):
            index = self._child.expect([pattern, pexpect.EOF, pexpect.TIMEOUT],
                                       timeout=max(1.0, deadline - time.monotonic()))
            after = self._child.after if isinstance(self._child.after, bytes) else b""
            self.console += (self._child.before or b"") + after
            self._flush()
            if len(self.console) > MAX_CONSOLE:
                raise CaptureError(f"console output exceeds {MAX_CONSOLE >> 20} MiB")
            if index != 0:
                why = "timed out" if index == 2 else "the console closed"
                raise CaptureError(f"the guest did not {what} ({why} after {time.monotonic() - started:.1f}s; "
                                   f"console log: {self.console_log})")
        return result_of(self.console[mark:], self.console_log, {"probe": round(time.monotonic() - started, 3)})

    def _flush(self) -> None:
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        self.console_log.write_bytes(self.console)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn = self._child = None


TRANSPORT = SerialTransport()
