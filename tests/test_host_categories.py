"""Host-side categories (migration, vmstate, props) without QEMU: the registry flag, compare()'s
rules for data only one side has, and the vmstate direction rules on a real `-dump-vmstate`
excerpt (QEMU 7.2.22, pc-i440fx-7.2) edited the way releases change a section."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from drift_samples import DATA, base_fingerprint

from harness.categories import get, guest_names, host_names
from harness.drift import compare
from harness.drift.host import compare_props, compare_vmstate
from harness.errors import QabiError
from harness.fingerprint.host import decode_vmstate

EXCERPT = DATA / "vmstate" / "qemu-7.2.22-pc-i440fx-7.2-excerpt.json"


@pytest.fixture
def vmstate(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "vmstate.json").write_bytes(EXCERPT.read_bytes())
    return decode_vmstate(tmp_path)


def _paths(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    return {d.path: d.severity for d in compare_vmstate(old, new)}


def test_registry_marks_the_host_side_categories():
    assert host_names() == ("migration", "vmstate", "props", "hyperv")
    assert all(not get(n).host_side for n in guest_names()) and "pci" in guest_names()


def test_same_schema_has_no_drift(vmstate):
    assert "vmschkmachine" not in vmstate
    assert compare_vmstate(vmstate, copy.deepcopy(vmstate)) == []


def test_versioned_field_breaks_only_rollback(vmstate):
    new = copy.deepcopy(vmstate)
    desc = new["mc146818rtc"]["Description"]
    desc["version_id"] = 4
    desc["Fields"].append({"field": "extra", "version_id": 4, "field_exists": False, "size": 4})
    assert _paths(vmstate, new) == {"breaks-new-to-old:version_id": "warn",
                                    "breaks-new-to-old:fields.extra": "warn"}


def test_unversioned_field_breaks_both_ways(vmstate):
    new = copy.deepcopy(vmstate)
    new["mc146818rtc"]["Description"]["Fields"].append(
        {"field": "extra", "version_id": 0, "field_exists": False, "size": 4})
    assert _paths(vmstate, new) == {"breaks-both:fields.extra": "warn"}


def test_raised_minimum_version_breaks_both_ways(vmstate):
    new = copy.deepcopy(vmstate)
    new["mc146818rtc"]["Description"].update(version_id=4, minimum_version_id=4)
    drifts = _paths(vmstate, new)
    assert drifts == {"breaks-both:version_id": "warn", "breaks-both:minimum_version_id": "warn"}


def test_size_change_breaks_both_ways(vmstate):
    new = copy.deepcopy(vmstate)
    new["mc146818rtc"]["Description"]["Fields"][0]["size"] = 256
    assert _paths(vmstate, new) == {"breaks-both:fields.cmos_data": "warn"}


def test_subsections_break_the_direction_that_does_not_know_them(vmstate):
    new = copy.deepcopy(vmstate)
    subs = new["mc146818rtc"]["Description"]["Subsections"]
    subs.append({"name": "mc146818rtc/new", "version_id": 1, "minimum_version_id": 1, "Fields": []})
    assert _paths(vmstate, new) == {"breaks-new-to-old:subsections.mc146818rtc/new": "warn"}
    assert _paths(new, vmstate) == {"breaks-old-to-new:subsections.mc146818rtc/new": "warn"}


def test_section_of_one_build_only(vmstate):
    new = copy.deepcopy(vmstate)
    del new["e1000"]
    (drift,) = compare_vmstate(vmstate, new)   # not decided here: the migration legs decide
    assert (drift.path, drift.severity, drift.subject) == ("one-dump:(section)", "warn",
                                                          "vmstate e1000 (section e1000)")


def test_rename_and_dump_format_are_not_stream_changes(vmstate):
    """QEMU 10.0 renamed hpet's num_timers to num_timers_save and dumps `num` for arrays; a
    struct field's size is its C size. None of that is in the stream."""
    new = copy.deepcopy(vmstate)
    fields = new["mc146818rtc"]["Description"]["Fields"]
    fields[1]["field"] = "cmos_index_renamed"
    fields[0]["num"] = 128
    assert _paths(vmstate, new) == {"compatible:fields.cmos_index": "info"}
    isa = new["isa-serial"]["Description"]["Fields"]
    struct = next(f for f in isa if isinstance(f.get("Description"), dict))
    struct["size"] += 16
    assert _paths(vmstate, new) == {"compatible:fields.cmos_index": "info"}
    struct["Description"]["Fields"].append({"field": "new_reg", "version_id": 0, "field_exists": False, "size": 1})
    assert _paths(vmstate, new)[f"breaks-both:fields.{struct['field']}.fields.new_reg"] == "warn"


def test_changed_compat_property_is_named_with_both_values():
    old = {"virtio-net-pci": {"type": "virtio-net-pci", "pci": True,
                              "props": {"vectors": 4, "x-txburst": 256, "x-only-old": 1}}}
    new = copy.deepcopy(old)
    new["virtio-net-pci"]["props"].update({"vectors": 7, "x-txburst": 512, "rss": False})
    del new["virtio-net-pci"]["props"]["x-only-old"]
    got = {(d.path, d.old, d.new, d.severity) for d in compare_props(old, new)}
    assert got == {("vectors", 4, 7, "warn"), ("x-txburst", 256, 512, "warn"),
                   ("only-new.rss", None, False, "info"), ("only-old.x-only-old", 1, None, "warn")}


def test_a_devices_property_changes_fold_into_one_entry_per_row():
    """The vCPU model's new properties (bookworm -> trixie: 190 of them) are one drift with a count and
    the list folded, not one line each; what different policy rows decide stays apart."""
    cpu = "/machine/unattached/device[0]"
    old = {cpu: {"type": "Nehalem-x86_64-cpu", "pci": False, "props": {"x-a": 1, "x-b": 2, "level": 11}}}
    new = copy.deepcopy(old)
    new[cpu]["props"].update({f"feat{i:03}": False for i in range(190)})
    new[cpu]["props"].update({"x-a": 3, "x-b": 4})
    drifts = compare_props(old, new)
    assert [(d.path, d.severity, d.change) for d in drifts] == [
        ("only-new.feat000 (+189 more)", "info", "added"), ("x-a (+1 more)", "warn", "changed")]
    added, compat = drifts
    assert added.new == {f"feat{i:03}": False for i in range(190)} and added.old is None
    assert added.detail is not None and added.detail.startswith("190 properties: feat000, feat001")
    assert (compat.old, compat.new) == ({"x-a": 1, "x-b": 2}, {"x-a": 3, "x-b": 4})
    from harness.drift.model import Comparison
    from harness.report.text import render_text

    text = render_text(Comparison(tuple(drifts), categories=("props",)))
    assert text.count("\n") < 25 and "(+189 more)" in text and "190 properties: feat000" in text


def test_hyperv_is_the_vcpus_hv_properties_and_props_leaves_them_out():
    from harness.drift.host import compare_hyperv

    cpu = "Skylake-Client-v4-x86_64-cpu"
    old = {cpu: {"type": cpu, "pci": False, "props": {"hv-spinlocks": 0xFFFFFFFF, "hv-relaxed": False, "level": 13}},
           "e1000e": {"type": "e1000e", "pci": True, "props": {"hv-not-a-cpu": 1}}}
    new = copy.deepcopy(old)
    new[cpu]["props"].update({"hv-spinlocks": 0x1FFF, "level": 22})
    new["e1000e"]["props"]["hv-not-a-cpu"] = 2
    assert [(d.category, d.path, d.severity) for d in compare_hyperv(
        {cpu: old[cpu]}, {cpu: new[cpu]})] == [("hyperv", "hv-spinlocks", "warn")]
    assert {d.path for d in compare_props(old, new)} == {"level", "hv-not-a-cpu"}


def test_host_side_category_on_one_side_only_is_an_error(vmstate):
    base = base_fingerprint()
    with_host = copy.deepcopy(base)
    with_host["vmstate"] = vmstate
    assert "vmstate" not in compare(base, copy.deepcopy(base)).categories    # neither: not compared
    assert "vmstate" in compare(with_host, copy.deepcopy(with_host)).categories
    for old, new in ((with_host, base), (base, with_host)):
        with pytest.raises(QabiError, match="vmstate"):
            compare(old, new)


def test_excerpt_is_real_dump_vmstate_output():
    data = json.loads(EXCERPT.read_text())
    assert data["vmschkmachine"] == {"Name": "pc-i440fx-7.2"} and data["e1000"]["Name"] == "e1000"
