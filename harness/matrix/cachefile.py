"""`qabi cache export FILE` / `qabi cache import FILE`: the capture cache in a tarball, so CI
shards and reruns on other runners reuse captures instead of booting.

A capture's folder name is its content key (`MACHINE_PROFILE_KEY`, harness/capture.py:
`capture_name`, KEY a pure function of the capture's inputs, which its manifest records). Export
takes every complete capture that verifies and whose key recomputed from its manifest is its
folder's; one that does not is named and skipped, the rest exported, exit 2 at the end. Import is
hostile-input safe: the archive is read by the one bounded reader (harness/untar.py: member
count, sizes, names, pax headers, decompressed bytes and time bounded) and checked whole before
anything is written; only regular files and directories under `NAME/{manifest.json,console.log,
raw/…}` with a capture-shaped NAME. Every capture is verified in a staging directory (each raw file
against the manifest's sha256, nothing missing or extra, and its key recomputed from the manifest's
inputs: a capture filed under another capture's name is refused, named, exit 2 at the end); the
good ones are moved into the cache, each by one atomic rename. Captures already in the cache are kept.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.cache import atomic_write_bytes, cache_dir, file_lock
from harness.capture import CAPTURE_NAME, MANIFEST, check_provenance, is_complete, load_capture
from harness.errors import CaptureError, QabiError, note
from harness.untar import Limits, read_tar

TOP_FILES = {MANIFEST, "console.log"}
# a capture holds ~60-200 files of at most a few MiB (its console log at most 64 MiB)
LIMITS = Limits(members=50_000, member_bytes=80 << 20, total_bytes=2 << 30, seconds=600.0)


@dataclass(frozen=True)
class Moved:
    added: tuple[str, ...]
    kept: tuple[str, ...]        # already in the cache (same key): left as they were


def captures_dir() -> Path:
    return cache_dir("captures")


def _refused(target: Path, done: str, refused: list[str]) -> QabiError:
    """Exit 2 at the end of an export or import that left captures out: one line naming them."""
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    return QabiError(f"{target}: {done}; {len(refused)} refused: {refused[0]}{more}")


def export_captures(target: Path, limits: Limits = LIMITS) -> tuple[str, ...]:
    """Every complete capture in the cache that proves what it is, into the tarball `target`
    (written atomically; .tar.gz/.tgz compressed, else plain tar). Returns the capture names; a
    capture that does not verify is named and left out, and the export ends in a QabiError."""
    root = captures_dir()
    names: list[str] = []
    refused: list[str] = []
    older: list[str] = []
    files: list[Path] = []
    for folder in sorted(root.iterdir()):
        if not CAPTURE_NAME.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir() \
                or not is_complete(folder):
            continue
        try:
            cap = load_capture(folder)            # never export a capture that does not verify
            if "inputs" not in cap.manifest:
                older.append(folder.name)         # made by an older qabi: no key to prove, never reused
                continue
            check_provenance(cap)
            files += _capture_files(folder)
            names.append(folder.name)
        except CaptureError as exc:
            refused.append(str(exc))
    buffer = io.BytesIO()
    mode = "w:gz" if target.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path in files:
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    atomic_write_bytes(target, buffer.getvalue())
    if older:
        note(f"{target}: {len(older)} capture(s) made by an older qabi left out (they record no inputs to prove "
             f"their key, and no run reuses them), e.g. {older[0]}")
    if refused:
        raise _refused(target, f"{len(names)} captures exported", refused)
    return tuple(names)


def _capture_files(folder: Path) -> list[Path]:
    """What of a capture goes into the archive; CaptureError if anything is not a regular file."""
    out = []
    for path in sorted([folder / MANIFEST, folder / "console.log", *(folder / "raw").rglob("*")]):
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise CaptureError(f"{path}: not a regular file in a capture")
        out.append(path)
    return out


def _check_member(name: str, is_file: bool, source: Path) -> str:
    """The capture name the member `name` belongs to, or a QabiError saying why it is refused
    (links, devices, absolute names and `..` the reader refused already)."""
    parts = name.split("/")
    if not CAPTURE_NAME.fullmatch(parts[0]):
        raise QabiError(f"{source}: member {name[:200]!r} is not in a capture folder; refusing the archive")
    rest = parts[1:]
    ok = (not rest or (len(rest) == 1 and (rest[0] in TOP_FILES and is_file or rest[0] == "raw"))
          or rest[0] == "raw")
    if not ok:
        raise QabiError(f"{source}: member {name[:200]!r} is not part of a capture; refusing the archive")
    return parts[0]


def import_captures(source: Path, limits: Limits = LIMITS) -> Moved:
    """The captures of the tarball `source` into the cache: the archive checked whole first (nothing
    written), then every capture verified in staging before any is added; a capture that does not
    prove its name is refused (named; QabiError once the others are in)."""
    root = captures_dir()
    names = {_check_member(m.name, m.kind == "file", source) for m, _data in read_tar(source, limits)}
    staging = Path(tempfile.mkdtemp(prefix=f".import.partial-{os.getpid()}-", dir=root))
    try:
        for member, data in read_tar(source, limits):
            target = staging / member.name
            if member.kind == "dir":
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as out:
                out.writelines(data)
        refused: list[str] = []
        good: list[str] = []
        for name in sorted(names):
            try:
                check_provenance(load_capture(staging / name))
                good.append(name)
            except CaptureError as exc:
                refused.append(str(exc).replace(f"{staging}/", ""))
        added: list[str] = []
        kept: list[str] = []
        for name in good:
            final = root / name
            with file_lock(final.with_name(name + ".lock")):
                if is_complete(final):
                    kept.append(name)
                    continue
                if final.exists():
                    shutil.rmtree(final)   # a failed capture's leftovers: the verified one replaces them
                os.rename(staging / name, final)
                added.append(name)
        if refused:
            raise _refused(source, f"{len(added)} captures imported, {len(kept)} already in the cache", refused)
        return Moved(tuple(added), tuple(kept))
    except OSError as exc:
        raise QabiError(f"{source}: cannot import: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
