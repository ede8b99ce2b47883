"""The driver-state filter (harness/drift/pci_state.py) holds only bits a guest is shown to write,
and a capture over one transport compares with a capture over another.

Real QEMU under TCG: the same build, profile and machine type read at the firmware hand-off
(`firmware`) and after the reference guest booted (`serial`)."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import pytest
from conftest import DATA

from harness.capture import plan_capture
from harness.drift import compare
from harness.drift.pci_state import byo_only, filter_rows, table_rules
from harness.fingerprint import fingerprint_capture
from harness.plan import GuestAccess

MACHINES = ("pc-i440fx-7.2", "pc-q35-7.2")
PROFILES = ("minimal", "linux-virtio", "windows", "legacy")


def _pair(spec: str, machine: str, guest: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hand-off, after boot) fingerprints; captures come from the capture cache when identical."""
    from harness.check import captured
    from harness.guest.profile import load_profile
    from harness.qemu import resolve

    build, profile = resolve(spec), load_profile(guest)
    fw, serial = (fingerprint_capture(captured(plan_capture(build, profile, machine, access=GuestAccess(transport=t))))
                  for t in ("firmware", "serial"))
    return fw, serial


def _rule(name: str) -> str:
    return name.split("+")[0]


@pytest.mark.integration
@pytest.mark.parametrize("spec", ["debian:bookworm"])
def test_every_filtered_register_is_one_the_guest_writes(spec):
    """Per table row: its hand-off value against its value after the reference guest booted, over
    4 profiles x 2 machine types. A row of the reference guest's must change somewhere; a BYO_ONLY
    row (kept for bring-your-own images' drivers) must not (else it is the guest's, not BYO's)."""
    seen: dict[str, int] = defaultdict(int)
    changed: dict[str, list[str]] = defaultdict(list)
    for machine in MACHINES:
        for guest in PROFILES:
            fw, serial = _pair(spec, machine, guest)
            assert fw["pci"].keys() == serial["pci"].keys()
            for key, entry in fw["pci"].items():
                a = bytes.fromhex(entry["config_hex"])
                b = bytes.fromhex(serial["pci"][key]["config_hex"])
                for name, offset, mask in filter_rows(entry):
                    seen[name] += 1
                    if (a[offset] ^ b[offset]) & mask:
                        changed[name].append(f"{machine} {guest} {key} {a[offset]:02x}->{b[offset]:02x}")
    guest_rows = {n for n in seen if byo_only(n) is None}
    assert sorted(n for n in guest_rows if not changed[n]) == [], "filtered, but the reference guest never writes it"
    assert sorted(n for n in seen if byo_only(n) and changed[n]) == [], "BYO_ONLY, but the reference guest writes it"
    never_seen = {r for r in table_rules() if not any(_rule(n) == r for n in seen)}
    assert sorted(r for r in never_seen if not byo_only(r + "+")) == [], "a row no run has, and no BYO reason"
    print({_rule(n) for n in changed}, "written by the reference guest")


@pytest.mark.integration
@pytest.mark.parametrize("spec", ["debian:bookworm", "debian:trixie"])
@pytest.mark.parametrize("machine", MACHINES)
def test_serial_capture_compares_with_firmware_capture(spec, machine):
    """Across transports, the same hardware compares unchanged in every category: PCI with the
    driver-state filter, CPUID on the vCPUs both read (vCPU 0) and without the bit that depends on
    the CPU mode (trixie's Nehalem: SYSCALL), with a note that says so."""
    for guest in PROFILES:
        fw, serial = _pair(spec, machine, guest)
        for old, new in ((serial, fw), (fw, serial)):
            result = compare(old, new)
            assert [(d.category, d.subject, d.path) for d in result.drifts] == [], (guest, old["source"]["transport"])
            vcpus = int(serial["source"]["profile"]["smp"]["cpus"])
            assert any(n.startswith("cpuid: compared on vCPU 0 only") for n in result.notes) == (vcpus > 1)
            side = "old" if old is serial else "new"
            not_collected = [f"{c}: not compared: the {side} capture (serial transport) did not collect it "
                             "(only the firmware transport reads it)" for c in ("registers", "fwcfg")]
            assert [n for n in result.notes if n.endswith("firmware transport reads it)")] == not_collected
            assert all(n.startswith("cpuid: compared on vCPU 0 only") or "bit 11 not compared" in n
                       for n in result.notes if n not in not_collected), result.notes


# -- no QEMU: real captured bytes -----------------------------------------------------------------

def _serial_and_handoff_view() -> tuple[dict[str, Any], dict[str, Any]]:
    """A real 2-vCPU serial capture, and the same fingerprint as a firmware capture sees CPUID
    (vCPU 0 only, source.transport firmware)."""
    serial = fingerprint_capture(DATA / "captures" / "qemu-7.2-pc-q35-5.2-windows")
    firmware = copy.deepcopy(serial)
    firmware["source"]["transport"] = "firmware"
    firmware["cpuid"] = {k: e for k, e in firmware["cpuid"].items() if int(k.split("/")[0], 0) == 0}
    assert len(firmware["cpuid"]) < len(serial["cpuid"])
    return serial, firmware


def test_cross_transport_cpuid_is_compared_on_the_common_vcpus():
    serial, firmware = _serial_and_handoff_view()
    result = compare(serial, firmware, categories=("cpuid",))
    assert result.drifts == ()
    assert result.notes == ("cpuid: compared on vCPU 0 only (read over serial: vCPU 0, 1; over firmware: vCPU 0)",)
    assert result.only("cpuid").notes == result.notes
    assert compare(serial, firmware, categories=("cpuid", "pci")).only("pci").notes == ()
    # a real change on vCPU 0 is still seen across transports
    leaf1 = next(k for k in firmware["cpuid"] if k.split("/")[1] == "0x00000001")
    firmware["cpuid"][leaf1]["ecx"] = hex(int(firmware["cpuid"][leaf1]["ecx"], 16) ^ (1 << 15))
    drifts = compare(serial, firmware, categories=("cpuid",)).drifts
    assert [(d.subject, d.path) for d in drifts] == [("cpuid leaf 0x1", "ecx")]


def test_same_transport_vcpu_loss_is_still_a_break():
    serial, firmware = _serial_and_handoff_view()
    firmware["source"]["transport"] = "serial"
    drifts = compare(serial, firmware, categories=("cpuid",)).drifts
    assert [(d.subject, d.severity) for d in drifts] == [("cpuid vCPU 1", "break")]


def test_note_is_in_the_text_and_json_reports(tmp_path):
    from harness.report import Run, RunSet, render_text, write_json
    from harness.report.jsonreport import runset_from_json

    serial, firmware = _serial_and_handoff_view()
    run = Run.from_fingerprints(serial, firmware, compare(serial, firmware))
    text = render_text(RunSet((run,)))
    assert "note: cpuid: compared on vCPU 0 only" in text
    out = tmp_path / "qabi.json"
    write_json(RunSet((run,)), str(out), details=True)
    import json

    back = runset_from_json(json.loads(out.read_text()))
    assert back.runs[0].comparison is not None and back.runs[0].comparison.notes == run.comparison.notes
