"""Progress on long runs: a `rich` progress line on a terminal (runs done/total, the current run,
elapsed), plain lines when the stream is not a terminal (CI logs)."""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import IO, Any, Self

from harness.escape import escape_controls
from harness.report import Run


class RunProgress:
    """`with RunProgress(total) as p:` then `p.start(machine, guest)` / `p.done(run)` per run (both
    safe from worker threads); `label` names the current step (a matrix's pair of builds)."""

    def __init__(self, total: int, stream: IO[str] | None = None, fail_on: str = "warn",
                 tty: bool | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.fail_on = fail_on
        self.tty = self.stream.isatty() if tty is None else tty
        self.label = ""
        self.finished = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._current: list[str] = []
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Self:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("qabi"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.description}"),
                                      console=Console(file=self.stream), transient=True)
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._line(f"{self.finished}/{self.total} runs in {time.monotonic() - self.started:.1f}s")

    def _name(self, machine: str, guest: str) -> str:
        text = f"{machine} {guest}" + (f" ({self.label})" if self.label else "")
        return escape_controls(text)

    def _line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"qabi: {text}", markup=False, highlight=False)
        else:
            self.stream.write(f"qabi: {text}\n")
            self.stream.flush()

    def start(self, machine: str, guest: str) -> None:
        with self._lock:
            name = self._name(machine, guest)
            self._current.append(name)
            if self._progress is not None:
                self._progress.update(self._task, description=", ".join(self._current))
            else:
                self._line(f"[{self.finished + 1}/{self.total}] {name}: started "
                           f"({time.monotonic() - self.started:.0f}s elapsed)")

    def done(self, run: Run) -> None:
        with self._lock:
            name = self._name(run.machine, run.guest)
            if name in self._current:
                self._current.remove(name)
            self.finished += 1
            outcome = run.outcome(self.fail_on)  # type: ignore[arg-type]
            took = f" in {run.seconds:.1f}s" if run.seconds is not None else ""
            if self._progress is not None:
                self._progress.update(self._task, advance=1, description=", ".join(self._current))
                if outcome in ("drift", "error"):
                    self._line(f"{name}: {outcome}{took}")
            else:
                self._line(f"[{self.finished}/{self.total}] {name}: {outcome}{took}")
