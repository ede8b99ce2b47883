"""Capture: boot the reference guest under one build and machine type and keep what it saw.

A capture directory holds `manifest.json`, `raw/` (bytes exactly as read in the guest) and
`console.log`. The manifest is written last, atomically, with `"complete": true`; a directory
without it is a failed or partial capture and is never compared.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import __version__
from harness.cache import (
    MANIFEST_LIMIT,
    atomic_write_bytes,
    cache_root,
    read_json,
    sha256_file,
    sha256_tree,
    sweep_stale,
)
from harness.errors import CaptureError, QabiError, UnsupportedError
from harness.guest.profile import NAME as PROFILE_NAME
from harness.guest.profile import GuestProfile, check_supported, machine_family
from harness.guest.user_image import open_guest_image
from harness.plan import DEFAULT_ACCESS, DEFAULT_TIMEOUT, CapturePlan, GuestAccess
from harness.qemu import QemuBuild
from harness.qemu.process import private_dir
from harness.transport.base import Session, get_transport
from harness.transport.framing import write_raw
from harness.transport.launch import check_accel, qemu_argv
from harness.transport.platform import platform, platform_key

MANIFEST = "manifest.json"
@dataclass(frozen=True)
class Capture:
    path: Path
    manifest: dict[str, Any]

    @property
    def raw(self) -> Path:
        return self.path / "raw"


def resolve_machine(build: QemuBuild, machine: str) -> str:
    """The versioned machine type `machine` names on `build` (aliases resolved), or a clear error."""
    info = build.info()
    resolved = info.resolve_machine(machine)
    if resolved is None:
        close = difflib.get_close_matches(machine, info.machine_names(), n=4, cutoff=0.6)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise QabiError(f"unknown machine type '{machine}' on {build.spec} (QEMU {info.version}){hint}")
    machine_family(resolved)
    return resolved


def is_complete(path: Path) -> bool:
    try:
        return bool(read_json(path / MANIFEST, "a capture manifest", limit=MANIFEST_LIMIT).get("complete"))
    except QabiError:
        return False


def load_capture(path: Path, verify: bool = True) -> Capture:
    """Open a complete capture; with `verify`, every raw file's sha256 is checked."""
    if not (path / MANIFEST).is_file():
        raise CaptureError(f"{path}: not a capture (no {MANIFEST})")
    try:
        manifest = read_json(path / MANIFEST, "a capture manifest", limit=MANIFEST_LIMIT)
    except QabiError as exc:
        raise CaptureError(str(exc)) from None
    if manifest.get("complete") is not True:
        raise CaptureError(f"{path}: incomplete capture: {str(manifest.get('error', 'no reason recorded'))[:200]}")
    check_manifest(path, manifest)
    if verify:
        files = manifest["files"]
        on_disk = {str(p.relative_to(path)) for p in (path / "raw").rglob("*") if p.is_file()}
        missing = set(files) - on_disk
        if missing:
            raise CaptureError(f"{path}: {len(missing)} raw file(s) missing, e.g. {min(missing)}")
        extra = on_disk - set(files)
        if extra:
            raise CaptureError(f"{path}: raw file(s) not in the manifest, e.g. {min(extra)}")
        for rel, digest in files.items():
            if sha256_file(path / rel) != digest:
                raise CaptureError(f"{path}: {rel} does not match its sha256 in the manifest")
    return Capture(path, manifest)


FAILED = "FAILED"
FAILED_SIGNATURE = "qabi failed capture v1"   # first line of FAILED: this directory is qabi's own
_FAILED_CONTENTS = {"console.log", FAILED}


def is_failed_capture(out: Path) -> bool:
    """`out` is a directory that qabi's failure path left: a FAILED marker with qabi's signature and
    nothing but its console log beside it."""
    try:
        entries = {p.name for p in out.iterdir()}
        with open(out / FAILED, encoding="utf-8", errors="replace") as handle:
            first = handle.readline(200).rstrip("\n")
    except OSError:
        return False
    return first == FAILED_SIGNATURE and entries <= _FAILED_CONTENTS


# what a complete manifest must hold, and of which JSON type (the decoders and reports read these)
_MANIFEST_SHAPE: dict[str, type] = {"build": dict, "profile": dict, "machine": dict, "image": dict, "accel": str,
                                    "files": dict}
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """CaptureError unless `manifest` has the keys and shapes a capture's readers rely on."""
    for key, kind in _MANIFEST_SHAPE.items():
        if not isinstance(manifest.get(key), kind):
            raise CaptureError(f"{path}: {MANIFEST} has no valid {key!r} (a JSON {kind.__name__})")
    for key, sub in (("machine", "asked"), ("machine", "resolved"), ("profile", "name"), ("image", "sha256")):
        if not isinstance(manifest[key].get(sub), str):
            raise CaptureError(f"{path}: {MANIFEST} has no valid {key}.{sub}")
    for rel, digest in manifest["files"].items():
        parts = rel.split("/")
        if parts[0] != "raw" or len(parts) < 2 or any(p in ("", ".", "..") for p in parts) \
                or not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest):
            raise CaptureError(f"{path}: {MANIFEST} lists a bad file entry {rel[:80]!r}")


def _prepare_out(out: Path) -> None:
    """`out` free for a new capture: missing, an empty directory, or qabi's own failed capture
    (replaced). Anything else, a user's file or directory, is never touched."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise QabiError(f"{out} exists and is not a directory; refusing to overwrite it")
    if is_complete(out):
        raise QabiError(f"{out} already holds a complete capture; refusing to overwrite it")
    if not any(out.iterdir()):
        return
    if not is_failed_capture(out):
        raise QabiError(f"{out} exists and is not qabi's own failed capture; refusing to overwrite it "
                        "(choose an empty or new directory)")
    shutil.rmtree(out)


def plan_capture(build: QemuBuild, profile: GuestProfile, machine: str, accel: str = "tcg",
                 timeout: float = DEFAULT_TIMEOUT, access: GuestAccess = DEFAULT_ACCESS,
                 reference: Path | None = None) -> CapturePlan:
    """Everything one capture needs, checked once: the machine type resolved on `build`, the
    profile's devices present on it, the accelerator and the transport known."""
    check_accel(accel)
    if not 0 < timeout < float("inf"):
        raise QabiError(f"--timeout must be a positive number of seconds, not {timeout}")
    transport = get_transport(access.transport)
    resolved = resolve_machine(build, machine)
    if not profile.applies_to(resolved):
        raise QabiError(f"guest profile '{profile.name}' runs on {', '.join(profile.families)} machine types "
                        f"only, not on {resolved}")
    check_supported(profile, resolved, frozenset(build.info().devices))
    if profile.firmware == "ovmf-secboot" and access.guest_image is not None:
        raise UnsupportedError(f"profile '{profile.name}' boots with Secure Boot: a guest image must bring a boot "
                               "loader signed for the build's db (the reference guest's kernel is signed for it)")
    if transport.needs_nic and not profile.nics_for(resolved):
        raise UnsupportedError(f"profile '{profile.name}' has no NIC, so the {transport.name} transport cannot "
                               "reach it (use --transport firmware or serial)")
    user_image = open_guest_image(access.guest_image) if access.guest_image is not None else None
    return CapturePlan(build, profile, machine, resolved, accel, timeout, access, reference, user_image)


def capture(plan: CapturePlan, out: Path) -> Capture:
    """Boot, probe, verify and write a complete capture to `out`, or raise (leaving no manifest)."""
    transport = get_transport(plan.access.transport)
    out = out.resolve()
    _prepare_out(out)
    sweep_stale(out.parent, f".{out.name}.partial-")
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        return _capture(plan, transport, out, staging)
    except OSError as exc:   # ENOSPC, EROFS, a name too long…: no partial raw is left (see _fail)
        where = exc.filename or out
        raise CaptureError(f"cannot write the capture: {where}: {exc.strerror or exc}") from None


def _capture(plan: CapturePlan, transport: Any, out: Path, staging: Path) -> Capture:
    started = time.time()
    console_log = out / "console.log"   # where a person will look if this fails
    try:
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "raw").mkdir(parents=True)
        # in memory only when the guest is qabi's own hand-off probe: a user's image or a booted OS
        # may write its console without bound, and that belongs on disk
        with private_dir(memory=transport.name == "firmware") as work, platform(plan, work):
            setup = transport.setup(plan, work, console_log)
            argv = qemu_argv(plan, work, setup)
            result = transport.run(Session(argv, plan.build.environ(), work, console_log, plan.timeout, setup))
            files = write_raw(result.records, staging / "raw")
        os.replace(console_log, staging / "console.log")
        out.rmdir()
        manifest = _manifest(plan, transport, argv, setup, result, files, staging, started)
        atomic_write_bytes(staging / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        os.rename(staging, out)
    except BaseException as exc:
        _fail(staging, out, exc)
        raise
    return Capture(out, manifest)


def _manifest(plan: CapturePlan, transport: Any, argv: list[str], setup: Any, result: Any,
              files: dict[str, str], staging: Path, started: float) -> dict[str, Any]:
    profile, resolved = plan.profile, plan.machine
    manifest = {
        "complete": True,
        "qabi_version": __version__,
        "build": plan.build.provenance(),
        "profile": {"name": profile.name, "source": Path(profile.source).name, "cpu": profile.cpu,
                    "memory_mib": profile.memory_mib, "smp": dict(profile.smp), "uuid": profile.uuid,
                    "devices": profile.drivers_for(resolved)},
        "machine": {"asked": plan.asked, "resolved": resolved, "family": machine_family(resolved)},
        "accel": plan.accel,
        "argv": _portable_argv(argv),
        "image": setup.image,
        "transport": transport.name,
        "inputs": capture_inputs(plan),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "timings": result.timings,
        "probe": result.info,
        "files": {f"raw/{rel}": digest for rel, digest in sorted(files.items())},
        "console_sha256": sha256_file(staging / "console.log"),
    }
    if result.details:
        manifest[transport.name] = result.details
    return manifest


def _portable_argv(argv: list[str]) -> list[str]:
    """argv with the per-run temp dir replaced, so that identical inputs give identical manifests."""
    out = []
    for arg in argv:
        if "/qabi-" in arg and "/tmp" in arg:
            head, _, tail = arg.partition("/qabi-")
            arg = head + "/$WORK/" + tail.split("/", 1)[-1] if "/" in tail else arg
        out.append(arg)
    return out


def _fail(staging: Path, out: Path, exc: BaseException) -> None:
    """Remove the staging dir (no partial raw is left) and keep the console log of a failed capture
    at `out`, marked FAILED with qabi's signature (so a later capture may replace it), no manifest.
    Best effort: on a full or read-only disk the marker may be missing, never the original error."""
    shutil.rmtree(staging, ignore_errors=True)
    with contextlib.suppress(OSError, QabiError):
        out.mkdir(parents=True, exist_ok=True)
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:2000]
        atomic_write_bytes(out / FAILED, f"{FAILED_SIGNATURE}\n{reason}\n")


# -- what a capture is of: its inputs, its cache key, its folder name ------------------------------------
# A capture in the cache lives in MACHINE_PROFILE_KEY, KEY a pure function of its inputs (`inputs_key`).
# The inputs are recorded in the manifest (`inputs`), so the key is recomputed from what the capture
# says it is on import and on every reuse: a capture filed under another build's key is never used.
KEY_LENGTH = 24
INPUT_FIELDS = ("qabi", "build", "firmware", "machine", "profile", "accel", "transport", "reads", "image", "platform")
CAPTURE_NAME = re.compile(rf"(?P<machine>[A-Za-z0-9][A-Za-z0-9.+-]*)_(?P<profile>{PROFILE_NAME.pattern})"
                          rf"_(?P<key>[0-9a-f]{{{KEY_LENGTH}}})")


def capture_inputs(plan: CapturePlan) -> dict[str, Any]:
    """Everything that decides what a capture contains, as its manifest records it: qabi's version,
    the binary's sha256, each firmware dir (portable) with the sha256 of its tree, the resolved
    machine type, the profile file's sha256, the accelerator, the transport and what the host reads
    through it, the sha256 of what boots (the firmware payload or EFI probe, the reference image or the
    user's image) and the platform's own inputs (OVMF code and vars, the TPM state: `platform_key`)."""
    build, profile = plan.build, plan.profile
    text = Path(profile.source).read_bytes() if profile.source else repr(profile).encode()
    return {
        "qabi": __version__, "build": build.sha256,
        "firmware": [{"dir": portable_path(d), "sha256": _firmware_sha256(d)} for d in build.firmware_dirs],
        "machine": plan.machine, "profile": hashlib.sha256(text).hexdigest(), "accel": plan.accel,
        "transport": plan.access.transport, "reads": transport_reads(plan.access.transport),
        "image": _boot_sha256(plan), "platform": platform_key(plan),
    }


def transport_reads(name: str) -> str:
    """What the host itself reads in a capture by transport `name` (its `reads`, e.g. the firmware
    transport's tables, PCI, fw_cfg and registers, with a version): a new reader makes new captures,
    never a reused one that lacks what it reads. "" for a transport that only takes the guest's output."""
    return str(getattr(get_transport(name), "reads", ""))


def inputs_key(inputs: dict[str, Any]) -> str:
    """The cache key of a capture's inputs: the one function, for the plan about to capture and for
    a manifest that says what it captured (identical inputs give identical raw bytes)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]


def capture_key(plan: CapturePlan) -> str:
    return inputs_key(capture_inputs(plan))


def capture_name(plan: CapturePlan, inputs: dict[str, Any] | None = None) -> str:
    """The cache folder of `plan`'s capture: MACHINE_PROFILE_KEY."""
    return f"{plan.machine}_{plan.profile.name}_{inputs_key(inputs or capture_inputs(plan))}"


def check_provenance(cap: Capture, expected: dict[str, Any] | None = None) -> None:
    """CaptureError unless `cap` is what its folder's name says: MACHINE_PROFILE_KEY with the
    manifest's machine type and profile, and KEY recomputed from the manifest's recorded inputs,
    which must agree with what the manifest says ran (build sha256, machine, accel, transport,
    image). With `expected` (the inputs of the run about to use it) they must be exactly those."""
    name = cap.path.name
    parsed = CAPTURE_NAME.fullmatch(name)
    if parsed is None:
        raise CaptureError(f"{name[:120]}: not a capture folder name (MACHINE_PROFILE_KEY)")
    manifest = cap.manifest
    key = manifest_key(cap)
    has = (manifest["machine"]["resolved"], manifest["profile"]["name"], key)
    if (parsed["machine"], parsed["profile"], parsed["key"]) != has:
        raise CaptureError(f"{name}: its manifest is a capture of {has[0]} {has[1]} whose inputs give the key "
                           f"{key}: filed under another key")
    if expected is not None and manifest["inputs"] != expected:
        differ = [f for f in INPUT_FIELDS if manifest["inputs"].get(f) != expected.get(f)]
        raise CaptureError(f"{name}: a capture of other inputs ({', '.join(differ) or 'all'} differ)")


def manifest_key(cap: Capture) -> str:
    """The key of the inputs `cap`'s manifest records, once they agree with the rest of the manifest."""
    path, manifest = cap.path.name, cap.manifest
    inputs = manifest.get("inputs")
    if not isinstance(inputs, dict) or sorted(inputs) != sorted(INPUT_FIELDS):
        raise CaptureError(f"{path}: {MANIFEST} records no valid capture inputs (made by an older qabi?)")
    firmware = inputs["firmware"]
    platform = inputs["platform"]
    if not all(isinstance(inputs[f], str) for f in INPUT_FIELDS if f not in ("firmware", "platform")) \
            or not isinstance(platform, dict) or not all(isinstance(v, str) for v in platform.values()) \
            or not isinstance(firmware, list) \
            or not all(isinstance(f, dict) and sorted(f) == ["dir", "sha256"] and all(isinstance(v, str) for v in f.values())
                       for f in firmware):
        raise CaptureError(f"{path}: {MANIFEST} records no valid capture inputs (bad field types)")
    build = manifest["build"]
    recorded = {"qabi": manifest.get("qabi_version"), "build": build.get("sha256"),
                "machine": manifest["machine"]["resolved"], "accel": manifest["accel"],
                "transport": manifest.get("transport"), "image": manifest["image"]["sha256"]}
    for field, value in recorded.items():
        if inputs[field] != value:
            raise CaptureError(f"{path}: {MANIFEST} records the input {field} {str(inputs[field])[:80]!r} "
                               f"but ran {str(value)[:80]!r}")
    dirs = build.get("firmware_dirs")
    if not isinstance(dirs, list) or len(dirs) != len(firmware) \
            or not all(isinstance(d, str) and _same_dir(d, f["dir"]) for d, f in zip(dirs, firmware, strict=False)):
        raise CaptureError(f"{path}: {MANIFEST} records firmware inputs other than the firmware dirs that ran")
    return inputs_key(inputs)


def portable_path(path: str) -> str:
    """A path as a key input: relative to the cache root when inside it, so that captures moved to
    another runner (`qabi cache export/import`) keep their keys there."""
    root = cache_root()
    for inside, base in ((Path(path).absolute(), root.absolute()), (Path(path).resolve(), root.resolve())):
        if inside.is_relative_to(base):   # as named (a cache whose builds are links elsewhere), or resolved
            return "$CACHE/" + str(inside.relative_to(base))
    return path


def _same_dir(ran: str, recorded: str) -> bool:
    """The firmware dir a manifest says ran is the one its inputs record (`portable_path`: inside
    the cache on whichever runner made it, or the same path)."""
    if recorded.startswith("$CACHE/"):
        return ran.endswith(recorded.removeprefix("$CACHE"))
    return ran == recorded or Path(ran).resolve() == Path(recorded)


@functools.cache
def _firmware_sha256(path: str) -> str:
    """A firmware dir's tree hash, once per process (builds in the cache do not change under a run)."""
    return sha256_tree(Path(path))


def _boot_sha256(plan: CapturePlan) -> str:
    """The sha256 of what boots: the user's image, the firmware payload or the reference image."""
    if plan.user_image is not None:
        return plan.user_image.sha256
    if plan.access.transport == "firmware":
        from harness.transport.firmware import boot_sha256

        return boot_sha256(plan.profile.firmware)
    from harness.guest import build_reference_image

    return build_reference_image(plan.reference).sha256
