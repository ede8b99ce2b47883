"""The cache under $XDG_CACHE_HOME/qabi: safe for concurrent runs (file locks, atomic renames)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import QabiError


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(base) / "qabi"
    _mkdir(root)
    return root


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    _mkdir(path)
    return path


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable", str(path))
    except OSError as exc:
        raise cache_error(path, exc) from None


def cache_error(path: Path | str, exc: OSError) -> QabiError:
    """A cache that cannot be written (read-only, full, not ours) as one line that says what to do."""
    return QabiError(f"the cache {path} cannot be written ({exc.strerror or exc}); free space, or point "
                     "XDG_CACHE_HOME at a writable directory")


STALE_AFTER = 3600.0   # seconds untouched: a shared cache may be written from another PID namespace


def sweep_stale(parent: Path, prefix: str = ".", older_than: float = STALE_AFTER) -> None:
    """Remove the staging dirs (`PREFIX…partial-PID…`) that processes which are gone left in `parent`
    (a SIGKILL or a power cut gives no chance to clean up): the PID is not running here and the dir
    has not been touched for `older_than` seconds."""
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            found = _PARTIAL.fullmatch(entry.name)
            if not found or not entry.name.startswith(prefix) or _alive(int(found.group(1))):
                continue
            with contextlib.suppress(OSError):
                if now - entry.lstat().st_mtime >= older_than:
                    shutil.rmtree(entry, ignore_errors=True)


_PARTIAL = re.compile(r"\..*\.partial-(\d+)(?:-.*)?")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held for the duration of the block."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise cache_error(path, exc) from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temporary sibling of `final`, renamed onto it only if the block succeeds. Its name carries
    the PID (`.NAME.partial-PID-…`), so that a later run sweeps it if this process dies first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(final.parent, f".{final.name}.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes | str, mode: int = 0o644, what: str = "") -> None:
    """Write `data` to `path` through a temporary sibling renamed onto it: readers see the old file or
    the whole new one, never a part. The file is created 0600 and set to `mode` before the rename, so
    a private file (mode 0o600) is never readable by others, even for a moment. The project's one
    atomic file write. A failure (a directory in the way, a full or read-only disk) is a QabiError
    naming `path` (and `what` it is), and leaves nothing behind."""
    name = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise QabiError(f"{name} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise QabiError(f"cannot write {name}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise QabiError(f"cannot write {name}: {exc.strerror or exc}") from None
        raise


def write_json(path: Path, data: object, mode: int = 0o644) -> None:
    """`data` as sorted, indented JSON, written atomically."""
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


def read_json(path: Path, what: str, kind: type = dict) -> Any:
    """A JSON file that must hold a `kind` (dict by default): a missing, unreadable, invalid, too
    deeply nested or wrongly shaped file is a QabiError naming it and `what` it should be."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QabiError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        raise QabiError(f"cannot read {path} ({what}): {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise QabiError(f"{path}: not {what} (not UTF-8 text)") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise QabiError(f"{path}: not {what} (nested too deeply)") from None
    except ValueError as exc:
        raise QabiError(f"{path}: not {what} (invalid JSON: {exc})") from None
    if not isinstance(data, kind):
        shape = "a JSON object" if kind is dict else f"a {kind.__name__}"
        raise QabiError(f"{path}: not {what} (a JSON {type(data).__name__}, not {shape}: expected a {kind.__name__})")
    return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """One sha256 over a directory tree as a program reading it sees it: every file's path relative
    to `root` and the sha256 of its bytes (symlinks followed; a dangling one recorded as such), in
    sorted order. A missing `root` hashes as empty."""
    digest = hashlib.sha256()
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for dirpath, dirs, files in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(dirpath, d)) not in seen]  # no link loops
        for name in files:
            path = Path(dirpath) / name
            try:
                entries.append((str(path.relative_to(root)), sha256_file(path)))
            except OSError:
                entries.append((str(path.relative_to(root)), "unreadable"))
    for rel, file_digest in sorted(entries):
        digest.update(f"{rel}\0{file_digest}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
