"""The pytest harness: `pytest harness/` checks the guest-visible ABI of one QEMU build against another.

One test item per (machine type, profile, category), e.g. `test_guest_abi[pc-q35-7.2-windows-pci]`.
Each boot happens once per session (and once per cache: identical inputs reuse a capture); a
category item fails with the drifts of that category by device, most severe first. Unsupported
combinations are skipped with the reason; a capture or decode error is a pytest *error*.

Options come from the command line, else environment variables (QABI_QEMU_OLD, QABI_QEMU_NEW,
QABI_BASELINE, QABI_MACHINE, QABI_GUEST, QABI_ACCEL, QABI_WAIVERS, QABI_FAIL_ON, QABI_REPORT,
QABI_TRANSPORT, QABI_GUEST_IMAGE, QABI_SSH_USER, QABI_SSH_KEY, QABI_SSH_HOST_KEY, QABI_SHARD,
QABI_MIGRATE; lists comma-separated), else `[tool.qabi]` in pyproject.toml (the same names: qemu-old, qemu-new,
baseline, machine, guest, accel, waivers, fail-on, report, transport, guest-image, ssh-user,
ssh-key, ssh-host-key, shard, migrate), else the embedded default: the backport check
debian:bookworm-security -> debian:bookworm on pc-i440fx-7.2 and pc-q35-7.2, all profiles, over the
firmware transport.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from harness.check import Check, RunRequest
from harness.config import LISTS, pyproject_settings
from harness.drift.model import SEVERITIES, Severity, at_least
from harness.errors import QabiError
from harness.plan import DEFAULT_TRANSPORT, GuestAccess
from harness.report import Run, RunSet
from harness.report.jsonreport import REPORT_FILES, report_folder
from harness.shard import parse_shard
from harness.transport.base import transport_names

DEFAULTS: dict[str, Any] = {
    "qemu-old": "debian:bookworm-security",
    "qemu-new": "debian:bookworm",
    "baseline": None,
    "machine": ["pc-i440fx-7.2", "pc-q35-7.2"],
    "guest": [],
    "accel": "tcg",
    "waivers": None,
    "fail-on": "warn",
    "report": "reports",
    "transport": DEFAULT_TRANSPORT,
    "guest-image": None,
    "ssh-user": None,
    "ssh-key": None,
    "ssh-host-key": None,
    "shard": None,
    "migrate": None,
}
DETAIL_LINES = 8


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qabi", "qabi: guest-visible ABI of a QEMU update")
    group.addoption("--qemu-old", metavar="SPEC", help="old QEMU build (default: debian:bookworm-security)")
    group.addoption("--qemu-new", metavar="SPEC", help="new QEMU build (default: debian:bookworm)")
    group.addoption("--baseline", metavar="DIR", help="a recorded baseline (fingerprints/BUILD) as the old side")
    group.addoption("--machine", action="append", metavar="M",
                    help="machine type, repeatable; 'common' = every versioned i440fx/q35 type both have")
    group.addoption("--guest", action="append", metavar="P", help="guest profile, repeatable (default: all)")
    group.addoption("--accel", metavar="A", help="accelerator: tcg or kvm (default: tcg)")
    group.addoption("--waivers", metavar="F", help="waiver file (default: fingerprints/waivers.toml if present)")
    group.addoption("--fail-on", metavar="S", help="lowest severity that fails: break, warn, info (default: warn)")
    group.addoption("--report", metavar="DIR", help="where index.html and qabi.json go (default: reports/)")
    group.addoption("--transport", metavar="T",
                    help=f"how the hardware is read: {', '.join(transport_names())} (default: {DEFAULT_TRANSPORT})")
    group.addoption("--guest-image", metavar="FILE",
                    help="boot this qcow2/raw image (snapshot=on) instead of the reference guest; needs ssh")
    group.addoption("--ssh-user", metavar="U", help="login for --guest-image (default root)")
    group.addoption("--ssh-key", metavar="K", help="private key for --guest-image")
    group.addoption("--ssh-host-key", metavar="F", help="pinned host key(s) of --guest-image (.pub/known_hosts)")
    group.addoption("--shard", metavar="I/N", help="only shard I of N of the runs (merge: qabi report --merge)")
    group.addoption("--migrate", metavar="D",
                    help="live-migrate a running guest: forward (old -> new) or both (and back); adds the "
                         "migration, vmstate and props items (default: none)")


def _setting(config: pytest.Config, key: str) -> Any:
    value = config.getoption(key.replace("-", "_"))
    if value:
        return value
    env = os.environ.get("QABI_" + key.upper().replace("-", "_"))
    if env:
        return [v.strip() for v in env.split(",") if v.strip()] if key in LISTS else env
    table = pyproject_settings(Path(str(config.rootpath)))
    if key in table:
        value = table[key]
        return ([value] if isinstance(value, str) else list(value)) if key in LISTS else value
    return DEFAULTS[key]


def _text(config: pytest.Config, key: str) -> str | None:
    value = _setting(config, key)
    return None if value is None else str(value)


def run_request(config: pytest.Config) -> RunRequest:
    """The session's RunRequest from options, environment, `[tool.qabi]` and the defaults."""
    access = GuestAccess.from_options(str(_setting(config, "transport")), _text(config, "guest-image"),
                                      _text(config, "ssh-user"), _text(config, "ssh-key"),
                                      _text(config, "ssh-host-key"))
    fail_on = str(_setting(config, "fail-on"))
    if fail_on not in SEVERITIES:
        raise QabiError(f"fail-on '{fail_on}' is not one of {', '.join(SEVERITIES)}")
    # the default machine types are a fallback: a profile that pins its machine type runs on that one
    machines = _setting(config, "machine")
    asked, fallback = ((), tuple(machines)) if machines is DEFAULTS["machine"] else (tuple(machines), ())
    return RunRequest(old=str(_setting(config, "baseline") or _setting(config, "qemu-old")),
                      new=str(_setting(config, "qemu-new")), machines=asked, fallback_machines=fallback,
                      guests=tuple(_setting(config, "guest")), accel=str(_setting(config, "accel")),
                      access=access, waivers=_text(config, "waivers"), fail_on=fail_on,  # type: ignore[arg-type]
                      shard=parse_shard(_text(config, "shard")), migrate=_text(config, "migrate"))


@dataclass
class QabiSession:
    """What one pytest session checks (one `Check`), the runs it has done, and its verdict."""

    check: Check
    report_dir: Path
    started: float = field(default_factory=time.monotonic)
    runs: dict[tuple[str, str], Run] = field(default_factory=dict)
    verdict: str | None = None
    wanted: list[tuple[str, str]] = field(default_factory=list)   # runs this process's items need, in order

    @property
    def request(self) -> RunRequest:
        return self.check.request

    def run(self, machine: str, guest: str) -> Run:
        """The report Run of (machine, guest): captured and compared on first use."""
        key = (machine, guest)
        if key not in self.runs and key in self.wanted:
            # the first item captures every run this process's items need, side by side (--jobs)
            pending = [case for case in self.wanted if case not in self.runs]
            for run in self.check.run_all(cases=pending).runs:
                self.runs[(run.machine, run.guest)] = run
        if key not in self.runs:
            self.runs[key] = self.check.run(machine, guest)
        return self.runs[key]

    @property
    def report_html(self) -> Path:
        return self.report_dir / "index.html"


_SESSION_KEY = pytest.StashKey[QabiSession]()
_PARTS_KEY = pytest.StashKey[list[Run]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qabi_run(machine, guest): one guest ABI run")
    if getattr(config.option, "dist", "no") == "load":
        # plain `-n N` (xdist's default --dist load) would split one run's category items across
        # workers and boot it twice; keep each run's items on one worker instead
        config.option.dist = "loadgroup"
    if getattr(config, "workerinput", {}).get("qabi_loadgroup"):
        config.option.loadgroup = True   # the worker tags each item with its group, as xdist does
    _steps_past_capture(config)
    try:  # options are checked once, here: a bad one is one line and exit 2, not an error per item
        report = Path(str(_setting(config, "report")))
        if not report.is_absolute():
            report = Path(str(config.invocation_params.dir)) / report
        report_folder(report, REPORT_FILES, create=False)
        check = Check(run_request(config))
        cases = check.cases()   # the whole plan: profiles, machine types, the shard count
    except QabiError as exc:
        from harness.escape import escape_controls

        pytest.exit(f"qabi: {escape_controls(' '.join(str(exc).splitlines()), keep='')}", returncode=2)
    config.stash[_SESSION_KEY] = QabiSession(check, report)
    config.stash[_PARTS_KEY] = []
    config.stash[_CASES_KEY] = cases


_CASES_KEY = pytest.StashKey[list[tuple[str, str]]]()
_STEPS_KEY = pytest.StashKey[contextlib.ExitStack]()


def _steps_past_capture(config: pytest.Config) -> None:
    """Provisioning a build says what it does (harness/steps.py): past pytest's output capture, so a
    fresh machine's first item is not a long silence."""
    import sys

    from harness.steps import lines_to

    capman = config.pluginmanager.getplugin("capturemanager")

    def write(line: str) -> None:
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    stack = contextlib.ExitStack()
    stack.enter_context(lines_to(write))
    config.stash[_STEPS_KEY] = stack


def pytest_unconfigure(config: pytest.Config) -> None:
    if _STEPS_KEY in config.stash:
        config.stash[_STEPS_KEY].close()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: tell each worker whether the plugin switched to --dist loadgroup."""
    node.workerinput["qabi_loadgroup"] = node.config.getvalue("dist") == "loadgroup"


def qabi_session(config: pytest.Config) -> QabiSession:
    return config.stash[_SESSION_KEY]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qabi_case" not in metafunc.fixturenames:
        return
    # the category items of one run stay together, on one xdist worker (--dist loadgroup): the
    # mark is set here, at collection, so that xdist sees it whatever order the hooks run in
    cases = [pytest.param((m, g, c), marks=pytest.mark.xdist_group(f"{m}-{g}"), id=f"{m}-{g}-{c}")
             for m, g in metafunc.config.stash[_CASES_KEY] for c in qabi_session(metafunc.config).check.categories()]
    metafunc.parametrize("qabi_case", cases, scope="function")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Without xdist, the runs the selected items need are known now: the first item captures them all,
    `jobs` side by side. An xdist worker takes its items one run group at a time, as it is given them."""
    config = session.config
    if _SESSION_KEY not in config.stash or getattr(config, "workerinput", None) is not None:
        return
    wanted: list[tuple[str, str]] = []
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        case = callspec.params.get("qabi_case") if callspec is not None else None
        if case is not None and tuple(case[:2]) not in wanted:
            wanted.append((case[0], case[1]))
    qabi_session(config).wanted = wanted


class CaptureFailed(Exception):
    """A run that could not be decided: shown as a pytest error, never a pass or a skip."""


@pytest.fixture
def qabi_run(request: pytest.FixtureRequest, qabi_case: tuple[str, str, str]) -> Run:
    session = qabi_session(request.config)
    machine, guest, category = qabi_case
    run = session.run(machine, guest)
    if run.status == "unsupported":
        pytest.skip(f"{machine} {guest}: {run.reason}")
    if run.status == "error":
        from harness.escape import escape_controls

        raise CaptureFailed(escape_controls(f"{machine} {guest}: could not decide: {run.reason}", keep=""))
    _record_impact(request.node, run)
    if run.comparison is not None and category not in run.comparison.categories:
        # a host-side category the run could not collect (a recorded baseline cannot migrate)
        why = run.migration.error if run.migration is not None else None
        pytest.skip(f"{machine} {guest}: no {category} data ({why or 'not collected'})")
    return run


def _record_impact(item: pytest.Item, run: Run) -> None:
    """The run's guest impact as JUnit properties (`--junitxml`): qabi_impact_windows and
    qabi_impact_linux (the level), and with `_components` what is at that level."""
    impact = run.impact or {}
    for os_name, side in impact.items():
        item.user_properties.append((f"qabi_impact_{os_name}", side["level"]))
        if side["components"]:
            item.user_properties.append((f"qabi_impact_{os_name}_components", "; ".join(side["components"])))


def failure_message(session: QabiSession, run: Run, category: str) -> str | None:
    """The drifts of `category` that fail the item, after the run's guest impact: by device, a
    change shared by several devices once ("same change in 30 devices: …"), most severe first."""
    from harness.escape import escape_controls
    from harness.report.view import group_drifts

    assert run.comparison is not None
    fail_on = session.request.fail_on
    drifts = [d for d in run.comparison.drifts if d.category == category]
    failing = [d for d in drifts if d.waived is None and at_least(d.severity, fail_on)]
    if not failing:
        return None
    lines = [(f"{len(failing)} unwaived {category} drift(s) at or above '{fail_on}' on {run.machine}, "
             f"guest {run.guest} ({session.request.old} -> {session.request.new}):")]
    for os_name, side in (run.impact or {}).items():
        shown = "; ".join(side["components"][:3]) + (f"; … {len(side['components']) - 3} more"
                                                     if len(side["components"]) > 3 else "")
        lines.append(f"  {os_name.capitalize()} impact of the run: {side['level']}" + (f" ({shown})" if shown else ""))
    for entry in group_drifts(failing):
        impact = entry.impact
        lines.append(f"  {entry.title}" + (f"  [Windows {impact['windows']}, Linux {impact['linux']}]"
                                           if impact["windows"] else ""))
        if entry.shared:
            lines.append(f"    (shown once, for {entry.drifts[0].subject})")
        for d in entry.shown:
            if d.detail:
                changed = [ln for ln in d.detail.splitlines()
                           if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
                lines.append(f"    [{d.severity}] {d.path or '(whole entry)'} changed:")
                lines += [f"      {ln}" for ln in changed[:DETAIL_LINES]]
                if len(changed) > DETAIL_LINES:
                    lines.append(f"      … {len(changed) - DETAIL_LINES} more changed line(s) in the HTML report")
            else:
                lines.append(f"    [{d.severity}] {d.path or '(whole entry)'}: {_short(d.old)} -> {_short(d.new)}")
    waived = [d for d in drifts if d.waived is not None]
    if waived:
        lines.append(f"  ({len(waived)} waived drift(s) not counted)")
    lines.append(f"HTML report: {session.report_html}")
    return "\n".join(escape_controls(line) for line in lines)   # guest text (SMBIOS strings, ASL) never raw


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "…"


# -- the report: the workers' runs merged into one RunSet, written by the one report writer -----------
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _SESSION_KEY not in config.stash:
        return
    state = qabi_session(config)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand its Run records to the controller
        workeroutput["qabi_runs"] = pickle.dumps(list(state.runs.values()))
        return
    runs = list(state.runs.values()) + config.stash[_PARTS_KEY]
    if runs:
        runset = replace(_merged(runs, config.stash[_CASES_KEY], state.request.fail_on),
                         shard=state.check.shard_info())
        from harness.report.html import write_reports

        write_reports(runset, state.report_dir, seconds=round(time.monotonic() - state.started, 3))
        state.verdict = runset.verdict
        if runset.verdict == "error":  # same exit status as `qabi check`: 2 = could not decide, and why
            from harness.report import undecided_reason

            session.exitstatus = 2
            _stderr_line(config, f"qabi: error: could not decide: {undecided_reason(runset)}")


def _stderr_line(config: pytest.Config, line: str) -> None:
    """One line on the real stderr (past pytest's output capture), control characters escaped."""
    import contextlib
    import sys

    from harness.report.text import escape_controls

    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        sys.stderr.write(escape_controls(" ".join(line.splitlines()), keep="") + "\n")
        sys.stderr.flush()


def pytest_testnodedown(node: Any, error: Any) -> None:
    output = getattr(node, "workeroutput", {}) or {}
    if "qabi_runs" in output:
        node.config.stash[_PARTS_KEY].extend(pickle.loads(output["qabi_runs"]))


def _merged(runs: list[Run], cases: list[tuple[str, str]], fail_on: Severity) -> RunSet:
    """One run per (machine, guest), in the order of the session's cases: a run done by two
    workers (e.g. `--dist each`) counts once."""
    seen: dict[tuple[str, str], Run] = {}
    for run in runs:
        seen.setdefault((run.machine, run.guest), run)
    order = {case: i for i, case in enumerate(cases)}
    return RunSet(tuple(sorted(seen.values(), key=lambda r: order.get((r.machine, r.guest), len(order)))),
                  fail_on)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if getattr(config, "workeroutput", None) is not None or _SESSION_KEY not in config.stash:
        return
    state = qabi_session(config)
    if state.verdict is None:
        return
    terminalreporter.section("qabi")
    words = {"unchanged": "ABI unchanged", "drift": "ABI DRIFT", "error": "could not decide"}
    terminalreporter.write_line(f"qabi verdict: {words.get(state.verdict, state.verdict)} "
                                f"({state.request.old} -> {state.request.new}, fail on {state.request.fail_on})")
    terminalreporter.write_line(f"qabi report: {state.report_html}")
