"""The HTML drift report: one self-contained page rendered from the JSON report dict alone.

    html = render_html(to_json(runset, details=True))     # or json.load(open("qabi.json"))
    write_html(report_json, "reports/index.html")
    write_reports(runset, "reports")                      # reports/qabi.json + reports/index.html

Everything the page shows comes from the JSON contract (qabi-report.schema.json), so
`qabi report qabi.json -o index.html` re-renders the same page from the file. The optional JSON
fields (`to_json(details=True, fingerprints=...)`) add the ASL diffs, the PCI config hex views,
timing and the reference image hash; without them the page shows what there is.

The page fetches nothing: inline CSS and script, and a Content-Security-Policy that forbids any
network request. Guest strings are untrusted: jinja2 autoescapes every value.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from harness.categories import get, names, registry
from harness.errors import QabiError
from harness.report.jsonreport import FingerprintPair, to_json, validate_report
from harness.report.model import RunSet

TEMPLATES = Path(__file__).with_name("templates")
SEVERITY_ORDER: tuple[str, ...] = ("break", "warn", "info")
# Groups of a run shown open at first: the unwaived break/warn ones, up to this many per run.
OPEN_GROUPS = 25
# A hex view skips runs of rows that are zero on both sides and unchanged.
HEX_ROW = 16
INLINE_LIMIT = 160          # longer (or multi-line) values are shown collapsed

_PROVENANCE_FIELDS: tuple[tuple[str, str], ...] = (
    ("spec", "spec"), ("version", "QEMU version"), ("package_version", "package version"),
    ("sha256", "binary sha256"), ("kind", "kind"), ("executable", "executable"),
    ("firmware_dirs", "firmware"), ("firmware_from", "firmware from"),
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
class DriftRow:
    path: str
    change: str
    severity: str
    waived: str | None
    old: Value
    new: Value
    diff: list[DiffLine] | None
    detail: str | None


@dataclass
class Group:
    anchor: str
    subject: str
    key: str
    severity: str
    waived: bool
    counts: dict[str, int]
    drifts: list[DriftRow]
    hexview: HexView | None
    open: bool = False


@dataclass
class CategoryView:
    anchor: str
    name: str
    title: str
    state: str          # break | warn | info | waived | unchanged | not-compared | unsupported | error
    groups: list[Group]
    counts: dict[str, int]


@dataclass
class RunPage:
    index: int
    anchor: str
    machine: str
    guest: str
    status: str
    reason: str | None
    outcome: str        # unchanged | drift | unsupported | error
    old: str
    new: str
    counts: dict[str, int]
    categories: list[CategoryView]
    stale_waivers: list[dict[str, Any]]
    seconds: float | None
    image: dict[str, Any] | None
    below_threshold: int


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
    run: RunPage
    cells: list[Cell]


# -- helpers ------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _value(value: Any) -> Value:
    if value is None:
        return Value("absent", absent=True)
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True)
        compact = json.dumps(value, ensure_ascii=False, sort_keys=True)
        if len(compact) <= INLINE_LIMIT:
            return Value(compact)
        return Value(text, block=True, lines=text.count("\n") + 1)
    text = _text(value)
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


def _counts(drifts: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    out = {s: 0 for s in (*SEVERITY_ORDER, "waived")}
    for d in drifts:
        out["waived" if d.get("waived") is not None else str(d.get("severity"))] += 1
    return out


def _worst(counts: Mapping[str, int]) -> str | None:
    return next((s for s in SEVERITY_ORDER if counts.get(s)), None)


def _at_least(severity: str, threshold: str) -> bool:
    return SEVERITY_ORDER.index(severity) <= SEVERITY_ORDER.index(threshold)


def describe_provenance(prov: Mapping[str, Any]) -> str:
    """`debian:bookworm — QEMU 7.2.22 (1:7.2+dfsg-7+deb12u18+b3), sha256 1493008ba003`."""
    parts = []
    version, package, sha = prov.get("version"), prov.get("package_version"), prov.get("sha256")
    if version:
        parts.append(f"QEMU {_text(version)}" + (f" ({_text(package)})" if package else ""))
    elif package:
        parts.append(_text(package))
    if isinstance(sha, str) and sha:
        parts.append(f"sha256 {sha[:12]}")
    text = ", ".join(parts)
    spec = prov.get("spec")
    if spec:
        text = f"{_text(spec)} — {text}" if text else _text(spec)
    return text or "(no build provenance)"


def _provenance_rows(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(label, old, new, differs) for the known fields, then any other key either side has."""
    def show(value: Any) -> str:
        if value is None or value == "" or value == []:
            return "—"
        if isinstance(value, list):
            return "\n".join(_text(v) for v in value)
        return _text(value)

    rows = []
    known = {k for k, _ in _PROVENANCE_FIELDS}
    for key, label in _PROVENANCE_FIELDS:
        if key in old or key in new:
            rows.append((label, show(old.get(key)), show(new.get(key)), old.get(key) != new.get(key)))
    for key in sorted((set(old) | set(new)) - known):
        rows.append((key, show(old.get(key)), show(new.get(key)), old.get(key) != new.get(key)))
    return rows


# -- building the page --------------------------------------------------------------------------

def _fail_on(report: Mapping[str, Any]) -> str:
    given = report.get("fail_on")
    if given in SEVERITY_ORDER:
        return str(given)
    # Older reports do not say; a "drift" verdict resting on info drifts alone means "info".
    unwaived = [d for r in report["runs"] for d in r["drifts"] if d.get("waived") is None]
    if report["verdict"] == "drift" and unwaived and all(d["severity"] == "info" for d in unwaived):
        return "info"
    return "warn"


def _group(run_anchor: str, cat: str, j: int, items: list[tuple[Mapping[str, Any], Mapping[str, Any]]],
           config: Mapping[str, Any]) -> Group:
    drifts = [d for d, _ in items]
    counts = _counts(drifts)
    waived = counts["waived"] == len(drifts)
    severity = _worst(counts) or _worst(_counts({**d, "waived": None} for d in drifts)) or "info"
    keys = {str(x.get("key") or "") for _, x in items} - {""}
    key = keys.pop() if len(keys) == 1 else ""
    rows = []
    order = sorted(items, key=lambda it: (it[0].get("waived") is not None,
                                          SEVERITY_ORDER.index(it[0]["severity"]), it[0]["path"]))
    for drift, extra in order:
        detail = extra.get("detail")
        detail = detail if isinstance(detail, str) and detail else None
        diff = _diff_lines(detail) if detail and _is_unified_diff(detail) else None
        change = str(extra.get("change") or "")
        if not change:
            change = "added" if drift["old"] is None else "removed" if drift["new"] is None else "changed"
        rows.append(DriftRow(path=drift["path"] or "(whole)", change=change, severity=drift["severity"],
                             waived=drift.get("waived"), old=_value(drift["old"]), new=_value(drift["new"]),
                             diff=diff, detail=None if diff else detail))
    hexview = None
    if cat == "pci" and key and isinstance(config.get(key), Mapping):
        hexview = hex_view(key, config[key].get("old"), config[key].get("new"))
    return Group(anchor=f"{run_anchor}-{cat}-{j}", subject=drifts[0]["subject"], key=key, severity=severity,
                 waived=waived, counts=counts, drifts=rows, hexview=hexview)


def _run_page(i: int, run: Mapping[str, Any], fail_on: str) -> RunPage:
    anchor = f"run-{i}"
    status = run["status"]
    drifts = run["drifts"]
    details = run.get("details")
    extras: list[Mapping[str, Any]] = (list(details) if isinstance(details, list) and len(details) == len(drifts)
                                       else [{} for _ in drifts])
    compared = run.get("categories")
    compared_set = set(compared) if isinstance(compared, list) else None
    given = run.get("config")
    config: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    counts = _counts(drifts)
    categories = []
    groups_total: list[Group] = []
    for cat in names():
        items = [(d, x) for d, x in zip(drifts, extras, strict=True) if d["category"] == cat]
        by_subject: dict[str, list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = {}
        for d, x in items:
            by_subject.setdefault(d["subject"], []).append((d, x))
        groups = [_group(anchor, cat, j, its, config) for j, its in enumerate(by_subject.values())]
        groups.sort(key=lambda g: (g.waived, SEVERITY_ORDER.index(g.severity), g.subject))
        groups_total += groups
        cat_counts = _counts(d for d, _ in items)
        if status != "compared":
            state = status
        elif compared_set is not None and cat not in compared_set:
            state = "not-compared"
        else:
            state = _worst(cat_counts) or ("waived" if cat_counts["waived"] else "unchanged")
        categories.append(CategoryView(f"{anchor}-{cat}", cat, get(cat).title, state, groups, cat_counts))
    opened = 0
    for group in groups_total:
        if not group.waived and group.severity in ("break", "warn") and opened < OPEN_GROUPS:
            group.open = True
            opened += 1
    failing = sum(counts[s] for s in SEVERITY_ORDER if _at_least(s, fail_on))
    below = sum(counts[s] for s in SEVERITY_ORDER if not _at_least(s, fail_on))
    if status == "compared":
        outcome = "drift" if failing else "unchanged"
    else:
        outcome = status
    stale = run.get("stale_waivers")
    seconds = run.get("seconds")
    image = run.get("image")
    return RunPage(index=i, anchor=anchor, machine=run["machine"], guest=run["guest"], status=status,
                   reason=run.get("reason"), outcome=outcome, old=describe_provenance(run["old"]),
                   new=describe_provenance(run["new"]), counts=counts, categories=categories,
                   stale_waivers=[_stale(w) for w in stale if isinstance(w, Mapping)] if isinstance(stale, list) else [],
                   seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
                   image=dict(image) if isinstance(image, Mapping) else None, below_threshold=below)


def _stale(waiver: Mapping[str, Any]) -> dict[str, str]:
    source, line = waiver.get("source"), waiver.get("line")
    where = f"{source}:{line}" if source and line else _text(source) if source else "waivers"
    match = " ".join(f"{k}={_text(waiver[k])}" for k in ("category", "subject", "path", "old", "new")
                     if waiver.get(k) is not None)
    return {"where": where, "match": match, "reason": _text(waiver.get("reason", ""))}


_CELL_LABELS = {"break": "break", "warn": "warn", "info": "info", "waived": "waived", "unchanged": "✓",
                "not-compared": "—", "unsupported": "unsupported", "error": "error"}


def _matrix(runs: list[RunPage]) -> list[MatrixRow]:
    order: dict[str, list[RunPage]] = {}
    for run in runs:
        order.setdefault(run.machine, []).append(run)
    rows = []
    for machine, machine_runs in order.items():
        for n, run in enumerate(machine_runs):
            cells = []
            for cat in run.categories:
                total = sum(cat.counts.values())
                if cat.state in SEVERITY_ORDER:
                    title = (f"{cat.counts[cat.state]} unwaived {cat.state} "
                             f"({total} drift{'s' if total != 1 else ''} in all)")
                elif cat.state == "waived":
                    title = f"{total} drift{'s' if total != 1 else ''}, all waived"
                elif cat.state in ("unsupported", "error"):
                    title = f"{cat.state}: {run.reason}"
                elif cat.state == "not-compared":
                    title = "not compared in this run"
                else:
                    title = "unchanged"
                label = _CELL_LABELS[cat.state]
                if cat.state in SEVERITY_ORDER:
                    label = f"{label} {total}" if total > 1 else label
                href = f"#{cat.anchor}" if run.status == "compared" else f"#{run.anchor}"
                cells.append(Cell(cat.state, label, href, title))
            rows.append(MatrixRow(machine, len(machine_runs) if n == 0 else 0, run.guest, run, cells))
    return rows


def _builds(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Distinct (old, new) provenance pairs, each with the runs that used it."""
    seen: dict[str, dict[str, Any]] = {}
    for i, run in enumerate(report["runs"]):
        key = json.dumps([run["old"], run["new"]], sort_keys=True, default=str)
        entry = seen.setdefault(key, {"old": run["old"], "new": run["new"], "runs": [],
                                      "rows": _provenance_rows(run["old"], run["new"])})
        entry["runs"].append((f"run-{i}", f"{run['machine']}, {run['guest']}"))
    # Prefer the pairs that say the most (an unsupported run may know only the spec); leave out
    # runs that know nothing of their builds when others do.
    pairs = sorted(seen.values(), key=lambda e: -(len(e["old"]) + len(e["new"])))
    known = [e for e in pairs if e["old"] or e["new"]]
    return known or pairs[:1]


def _summary(report: Mapping[str, Any], runs: list[RunPage], fail_on: str) -> str:
    compared = [r for r in runs if r.status == "compared"]
    drifting = [r for r in compared if r.outcome == "drift"]
    failing = sum(sum(r.counts[s] for s in SEVERITY_ORDER if _at_least(s, fail_on)) for r in compared)
    parts = []
    if report["verdict"] == "drift":
        parts.append(f"{failing} unwaived drift{'s' if failing != 1 else ''} at {fail_on} or above in "
                     f"{len(drifting)} of {len(compared)} compared run{'s' if len(compared) != 1 else ''}")
    elif compared:
        parts.append(f"{len(compared)} run{'s' if len(compared) != 1 else ''} compared, "
                     f"no unwaived drift at {fail_on} or above")
    totals = {s: sum(r.counts[s] for r in compared) for s in (*SEVERITY_ORDER, "waived")}
    shown = [f"{totals[s]} {s}" for s in SEVERITY_ORDER if totals[s]]
    if shown:
        parts.append("unwaived: " + ", ".join(shown))
    if totals["waived"]:
        parts.append(f"{totals['waived']} waived")
    errors = sum(1 for r in runs if r.status == "error")
    unsupported = sum(1 for r in runs if r.status == "unsupported")
    if errors:
        parts.append(f"{errors} run{'s' if errors != 1 else ''} could not be decided")
    if unsupported:
        parts.append(f"{unsupported} unsupported")
    if not runs:
        parts.append("nothing was compared")
    elif not compared and not errors:
        parts.append("no run was compared")
    return "; ".join(parts)


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


def _images(report: Mapping[str, Any], runs: list[RunPage]) -> list[str]:
    top = report.get("image")
    if isinstance(top, str) and top:
        return [top]
    found: list[str] = []
    for run in runs:
        for side in ("old", "new"):
            image = run.image.get(side) if run.image else None
            if isinstance(image, str) and image and image not in found:
                found.append(image)
    return found


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["duration"] = _duration
    return env


def render_html(report_json: Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML page, from the JSON report dict.

    Raises QabiError when `report_json` does not follow qabi-report.schema.json."""
    validate_report(report_json)
    fail_on = _fail_on(report_json)
    runs = [_run_page(i, run, fail_on) for i, run in enumerate(report_json["runs"])]
    verdict = str(report_json["verdict"])
    machines = list(dict.fromkeys(r.machine for r in runs))
    title_where = ", ".join(machines[:3]) + (f" +{len(machines) - 3}" if len(machines) > 3 else "")
    context = {
        "verdict": verdict,
        "summary": _summary(report_json, runs, fail_on),
        "fail_on": fail_on,
        "fail_on_given": report_json.get("fail_on") in SEVERITY_ORDER,
        "generated": _when(report_json.get("generated")),
        "seconds": _duration(report_json.get("seconds")),
        "qabi_version": report_json.get("qabi_version"),
        "images": _images(report_json, runs),
        "builds": _builds(report_json),
        "runs": runs,
        "matrix": _matrix(runs),
        "categories": [(c.name, c.title) for c in registry().values()],
        "severities": SEVERITY_ORDER,
        "hex_columns": [f"{i:02x}" for i in range(HEX_ROW)],
        "title": f"qabi: {verdict.upper()}" + (f" — {title_where}" if title_where else ""),
        "has_details": any("details" in r for r in report_json["runs"]),
    }
    return _environment().get_template("report.html.j2").render(**context)


def _atomic_write(path: Path, text: str, what: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a report.
    Mode 0644, not mkstemp's 0600: reports are meant to be read by others."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise QabiError(f"cannot write {what} {path}: {exc.strerror or exc}") from None


def write_html(report_json: Mapping[str, Any], path: Path | str) -> Path:
    """Render and write the HTML report atomically; the path written."""
    target = Path(path)
    _atomic_write(target, render_html(report_json), "HTML report")
    return target


def load_report(path: Path | str) -> dict[str, Any]:
    """A JSON report file, validated; QabiError (one line) when missing or invalid."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QabiError(f"{p}: no such JSON report") from None
    except IsADirectoryError:
        raise QabiError(f"{p}: is a directory, not a JSON report") from None
    except OSError as exc:
        raise QabiError(f"cannot read {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise QabiError(f"{p}: not a JSON report (not UTF-8)") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise QabiError(f"{p}: not a JSON report (invalid JSON: {exc})") from None
    if not isinstance(data, dict):
        raise QabiError(f"{p}: not a JSON report (not a JSON object)")
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
    """Write DIRECTORY/qabi.json (with the optional detail fields) and DIRECTORY/index.html
    rendered from that JSON, both atomically; returns their paths.

    `fingerprints` (one (old, new) pair per run), `seconds`, `run_seconds` and `generated` add the
    optional fields that the page shows (config hex views, image hash, timing); see `to_json`."""
    data = to_json(runset, details=True, fingerprints=fingerprints, seconds=seconds, run_seconds=run_seconds,
                   generated=generated)
    validate_report(data)
    html = render_html(data)
    folder = Path(directory)
    json_path, html_path = folder / "qabi.json", folder / "index.html"
    _atomic_write(json_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n", "JSON report")
    _atomic_write(html_path, html, "HTML report")
    return json_path, html_path
