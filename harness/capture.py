"""Capture: boot the reference guest under one build and machine type and keep what it saw.

A capture directory holds `manifest.json`, `raw/` (bytes exactly as read in the guest) and
`console.log`. The manifest is written last, atomically, with `"complete": true`; a directory
without it is a failed or partial capture and is never compared.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import __version__
from harness.cache import atomic_write_bytes, read_json, sha256_file, sweep_stale
from harness.errors import CaptureError, QabiError, UnsupportedError
from harness.guest.profile import GuestProfile, check_supported, machine_family
from harness.guest.user_image import GuestImage, open_guest_image
from harness.qemu import QemuBuild
from harness.qemu.process import private_dir
from harness.transport.base import DEFAULT_TRANSPORT, Session, check_transport, get_transport
from harness.transport.framing import write_raw
from harness.transport.launch import check_accel, qemu_argv
from harness.transport.platform import platform

MANIFEST = "manifest.json"
DEFAULT_TIMEOUT = 180.0
# The default transport of every front door (capture, record, check, pytest harness/): the hardware
# at the firmware hand-off, read over qtest. It is ~10x faster than booting Linux and sees PCI
# before any driver wrote it; serial and ssh remain for a real OS's view and your own images.


@dataclass(frozen=True)
class GuestAccess:
    """Which guest boots and how the probe reaches it.

    firmware (the default): no OS, the host reads the hardware at the firmware hand-off over qtest
    (the reference payload runs CPUID and E820). serial: the reference guest, probe on the console.
    ssh: the reference guest in network mode, or with `guest_image` the user's own disk image (logged in as `ssh_user` with
    `ssh_key`; its host key must be in `ssh_host_keys`, a .pub or known_hosts file).
    """

    transport: str = DEFAULT_TRANSPORT
    guest_image: Path | None = None
    ssh_user: str | None = None
    ssh_key: Path | None = None
    ssh_host_keys: Path | None = None

    def __post_init__(self) -> None:
        check_transport(self.transport)
        ssh_opts = [name for name, value in (("--ssh-user", self.ssh_user), ("--ssh-key", self.ssh_key),
                                             ("--ssh-host-key", self.ssh_host_keys)) if value]
        if self.guest_image is None:
            if ssh_opts:
                raise QabiError(f"{', '.join(ssh_opts)} only apply with --guest-image (the reference guest "
                                "brings its own keys)")
            return
        if self.transport != "ssh":
            raise QabiError("--guest-image needs --transport ssh (a guest image is reached over SSH)")
        if self.ssh_key is None:
            raise QabiError("--guest-image needs --ssh-key (the private key that logs in to the guest)")

    @classmethod
    def from_options(cls, transport: str, guest_image: str | None, ssh_user: str | None, ssh_key: str | None,
                     ssh_host_key: str | None) -> GuestAccess:
        """From the option values of the CLI or the pytest plugin (paths as strings; empty = not given)."""
        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        return cls(transport=transport, guest_image=path(guest_image), ssh_user=ssh_user or None,
                   ssh_key=path(ssh_key), ssh_host_keys=path(ssh_host_key))

    @property
    def user(self) -> str:
        return self.ssh_user or "root"

    @property
    def boots_reference_image(self) -> bool:
        """Whether the reference guest (kernel + initramfs) boots: not for the firmware payload, nor
        for the user's own image."""
        return self.guest_image is None and self.transport != "firmware"

    def key_parts(self, image: GuestImage | None = None) -> dict[str, Any]:
        """What of this access decides a capture's bytes (for cache keys): the transport (serial
        keys carry none, as before transports were named in them), the payload or the user image
        (`image`: the opened one, when there is one)."""
        if self.transport == "serial":
            return {}
        parts: dict[str, Any] = {"transport": self.transport}
        if self.transport == "firmware":
            from harness.transport.firmware import payload_sha256

            parts["payload"] = payload_sha256()
        if self.guest_image is not None:
            parts["guest_image"] = (image or open_guest_image(self.guest_image)).sha256
        return parts


DEFAULT_ACCESS = GuestAccess()
SERIAL = GuestAccess(transport="serial")


@dataclass(frozen=True)
class CapturePlan:
    """One capture to make: a build, a profile, a machine type (as asked and resolved), the
    accelerator, the timeout and how the guest is reached (`plan_capture` checks them)."""

    build: QemuBuild
    profile: GuestProfile
    asked: str
    machine: str                     # the resolved, versioned machine type
    accel: str = "tcg"
    timeout: float = DEFAULT_TIMEOUT
    access: GuestAccess = DEFAULT_ACCESS
    reference: Path | None = None    # the reference guest's recipe dir (default guests/reference)
    user_image: GuestImage | None = None   # the opened (checked, hashed) --guest-image


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
        return bool(json.loads((path / MANIFEST).read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def load_capture(path: Path, verify: bool = True) -> Capture:
    """Open a complete capture; with `verify`, every raw file's sha256 is checked."""
    if not (path / MANIFEST).is_file():
        raise CaptureError(f"{path}: not a capture (no {MANIFEST})")
    try:
        manifest = read_json(path / MANIFEST, "a capture manifest")
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
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
                or not isinstance(digest, str) or not _SHA256.fullmatch(digest):
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
    if profile.firmware == "ovmf-secboot" and transport.name != "firmware":
        raise UnsupportedError(f"profile '{profile.name}' boots with Secure Boot, and the reference kernel is not "
                               f"signed with a key in its db: use --transport firmware (the signed EFI probe)")
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
        with private_dir() as work, platform(plan, work):
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
    with contextlib.suppress(OSError):
        out.mkdir(parents=True, exist_ok=True)
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:2000]
        (out / FAILED).write_text(f"{FAILED_SIGNATURE}\n{reason}\n")
