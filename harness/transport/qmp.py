"""A minimal synchronous QMP client: one unix socket, one command at a time, a timeout on every read.

Live migration and the device-property walk speak QMP to two QEMUs at once from a capture
thread; a plain blocking socket with deadlines is enough and needs no event loop. Events that
arrive between replies are kept in `events` (bounded).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from harness.errors import CaptureError

MAX_LINE = 16 << 20
MAX_EVENTS = 256


class QmpError(CaptureError):
    """QEMU answered a command with an error, or the monitor went away."""


class Qmp:
    def __init__(self, sock: socket.socket, what: str) -> None:
        self._sock = sock
        self._buf = b""
        self.what = what
        self.events: list[dict[str, Any]] = []

    @classmethod
    def connect(cls, path: Path, timeout: float, alive: Callable[[], bool] = lambda: True,
                what: str = "QEMU") -> Qmp:
        """Connect to QEMU's QMP socket at `path` (retrying while QEMU starts) and negotiate."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                if not alive():
                    raise QmpError(f"{what} exited before its QMP socket answered") from None
                if time.monotonic() > deadline:
                    raise QmpError(f"{what} did not open its QMP socket within {timeout:.0f}s") from None
                time.sleep(0.02)
        qmp = cls(sock, what)
        try:
            greeting = qmp._read(deadline)
            if "QMP" not in greeting:
                raise QmpError(f"{what}: not a QMP greeting on {path}")
            qmp.cmd("qmp_capabilities", timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            qmp.close()
            raise
        return qmp

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"{self.what} did not answer on QMP in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                raise QmpError(f"{self.what} did not answer on QMP in time") from None
            except OSError as exc:
                raise QmpError(f"{self.what}: QMP connection lost ({exc.strerror or exc})") from None
            if not chunk:
                raise QmpError(f"{self.what} closed its QMP connection (it exited)")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise QmpError(f"{self.what}: QMP message larger than {MAX_LINE >> 20} MiB")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            data = json.loads(line)
        except ValueError:
            raise QmpError(f"{self.what}: malformed QMP message") from None
        if not isinstance(data, dict):
            raise QmpError(f"{self.what}: malformed QMP message")
        return data

    def cmd(self, name: str, timeout: float = 30.0, **arguments: Any) -> Any:
        """Run one command; its "return" value, or QmpError with QEMU's error description."""
        message: dict[str, Any] = {"execute": name}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"{self.what}: QMP connection lost ({exc.strerror or exc})") from None
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if "event" in reply:
                if len(self.events) < MAX_EVENTS:
                    self.events.append(reply)
                continue
            if "error" in reply:
                error = reply["error"]
                desc = error.get("desc") if isinstance(error, dict) else None
                raise QmpError(f"{self.what}: {name}: {desc or error}")
            return reply.get("return")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
