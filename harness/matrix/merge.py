"""`qabi report --merge A.json B.json …`: shard results (qabi.json files) into one RunSet.

Shards of one check hold disjoint runs of the same two sides at the same fail-on threshold;
anything else (another build, another threshold, a run in two files) is refused with one line.
Each shard's report records its I/N and every planned run of the check: a missing shard, a
shard given twice or a planned run that no shard holds is refused too, so a merge never gives
a verdict over part of the check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.drift.model import Severity
from harness.errors import QabiError
from harness.report import Run, RunSet, ShardInfo, load_report, runset_from_json

_IDENTITY = ("spec", "sha256")


def _side(provenance: Mapping[str, Any]) -> dict[str, Any]:
    return {k: provenance[k] for k in _IDENTITY if provenance.get(k)}


def _agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The same build: every identity key both know is equal (an error run may know only the spec)."""
    return all(a[k] == b[k] for k in a.keys() & b.keys())


def run_order(run: Run) -> tuple[Any, ...]:
    """The order `qabi check` reports runs in: machine types oldest first, then the profile."""
    from harness.bump import split_machine
    from harness.check import VERSIONED

    try:
        old, _new = split_machine(run.machine)
    except QabiError:
        old = run.machine
    m = VERSIONED.fullmatch(old)
    version = (int(m.group(2)), int(m.group(3)), m.group(1)) if m else (1 << 30, 0, old)
    return (*version, run.machine, run.guest)


def merge_reports(paths: Sequence[Path | str], fail_on: Severity | None = None) -> RunSet:
    """One RunSet from shard reports: runs of every file, in check order; the wall time is the
    slowest shard's (shards run side by side).

    Order-independent: the files are read in the order of their names, whatever the order given.
    Every file must record the same fail-on threshold (a `qabi diff --json` output records none)
    unless `fail_on` is given: then every shard's drifts are judged at that threshold."""
    if len(paths) < 2:
        raise QabiError("--merge needs at least two JSON reports (one per shard)")
    files: dict[Path, str] = {}
    read: list[tuple[str, RunSet]] = []
    for name in sorted(str(path) for path in paths):
        runset = runset_from_json(load_report(Path(name)))
        same = files.setdefault(Path(name).resolve(), name)
        if len(files) == len(read):
            raise QabiError(f"{name} is given twice" + (f" (as {same})" if same != name else ""))
        read.append((name, runset))
    threshold = fail_on or _one_threshold(read)
    runs: list[Run] = []
    owner: dict[tuple[str, str], str] = {}
    sides: dict[str, dict[str, Any]] = {}
    shards: dict[str, ShardInfo | None] = {}
    seconds: list[float] = []
    for name, runset in read:
        _one_more_shard(name, runset.shard, shards)
        shards[name] = runset.shard
        for run in runset.runs:
            for which, prov in (("old", run.old), ("new", run.new)):
                mine = _side(prov)
                if which not in sides:
                    sides[which] = mine
                elif not _agree(sides[which], mine):
                    raise QabiError(f"{name}: {which} build {mine.get('spec', '?')} differs from the other "
                                    f"shards' {sides[which].get('spec', '?')}: not shards of one check")
                else:
                    sides[which] = {**mine, **sides[which]}
            key = (run.machine, run.guest)
            if key in owner:
                raise QabiError(f"{name}: run {run.machine} {run.guest} is also in {owner[key]}: "
                                "overlapping shards")
            owner[key] = name
            runs.append(run)
        if runset.seconds is not None:
            seconds.append(runset.seconds)
    _complete(shards, set(owner))
    return RunSet(tuple(sorted(runs, key=run_order)), threshold, seconds=max(seconds) if seconds else None)


def _one_threshold(read: Sequence[tuple[str, RunSet]]) -> Severity:
    """The fail-on threshold every report records (without --fail-on): one missing (a report
    without details, e.g. `qabi diff --json`) or two different ones are refused."""
    unknown = [name for name, runset in read if not runset.details]
    if unknown:
        raise QabiError(f"{unknown[0]} does not record its fail-on threshold (a qabi diff --json output?): "
                        "give --fail-on to judge every shard at one threshold")
    found = {runset.fail_on: name for name, runset in reversed(read)}
    if len(found) > 1:
        (a, name_a), (b, name_b) = sorted(found.items(), key=lambda item: item[1])[:2]
        raise QabiError(f"{name_b}: fail-on {b} but {name_a} has {a}: not shards of one check "
                        "(give --fail-on to judge every shard at one threshold)")
    return read[0][1].fail_on


def _one_more_shard(name: str, info: ShardInfo | None, shards: dict[str, ShardInfo | None]) -> None:
    """`name`'s shard record fits those already read: all or none made with --shard, the same N
    and planned runs, no index twice, at most as many shards as planned runs (reports written
    without --shard are merged as given)."""
    if info is not None and info.count > len(info.planned):
        raise QabiError(f"{name} is shard {info.index}/{info.count} of a check of {len(info.planned)} planned "
                        "run(s): with more shards than runs some shard holds none, and the set is never whole")
    if not shards:
        return
    first_name, first = next(iter(shards.items()))
    if (info is None) != (first is None):
        plain, sharded = (name, first_name) if info is None else (first_name, name)
        raise QabiError(f"{plain} was not made with --shard but {sharded} was: not shards of one check")
    if info is None or first is None:
        return
    if info.count != first.count or set(info.planned) != set(first.planned):
        raise QabiError(f"{name} is shard {info.index}/{info.count} of another run list than {first_name} "
                        f"(shard {first.index}/{first.count}): not shards of one check")
    twin = next((other for other, o in shards.items() if o is not None and o.index == info.index), None)
    if twin is not None:
        raise QabiError(f"{name} and {twin} are both shard {info.index}/{info.count}")


def _complete(shards: dict[str, ShardInfo | None], got: set[tuple[str, str]]) -> None:
    """Every shard of the check given, and every planned run in one of them."""
    infos = [info for info in shards.values() if info is not None]
    if not infos:
        return
    first = infos[0]
    indices = {info.index for info in infos}
    absent = [f"{i}/{first.count}" for i in range(1, first.count + 1) if i not in indices]
    if absent:
        raise QabiError(f"shard {', '.join(absent)} missing: the merged verdict would leave out its runs "
                        "(give every shard's qabi.json)")
    lost = [f"{m} {g}" for m, g in first.planned if (m, g) not in got]
    if lost:
        more = f" and {len(lost) - 3} more" if len(lost) > 3 else ""
        raise QabiError(f"{len(lost)} planned run(s) in no shard's report ({', '.join(lost[:3])}{more}): "
                        "a shard stopped early or was run with a narrower selection")
