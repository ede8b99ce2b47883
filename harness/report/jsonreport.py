"""The JSON report (contract: qabi-report.schema.json beside this file) and its validation."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_bytes, refuse_inputs
from harness.categories import names
from harness.drift.impact import IMPACT, Impact, run_impact
from harness.drift.model import Change, Comparison, Drift, Severity
from harness.drift.waivers import Waiver
from harness.errors import QabiError
from harness.report.model import MAX_SHARDS, Migration, Run, RunSet, ShardInfo, as_runset

SCHEMA_PATH = Path(__file__).with_name("qabi-report.schema.json")
REPORT_SCHEMA_VERSION = 1
_DRIFT_KEYS = ("category", "subject", "path", "old", "new", "severity", "waived")
_OS = ("windows", "linux")
_STALE_KEYS = ("category", "subject", "path", "old", "new", "reason", "line", "source")

# One run's fingerprints (old, new), either possibly None when it did not load.
FingerprintPair = tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]


def _run_json(run: Run, details: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": run.machine,
        "guest": run.guest,
        "old": dict(run.old),
        "new": dict(run.new),
        "status": run.status,
        "reason": run.reason if run.status != "compared" else None,
        "drifts": [_drift_json(d) for d in run.drifts],
    }
    impact = run.impact
    if impact is not None:
        out["impact"] = {os_name: {"level": impact[os_name]["level"], "components": list(impact[os_name]["components"])}
                         for os_name in _OS}
    comparison = run.comparison
    if details and comparison is not None and run.status == "compared":
        out["categories"] = list(comparison.categories)
        out["details"] = [{"key": d.key, "change": d.change, "detail": d.detail or None} for d in comparison.drifts]
        out["stale_waivers"] = [{k: w.as_dict()[k] for k in _STALE_KEYS} for w in comparison.stale_waivers]
        if comparison.notes:
            out["notes"] = list(comparison.notes)
    if run.seconds is not None:
        out["seconds"] = round(float(run.seconds), 3)
    if run.image is not None:
        out["image"] = {"old": run.image.get("old"), "new": run.image.get("new")}
    if run.config:
        out["config"] = {key: {"old": sides.get("old"), "new": sides.get("new")} for key, sides in run.config.items()}
    if run.migration is not None:
        out["migration"] = run.migration.as_dict()
    return out


def _drift_json(drift: Drift) -> dict[str, Any]:
    """A drift as the report records it: the contract's fields, then its guest impact and group
    id when it has them (never null)."""
    out = {k: v for k, v in drift.as_dict().items() if k in _DRIFT_KEYS}
    if drift.impact is not None:
        out["impact"] = drift.impact.as_dict()
    if drift.group is not None:
        out["group"] = drift.group
    return out


def with_facts(runset: RunSet, *, fingerprints: Sequence[FingerprintPair | None] | None = None,
               seconds: float | None = None, run_seconds: Sequence[float | None] | None = None,
               generated: datetime | str | None = None) -> RunSet:
    """`runset` with the optional facts that reports show: per run, the facts of its fingerprints
    (`Run.with_fingerprints`; one (old, new) pair or None per run, in run order) and its wall
    time (`run_seconds`); the whole check's wall time and when the report was made."""
    runs = list(runset.runs)
    for i, pair in enumerate(list(fingerprints or ())[:len(runs)]):
        if pair is not None:
            runs[i] = runs[i].with_fingerprints(*pair)
    for i, secs in enumerate(list(run_seconds or ())[:len(runs)]):
        if secs is not None:
            runs[i] = replace(runs[i], seconds=float(secs))
    if generated is not None:
        runset = replace(runset, generated=generated if isinstance(generated, str)
                         else generated.isoformat(timespec="seconds"))
    return replace(runset, runs=tuple(runs), seconds=float(seconds) if seconds is not None else runset.seconds)


def to_json(result: RunSet | Run | Comparison, fail_on: Severity = "warn", *, details: bool = False,
            fingerprints: Sequence[FingerprintPair | None] | None = None, seconds: float | None = None,
            run_seconds: Sequence[float | None] | None = None,
            generated: datetime | str | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict; `fail_on` is used only when `result` is not a RunSet.

    The schema's optional fields come from the RunSet's facts (timing, images, config hex: see
    Run and RunSet) and, with `details`, top-level "fail_on", "qabi_version" (this qabi's unless
    the RunSet says), "generated" (now unless the RunSet says) and per compared run
    "categories", "stale_waivers" and "details" (one {"key", "change", "detail"} per drift, same
    order as "drifts": the unified ASL diff, the changed config bytes). The keyword arguments
    `fingerprints`, `seconds`, `run_seconds` and `generated` add facts first (`with_facts`)."""
    runset = with_facts(as_runset(result, fail_on), fingerprints=fingerprints, seconds=seconds,
                        run_seconds=run_seconds, generated=generated)
    runs = [_run_json(run, details) for run in runset.runs]
    data: dict[str, Any] = {"schema": REPORT_SCHEMA_VERSION, "verdict": runset.verdict, "runs": runs}
    if details:
        from harness import __version__

        data["fail_on"] = runset.fail_on
        data["qabi_version"] = runset.qabi_version or __version__
    if details or runset.generated is not None:
        data["generated"] = runset.generated or datetime.now(UTC).isoformat(timespec="seconds")
    if runset.seconds is not None:
        data["seconds"] = round(float(runset.seconds), 3)
    images = {i for run in runset.runs if run.image for i in run.image.values() if i}
    if len(images) == 1:
        data["image"] = images.pop()
    if runset.shard is not None:
        data["shard"] = runset.shard.as_dict()
    return data


# -- reading a report back --------------------------------------------------------------------------

def runset_from_json(data: Mapping[str, Any]) -> RunSet:
    """The RunSet a JSON report was written from (validated first): runs, drifts with their
    details, stale waivers, compared categories and facts, so that `to_json` of it gives `data`
    back (`details=` whether `data` has "fail_on"). A report without "fail_on" gets the fail-on
    threshold that gives its verdict. QabiError when `data` breaks the contract or its verdict
    does not follow from its runs."""
    validate_report(data)
    details = "fail_on" in data
    runs = tuple(_run_from_json(run, details) for run in data["runs"])
    seconds = data.get("seconds")
    shard = data.get("shard")
    base = RunSet(runs, data.get("fail_on", "warn"), seconds=float(seconds) if seconds is not None else None,
                  generated=data.get("generated"), qabi_version=data.get("qabi_version"), details=details,
                  shard=ShardInfo(shard["index"], shard["count"], tuple((m, g) for m, g in shard["planned"]))
                  if shard is not None else None)
    if not details:
        base = next((r for r in (replace(base, fail_on=f) for f in _INFER_ORDER) if r.verdict == data["verdict"]),
                    base)
    if base.verdict != data["verdict"]:
        raise QabiError(f"report verdict {data['verdict']!r} does not follow from its runs "
                        f"(they give {base.verdict!r} at fail-on {base.fail_on})")
    return base


# Older reports do not say which threshold made their verdict: the usual one first.
_INFER_ORDER: tuple[Severity, ...] = ("warn", "info", "break")


def _run_from_json(run: Mapping[str, Any], details: bool) -> Run:
    comparison = None
    if run["status"] == "compared":
        extras = run.get("details") or [{} for _ in run["drifts"]]
        drifts = tuple(_drift_from_json(d, x) for d, x in zip(run["drifts"], extras, strict=True))
        given = run.get("categories")
        categories = tuple(given) if isinstance(given, list) else names()
        stale = tuple(_waiver_from_json(w) for w in run.get("stale_waivers") or ())
        comparison = Comparison(drifts, stale, categories, notes=tuple(str(n) for n in run.get("notes") or ()))
    seconds = run.get("seconds")
    image = run.get("image")
    impact = run.get("impact")
    return Run(machine=run["machine"], guest=run["guest"], old=dict(run["old"]), new=dict(run["new"]),
               status=run["status"], reason=run["reason"], comparison=comparison,
               seconds=float(seconds) if seconds is not None else None,
               image=dict(image) if image is not None else None,
               config={key: dict(sides) for key, sides in (run.get("config") or {}).items()},
               recorded_impact=_recorded_impact(impact, comparison),
               migration=Migration.from_dict(run["migration"]) if run.get("migration") else None)


def _recorded_impact(impact: Any, comparison: Comparison | None) -> dict[str, Any] | None:
    """The run impact a report recorded, kept only when it is not what its drifts give (a report
    from another qabi's impact table): otherwise the run recomputes it, as a fresh one does."""
    if not isinstance(impact, Mapping) or comparison is None:
        return None
    recorded = {os_name: {"level": impact[os_name]["level"], "components": list(impact[os_name]["components"])}
                for os_name in _OS}
    return None if recorded == run_impact(comparison.drifts) else recorded


def _drift_from_json(drift: Mapping[str, Any], extra: Mapping[str, Any]) -> Drift:
    old, new = drift["old"], drift["new"]
    change: Change = extra.get("change") or ("added" if old is None else "removed" if new is None else "changed")
    impact = drift.get("impact")
    return Drift(category=drift["category"], subject=drift["subject"], path=drift["path"], old=old, new=new,
                 severity=drift["severity"], waived=drift["waived"], detail=extra.get("detail"), change=change,
                 key=extra.get("key") or "", impact=_impact_from_json(impact) if impact is not None else None,
                 group=drift.get("group"))


def _impact_from_json(impact: Mapping[str, Any]) -> Impact:
    """A drift's impact as recorded, with the activation component and row name of the impact
    table row that says the same (so that the run impact recomputes the same components)."""
    windows, linux, why = impact["windows"], impact["linux"], impact["why"]
    for rule in IMPACT:
        if (rule.windows, rule.linux, rule.why) == (windows, linux, why):
            return rule.impact()
    return Impact(windows, linux, why)


def _waiver_from_json(waiver: Mapping[str, Any]) -> Waiver:
    line = waiver.get("line")
    return Waiver(category=str(waiver.get("category") or "*"), subject=str(waiver.get("subject") or "*"),
                  reason=str(waiver["reason"]), path=str(waiver.get("path") or "*"), old=waiver.get("old"),
                  new=waiver.get("new"), line=line if isinstance(line, int) else None, source=waiver.get("source"))


def report_schema() -> dict[str, Any]:
    """The report's JSON Schema, with the category enum taken from the category registry."""
    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    data["$defs"]["category"] = {"enum": list(names())}
    data["properties"]["shard"]["properties"]["count"]["maximum"] = MAX_SHARDS
    return data


def validate_report(data: Mapping[str, Any]) -> None:
    """QabiError naming the first place where `data` breaks the report contract."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise QabiError(f"report does not follow qabi-report.schema.json at {where}: {first.message}")
    _check_finite(data)
    _check_details_align(data)
    _check_shard(data)


def _check_details_align(data: Mapping[str, Any]) -> None:
    """The optional run "details" has one item per drift (a rule JSON Schema cannot state)."""
    for i, run in enumerate(data.get("runs") or ()):
        if isinstance(run, Mapping) and "details" in run and len(run["details"]) != len(run["drifts"]):
            raise QabiError(f"report does not follow qabi-report.schema.json at runs/{i}/details: "
                            f"{len(run['details'])} items for {len(run['drifts'])} drifts")


def _check_shard(data: Mapping[str, Any]) -> None:
    """A shard is I of N with I <= N, plans each run once, and holds only planned runs (rules JSON
    Schema cannot state)."""
    shard = data.get("shard")
    if shard is None:
        return
    where = "report does not follow qabi-report.schema.json at shard"
    if shard["index"] > shard["count"]:
        raise QabiError(f"{where}: index {shard['index']} > count {shard['count']}")
    planned = [tuple(case) for case in shard["planned"]]
    if len(set(planned)) != len(planned):
        raise QabiError(f"{where}/planned: a run is planned twice")
    known = set(planned)
    for i, run in enumerate(data["runs"]):
        if (run["machine"], run["guest"]) not in known:
            raise QabiError(f"{where}: runs/{i} ({run['machine']}, {run['guest']}) is not a planned run of the check")


def _check_finite(data: Any, where: str = "") -> None:
    """Every number is finite (JSON readers turn 1e999 into infinity and accept NaN): a wall time
    of infinity or NaN is not a measurement (a rule JSON Schema cannot state)."""
    if isinstance(data, float) and not math.isfinite(data):
        raise QabiError(f"report does not follow qabi-report.schema.json at {where or '(top level)'}: "
                        f"{data} is not a finite number")
    if isinstance(data, Mapping):
        for key, value in data.items():
            _check_finite(value, f"{where}/{key}" if where else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _check_finite(value, f"{where}/{i}" if where else str(i))


def write_json(result: RunSet, path: Path | str, *, details: bool = False) -> None:
    """Validate and write the JSON report ("-" for standard output); `details` as in `to_json`."""
    data = to_json(result, details=details)
    validate_report(data)
    write_report_file(Path(path), json_text(data), "JSON report")


def json_text(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_report_file(path: Path, text: str, what: str) -> None:
    """Write a report file atomically (readers never see half a report), readable by others
    (0644: reports are meant to be read); QabiError naming `what` when it cannot be written."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=0o644, what=what)


REPORT_MARKER = ".qabi-report"
MARKER_TEXT = "qabi report folder v1: qabi writes here and replaces only the files it names\n"


REPORT_FILES = ("qabi.json", "index.html")


def report_folder(directory: Path | str, names: Sequence[str], inputs: Sequence[Path | str] = (),
                  what: str = "report folder", create: bool = True) -> Path:
    """Claim `directory` for the report files `names`: it must be new, empty or one qabi made (its
    REPORT_MARKER holds MARKER_TEXT); each named file must be absent or a regular file (never a
    link, so a report never writes through a link into a user's file) and none of `inputs`.
    Creates the folder and its marker (unless not `create`: a check before a run); returns it.
    Anything else is a QabiError."""
    folder = Path(directory)
    existing = folder
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise QabiError(f"{what} {folder}: {existing} is a dangling link")
    if existing != folder and not existing.is_dir():
        raise QabiError(f"{existing} is not a directory (on the {what}'s path, {folder}); give a folder")
    if existing != folder:      # the folder is made at the end of the run: its nearest parent must take it
        try:
            with tempfile.TemporaryFile(dir=existing, prefix=".qabi-probe-"):
                pass
        except OSError as exc:
            raise QabiError(f"cannot write the {what} {folder}: {existing}: {exc.strerror or exc}") from None
    if folder.is_symlink() or folder.exists():
        if not folder.is_dir():
            raise QabiError(f"{what} {folder} exists and is not a directory; give a new or empty directory")
        try:
            entries = sorted(os.listdir(folder))
        except OSError as exc:
            raise QabiError(f"cannot write {what} {folder}: {exc.strerror or exc}") from None
        if entries and not _marked(folder):
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise QabiError(f"{what} {folder} holds files qabi did not write ({shown}); refusing to write into "
                            "it: give a new or empty directory")
    for name in names:
        target = folder / name
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise QabiError(f"{target} is not a file qabi wrote (a link or not a regular file); refusing to "
                            "replace it")
        refuse_inputs(target, inputs, what.replace("folder", "file"))
    if create and not _marked(folder):
        atomic_write_bytes(folder / REPORT_MARKER, MARKER_TEXT, what=what)
    return folder


def _marked(folder: Path) -> bool:
    marker = folder / REPORT_MARKER
    if marker.is_symlink() or not marker.is_file():
        return False
    try:
        with open(marker, encoding="utf-8", errors="replace") as handle:
            return handle.read(len(MARKER_TEXT) + 1) == MARKER_TEXT
    except OSError:
        return False
