"""Golden baselines: capture bundles recorded from a release, committed under fingerprints/.

Layout (readable by a person):

    fingerprints/BUILD/build.json                     provenance of the recorded build
    fingerprints/BUILD/MACHINE/PROFILE/manifest.json  the capture's manifest, as captured
    fingerprints/BUILD/MACHINE/PROFILE/raw.tar.xz     its raw/ bytes, a deterministic tar

A baseline is compared exactly like a fresh capture: it is unpacked into the cache and every raw
file is verified against the manifest's sha256 before use.
"""

from __future__ import annotations

import io
import lzma
import re
import shutil
import tarfile
from pathlib import Path
from typing import Any

from harness.cache import (
    MANIFEST_LIMIT,
    atomic_write_bytes,
    cache_dir,
    file_lock,
    read_json,
    sha256_file,
    staging_dir,
    write_json,
)
from harness.capture import MANIFEST, Capture, load_capture
from harness.errors import QabiError

BUILD_JSON = "build.json"
RAW_TAR = "raw.tar.xz"


def build_label(provenance: dict[str, Any]) -> str:
    """A folder name a person can read: debian-bookworm-7.2.22_1_7.2+dfsg-7+deb12u18+b3."""
    spec = str(provenance["spec"])
    if spec.startswith("debian:"):
        suite = spec[len("debian:"):].split("=")[0]
        label = f"debian-{suite}-{provenance['version']}_{provenance['package_version']}"
    else:
        label = f"{provenance['kind']}-{provenance['version']}-{provenance['sha256'][:12]}"
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", label)


def is_baseline_dir(path: Path) -> bool:
    return path.is_dir() and (path / BUILD_JSON).is_file()


def baseline_provenance(path: Path) -> dict[str, Any]:
    data = read_json(path / BUILD_JSON, "a baseline's build record", limit=MANIFEST_LIMIT)
    if not isinstance(data.get("build"), dict):
        raise QabiError(f"{path / BUILD_JSON}: not a baseline's build record (no 'build' object)")
    return dict(data["build"])


def baseline_machines(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def _tar_bytes(raw: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in raw.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(str(path.relative_to(raw.parent)))
            info.size = path.stat().st_size
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    return lzma.compress(buf.getvalue(), preset=9 | lzma.PRESET_EXTREME)


def record(capture_dir: Path, out_root: Path) -> Path:
    """Store the complete capture `capture_dir` as a baseline under `out_root`; return its folder."""
    cap = load_capture(capture_dir)
    m = cap.manifest
    build_dir = out_root / build_label(m["build"])
    dest = build_dir / m["machine"]["resolved"] / m["profile"]["name"]
    write_json(dest / MANIFEST, m)
    atomic_write_bytes(dest / RAW_TAR, _tar_bytes(cap.raw), what="baseline archive")
    write_json(build_dir / BUILD_JSON, {"build": m["build"]})
    return dest


def baseline_capture(path: Path, machine: str, profile: str) -> Capture:
    """The recorded capture of (machine, profile), unpacked (once, into the cache) and verified."""
    src = path / machine / profile
    if not (src / MANIFEST).is_file() or not (src / RAW_TAR).is_file():
        recorded = ", ".join(f"{p.parent.name}/{p.name}" for p in sorted(path.glob("*/*")) if p.is_dir())
        raise QabiError(f"baseline {path} has no recording of {machine}/{profile} "
                        f"(it has: {recorded or 'nothing'})")
    digest = sha256_file(src / RAW_TAR)[:24]
    folder = cache_dir("baselines") / f"{machine}_{profile}_{digest}"
    with file_lock(folder.with_name(folder.name + ".lock")):
        if not (folder / MANIFEST).is_file():
            with staging_dir(folder) as tmp:
                try:
                    data = lzma.decompress((src / RAW_TAR).read_bytes())
                    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                        for member in tar.getmembers():
                            if not member.isfile() or not member.name.startswith("raw/") or ".." in member.name:
                                raise QabiError(f"{src / RAW_TAR}: unexpected member {member.name}")
                        tar.extractall(tmp, filter="data")
                except (lzma.LZMAError, tarfile.TarError, EOFError) as exc:
                    raise QabiError(f"{src / RAW_TAR}: corrupt baseline archive: {exc}") from None
                shutil.copyfile(src / MANIFEST, tmp / MANIFEST)
    return load_capture(folder)
