"""The one pipeline behind both front doors (`qabi check` and `pytest harness/`).

A frozen `RunRequest` (sides, machine types, profiles, accelerator, timeout, guest access,
waivers, fail-on) opens a `Check`; each (machine, guest) run captures both sides (or reuses a
cached capture with identical inputs, or a recorded baseline), decodes and compares them into a
report `Run`; the runs make one `RunSet`, which one report writer renders.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness import __version__
from harness.cache import cache_dir, file_lock
from harness.capture import (
    DEFAULT_TIMEOUT,
    SERIAL,
    Capture,
    CapturePlan,
    GuestAccess,
    capture,
    is_complete,
    load_capture,
    plan_capture,
)
from harness.drift import DEFAULT_WAIVERS, Waivers, compare, load_waivers
from harness.drift.model import Severity, severity_rank
from harness.errors import QabiError, UnsupportedError
from harness.guest import build_reference_image
from harness.guest.profile import GuestProfile, load_profile, profile_names
from harness.qemu import QemuBuild, resolve
from harness.report import Migration, Run, RunSet, RunStatus
from harness.transport.launch import check_accel

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


def capture_key(plan: CapturePlan) -> str:
    """Everything that decides what a capture contains; identical keys give identical raw bytes."""
    build, profile, access = plan.build, plan.profile, plan.access
    image = build_reference_image(plan.reference) if access.guest_image is None else None
    parts = {
        "qabi": __version__, "sha256": build.sha256, "firmware": list(build.firmware_dirs),
        "profile": Path(profile.source).read_text() if profile.source else repr(profile),
        "machine": plan.machine, "accel": plan.accel, "image": image.sha256 if image else None,
        **access.key_parts(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def captured(plan: CapturePlan, reuse: bool = True) -> Capture:
    """A complete, verified capture for `plan` in the capture cache: reused when one with identical
    inputs is there (unless `reuse` is False: then it is made afresh and replaces it, so the next
    run can reuse it). One capture at a time per key."""
    folder = cache_dir("captures") / f"{plan.machine}_{plan.profile.name}_{capture_key(plan)}"
    with file_lock(folder.with_name(folder.name + ".lock")):
        if is_complete(folder):
            if reuse:
                return load_capture(folder)  # verified before it is used
            shutil.rmtree(folder)
        return capture(plan, folder)


@dataclass(frozen=True)
class RunRequest:
    """One check, as either front door asks for it: two sides, the runs, and how to capture."""

    old: str
    new: str
    machines: tuple[str, ...] = ()        # empty: the newest i440fx and q35 types both sides have
    guests: tuple[str, ...] = ()          # empty: every profile in guests/
    accel: str = "tcg"
    timeout: float = DEFAULT_TIMEOUT
    access: GuestAccess = SERIAL
    waivers: str | None = None            # None: fingerprints/waivers.toml when it exists
    fail_on: Severity = "warn"
    reuse: bool = True                    # False: boot every side afresh
    firmware_from: str | None = None      # run the new build with this build's firmware
    jobs: int = 1
    migrate: str | None = None            # "none"/None, "forward" (old -> new) or "both" (and back)

    def __post_init__(self) -> None:
        from harness.migrate import check_direction

        check_direction(self.migrate)
        if self.migrate in ("forward", "both") and self.access.transport != "serial":
            raise QabiError("--migrate needs the serial transport (the reference guest probes again after it moved)")
        check_accel(self.accel)
        severity_rank(self.fail_on)
        if self.jobs < 1:
            raise QabiError(f"--jobs must be at least 1, not {self.jobs}")
        if not self.timeout > 0:
            raise QabiError(f"--timeout must be a positive number of seconds, not {self.timeout}")


class Check:
    """A check in progress: the request's sides opened once, its waivers loaded once, and
    `run(machine, guest)` for each run (the CLI runs them all, the pytest plugin one per item)."""

    def __init__(self, request: RunRequest) -> None:
        self.request = request
        self.old = Side.open(request.old)
        self.new = Side.open(request.new, request.firmware_from)
        self.waivers = load_waivers_option(request.waivers)

    def machines(self) -> list[str]:
        asked = list(self.request.machines)
        return expand_machines(asked, self.old, self.new) if asked else default_machines(self.old, self.new)

    @property
    def migrating(self) -> bool:
        return self.request.migrate in ("forward", "both")

    def categories(self) -> tuple[str, ...]:
        """The categories each run compares: the guest-side ones, and with --migrate the host-side ones."""
        from harness.categories import guest_names, names

        return names() if self.migrating else guest_names()

    def cases(self) -> list[tuple[str, str]]:
        """Every (machine, guest) run of the request, in report order."""
        return [(m, g) for m in self.machines() for g in expand_guests(list(self.request.guests))]

    def _side_capture(self, side: Side, profile: GuestProfile, machine: str) -> Capture:
        if side.build is None:
            from harness.baseline import baseline_capture

            assert side.baseline is not None
            return load_capture(baseline_capture(side.baseline, machine, profile.name))
        r = self.request
        plan = plan_capture(side.build, profile, machine, r.accel, r.timeout, r.access)
        return captured(plan, r.reuse)

    def run(self, machine: str, guest: str) -> Run:
        """Capture and compare one (machine, guest) run; a run-level problem becomes an
        "unsupported" or "error" run, never an exception."""
        from harness.fingerprint import fingerprint_capture

        started = time.monotonic()
        caps: list[Capture] = []
        migration: Migration | None = None
        try:
            profile = load_profile(guest)
            for side in (self.old, self.new):
                caps.append(self._side_capture(side, profile, machine))
            hosts: tuple[Path | None, Path | None] = (None, None)
            if self.migrating:
                migration, hosts = self._migrate(profile, machine)
            old_fp, new_fp = (fingerprint_capture(c, host=h) for c, h in zip(caps, hosts, strict=True))
            run = Run(machine=machine, guest=guest, old=old_fp["source"]["build"], new=new_fp["source"]["build"],
                      comparison=compare(old_fp, new_fp, self.waivers)).with_fingerprints(old_fp, new_fp)
        except UnsupportedError as exc:
            run = self._failed(machine, guest, "unsupported", str(exc))
        except QabiError as exc:
            run = self._failed(machine, guest, "error", str(exc))
        if self.migrating and migration is None:
            migration = Migration("skipped", str(self.request.migrate), error=run.reason or "not tried")
        return replace(run, seconds=round(time.monotonic() - started, 3), migration=migration)

    def _migrate(self, profile: GuestProfile, machine: str) -> tuple[Migration, tuple[Path | None, Path | None]]:
        """Live-migrate a guest between the two builds (harness/migrate.py): the run's Migration and
        the host-side directories (old, new) the host-side categories are decoded from. A recorded
        baseline has no build to migrate from: the migration is skipped, the host-side categories absent."""
        from harness.migrate import migrate_run

        r = self.request
        if self.old.build is None or self.new.build is None:
            return Migration("skipped", str(r.migrate), error="a recorded baseline has no build to migrate"), \
                (None, None)
        plans = [plan_capture(side.build, profile, machine, r.accel, r.timeout, r.access)
                 for side in (self.old, self.new) if side.build is not None]
        key = hashlib.sha256(json.dumps([capture_key(p) for p in plans] + [r.migrate]).encode()).hexdigest()[:24]
        rundir = cache_dir("migrations") / f"{machine}_{profile.name}_{key}"
        with file_lock(rundir.with_name(rundir.name + ".lock")):
            outcome = migrate_run(plans[0], plans[1], str(r.migrate), rundir)
        failed = [leg for leg in outcome.legs if leg.status != "ok"]
        return Migration("failed" if failed else "ok", str(r.migrate), outcome.seconds,
                         failed[0].error if failed else None, tuple(leg.as_dict() for leg in outcome.legs)), \
            (outcome.old, outcome.new)

    def _failed(self, machine: str, guest: str, status: RunStatus, reason: str) -> Run:
        return Run(machine=machine, guest=guest, old=_safe_provenance(self.old), new=_safe_provenance(self.new),
                   status=status, reason=reason)

    def run_all(self, progress: Callable[[str, str], None] | None = None) -> RunSet:
        """Every run of the request (`jobs` side by side), as one RunSet."""
        def one(case: tuple[str, str]) -> Run:
            if progress:
                progress(*case)
            return self.run(*case)

        cases = self.cases()
        if self.request.jobs == 1:
            runs = [one(case) for case in cases]
        else:  # captures are QEMU processes: threads are enough to run `jobs` of them side by side
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=self.request.jobs) as pool:
                runs = list(pool.map(one, cases))
        return RunSet(tuple(runs), self.request.fail_on)


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


def load_waivers_option(path: str | None) -> Waivers | None:
    """--waivers FILE, else fingerprints/waivers.toml when it exists, else no waivers."""
    if path:
        return load_waivers(path)
    return load_waivers(DEFAULT_WAIVERS) if DEFAULT_WAIVERS.is_file() else None


def _safe_provenance(side: Side) -> dict[str, Any]:
    try:
        return side.provenance()
    except QabiError:
        return {"spec": side.spec}


def run_check(request: RunRequest, progress: Callable[[str, str], None] | None = None) -> RunSet:
    """Capture (or reuse) both sides of every (machine, guest) run of `request` and compare them:
    the RunSet (with its wall time) that the report writers take."""
    started = time.monotonic()
    runset = Check(request).run_all(progress)
    return replace(runset, seconds=round(time.monotonic() - started, 3))
