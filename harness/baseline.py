"""Golden baselines: capture bundles recorded from a release, committed under fingerprints/.

Layout (readable by a person):

    fingerprints/BUILD/build.json                     provenance of the recorded build
    fingerprints/BUILD/MACHINE/PROFILE/manifest.json  the capture's manifest, as captured
    fingerprints/BUILD/MACHINE/PROFILE/raw.tar.xz     its raw/ bytes, a deterministic tar

A baseline is compared exactly like a fresh capture: it is unpacked into the cache (by the one
bounded archive reader, harness/untar.py) and every raw file is verified against the manifest's
sha256 before use. It proves what it is: `build.json` must be a build record (the fields below), and
each recording's manifest must be of the build `build.json` names and of the machine type and
profile its folders name; anything else is refused (exit 2).
"""

from __future__ import annotations

import hashlib
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
from harness.capture import MANIFEST, SHA256_HEX, Capture, load_capture
from harness.errors import QabiError
from harness.untar import Limits, read_tar

BUILD_JSON = "build.json"
RAW_TAR = "raw.tar.xz"
# what names a build (build.json and every recording's manifest must agree on all of them)
IDENTITY = ("kind", "spec", "version", "package_version", "sha256", "firmware_from")
# a capture's raw/ is ~100 files, well under 1 MiB; a table or config space is at most a few MiB
LIMITS = Limits(members=4096, member_bytes=16 << 20, total_bytes=64 << 20, seconds=60.0)


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
    """The build record of the baseline `path`, checked: a QabiError naming the file if it is not
    JSON, has no `build` object, or lacks (or mistypes) one of the fields that name a build."""
    where = path / BUILD_JSON
    data = read_json(where, "a baseline's build record", limit=MANIFEST_LIMIT)
    build = data.get("build")
    if not isinstance(build, dict):
        raise QabiError(f"{where}: not a baseline's build record (no 'build' object)")
    for field in IDENTITY:
        value = build.get(field)
        if not (isinstance(value, str) or (field == "firmware_from" and value is None)):
            raise QabiError(f"{where}: not a baseline's build record (no valid build.{field})")
    if not SHA256_HEX.fullmatch(build["sha256"]):
        raise QabiError(f"{where}: not a baseline's build record (build.sha256 is not a sha256)")
    return dict(build)


def check_recording(cap: Capture, build: dict[str, Any], machine: str, profile: str, where: Path) -> None:
    """QabiError unless the recorded capture `cap` is of the baseline's build (`build.json`) and of
    the machine type and profile its folders (`where`) name."""
    manifest = cap.manifest
    ran = manifest["build"]
    differ = [f for f in IDENTITY if ran.get(f) != build.get(f)]
    if differ:
        raise QabiError(f"baseline {where}: a capture of another build ({differ[0]} {str(ran.get(differ[0]))[:80]!r}, "
                        f"{BUILD_JSON} says {str(build.get(differ[0]))[:80]!r}); refusing it")
    has = (manifest["machine"]["resolved"], manifest["profile"]["name"])
    if has != (machine, profile):
        raise QabiError(f"baseline {where}: a capture of {has[0]}/{has[1]} filed as {machine}/{profile}; refusing it")


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
    build = baseline_provenance(path)
    digest = hashlib.sha256((sha256_file(src / MANIFEST) + sha256_file(src / RAW_TAR)).encode()).hexdigest()[:24]
    folder = cache_dir("baselines") / f"{machine}_{profile}_{digest}"
    with file_lock(folder.with_name(folder.name + ".lock")):
        if not (folder / MANIFEST).is_file():
            with staging_dir(folder) as tmp:
                try:
                    for member, data in read_tar(src / RAW_TAR, LIMITS):
                        if member.kind != "file" or not member.name.startswith("raw/"):
                            raise QabiError(f"{src / RAW_TAR}: unexpected member {member.name[:200]!r}")
                        target = tmp / member.name
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with open(target, "xb") as out:
                            out.writelines(data)
                    shutil.copyfile(src / MANIFEST, tmp / MANIFEST)
                except OSError as exc:
                    raise QabiError(f"{src}: cannot unpack the baseline: {exc.strerror or exc}") from None
    cap = load_capture(folder)
    check_recording(cap, build, machine, profile, src)
    return cap
