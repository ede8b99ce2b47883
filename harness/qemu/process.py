"""Running QEMU: argv lists, its own process group, killed on every exit path."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness.cache import memory_scratch
from harness.errors import BuildError

_LIVE: set[int] = set()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def kill_all() -> None:
    """Kill every QEMU process group this process started (used on signals and at exit)."""
    for pid in list(_LIVE):
        _kill_group(pid)
        _LIVE.discard(pid)


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C (every `finally` runs: QEMU killed, staging and
    temporary run dirs removed), then the front door exits 2."""


_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_HOLDING: list[bool] = []     # inside `signals_held`
_PENDING: list[int] = []      # the signal that arrived meanwhile


def _on_signal(signum: int, frame: object) -> None:
    kill_all()
    for sig in _SIGNALS:   # a second signal must not interrupt the cleanup (nor the error line)
        with contextlib.suppress(ValueError):
            signal.signal(sig, signal.SIG_IGN)
    if _HOLDING:
        _PENDING.append(signum)
        return
    _raise(signum)


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signal.Signals(signum).name)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP handled like SIGINT: kill QEMU, unwind with cleanup, exit 2. The first of
    them raises (Terminated, or KeyboardInterrupt for SIGINT) and every later one is ignored, so the
    front door sees at most one."""
    for sig in _SIGNALS:
        with contextlib.suppress(ValueError):
            signal.signal(sig, _on_signal)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """A signal that arrives inside the block (SIGTERM, SIGHUP, SIGINT) is raised when it ends: for a
    write that must not be cut in two, such as the one error line. (A flag the handler reads, not a
    signal mask: a mask is per thread, and a signal may be delivered to another thread.)"""
    _HOLDING.append(True)
    try:
        yield
    finally:
        _HOLDING.pop()
        if _PENDING and not _HOLDING:
            _raise(_PENDING.pop())


@contextlib.contextmanager
def private_dir(prefix: str = "qabi-", memory: bool = False) -> Iterator[Path]:
    """A 0700 temporary directory, removed afterwards; with `memory`, in memory_scratch()."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=memory_scratch() if memory else None) as name:
        os.chmod(name, 0o700)
        yield Path(name)


@contextlib.contextmanager
def spawn(argv: list[str], env: dict[str, str], stderr_path: Path | None = None,
          **popen: object) -> Iterator[subprocess.Popen[bytes]]:
    """Start `argv` in a new process group; on leaving the block the whole group is killed."""
    stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True, **popen)  # type: ignore[call-overload]
    except OSError as exc:
        raise BuildError(f"cannot start {argv[0]}: {exc}") from None
    finally:
        if stderr_path:
            stderr.close()  # type: ignore[union-attr]
    _LIVE.add(proc.pid)
    try:
        yield proc
    finally:
        _kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        _LIVE.discard(proc.pid)


def wait_for(predicate: object, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False
