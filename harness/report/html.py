"""The HTML drift report: one self-contained page rendered from the shared view model (view.py).

    html = render_html(runset)                 # or a JSON report dict: render_html(load_report("qabi.json"))
    write_html(runset, "reports/index.html")
    write_reports(runset, "reports")           # reports/qabi.json + reports/index.html

A JSON report is read back into its RunSet (`runset_from_json`) and rendered the same way, so
`qabi report qabi.json -o index.html` re-renders the same page from the file. The RunSet's facts
(`to_json(details=True, fingerprints=...)` keeps them in the JSON) add the ASL diffs, the PCI
config hex views, timing and the reference image hash; without them the page shows what there is.

The page fetches nothing: inline CSS and script, and a Content-Security-Policy that forbids any
network request. Guest strings are untrusted: jinja2 autoescapes every value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from harness.cache import read_json
from harness.categories import registry
from harness.drift.model import SEVERITIES
from harness.errors import QabiError
from harness.report.jsonreport import (
    FingerprintPair,
    json_text,
    runset_from_json,
    to_json,
    validate_report,
    with_facts,
    write_report_file,
)
from harness.report.model import RunSet
from harness.report.view import (
    RunView,
    SubjectGroup,
    describe_build,
    drift_line_label,
    report_view,
    shown,
    waiver_match,
    waiver_where,
)

TEMPLATES = Path(__file__).with_name("templates")
# Groups of a run shown open at first: the unwaived break/warn ones, up to this many per run.
OPEN_GROUPS = 25
# A hex view skips runs of rows that are zero on both sides and unchanged.
HEX_ROW = 16
INLINE_LIMIT = 160          # longer (or multi-line) values are shown collapsed

_PROVENANCE_FIELDS: tuple[tuple[str, str], ...] = (
    ("spec", "spec"), ("version", "QEMU version"), ("package_version", "package version"),
    ("sha256", "binary sha256"), ("kind", "kind"), ("executable", "executable"),
    ("firmware_dirs", "firmware"), ("firmware_from", "firmware from"), ("ovmf", "OVMF"),
)


# -- the view model (plain data for the template) -----------------------------------------------

@dataclass
class Value:
    """One old/new value as shown: inline text, a block, or absent."""

    text: str
    absent: bool = False
    block: bool = False
    lines: int = 1


@dataclass
class DiffLine:
    kind: str        # add | del | hunk | file | ctx
    text: str


@dataclass
class HexRow:
    offset: str
    old: list[tuple[str, bool]] = field(default_factory=list)
    new: list[tuple[str, bool]] = field(default_factory=list)
    gap: str | None = None


@dataclass
class HexView:
    key: str
    rows: list[HexRow]
    changed: int
    old_size: int
    new_size: int


@dataclass
class Cell:
    state: str
    label: str
    href: str
    title: str


@dataclass
class MatrixRow:
    machine: str
    machine_span: int        # 0 when the machine cell is spanned from a row above
    guest: str
    run: RunView
    cells: list[Cell]


# -- helpers ------------------------------------------------------------------------------------

def _value(value: Any) -> Value:
    if value is None:
        return Value("absent", absent=True)
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True)
        compact = json.dumps(value, ensure_ascii=False, sort_keys=True)
        if len(compact) <= INLINE_LIMIT:
            return Value(compact)
        return Value(text, block=True, lines=text.count("\n") + 1)
    text = shown(value)
    if "\n" in text or len(text) > INLINE_LIMIT:
        return Value(text, block=True, lines=text.count("\n") + 1)
    return Value(text)


def _is_unified_diff(text: str) -> bool:
    return text.startswith("--- ") and "\n+++ " in text or text.startswith("@@ ") or "\n@@ " in text


def _diff_lines(text: str) -> list[DiffLine]:
    out = []
    for line in text.splitlines():
        if line.startswith(("--- ", "+++ ")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        out.append(DiffLine(kind, line))
    return out


def _hex_bytes(text: Any) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def hex_view(key: str, old_hex: Any, new_hex: Any) -> HexView | None:
    """Old and new config space, 16 bytes a row, changed bytes marked; zero rows elided."""
    old, new = _hex_bytes(old_hex), _hex_bytes(new_hex)
    if old is None and new is None:
        return None
    a, b = old or b"", new or b""
    size = max(len(a), len(b))
    rows: list[HexRow] = []
    changed = 0
    skipped_from: int | None = None

    def cell(data: bytes, i: int, differs: bool) -> tuple[str, bool]:
        return (format(data[i], "02x") if i < len(data) else "--", differs)

    for start in range(0, size, HEX_ROW):
        span = range(start, min(start + HEX_ROW, size))
        diffs = [(a[i] if i < len(a) else None) != (b[i] if i < len(b) else None) for i in span]
        changed += sum(diffs)
        interesting = start < 0x40 or any(diffs) or any(a[start:start + HEX_ROW]) or any(b[start:start + HEX_ROW])
        if not interesting:
            if skipped_from is None:
                skipped_from = start
            continue
        if skipped_from is not None:
            rows.append(HexRow(f"{skipped_from:#05x}", gap=f"{skipped_from:#05x}–{start - 1:#05x}: zero on both sides"))
            skipped_from = None
        rows.append(HexRow(f"{start:#05x}", [cell(a, i, d) for i, d in zip(span, diffs, strict=True)],
                           [cell(b, i, d) for i, d in zip(span, diffs, strict=True)]))
    if skipped_from is not None:
        rows.append(HexRow(f"{skipped_from:#05x}", gap=f"{skipped_from:#05x}–{size - 1:#05x}: zero on both sides"))
    return HexView(key, rows, changed, len(a), len(b))


def _provenance_rows(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(label, old, new, differs) for the known fields, then any other key either side has."""
    def show(value: Any) -> str:
        if value is None or value == "" or value == []:
            return "—"
        if isinstance(value, list):
            return "\n".join(shown(v) for v in value)
        if isinstance(value, dict) and isinstance(value.get("files"), dict):   # OVMF: version, dir, images
            images = [f"{name} {shown(digest)[:16]}" for name, digest in sorted(value["files"].items())]
            return "\n".join([shown(value.get("package_version") or "unknown version"), shown(value.get("dir")),
                              *images])
        return shown(value)

    rows = []
    known = {k for k, _ in _PROVENANCE_FIELDS}
    for key, label in _PROVENANCE_FIELDS:
        if key in old or key in new:
            rows.append((label, show(old.get(key)), show(new.get(key)), old.get(key) != new.get(key)))
    for key in sorted((set(old) | set(new)) - known):
        rows.append((key, show(old.get(key)), show(new.get(key)), old.get(key) != new.get(key)))
    return rows


# -- the page ----------------------------------------------------------------------------------

def _anchor(run: RunView, group: SubjectGroup | None = None, category: str | None = None) -> str:
    base = f"run-{run.index}"
    if group is not None:
        return f"{base}-{group.category}-{group.number}"
    return f"{base}-{category}" if category else base


def _open_groups(run: RunView) -> set[str]:
    """Groups shown open at first: the unwaived break/warn ones, up to OPEN_GROUPS per run."""
    out: set[str] = set()
    for cat in run.categories:
        for group in cat.groups:
            if not group.waived and group.severity in ("break", "warn") and len(out) < OPEN_GROUPS:
                out.add(_anchor(run, group))
    return out


def _hexview(run: RunView, group: SubjectGroup) -> HexView | None:
    sides = run.run.config.get(group.key) if group.category == "pci" and group.key else None
    return hex_view(group.key, sides.get("old"), sides.get("new")) if sides is not None else None


def _diff(detail: str | None) -> list[DiffLine] | None:
    return _diff_lines(detail) if detail and _is_unified_diff(detail) else None


_CELL_LABELS = {"break": "break", "warn": "warn", "info": "info", "waived": "waived", "unchanged": "✓",
                "not-compared": "—", "unsupported": "unsupported", "error": "error"}


def _matrix(runs: tuple[RunView, ...]) -> list[MatrixRow]:
    order: dict[str, list[RunView]] = {}
    for run in runs:
        order.setdefault(run.run.machine, []).append(run)
    rows = []
    for machine, machine_runs in order.items():
        for n, view in enumerate(machine_runs):
            cells = []
            for cat in view.categories:
                total = sum(cat.counts.values())
                if cat.state in SEVERITIES:
                    title = (f"{cat.counts[cat.state]} unwaived {cat.state} "
                             f"({total} drift{'s' if total != 1 else ''} in all)")
                elif cat.state == "waived":
                    title = f"{total} drift{'s' if total != 1 else ''}, all waived"
                elif cat.state in ("unsupported", "error"):
                    title = f"{cat.state}: {view.run.reason}"
                elif cat.state == "not-compared":
                    title = "not compared in this run"
                else:
                    title = "unchanged"
                label = _CELL_LABELS[cat.state]
                if cat.state in SEVERITIES:  # every unwaived severity with its count, worst first
                    label = " · ".join(f"{cat.counts[s]} {s}" for s in SEVERITIES if cat.counts[s])
                compared = view.run.status == "compared"
                href = f"#{_anchor(view, category=cat.name)}" if compared else f"#{_anchor(view)}"
                cells.append(Cell(cat.state, label, href, title))
            rows.append(MatrixRow(machine, len(machine_runs) if n == 0 else 0, view.run.guest, view, cells))
    return rows


def _builds(runs: tuple[RunView, ...]) -> list[dict[str, Any]]:
    """Distinct (old, new) provenance pairs, each with the runs that used it."""
    seen: dict[str, dict[str, Any]] = {}
    for view in runs:
        run = view.run
        key = json.dumps([run.old, run.new], sort_keys=True, default=str)
        entry = seen.setdefault(key, {"old": run.old, "new": run.new, "runs": [],
                                      "rows": _provenance_rows(run.old, run.new)})
        entry["runs"].append((_anchor(view), f"{run.machine}, {run.guest}"))
    # Prefer the pairs that say the most (an unsupported run may know only the spec); leave out
    # runs that know nothing of their builds when others do.
    pairs = sorted(seen.values(), key=lambda e: -(len(e["old"]) + len(e["new"])))
    known = [e for e in pairs if e["old"] or e["new"]]
    return known or pairs[:1]


def _duration(seconds: Any) -> str | None:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return None
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    minutes, rest = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min {rest:02d} s" if hours else f"{minutes} min {rest:02d} s"


def _when(generated: Any) -> str | None:
    if not isinstance(generated, str) or not generated:
        return None
    try:
        moment = datetime.fromisoformat(generated)
    except ValueError:
        return generated
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["duration"] = _duration
    env.filters["build"] = describe_build
    env.filters["label"] = drift_line_label
    env.filters["as_value"] = _value
    env.filters["difflines"] = _diff
    env.filters["where"] = waiver_where
    env.filters["match"] = waiver_match
    env.globals["anchor"] = _anchor
    env.globals["hexview"] = _hexview
    return env


def render_html(report: RunSet | Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML page, from a RunSet or a JSON report dict.

    Raises QabiError when a JSON report does not follow qabi-report.schema.json."""
    runset = report if isinstance(report, RunSet) else runset_from_json(report)
    view = report_view(runset)
    machines = list(dict.fromkeys(r.run.machine for r in view.runs))
    title_where = ", ".join(machines[:3]) + (f" +{len(machines) - 3}" if len(machines) > 3 else "")
    context = {
        "report": view,
        "verdict": view.verdict,
        "fail_on": view.fail_on,
        "generated": _when(runset.generated),
        "seconds": _duration(runset.seconds),
        "qabi_version": runset.qabi_version if runset.qabi_version is not None or not runset.details
        else _qabi_version(),
        "builds": _builds(view.runs),
        "matrix": _matrix(view.runs),
        "opened": set().union(*(_open_groups(r) for r in view.runs)),
        "categories": [(c.name, c.title) for c in registry().values()],
        "severities": SEVERITIES,
        "hex_columns": [f"{i:02x}" for i in range(HEX_ROW)],
        "title": f"qabi: {view.verdict.upper()}" + (f" — {title_where}" if title_where else ""),
    }
    return _environment().get_template("report.html.j2").render(**context)


def _qabi_version() -> str:
    from harness import __version__

    return __version__


def write_html(report: RunSet | Mapping[str, Any], path: Path | str) -> Path:
    """Render and write the HTML report atomically; the path written."""
    target = Path(path)
    write_report_file(target, render_html(report), "HTML report")
    return target


def load_report(path: Path | str) -> dict[str, Any]:
    """A JSON report file, validated; QabiError (one line) when missing or invalid."""
    p = Path(path)
    if not p.exists():
        raise QabiError(f"{p}: no such JSON report")
    data: dict[str, Any] = read_json(p, "a JSON report")
    try:
        validate_report(data)
    except QabiError as exc:
        message = " ".join(str(exc).split())
        raise QabiError(f"{p}: {message if len(message) <= 300 else message[:299] + '…'}") from None
    return data


def write_reports(runset: RunSet, directory: Path | str, *,
                  fingerprints: Sequence[FingerprintPair | None] | None = None, seconds: float | None = None,
                  run_seconds: Sequence[float | None] | None = None,
                  generated: datetime | str | None = None) -> tuple[Path, Path]:
    """Write DIRECTORY/qabi.json (with the optional detail fields) and DIRECTORY/index.html, both
    atomically, from the same RunSet; returns their paths.

    `fingerprints` (one (old, new) pair per run), `seconds`, `run_seconds` and `generated` add
    facts that the page shows (config hex views, image hash, timing); see `with_facts`."""
    full = with_facts(runset, fingerprints=fingerprints, seconds=seconds, run_seconds=run_seconds,
                      generated=generated or datetime.now(UTC))
    data = to_json(full, details=True)
    validate_report(data)
    folder = Path(directory)
    json_path, html_path = folder / "qabi.json", folder / "index.html"
    write_report_file(json_path, json_text(data), "JSON report")
    write_html(full, html_path)
    return json_path, html_path
