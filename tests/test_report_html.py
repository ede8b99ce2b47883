"""The HTML drift report: rendered from the JSON report alone, on real drifts, viewed in headless Chromium.

Real drifts: real captures under tests/data/captures (QEMU 7.2 vs 10.0, the same machine types
and profiles) decoded by `fingerprint_capture` and compared by `harness.drift.compare`.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.categories import guest_names
from harness.drift import compare, parse_waivers
from harness.errors import QabiError
from harness.fingerprint import fingerprint_capture
from harness.report import (
    Run,
    RunSet,
    load_report,
    render_html,
    runset_from_json,
    to_json,
    validate_report,
    write_html,
    write_reports,
)
from harness.report.html import OPEN_GROUPS, hex_view
from harness.report.jsonreport import FingerprintPair
from harness.report.view import group_drifts

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "tests" / "data" / "captures"
CHROMIUM = Path("/usr/bin/chromium")
HOSTILE = '<script>alert("guest")</script><img src=x onerror=alert(1)>'
GENERATED = "2026-01-02T03:04:05+00:00"
WAIVERS = """
[[waiver]]
category = "smbios"
subject = "smbios type 0 *"
path = "fields.bios_version"
reason = "SeaBIOS <b>moves</b> with every QEMU release"

[[waiver]]
category = "pci"
subject = "pci 0000:00:1f.* nothing"
reason = "matches nothing: stale"
"""
# (machine, profile) pairs captured under both QEMU 7.2 and 10.0.
PAIRS = [("pc-q35-5.2", "windows"), ("pc-i440fx-5.2", "legacy")]


def _capture(version: str, machine: str, guest: str) -> Path:
    path = CAPTURES / f"qemu-{version}-{machine}-{guest}"
    if not (path / "manifest.json").is_file():
        pytest.skip(f"capture {path.name} is not in tests/data/captures")
    return path


@pytest.fixture(scope="module")
def real() -> dict[str, Any]:
    """A RunSet of real comparisons (plus one unsupported run), its fingerprints and JSON."""
    waivers = parse_waivers(WAIVERS)
    runs: list[Run] = []
    fingerprints: list[FingerprintPair | None] = []
    for machine, guest in PAIRS:
        old = fingerprint_capture(_capture("7.2", machine, guest))
        new = fingerprint_capture(_capture("10.0", machine, guest))
        if guest == "legacy":
            # A hostile guest string: SMBIOS strings are whatever the firmware (or a guest) says.
            new = copy.deepcopy(new)
            new["smbios"]["1/0"]["fields"]["manufacturer"] = HOSTILE
        runs.append(Run.from_fingerprints(old, new, compare(old, new, waivers)))
        fingerprints.append((old, new))
    runs.append(Run(machine="pc-i440fx-5.2", guest="windows", status="unsupported",
                    reason="QEMU 7.2 cannot run this profile: no device 'virtio-sound-pci'"))
    fingerprints.append(None)
    runset = RunSet(tuple(runs), fail_on="warn")
    data = to_json(runset, details=True, fingerprints=fingerprints, seconds=83.2, run_seconds=[7.6, 9.0, None],
                   generated=GENERATED)
    return {"runset": runset, "fingerprints": fingerprints, "json": data, "html": render_html(data)}


def _drifts(data: dict[str, Any], run: int = 0) -> list[dict[str, Any]]:
    return list(data["runs"][run]["drifts"])


# -- the JSON additions -------------------------------------------------------------------------

def test_json_additions_are_optional_and_valid(real):
    data = real["json"]
    validate_report(data)
    assert data["fail_on"] == "warn" and data["generated"] == GENERATED and data["seconds"] == 83.2
    image = real["fingerprints"][0][0]["source"]["image"]
    assert data["image"] == image
    run = data["runs"][0]
    collected = [c for c in guest_names() if c not in real["fingerprints"][0][0]["source"].get("not_collected", [])]
    assert run["categories"] == collected    # a serial capture has no registers or fw_cfg: not compared
    assert len(run["details"]) == len(run["drifts"]) and run["seconds"] == 7.6
    assert run["image"] == {"old": image, "new": image}
    # the drifted PCI device carries its config space on both sides
    pci_keys = {x["key"] for d, x in zip(run["drifts"], run["details"], strict=True) if d["category"] == "pci"}
    assert pci_keys and set(run["config"]) == pci_keys
    for key in pci_keys:
        fp_old, fp_new = real["fingerprints"][0]
        assert run["config"][key] == {"old": fp_old["pci"][key]["config_hex"], "new": fp_new["pci"][key]["config_hex"]}
    # an ACPI device's unified ASL diff
    asl = [x["detail"] for d, x in zip(run["drifts"], run["details"], strict=True) if d["path"] == "asl"]
    assert asl and all(text.startswith("--- old ") for text in asl)
    assert [w["reason"] for w in run["stale_waivers"]] == ["matches nothing: stale"]
    # without the keywords, the output is the original contract plus each compared run's impact
    plain = to_json(real["runset"])
    assert list(plain) == ["schema", "verdict", "runs"]
    assert all(list(r) == ["machine", "guest", "old", "new", "status", "reason", "drifts"]
               + (["impact"] if r["status"] == "compared" else []) for r in plain["runs"])
    json.dumps(data)


def test_details_must_match_drifts(real):
    data = copy.deepcopy(real["json"])
    data["runs"][0]["details"].pop()
    with pytest.raises(QabiError, match="details"):
        validate_report(data)
    data = copy.deepcopy(real["json"])
    data["runs"][0]["config"]["0000:00:00.0"] = {"old": "zz", "new": None}
    with pytest.raises(QabiError, match="config"):
        validate_report(data)


# -- the page -----------------------------------------------------------------------------------

def test_page_has_verdict_provenance_and_timing(real):
    html = real["html"]
    assert 'data-verdict="drift">DRIFT</div>' in html
    assert "<title>qabi: DRIFT — pc-q35-5.2, pc-i440fx-5.2</title>" in html
    for old, new in real["fingerprints"][:1]:
        for side in (old, new):
            build = side["source"]["build"]
            for key in ("version", "package_version", "sha256"):
                assert str(build[key]) in html
            for folder in build["firmware_dirs"]:
                assert folder in html
        assert old["source"]["image"] in html
    assert "1 min 23 s" in html and "2026-01-02 03:04:05" in html
    assert "1 unsupported" in html and "could not be decided" not in html


def test_matrix_cells_link_to_their_details(real):
    html, data = real["html"], real["json"]
    found = re.findall(r'<td class="cell st-([a-z-]+)" title="[^"]*"><a href="#([^"]+)">', html)
    assert len(found) == 3 * len(guest_names()), "one cell per run and category"
    by_target = {target: state for state, target in found}
    for i in range(2):      # serial captures: no registers or fw_cfg read, shown as not compared
        assert by_target[f"run-{i}-registers"] == by_target[f"run-{i}-fwcfg"] == "not-compared"
    for i, run in enumerate(data["runs"][:2]):
        for category in ("pci", "cpuid", "acpi", "smbios", "e820"):
            unwaived = [d["severity"] for d in run["drifts"] if d["category"] == category and d["waived"] is None]
            waived = [d for d in run["drifts"] if d["category"] == category and d["waived"] is not None]
            expected = next((s for s in ("break", "warn", "info") if s in unwaived),
                            "waived" if waived else "unchanged")
            assert by_target[f"run-{i}-{category}"] == expected, (i, category)
            assert f'id="run-{i}-{category}"' in html
    assert by_target["run-2"] == "unsupported"
    # a drift cell counts each unwaived severity, worst first: "3 break · 35 warn", not "break 38"
    labels = dict(re.findall(r'<td class="cell st-[a-z-]+" title="[^"]*"><a href="#([^"]+)">([^<]*)</a>', html))
    for i, run in enumerate(data["runs"][:2]):
        for category in ("pci", "cpuid", "acpi", "smbios", "e820"):
            unwaived = [d["severity"] for d in run["drifts"] if d["category"] == category and d["waived"] is None]
            if unwaived:
                expected = " · ".join(f"{unwaived.count(s)} {s}" for s in ("break", "warn", "info") if s in unwaived)
                assert labels[f"run-{i}-{category}"] == expected, (i, category)
    assert any(" · " in label for label in labels.values()), "a cell with two severities"
    # 7.2 → 10.0's ACPI drifts are _ADR-only companion nodes (warn), PCI0's ignored _ADR (info) and
    # AML (warn): no ACPI break any more (issue 13: severities checked against guest impact)
    assert by_target["run-0-acpi"] == "warn" and by_target["run-1-smbios"] in ("warn", "break")


def test_page_shows_the_guest_impact_per_run_and_in_the_matrix(real):
    """The legacy run's SMBIOS manufacturer changed (the hostile string): Windows activation,
    naming the component; Linux driver. The windows run is driver for both."""
    html, data = real["html"], real["json"]
    impacts = [run.get("impact") for run in data["runs"]]
    assert impacts[0]["windows"]["level"] == impacts[0]["linux"]["level"] == "driver"
    assert (impacts[1]["windows"]["level"], impacts[1]["linux"]["level"]) == ("activation", "driver")
    assert impacts[2] is None                                   # unsupported: no impact
    component = "SMBIOS system/baseboard/chassis identity: smbios type 1 System Information fields.manufacturer"
    assert impacts[1]["windows"]["components"] == [component]
    assert "Windows: activation in 1 run, driver in 1 · Linux: driver in 2 runs" in html
    # the matrix: one Windows and one Linux cell per run, linking to the run's impact
    cells = re.findall(r'<td class="imp-cell" data-os="(\w+)" title="[^"]*"><a href="#(run-\d)-impact">'
                       r'<span class="badge imp-(\w+)">', html)
    assert cells == [("windows", "run-0", "driver"), ("linux", "run-0", "driver"),
                     ("windows", "run-1", "activation"), ("linux", "run-1", "driver")]
    assert html.count('<td class="imp-cell st-not-compared">') == 2
    # per run: badges, then what is at that level and why (Windows and Linux apart when they differ)
    section = html.split('id="run-1-impact"', 1)[1].split("</div>\n  </div>", 1)[0]
    assert '<span class="badge imp-activation" data-os="windows"' in section
    assert f"<li>{_esc(component)}</li>" in section
    assert "what Windows binds its licence to" in section.replace("&#39;", "'")
    assert 'data-os="windows"' in section and 'data-os="linux"' in section
    alike = html.split('id="run-0-impact"', 1)[1].split('id="run-1"', 1)[0]
    assert 'data-os="both"' in alike and "Windows and Linux: <strong>driver</strong>" in alike
    # every drift row says its impact, with the reason as its title
    assert html.count('<span class="impact-note" title="') == sum(
        len(g.shown) for run in real["runset"].runs for g in group_drifts(run.drifts))


def test_a_shared_change_is_one_entry_with_its_members():
    """The same _DSM rewrite in many hotplug slots (real captures, i440fx linux-virtio): one
    entry naming every slot, the diff once, counts per drift."""
    old = fingerprint_capture(_capture("7.2", "pc-i440fx-5.2", "linux-virtio"))
    new = fingerprint_capture(_capture("10.0", "pc-i440fx-5.2", "linux-virtio"))
    runset = RunSet((Run.from_fingerprints(old, new, compare(old, new)),))
    html = render_html(to_json(runset, details=True, fingerprints=[(old, new)]))
    biggest = max((g for g in group_drifts(runset.runs[0].drifts) if g.shared), key=lambda g: len(g.subjects))
    assert len(biggest.subjects) >= 20
    assert f'<span class="subject">{_esc(biggest.title)}</span>' in html
    entry = html.split(f'<span class="subject">{_esc(biggest.title)}</span>', 1)[1].split('<details class="group', 1)[0]
    assert f'<span class="count">{len(biggest.subjects)} warn</span>' in entry        # counted per drift
    assert entry.count('<span class="member">') == len(biggest.subjects)
    assert entry.count('<pre class="diff">') == 1
    rep = biggest.drifts[0].subject.split(" ", 1)[1]
    assert f"--- old {rep}" in entry
    assert all(f"--- old {s.split(' ', 1)[1]}" not in html for s in biggest.subjects[1:])


def test_drifts_grouped_by_subject_with_asl_diff_and_hex_view(real):
    html, data = real["html"], real["json"]
    entries = [g for run in real["runset"].runs for g in group_drifts(run.drifts)]
    for entry in entries:
        assert f'<span class="subject">{_esc(entry.title)}</span>' in html
        for subject in entry.subjects:       # a shared change names every subject it was seen on
            assert f'<span class="member">{_esc(subject)}</span>' in html
    assert html.count('<span class="subject">') == len(entries)
    assert {s for g in entries for s in (g.subjects or (g.subject,))} == {d["subject"] for r in data["runs"]
                                                                        for d in r["drifts"]}
    # coloured unified ASL diff lines
    assert re.search(r'<span class="d-add">\+\s+Method \(EDSM, 5, Serialized\)</span>', html)
    assert '<span class="d-hunk">@@ ' in html
    # the host bridge's config byte 0x95 (0x11 → 0x31) is marked on both sides
    row = re.search(r'<td class="off">0x090</td><td class="oldside">(.*?)</td><td class="sep"></td>'
                    r'<td class="newside">(.*?)</td>', html)
    assert row, "no hex row 0x090"
    old_bytes = re.findall(r'<span class="b( chg)?">([0-9a-f-]{2})</span>', row.group(1))
    new_bytes = re.findall(r'<span class="b( chg)?">([0-9a-f-]{2})</span>', row.group(2))
    assert old_bytes[5] == (" chg", "11") and new_bytes[5] == (" chg", "31")
    assert sum(1 for chg, _ in old_bytes if chg) == 1
    # waived drifts are shown, with the (escaped) reason
    assert "waived: SeaBIOS &lt;b&gt;moves&lt;/b&gt; with every QEMU release" in html
    assert "<b>moves</b>" not in html
    assert "matches nothing: stale" in html


def test_guest_strings_are_escaped(real):
    html = real["html"]
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&#34;guest&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert html.count("<script>") == 1      # only the page's own inline script


def test_page_is_self_contained(real):
    html = real["html"]
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    for needle in ("<link", "@import", "url(", " src=", "http://", "https://"):
        assert needle not in html.replace("src=x", ""), needle


def test_rendered_from_the_json_file_alone(real, tmp_path):
    json_path, html_path = write_reports(real["runset"], tmp_path / "out", fingerprints=real["fingerprints"],
                                         seconds=83.2, run_seconds=[7.6, 9.0, None], generated=GENERATED)
    assert (json_path, html_path) == (tmp_path / "out" / "qabi.json", tmp_path / "out" / "index.html")
    # no temp files: the two reports and qabi's marker of its own report folder
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".qabi-report", "index.html", "qabi.json"]
    for path in (json_path, html_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    data = load_report(json_path)
    assert data == real["json"]
    assert render_html(data) == html_path.read_text(encoding="utf-8") == real["html"]


def test_json_reads_back_into_the_same_runset(real):
    """JSON → RunSet → JSON is identical on real data, with and without the detail fields, and
    the page rendered from the RunSet read back is the page rendered from the JSON."""
    for data, details in ((real["json"], True), (to_json(real["runset"]), False)):
        runset = runset_from_json(copy.deepcopy(data))
        assert runset.details is details and runset.fail_on == "warn"
        again = to_json(runset, details=details)
        assert json.dumps(again, ensure_ascii=False) == json.dumps(data, ensure_ascii=False)
        assert render_html(runset) == render_html(data)
    runset = runset_from_json(real["json"])
    assert [r.seconds for r in runset.runs] == [7.6, 9.0, None] and runset.seconds == 83.2
    assert runset.runs[0].config and runset.runs[0].image == real["json"]["runs"][0]["image"]
    original = real["runset"].runs[0].comparison
    assert runset.runs[0].comparison.drifts == original.drifts
    assert [w.reason for w in runset.runs[0].comparison.stale_waivers] == ["matches nothing: stale"]


def test_a_report_whose_verdict_contradicts_its_runs_is_refused(real):
    data = copy.deepcopy(real["json"])
    data["verdict"] = "unchanged"
    with pytest.raises(QabiError, match="does not follow from its runs"):
        render_html(data)
    plain = to_json(real["runset"])
    for run in plain["runs"]:
        for drift in run["drifts"]:
            drift["severity"] = "info"
    assert runset_from_json(plain).fail_on == "info"       # an older report: the threshold that gives its verdict


def test_old_reports_without_details_still_render(real):
    plain = to_json(real["runset"])
    validate_report(plain)
    html = render_html(plain)
    assert 'data-verdict="drift">DRIFT</div>' in html
    assert "this JSON report has no detail fields" in html
    assert "(assumed)" in html and '<pre class="diff">' not in html and 'class="hexview"' not in html
    assert _esc(_drifts(plain)[0]["subject"]) in html


def test_unchanged_and_error_verdicts():
    fp = fingerprint_capture(_capture("7.2", "pc-q35-5.2", "windows"))
    same = RunSet((Run.from_fingerprints(fp, fp, compare(fp, fp)),))
    html = render_html(to_json(same, details=True, fingerprints=[(fp, fp)]))
    assert 'class="banner v-unchanged"' in html and ">UNCHANGED</div>" in html
    collected = [c for c in guest_names() if c not in fp["source"].get("not_collected", [])]
    assert html.count('class="cell st-unchanged"') == len(collected)
    errored = render_html(to_json(RunSet((Run.failed("old fingerprint has no 'cpuid' data"),))))
    assert 'class="banner v-error"' in errored and "old fingerprint has no &#39;cpuid&#39; data" in errored


def test_hundreds_of_drifts_stay_collapsed(real):
    data = copy.deepcopy(real["json"])
    run = data["runs"][0]
    for n in range(300):     # 300 different changes (the same one on 300 subjects would be one entry)
        run["drifts"].append({"category": "smbios", "subject": f"smbios type 11 OEM Strings #{n}",
                              "path": "strings[0]", "old": "a", "new": f"b{n}", "severity": "warn", "waived": None})
        run["details"].append({"key": f"11/{n}", "change": "changed", "detail": None})
    validate_report(data)
    html = render_html(data)
    groups = re.findall(r'<details class="group [^"]*" id="run-0-[^"]+"( open)?>', html)
    assert len(groups) >= 300
    assert sum(1 for g in groups if g) == OPEN_GROUPS


def test_hex_view_elides_zero_rows():
    old = bytes(range(64)) + bytes(4096 - 64)
    new = bytearray(old)
    new[0x200] = 0x5A
    view = hex_view("0000:00:1c.0", old.hex(), bytes(new).hex())
    assert view is not None and view.changed == 1 and view.old_size == view.new_size == 4096
    offsets = [r.offset for r in view.rows if r.gap is None]
    assert offsets == ["0x000", "0x010", "0x020", "0x030", "0x200"]
    assert [r.gap for r in view.rows if r.gap] == ["0x040–0x1ff: zero on both sides", "0x210–0xfff: zero on both sides"]
    assert hex_view("k", None, None) is None and hex_view("k", "zz", None) is None


def test_render_rejects_what_is_not_a_report():
    with pytest.raises(QabiError, match="qabi-report.schema.json"):
        render_html({"schema": 1, "runs": []})


# -- qabi report --------------------------------------------------------------------------------

def test_cli_renders_html_from_json(real, tmp_path, qabi):
    source = tmp_path / "qabi.json"
    source.write_text(json.dumps(real["json"]))
    result = qabi("report", str(source), "-o", str(tmp_path / "page.html"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "page.html").read_text(encoding="utf-8") == real["html"]
    result = qabi("report", str(source))             # default: beside the JSON
    assert result.returncode == 0 and (tmp_path / "qabi.html").is_file()


@pytest.mark.parametrize("content, message", [
    (None, "no such JSON report"),
    ("{not json", "invalid JSON"),
    ('{"schema": 1, "verdict": "maybe", "runs": []}', "qabi-report.schema.json"),
    ("[1, 2]", "not a JSON object"),
])
def test_cli_missing_or_invalid_json_exits_2_with_one_line(tmp_path, qabi, content, message):
    source = tmp_path / "in.json"
    if content is not None:
        source.write_text(content)
    result = qabi("report", str(source), "-o", str(tmp_path / "out.html"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("qabi: error: ")
    assert message in result.stderr
    assert not (tmp_path / "out.html").exists()


# -- in a real browser --------------------------------------------------------------------------

def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    argv = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", *args]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is not installed (Debian package chromium; "
                                                   ".ci/setup --tests installs it)")
def test_report_in_headless_chromium(real, tmp_path):
    _, page = write_reports(real["runset"], tmp_path / "report", fingerprints=real["fingerprints"], seconds=83.2,
                            run_seconds=[7.6, 9.0, None], generated=GENERATED)
    url = page.resolve().as_uri()
    # The DOM as Chromium built it, after the page's script ran (a fragment opens its <details>).
    waived = re.search(r'<details class="group g-waived" id="(run-0-smbios-\d+)">', real["html"])
    assert waived, "the waived SMBIOS group is collapsed in the markup"
    result = _chromium(tmp_path, "--dump-dom", f"{url}#{waived.group(1)}")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert re.search(r'<div class="verdict-word" data-verdict="drift">DRIFT</div>', dom)
    drifted = next(d["subject"] for d in _drifts(real["json"]) if d["category"] == "pci")
    assert drifted.startswith("pci 0000:00:00.0 [8086:29c0]")
    assert f'<span class="subject">{_esc(drifted)}</span>' in dom
    assert "<span class=\"subject\">acpi DSDT \\_SB.PCI0.SFA</span>" in dom
    assert f'id="{waived.group(1)}" open=""' in dom, "the script opens the group the URL points at"
    # the guest impact: in the matrix and per run, with the activation component named
    assert re.search(r'<td class="imp-cell" data-os="windows" title="Windows: activation[^"]*">'
                     r'<a href="#run-1-impact"><span class="badge imp-activation">activation</span>', dom)
    assert '<span class="badge imp-activation" data-os="windows" title="Windows impact">Windows activation</span>' in dom
    assert "SMBIOS system/baseboard/chassis identity: smbios type 1 System Information fields.manufacturer" in dom
    assert "Windows: activation in 1 run, driver in 1 · Linux: driver in 2 runs" in dom
    assert "&lt;script&gt;alert(" in dom and 'onerror="alert' not in dom
    assert len(re.findall(r"<script\b", dom)) == 1
    # A picture for people: the verdict, the builds and the matrix at the top of the page.
    shot = tmp_path / "screenshot.png"
    result = _chromium(tmp_path, "--window-size=1400,2200", f"--screenshot={shot}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1400, 2200)
    (REPO / "reports").mkdir(exist_ok=True)
    shutil.copyfile(shot, REPO / "reports" / "screenshot.png")


def _esc(text: str) -> str:
    """What jinja2's autoescape makes of `text`."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&#34;").replace("'", "&#39;"))


def test_write_html_is_atomic_and_reports_unwritable_targets(real, tmp_path):
    target = write_html(real["json"], tmp_path / "a" / "b.html")
    assert target.read_text(encoding="utf-8") == real["html"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(QabiError, match="cannot write HTML report"):
        write_html(real["json"], tmp_path / "file" / "b.html")
