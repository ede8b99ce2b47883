"""The extension points: a category is one registry entry, a transport is one module found by
name, and the pytest plugin runs the same pipeline as `qabi check` (pytester, no QEMU)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, REPO

from harness.categories import Category, guest_names, names, registered
from harness.drift.common import make_drift
from harness.drift.policy import PolicyRule, rule_for
from harness.errors import DecodeError

CAPTURES = DATA / "captures"
BOOKWORM = next((REPO / "fingerprints").glob("debian-bookworm-*"))
TRIXIE = next((REPO / "fingerprints").glob("debian-trixie-*"))


# -- a category defined only here ------------------------------------------------------------------
def _decode_memsize(raw: Path) -> dict[str, Any]:
    """Total RAM the memory map gives the guest, from the same raw files as e820."""
    base = raw / "sys/firmware/memmap"
    if not base.is_dir():
        raise DecodeError("sys/firmware/memmap", 0, "no memory map")
    total = 0
    for entry in base.iterdir():
        if (entry / "type").read_text().strip() == "System RAM":
            total += int((entry / "end").read_text(), 16) - int((entry / "start").read_text(), 16) + 1
    return {"ram": {"label": "usable RAM", "bytes": total}}


def _compare_memsize(old: dict[str, Any], new: dict[str, Any]) -> list[Any]:
    if old["ram"]["bytes"] == new["ram"]["bytes"]:
        return []
    return [make_drift("memsize", "ram", "memsize usable RAM", "bytes", old["ram"]["bytes"], new["ram"]["bytes"])]


MEMSIZE = Category("memsize", "Usable RAM", ("sys/firmware/memmap",), _decode_memsize, _compare_memsize,
                   (PolicyRule("memsize", "bytes", "break", "Usable RAM: what the guest sizes itself by.",
                               example=("ram", "bytes")),))


def test_a_category_defined_in_a_test_flows_through_every_stage(tmp_path):
    from harness.drift import compare
    from harness.fingerprint import fingerprint_capture
    from harness.report import Run, RunSet, to_json, validate_report
    from harness.report.html import write_reports

    old_cap = CAPTURES / "qemu-7.2-pc-q35-5.2-windows"
    # the same capture with 1 MiB less RAM in its last System RAM range: a real capture, edited
    new_cap = tmp_path / "new"
    shutil.copytree(CAPTURES / "qemu-7.2-pc-q35-5.2-windows", new_cap)
    ram = [p for p in (new_cap / "raw/sys/firmware/memmap").iterdir() if (p / "type").read_text().strip() == "System RAM"]
    last = max(ram, key=lambda p: int((p / "start").read_text(), 16))
    end = int((last / "end").read_text(), 16) - (1 << 20)
    (last / "end").write_text(f"0x{end:x}\n")
    manifest = json.loads((new_cap / "manifest.json").read_text())
    import hashlib

    manifest["files"][f"raw/sys/firmware/memmap/{last.name}/end"] = hashlib.sha256(
        (last / "end").read_bytes()).hexdigest()
    (new_cap / "manifest.json").write_text(json.dumps(manifest))

    with registered(MEMSIZE):
        assert names()[-1] == "memsize"
        old_fp, new_fp = fingerprint_capture(old_cap), fingerprint_capture(new_cap)
        assert new_fp["memsize"]["ram"]["bytes"] == old_fp["memsize"]["ram"]["bytes"] - (1 << 20)
        comparison = compare(old_fp, new_fp)
        mine = [d for d in comparison.drifts if d.category == "memsize"]
        assert [(d.subject, d.path, d.severity) for d in mine] == [("memsize usable RAM", "bytes", "break")]
        assert rule_for("memsize", "ram", "bytes") is MEMSIZE.policy[0]
        runset = RunSet((Run.from_fingerprints(old_fp, new_fp, comparison),))
        data = to_json(runset, details=True)
        validate_report(data)  # the schema's category enum comes from the registry
        assert "memsize" in data["runs"][0]["categories"]
        assert any(d["category"] == "memsize" for d in data["runs"][0]["drifts"])
        _json, html = write_reports(runset, tmp_path / "report")
        assert "Usable RAM" in html.read_text() and "memsize usable RAM" in html.read_text()
    assert "memsize" not in names()
    from harness.report import validate_report as validate

    with pytest.raises(Exception, match="memsize"):
        validate(data)  # once unregistered, the category is unknown to the schema again


def test_the_five_category_names_are_listed_in_one_module():
    """Only harness/categories.py spells out the category list (a tuple or list of the names)."""
    builtin = {"pci", "cpuid", "acpi", "smbios", "e820"}
    listed_in = set()
    for path in (REPO / "harness").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if len(values & builtin) >= 3:
                    listed_in.add(path.relative_to(REPO).as_posix())
    assert listed_in == set()  # the registry lists them as entries, one Category(...) each
    text = (REPO / "harness/categories.py").read_text()
    assert all(f'Category("{n}"' in text for n in builtin)
    defs = [p for p in (REPO / "harness").rglob("*.py") if "def norm_path" in p.read_text()]
    assert len(defs) <= 1
    assert "_verdict" not in (REPO / "harness/plugin.py").read_text()
    assert "_validate_by_hand" not in (REPO / "harness/report/jsonreport.py").read_text()
    assert "jsonschema" in (REPO / "pyproject.toml").read_text()


# -- a transport defined only here -------------------------------------------------------------------
@pytest.mark.integration
def test_a_transport_defined_in_a_test_plugs_into_capture_by_name(tmp_path):
    from harness.capture import capture, load_capture, plan_capture
    from harness.guest.profile import load_profile
    from harness.plan import GuestAccess
    from harness.qemu import resolve
    from harness.transport import firmware
    from harness.transport.base import Session, Setup, TransportResult, registered_transport

    seen: list[Session] = []

    class Console2:
        """The firmware hand-off reader (the quickest boot), once more, under its own name; it
        counts what it launched."""

        name = "console2"
        needs_nic = False

        def setup(self, plan: Any, workdir: Path, console_log: Path) -> Setup:
            return firmware.TRANSPORT.setup(plan, workdir, console_log)

        def run(self, session: Session) -> TransportResult:
            seen.append(session)
            result = firmware.TRANSPORT.run(session)
            return TransportResult(result.records, result.info, result.timings, details={"launched": len(seen)})

    with registered_transport(Console2()):
        plan = plan_capture(resolve("system"), load_profile("minimal"), "pc-q35-7.2",
                            access=GuestAccess(transport="console2"))
        cap = capture(plan, tmp_path / "cap")
    assert len(seen) == 1 and seen[0].argv[0].endswith(("qemu-system-x86_64", "ld-linux-x86-64.so.2", "unshare"))
    assert "-accel" in seen[0].argv and "-qmp" in seen[0].argv   # the launcher built the whole argv
    manifest = load_capture(cap.path).manifest
    assert manifest["transport"] == "console2" and manifest["console2"] == {"launched": 1}
    from harness.errors import QabiError

    with pytest.raises(QabiError, match="unknown transport 'console2'"):   # unregistered: a plan refuses it
        plan_capture(resolve("system"), load_profile("minimal"), "pc-q35-7.2", access=GuestAccess(transport="console2"))


# -- the pytest plugin, on recorded baselines (no QEMU) -------------------------------------------------
pytest_plugins = ["pytester"]


def _run_harness(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    ini = pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_abi=(REPO / "harness/test_guest_abi.py").read_text())
    with pytest.MonkeyPatch.context() as mp:   # this checkout's harness, not another one installed
        mp.setenv("PYTHONPATH", str(REPO))
        return pytester.runpytest_subprocess("-p", "harness.plugin", "-p", "no:cacheprovider", "-c", str(ini),
                                             "--rootdir", str(pytester.path), *args)


def test_plugin_same_baseline_is_unchanged(pytester):
    result = _run_harness(pytester, "--baseline", str(BOOKWORM), "--qemu-new", str(BOOKWORM),
                          "--machine", "pc-q35-7.2", "--guest", "minimal", "--report", "rep")
    # the recorded baseline predates registers and fw_cfg: those two items skip, "not collected"
    result.assert_outcomes(passed=len(guest_names()) - 2, skipped=2)
    result.stdout.fnmatch_lines(["*qabi verdict: ABI unchanged*"])
    data = json.loads((pytester.path / "rep" / "qabi.json").read_text())
    assert data["verdict"] == "unchanged" and [r["guest"] for r in data["runs"]] == ["minimal"]
    assert result.ret == 0


def test_plugin_drift_fails_the_category_items_and_writes_the_same_report_as_check(pytester, tmp_path):
    from harness.check import RunRequest, run_check

    result = _run_harness(pytester, "--baseline", str(BOOKWORM), "--qemu-new", str(TRIXIE),
                          "--machine", "pc-i440fx-7.2", "--guest", "minimal", "--report", "rep")
    assert result.ret == 1
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] >= 2
    result.stdout.fnmatch_lines(["*FAILED test_abi.py::test_guest_abi?pc-i440fx-7.2-minimal-acpi?*"])
    result.stdout.fnmatch_lines(["*qabi verdict: ABI DRIFT*"])
    plugin_json = json.loads((pytester.path / "rep" / "qabi.json").read_text())
    from harness.report import to_json

    check_json = to_json(run_check(RunRequest(str(BOOKWORM), str(TRIXIE), ("pc-i440fx-7.2",), ("minimal",))),
                         details=True)
    for data in (plugin_json, check_json):
        for run in data["runs"]:
            run.pop("seconds", None)
        data.pop("generated"), data.pop("seconds")
    assert plugin_json["verdict"] == check_json["verdict"] == "drift"
    assert plugin_json["runs"] == check_json["runs"]


def test_plugin_bad_option_is_one_line_and_exit_2(pytester):
    result = _run_harness(pytester, "--baseline", str(BOOKWORM), "--qemu-new", "debian:nosuchsuite",
                          "--machine", "pc-q35-7.2")
    assert result.ret == 2
    said = [line for line in result.stderr.lines + result.stdout.lines if "nosuchsuite" in line]
    assert len(said) == 1 and said[0].startswith(("qabi:", "Exit: qabi:")), said
    assert "Traceback" not in result.stderr.str() and "test_guest_abi" not in result.stdout.str()


def test_plugin_xdist_workers_merge_into_one_report(pytester):
    result = _run_harness(pytester, "-n", "2", "--baseline", str(BOOKWORM), "--qemu-new", str(TRIXIE),
                          "--machine", "pc-i440fx-7.2", "--machine", "pc-q35-7.2", "--guest", "minimal",
                          "--guest", "legacy", "--report", "rep")
    assert result.ret == 1
    data = json.loads((pytester.path / "rep" / "qabi.json").read_text())
    assert [(r["machine"], r["guest"]) for r in data["runs"]] == [
        ("pc-i440fx-7.2", "minimal"), ("pc-i440fx-7.2", "legacy"), ("pc-q35-7.2", "minimal"),
        ("pc-q35-7.2", "legacy")]
