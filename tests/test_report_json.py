"""Reports: the JSON contract (qabi-report.schema.json), the text report, and `qabi diff`'s exit codes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from drift_samples import base_fingerprint, pci_with_caps, set_cpuid_bit

from harness.drift import compare, parse_waivers
from harness.errors import QabiError
from harness.report import (
    SCHEMA_PATH,
    Run,
    RunSet,
    escape_controls,
    render_text,
    report_schema,
    to_json,
    validate_report,
)


@pytest.fixture
def pair() -> tuple[dict[str, Any], dict[str, Any]]:
    old = base_fingerprint()
    set_cpuid_bit(old, 1, 0, "ecx", 15, 0, "pdcm")
    new = copy.deepcopy(old)
    set_cpuid_bit(new, 1, 0, "ecx", 15, 1, "pdcm")                              # break
    new["acpi"]["DSDT"]["header"]["oem_revision"] = 77                          # warn
    new["acpi"]["DSDT"]["header"]["creator_revision"] = 77                      # info
    return old, new


def _runset(old: dict[str, Any], new: dict[str, Any], fail_on: str = "warn", waivers: str | None = None) -> RunSet:
    comparison = compare(old, new, parse_waivers(waivers) if waivers else None)
    return RunSet((Run.from_fingerprints(old, new, comparison),), fail_on=fail_on)  # type: ignore[arg-type]


def test_schema_file_is_a_valid_json_schema():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_PATH.read_text()))
    assert report_schema()["properties"]["schema"] == {"const": 1}


def test_drift_report_follows_the_contract(pair):
    old, new = pair
    data = to_json(_runset(old, new))
    validate_report(data)
    assert list(data) == ["schema", "verdict", "runs"]
    assert data["schema"] == 1 and data["verdict"] == "drift"
    run = data["runs"][0]
    assert list(run) == ["machine", "guest", "old", "new", "status", "reason", "drifts", "impact"]
    assert (run["machine"], run["guest"], run["status"], run["reason"]) == (
        old["source"]["machine"], old["source"]["guest"], "compared", None)
    assert run["old"] == old["source"]["build"]
    assert [d["severity"] for d in run["drifts"]] == ["break", "warn", "info"]
    first = dict(run["drifts"][0])
    impact, group = first.pop("impact"), first.pop("group")
    assert first == {"category": "cpuid", "subject": "cpuid leaf 0x1 ecx bit 15 (pdcm)",
                     "path": "ecx[15]", "old": 0, "new": 1, "severity": "break", "waived": None}
    assert (impact["windows"], impact["linux"]) == ("driver", "driver") and impact["why"].startswith("Feature bits")
    assert isinstance(group, str) and len(group) == 12
    assert run["impact"] == {"windows": {"level": "driver", "components": [
        "cpuid leaf 0x1 ecx bit 15 (pdcm) ecx[15]", "acpi DSDT header.oem_revision"]},
        "linux": {"level": "driver", "components": [
        "cpuid leaf 0x1 ecx bit 15 (pdcm) ecx[15]", "acpi DSDT header.oem_revision"]}}
    json.dumps(data)   # JSON-ready


def test_verdict_follows_fail_on(pair):
    old, new = pair
    assert to_json(_runset(old, new, "break"))["verdict"] == "drift"
    only_info = copy.deepcopy(old)
    only_info["acpi"]["DSDT"]["header"]["creator_revision"] = 5
    assert to_json(_runset(old, only_info, "warn"))["verdict"] == "unchanged"
    assert to_json(_runset(old, only_info, "info"))["verdict"] == "drift"


def test_waived_drifts_carry_their_reason(pair):
    old, new = pair
    waivers = '[[waiver]]\ncategory = "*"\nsubject = "*"\nreason = "all accepted"\nscope = "all"\n'
    data = to_json(_runset(old, new, waivers=waivers))
    validate_report(data)
    assert data["verdict"] == "unchanged"
    assert {d["waived"] for d in data["runs"][0]["drifts"]} == {"all accepted"}


def test_error_and_unsupported_runs():
    compared = Run.from_fingerprints(base_fingerprint(), base_fingerprint(),
                                     compare(base_fingerprint(), base_fingerprint()))
    unsupported = Run(machine="pc-i440fx-2.0", guest="windows", status="unsupported",
                      reason="QEMU 5.2 has no device 'virtio-sound-pci'")
    errored = Run.failed("capture incomplete: raw/dev/cpu/0/cpuid missing", base_fingerprint())
    # a run that was not compared never lets the verdict be "unchanged"
    assert to_json(RunSet((compared, unsupported)))["verdict"] == "error"
    data = to_json(RunSet((compared, unsupported, errored)))
    validate_report(data)
    assert data["verdict"] == "error"
    assert [r["status"] for r in data["runs"]] == ["compared", "unsupported", "error"]
    assert data["runs"][2]["reason"].startswith("capture incomplete")
    assert data["runs"][2]["drifts"] == []
    # Nothing compared at all is never "unchanged".
    assert to_json(RunSet((unsupported,)))["verdict"] == "error"
    assert to_json(RunSet(()))["verdict"] == "error"
    assert RunSet(()).exit_code == 2


def test_run_records_are_checked():
    with pytest.raises(ValueError):
        Run(machine="m", guest="g")                          # compared without a comparison
    with pytest.raises(ValueError):
        Run(machine="m", guest="g", status="error")          # error without a reason
    with pytest.raises(ValueError):
        RunSet((), fail_on="fatal")                          # type: ignore[arg-type]


def test_schema_accepts_real_output_with_impact_and_groups():
    """Real captures (QEMU 7.2 vs 10.0): every drift carries its impact and group, every compared
    run its impact, and the schema accepts it; the impact and groups read back exactly."""
    from conftest import DATA

    from harness.fingerprint import fingerprint_capture
    from harness.report import runset_from_json

    captures = DATA / "captures"
    old_dir, new_dir = captures / "qemu-7.2-pc-i440fx-5.2-linux-virtio", captures / "qemu-10.0-pc-i440fx-5.2-linux-virtio"
    if not (old_dir / "manifest.json").is_file() or not (new_dir / "manifest.json").is_file():
        pytest.skip("real captures are not in tests/data/captures")
    old, new = fingerprint_capture(old_dir), fingerprint_capture(new_dir)
    runset = RunSet((Run.from_fingerprints(old, new, compare(old, new)),
                     Run(machine="pc-q35-5.2", guest="legacy", status="unsupported", reason="no device")))
    for details in (False, True):
        data = to_json(runset, details=details)
        validate_report(data)
        run = data["runs"][0]
        assert run["drifts"] and all({"impact", "group"} <= set(d) for d in run["drifts"])
        assert set(run["impact"]) == {"windows", "linux"} and "impact" not in data["runs"][1]
        assert run["impact"] == runset.runs[0].impact
        assert len({d["group"] for d in run["drifts"]}) < len(run["drifts"]), "some change is shared"
        back = runset_from_json(copy.deepcopy(data))
        assert [(d.impact, d.group) for d in back.runs[0].drifts] == [(d.impact, d.group) for d in runset.runs[0].drifts]
        assert back.runs[0].recorded_impact is None and back.runs[0].impact == run["impact"]
        assert to_json(back, details=details) == data
    # a report whose run impact is not what its drifts give (another qabi's table) keeps it
    data = to_json(runset)
    data["runs"][0]["impact"]["linux"] = {"level": "device", "components": ["elsewhere"]}
    back = runset_from_json(copy.deepcopy(data))
    assert back.runs[0].impact == data["runs"][0]["impact"] and to_json(back) == data


@pytest.mark.parametrize("breakage", [
    lambda d: d.pop("verdict"),
    lambda d: d.update(verdict="maybe"),
    lambda d: d.update(extra=1),
    lambda d: d["runs"][0].update(status="skipped"),
    lambda d: d["runs"][0].pop("reason"),
    lambda d: d["runs"][0]["drifts"][0].update(severity="fatal"),
    lambda d: d["runs"][0]["drifts"][0].update(category="usb"),
    lambda d: d["runs"][0]["drifts"][0].pop("waived"),
    lambda d: d["runs"][0]["drifts"][0].update(detail="x"),
    lambda d: d["runs"][0].update(status="error", reason=None),
    # guest impact: levels are enumerated, activation is Windows only, never null
    lambda d: d["runs"][0]["drifts"][0]["impact"].update(windows="reboot"),
    lambda d: d["runs"][0]["drifts"][0]["impact"].update(linux="activation"),
    lambda d: d["runs"][0]["drifts"][0]["impact"].pop("why"),
    lambda d: d["runs"][0]["drifts"][0].update(impact=None),
    lambda d: d["runs"][0]["drifts"][0].update(group=""),
    lambda d: d["runs"][0]["drifts"][0].update(group=None),
    lambda d: d["runs"][0]["impact"]["windows"].update(level="reboot"),
    lambda d: d["runs"][0]["impact"]["linux"].update(level="activation"),
    lambda d: d["runs"][0]["impact"]["linux"].pop("components"),
    lambda d: d["runs"][0]["impact"].pop("windows"),
    lambda d: d["runs"][0].update(impact=None),
    lambda d: d["runs"][0].update(status="unsupported", reason="no such device", drifts=[]),  # keeps its impact
])
def test_validation_rejects_what_breaks_the_contract(pair, breakage):
    old, new = pair
    data = to_json(_runset(old, new))
    breakage(data)
    with pytest.raises(QabiError, match="qabi-report.schema.json"):
        validate_report(data)


# -- text ----------------------------------------------------------------------------------------

def test_text_groups_by_subject_most_severe_first_and_ends_with_one_verdict(pair):
    old, new = pair
    key, _ = pci_with_caps(new)
    new["pci"][key]["interrupt_pin"] = "INTD" if new["pci"][key].get("interrupt_pin") != "INTD" else "INTC"
    text = render_text(_runset(old, new))
    lines = text.rstrip("\n").splitlines()
    assert lines[0] == "impact: Windows: driver in 1 run · Linux: driver in 1 run" and lines[1] == ""
    assert lines[2].startswith("== ") and lines[2].endswith(": drift ==")
    assert lines[5] == "   impact: Windows driver · Linux driver"
    assert sum(1 for line in lines if line.startswith("verdict:")) == 1
    assert lines[-1].startswith("verdict: DRIFT")
    headers = [line.split(None, 1) for line in lines if line.startswith("   ") and not line.startswith("    ")
               and line.split(None, 1)[0] in ("BREAK", "WARN", "INFO", "waived")]
    assert [h[0] for h in headers] == ["BREAK", "WARN", "WARN"]
    assert headers[0][1] == "cpuid leaf 0x1 ecx bit 15 (pdcm)  [Windows driver · Linux driver]"
    dsdt = lines.index("   WARN   acpi DSDT  [Windows driver · Linux driver]")
    assert "header.oem_revision" in lines[dsdt + 1] and "77" in lines[dsdt + 1]
    assert "header.creator_revision" in lines[dsdt + 2]      # the info drift, after the warn one


def test_text_shows_a_shared_change_once_and_the_run_impact():
    """Real captures (QEMU 7.2 vs 10.0, i440fx, linux-virtio): the same _DSM rewrite in many
    hotplug slots is one entry naming every slot, with its diff once; the run's impact (level,
    components, why) comes first; the verdict still counts every drift."""
    from conftest import DATA

    from harness.drift import groups
    from harness.fingerprint import fingerprint_capture

    captures = DATA / "captures"
    dirs = [captures / f"qemu-{v}-pc-i440fx-5.2-linux-virtio" for v in ("7.2", "10.0")]
    if not all((d / "manifest.json").is_file() for d in dirs):
        pytest.skip("real captures are not in tests/data/captures")
    old, new = (fingerprint_capture(d) for d in dirs)
    runset = RunSet((Run.from_fingerprints(old, new, compare(old, new)),))
    drifts = runset.runs[0].drifts
    biggest = max(groups(drifts), key=lambda g: len(g.members))
    text = render_text(runset)
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if f"same change in {len(biggest.members)} devices: " in line]
    assert len(heads) == 1
    head = " ".join(line.strip() for line in lines[heads[0]:heads[0] + 4])
    short = [s.rsplit(".", 1)[1] for s in biggest.subjects]
    assert "acpi DSDT \\_SB.PCI0.{" + ", ".join(short) + "}" in head
    rep = biggest.representative.subject
    assert f"(shown once, for {rep})" in text
    assert sum(1 for line in lines if line.strip() == f"--- old {rep[len('acpi '):]}") == 1
    for other in biggest.subjects[1:]:
        assert f"--- old {other[len('acpi '):]}" not in text      # the diff once
    assert f"{len(drifts)} drifts shown as " in text
    impact = runset.runs[0].impact
    assert impact is not None and lines[0].startswith(f"impact: Windows: {impact['windows']['level']} in 1 run")
    run_head = lines.index(next(line for line in lines if line.startswith("   impact: ")))
    assert lines[run_head] == f"   impact: Windows {impact['windows']['level']} · Linux {impact['linux']['level']}"
    assert impact["windows"]["components"][0] in lines[run_head + 1]
    assert any(line.strip().startswith("why: ") for line in lines[run_head:run_head + 20])
    assert f"{len([d for d in drifts if d.severity == 'warn'])} warn" in lines[-1]   # counting stays per drift


def test_text_shows_asl_diff_and_provenance(pair):
    old, new = pair
    table = new["acpi"]["DSDT"]
    head, brace, rest = table["asl"].partition("{\n")
    table["asl"] = head + brace + "    Name (QABI, One)\n" + rest
    text = render_text(_runset(old, new))
    assert "+    Name (QABI, One)" in text
    build = old["source"]["build"]
    if build.get("version"):
        assert f"QEMU {build['version']}" in text


def test_text_for_unchanged_error_and_unsupported():
    fp = base_fingerprint()
    compared = Run.from_fingerprints(fp, fp, compare(fp, fp))
    text = render_text(RunSet((compared,)))
    assert "no drift" in text and text.rstrip().splitlines()[-1].startswith("verdict: UNCHANGED")
    errored = Run.failed("old fingerprint has no 'cpuid' data")
    text = render_text(RunSet((compared, errored,
                               Run(machine="m", guest="g", status="unsupported", reason="no such machine"))))
    assert "error: old fingerprint has no 'cpuid' data" in text
    assert "unsupported: no such machine" in text
    assert text.rstrip().splitlines()[-1].startswith("verdict: ERROR")


def test_guest_control_sequences_never_reach_the_terminal_raw():
    """A real capture whose SMBIOS manufacturer carries an OSC title-setting sequence."""
    from conftest import DATA

    from harness.fingerprint import fingerprint_capture

    capture = DATA / "captures" / "qemu-7.2-pc-q35-5.2-windows"
    if not (capture / "manifest.json").is_file():
        pytest.skip(f"capture {capture.name} is not in tests/data/captures")
    old = fingerprint_capture(capture)
    new = copy.deepcopy(old)
    hostile = "\x1b]0;pwned\x07"
    new["smbios"]["1/0"]["fields"]["manufacturer"] = "QEMU" + hostile
    runs = (Run.from_fingerprints(old, new, compare(old, new)),
            Run.failed(f"guest said {hostile}\x9b31m and\r\nverdict: UNCHANGED"))
    text = render_text(RunSet(runs))
    assert "QEMU\\x1b]0;pwned\\x07" in text
    assert "guest said \\x1b]0;pwned\\x07\\x9b31m and\\x0d\\x0averdict: UNCHANGED" in text
    assert not [c for c in text if c not in "\n\t" and (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f)]
    assert sum(line.startswith("verdict:") for line in text.splitlines()) == 1
    assert escape_controls("a\x1b[2Jb\n\tc", keep="\n\t") == "a\\x1b[2Jb\n\tc"


# -- qabi diff -----------------------------------------------------------------------------------

def _files(tmp_path: Path, old: dict[str, Any], new: dict[str, Any]) -> tuple[str, str]:
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    return str(tmp_path / "old.json"), str(tmp_path / "new.json")


def test_cli_unchanged_exits_0(tmp_path, qabi):
    fp = base_fingerprint()
    old, new = _files(tmp_path, fp, fp)
    result = qabi("diff", old, new, "--json", str(tmp_path / "r.json"), "--waivers", "/dev/null")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    validate_report(data)
    assert data["verdict"] == "unchanged"


def test_cli_drift_exits_1_and_fail_on_break_decides(tmp_path, pair, qabi):
    old_fp, new_fp = pair
    old, new = _files(tmp_path, old_fp, new_fp)
    result = qabi("diff", old, new, "--json", "-", "--waivers", "/dev/null")
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    validate_report(data)
    assert data["verdict"] == "drift" and len(data["runs"][0]["drifts"]) == 3
    only_warn = copy.deepcopy(old_fp)
    only_warn["acpi"]["DSDT"]["header"]["oem_revision"] = 77
    old, new = _files(tmp_path, old_fp, only_warn)
    assert qabi("diff", old, new, "--fail-on", "break", "--waivers", "/dev/null").returncode == 0
    assert qabi("diff", old, new, "--fail-on", "warn", "--waivers", "/dev/null").returncode == 1


def test_cli_partial_fingerprint_exits_2_with_an_error_report(tmp_path, qabi):
    fp = base_fingerprint()
    partial = copy.deepcopy(fp)
    del partial["e820"]
    old, new = _files(tmp_path, fp, partial)
    result = qabi("diff", old, new, "--json", str(tmp_path / "r.json"), "--waivers", "/dev/null")
    assert result.returncode == 2
    assert "'e820'" in result.stderr
    data = json.loads((tmp_path / "r.json").read_text())
    validate_report(data)
    assert data["verdict"] == "error" and data["runs"][0]["status"] == "error"


def test_cli_missing_or_invalid_input_exits_2(tmp_path, qabi):
    (tmp_path / "bad.json").write_text("{not json")
    result = qabi("diff", str(tmp_path / "absent.json"), str(tmp_path / "bad.json"), "--waivers", "/dev/null")
    assert result.returncode == 2
    assert "absent.json" in result.stderr
    fp = base_fingerprint()
    (tmp_path / "ok.json").write_text(json.dumps(fp))
    result = qabi("diff", str(tmp_path / "ok.json"), str(tmp_path / "bad.json"), "--waivers", "/dev/null")
    assert result.returncode == 2 and "invalid JSON" in result.stderr
