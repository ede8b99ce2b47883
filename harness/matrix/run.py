"""The upgrade matrix: the same check along a list of builds, one step per pair of builds.

Each step is a `RunRequest` through harness/check.py (captures reused across steps: a build's
capture of one machine type and profile is made once), written with the one report writer under
DIR/steps/N-OLD-to-NEW/; the step's runs then become rows of one pandas DataFrame (table.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Literal

from harness.bump import split_machine
from harness.check import Check, RunRequest, check_plan, check_unique, expand_guests, versioned_machines
from harness.drift.model import Severity
from harness.errors import QabiError
from harness.plan import DEFAULT_TIMEOUT, SERIAL, GuestAccess
from harness.report import Run, RunSet, ShardInfo
from harness.shard import Shard, select

Pairs = Literal["chain", "first"]
PAIRS: tuple[Pairs, ...] = ("chain", "first")


@dataclass(frozen=True)
class MatrixRequest:
    """Builds along an upgrade path and what to check at each step."""

    specs: tuple[str, ...]
    machines: tuple[str, ...] = ("common",)   # "common": every versioned type both builds of a step have
    guests: tuple[str, ...] = ()
    pairs: Pairs = "chain"                     # chain: consecutive builds; first: the first against each later one
    accel: str = "tcg"
    timeout: float = DEFAULT_TIMEOUT
    access: GuestAccess = SERIAL
    waivers: str | None = None
    fail_on: Severity = "warn"
    reuse: bool = True
    jobs: int | None = None
    shard: Shard | None = None

    def __post_init__(self) -> None:
        if len(self.specs) < 2:
            raise QabiError("qabi matrix needs at least two builds (SPEC SPEC [SPEC...])")
        if self.pairs not in PAIRS:
            raise QabiError(f"--pairs {self.pairs!r}: expected one of {', '.join(PAIRS)}")
        check_unique(self.machines, self.guests)

    def steps(self) -> list[tuple[str, str]]:
        s = self.specs
        if self.pairs == "chain":
            return list(pairwise(s))
        return [(s[0], later) for later in s[1:]]


@dataclass
class Step:
    """One pair of builds: its check, the runs it could not make (a machine type one side lacks),
    and once run its RunSet and report folder (relative to the matrix's DIR)."""

    index: int
    old: str
    new: str
    check: Check
    missing: list[Run] = field(default_factory=list)
    runset: RunSet | None = None
    folder: str = ""

    @property
    def label(self) -> str:
        return f"{short(self.old)} → {short(self.new)}"


def short(spec: str) -> str:
    return spec.removeprefix("debian:")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", short(text)).strip("-")[:60] or "build"


def _step_machines(asked: tuple[str, ...], check: Check) -> tuple[list[str], list[tuple[str, str]]]:
    """The machine types of a step that both builds have, and (machine, why) for those one lacks."""
    old, new = set(check.old.machines()), set(check.new.machines())
    keep: list[str] = []
    lacking: list[tuple[str, str]] = []
    for m in asked:
        if m == "common":
            keep += [x for x in versioned_machines(sorted(old & new)) if x not in keep]
            continue
        o, n = split_machine(m)
        if o not in old:
            lacking.append((m, f"machine type {o} is not on {check.old.spec}"))
        elif n not in new:
            lacking.append((m, f"machine type {n} is not on {check.new.spec}"))
        elif m not in keep:
            keep.append(m)
    return keep, lacking


def open_steps(request: MatrixRequest) -> list[Step]:
    """Every step's check, opened (its builds provisioned) before any run starts."""
    steps: list[Step] = []
    for i, (old, new) in enumerate(request.steps(), 1):
        base = RunRequest(old, new, (), tuple(request.guests), request.accel, request.timeout, request.access,
                          request.waivers, request.fail_on, request.reuse, None, request.jobs, request.shard)
        probe = Check(base)
        machines, lacking = _step_machines(request.machines, probe)
        check = Check(replace(base, machines=tuple(machines))) if machines else probe
        step = Step(i, old, new, check, folder=f"steps/{i}-{slug(old)}-to-{slug(new)}")
        guests = expand_guests(list(request.guests))
        check_plan([], guests, probe.old, probe.new)   # every profile loads, none twice: before any capture
        step.missing = [Run(machine=m, guest=g, old={"spec": old}, new={"spec": new}, status="unsupported",
                            reason=why) for m, why in lacking for g in guests]
        steps.append(step)
    return steps


def step_planned(step: Step) -> list[tuple[str, str]]:
    """Every run of the step: those both builds can make, then those one build lacks."""
    runnable = step.check.planned() if step.check.request.machines else []
    return runnable + [(r.machine, r.guest) for r in step.missing]


def _mine(step: Step) -> set[tuple[str, str]]:
    """The step's runs of this shard (all without one): one partition over every planned run."""
    request = step.check.request
    return set(select(step_planned(step), request.shard, request.access.transport))


def step_cases(step: Step) -> list[tuple[str, str]]:
    """The runs of the step this process makes (its shard's), in report order."""
    if not step.check.request.machines:
        return []
    mine = _mine(step)
    return [case for case in step.check.planned() if case in mine]


def run_steps(steps: list[Step], progress: Callable[[str, str], None] | None = None,
              done: Callable[[Run], None] | None = None,
              on_step: Callable[[Step], None] | None = None) -> None:
    """Run every step's check (sets each step's RunSet, with its wall time)."""
    for step in steps:
        if on_step:
            on_step(step)
        started = time.monotonic()
        runs: tuple[Run, ...] = ()
        cases = step_cases(step)
        if cases:
            runs = step.check.run_all(progress, done, cases).runs
        # a shard reports its share of the unsupported runs too, and records every planned run
        # of the step, runnable or not, so that a merge can prove it has them all
        mine = _mine(step)
        shard = step.check.request.shard
        step.runset = RunSet(runs + tuple(r for r in step.missing if (r.machine, r.guest) in mine),
                             step.check.request.fail_on, seconds=round(time.monotonic() - started, 3),
                             shard=ShardInfo(*shard, tuple(step_planned(step))) if shard else None)


def write_steps(steps: list[Step], directory: Path) -> None:
    """Each step's full report (qabi.json + index.html) under DIR/steps/…."""
    from harness.report.html import write_reports

    for step in steps:
        assert step.runset is not None
        if step.runset.runs:
            write_reports(step.runset, directory / step.folder)
