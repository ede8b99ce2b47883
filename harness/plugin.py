"""The pytest harness: `pytest harness/` checks the guest-visible ABI of one QEMU build against another.

One test item per (machine type, profile, category), e.g. `test_guest_abi[pc-q35-7.2-windows-pci]`.
Each boot happens once per session (and once per cache: identical inputs reuse a capture); a
category item fails with the drifts of that category by device, most severe first. Unsupported
combinations are skipped with the reason; a capture or decode error is a pytest *error*.

Options come from the command line, else environment variables (QABI_QEMU_OLD, QABI_QEMU_NEW,
QABI_BASELINE, QABI_MACHINE, QABI_GUEST, QABI_ACCEL, QABI_WAIVERS, QABI_FAIL_ON, QABI_REPORT,
QABI_TRANSPORT, QABI_GUEST_IMAGE, QABI_SSH_USER, QABI_SSH_KEY, QABI_SSH_HOST_KEY; lists
comma-separated), else `[tool.qabi]` in pyproject.toml (the same names: qemu-old, qemu-new,
baseline, machine, guest, accel, waivers, fail-on, report, transport, guest-image, ssh-user,
ssh-key, ssh-host-key), else the embedded default: the backport check
debian:bookworm-security -> debian:bookworm on pc-i440fx-7.2 and pc-q35-7.2, all profiles.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.categories import names
from harness.config import pyproject_settings

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
    "transport": "serial",
    "guest-image": None,
    "ssh-user": None,
    "ssh-key": None,
    "ssh-host-key": None,
}
_LISTS = ("machine", "guest")
DETAIL_LINES = 8


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qabi", "qabi: guest-visible ABI of a QEMU update")
    group.addoption("--qemu-old", metavar="SPEC", help="old QEMU build (default: debian:bookworm-security)")
    group.addoption("--qemu-new", metavar="SPEC", help="new QEMU build (default: debian:bookworm)")
    group.addoption("--baseline", metavar="DIR", help="a recorded baseline (fingerprints/BUILD) as the old side")
    group.addoption("--machine", action="append", metavar="M",
                    help="machine type, repeatable; 'common' = every versioned i440fx/q35 type both have")
    group.addoption("--guest", action="append", metavar="P", help="guest profile, repeatable (default: all)")
    group.addoption("--accel", choices=["tcg", "kvm"], help="accelerator (default: tcg)")
    group.addoption("--waivers", metavar="F", help="waiver file (default: fingerprints/waivers.toml if present)")
    group.addoption("--fail-on", choices=["break", "warn", "info"], help="lowest severity that fails (default: warn)")
    group.addoption("--report", metavar="DIR", help="where index.html and qabi.json go (default: reports/)")
    group.addoption("--transport", choices=["serial", "ssh"], help="how the probe reaches the guest (default: serial)")
    group.addoption("--guest-image", metavar="FILE",
                    help="boot this qcow2/raw image (snapshot=on) instead of the reference guest; needs ssh")
    group.addoption("--ssh-user", metavar="U", help="login for --guest-image (default root)")
    group.addoption("--ssh-key", metavar="K", help="private key for --guest-image")
    group.addoption("--ssh-host-key", metavar="F", help="pinned host key(s) of --guest-image (.pub/known_hosts)")


def _setting(config: pytest.Config, key: str) -> Any:
    value = config.getoption(key.replace("-", "_"))
    if value:
        return value
    env = os.environ.get("QABI_" + key.upper().replace("-", "_"))
    if env:
        return [v.strip() for v in env.split(",") if v.strip()] if key in _LISTS else env
    table = pyproject_settings(Path(str(config.rootpath)))
    if key in table:
        value = table[key]
        return ([value] if isinstance(value, str) else list(value)) if key in _LISTS else value
    return DEFAULTS[key]


@dataclass
class QabiSession:
    """What one pytest session checks, and the runs it has done so far."""

    old_spec: str
    new_spec: str
    machines: list[str]
    guests: list[str]
    accel: str
    waivers_path: str | None
    fail_on: str
    report_dir: Path
    access: Any = None
    started: float = field(default_factory=time.time)
    _sides: tuple[Any, Any] | None = None
    runs: dict[tuple[str, str], Any] = field(default_factory=dict)
    pairs: dict[tuple[str, str], Any] = field(default_factory=dict)
    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    _waivers: list[Any] = field(default_factory=list)
    verdict: str | None = None

    def sides(self) -> tuple[Any, Any]:
        from harness.check import Side

        if self._sides is None:
            self._sides = (Side.open(self.old_spec), Side.open(self.new_spec))
        return self._sides

    def waivers(self) -> Any:
        from harness.check import load_waivers_option

        if not self._waivers:
            self._waivers.append(load_waivers_option(self.waivers_path))
        return self._waivers[0]

    def run(self, machine: str, guest: str) -> Any:
        """The report Run of (machine, guest): captured and compared on first use."""
        from harness.check import fingerprint_pair, make_run, pair_of

        key = (machine, guest)
        if key not in self.runs:
            old, new = self.sides()
            outcome = fingerprint_pair(old, new, machine, guest, self.accel, access=self.access)
            self.runs[key] = make_run(outcome, old, new, self.waivers())
            self.pairs[key] = pair_of(outcome)
            self.seconds[key] = round(outcome.seconds, 3)
        return self.runs[key]

    @property
    def report_html(self) -> Path:
        return self.report_dir / "index.html"


_SESSION_KEY = pytest.StashKey[QabiSession]()
_PARTS_KEY = pytest.StashKey[list[dict[str, Any]]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "qabi_run(machine, guest): one guest ABI run")
    if getattr(config.option, "dist", "no") == "load":
        # plain `-n N` (xdist's default --dist load) would split one run's category items across
        # workers and boot it twice; keep each run's items on one worker instead
        config.option.dist = "loadgroup"
    if getattr(config, "workerinput", {}).get("qabi_loadgroup"):
        config.option.loadgroup = True   # the worker tags each item with its group, as xdist does
    old = _setting(config, "baseline") or _setting(config, "qemu-old")
    report = Path(str(_setting(config, "report")))
    if not report.is_absolute():
        report = Path(str(config.invocation_params.dir)) / report
    session = QabiSession(
        old_spec=str(old), new_spec=str(_setting(config, "qemu-new")), machines=list(_setting(config, "machine")),
        guests=list(_setting(config, "guest")), accel=str(_setting(config, "accel")),
        waivers_path=_setting(config, "waivers"), fail_on=str(_setting(config, "fail-on")), report_dir=report,
        access=_access(config))
    config.stash[_SESSION_KEY] = session
    config.stash[_PARTS_KEY] = []


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: tell each worker whether the plugin switched to --dist loadgroup."""
    node.workerinput["qabi_loadgroup"] = node.config.getvalue("dist") == "loadgroup"


def _access(config: pytest.Config) -> Any:
    from harness.capture import GuestAccess
    from harness.errors import QabiError

    def text(key: str) -> str | None:
        value = _setting(config, key)
        return None if value is None else str(value)

    try:
        return GuestAccess.from_options(str(_setting(config, "transport")), text("guest-image"), text("ssh-user"),
                                        text("ssh-key"), text("ssh-host-key"))
    except QabiError as exc:
        pytest.exit(f"qabi: {exc}", returncode=2)


def qabi_session(config: pytest.Config) -> QabiSession:
    return config.stash[_SESSION_KEY]


def _matrix(session: QabiSession) -> list[tuple[str, str, str]]:
    from harness.check import expand_guests, expand_machines

    machines = session.machines
    if "common" in machines:
        old, new = session.sides()
        machines = expand_machines(machines, old, new)
    return [(m, g, c) for m in machines for g in expand_guests(session.guests) for c in names()]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "qabi_case" not in metafunc.fixturenames:
        return
    session = qabi_session(metafunc.config)
    # the category items of one run stay together, on one xdist worker (--dist loadgroup): the
    # mark is set here, at collection, so that xdist sees it whatever order the hooks run in
    cases = [pytest.param(case, marks=pytest.mark.xdist_group(f"{case[0]}-{case[1]}"), id="-".join(case))
             for case in _matrix(session)]
    metafunc.parametrize("qabi_case", cases, scope="function")


class CaptureFailed(Exception):
    """A run that could not be decided: shown as a pytest error, never a pass or a skip."""


@pytest.fixture
def qabi_run(request: pytest.FixtureRequest, qabi_case: tuple[str, str, str]) -> Any:
    session = qabi_session(request.config)
    machine, guest, _category = qabi_case
    run = session.run(machine, guest)
    if run.status == "unsupported":
        pytest.skip(f"{machine} {guest}: {run.reason}")
    if run.status == "error":
        raise CaptureFailed(f"{machine} {guest}: could not decide: {run.reason}")
    return run


def failure_message(session: QabiSession, run: Any, category: str) -> str | None:
    """The drifts of `category` that fail the item, grouped by device, most severe first."""
    from harness.drift.model import at_least

    drifts = [d for d in run.comparison.drifts if d.category == category]
    failing = [d for d in drifts if d.waived is None and at_least(d.severity, session.fail_on)]
    if not failing:
        return None
    lines = [(f"{len(failing)} unwaived {category} drift(s) at or above '{session.fail_on}' on {run.machine}, "
             f"guest {run.guest} ({session.old_spec} -> {session.new_spec}):")]
    by_subject: dict[str, list[Any]] = {}
    for d in failing:
        by_subject.setdefault(d.subject, []).append(d)
    for subject, items in by_subject.items():
        lines.append(f"  {subject}")
        for d in items:
            if getattr(d, "detail", None):
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
    return "\n".join(lines)


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + "…"


# -- the report, merged across xdist workers ---------------------------------------------------------
def _runs_json(session: QabiSession) -> list[dict[str, Any]]:
    from harness.report import RunSet, to_json

    if not session.runs:
        return []
    keys = list(session.runs)
    data = to_json(RunSet(tuple(session.runs[k] for k in keys), session.fail_on),  # type: ignore[arg-type]
                   details=True, fingerprints=[session.pairs[k] for k in keys],
                   run_seconds=[session.seconds[k] for k in keys])
    return list(data["runs"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    state = qabi_session(config)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the runs to the controller
        workeroutput["qabi_runs"] = json.dumps(_runs_json(state))
        return
    runs = _unique_runs(_runs_json(state) + config.stash[_PARTS_KEY])
    if runs:
        _write_report(state, runs)
        if state.verdict == "error":  # same exit status as `qabi check`: 2 = could not decide
            session.exitstatus = 2


def pytest_testnodedown(node: Any, error: Any) -> None:
    output = getattr(node, "workeroutput", {}) or {}
    if "qabi_runs" in output:
        node.config.stash[_PARTS_KEY].extend(json.loads(output["qabi_runs"]))


def _unique_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (machine, guest): a run done by two workers (e.g. `--dist each`) counts once."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        seen.setdefault((run["machine"], run["guest"]), run)
    return list(seen.values())


def _write_report(state: QabiSession, runs: list[dict[str, Any]]) -> None:
    order = {(m, g): i for i, (m, g, _c) in enumerate(_matrix(state))}
    runs.sort(key=lambda r: order.get((r["machine"], r["guest"]), len(order)))
    verdict = _verdict(runs, state.fail_on)
    from harness import __version__
    from harness.report import validate_report
    from harness.report.html import write_html

    data: dict[str, Any] = {
        "schema": 1, "verdict": verdict, "runs": runs, "fail_on": state.fail_on, "qabi_version": __version__,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "seconds": round(time.time() - state.started, 3)}
    images = {img for r in runs for img in (r.get("image") or {}).values() if img}
    if len(images) == 1:
        data["image"] = images.pop()
    validate_report(data)
    state.report_dir.mkdir(parents=True, exist_ok=True)
    (state.report_dir / "qabi.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    write_html(data, state.report_html)
    state.verdict = verdict


def _verdict(runs: list[dict[str, Any]], fail_on: str) -> str:
    from harness.drift.model import at_least

    if any(r["status"] == "error" for r in runs) or not any(r["status"] == "compared" for r in runs):
        return "error"
    for r in runs:
        if any(d["waived"] is None and at_least(d["severity"], fail_on) for d in r["drifts"]):
            return "drift"
    return "unchanged"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if getattr(config, "workeroutput", None) is not None:
        return
    state = qabi_session(config)
    verdict = state.verdict
    if verdict is None:
        return
    terminalreporter.section("qabi")
    words = {"unchanged": "ABI unchanged", "drift": "ABI DRIFT", "error": "could not decide"}
    terminalreporter.write_line(f"qabi verdict: {words.get(verdict, verdict)} "
                                f"({state.old_spec} -> {state.new_spec}, fail on {state.fail_on})")
    terminalreporter.write_line(f"qabi report: {state.report_html}")
