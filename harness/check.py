"""The one pipeline behind both front doors (`qabi check` and `pytest harness/`).

A frozen `RunRequest` (sides, machine types, profiles, accelerator, timeout, guest access,
waivers, fail-on) opens a `Check`; each (machine, guest) run captures both sides (or reuses a
cached capture with identical inputs, or a recorded baseline), decodes and compares them into a
report `Run`; the runs make one `RunSet`, which one report writer renders.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.bump import is_generated, split_machine, with_bump
from harness.cache import cache_dir, file_lock, sweep_stale
from harness.capture import (
    Capture,
    capture,
    capture_inputs,
    capture_key,
    capture_name,
    check_provenance,
    is_complete,
    load_capture,
    plan_capture,
    resolve_machine,
)
from harness.drift.engine import compare
from harness.drift.model import Severity, severity_rank
from harness.drift.waivers import DEFAULT_WAIVERS, Waivers, load_waivers
from harness.errors import CaptureError, QabiError, UnsupportedError, note
from harness.guest.profile import GuestProfile, close_devices, load_profile, profile_names
from harness.plan import DEFAULT_ACCESS, DEFAULT_TIMEOUT, SERIAL, CapturePlan, GuestAccess
from harness.qemu import QemuBuild, resolve
from harness.report import Migration, Run, RunSet, RunStatus, ShardInfo
from harness.shard import Shard, check_shard, check_shard_count, select
from harness.transport.base import check_transport
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
            from harness.baseline import baseline_provenance

            baseline_provenance(Path(spec))     # a baseline proves what it is: a valid build.json
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


def check_unique(machines: tuple[str, ...], guests: tuple[str, ...]) -> None:
    """No --machine or --guest given twice: each of its runs would be made twice."""
    for option, values in (("--machine", machines), ("--guest", guests)):
        twice = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if twice is not None:
            raise QabiError(f"{option} {twice[:80]} is given twice: each of its runs would be made twice")


def _applies(guest: str, machine: str) -> bool:
    """Whether `guest` is a run on `machine` (a profile's `families`; a bump by its old side). A
    profile that does not load is planned: its run reports the error."""
    try:
        return load_profile(guest).applies_to(split_machine(machine)[0])
    except QabiError:
        return True


def check_plan(machines: list[str], guests: list[str], old: Side, new: Side) -> None:
    """The run list, checked once before any capture (one line, exit 2): every profile loads, none
    is asked twice (under any spelling), and every machine type is one that at least one side has
    (one that only one side has is an unsupported run, not a typo)."""
    named: dict[str, str] = {}
    for guest in guests:
        name = load_profile(guest).name
        if name in named:
            same = "" if named[name] == guest else f" (as {named[name]})"
            raise QabiError(f"--guest {guest} is given twice{same}: each run would be made twice")
        named[name] = guest
    known = set(old.machines()) | set(new.machines())
    for machine in machines:
        for part in dict.fromkeys(split_machine(machine)):
            if part not in known and not _alias_known(part, old, new):
                close = difflib.get_close_matches(part, sorted(known), n=4, cutoff=0.6)
                hint = f" (close: {', '.join(close)})" if close else ""
                raise QabiError(f"machine type '{part}' is on neither side ({old.spec}, {new.spec}){hint}")


def _pinned(guest: str) -> str | None:
    """The machine type `guest` pins (`machine = ...`, an imported profile), or None. A profile that
    does not load pins none: its run reports the error."""
    try:
        return load_profile(guest).machine
    except QabiError:
        return None


def _alias_known(machine: str, *sides: Side) -> bool:
    return any(side.build is not None and side.build.info().resolve_machine(machine) is not None for side in sides)


def captured(plan: CapturePlan, reuse: bool = True) -> Capture:
    """A complete, verified capture for `plan`: the cached one with identical inputs, else one made
    now into the cache (so that the next run reuses it). One capture at a time per key.

    With `reuse` False the guest is always booted afresh: into the cache when it holds no capture
    for these inputs, else into a scratch directory beside it (`is_scratch`; the caller removes it),
    so that a cached capture another run may be reading is never deleted under it."""
    captures = cache_dir("captures")
    _sweep_once(captures)
    inputs = capture_inputs(plan)
    folder = captures / capture_name(plan, inputs)
    with file_lock(folder.with_name(folder.name + ".lock")):
        if is_complete(folder):
            if not reuse:
                return _fresh(plan, captures, folder.name)
            try:
                cap = load_capture(folder)        # verified before it is used
                check_provenance(cap, inputs)     # and of exactly this run's inputs (its key recomputed)
                return cap
            except CaptureError as exc:
                # corrupted in the cache (a bad disk, a hand edit) or another capture filed under this
                # run's key (a renamed folder): never used, made afresh below, once
                note(f"not reusing the cached capture: {exc}; capturing afresh")
        if folder.exists():
            try:
                shutil.rmtree(folder)
            except OSError as exc:
                raise CaptureError(f"cannot replace the cached capture {folder}: {exc.strerror}; "
                                   "remove that directory by hand") from None
        return capture(plan, folder)


SCRATCH = ".fresh-"


def _fresh(plan: CapturePlan, captures: Path, name: str) -> Capture:
    """A `--no-reuse` capture into a scratch dir beside the cached one, named like a staging dir
    (`.fresh-NAME.partial-PID-…`) so that one a SIGKILLed run left is swept as stale; removed at once
    when a signal (SIGTERM, SIGHUP, Ctrl-C) stops the capture (a failed one keeps its console log,
    which its error names, until the sweep)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH}{name}.partial-{os.getpid()}-", dir=captures))
    try:
        return capture(plan, scratch / "capture")
    except Exception:
        raise
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def is_scratch(cap: Capture) -> bool:
    """A `--no-reuse` capture made beside a cached one (removed once its run is compared)."""
    return cap.path.parent.name.startswith(SCRATCH)


_SWEPT: set[Path] = set()


def _sweep_once(folder: Path) -> None:
    """Staging dirs that dead processes left in the capture cache go, once per process."""
    if folder not in _SWEPT:
        _SWEPT.add(folder)
        sweep_stale(folder)


@dataclass(frozen=True)
class RunRequest:
    """One check, as either front door asks for it: two sides, the runs, and how to capture."""

    old: str
    new: str
    machines: tuple[str, ...] = ()        # empty: a profile's own `machine`, else `fallback_machines`
    guests: tuple[str, ...] = ()          # empty: every profile in guests/
    accel: str = "tcg"
    timeout: float = DEFAULT_TIMEOUT
    access: GuestAccess = DEFAULT_ACCESS
    waivers: str | None = None            # None: fingerprints/waivers.toml when it exists
    fail_on: Severity = "warn"
    reuse: bool = True                    # False: boot every side afresh
    firmware_from: str | None = None      # run the new build with this build's firmware
    jobs: int | None = None               # runs side by side; None: what the host can carry (default_jobs)
    shard: Shard | None = None            # (I, N): only shard I of N of the runs (harness/shard.py)
    migrate: str | None = None            # "none"/None, "forward" (old -> new) or "both" (and back)
    fallback_machines: tuple[str, ...] = ()   # empty: the newest i440fx and q35 types both sides have

    def __post_init__(self) -> None:
        from harness.migrate import check_direction

        check_direction(self.migrate)
        if self.migrate in ("forward", "both") and self.access.guest_image is not None:
            raise QabiError("--migrate migrates the reference guest: it does not take --guest-image")
        check_accel(self.accel)
        check_transport(self.access.transport)
        check_shard(self.shard)
        check_unique(self.machines, self.guests)
        for machine in (*self.machines, *self.fallback_machines):
            split_machine(machine)
        severity_rank(self.fail_on)
        if self.jobs is not None and not 1 <= self.jobs <= MAX_JOBS:
            raise QabiError(f"--jobs must be between 1 and {MAX_JOBS}, not {self.jobs}")
        if not self.timeout > 0:
            raise QabiError(f"--timeout must be a positive number of seconds, not {self.timeout}")


class Check:
    """A check in progress: the request's sides opened once, its waivers loaded once, and
    `run(machine, guest)` for each run (the CLI runs them all, the pytest plugin one per item)."""

    def __init__(self, request: RunRequest) -> None:
        self.request = request
        # the two sides are provisioned side by side (a fresh machine fetches two builds)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=2) as pool:
            old = pool.submit(Side.open, request.old)
            new = pool.submit(Side.open, request.new, request.firmware_from)
            self.old, self.new = old.result(), new.result()
        self.waivers = load_waivers_option(request.waivers)
        self._planned: list[tuple[str, str]] | None = None

    def machines(self) -> list[str]:
        """The machine types asked for (--machine), else the fallback ones, else the newest of each
        family both sides have; a profile that pins its machine type runs on that one instead,
        unless --machine is given (`planned`)."""
        asked = list(self.request.machines or self.request.fallback_machines)
        return expand_machines(asked, self.old, self.new) if asked else default_machines(self.old, self.new)

    @property
    def migrating(self) -> bool:
        return self.request.migrate in ("forward", "both")

    def categories(self) -> tuple[str, ...]:
        """The categories each run compares: the guest-side ones, and with --migrate the host-side ones."""
        from harness.categories import guest_names, names

        return names() if self.migrating else guest_names()

    def planned(self) -> list[tuple[str, str]]:
        """Every (machine, guest) run of the whole request, whatever the shard, in report order;
        a machine `OLD:NEW` is a bump (harness/bump.py)."""
        if self._planned is None:
            guests = expand_guests(list(self.request.guests))
            pinned = {} if self.request.machines else {g: m for g in guests if (m := _pinned(g))}
            others = [g for g in guests if g not in pinned]
            machines = self.machines() if others else []
            check_plan(list(dict.fromkeys([*machines, *pinned.values()])), guests, self.old, self.new)
            planned = [(m, g) for m in machines for g in others if _applies(g, m)]
            order = machines + versioned_machines(sorted(set(pinned.values()) - set(machines)))
            planned += [(m, g) for g, m in pinned.items()]
            self._planned = sorted(planned, key=lambda run: (order.index(run[0]), guests.index(run[1])))
            for guest in self.request.guests:
                if guest not in pinned and machines and not any(g == guest for _m, g in self._planned):
                    families = ", ".join(load_profile(guest).families)
                    raise QabiError(f"guest profile '{guest}' runs on {families} machine types only, and none "
                                    f"of {', '.join(machines)} is one")
        return list(self._planned)

    def cases(self) -> list[tuple[str, str]]:
        """The runs this process does: all planned runs, or those of its shard (a shard count over
        the number of planned runs is refused: some shard would hold none)."""
        planned = self.planned()
        check_shard_count(self.request.shard, len(planned))
        return select(planned, self.request.shard, self.request.access.transport)

    def shard_info(self) -> ShardInfo | None:
        """What a sharded RunSet records so that a merge can prove it has every shard and run."""
        if self.request.shard is None:
            return None
        return ShardInfo(*self.request.shard, tuple(self.planned()))

    def _side_capture(self, side: Side, profile: GuestProfile, machine: str) -> Capture:
        if side.build is None:
            from harness.baseline import baseline_capture

            assert side.baseline is not None
            return baseline_capture(side.baseline, machine, profile.name)
        r = self.request
        plan = plan_capture(side.build, profile, machine, r.accel, r.timeout, r.access)
        return captured(plan, r.reuse)

    def run(self, machine: str, guest: str) -> Run:
        """Capture and compare one (machine, guest) run; a run-level problem becomes an
        "unsupported" or "error" run, never an exception."""
        from harness.fingerprint.decode import fingerprint_capture

        started = time.monotonic()
        caps: list[Capture] = []
        migration: Migration | None = None
        try:
            profile = load_profile(guest)
            old_machine, new_machine = split_machine(machine)
            lost = self._lost_devices(profile, old_machine, new_machine)
            if lost:
                if self.old.build is None:
                    caps.append(self._side_capture(self.old, profile, old_machine))  # the baseline has this run
                return replace(self._device_drift(machine, guest, lost), seconds=round(time.monotonic() - started, 3))
            caps.append(self._side_capture(self.old, profile, old_machine))
            try:
                caps.append(self._side_capture(self.new, profile, new_machine))
            except UnsupportedError as exc:
                # the old build ran this profile, the new one refuses it: the guest loses hardware
                what = str(exc).removeprefix("unsupported on this build: ")
                run = self._device_drift(machine, guest, {what: "QEMU refused it when the profile was started"})
                return replace(run, seconds=round(time.monotonic() - started, 3))
            hosts: tuple[Path | None, Path | None] = (None, None)
            if self.migrating:
                if old_machine != new_machine:
                    migration = Migration("skipped", str(self.request.migrate),
                                          error="a machine-type bump is not a live migration")
                else:
                    migration, hosts = self._migrate(profile, machine)
            old_fp, new_fp = (fingerprint_capture(c, host=h) for c, h in zip(caps, hosts, strict=True))
            comparison = compare(old_fp, new_fp, with_bump(self.waivers, machine))
            comparison = replace(comparison, stale_waivers=tuple(w for w in comparison.stale_waivers
                                                                 if not is_generated(w)))
            run = Run(machine=machine, guest=guest, old=_as_asked(self.old, old_fp), new=_as_asked(self.new, new_fp),
                      comparison=comparison).with_fingerprints(old_fp, new_fp)
        except UnsupportedError as exc:
            run = self._failed(machine, guest, "unsupported", str(exc))
        except QabiError as exc:
            run = self._failed(machine, guest, "error", str(exc))
        finally:
            for cap in caps:
                if is_scratch(cap):
                    shutil.rmtree(cap.path.parent, ignore_errors=True)
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
        if profile.uefi or profile.tpm:
            return Migration("skipped", str(r.migrate), error="live migration of an OVMF or TPM profile is not "
                             "implemented (the vars copy and swtpm would have to move with it)"), (None, None)
        # the live guest is the reference guest on its serial console, whatever transport made the
        # cold-boot captures: it probes again after it moved
        plans = [plan_capture(side.build, profile, machine, r.accel, r.timeout, SERIAL)
                 for side in (self.old, self.new) if side.build is not None]
        key = hashlib.sha256(json.dumps([capture_key(p) for p in plans] + [r.migrate]).encode()).hexdigest()[:24]
        rundir = cache_dir("migrations") / f"{machine}_{profile.name}_{key}"
        with file_lock(rundir.with_name(rundir.name + ".lock")):
            outcome = migrate_run(plans[0], plans[1], str(r.migrate), rundir)
        failed = [leg for leg in outcome.legs if leg.status != "ok"]
        return Migration("failed" if failed else "ok", str(r.migrate), outcome.seconds,
                         failed[0].error if failed else None, tuple(leg.as_dict() for leg in outcome.legs)), \
            (outcome.old, outcome.new)

    def _lost_devices(self, profile: GuestProfile, old_machine: str, new_machine: str) -> dict[str, str]:
        """The profile's drivers that the old side has and the new build lacks ({driver: why}).

        A driver neither side has is a profile error (QabiError, with close matches); one only
        the old build lacks makes the run unsupported (nothing to compare it with)."""
        def lacking(side: Side, machine: str) -> tuple[set[str], list[str]]:
            if side.build is None:   # a baseline ran the profile when it was recorded
                return set(), []
            resolved = resolve_machine(side.build, machine)
            devices = side.build.info().devices
            return set(profile.drivers_for(resolved)) - set(devices), list(devices)

        old_lacks, old_devices = lacking(self.old, old_machine)
        new_lacks, new_devices = lacking(self.new, new_machine)
        neither = sorted(old_lacks & new_lacks)
        if neither:
            raise QabiError(f"profile '{profile.name}': device '{neither[0]}' is on neither build "
                            f"({self.old.spec}, {self.new.spec}){close_devices(neither[0], new_devices + old_devices)}")
        if old_lacks:
            first = min(old_lacks)
            raise UnsupportedError(f"the old build {self.old.spec} has no device '{first}' (the new one has): "
                                   "this run is not compared")
        return {d: f"{self.old.spec} has it, {self.new.spec} has not" for d in sorted(new_lacks)}

    def _device_drift(self, machine: str, guest: str, lost: dict[str, str]) -> Run:
        """A compared run whose only drifts are profile devices the new build cannot provide:
        each a `break` (the guest loses that hardware), never a skip."""
        from harness.drift.impact import Impact
        from harness.drift.model import Comparison, Drift

        drifts = [Drift(category="pci", subject=f"profile device {device}", path="(device)",
                        old=f"present on {self.old.spec}", new=f"missing on {self.new.spec}: {why}",
                        severity="break", change="removed",
                        impact=Impact("device", "device", "the guest loses a device it had: its driver has nothing to bind"))
                  for device, why in lost.items()]
        if self.waivers is not None:
            drifts, _stale = self.waivers.apply(drifts, ("pci",))
        comparison = Comparison(drifts=tuple(drifts), categories=("pci",),
                                waivers_source=self.waivers.source if self.waivers is not None else None)
        return Run(machine=machine, guest=guest, old=_safe_provenance(self.old), new=_safe_provenance(self.new),
                   comparison=comparison)

    def _failed(self, machine: str, guest: str, status: RunStatus, reason: str) -> Run:
        return Run(machine=machine, guest=guest, old=_safe_provenance(self.old), new=_safe_provenance(self.new),
                   status=status, reason=reason)

    def run_all(self, progress: Callable[[str, str], None] | None = None,
                done: Callable[[Run], None] | None = None,
                cases: list[tuple[str, str]] | None = None) -> RunSet:
        """Every run of the request (its shard's; or `cases`), `jobs` side by side, as one RunSet;
        `progress` is told when a run starts, `done` when it has finished."""
        def one(case: tuple[str, str]) -> Run:
            if progress:
                progress(*case)
            run = self.run(*case)
            if done:
                done(run)
            return run

        cases = self.cases() if cases is None else cases
        jobs = min(self.request.jobs or default_jobs(), max(len(cases), 1))
        if jobs == 1:
            runs = [one(case) for case in cases]
        else:  # captures are QEMU processes: threads are enough to run `jobs` of them side by side
            from concurrent.futures import ThreadPoolExecutor

            # the longest runs start first (an OVMF boot takes ten times a SeaBIOS one), so that no
            # worker is left alone with one at the end; the RunSet keeps the request's order
            order = sorted(range(len(cases)), key=lambda i: -_expected_cost(cases[i][1]))
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                done_runs = dict(zip(order, pool.map(one, (cases[i] for i in order)), strict=True))
            runs = [done_runs[i] for i in range(len(cases))]
        return RunSet(tuple(runs), self.request.fail_on, shard=self.shard_info())


def _expected_cost(guest: str) -> int:
    """How long a run of profile `guest` takes, relatively: a UEFI profile boots OVMF (seconds under
    TCG, with its TPM), the others SeaBIOS (tenths of a second). An unknown profile: the least (its
    run fails at once)."""
    try:
        return 10 if load_profile(guest).uefi else 1
    except QabiError:
        return 0


MAX_JOBS = 64
GUEST_MEMORY_BUDGET = 1 << 30      # what one capture's QEMU may need, at most, for the default


def default_jobs() -> int:
    """Runs side by side when --jobs is not given: one per core this process may use (a TCG guest
    runs single-threaded), no more than the available memory holds at 1 GiB a capture."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    available = cores
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024 // GUEST_MEMORY_BUDGET
                    break
    except (OSError, ValueError, IndexError):
        pass
    return max(1, min(cores, available, MAX_JOBS))


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


def _as_asked(side: Side, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A run's build provenance: its capture's, named by the spec this check was given. The cache keys
    a capture by the binary's sha256, so a capture reused from `debian:bookworm=1:7.2+...` serves
    `debian:bookworm` when both resolve to that binary; the report names what was asked."""
    provenance = dict(fingerprint["source"]["build"])
    if side.build is not None and provenance.get("sha256") == side.build.sha256:
        provenance["spec"] = side.spec
    return provenance


def _safe_provenance(side: Side) -> dict[str, Any]:
    try:
        return side.provenance()
    except QabiError:
        return {"spec": side.spec}


def run_check(request: RunRequest, progress: Callable[[str, str], None] | None = None,
              done: Callable[[Run], None] | None = None) -> RunSet:
    """Capture (or reuse) both sides of every (machine, guest) run of `request` and compare them:
    the RunSet (with its wall time) that the report writers take."""
    started = time.monotonic()
    runset = Check(request).run_all(progress, done)
    return replace(runset, seconds=round(time.monotonic() - started, 3))
