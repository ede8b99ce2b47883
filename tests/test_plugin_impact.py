"""`pytest harness/` on the recorded baselines (no QEMU): failure messages say the run's guest
impact and show a change shared by many devices once; JUnit XML carries the impact."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from test_architecture import BOOKWORM, TRIXIE, _run_harness

from harness.categories import guest_names

pytest_plugins = ["pytester"]


def test_failure_message_and_junit_carry_the_impact_and_groups(pytester: pytest.Pytester) -> None:
    result = _run_harness(pytester, "--baseline", str(BOOKWORM), "--qemu-new", str(TRIXIE),
                          "--machine", "pc-i440fx-7.2", "--guest", "minimal", "--report", "rep",
                          "--junitxml", "abi.xml")
    assert result.ret == 1
    out = result.stdout.str()
    # the acpi item's failure section only: on CI (CI=true) pytest repeats the whole message in the
    # short test summary, untruncated
    acpi = out.split("test_guest_abi[pc-i440fx-7.2-minimal-acpi]", 1)[1].split("\n_", 1)[0]
    assert "  Windows impact of the run: driver (" in acpi and "  Linux impact of the run: driver (" in acpi
    # the _DSM rewrite in the 30 hotplug slots: one entry, its changed lines once
    assert "  same change in 30 devices: acpi DSDT \\_SB.PCI0.{S10, S18, " in acpi
    assert "    (shown once, for acpi DSDT \\_SB.PCI0.S10)" in acpi
    assert acpi.count("+        Local0 [Zero] = BSEL") == 1
    assert "  acpi DSDT \\_SB.PCI0.S09  [Windows driver, Linux driver]" in acpi
    assert "37 unwaived acpi drift(s)" in acpi        # counting stays per drift

    cases = ET.parse(pytester.path / "abi.xml").getroot().iter("testcase")
    props = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")} for case in cases}
    assert set(props) == {f"test_guest_abi[pc-i440fx-7.2-minimal-{c}]" for c in guest_names()}
    for case in props.values():        # every item of the run, passed or failed, carries the run's impact
        assert case["qabi_impact_windows"] == case["qabi_impact_linux"] == "driver"
        assert "acpi DSDT \\_SB.PCI0.S10 asl (+29 more)" in case["qabi_impact_windows_components"]


def test_same_baseline_records_no_impact(pytester: pytest.Pytester) -> None:
    result = _run_harness(pytester, "--baseline", str(BOOKWORM), "--qemu-new", str(BOOKWORM),
                          "--machine", "pc-q35-7.2", "--guest", "minimal", "--report", "rep", "--junitxml", "abi.xml")
    assert result.ret == 0
    for case in ET.parse(pytester.path / "abi.xml").getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props == {"qabi_impact_windows": "none", "qabi_impact_linux": "none"}
