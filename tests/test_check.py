"""`qabi check`, baselines and the pytest harness, end to end on real QEMU builds under TCG."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, run_qabi

pytestmark = pytest.mark.integration


def _report(path: Path) -> dict:
    from harness.report import validate_report

    data = json.loads(path.read_text())
    validate_report(data)
    return data


def test_same_build_against_itself_is_unchanged(tmp_path):
    """Every shipped profile, both machine families, each side booted afresh: zero drifts.

    Two runs at a time (--jobs 2): the report keeps the order of the runs all the same."""
    out = tmp_path / "v.json"
    done = run_qabi("check", "--old", "debian:bookworm", "--new", "debian:bookworm", "--no-reuse",
                    "--jobs", "2", "--json", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    data = _report(out)
    assert data["verdict"] == "unchanged"
    from harness.guest.profile import load_profile, machine_family, profile_names

    assert [(r["machine"], r["guest"]) for r in data["runs"]] == [   # a q35-only profile is not planned on i440fx
        (m, g) for m in ("pc-i440fx-7.2", "pc-q35-7.2") for g in profile_names()
        if machine_family(m) in load_profile(g).families]
    assert all(r["status"] == "compared" and r["drifts"] == [] for r in data["runs"])
    assert done.stdout.strip().splitlines()[-1].startswith("verdict: ")


def test_bookworm_vs_trixie_names_the_devices_once(tmp_path):
    out = tmp_path / "v.json"
    done = run_qabi("check", "--old", "debian:bookworm", "--new", "debian:trixie", "--machine", "pc-i440fx-7.2",
                    "--json", str(out), "--report", str(tmp_path / "r"))
    assert done.returncode == 1, done.stderr
    data = _report(out)
    assert data["verdict"] == "drift"
    for run in data["runs"]:
        assert run["status"] == "compared"
        keys = Counter((d["category"], d["subject"], d["path"]) for d in run["drifts"])
        assert [k for k, n in keys.items() if n > 1] == []  # nothing reported twice
        subjects = {d["subject"] for d in run["drifts"]}
        # QEMU 10.0 changed pc-i440fx-7.2's ACPI: the PCI host bridge lost _ADR, new slot devices
        assert "acpi DSDT \\_SB.PCI0" in subjects
        # ... which a guest ignores: PCI0 is identified by its _HID (was break, now info: policy row `adr`)
        assert any(d["subject"] == "acpi DSDT \\_SB.PCI0" and d["path"] == "adr" and d["severity"] == "info"
                   for d in run["drifts"])
        assert "smbios type 0 BIOS Information" in subjects  # SeaBIOS 1.16.2 -> 1.16.3
        # every ACPI drift names a table, and an AML drift the innermost device
        assert all(d["subject"].startswith("acpi ") for d in run["drifts"] if d["category"] == "acpi")
    html = (tmp_path / "r" / "index.html").read_text()
    assert "\\_SB.PCI0" in html and "DRIFT" in html


def _wrapper(tmp_path: Path, extra: str) -> Path:
    """A 'new build' that is the host's QEMU with one device property changed."""
    qemu = subprocess.run(check=False, args=["sh", "-c", "command -v qemu-system-x86_64"], capture_output=True, text=True).stdout.strip()
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(f'#!/bin/sh\nexec {qemu} "$@" {extra}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_one_changed_property_is_exactly_that_device(tmp_path):
    wrapper = _wrapper(tmp_path, "-global virtio-rng-pci.vectors=4")
    out = tmp_path / "v.json"
    done = run_qabi("check", "--old", "system", "--new", str(wrapper), "--machine", "pc-q35-7.2",
                    "--guest", "linux-virtio", "--json", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    drifts = _report(out)["runs"][0]["drifts"]
    assert {d["subject"] for d in drifts} == {"pci 0000:00:08.0 [1af4:1005] Virtio RNG"} or \
        {d["subject"].split(" [")[0] for d in drifts} == {"pci 0000:00:08.0"}, drifts
    paths = {d["path"] for d in drifts}
    assert any("MSI-X" in p and "table_size" in p for p in paths), paths
    msix = next(d for d in drifts if "table_size" in d["path"])
    assert (msix["old"], msix["new"], msix["severity"]) == (2, 4, "break")


def test_recorded_baseline_against_a_fresh_capture_is_unchanged(tmp_path):
    done = run_qabi("record", "--qemu", "debian:bookworm", "--machine", "pc-q35-7.2", "--guest", "minimal",
                    "-o", str(tmp_path / "fp"))
    assert done.returncode == 0, done.stderr
    (baseline,) = [p for p in (tmp_path / "fp").iterdir() if p.is_dir()]
    assert (baseline / "build.json").is_file() and (baseline / "pc-q35-7.2" / "minimal" / "raw.tar.xz").is_file()
    done = run_qabi("check", "--old", str(baseline), "--new", "debian:bookworm", "--machine", "pc-q35-7.2",
                    "--guest", "minimal", "--no-reuse")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unchanged" in done.stdout.strip().splitlines()[-1].lower()


def test_committed_baseline_matches_bookworm():
    baselines = [p for p in (REPO / "fingerprints").iterdir() if p.name.startswith("debian-bookworm-")]
    assert baselines, "fingerprints/ has no bookworm baseline"
    build = json.loads((baselines[0] / "build.json").read_text())["build"]
    exact = f"debian:bookworm={build['package_version']}"  # the very release that was recorded
    done = run_qabi("check", "--old", str(baselines[0]), "--new", exact, "--machine", "pc-i440fx-7.2",
                    "--guest", "windows", "--no-reuse")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


def test_unknown_machine_is_could_not_decide(tmp_path):
    out = tmp_path / "v.json"
    done = run_qabi("check", "--old", "debian:bookworm", "--new", "debian:trixie", "--machine", "pc-q35-99.0",
                    "--guest", "minimal", "--json", str(out))
    # a machine type neither side has is a typo in the plan: one line before any capture, no report
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "machine type 'pc-q35-99.0' is on neither side (debian:bookworm, debian:trixie)" in done.stderr
    assert not out.exists()


def _pytest_harness(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(check=False, args=[sys.executable, "-m", "pytest", "harness/", "-p", "no:cacheprovider",
                           "--qemu-old", "debian:bookworm", "--qemu-new", "debian:trixie",
                           "--machine", "pc-i440fx-7.2", "--guest", "minimal", "--guest", "legacy",
                           "--report", str(tmp_path / "rep"), *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=1200, stdin=subprocess.DEVNULL)


def test_pytest_harness_names_drifted_devices(tmp_path):
    done = _pytest_harness(tmp_path, "--junitxml", str(tmp_path / "j.xml"))
    assert done.returncode == 1, done.stdout[-3000:]
    out = done.stdout
    assert "test_guest_abi[pc-i440fx-7.2-minimal-acpi] FAILED" in out or \
        "FAILED harness/test_guest_abi.py::test_guest_abi[pc-i440fx-7.2-minimal-acpi]" in out
    assert "acpi DSDT \\_SB.PCI0" in out and "qabi verdict: ABI DRIFT" in out
    assert str(tmp_path / "rep" / "index.html") in out
    assert "smbios type 0 BIOS Information" in (tmp_path / "j.xml").read_text()
    data = _report(tmp_path / "rep" / "qabi.json")
    assert data["verdict"] == "drift" and len(data["runs"]) == 2
    assert "\\_SB.PCI0" in (tmp_path / "rep" / "index.html").read_text()
    # -k picks single items, as pytest users expect
    done = _pytest_harness(tmp_path, "-k", "minimal and e820")
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-2000:]


def test_pytest_harness_parallel_gives_the_same_verdicts(tmp_path):
    serial = _pytest_harness(tmp_path / "s")
    # plain -n 2: the plugin keeps each run's items on one worker (--dist loadgroup) by itself
    parallel = _pytest_harness(tmp_path / "p", "-n", "2", "-v")
    assert serial.returncode == parallel.returncode == 1

    def outcomes(folder: Path) -> dict:
        data = _report(folder / "rep" / "qabi.json")
        assert len(data["runs"]) == 2, "each (machine, guest) run is reported once"
        return {(r["machine"], r["guest"]): sorted((d["subject"], d["path"]) for d in r["drifts"]) for r in data["runs"]}

    assert outcomes(tmp_path / "s") == outcomes(tmp_path / "p")
    workers: dict[str, set[str]] = {}
    for match in re.finditer(r"\[(gw\d+)\] .*test_guest_abi\[pc-i440fx-7\.2-(\w+)-\w+\]", parallel.stdout):
        workers.setdefault(match.group(2), set()).add(match.group(1))
    assert set(workers) == {"minimal", "legacy"} and all(len(w) == 1 for w in workers.values()), workers


@pytest.mark.integration
def test_a_capture_reused_under_another_spec_is_reported_under_the_spec_asked(tmp_path):
    """The cache keys a capture by the binary, not by how the build was named: a capture made for the
    pinned spec serves the suite's spec, and the report (and a shard's merge) names the spec asked."""
    from harness.qemu import resolve

    pinned = f"debian:bookworm={resolve('debian:bookworm').package_version}"
    common = ("--new", "debian:trixie", "--machine", "pc-q35-7.2", "--guest", "minimal", "--transport", "firmware")
    specs = []
    for i, old in enumerate((pinned, "debian:bookworm")):
        done = run_qabi("check", "--old", old, *common, "--report", str(tmp_path / str(i)))
        assert done.returncode in (0, 1), done.stderr
        report = json.loads((tmp_path / str(i) / "qabi.json").read_text())
        specs.append(report["runs"][0]["old"]["spec"])
    assert specs == [pinned, "debian:bookworm"]
