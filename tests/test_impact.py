"""Guest impact (harness/drift/impact.py): every row of the table on real captured bytes, groups of
the same change, a run's worst impact, and the must-show cases on real QEMU under TCG."""

from __future__ import annotations

import copy
import json
import stat
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA
from drift_samples import cpuid_vcpus, set_cpuid_bit

from harness.drift import IMPACT, LEVELS, Drift, compare, groups, impact_for, impact_markdown, run_impact
from harness.drift.impact import entry_of, facet_of, rule_for
from harness.drift.waivers import parse_waivers
from harness.fingerprint import fingerprint_capture

Pair = tuple[dict[str, Any], dict[str, Any]]


@cache
def _capture(name: str) -> dict[str, Any]:
    return fingerprint_capture(DATA / "captures" / name)


def real(name: str) -> dict[str, Any]:
    return copy.deepcopy(_capture(name))


WINDOWS_Q35 = "qemu-10.0-pc-q35-5.2-windows"


def _mutate(edit: Callable[[dict[str, Any]], None], base: str = WINDOWS_Q35) -> Pair:
    old = real(base)
    new = copy.deepcopy(old)
    edit(new)
    return old, new


UEFI_RAW = DATA / "uefi" / "trixie-pc-q35-9.2-win11" / "raw"


def _uefi(edit: Callable[[dict[str, Any]], None]) -> Pair:
    """The Windows capture with the uefi entries of a real OVMF capture (tests/data/uefi) on both
    sides, `edit` applied to the new side's."""
    from harness.fingerprint import uefi

    def add(fp: dict[str, Any]) -> None:
        fp["uefi"] = uefi.decode(UEFI_RAW)
        edit(fp)
    old, new = _mutate(lambda fp: add(fp))
    old["uefi"] = uefi.decode(UEFI_RAW)
    return old, new


def _hyperv_pair() -> Pair:
    cpu = {"Skylake-Client-v4-x86_64-cpu": {"type": "Skylake-Client-v4-x86_64-cpu", "pci": False,
                                            "props": {"hv-spinlocks": 4294967295, "hv-relaxed": False}}}
    old, new = _mutate(lambda fp: fp.update(hyperv=copy.deepcopy(cpu)))
    old["hyperv"] = copy.deepcopy(cpu)
    new["hyperv"]["Skylake-Client-v4-x86_64-cpu"]["props"]["hv-spinlocks"] = 8191
    return old, new


def _add_tpm2(fp: dict[str, Any]) -> None:
    from harness.fingerprint.acpi import decode_table
    from harness.fingerprint.binary import Blob

    fp["acpi"]["TPM2"] = {"label": "TPM2", **decode_table(Blob("TPM2", (UEFI_RAW / "sys/firmware/acpi/tables/TPM2")
                                                               .read_bytes()))}


def _pair(old: str, new: str) -> Pair:
    return real(old), real(new)


def _pci_of(fp: dict[str, Any], base: int) -> str:
    return next(k for k, e in sorted(fp["pci"].items()) if int(e["class"]["base"], 16) == base)


def _other_pci(fp: dict[str, Any]) -> str:
    return _pci_of(fp, 0x0C)  # serial bus controller (xHCI, SMBus): not an adapter activation hashes


def _set_pci(fp: dict[str, Any], key: str, field: str, value: Any) -> None:
    fp["pci"][key][field] = value


def _each_vcpu(fp: dict[str, Any], leaf: str, field: str, value: Any) -> None:
    for key, entry in fp["cpuid"].items():
        if key.endswith(f"/{leaf}"):
            entry["fields"][field] = value


def _drop_vcpu(fp: dict[str, Any]) -> None:
    last = cpuid_vcpus(fp)[-1]
    for key in [k for k in fp["cpuid"] if k.startswith(f"{last}/")]:
        del fp["cpuid"][key]


def _with_device(fp: dict[str, Any], want: Callable[[dict[str, Any]], bool]) -> str:
    return next(p for p, d in sorted(fp["acpi"]["DSDT"]["devices"].items()) if want(d))


def _set_device(fp: dict[str, Any], want: Callable[[dict[str, Any]], bool], field: str, value: Any) -> None:
    fp["acpi"]["DSDT"]["devices"][_with_device(fp, want)][field] = value


def _add_table(fp: dict[str, Any], key: str, like: str) -> None:
    table = copy.deepcopy(fp["acpi"][like])
    table["label"] = key
    table["header"]["signature"] = key[:4]
    fp["acpi"][key] = table


def _first_cap_field(fp: dict[str, Any]) -> None:
    key = next(k for k, e in sorted(fp["pci"].items()) if any(c["name"] == "MSI-X" for c in e["capabilities"]))
    cap = next(c for c in fp["pci"][key]["capabilities"] if c["name"] == "MSI-X")
    cap["fields"]["table_size"] += 1


def _set(path: list[str], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(fp: dict[str, Any]) -> None:
        target = fp
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return edit


# One real case per row: (old, new) and the drift (subject suffix, path) the row decides.
CASES: dict[str, tuple[Callable[[], Pair], str]] = {
    "pointers": (lambda: _mutate(_set(["acpi", "FACP", "pointers", "dsdt"], "0x1ffe0080")), "pointers.dsdt"),
    "checksums": (lambda: _mutate(_set(["acpi", "HPET", "header", "checksum_valid"], False)),
                  "header.checksum_valid"),
    "pci-adapter-presence": (lambda: _mutate(lambda fp: fp["pci"].pop(_pci_of(fp, 0x03))), "(device)"),
    "pci-presence": (lambda: _mutate(lambda fp: fp["pci"].pop(_other_pci(fp))), "(device)"),
    "pci-adapter-ids": (lambda: _mutate(lambda fp: _set_pci(fp, _pci_of(fp, 0x01), "device", "0x2923")), "device"),
    "pci-ids": (lambda: _mutate(lambda fp: _set_pci(fp, _other_pci(fp), "device", "0x0fff")), "device"),
    "pci-subsystem": (lambda: _mutate(lambda fp: _set_pci(fp, _other_pci(fp), "subsystem_device", "0x0fff")),
                      "subsystem_device"),
    "pci-revision": (lambda: _mutate(lambda fp: _set_pci(fp, _other_pci(fp), "revision", "0x7f")), "revision"),
    "pci-class": (lambda: _mutate(lambda fp: fp["pci"][_other_pci(fp)]["class"].update(prog_if="0x7f")),
                  "class.prog_if"),
    "pci-header-type": (lambda: _mutate(lambda fp: _set_pci(fp, _other_pci(fp), "header_type", 1)), "header_type"),
    "pci-rom": (lambda: _mutate(lambda fp: _set_pci(fp, _pci_of(fp, 0x02), "rom_size", 524288)), "rom_size"),
    "pci-resources": (lambda: _mutate(lambda fp: fp["pci"][_other_pci(fp)]["bars"][0].update(size=1 << 20)),
                      "bars[0].size"),
    "pci-capabilities": (lambda: _mutate(_first_cap_field), "capabilities[MSI-X].fields.table_size"),
    "pci-bus-numbers": (lambda: _bridged(), "bridge.secondary"),
    "pci-other": (lambda: _mutate(lambda fp: _set_pci(fp, _other_pci(fp), "interrupt_pin", "INTD")), "interrupt_pin"),
    "cpu-count": (lambda: _mutate(_drop_vcpu), ""),
    "cpu-brand": (lambda: _mutate(lambda fp: _each_vcpu(fp, "0x80000002/0x0", "brand_string", "Qabi CPU")),
                  "fields.brand_string"),
    "cpu-identity": (lambda: _mutate(lambda fp: _each_vcpu(fp, "0x00000001/0x0", "model", 0x55)), "fields.model"),
    "cpu-stepping": (lambda: _mutate(lambda fp: _each_vcpu(fp, "0x00000001/0x0", "stepping", 9)), "fields.stepping"),
    "cpu-other": (lambda: _mutate(lambda fp: set_cpuid_bit(fp, 0x1, 0x0, "ecx", 15, 1, "pdcm")), "ecx[15]"),
    "acpi-licensing-tables": (lambda: _mutate(lambda fp: _add_table(fp, "MSDM", "WAET")), ""),
    "acpi-oem-ids": (lambda: _mutate(_set(["acpi", "FACP", "header", "oem_id"], "QABI")), "header.oem_id"),
    "acpi-aml-table": (lambda: _mutate(lambda fp: _add_table(fp, "SSDT1", "DSDT")), ""),
    "acpi-table": (lambda: _mutate(lambda fp: fp["acpi"].pop("HPET")), ""),
    # the issue's case, real bytes both sides: QEMU 10.0 adds _ADR-only nodes for PCI functions
    # pc-i440fx-5.2 already has (00:01.1 IDE, 00:01.3 ACPI/SMBus)
    "acpi-companion": (lambda: _pair("qemu-7.2-pc-i440fx-5.2-linux-virtio", "qemu-10.0-pc-i440fx-5.2-linux-virtio"),
                       "(device)"),
    # QEMU 7.2 renamed the ISA bridge's node (\_SB.PCI0.ISA → S08) with its _HID children
    "acpi-device": (lambda: _pair("qemu-5.2-pc-i440fx-5.2-linux-virtio", "qemu-7.2-pc-i440fx-5.2-linux-virtio"),
                    "(device)"),
    "acpi-hid": (lambda: _mutate(lambda fp: _set_device(fp, lambda d: d.get("hid") == "PNP0103", "hid", "QABI0001")),
                 "hid"),
    "acpi-uid": (lambda: _mutate(lambda fp: _set_device(fp, lambda d: d.get("hid") == "PNP0501", "uid", "0x2")),
                 "uid"),
    # real bytes both sides: QEMU 10.0 dropped _ADR from \_SB.PCI0, which has _HID PNP0A03
    "acpi-adr-ignored": (lambda: _pair("qemu-7.2-pc-i440fx-5.2-linux-virtio", "qemu-10.0-pc-i440fx-5.2-linux-virtio"),
                         "adr"),
    "acpi-adr": (lambda: _mutate(lambda fp: _set_device(fp, lambda d: d.get("hid") is None and d.get("adr") == "0x20000",
                                                          "adr", "0x90000")), "adr"),
    "acpi-tooling": (lambda: _mutate(_set(["acpi", "DSDT", "header", "creator_revision"], "0x2")),
                     "header.creator_revision"),
    "acpi-other": (lambda: _pair("qemu-7.2-pc-i440fx-5.2-linux-virtio", "qemu-10.0-pc-i440fx-5.2-linux-virtio"), "asl"),
    "smbios-entry-point": (lambda: _mutate(_set(["smbios", "entry_point", "kind"], "3.x")), "kind"),
    "smbios-identity-structure": (lambda: _mutate(lambda fp: fp["smbios"].pop("3/0")), ""),
    "smbios-identity": (lambda: _mutate(_set(["smbios", "1/0", "fields", "manufacturer"], "Qabi Inc.")),
                        "fields.manufacturer"),
    "smbios-handles": (lambda: _mutate(_set(["smbios", "4/0", "handle"], "0x0401")), "handle"),
    # real bytes: SeaBIOS 1.16.2 → 1.16.3 between QEMU 7.2 and 10.0
    "smbios-bios": (lambda: _pair("qemu-7.2-pc-q35-5.2-windows", WINDOWS_Q35), "fields.bios_version"),
    "smbios-informational": (lambda: _pair("qemu-7.2-pc-q35-5.2-windows", WINDOWS_Q35), "fields.processor_id"),
    "smbios-other": (lambda: _mutate(_set(["smbios", "32/0", "fields", "boot_status"], "Hardware failure")),
                     "fields.boot_status"),
    "e820": (lambda: _mutate(lambda fp: fp["e820"]["map"]["ranges"][3].update(end="0x1ffeffff")), "ranges[3].end"),
    "acpi-tpm-presence": (lambda: _mutate(_add_tpm2), ""),
    "hyperv": (lambda: _hyperv_pair(), "hv-spinlocks"),
    "uefi-secure-boot": (lambda: _uefi(lambda fp: fp["uefi"]["secure_boot"].update(SecureBoot=0)), "SecureBoot"),
    "uefi-keys": (lambda: _uefi(lambda fp: fp["uefi"]["keys/db"]["entries"].pop()), "entries[2]"),
    "uefi-firmware": (lambda: _uefi(lambda fp: fp["uefi"]["firmware"].update(revision="0x10001")), "revision"),
    "uefi-other": (lambda: _uefi(lambda fp: fp["uefi"]["memmap"]["ranges"][1].update(start="0x7f000")),
                   "ranges[1].start"),
}


def _bridged() -> Pair:
    old = real(WINDOWS_Q35)
    new = copy.deepcopy(old)
    key = _other_pci(old)
    for fp, secondary in ((old, 1), (new, 2)):
        fp["pci"][key]["bridge"] = {"primary": 0, "secondary": secondary, "subordinate": 2}
    return old, new


def test_every_row_has_a_real_case():
    assert sorted(CASES) == sorted(r.name for r in IMPACT if r.name != "unknown")


@pytest.mark.parametrize("rule", IMPACT, ids=[r.name for r in IMPACT])
def test_every_row_decides_its_example(rule):
    category = rule.category if rule.category != "*" else "future-category"
    entry, path, facet = rule.example
    assert rule_for(category, entry, path, facet) is rule, f"an earlier row shadows {rule.name}"
    assert rule.why and rule.source and rule.windows in LEVELS and rule.linux in LEVELS[:3]
    assert (rule.windows in ("activation", "recovery")) == bool(rule.component), rule.name


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_row_on_real_captured_bytes(name):
    """The row's real case yields a drift (on the named path) that this row decides."""
    make, path = CASES[name]
    old, new = make()
    drifts = [d for d in compare(old, new).drifts if d.path == path]
    hits = [d for d in drifts if d.impact is not None and d.impact.rule == name]
    assert hits, [(d.subject, d.path, d.impact) for d in drifts]
    rule = next(r for r in IMPACT if r.name == name)
    for d in hits:
        assert (d.impact.windows, d.impact.linux, d.impact.why) == (rule.windows, rule.linux, rule.why)
        assert d.as_dict()["impact"] == {"windows": rule.windows, "linux": rule.linux, "why": rule.why}
        assert impact_for(d, facet_of(d, old, new)) == d.impact


def test_device_or_activation_impact_is_break():
    """The other direction of "break means some guest reacts": a drift on which a device appears
    or Windows activation sees a changed component is never below break."""
    for name, (make, _path) in sorted(CASES.items()):
        for d in compare(*make()).drifts:
            assert d.impact is not None
            if {d.impact.windows, d.impact.linux} & {"device", "activation", "recovery"}:
                assert d.severity == "break", (name, d.subject, d.path, d.severity)


def test_impact_markdown_has_one_line_per_row():
    from harness.drift import impact_markdown

    lines = impact_markdown().splitlines()
    assert len(lines) == len(IMPACT) + 2 and all(f"`{r.name}`" in lines[i + 2] for i, r in enumerate(IMPACT))


def test_unknown_category_gets_the_conservative_row():
    drift = Drift("vmstate", "vmstate virtio-net", "version_id", 1, 2, "warn", key="virtio-net")
    assert impact_for(drift).as_dict() == {"windows": "driver", "linux": "driver",
                                           "why": next(r.why for r in IMPACT if r.name == "unknown")}


def test_without_a_facet_acpi_device_presence_is_conservative():
    """An _ADR-only node is lowered only when the facet says so; unknown means `device`."""
    drift = Drift("acpi", "acpi DSDT \\_SB.PCI0.S09", "(device)", None, "_ADR 0x10001", "break",
                  change="added", key="DSDT \\_SB.PCI0.S09")
    assert (impact_for(drift).windows, impact_for(drift, "adr").windows) == ("device", "driver")


def test_the_issue_case_adr_companion_is_warn_not_break():
    """bookworm→trixie (7.2→10.0) on pc-i440fx: `\\_SB.PCI0.S09 (device) added: _ADR 0x10001` is a
    companion node for 00:01.1, which both sides have: no device appears, severity warn."""
    old, new = CASES["acpi-companion"][0]()
    assert "0000:00:01.1" in old["pci"] and "0000:00:01.1" in new["pci"]
    drift = next(d for d in compare(old, new).drifts if d.subject == "acpi DSDT \\_SB.PCI0.S09")
    assert (drift.path, drift.change, drift.severity) == ("(device)", "added", "warn")
    assert (drift.impact.windows, drift.impact.linux) == ("driver", "driver")
    pci0 = next(d for d in compare(old, new).drifts if d.subject == "acpi DSDT \\_SB.PCI0" and d.path == "adr")
    assert (pci0.severity, pci0.impact.windows, pci0.impact.linux) == ("info", "none", "none")


def test_every_break_has_a_guest_that_reacts():
    """On every real pair, a `break` drift's impact is at least `driver` for some guest."""
    for old, new in [("qemu-5.2-pc-i440fx-5.2-linux-virtio", "qemu-7.2-pc-i440fx-5.2-linux-virtio"),
                     ("qemu-5.2-pc-q35-5.2-windows", "qemu-7.2-pc-q35-5.2-windows"),
                     ("qemu-7.2-pc-i440fx-5.2-legacy", "qemu-10.0-pc-i440fx-5.2-legacy")]:
        for d in compare(*_pair(old, new)).drifts:
            if d.severity == "break":
                assert d.impact is not None and {d.impact.windows, d.impact.linux} != {"none"}, (d.subject, d.path)


# -- groups ----------------------------------------------------------------------------------------

def _hotplug_pair() -> Pair:
    return _pair("qemu-7.2-pc-i440fx-5.2-linux-virtio", "qemu-10.0-pc-i440fx-5.2-linux-virtio")


def test_same_dsm_rewrite_in_many_slots_is_one_group():
    drifts = compare(*_hotplug_pair()).drifts
    by_group = groups(drifts)
    assert sum(len(g.members) for g in by_group) == len(drifts)  # counting stays per drift
    biggest = max(by_group, key=lambda g: len(g.members))
    assert len(biggest.members) >= 20
    assert all(d.path == "asl" and d.group == biggest.id for d in biggest.members)
    assert biggest.subjects[:2] == ("acpi DSDT \\_SB.PCI0.S50", "acpi DSDT \\_SB.PCI0.S58")
    assert biggest.representative is biggest.members[0]
    assert len(by_group) < len(drifts) / 2


def test_group_ids_are_deterministic_and_distinguish_changes():
    first = compare(*_hotplug_pair()).drifts
    second = compare(*_hotplug_pair()).drifts
    assert [d.group for d in first] == [d.group for d in second]
    assert all(isinstance(d.group, str) and d.group for d in first)
    s09, s0b = (next(d for d in first if d.subject.endswith(n)) for n in ("S09", "S0B"))
    assert s09.group != s0b.group  # _ADR 0x10001 vs 0x10003: not the same change
    ids = {d.group: d.path for d in first}
    assert len({(d.group, d.path) for d in first}) == len(ids)  # a group never mixes paths


def test_a_waived_member_leaves_the_group():
    old, new = _hotplug_pair()
    waivers = parse_waivers('[[waiver]]\ncategory = "acpi"\nsubject = "acpi DSDT \\\\_SB.PCI0.S58"\n'
                            'path = "asl"\nreason = "accepted"\n')
    drifts = compare(old, new, waivers).drifts
    s50, s58, s60 = (next(d for d in drifts if d.subject.endswith(n)) for n in ("S50", "S58", "S60"))
    assert s50.group == s60.group != s58.group


def test_same_change_on_several_pci_devices_is_one_group():
    def edit(fp: dict[str, Any]) -> None:
        for entry in fp["pci"].values():
            entry["interrupt_pin"] = "INTD" if entry.get("interrupt_pin") == "INTA" else entry.get("interrupt_pin")
    old, new = _mutate(edit)
    drifts = compare(old, new).drifts
    assert len(drifts) >= 2 and len(groups(drifts)) == 1


# -- a run's impact -----------------------------------------------------------------------------------

def test_same_vs_same_is_none():
    fp = real(WINDOWS_Q35)
    assert run_impact(compare(fp, copy.deepcopy(fp)).drifts) == {
        "windows": {"level": "none", "components": []}, "linux": {"level": "none", "components": []}}


def test_run_impact_is_the_worst_and_names_the_activation_component():
    old, new = _mutate(_set(["smbios", "1/0", "fields", "manufacturer"], "Qabi Inc."))
    new["pci"][_other_pci(new)]["interrupt_pin"] = "INTD"
    result = run_impact(compare(old, new).drifts)
    assert result["windows"]["level"] == "activation" and result["linux"]["level"] == "driver"
    assert result["windows"]["components"] == [
        "SMBIOS system/baseboard/chassis identity: smbios type 1 System Information fields.manufacturer"]
    assert len(result["linux"]["components"]) == 2


def test_waived_drifts_do_not_count():
    old, new = _mutate(_set(["smbios", "1/0", "fields", "manufacturer"], "Qabi Inc."))
    waivers = parse_waivers('[[waiver]]\ncategory = "smbios"\nsubject = "smbios type 1*"\nreason = "rebranded"\n')
    comparison = compare(old, new, waivers)
    assert comparison.drifts[0].impact is not None and comparison.drifts[0].impact.windows == "activation"
    assert run_impact(comparison.drifts)["windows"] == {"level": "none", "components": []}


def test_shared_change_is_one_component():
    result = run_impact(compare(*_hotplug_pair()).drifts)
    assert result["linux"]["level"] == "driver"
    assert any(c.endswith("(+21 more)") for c in result["linux"]["components"]), result


def test_entry_of_strips_what_is_run_specific():
    mk = lambda cat, key: Drift(cat, "s", "p", 0, 1, "warn", key=key)
    assert entry_of(mk("acpi", "DSDT \\_SB.PCI0")) == "DSDT"
    assert entry_of(mk("cpuid", "1/0x00000001/0x0")) == "0x00000001/0x0"
    assert entry_of(mk("cpuid", "vcpu 3")) == "vcpu"
    assert entry_of(mk("smbios", "1/0")) == "1/0"


# -- the report schema ----------------------------------------------------------------------------------

def test_schema_covers_impact_and_group():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parents[1] / "harness/report/qabi-report.schema.json").read_text())
    validator = jsonschema.Draft202012Validator({"$defs": schema["$defs"], "$ref": "#/$defs/drift"})
    for d in compare(*_hotplug_pair()).drifts[:5] + compare(*CASES["smbios-identity"][0]()).drifts:
        record = {k: v for k, v in d.as_dict().items()
                  if k in ("category", "subject", "path", "old", "new", "severity", "waived", "impact", "group")}
        validator.validate(record)
    bad = {"category": "pci", "subject": "x", "path": "", "old": 1, "new": 2, "severity": "warn", "waived": None,
           "impact": {"windows": "reboot", "linux": "none", "why": ""}}
    assert list(validator.iter_errors(bad))
    assert list(validator.iter_errors({**bad, "impact": {"windows": "none", "linux": "activation", "why": ""}}))


# -- must show, on real QEMU ------------------------------------------------------------------------------

def _wrapper(tmp_path: Path, extra: str) -> Path:
    """A 'new build': the host's QEMU with extra options (a local executable as the QEMU spec)."""
    qemu = subprocess.run(["sh", "-c", "command -v qemu-system-x86_64"], capture_output=True, text=True,
                          check=False).stdout.strip()
    if not qemu:
        pytest.skip("no qemu-system-x86_64 on PATH")
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(f'#!/bin/sh\nexec {qemu} "$@" {extra}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def _checked(new_spec: str, guest: str) -> dict[str, dict[str, Any]]:
    from harness.check import RunRequest, run_check

    (run,) = run_check(RunRequest("system", new_spec, ("pc-q35-7.2",), (guest,))).runs
    assert run.status == "compared" and run.impact is not None, run.reason
    assert run.impact == run_impact(run.drifts)
    return run.impact


@pytest.mark.integration
def test_smbios_manufacturer_is_windows_activation(tmp_path):
    impact = _checked(str(_wrapper(tmp_path, "-smbios type=1,manufacturer=Qabi")), "minimal")
    assert impact["windows"]["level"] == "activation", impact
    assert impact["windows"]["components"] == [
        "SMBIOS system/baseboard/chassis identity: smbios type 1 System Information fields.manufacturer"]
    assert impact["linux"]["level"] == "driver"


@pytest.mark.integration
def test_virtio_net_vector_count_is_driver_not_activation(tmp_path):
    impact = _checked(str(_wrapper(tmp_path, "-global virtio-net-pci.vectors=7")), "linux-virtio")
    assert (impact["windows"]["level"], impact["linux"]["level"]) == ("driver", "driver"), impact
    assert any("MSI-X" in c and "table_size" in c for c in impact["windows"]["components"]), impact


@pytest.mark.integration
def test_same_build_is_none():
    impact = _checked("system", "minimal")
    assert impact == {"windows": {"level": "none", "components": []},
                      "linux": {"level": "none", "components": []}}


def test_readme_impact_table_is_generated_from_the_table():
    """The README carries the impact table between `<!-- impact:begin -->` and
    `<!-- impact:end -->`, exactly `impact_markdown()` (regenerate: python3 tests/regen_readme.py)."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert "<!-- impact:begin -->" in text and "<!-- impact:end -->" in text
    block = text.split("<!-- impact:begin -->", 1)[1].split("<!-- impact:end -->", 1)[0]
    assert block.strip() == impact_markdown().strip(), "regenerate with python3 tests/regen_readme.py"
    assert len(block.strip().splitlines()) == len(IMPACT) + 2
