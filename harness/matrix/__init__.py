"""The upgrade matrix, machine-type bumps and sharding: loops over the one pipeline (harness/check.py).

    result = run_matrix(MatrixRequest(("debian:bullseye", "debian:bookworm", "debian:trixie")), Path("out"))
    result.frame                 # pandas: one row per (step, machine type, profile)
    result.exit_code             # 0 unchanged, 1 drift, 2 could not decide: `decide` over every run of every step

The parts check.py and the CLI use directly: bump.py (`--machine OLD:NEW` and its generated
waivers), shard.py (`--shard I/N`), merge.py (`qabi report --merge`), cachefile.py (`qabi cache
export|import`), progress.py (the progress line). This module imports check.py only when a
matrix runs (check.py imports bump and shard).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from harness.matrix.progress import RunProgress
    from harness.matrix.run import MatrixRequest, Step


@dataclass(frozen=True)
class MatrixResult:
    steps: tuple[Step, ...]
    frame: pd.DataFrame
    verdict: str
    seconds: float
    outputs: dict[str, Path]

    @property
    def exit_code(self) -> int:
        from harness.report import EXIT_CODES

        return EXIT_CODES[self.verdict]

    def undecided(self) -> str:
        """Why the matrix could not be decided: the first step with a run it could not compare."""
        from harness.report import undecided_reason

        for step in self.steps:
            if step.runset is not None and step.runset.verdict == "error" and step.runset.runs:
                return f"step {step.label}: {undecided_reason(step.runset)}"
        return "nothing was compared (no step has a run in this selection)"


def run_matrix(request: MatrixRequest, directory: Path, progress: RunProgress | None = None) -> MatrixResult:
    """Open every step (builds provisioned first), run them through the pipeline, write each step's
    report and the matrix files under `directory`."""
    from harness.matrix.progress import RunProgress
    from harness.matrix.run import open_steps, run_steps, step_cases, step_planned, write_steps
    from harness.matrix.table import MATRIX_FILES, frame, write_outputs
    from harness.report import decide
    from harness.report.jsonreport import report_folder
    from harness.shard import check_shard_count

    report_folder(directory, MATRIX_FILES, what="matrix folder", create=False)   # refused before any run
    started = time.monotonic()
    steps = open_steps(request)
    # every shard holds a run of the largest step: more shards than that is refused before any capture
    check_shard_count(request.shard, max(len(step_planned(s)) for s in steps), "the largest step")
    total = sum(len(step_cases(s)) for s in steps)
    meter = progress or RunProgress(total, fail_on=request.fail_on)
    meter.total = total

    def on_step(step: Step) -> None:
        meter.label = step.label

    with meter:
        run_steps(steps, meter.start, meter.done, on_step)
    seconds = round(time.monotonic() - started, 3)
    report_folder(directory, MATRIX_FILES, what="matrix folder")   # claimed (marked) before its steps/ is written
    write_steps(steps, directory)
    data = frame(steps)
    title = "qabi matrix: " + " → ".join(request.specs) + (" (first against each)" if request.pairs == "first" else "")
    if request.shard:
        title += f" — shard {request.shard[0]}/{request.shard[1]}"
    outputs = write_outputs(steps, data, directory, seconds, title)
    return MatrixResult(tuple(steps), data, decide(data["outcome"]), seconds, outputs)


__all__ = ["MatrixResult", "run_matrix"]
