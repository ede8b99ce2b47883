"""The JSON report (contract: qabi-report.schema.json beside this file) and its validation."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.drift.model import Comparison, Severity
from harness.errors import QabiError
from harness.report.model import Run, RunSet, as_runset

SCHEMA_PATH = Path(__file__).with_name("qabi-report.schema.json")
REPORT_SCHEMA_VERSION = 1
_DRIFT_KEYS = ("category", "subject", "path", "old", "new", "severity", "waived")
# Optional fields (schema: additive, absent from the default output; `to_json(details=True, ...)`
# adds them so that the HTML report can be re-rendered from the JSON file alone).
_OPTIONAL_TOP_KEYS = ("fail_on", "qabi_version", "generated", "seconds", "image")
_OPTIONAL_RUN_KEYS = ("categories", "details", "stale_waivers", "config", "image", "seconds")

# One run's fingerprints (old, new), either possibly None when it did not load.
FingerprintPair = tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]


def _run_json(run: Run) -> dict[str, Any]:
    drifts = run.comparison.drifts if run.comparison is not None and run.status == "compared" else ()
    return {
        "machine": run.machine,
        "guest": run.guest,
        "old": dict(run.old),
        "new": dict(run.new),
        "status": run.status,
        "reason": run.reason if run.status != "compared" else None,
        "drifts": [{k: v for k, v in d.as_dict().items() if k in _DRIFT_KEYS} for d in drifts],
    }


def to_json(result: RunSet | Run | Comparison, fail_on: Severity = "warn", *, details: bool = False,
            fingerprints: Sequence[FingerprintPair | None] | None = None, seconds: float | None = None,
            run_seconds: Sequence[float | None] | None = None,
            generated: datetime | str | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict; `fail_on` is used only when `result` is not a RunSet.

    The keyword arguments add the schema's optional fields (none by default):
    `details` — top-level "fail_on", "qabi_version", "generated" (now, unless `generated` says
    otherwise), per compared run "categories", "stale_waivers" and "details" (one
    {"key", "change", "detail"} per drift, same order as "drifts": the unified ASL diff, the
    changed config bytes); `fingerprints` — one (old, new) pair per run, in run order: the
    reference image hash (top-level "image", per run "image") and, per drifted PCI device, its
    old/new config space in hex (run "config"); `seconds` — the whole check's wall time;
    `run_seconds` — one per run; `generated` — when the report was made."""
    runset = as_runset(result, fail_on)
    if fingerprints is not None or run_seconds is not None:
        runset = _with_extras(runset, fingerprints, run_seconds)
    runs = [_run_json(run) for run in runset.runs]
    data: dict[str, Any] = {"schema": REPORT_SCHEMA_VERSION, "verdict": runset.verdict, "runs": runs}
    if details:
        from harness import __version__

        data["fail_on"] = runset.fail_on
        data["qabi_version"] = __version__
        for run, out in zip(runset.runs, runs, strict=True):
            _add_details(run, out)
    if details or generated is not None:
        when = generated if generated is not None else datetime.now(UTC)
        data["generated"] = when if isinstance(when, str) else when.isoformat(timespec="seconds")
    if seconds is not None:
        data["seconds"] = round(float(seconds), 3)
    images: set[str] = set()
    for run, out in zip(runset.runs, runs, strict=True):
        if run.seconds is not None:
            out["seconds"] = round(float(run.seconds), 3)
        if run.image:
            out["image"] = dict(run.image)
            images |= {i for i in run.image.values() if i}
        if run.config:
            out["config"] = {k: dict(v) for k, v in run.config.items()}
    if len(images) == 1:
        data["image"] = images.pop()
    return data


def _with_extras(runset: RunSet, fingerprints: Sequence[FingerprintPair | None] | None,
                 run_seconds: Sequence[float | None] | None) -> RunSet:
    runs = list(runset.runs)
    for i, run in enumerate(runs):
        if fingerprints is not None and i < len(fingerprints) and fingerprints[i] is not None:
            run = with_fingerprint_facts(run, fingerprints[i])  # type: ignore[arg-type]
        if run_seconds is not None and i < len(run_seconds) and run_seconds[i] is not None:
            run = replace(run, seconds=run_seconds[i])
        runs[i] = run
    return replace(runset, runs=tuple(runs))


def _add_details(run: Run, out: dict[str, Any]) -> None:
    comparison = run.comparison
    if comparison is None or run.status != "compared":
        return
    out["categories"] = list(comparison.categories)
    out["details"] = [{"key": d.key, "change": d.change, "detail": d.detail or None} for d in comparison.drifts]
    out["stale_waivers"] = [{k: v for k, v in w.as_dict().items() if k in ("category", "subject", "path", "old",
                                                                          "new", "reason", "line", "source")}
                            for w in comparison.stale_waivers]


def _image_of(fingerprint: Mapping[str, Any] | None) -> str | None:
    source = fingerprint.get("source") if isinstance(fingerprint, Mapping) else None
    image = source.get("image") if isinstance(source, Mapping) else None
    return image if isinstance(image, str) and image else None


def _config_of(fingerprint: Mapping[str, Any] | None, key: str) -> str | None:
    pci = fingerprint.get("pci") if isinstance(fingerprint, Mapping) else None
    entry = pci.get(key) if isinstance(pci, Mapping) else None
    config = entry.get("config_hex") if isinstance(entry, Mapping) else None
    return config if isinstance(config, str) and config else None


def with_fingerprint_facts(run: Run, pair: FingerprintPair) -> Run:
    """`run` with what the full report shows from its fingerprints: the image hashes that booted
    ("image") and, per drifted PCI device, its old/new config space in hex ("config")."""
    old_fp, new_fp = pair
    old_image, new_image = _image_of(old_fp), _image_of(new_fp)
    image = {"old": old_image, "new": new_image} if old_image or new_image else None
    config: dict[str, dict[str, str | None]] = {}
    if run.comparison is not None and run.status == "compared":
        for drift in run.comparison.drifts:
            if drift.category == "pci" and drift.key and drift.key not in config:
                old_hex, new_hex = _config_of(old_fp, drift.key), _config_of(new_fp, drift.key)
                if old_hex or new_hex:
                    config[drift.key] = {"old": old_hex, "new": new_hex}
    return replace(run, image=image, config=config or None)


def report_schema() -> dict[str, Any]:
    """The report's JSON Schema, with the category enum taken from the category registry."""
    from harness.categories import names

    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    data["$defs"]["category"] = {"enum": list(names())}
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
    _check_details_align(data)


def _check_details_align(data: Mapping[str, Any]) -> None:
    """The optional run "details" has one item per drift (a rule JSON Schema cannot state)."""
    for i, run in enumerate(data.get("runs") or ()):
        if isinstance(run, Mapping) and "details" in run and len(run["details"]) != len(run["drifts"]):
            raise QabiError(f"report does not follow qabi-report.schema.json at runs/{i}/details: "
                            f"{len(run['details'])} items for {len(run['drifts'])} drifts")


def write_json(result: RunSet, path: Path | str, *, details: bool = False) -> None:
    """Validate and write the JSON report ("-" for standard output); `details` as in `to_json`."""
    import sys

    data = to_json(result, details=details)
    validate_report(data)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        raise QabiError(f"cannot write JSON report {target}: {exc.strerror}") from None
