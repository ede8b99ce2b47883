"""`qabi cache export FILE` / `qabi cache import FILE`: the capture cache in a tarball, so CI
shards and reruns on other runners reuse captures instead of booting.

A capture's folder name is its content key (`MACHINE_PROFILE_KEY`, harness/check.py:
`capture_key`): a capture with identical inputs lands under the same name anywhere. Export
takes every complete, verified capture. Import is hostile-input safe: only regular files and
directories under `NAME/{manifest.json,console.log,raw/…}` with a capture-shaped NAME (no
absolute paths, `..`, links or devices), bounded in size; every capture is verified
(`load_capture`: each raw file against the manifest's sha256, nothing missing or extra, the
manifest's machine and profile matching the name) in a staging directory before any is moved
into the cache, each by one atomic rename. Captures already in the cache are kept.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.cache import atomic_write_bytes, cache_dir, file_lock
from harness.capture import MANIFEST, is_complete, load_capture
from harness.errors import QabiError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*_[A-Za-z0-9][A-Za-z0-9.+-]*_[0-9a-f]{24}")
TOP_FILES = {MANIFEST, "console.log"}
MAX_BYTES = 4 << 30          # whole archive, unpacked
MAX_MEMBERS = 500_000


@dataclass(frozen=True)
class Moved:
    added: tuple[str, ...]
    kept: tuple[str, ...]        # already in the cache (same key): left as they were


def captures_dir() -> Path:
    return cache_dir("captures")


def export_captures(target: Path) -> tuple[str, ...]:
    """Every complete capture in the cache, verified, into the tarball `target` (written
    atomically; .tar.gz/.tgz compressed, else plain tar). Returns the capture names."""
    root = captures_dir()
    names = sorted(p.name for p in root.iterdir() if NAME.fullmatch(p.name) and p.is_dir() and is_complete(p))
    buffer = io.BytesIO()
    mode = "w:gz" if target.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for name in names:
            folder = root / name
            load_capture(folder)            # never export a capture that does not verify
            for path in sorted([folder / MANIFEST, folder / "console.log",
                                *(p for p in (folder / "raw").rglob("*"))]):
                if not path.exists() and not path.is_symlink():
                    continue
                if path.is_symlink() or not (path.is_file() or path.is_dir()):
                    raise QabiError(f"{path}: not a regular file in a capture; refusing to export it")
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                if info.isfile():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
    try:
        atomic_write_bytes(target, buffer.getvalue())
    except OSError as exc:
        raise QabiError(f"cannot write {target}: {exc.strerror or exc}") from None
    return tuple(names)


def _check_member(member: tarfile.TarInfo, source: Path) -> str:
    """The capture name `member` belongs to, or a QabiError saying why it is refused."""
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise QabiError(f"{source}: member {name!r} escapes the capture folder; refusing the archive")
    if not (member.isfile() or member.isdir()):
        raise QabiError(f"{source}: member {name!r} is not a regular file or directory; refusing the archive")
    if not NAME.fullmatch(parts[0]):
        raise QabiError(f"{source}: member {name!r} is not in a capture folder; refusing the archive")
    rest = parts[1:]
    ok = (not rest or (len(rest) == 1 and (rest[0] in TOP_FILES and member.isfile() or rest[0] == "raw"))
          or rest[0] == "raw")
    if not ok:
        raise QabiError(f"{source}: member {name!r} is not part of a capture; refusing the archive")
    return parts[0]


def _check_named(folder: Path) -> None:
    """The manifest's machine type and profile are the ones the folder's name says."""
    manifest = load_capture(folder).manifest
    machine = manifest.get("machine") or {}
    profile = manifest.get("profile") or {}
    resolved = machine.get("resolved") if isinstance(machine, dict) else None
    guest = profile.get("name") if isinstance(profile, dict) else None
    if not folder.name.startswith(f"{resolved}_{guest}_"):
        raise QabiError(f"{folder.name}: its manifest is {resolved} {guest}; refusing the archive")


def import_captures(source: Path) -> Moved:
    """The captures of the tarball `source` into the cache (all verified before any is added)."""
    root = captures_dir()
    try:
        tar = tarfile.open(source, mode="r:*")  # noqa: SIM115 - closed by the `with tar:` below
    except (OSError, tarfile.TarError) as exc:
        raise QabiError(f"{source}: not a readable tar archive: {exc}") from None
    staging = Path(tempfile.mkdtemp(prefix=".import.", dir=root))
    try:
        with tar:
            names: set[str] = set()
            total = count = 0
            for member in tar:
                count += 1
                total += max(member.size, 0)
                if count > MAX_MEMBERS or total > MAX_BYTES:
                    raise QabiError(f"{source}: more than {MAX_MEMBERS} members or {MAX_BYTES >> 30} GiB; "
                                    "refusing the archive")
                names.add(_check_member(member, source))
                target = staging / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = tar.extractfile(member)
                if handle is None:
                    raise QabiError(f"{source}: member {member.name!r} cannot be read")
                with handle, open(target, "xb") as out:
                    shutil.copyfileobj(handle, out)
        for name in sorted(names):
            try:
                _check_named(staging / name)
            except QabiError as exc:
                raise QabiError(f"{source}: capture {exc}") from None
        added: list[str] = []
        kept: list[str] = []
        for name in sorted(names):
            final = root / name
            with file_lock(final.with_name(name + ".lock")):
                if is_complete(final):
                    kept.append(name)
                    continue
                if final.exists():
                    shutil.rmtree(final)   # a failed capture's leftovers: the verified one replaces them
                os.rename(staging / name, final)
                added.append(name)
        return Moved(tuple(added), tuple(kept))
    except (OSError, tarfile.TarError) as exc:
        raise QabiError(f"{source}: cannot import: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
