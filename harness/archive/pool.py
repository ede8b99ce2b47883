"""The shared pool of verified .debs in the cache, and unpacking them into a prefix."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from harness.archive.suite import PackageFile
from harness.cache import atomic_write_bytes, cache_dir, sha256_file
from harness.errors import ArchiveError, VerificationError
from harness.tools import require

DOWNLOAD_TIMEOUT = 120
DOWNLOAD_TRIES = 3          # a transient failure (DNS, a reset connection) is tried again after 1 s, 2 s


def _pool() -> Path:
    return cache_dir("debs")


def verify_deb(path: Path, pkg: PackageFile) -> None:
    digest = sha256_file(path)
    if digest != pkg.sha256:
        raise VerificationError(
            f"checksum mismatch for {path}: the signed index says sha256 {pkg.sha256}, the file has "
            f"{digest} (delete it to download it again)")


# .debs being downloaded by this process, by (file name, sha256): two builds provisioned side by
# side share most of their libraries, and each is fetched once (the second waits for the first)
_INFLIGHT: dict[tuple[str, str], Future[Path]] = {}
_INFLIGHT_LOCK = threading.Lock()


def _fetch(pkg: PackageFile, dest: Path) -> None:
    """Download `pkg` into `dest` (atomically), verified against the signed index's sha256."""
    import urllib.error
    import urllib.request

    for attempt in range(DOWNLOAD_TRIES):     # a mirror's transient failure (DNS, reset) is retried
        try:
            with urllib.request.urlopen(pkg.uri, timeout=DOWNLOAD_TIMEOUT) as resp:
                data = resp.read(pkg.size + 1)
            break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            if attempt + 1 == DOWNLOAD_TRIES:
                raise ArchiveError(f"cannot download {pkg.uri}: {exc} ({DOWNLOAD_TRIES} tries)") from None
            time.sleep(2 ** attempt)
    digest = hashlib.sha256(data).hexdigest()
    if digest != pkg.sha256:
        raise VerificationError(f"checksum mismatch for {pkg.uri}: the signed index says sha256 "
                                f"{pkg.sha256}, the download has {digest}")
    atomic_write_bytes(dest, data)


def _deb(pkg: PackageFile, pool: Path) -> Path:
    """The verified .deb of `pkg` in the pool: found there, fetched by another thread of this
    process (waited for), or downloaded now."""
    dest = pool / pkg.filename
    key = (pkg.filename, pkg.sha256)
    with _INFLIGHT_LOCK:
        pending = _INFLIGHT.get(key)
        if pending is None:
            mine: Future[Path] = Future()
            _INFLIGHT[key] = mine
    if pending is not None:
        return pending.result()           # the other thread's error is this one's too
    try:
        if dest.exists():
            verify_deb(dest, pkg)
        else:
            _fetch(pkg, dest)
    except BaseException as exc:
        mine.set_exception(exc)
        raise
    else:
        mine.set_result(dest)
    finally:
        with _INFLIGHT_LOCK:
            del _INFLIGHT[key]
    return dest


def download(packages: list[PackageFile], tick: Callable[[], None] | None = None) -> list[Path]:
    """Return the verified .deb of every package, downloading the ones the pool lacks (`tick` is
    called as each one is ready)."""
    pool = _pool()

    def one(pkg: PackageFile) -> Path:
        dest = _deb(pkg, pool)
        if tick is not None:
            tick()
        return dest

    with ThreadPoolExecutor(max_workers=4) as pool_exec:
        return list(pool_exec.map(one, packages))


def unpack(debs: list[Path], dest: Path, relink: bool = True) -> None:
    """Unpack every .deb into `dest`; with `relink`, make absolute symlinks point inside it."""
    dpkg_deb = require("dpkg-deb")

    def one(deb: Path) -> None:
        done = subprocess.run(check=False, args=[dpkg_deb, "-x", str(deb), str(dest)], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ArchiveError(f"cannot unpack {deb.name}: {done.stderr.strip()}")

    # dpkg-deb -x of two packages sharing a directory is safe; files never overlap in a closure
    with ThreadPoolExecutor(max_workers=4) as pool_exec:
        list(pool_exec.map(one, debs))
    if relink:
        relink_absolute_symlinks(dest)


def relink_absolute_symlinks(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = os.path.join(dirpath, name)
            if os.path.islink(link):
                target = os.readlink(link)
                if target.startswith("/"):
                    inside = os.path.join(str(root), target.lstrip("/"))
                    os.unlink(link)
                    os.symlink(os.path.relpath(inside, dirpath), link)
