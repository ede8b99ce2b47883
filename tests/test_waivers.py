"""Waivers: a TOML allow-list of accepted drifts — matched drifts are shown as waived, unmatched
waivers are stale, a malformed file is an error (exit 2) naming the file and the line."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from drift_samples import base_fingerprint, set_cpuid_bit

from harness.drift import Waivers, compare, load_waivers, parse_waivers
from harness.errors import QabiError


@pytest.fixture
def pair() -> tuple[dict[str, Any], dict[str, Any]]:
    """(old, new): PDCM appears on every vCPU and the system UUID changes."""
    old = base_fingerprint()
    set_cpuid_bit(old, 1, 0, "ecx", 15, 0, "pdcm")
    new = copy.deepcopy(old)
    set_cpuid_bit(new, 1, 0, "ecx", 15, 1, "pdcm")
    new["smbios"]["1/0"]["fields"]["uuid"] = "00000000-0000-0000-0000-000000000000"
    return old, new


def write(tmp_path: Path, text: str, name: str = "waivers.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


PDCM = """
[[waiver]]
category = "cpuid"
subject = "cpuid leaf 0x1 ecx bit 15 (pdcm)"
path = "ecx[15]"
old = 0
new = 1
reason = "PDCM is advertised since QEMU 10.1; accepted"
"""


def test_matching_waiver_marks_the_drift_waived_and_keeps_it(tmp_path, pair):
    old, new = pair
    comparison = compare(old, new, load_waivers(write(tmp_path, PDCM)))
    pdcm = [d for d in comparison.drifts if d.category == "cpuid"]
    assert len(pdcm) == 1 and pdcm[0].waived == "PDCM is advertised since QEMU 10.1; accepted"
    assert comparison.stale_waivers == ()
    assert comparison.verdict() == "drift"            # the UUID change is not waived
    assert comparison.only("cpuid").verdict() == "unchanged"


def test_glob_subject_with_literal_brackets(tmp_path, pair):
    old, new = pair
    key = next(iter(old["pci"]))
    new["pci"][key]["revision"] = "0x7f"
    text = f"""
[[waiver]]
category = "pci"
subject = 'pci {key} [*'
path = "revision"
reason = "new revision accepted"
"""
    comparison = compare(old, new, load_waivers(write(tmp_path, text)))
    revision = next(d for d in comparison.drifts if d.path == "revision")
    assert revision.waived == "new revision accepted"


def test_old_and_new_are_compared_as_strings(tmp_path, pair):
    old, new = pair
    for old_value in ('"0"', "0"):
        text = PDCM.replace("old = 0", f"old = {old_value}")
        comparison = compare(old, new, load_waivers(write(tmp_path, text)))
        assert any(d.waived for d in comparison.drifts)


def test_waiver_with_other_value_does_not_match_and_is_stale(tmp_path, pair):
    old, new = pair
    comparison = compare(old, new, load_waivers(write(tmp_path, PDCM.replace("new = 1", "new = 2"))))
    assert not any(d.waived for d in comparison.drifts)
    assert len(comparison.stale_waivers) == 1
    stale = comparison.stale_waivers[0]
    assert (stale.index, stale.line) == (1, 2)
    assert stale.where.endswith("waivers.toml:2")


def test_stale_waivers_are_reported_for_their_category_only(tmp_path, pair):
    old, new = pair
    text = PDCM + """
[[waiver]]
category = "acpi"
subject = "acpi SSDT9 *"
reason = "never matches"
"""
    comparison = compare(old, new, load_waivers(write(tmp_path, text)))
    assert [w.category for w in comparison.stale_waivers] == ["acpi"]
    assert comparison.only("acpi").stale_waivers[0].reason == "never matches"
    assert comparison.only("cpuid").stale_waivers == ()
    # A comparison that does not look at ACPI cannot call an ACPI waiver stale.
    assert compare(old, new, load_waivers(write(tmp_path, text)), categories=("cpuid",)).stale_waivers == ()


def test_default_path_glob_matches_any_path(tmp_path, pair):
    old, new = pair
    text = """
[[waiver]]
category = "smbios"
subject = "smbios type 1 *"
reason = "new UUID per VM is expected in this lab"
"""
    comparison = compare(old, new, load_waivers(write(tmp_path, text)))
    assert next(d for d in comparison.drifts if d.category == "smbios").waived is not None


def test_first_matching_waiver_gives_the_reason(pair):
    old, new = pair
    waivers = parse_waivers(PDCM + PDCM.replace("accepted", "second"))
    comparison = compare(old, new, waivers)
    assert next(d for d in comparison.drifts if d.category == "cpuid").waived.endswith("accepted")
    assert [w.index for w in comparison.stale_waivers] == [2]


def test_empty_file_is_no_waivers(tmp_path):
    assert len(load_waivers(write(tmp_path, "# nothing accepted yet\n"))) == 0


@pytest.mark.parametrize(("text", "line", "words"), [
    ("[[waiver]]\ncategory = \"pci\"\nsubject = pci\n", 3, "malformed"),
    (("[[waiver]]\ncategory = \"pci\"\n\n[[waiver]]\ncategory = \"pci\"\nsubject = \"x\"\nreason = \"r\"\n"
      "\n[[waiver]]\ncategory = \"acpi\"\nsubject = \"x\"\n"), 1, "waiver #1: missing required key 'subject'"),
    (("[[waiver]]\ncategory = \"pci\"\nsubject = \"x\"\nreason = \"r\"\n\n[[waiver]]\ncategory = \"pci\"\n"
      "subject = \"y\"\n"), 6, "waiver #2: missing required key 'reason'"),
    ("[[waiver]]\ncategory = \"pci\"\nsubject = \"x\"\nreason = \"r\"\nseverity = \"info\"\n", 1,
     "waiver #1: unknown key 'severity'"),
    ("[[waiver]]\ncategory = \"usb\"\nsubject = \"x\"\nreason = \"r\"\n", 1, "matches none"),
    ("[[waiver]]\ncategory = \"pci\"\nsubject = \"x\"\nreason = \"\"\n", 1, "non-empty"),
])
def test_malformed_file_names_file_and_line(tmp_path, text, line, words):
    path = write(tmp_path, text)
    with pytest.raises(QabiError) as info:
        load_waivers(path)
    message = str(info.value)
    assert f"{path}:{line}" in message
    assert words in message


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(QabiError, match="unknown top-level key 'waivers'"):
        load_waivers(write(tmp_path, "[[waivers]]\ncategory = \"pci\"\n"))


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(QabiError, match=r"no such file \(a waivers file\)"):
        load_waivers(tmp_path / "absent.toml")


def test_waivers_object_is_reusable():
    waivers = parse_waivers(PDCM, "inline")
    assert isinstance(waivers, Waivers) and waivers.source == "inline"
    assert waivers.entries[0].describe().startswith("category=cpuid")


# -- through the CLI, as a user runs it ----------------------------------------------------------

def _fingerprints(tmp_path: Path, pair: tuple[dict[str, Any], dict[str, Any]]) -> tuple[str, str]:
    old, new = pair
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    return str(tmp_path / "old.json"), str(tmp_path / "new.json")


def test_cli_malformed_waivers_exit_2_naming_the_line(tmp_path, pair, qabi):
    old, new = _fingerprints(tmp_path, pair)
    bad = write(tmp_path, PDCM.replace('reason = "PDCM', 'reasn = "PDCM'))
    result = qabi("diff", old, new, "--waivers", str(bad))
    assert result.returncode == 2, result.stderr
    assert f"{bad}:2: waiver #1: unknown key 'reasn'" in result.stderr
    assert result.stdout.rstrip().splitlines()[-1].startswith("verdict: ERROR")


def test_cli_waived_drift_and_stale_waiver_are_shown(tmp_path, pair, qabi):
    old_fp, new_fp = pair
    new_fp = copy.deepcopy(new_fp)
    new_fp["smbios"]["1/0"]["fields"]["uuid"] = old_fp["smbios"]["1/0"]["fields"]["uuid"]
    old, new = _fingerprints(tmp_path, (old_fp, new_fp))
    text = PDCM + '\n[[waiver]]\ncategory = "e820"\nsubject = "e820"\nreason = "stale one"\n'
    result = qabi("diff", old, new, "--waivers", str(write(tmp_path, text)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[waived: PDCM is advertised since QEMU 10.1; accepted]" in result.stdout
    assert "stale waivers" in result.stdout and "stale one" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("verdict: UNCHANGED")
