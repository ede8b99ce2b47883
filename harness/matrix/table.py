"""The matrix as data: one pandas row per (step, machine type, profile), pivoted to machine type
× step, and written as matrix.csv (the rows), matrix.md and matrix.json (rows and pivot) and
index.html (the pivot, each cell linking to the step's full report)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.bump import split_machine
from harness.drift.impact import run_impact
from harness.drift.impact import worst as worst_level
from harness.drift.model import SEVERITIES
from harness.matrix.merge import run_order
from harness.matrix.run import Step
from harness.report import Outcome, decide
from harness.report.jsonreport import report_folder, write_report_file
from harness.report.view import count_drifts, worst

COLUMNS = ["step", "step_label", "old", "new", "old_version", "new_version", "machine", "guest", "outcome",
           "worst", "break", "warn", "info", "waived", "windows", "linux", "categories", "reason", "report"]


def _version(provenance: Any) -> str:
    return str(provenance.get("version") or "") if hasattr(provenance, "get") else ""


def frame(steps: list[Step]) -> pd.DataFrame:
    """One row per (step, machine type, profile)."""
    rows: list[dict[str, Any]] = []
    for step in steps:
        assert step.runset is not None
        fail_on = step.runset.fail_on
        for index, run in enumerate(step.runset.runs):
            drifts = run.drifts
            counts = count_drifts(drifts)
            unwaived = [d for d in drifts if d.waived is None]
            impact = run_impact(drifts) if run.status == "compared" else {}
            rows.append({
                "step": step.index, "step_label": step.label, "old": step.old, "new": step.new,
                "old_version": _version(run.old), "new_version": _version(run.new),
                "machine": run.machine, "guest": run.guest, "outcome": run.outcome(fail_on),
                "worst": worst(counts) or "", **{s: int(counts.get(s, 0)) for s in (*SEVERITIES, "waived")},
                "windows": impact.get("windows", {}).get("level", ""),
                "linux": impact.get("linux", {}).get("level", ""),
                "categories": ",".join(sorted({d.category for d in unwaived})),
                "reason": run.reason or "",
                "report": f"{step.folder}/index.html#run-{index}" if step.folder else "",
            })
    data = pd.DataFrame(rows, columns=COLUMNS)
    for column in (*SEVERITIES, "waived", "step"):
        data[column] = data[column].astype("int64")
    return data


def _machine_key(machine: str) -> tuple[Any, ...]:
    from harness.report import Run

    return run_order(Run(machine=machine, guest="", status="error", reason="-"))


def _cell(group: pd.DataFrame) -> dict[str, Any]:
    outcome = cell_outcome(group["outcome"])
    totals = {s: int(group[s].sum()) for s in (*SEVERITIES, "waived")}
    worst_sev = next((s for s in SEVERITIES if totals[s]), "")
    levels = {os: worst_level(v for v in group[os] if v) for os in ("windows", "linux")}
    cats = sorted({c for text in group["categories"] for c in text.split(",") if c})
    parts: list[str] = [outcome]
    if outcome == "drift" or (outcome == "unchanged" and any(totals.values())):
        parts.append(", ".join(f"{totals[s]} {s}" for s in (*SEVERITIES, "waived") if totals[s]))
    if cats:
        parts.append("(" + ", ".join(cats) + ")")
    if outcome == "drift":
        parts.append(f"[Windows {levels['windows']}, Linux {levels['linux']}]")
    return {"outcome": outcome, "worst": worst_sev, **totals, "categories": cats,
            "windows": "" if levels["windows"] == "none" else levels["windows"],
            "linux": "" if levels["linux"] == "none" else levels["linux"], "text": " ".join(parts),
            "runs": [{"guest": str(r.guest), "outcome": str(r.outcome), "worst": str(r.worst),
                      "report": str(r.report), "reason": str(r.reason)} for r in group.itertuples()]}


def pivot(data: pd.DataFrame) -> pd.DataFrame:
    """Machine type × step: each cell the summary of its profiles (a dict, see `_cell`)."""
    if data.empty:
        return pd.DataFrame()
    cells = data.groupby(["machine", "step_label"], sort=False).apply(_cell, include_groups=False)
    table = cells.unstack("step_label")
    steps = list(dict.fromkeys(data.sort_values("step")["step_label"]))
    machines = sorted(table.index, key=_machine_key)
    return table.reindex(index=machines, columns=steps)


def text_pivot(table: pd.DataFrame) -> pd.DataFrame:
    return table.map(lambda c: c["text"] if isinstance(c, dict) else "") if not table.empty else table


def markdown(table: pd.DataFrame) -> str:
    """The pivot as a GitHub-flavoured Markdown table."""
    text = text_pivot(table)

    def esc(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    head = ["machine type", *map(str, text.columns)]
    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    for machine, row in text.iterrows():
        lines.append("| " + " | ".join(esc(v) for v in [machine, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def cell_outcome(outcomes: Iterable[Outcome]) -> Outcome:
    """How a cell sums up its profiles: the verdict over them (`decide`), shown as "unsupported"
    when what kept it from "unchanged" is only runs that were not compared."""
    seen = list(outcomes)
    verdict = decide(seen)
    return "unsupported" if verdict == "error" and "error" not in seen else verdict


def matrix_json(steps: list[Step], data: pd.DataFrame, table: pd.DataFrame, seconds: float | None) -> dict[str, Any]:
    return {
        "schema": 1, "verdict": decide(data["outcome"]), "seconds": seconds,
        "steps": [{"step": s.index, "label": s.label, "old": s.old, "new": s.new, "report": f"{s.folder}/index.html",
                   "verdict": s.runset.verdict if s.runset is not None else None} for s in steps],
        "rows": json.loads(data.to_json(orient="records")),
        "pivot": {str(m): {str(step): cell for step, cell in row.items() if isinstance(cell, dict)}
                  for m, row in table.iterrows()},
    }


MATRIX_FILES = ("matrix.csv", "matrix.md", "matrix.json", "index.html")


def write_outputs(steps: list[Step], data: pd.DataFrame, directory: Path, seconds: float | None,
                  title: str) -> dict[str, Path]:
    """matrix.csv, matrix.md, matrix.json and index.html in `directory`."""
    table = pivot(data)
    overall = decide(data["outcome"])
    folder = report_folder(directory, MATRIX_FILES, what="matrix folder")
    out = {name: folder / name for name in MATRIX_FILES}
    write_report_file(out["matrix.csv"], data.to_csv(index=False), "matrix CSV")
    write_report_file(out["matrix.md"], f"# {title}\n\nverdict: {overall}\n\n" + markdown(table), "matrix")
    write_report_file(out["matrix.json"], json.dumps(matrix_json(steps, data, table, seconds), indent=2,
                                                     ensure_ascii=False) + "\n", "matrix JSON")
    write_report_file(out["index.html"], render_html(steps, table, overall, seconds, title), "matrix HTML")
    return out


def render_html(steps: list[Step], table: pd.DataFrame, overall: str, seconds: float | None, title: str) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(Path(__file__).with_name("templates"))), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    rows = [(str(m), [row[c] if isinstance(row[c], dict) else None for c in table.columns])
            for m, row in table.iterrows()] if not table.empty else []
    columns = [next(s for s in steps if s.label == c) for c in table.columns] if not table.empty else []
    bumps = any(split_machine(m)[0] != split_machine(m)[1] for m, _ in rows)
    return env.get_template("matrix.html.j2").render(title=title, verdict=overall, seconds=seconds, steps=steps,
                                                     columns=columns, rows=rows, bumps=bumps)
