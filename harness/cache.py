"""The cache under $XDG_CACHE_HOME/qabi: safe for concurrent runs (file locks, atomic renames); and the
one file writer and the one input reader every output and input goes through."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from harness.errors import QabiError

SHARED_MEMORY = Path("/dev/shm")


def memory_scratch() -> str | None:
    """Where short-lived small files go (a firmware capture's run dir: sockets, logs, console output,
    the profile's sparse scratch disks; iasl's work files): $TMPDIR when the user set it, else /dev/shm
    when it is there and writable, else None (the system's temporary directory). On a disk file
    system, creating a file costs more the more files were just deleted near it (ext4 without a
    journal skips every inode freed in the last minutes): each capture creates and deletes a few,
    and memory keeps them away from the capture cache."""
    if os.environ.get("TMPDIR"):
        return None
    if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
        return str(SHARED_MEMORY)
    return None


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
    file write, and the one place that decides what an output path may be (`output_target`):
    `-` is standard output; a character device or FIFO is written through, never replaced; a
    symlink is followed to the regular file it names (the rename happens in that file's directory)
    or refused; a directory, block device or socket is refused. A failure (a full or read-only
    disk) is a QabiError naming `path` (and `what` it is), and leaves nothing behind."""
    name = f"{what} {path}" if what else str(path)
    payload = data.encode() if isinstance(data, str) else data
    if str(path) == STDOUT:
        _write_stdout(payload, name)
        return
    target, through = output_target(Path(path), name)
    if through:
        _write_through(target, payload, name)
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise QabiError(f"cannot write {name}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise QabiError(f"cannot write {name}: {exc.strerror or exc}") from None
        raise


STDOUT = "-"
FIFO_READER_WAIT = 10.0     # seconds an output FIFO may go without a reader before the write is refused


def output_target(path: Path, name: str) -> tuple[Path, bool]:
    """Where a write to `path` goes, and whether it is written through (a character device or a FIFO:
    opened and written, never renamed onto) rather than replaced atomically (a regular file, or a
    new one). A symlink is followed: to a regular file (its resolved path, so that the rename
    replaces that file, not the link), a device or FIFO (written through), or nothing yet (the file
    it names is created, if that file's directory exists). A loop, a directory, a block device or a
    socket is refused."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not os.path.islink(path):
            return path, False
        resolved = Path(os.path.realpath(path))
        if not resolved.parent.is_dir():
            raise QabiError(f"{name} is a symlink to {resolved}, in no existing directory; "
                            "give a file name") from None
        return resolved, False
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise QabiError(f"{name} is a symlink loop; give a file name") from None
        raise QabiError(f"cannot write {name}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise QabiError(f"{name} is a directory; give a file name")
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return path, True
    if not stat.S_ISREG(st.st_mode):
        raise QabiError(f"{name} is a {file_kind(st.st_mode)}; refusing to write to it (give a file name)")
    return (Path(os.path.realpath(path)) if os.path.islink(path) else path), False


def file_kind(mode: int) -> str:
    """What a stat mode is, in words (for messages)."""
    for test, kind in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def _write_stdout(payload: bytes, name: str) -> None:
    import sys

    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
    except OSError as exc:
        raise QabiError(f"cannot write {name} to standard output: {exc.strerror or exc}") from None


def _write_through(path: Path, payload: bytes, name: str) -> None:
    """Write into a character device or FIFO without creating, truncating or replacing anything; a FIFO
    that finds no reader within FIFO_READER_WAIT seconds is refused."""
    deadline = time.monotonic() + FIFO_READER_WAIT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:      # ENXIO: a FIFO with no reader yet
                raise QabiError(f"cannot write {name}: {exc.strerror or exc}") from None
            if time.monotonic() >= deadline:
                raise QabiError(f"{name} is a FIFO that nobody reads; refusing to wait for a reader") from None
            time.sleep(0.05)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            raise QabiError(f"{name} changed into a {file_kind(st.st_mode)} while it was opened; not written")
        os.set_blocking(fd, True)
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise QabiError(f"cannot write {name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def same_file(a: Path | str, b: Path | str) -> bool:
    """`a` and `b` are the same file (one inode, whatever the path), or would be (same resolved path)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def refuse_inputs(output: Path | str, inputs: Iterable[Path | str], what: str) -> None:
    """A QabiError when `output` is one of `inputs`: qabi never writes over what it reads."""
    for source in inputs:
        if same_file(output, source):
            raise QabiError(f"{what} {output} is the input {source}; refusing to overwrite it (give another path)")


def write_json(path: Path, data: object, mode: int = 0o644) -> None:
    """`data` as sorted, indented JSON, written atomically."""
    atomic_write_bytes(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


# -- readers: every input file is a regular file, bounded in bytes (a per-kind maximum) -------------
JSON_LIMIT = 64 << 20        # reports, fingerprints
MANIFEST_LIMIT = 16 << 20    # capture manifests, build records
TOML_LIMIT = 4 << 20         # profiles, waivers, config, pyproject.toml
TEXT_LIMIT = 1 << 20         # key files and other small text inputs
NULL_DEVICE = os.makedev(1, 3)   # /dev/null, read as an empty file


def read_input(path: Path, what: str, limit: int) -> bytes:
    """The bytes of the input file `path`, at most `limit` of them. Opened without blocking and checked
    on the opened descriptor, so a FIFO, a device (`/dev/zero`), a link to one or a directory is
    refused at once, never read (a FIFO with no writer never hangs); a file over `limit` is refused.
    /dev/null reads as an empty file.
    The project's one input opener: read_json, read_text and read_toml go through it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise QabiError(f"{path}: no such file ({what})") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise QabiError(f"{path}: a symlink loop, not {what}") from None
        raise QabiError(f"cannot read {path} ({what}): {exc.strerror or exc}") from None
    try:      # checked on the descriptor before any file object exists (a directory refuses one)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == NULL_DEVICE:
                return b""  # /dev/null: the usual way to say "an empty file" (`--waivers /dev/null`)
            raise QabiError(f"{path}: not {what} (a {file_kind(st.st_mode)}, not a regular file)")
        if st.st_size > limit:
            raise QabiError(f"{path}: not {what} (over {_size(limit)})")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise QabiError(f"cannot read {path} ({what}): {exc.strerror or exc}") from None
    if len(data) > limit:
        raise QabiError(f"{path}: not {what} (over {_size(limit)})")
    return data


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"


def read_text(path: Path, what: str, limit: int = TEXT_LIMIT) -> str:
    """An input file as UTF-8 text (`read_input`'s rules)."""
    try:
        return read_input(path, what, limit).decode("utf-8")
    except UnicodeDecodeError:
        raise QabiError(f"{path}: not {what} (not UTF-8 text)") from None


def read_json(path: Path, what: str, kind: type = dict, limit: int = JSON_LIMIT) -> Any:
    """A JSON file that must hold a `kind` (dict by default): a missing, unreadable, non-regular,
    oversized, invalid, too deeply nested or wrongly shaped file is a QabiError naming it and `what`
    it should be."""
    text = read_text(path, what, limit)
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


_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def parse_toml(text: str, source: str, what: str = "TOML", error: type[QabiError] = QabiError) -> dict[str, Any]:
    """TOML text as a dict; malformed or too deeply nested text is an `error` naming `source`, the
    line when known, and `what` it should be (the project's one TOML parser)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_AT.search(str(exc))
        where = f"{source}:{found.group(1)}" if found else source
        raise error(f"{where}: malformed {what}: {_TOML_AT.sub('', str(exc)).strip()}") from None
    except RecursionError:
        raise error(f"{source}: malformed {what}: nested too deeply") from None


def read_toml(path: Path, what: str, limit: int = TOML_LIMIT) -> dict[str, Any]:
    """A TOML input file (`read_input`'s rules, then `parse_toml`)."""
    return parse_toml(read_text(path, what, limit), str(path), what)


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file (a device, FIFO or link to one is refused, never read)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise QabiError(f"{path}: a {file_kind(st.st_mode)}, not a regular file")
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
