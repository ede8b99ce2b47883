"""Runs: capture both sides of (machine type, profile) pairs and compare them.

Shared by `qabi check` and the pytest harness. A side is a QEMU build (captured now, or reused
from the capture cache when every input is identical) or a recorded baseline.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import __version__
from harness.cache import cache_dir, file_lock
from harness.capture import SERIAL, GuestAccess, capture, is_complete, load_capture, resolve_machine
from harness.errors import QabiError, UnsupportedError
from harness.guest import build_reference_image
from harness.guest.profile import GuestProfile, check_supported, load_profile, profile_names
from harness.qemu import QemuBuild, resolve

VERSIONED = re.compile(r"pc-(i440fx|q35)-(\d+)\.(\d+)")


def versioned_machines(names: list[str]) -> list[str]:
    """The versioned i440fx and q35 machine types among `names`, oldest first."""
    found = [n for n in names if VERSIONED.fullmatch(n)]

    def key(n: str) -> tuple[int, int, str]:
        m = VERSIONED.fullmatch(n)
        assert m
        return (int(m.group(2)), int(m.group(3)), m.group(1))

    return sorted(found, key=key)


@dataclass
class Side:
    """One side of a comparison: a build to capture with, or a recorded baseline."""

    spec: str
    build: QemuBuild | None = None
    baseline: Path | None = None
    reuse: bool = True               # False: always boot afresh (never take a cached capture)

    @classmethod
    def open(cls, spec: str, firmware_from: str | None = None) -> Side:
        from harness.baseline import is_baseline_dir

        if is_baseline_dir(Path(spec)):
            return cls(spec, baseline=Path(spec))
        return cls(spec, build=resolve(spec, firmware_from=firmware_from))

    def machines(self) -> list[str]:
        if self.build is not None:
            return self.build.info().machine_names()
        from harness.baseline import baseline_machines

        assert self.baseline is not None
        return baseline_machines(self.baseline)

    def provenance(self) -> dict[str, Any]:
        if self.build is not None:
            return self.build.provenance()
        from harness.baseline import baseline_provenance

        assert self.baseline is not None
        return baseline_provenance(self.baseline)


def expand_machines(asked: list[str], old: Side, new: Side) -> list[str]:
    """`common` = every versioned i440fx/q35 machine type both sides have."""
    out: list[str] = []
    for m in asked:
        if m == "common":
            both = set(old.machines()) & set(new.machines())
            out += [x for x in versioned_machines(sorted(both)) if x not in out]
        elif m not in out:
            out.append(m)
    return out


def expand_guests(asked: list[str] | None) -> list[str]:
    return list(asked) if asked else profile_names()


def capture_key(build: QemuBuild, profile: GuestProfile, machine: str, accel: str,
                access: GuestAccess = SERIAL) -> str:
    """Everything that decides what a capture contains; identical keys give identical raw bytes."""
    image = build_reference_image() if access.guest_image is None else None
    parts = {
        "qabi": __version__, "sha256": build.sha256, "firmware": list(build.firmware_dirs),
        "profile": Path(profile.source).read_text() if profile.source else repr(profile),
        "machine": machine, "accel": accel, "image": image.sha256 if image else None, **access.key_parts(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def captured(build: QemuBuild, profile: GuestProfile, machine: str, accel: str = "tcg",
             timeout: float = 180.0, access: GuestAccess = SERIAL) -> Path:
    """A complete capture for these inputs: reused from the cache or made now (one at a time per key)."""
    resolved = resolve_machine(build, machine)
    check_supported(profile, resolved, frozenset(build.info().devices))
    key = capture_key(build, profile, resolved, accel, access)
    folder = cache_dir("captures") / f"{resolved}_{profile.name}_{key}"
    with file_lock(folder.with_name(folder.name + ".lock")):
        if not is_complete(folder):
            capture(build, profile, resolved, folder, accel=accel, timeout=timeout, access=access)
    load_capture(folder)  # verified before it is used
    return folder


def fresh_capture(build: QemuBuild, profile: GuestProfile, machine: str, accel: str, timeout: float,
                  access: GuestAccess = SERIAL) -> Path:
    """A new capture in a scratch dir of the cache (the caller removes it when done)."""
    import tempfile

    resolved = resolve_machine(build, machine)
    check_supported(profile, resolved, frozenset(build.info().devices))
    folder = Path(tempfile.mkdtemp(prefix=f"{resolved}_{profile.name}_", dir=cache_dir("scratch"))) / "capture"
    capture(build, profile, resolved, folder, accel=accel, timeout=timeout, access=access)
    return folder


def side_capture(side: Side, profile: GuestProfile, machine: str, accel: str, timeout: float,
                 access: GuestAccess = SERIAL) -> Path:
    if side.build is not None and not side.reuse:
        return fresh_capture(side.build, profile, machine, accel, timeout, access)
    if side.build is not None:
        return captured(side.build, profile, machine, accel, timeout, access)
    from harness.baseline import baseline_capture

    assert side.baseline is not None
    return baseline_capture(side.baseline, machine, profile.name)


@dataclass
class RunOutcome:
    machine: str
    guest: str
    status: str                     # compared | unsupported | error
    reason: str | None = None
    old_fingerprint: dict[str, Any] | None = None
    new_fingerprint: dict[str, Any] | None = None
    old_capture: Path | None = None
    new_capture: Path | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def fingerprint_pair(old: Side, new: Side, machine: str, guest: str, accel: str = "tcg",
                     timeout: float = 180.0, access: GuestAccess = SERIAL) -> RunOutcome:
    """Capture and decode both sides of one (machine, guest) run; never raises for a run-level problem."""
    import time

    from harness.fingerprint import fingerprint_capture

    started = time.monotonic()
    caps: list[Path] = []
    try:
        profile = load_profile(guest)
        for s in (old, new):
            caps.append(side_capture(s, profile, machine, accel, timeout, access))
        fps = [fingerprint_capture(c) for c in caps]
    except UnsupportedError as exc:
        return RunOutcome(machine, guest, "unsupported", str(exc), seconds=time.monotonic() - started)
    except QabiError as exc:
        return RunOutcome(machine, guest, "error", str(exc), seconds=time.monotonic() - started)
    finally:
        for side, cap in zip((old, new), caps, strict=False):
            if side.build is not None and not side.reuse:
                shutil.rmtree(cap.parent, ignore_errors=True)
    return RunOutcome(machine, guest, "compared", None, fps[0], fps[1], caps[0], caps[1],
                      seconds=time.monotonic() - started)


def default_machines(old: Side, new: Side) -> list[str]:
    """Without --machine: the newest versioned i440fx and q35 machine types both sides have."""
    both = versioned_machines(sorted(set(old.machines()) & set(new.machines())))
    out = []
    for family in ("i440fx", "q35"):
        mine = [m for m in both if m.startswith(f"pc-{family}-")]
        if mine:
            out.append(mine[-1])
    if not out:
        raise QabiError(f"{old.spec} and {new.spec} have no versioned i440fx or q35 machine type in common")
    return out


def load_waivers_option(path: str | None) -> Any:
    """--waivers FILE, else fingerprints/waivers.toml when it exists, else no waivers."""
    from harness.drift import DEFAULT_WAIVERS, load_waivers

    if path:
        return load_waivers(path)
    return load_waivers(DEFAULT_WAIVERS) if DEFAULT_WAIVERS.is_file() else None


def make_run(outcome: RunOutcome, old: Side, new: Side, waivers: Any) -> Any:
    """A report Run from a RunOutcome: compared (with its drifts), unsupported or error."""
    from harness.drift import compare
    from harness.report import Run

    if outcome.status != "compared":
        return Run(machine=outcome.machine, guest=outcome.guest, old=_safe_provenance(old),
                   new=_safe_provenance(new), status=outcome.status, reason=outcome.reason)  # type: ignore[arg-type]
    assert outcome.old_fingerprint is not None and outcome.new_fingerprint is not None
    try:
        comparison = compare(outcome.old_fingerprint, outcome.new_fingerprint, waivers)
    except QabiError as exc:
        return Run(machine=outcome.machine, guest=outcome.guest, old=_safe_provenance(old),
                   new=_safe_provenance(new), status="error", reason=str(exc))
    return Run(machine=outcome.machine, guest=outcome.guest,
               old=outcome.old_fingerprint["source"]["build"], new=outcome.new_fingerprint["source"]["build"],
               comparison=comparison)


def _safe_provenance(side: Side) -> dict[str, Any]:
    try:
        return side.provenance()
    except QabiError:
        return {"spec": side.spec}


@dataclass
class CheckResult:
    """A RunSet plus what the full report shows beside it (fingerprints, timings)."""

    runset: Any
    fingerprints: list[tuple[dict[str, Any], dict[str, Any]] | None]
    run_seconds: list[float]
    seconds: float

    def report_json(self) -> dict[str, Any]:
        from harness.report import to_json

        return to_json(self.runset, details=True, fingerprints=self.fingerprints, seconds=self.seconds,
                       run_seconds=self.run_seconds)

    def write_reports(self, directory: Path) -> tuple[Path, Path]:
        from harness.report.html import write_reports

        return write_reports(self.runset, directory, fingerprints=self.fingerprints, seconds=self.seconds,
                             run_seconds=self.run_seconds)


def pair_of(outcome: RunOutcome) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if outcome.old_fingerprint is None or outcome.new_fingerprint is None:
        return None
    return (outcome.old_fingerprint, outcome.new_fingerprint)


def run_check(old_spec: str, new_spec: str, machines: list[str] | None, guests: list[str] | None,
              accel: str = "tcg", waivers_path: str | None = None, fail_on: str = "warn",
              timeout: float = 180.0, firmware_from: str | None = None, progress: Any = None,
              reuse: bool = True, access: GuestAccess = SERIAL, jobs: int = 1) -> CheckResult:
    """Capture (or reuse) both sides of every (machine, guest) run and compare them."""
    import time

    from harness.report import RunSet

    started = time.monotonic()
    waivers = load_waivers_option(waivers_path)
    old, new = Side.open(old_spec), Side.open(new_spec, firmware_from)
    old.reuse = new.reuse = reuse
    chosen = expand_machines(machines, old, new) if machines else default_machines(old, new)
    if jobs < 1:
        raise QabiError(f"--jobs must be at least 1, not {jobs}")

    def one(case: tuple[str, str]) -> RunOutcome:
        if progress:
            progress(*case)
        return fingerprint_pair(old, new, case[0], case[1], accel, timeout, access)

    cases = [(machine, guest) for machine in chosen for guest in expand_guests(guests)]
    if jobs == 1:
        outcomes = [one(case) for case in cases]
    else:  # captures are QEMU processes: threads are enough to run `jobs` of them side by side
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(one, cases))
    runs, pairs, secs = [], [], []
    for outcome in outcomes:
        runs.append(make_run(outcome, old, new, waivers))
        pairs.append(pair_of(outcome))
        secs.append(round(outcome.seconds, 3))
    return CheckResult(RunSet(tuple(runs), fail_on), pairs, secs,  # type: ignore[arg-type]
                       round(time.monotonic() - started, 3))
