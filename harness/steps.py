"""What a long step is doing, said as it happens: one `qabi: …` line per step on stderr (CI logs),
and on a terminal a progress bar for the steps that count items (package downloads).

    with step("debian:bookworm", "downloading 74 packages (41 MB)", total=74) as tick:
        for ...: tick()

The pytest plugin routes the lines past pytest's output capture (`lines_to`), so a fresh machine's
`pytest harness/` says what it provisions instead of sitting silent on its first item."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

_sink: list[Callable[[str], None]] = []
_lock = threading.Lock()


def say(text: str) -> None:
    """One line (`qabi: TEXT`) on stderr, or wherever `lines_to` sends them."""
    from harness.escape import escape_controls

    line = f"qabi: {escape_controls(' '.join(text.split()), keep='')}"
    with _lock:
        if _sink:
            _sink[-1](line)
        else:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


@contextlib.contextmanager
def lines_to(write: Callable[[str], None]) -> Iterator[None]:
    """Send the step lines of the block to `write` (one call per line, no newline)."""
    _sink.append(write)
    try:
        yield
    finally:
        _sink.remove(write)


@contextlib.contextmanager
def step(who: str, what: str, total: int = 0, stream: IO[str] | None = None) -> Iterator[Callable[[], None]]:
    """Say `who: what…` now and `who: what: done in Ns` at the end; the block gets a `tick()` to call
    per item of `total` (a transient progress bar on a terminal, nothing extra in a log)."""
    started = time.monotonic()
    say(f"{who}: {what}")
    out = stream if stream is not None else sys.stderr
    bar = None
    if total > 1 and not _sink and out.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn(f"qabi: {who}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=Console(file=out), transient=True)
    counter = threading.Lock()
    if bar is not None:
        bar.start()
        task = bar.add_task("", total=total)

        def tick() -> None:
            with counter:
                bar.update(task, advance=1)
    else:
        def tick() -> None:
            return None
    try:
        yield tick
    finally:
        if bar is not None:
            bar.stop()
    say(f"{who}: {what}: done in {time.monotonic() - started:.1f}s")
