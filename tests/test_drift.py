"""The drift engine: one change in a fingerprint is exactly one drift, with the right subject,
path and severity; every row of the severity policy is exercised."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from drift_samples import (
    as_in,
    base_fingerprint,
    cpuid_vcpus,
    pci_with_caps,
    refresh_config,
    replace_in_table,
    set_cpuid_bit,
    synthetic_fingerprint,
)

from harness.categories import get as get_category
from harness.categories import guest_names
from harness.drift import (
    Comparison,
    Drift,
    compare,
    policy_markdown,
    policy_rows,
    rule_for,
    severity_for,
)
from harness.drift.impact import facet_of
from harness.errors import QabiError


@pytest.fixture
def base() -> dict[str, Any]:
    return base_fingerprint()


@pytest.fixture
def synthetic() -> dict[str, Any]:
    return synthetic_fingerprint()


def one(old: dict[str, Any], new: dict[str, Any]) -> Drift:
    """The single drift between two fingerprints (fails, listing them, if there is not exactly one)."""
    drifts = compare(old, new).drifts
    assert len(drifts) == 1, "\n".join(f"{d.severity} {d.subject} | {d.path} | {d.summary}" for d in drifts)
    return drifts[0]


def drifts_of(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    return sorted((d.subject, d.path, d.severity) for d in compare(old, new).drifts)


def _edit(fp: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(fp)


# -- the whole ----------------------------------------------------------------------------------

def test_identical_fingerprints_have_no_drift(base):
    comparison = compare(base, copy.deepcopy(base))
    assert comparison.drifts == ()
    assert comparison.verdict() == "unchanged"
    # a serial capture does not collect registers and fw_cfg: left out, with a note each
    not_collected = base["source"].get("not_collected", [])
    assert comparison.categories == tuple(n for n in guest_names() if n not in not_collected)
    assert len([n for n in comparison.notes if "not compared" in n]) == len(not_collected)


@pytest.mark.parametrize("category", [n for n in guest_names() if get_category(n).collected is None])
def test_missing_category_is_an_error_never_unchanged(base, category):
    """A category every capture has (registers and fw_cfg, which only the firmware transport reads,
    are left out with a note instead: tests/test_fp_registers.py)."""
    partial = _edit(base)
    del partial[category]
    with pytest.raises(QabiError, match=category):
        compare(base, partial)
    with pytest.raises(QabiError, match=category):
        compare(partial, base)


def test_other_schema_is_an_error(base):
    newer = _edit(base)
    newer["schema"] = 2
    with pytest.raises(QabiError, match="schema 2"):
        compare(base, newer)
    del newer["schema"]
    with pytest.raises(QabiError, match="schema"):
        compare(newer, base)


def test_malformed_entry_is_an_error(base):
    broken = _edit(base)
    key = next(iter(broken["pci"]))
    broken["pci"][key] = "not an object"
    with pytest.raises(QabiError, match=re.escape(key)):
        compare(base, broken)


def test_one_category_needs_only_that_category(base):
    new = _edit(base)
    del new["cpuid"]
    _, entry = next(iter(new["pci"].items()))
    entry["revision"] = "0x7f"
    comparison = compare(base, new, categories=("pci",))
    assert [d.path for d in comparison.drifts] == ["revision"]
    assert comparison.categories == ("pci",)


def test_only_restricts_a_comparison_to_one_category(base):
    new = _edit(base)
    next(iter(new["pci"].values()))["revision"] = "0x7f"
    new["smbios"]["1/0"]["fields"]["uuid"] = "00000000-0000-0000-0000-000000000000"
    comparison = compare(base, new)
    assert {d.category for d in comparison.drifts} == {"pci", "smbios"}
    assert [d.category for d in comparison.only("pci").drifts] == ["pci"]
    assert comparison.only("cpuid").drifts == ()
    assert comparison.only("cpuid").verdict() == "unchanged"
    with pytest.raises(ValueError):
        compare(base, new, categories=("pci",)).only("acpi")


def test_unknown_category_is_an_error(base):
    with pytest.raises(QabiError, match="unknown category"):
        compare(base, base, categories=("usb",))


def test_drifts_are_sorted_most_severe_first_then_subject_and_path(base):
    new = _edit(base)
    new["smbios"]["1/0"]["fields"]["uuid"] = "00000000-0000-0000-0000-000000000000"      # break
    new["acpi"]["DSDT"]["header"]["creator_revision"] = 99                              # info
    new["acpi"]["DSDT"]["header"]["oem_revision"] = 99                                  # warn
    key, _ = pci_with_caps(new)
    new["pci"][key]["revision"] = "0x7f"                                                # break
    drifts = compare(base, new).drifts
    assert [d.severity for d in drifts] == ["break", "break", "warn", "info"]
    assert drifts[0].subject.startswith("pci ") and drifts[1].subject.startswith("smbios ")
    assert drifts == tuple(sorted(drifts, key=Drift.sort_key))


def test_nothing_is_reported_twice(synthetic):
    """Many changes at once: every (subject, path) appears once."""
    new = _edit(synthetic)
    set_cpuid_bit(new, 1, 0, "ecx", 15, 1, "pdcm")
    rng = new["pci"]["0000:00:05.0"]
    rng["capabilities"].insert(0, {"id": "0x11", "name": "MSI-X", "offset": "0x98",
                                   "fields": {"table_size": 2, "table_bar": 1, "pba_bar": 1}})
    rng["bars"].insert(1, {"index": 1, "kind": "mem32", "prefetchable": False, "size": 4096})
    refresh_config(rng)
    replace_in_table(new["acpi"]["DSDT"], "Return (0x0F)", "Return (0x0B)")
    new["acpi"]["DSDT"]["header"]["length"] += 1
    new["smbios"]["1/0"]["fields"]["version"] = "pc-q35-8.0"
    new["smbios"]["1/0"]["strings"][2] = "pc-q35-8.0"
    drifts = compare(synthetic, new).drifts
    pairs = [(d.subject, d.path) for d in drifts]
    assert len(pairs) == len(set(pairs))
    assert ("cpuid leaf 0x1 ecx bit 15 (pdcm)", "ecx[15]") in pairs
    assert not any(p == "header.length" for _, p in pairs)
    assert not any(p.startswith("strings") for _, p in pairs)


# -- PCI -----------------------------------------------------------------------------------------

def test_pci_device_removed_is_one_drift(base):
    new = _edit(base)
    key, entry = pci_with_caps(new)
    del new["pci"][key]
    drift = one(base, new)
    assert (drift.category, drift.path, drift.change, drift.severity) == ("pci", "(device)", "removed", "break")
    assert drift.subject == f"pci {key} {entry['label']}"
    assert drift.old == entry["label"] and drift.new is None


def test_pci_device_added_is_one_drift(base):
    old = _edit(base)
    key, _ = pci_with_caps(old)
    del old["pci"][key]
    drift = one(old, base)
    assert (drift.path, drift.change, drift.severity, drift.key) == ("(device)", "added", "break", key)


@pytest.mark.parametrize(("field", "value"), [("vendor", "0x1b36"), ("device", "0x1041"),
                                              ("subsystem_vendor", "0x8086"), ("subsystem_device", "0x1100"),
                                              ("revision", "0x01")])
def test_pci_identity_field_is_one_break(base, field, value):
    new = _edit(base)
    key, entry = pci_with_caps(new)
    if entry[field] == value:
        value = "0x0bad"
    entry[field] = value
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.new, drift.severity) == (
        f"pci {key} {base['pci'][key]['label']}", field, value, "break")


def test_pci_class_prog_if_is_break(base):
    new = _edit(base)
    _, entry = pci_with_caps(new)
    entry["class"]["prog_if"] = "0x7f"
    entry["class"]["name"] = "something else"   # names follow from the ids: not a drift of their own
    drift = one(base, new)
    assert (drift.path, drift.severity) == ("class.prog_if", "break")


def test_pci_header_type_is_break(base):
    new = _edit(base)
    _, entry = pci_with_caps(new)
    entry["header_type"] = 2
    assert (one(base, new).path, one(base, new).severity) == ("header_type", "break")


def test_pci_bar_size_is_break(base):
    new = _edit(base)
    _, entry = next((k, e) for k, e in sorted(new["pci"].items()) if e.get("bars"))
    bar = entry["bars"][-1]
    bar["size"] *= 2
    drift = one(base, new)
    assert (drift.path, drift.severity) == (f"bars[{bar['index']}].size", "break")
    assert drift.new == drift.old * 2


def test_pci_bar_added_is_one_drift_not_a_shift(base):
    """Inserting a BAR before others shifts list positions; BARs are matched by index."""
    new = _edit(base)
    _, entry = next((k, e) for k, e in sorted(new["pci"].items()) if len(e.get("bars") or []) >= 1)
    used = {b["index"] for b in entry["bars"]}
    free = min(i for i in range(6) if i not in used)
    entry["bars"].insert(0, {"index": free, "kind": "mem32", "prefetchable": False, "size": 4096})
    entry["bars"].sort(key=lambda b: b["index"])
    drift = one(base, new)
    assert (drift.path, drift.change, drift.severity) == (f"bars[{free}]", "added", "break")


def test_pci_rom_size_is_warn(base):
    """Was break: only the firmware runs an option ROM, no guest driver reacts (policy row doc)."""
    new = _edit(base)
    _, entry = pci_with_caps(new)
    entry["rom_size"] = 1 << 20
    assert (one(base, new).path, one(base, new).severity) == ("rom_size", "warn")


def test_pci_interrupt_pin_is_warn(base):
    new = _edit(base)
    _, entry = pci_with_caps(new)
    entry["interrupt_pin"] = "INTD" if entry.get("interrupt_pin") != "INTD" else "INTC"
    assert (one(base, new).path, one(base, new).severity) == ("interrupt_pin", "warn")


def test_pci_bridge_bus_number_is_info(base):
    new = _edit(base)
    key = next(iter(sorted(new["pci"])))
    old = _edit(base)
    for fp, secondary in ((old, 1), (new, 2)):
        fp["pci"][key]["bridge"] = {"primary": 0, "secondary": secondary, "subordinate": 2, "io_window": True}
    drift = one(old, new)
    assert (drift.path, drift.severity) == ("bridge.secondary", "info")


def test_capability_added_is_one_drift_naming_it(synthetic):
    """virtio-rng gaining MSI-X (QEMU 7.2.0): the capability and its BAR, nothing else."""
    new = _edit(synthetic)
    rng = new["pci"]["0000:00:05.0"]
    rng["capabilities"].insert(0, {"id": "0x11", "name": "MSI-X", "offset": "0x98",
                                   "fields": {"table_size": 2, "table_bar": 1, "pba_bar": 1}})
    rng["bars"].insert(1, {"index": 1, "kind": "mem32", "prefetchable": False, "size": 4096})
    refresh_config(rng)
    drifts = compare(synthetic, new).drifts
    assert [(d.path, d.change, d.severity) for d in drifts] == [
        ("bars[1]", "added", "break"), ("capabilities[MSI-X]", "added", "break")]
    cap = drifts[1]
    assert cap.subject == "pci 0000:00:05.0 [1af4:1005] Virtio RNG"
    assert cap.new == "MSI-X capability at 0x98"
    assert cap.summary == "added: MSI-X capability at 0x98"


def test_capability_removed_is_one_drift(base):
    new = _edit(base)
    _, entry = pci_with_caps(new)
    removed = entry["capabilities"].pop(0)
    drift = one(base, new)
    assert (drift.path, drift.change, drift.severity) == (f"capabilities[{removed['name']}]", "removed", "break")
    assert drift.old == f"{removed['name']} capability at {removed['offset']}"


def test_capabilities_are_matched_by_id_not_position(base):
    new = _edit(base)
    _, entry = pci_with_caps(new)
    entry["capabilities"].reverse()
    assert compare(base, new).drifts == ()


def test_capability_size_is_break_and_offset_is_warn(synthetic):
    new = _edit(synthetic)
    net = new["pci"]["0000:00:03.0"]
    net["capabilities"][0]["fields"]["table_size"] = 9
    drift = one(synthetic, new)
    assert (drift.path, drift.old, drift.new, drift.severity) == (
        "capabilities[MSI-X].fields.table_size", 3, 9, "break")
    new = _edit(synthetic)
    new["pci"]["0000:00:03.0"]["capabilities"][0]["offset"] = "0xa0"
    drift = one(synthetic, new)
    assert (drift.path, drift.severity) == ("capabilities[MSI-X].offset", "warn")


def test_repeated_capabilities_are_matched_by_occurrence(synthetic):
    new = _edit(synthetic)
    caps = new["pci"]["0000:00:05.0"]["capabilities"]
    caps[2]["fields"]["length"] = 99
    drift = one(synthetic, new)
    assert drift.path == "capabilities[Vendor Specific#3].fields.length"
    assert drift.severity == "warn"


def test_unexplained_config_byte_is_one_warn(base):
    new = _edit(base)
    _, entry = pci_with_caps(new)
    cfg = bytearray(bytes.fromhex(entry["config_hex"]))
    offset = max(int(c["offset"], 16) for c in entry["capabilities"]) + 8
    offset = offset if offset < 0x100 else 0x41
    cfg[offset] ^= 0xFF
    entry["config_hex"] = cfg.hex()
    drift = one(base, new)
    assert (drift.path, drift.severity) == ("config_hex", "warn")
    assert f"{offset:#05x}" in drift.detail


def test_config_header_bytes_are_allocation_not_drift(base):
    new = _edit(base)
    for entry in new["pci"].values():
        cfg = bytearray(bytes.fromhex(entry["config_hex"]))
        cfg[0x10:0x14] = b"\x00\x10\xfe\xfe"   # a BAR address
        cfg[0x3C] = 0x0B                       # interrupt line
        entry["config_hex"] = cfg.hex()
    assert compare(base, new).drifts == ()


def test_config_bytes_of_a_drifted_capability_are_explained(synthetic):
    new = _edit(synthetic)
    net = new["pci"]["0000:00:03.0"]
    net["capabilities"][0]["fields"]["table_size"] = 9
    refresh_config(net)
    assert [d.path for d in compare(synthetic, new).drifts] == ["capabilities[MSI-X].fields.table_size"]


# -- CPUID ---------------------------------------------------------------------------------------

def test_named_bit_on_every_vcpu_is_one_drift(base):
    """CPUID PDCM appearing (QEMU 10.1 on old machine types) is one drift, named by bit."""
    old = _edit(base)
    set_cpuid_bit(old, 1, 0, "ecx", 15, 0, "pdcm")
    new = _edit(old)
    set_cpuid_bit(new, 1, 0, "ecx", 15, 1, "pdcm")
    drift = one(old, new)
    assert (drift.subject, drift.path, drift.old, drift.new, drift.severity) == (
        "cpuid leaf 0x1 ecx bit 15 (pdcm)", "ecx[15]", 0, 1, "break")


def test_named_bit_on_one_vcpu_names_the_vcpu(base):
    vcpus = cpuid_vcpus(base)
    if len(vcpus) < 2:
        pytest.skip("needs two vCPUs")
    old = _edit(base)
    set_cpuid_bit(old, 1, 0, "ecx", 15, 0, "pdcm")
    new = _edit(old)
    set_cpuid_bit(new, 1, 0, "ecx", 15, 1, "pdcm", vcpus={vcpus[-1]})
    drift = one(old, new)
    assert drift.subject == f"cpuid vCPU {vcpus[-1]} leaf 0x1 ecx bit 15 (pdcm)"
    assert drift.key == f"{vcpus[-1]}/0x00000001/0x0"


def test_unnamed_bits_are_reported_per_register(base):
    old = _edit(base)
    new = _edit(base)
    for entry in new["cpuid"].values():
        if (entry["leaf"], entry["subleaf"]) == (1, 0):
            names = entry.get("features", {}).get("ecx", {})
            bit = next(b for b in (2, 5, 6, 8, 10, 11, 14, 16, 18) if str(b) not in names
                       and not int(entry["ecx"], 16) >> b & 1)
            entry["ecx"] = f"{int(entry['ecx'], 16) | 1 << bit:#010x}"
    drift = one(old, new)
    assert (drift.subject, drift.path, drift.severity) == ("cpuid leaf 0x1", "ecx", "warn")
    assert "changed bits" in drift.detail


def test_decoded_field_change_is_one_drift_with_registers_in_detail(base):
    new = _edit(base)
    for entry in new["cpuid"].values():
        if (entry["leaf"], entry["subleaf"]) == (1, 0):
            entry["fields"]["stepping"] = (entry["fields"]["stepping"] + 1) % 16
            eax = int(entry["eax"], 16)
            entry["eax"] = f"{(eax & ~0xF) | ((eax + 1) & 0xF):#010x}"
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == ("cpuid leaf 0x1", "fields.stepping", "break")
    assert "eax" in drift.detail


def test_vendor_is_break(base):
    new = _edit(base)
    for entry in new["cpuid"].values():
        if (entry["leaf"], entry["subleaf"]) == (0, 0):
            entry["fields"]["vendor"] = "GenuineIntel" if entry["fields"]["vendor"] != "GenuineIntel" else "AuthenticAMD"
    drift = one(base, new)
    assert (drift.path, drift.severity) == ("fields.vendor", "break")


def test_apic_id_is_topology_per_vcpu_warn(base):
    vcpus = cpuid_vcpus(base)
    new = _edit(base)
    for entry in new["cpuid"].values():
        if (entry["leaf"], entry["subleaf"]) == (1, 0) and entry["vcpu"] == vcpus[-1]:
            entry["fields"]["apic_id"] = entry["fields"].get("apic_id", 0) + 4
            entry["ebx"] = f"{int(entry['ebx'], 16) + (4 << 24) & 0xFFFFFFFF:#010x}"
    drift = one(base, new)
    suffix = "" if len(vcpus) == 1 else f"vCPU {vcpus[-1]} "
    assert (drift.subject, drift.path, drift.severity) == (f"cpuid {suffix}leaf 0x1", "fields.apic_id", "warn")


def test_leaf_added_on_every_vcpu_is_one_drift(base):
    new = _edit(base)
    for vcpu in cpuid_vcpus(base):
        new["cpuid"][f"{vcpu}/0x00000007/0x7"] = {
            "label": "leaf 0x7 subleaf 0x7", "vcpu": vcpu, "leaf": 7, "subleaf": 7, "eax": "0x00000000",
            "ebx": "0x00000000", "ecx": "0x00000000", "edx": "0x00000001", "features": {}, "fields": {},
            "per_vcpu": []}
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.change, drift.severity) == (
        "cpuid leaf 0x7 subleaf 0x7", "", "added", "break")


def test_cache_leaf_is_warn(base):
    new = _edit(base)
    for entry in new["cpuid"].values():
        if entry["leaf"] == 4 and entry["subleaf"] == 0:
            entry["eax"] = f"{int(entry['eax'], 16) ^ 1 << 30:#010x}"
    drift = one(base, new)
    assert (drift.path, drift.severity) == ("eax", "warn")
    assert drift.subject == "cpuid leaf 0x4 subleaf 0x0"


def test_topology_leaf_is_warn(base):
    new = _edit(base)
    for entry in new["cpuid"].values():
        if entry["leaf"] == 0xB and entry["subleaf"] == 0:
            entry["ebx"] = f"{int(entry['ebx'], 16) ^ 1 << 8:#010x}"
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == ("cpuid leaf 0xb subleaf 0x0", "ebx", "warn")


def test_vcpu_removed_is_one_drift(base):
    vcpus = cpuid_vcpus(base)
    if len(vcpus) < 2:
        pytest.skip("needs two vCPUs")
    new = _edit(base)
    new["cpuid"] = {k: e for k, e in new["cpuid"].items() if e["vcpu"] != vcpus[-1]}
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.change, drift.severity) == (
        f"cpuid vCPU {vcpus[-1]}", "", "removed", "break")


# -- ACPI ----------------------------------------------------------------------------------------

def _innermost_device_with_method(table: dict[str, Any]) -> tuple[str, str]:
    """(path, a method statement) of a leaf device; the statement occurs once in the table."""
    devices = table["devices"]
    for path in sorted(devices, key=lambda p: -p.count(".")):
        if any(other.startswith(path + ".") for other in devices):
            continue
        for body in (devices[path].get("methods") or {}).values():
            for line in body.splitlines():
                line = line.strip()
                if line not in ("{", "}") and not line.startswith("Method") and table["asl"].count(line) == 1:
                    return path, line
    pytest.skip("no leaf device with a unique method statement")


def test_method_body_change_is_attributed_to_the_innermost_device(base):
    new = _edit(base)
    table = new["acpi"]["DSDT"]
    path, line = _innermost_device_with_method(table)
    changed = line + "  // and changed"
    assert replace_in_table(table, line, changed) >= 2
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == (f"acpi DSDT {path}", "asl", "warn")
    assert any(ln.startswith("+") and changed in ln for ln in drift.detail.splitlines())
    assert any(ln.startswith("-") and line in ln for ln in drift.detail.splitlines())
    assert drift.detail.startswith(f"--- old DSDT {path}")


def test_hid_change_is_one_break_not_also_an_asl_change(base):
    new = _edit(base)
    table = new["acpi"]["DSDT"]
    path, hid = next((p, d["hid"]) for p, d in sorted(table["devices"].items())
                     if isinstance(d.get("hid"), str) and table["asl"].count(f'"{d["hid"]}"') == 1)
    assert replace_in_table(table, f'"{hid}"', '"QABI0001"') == 2
    table["devices"][path]["hid"] = "QABI0001"
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.old, drift.new, drift.severity) == (
        f"acpi DSDT {path}", "hid", hid, "QABI0001", "break")


@pytest.mark.parametrize("field", ["cid", "uid"])
def test_other_identity_names_are_break(base, field):
    new = _edit(base)
    devices = new["acpi"]["DSDT"]["devices"]
    path = next(p for p, d in sorted(devices.items()) if d.get(field) is not None)
    devices[path][field] = "QABI0001"
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == (f"acpi DSDT {path}", field, "break")


def test_adr_is_warn_on_a_companion_and_info_on_a_device_with_a_hid(base):
    """Was break: _ADR identifies only nodes without _HID (policy rows `adr`)."""
    devices = base["acpi"]["DSDT"]["devices"]
    for has_hid, severity in ((False, "warn"), (True, "info")):
        path = next(p for p, d in sorted(devices.items())
                    if (d.get("hid") is not None) == has_hid and (has_hid or d.get("adr") is not None))
        new = _edit(base)
        new["acpi"]["DSDT"]["devices"][path]["adr"] = "0x00990000"
        drift = one(base, new)
        assert (drift.subject, drift.path, drift.severity) == (f"acpi DSDT {path}", "adr", severity)


def _remove_device(table: dict[str, Any], path: str) -> list[str]:
    block = table["devices"][path]["asl"]
    assert replace_in_table(table, block, "") >= 2
    gone = [p for p in table["devices"] if p == path or p.startswith(path + ".")]
    for p in gone:
        del table["devices"][p]
    return gone


def test_device_removed_is_one_drift_with_its_children_folded(base):
    new = _edit(base)
    table = new["acpi"]["DSDT"]
    devices = table["devices"]
    path = next(p for p in sorted(devices) if any(o.startswith(p + ".") for o in devices)
                and as_in(table["asl"], devices[p]["asl"]) is not None and p.count(".") >= 2)
    gone = _remove_device(table, path)
    assert len(gone) >= 2
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.change, drift.severity) == (
        f"acpi DSDT {path}", "(device)", "removed", "break")
    assert all(child in drift.detail for child in gone if child != path)


def test_leaf_device_added_is_one_drift(base):
    old = _edit(base)
    table = old["acpi"]["DSDT"]
    devices = table["devices"]
    path = next(p for p in sorted(devices, key=lambda p: -p.count("."))
                if not any(o.startswith(p + ".") for o in devices) and devices[p].get("asl")
                and as_in(table["asl"], devices[p]["asl"]) is not None)
    _remove_device(table, path)
    drift = one(old, base)
    assert (drift.subject, drift.path, drift.change, drift.severity) == (
        f"acpi DSDT {path}", "(device)", "added", "break")


def test_asl_outside_devices_is_one_table_drift(base):
    new = _edit(base)
    table = new["acpi"]["DSDT"]
    head, brace, rest = table["asl"].partition("{\n")
    table["asl"] = head + brace + "    Name (QABI, One)\n" + rest
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == ("acpi DSDT", "asl", "warn")
    assert "+    Name (QABI, One)" in drift.detail


def test_header_length_follows_the_asl(base):
    new = _edit(base)
    table = new["acpi"]["DSDT"]
    head, brace, rest = table["asl"].partition("{\n")
    table["asl"] = head + brace + "    Name (QABI, One)\n" + rest
    table["header"]["length"] += 7
    assert [d.path for d in compare(base, new).drifts] == ["asl"]
    only_length = _edit(base)
    only_length["acpi"]["DSDT"]["header"]["length"] += 7
    assert one(base, only_length).path == "header.length"


@pytest.mark.parametrize(("table", "path", "value", "severity"), [
    ("DSDT", "header.oem_revision", 99, "warn"),
    ("DSDT", "header.revision", 2, "warn"),
    ("DSDT", "header.checksum_valid", False, "info"),
    ("DSDT", "header.creator_revision", 0x20230628, "info"),
    ("DSDT", "header.creator_id", "INTL", "info"),
])
def test_acpi_header_fields(base, table, path, value, severity):
    new = _edit(base)
    new["acpi"][table]["header"][path.split(".")[1]] = value
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.new, drift.severity) == (f"acpi {table}", path, value, severity)


def test_acpi_pointer_is_info(base):
    new = _edit(base)
    table = next(k for k, t in sorted(new["acpi"].items()) if t.get("pointers"))
    name = next(iter(new["acpi"][table]["pointers"]))
    new["acpi"][table]["pointers"][name] = "0x12345678"
    drift = one(base, new)
    assert (drift.path, drift.severity) == (f"pointers.{name}", "info")


def test_acpi_table_removed_is_one_break(base):
    new = _edit(base)
    key = next(k for k in sorted(new["acpi"]) if k not in ("DSDT", "FACP"))
    del new["acpi"][key]
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.change, drift.severity) == (f"acpi {key}", "", "removed", "break")


def test_acpi_decoded_field_is_warn(base):
    new = _edit(base)
    key = next(k for k, t in sorted(new["acpi"].items()) if t.get("fields"))
    field = next(iter(new["acpi"][key]["fields"]))
    new["acpi"][key]["fields"][field] = "changed"
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == (f"acpi {key}", f"fields.{field}", "warn")


# -- SMBIOS --------------------------------------------------------------------------------------

def test_system_uuid_is_break(base):
    new = _edit(base)
    new["smbios"]["1/0"]["fields"]["uuid"] = "00000000-0000-0000-0000-000000000000"
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == (
        f"smbios {base['smbios']['1/0']['label']}", "fields.uuid", "break")


def test_identity_string_change_is_one_drift(base):
    new = _edit(base)
    entry = new["smbios"]["1/0"]
    old_value = entry["fields"]["manufacturer"]
    entry["fields"]["manufacturer"] = "Qabi Inc."
    entry["strings"] = ["Qabi Inc." if s == old_value else s for s in entry["strings"]]
    drift = one(base, new)
    assert (drift.path, drift.old, drift.new, drift.severity) == (
        "fields.manufacturer", old_value, "Qabi Inc.", "break")


def test_bios_release_date_is_warn(base):
    new = _edit(base)
    new["smbios"]["0/0"]["fields"]["release_date"] = "01/01/2030"
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == (
        f"smbios {base['smbios']['0/0']['label']}", "fields.release_date", "warn")


def test_handle_is_info(base):
    new = _edit(base)
    key = next(k for k, s in sorted(new["smbios"].items()) if "handle" in s and not k.startswith(("1/", "2/", "3/")))
    new["smbios"][key]["handle"] = "0x7777"
    drift = one(base, new)
    assert (drift.path, drift.severity) == ("handle", "info")


def test_structure_added_is_one_drift_and_entry_point_counts_follow(base):
    new = _edit(base)
    new["smbios"]["17/9"] = {"label": "type 17 Memory Device", "type": 17, "handle": "0x1109",
                             "fields": {"size": 1 << 30}, "strings": []}
    new["smbios"]["entry_point"]["structure_count"] = (new["smbios"]["entry_point"].get("structure_count") or 0) + 1
    new["smbios"]["entry_point"]["table_length"] = new["smbios"]["entry_point"]["table_length"] + 40
    drift = one(base, new)
    assert (drift.path, drift.change, drift.severity) == ("", "added", "warn")
    assert drift.subject.startswith("smbios type 17 Memory Device")


def test_baseboard_removed_is_break(base):
    old = _edit(base)
    old["smbios"].setdefault("2/0", {"label": "type 2 Baseboard Information", "type": 2, "handle": "0x0200",
                                     "fields": {"manufacturer": "QEMU"}, "strings": ["QEMU"]})
    new = _edit(old)
    del new["smbios"]["2/0"]
    drift = one(old, new)
    assert (drift.subject, drift.path, drift.change, drift.severity) == (
        f"smbios {old['smbios']['2/0']['label']}", "", "removed", "break")


def test_entry_point_kind_is_break(base):
    new = _edit(base)
    ep = new["smbios"]["entry_point"]
    ep["kind"] = "3.x" if ep["kind"] == "2.x" else "2.x"
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == ("smbios entry point", "kind", "break")


def test_processor_field_is_warn(base):
    new = _edit(base)
    key = next(k for k in sorted(new["smbios"]) if k.startswith("4/"))
    new["smbios"][key]["fields"]["max_speed"] = 4242
    drift = one(base, new)
    assert (drift.path, drift.severity) == ("fields.max_speed", "warn")


# -- e820 ----------------------------------------------------------------------------------------

def test_range_end_is_one_break(base):
    new = _edit(base)
    ranges = new["e820"]["map"]["ranges"]
    ranges[-1]["end"] = hex(int(ranges[-1]["end"], 16) - 0x1000)
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.severity) == ("e820", f"ranges[{len(ranges) - 1}].end", "break")


def test_range_inserted_is_one_drift_not_a_shift(base):
    new = _edit(base)
    ranges = new["e820"]["map"]["ranges"]
    ranges.insert(1, {"start": "0x9fc00", "end": "0x9fc01", "type": "Qabi"})
    drift = one(base, new)
    assert (drift.subject, drift.path, drift.change, drift.severity) == ("e820", "ranges[1]", "added", "break")
    assert drift.new == "0x9fc00-0x9fc01 Qabi"


# -- the policy table ----------------------------------------------------------------------------

@pytest.mark.parametrize("rule", policy_rows(), ids=[f"{r.category}:{r.entry}:{r.path or '-'}" for r in policy_rows()])
def test_every_policy_row_decides_its_example(rule):
    category = rule.category if rule.category != "*" else "future-category"
    entry, path = rule.example
    assert rule_for(category, entry, path, rule.example_facet) is rule, f"an earlier row shadows {rule}"
    assert rule.doc and rule.severity in ("break", "warn", "info")


def test_policy_rows_are_distinct():
    keys = [(r.category, r.entry, r.path, r.facet) for r in policy_rows()]
    assert len(keys) == len(set(keys))


def test_policy_markdown_has_one_line_per_row():
    lines = policy_markdown().splitlines()
    assert len(lines) == len(policy_rows()) + 2
    assert all(r.doc.replace("|", "\\|") in "\n".join(lines) for r in policy_rows())


@pytest.mark.parametrize(("category", "entry", "path", "severity"), [
    ("pci", "0000:00:03.0", "capabilities[MSI-X].fields.table_size", "break"),
    ("pci", "0000:00:03.0", "capabilities[Vendor Specific#2].fields.length", "warn"),
    ("pci", "0000:00:03.0", "extended_capabilities[AER]", "break"),
    ("pci", "0000:00:03.0", "bars[4]", "break"),
    ("pci", "0000:00:03.0", "class", "break"),
    ("cpuid", "0x80000006/0x0", "", "warn"),
    ("cpuid", "0x00000001/0x0", "fields.family", "break"),
    ("cpuid", "0x00000001/0x0", "fields.ext_model", "break"),
    ("smbios", "1/0", "fields.product_name", "break"),
    ("smbios", "1/0", "fields.wake_up_type", "warn"),
    ("smbios", "4/0", "fields.l1_cache_handle", "info"),
    ("smbios", "0/0", "fields.bios_version", "warn"),
    ("acpi", "SSDT1", "header.checksum", "info"),
    ("e820", "map", "", "break"),
])
def test_policy_spot_checks(category, entry, path, severity):
    assert severity_for(category, entry, path) == severity


def test_comparison_verdict_thresholds(base):
    new = _edit(base)
    new["acpi"]["DSDT"]["header"]["creator_revision"] = 7     # info only
    comparison = compare(base, new)
    assert isinstance(comparison, Comparison)
    assert comparison.verdict() == "unchanged"
    assert comparison.verdict("warn") == "unchanged"
    assert comparison.verdict("info") == "drift"
    assert comparison.counts()["info"] == 1


# -- real captures across QEMU releases ------------------------------------------------------------

def _real_pair(old: str, new: str) -> tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]:
    from drift_samples import DATA, decode_partial

    paths = [DATA / "captures" / name for name in (old, new)]
    if not all((p / "manifest.json").is_file() for p in paths):
        pytest.skip("real captures not present")
    decoded = [decode_partial(p) for p in paths]
    if decoded[0] is None or decoded[1] is None:
        pytest.skip("no decoder available yet")
    return decoded[0][0], decoded[1][0], decoded[0][1]


REAL_PAIRS = [(f"qemu-{a}-{profile}", f"qemu-{b}-{profile}")
              for profile in ("pc-i440fx-5.2-linux-virtio", "pc-q35-5.2-windows", "pc-q35-5.2-minimal",
                              "pc-i440fx-5.2-legacy")
              for a, b in (("5.2", "7.2"), ("7.2", "10.0"), ("10.0", "11.1"))]


@pytest.mark.parametrize(("old", "new"), REAL_PAIRS, ids=[f"{o}..{n.split('-')[1]}" for o, n in REAL_PAIRS])
def test_real_captures_compare_cleanly(old, new):
    """Real decoded captures of one machine type under two QEMU releases: every drift is named
    once, has a policy severity, and the same capture compared with itself has none."""
    a, b, categories = _real_pair(old, new)
    assert compare(a, copy.deepcopy(a), categories=categories).drifts == ()
    drifts = compare(a, b, categories=categories).drifts
    pairs = [(d.subject, d.path) for d in drifts]
    assert len(pairs) == len(set(pairs))
    for d in drifts:
        assert d.severity == severity_for(d.category, _policy_entry(d), d.path, facet_of(d, a, b))
        assert d.subject.startswith(d.category)


def _policy_entry(drift: Drift) -> str:
    """The entry key the policy saw, from the drift's key (`DSDT \\_SB.X`, `1/0x00000001/0x0`)."""
    if drift.category == "acpi":
        return drift.key.split(" ", 1)[0]
    if drift.category == "cpuid":
        return "vcpu" if drift.key.startswith("vcpu") else "/".join(drift.key.split("/")[-2:])
    return drift.key


def test_real_isa_bridge_renamed_in_7_2_is_two_device_drifts_not_a_cascade():
    """QEMU 7.2 renamed the i440fx ISA bridge's ACPI device (\\_SB.PCI0.ISA → S08): one drift for
    the device that went away and one for the device that came, their children folded in."""
    a, b, categories = _real_pair("qemu-5.2-pc-i440fx-5.2-linux-virtio", "qemu-7.2-pc-i440fx-5.2-linux-virtio")
    if "acpi" not in categories:
        pytest.skip("no ACPI decoder yet")
    drifts = compare(a, b, categories=("acpi",)).drifts
    devices = {(d.subject, d.change) for d in drifts if d.path == "(device)"}
    assert ("acpi DSDT \\_SB.PCI0.ISA", "removed") in devices
    assert ("acpi DSDT \\_SB.PCI0.S08", "added") in devices
    assert not any(d.subject.startswith(("acpi DSDT \\_SB.PCI0.ISA.", "acpi DSDT \\_SB.PCI0.S08.")) for d in drifts)
    removed = next(d for d in drifts if d.subject == "acpi DSDT \\_SB.PCI0.ISA")
    assert removed.severity == "break" and "\\_SB.PCI0.ISA.RTC" in removed.detail


def test_readme_policy_table_is_generated_from_the_policy():
    """If the README carries the policy table (between `<!-- policy:begin -->` and
    `<!-- policy:end -->`), it is exactly `policy_markdown()`."""
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if "<!-- policy:begin -->" not in text:
        pytest.skip("README has no generated policy table")
    block = text.split("<!-- policy:begin -->", 1)[1].split("<!-- policy:end -->", 1)[0]
    assert block.strip() == policy_markdown().strip(), "regenerate with harness.drift.policy_markdown()"


# -- bits the guest's drivers program are run-time state (harness/drift/pci_state.py) ---------------
def _real_windows_q35() -> dict[str, Any]:
    """A real capture with MSI, MSI-X, PCIe and ICH9 LPC/AHCI/HDA functions (QEMU 7.2, q35, windows)."""
    from conftest import DATA

    from harness.fingerprint import fingerprint_capture

    return fingerprint_capture(DATA / "captures" / "qemu-7.2-pc-q35-5.2-windows")


def _set(entry: dict[str, Any], offset: int, value: int, mask: int = 0xFF) -> None:
    cfg = bytearray(bytes.fromhex(entry["config_hex"]))
    cfg[offset] = (cfg[offset] & ~mask) | (value & mask)
    entry["config_hex"] = cfg.hex()


def _cap(entry: dict[str, Any], cap_id: str) -> int:
    return next(int(c["offset"], 16) for c in entry["capabilities"] if c["id"] == cap_id)


def test_what_drivers_program_is_not_drift():
    old = _real_windows_q35()
    new = copy.deepcopy(old)
    by_id = {(e["vendor"], e["device"]): e for e in new["pci"].values()}
    e1000e, ahci, lpc = by_id[("0x8086", "0x10d3")], by_id[("0x8086", "0x2922")], by_id[("0x8086", "0x2918")]
    _set(e1000e, _cap(e1000e, "0x11") + 3, 0x80, 0xC0)            # MSI-X enable (e1000e)
    msi = _cap(ahci, "0x05")
    _set(ahci, msi + 2, 0x01, 0x01)                               # MSI enable, address and data (ahci)
    for i, byte in enumerate(b"\x00\x10\xe0\xfe\x00\x00\x00\x00\x29\x00"):
        _set(ahci, msi + 4 + i, byte)
    _set(ahci, 0x92, 0x3F)                                        # AHCI port control/status
    _set(lpc, 0x60, 0x0B)                                         # PIRQA routing (the DSDT's _SRS)
    assert compare(old, new).drifts == ()


def test_read_only_bits_next_to_driver_bits_still_drift():
    old = _real_windows_q35()
    new = copy.deepcopy(old)
    lpc = next(e for e in new["pci"].values() if (e["vendor"], e["device"]) == ("0x8086", "0x2918"))
    _set(lpc, 0x64, 0x5A)                    # beside the PIRQ routing registers, not one of them
    drift = one(old, new)
    assert (drift.path, drift.severity) == ("config_hex", "warn") and "0x064" in drift.detail
    new = copy.deepcopy(old)
    e1000e = next(e for e in new["pci"].values() if e["device"] == "0x10d3")
    off = _cap(e1000e, "0x11")
    _set(e1000e, off + 3, 0x04, 0x07)        # MSI-X table size's high bits share the byte with enable
    drift = one(old, new)
    assert drift.path == "config_hex" and f"{off + 3:#05x}" in drift.detail
    new = copy.deepcopy(old)
    e1000e = next(e for e in new["pci"].values() if e["device"] == "0x10d3")
    off = _cap(e1000e, "0x10") + 8
    _set(e1000e, off, 0x1F)                  # PCIe device control: no guest driver is shown to write it
    drift = one(old, new)
    assert drift.path == "config_hex" and f"{off:#05x}" in drift.detail
