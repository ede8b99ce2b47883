"""The upgrade matrix, machine-type bumps, sharding, shard merge, the capture cache's export and
import, and the progress line. Unit tests need no QEMU; the integration tests boot real Debian
builds under TCG over the firmware hand-off transport (about a second per capture)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, private_captures, run_qabi

from harness.bump import bump_waivers, is_generated, split_machine, with_bump
from harness.categories import names
from harness.drift.model import Comparison, Drift
from harness.errors import QabiError
from harness.matrix.merge import merge_reports
from harness.matrix.progress import RunProgress
from harness.report import Run, RunSet, ShardInfo, runset_from_json, verdict_line, write_reports
from harness.shard import assign, parse_shard, profile_cost, select

CHROMIUM = Path("/usr/bin/chromium")
FW = ("--transport", "firmware")


# -- bumps -------------------------------------------------------------------------------------

def test_bump_syntax_and_generated_waiver():
    assert split_machine("pc-q35-8.0") == ("pc-q35-8.0", "pc-q35-8.0")
    assert split_machine("pc-q35-8.0:pc-q35-8.1") == ("pc-q35-8.0", "pc-q35-8.1")
    for bad in (":pc-q35-8.1", "pc-q35-8.0:", "a:b:c"):
        with pytest.raises(QabiError, match="OLD_TYPE:NEW_TYPE"):
            split_machine(bad)
    assert bump_waivers("pc-q35-8.0") == () and with_bump(None, "pc-q35-8.0") is None
    (waiver,) = bump_waivers("pc-q35-8.0:pc-q35-8.1")
    assert is_generated(waiver)
    assert waiver.reason == "machine type bump pc-q35-8.0 → pc-q35-8.1: the machine type's own name"
    name = Drift("smbios", "smbios type 1 System Information", "fields.version", "pc-q35-8.0", "pc-q35-8.1",
                 "break")
    other = Drift("smbios", "smbios entry point", "kind", "2.x", "3.x", "break")
    assert waiver.matches(name) and not waiver.matches(other)
    reverse = Drift("smbios", "smbios type 1 System Information", "fields.version", "pc-q35-8.1", "pc-q35-8.0",
                    "break")
    assert not waiver.matches(reverse)


# -- shards ------------------------------------------------------------------------------------

CASES = [(f"pc-{fam}-{v}", g) for v in ("7.2", "8.0", "8.1", "9.2", "10.0") for fam in ("i440fx", "q35")
         for g in ("legacy", "linux-virtio", "minimal", "windows")]


@pytest.mark.parametrize("transport", ["serial", "firmware"])
def test_shards_partition_the_runs_deterministically_and_balanced(transport):
    shards = [select(CASES, (i, 3), transport) for i in (1, 2, 3)]
    assert sorted(c for s in shards for c in s) == sorted(CASES)                    # every run, once
    assert [select(list(reversed(CASES)), (i, 3), transport) for i in (1, 2, 3)] == \
        [list(reversed(s)) for s in shards]                            # independent of the list order
    for shard in shards:
        assert shard == [c for c in CASES if c in shard]                 # kept in report order
    loads = [sum(profile_cost(g, transport) for _m, g in s) for s in shards]
    assert max(loads) - min(loads) <= max(profile_cost(g, transport) for _m, g in CASES)
    assert select(CASES, None) == CASES and select(CASES, (1, 1)) == CASES
    assert profile_cost("windows", transport) > profile_cost("minimal", transport)


def test_more_shards_than_runs_leaves_some_empty():
    owners = assign(CASES[:2], 5, lambda case: 1.0)
    assert sorted(owners) == [1, 2]


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "x", "1-3", "1/3/2"])
def test_bad_shard_is_one_line(text):
    with pytest.raises(QabiError, match="expected I/N"):
        parse_shard(text)
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None


def test_cli_bad_shard_exits_2_with_one_line():
    result = run_qabi("check", "--old", "system", "--new", "system", "--shard", "4/3")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "expected I/N" in result.stderr


# -- merge -------------------------------------------------------------------------------------

def _run(machine: str, guest: str, drifts: tuple[Drift, ...] = (), spec: str = "debian:trixie") -> Run:
    side = {"spec": spec, "sha256": "ab" * 32, "version": "10.0.13"}
    return Run(machine, guest, side, side, comparison=Comparison(drifts, categories=names()))


DRIFT = Drift("pci", "pci 0000:00:03.0 [1af4:1000] Virtio network device", "revision", 0, 1, "break")


def test_merge_gives_the_runs_in_check_order_and_the_verdict(tmp_path):
    a = write_reports(RunSet((_run("pc-q35-8.0", "windows"), _run("pc-i440fx-7.2", "minimal"))), tmp_path / "a")[0]
    b = write_reports(RunSet((_run("pc-q35-7.2", "minimal", (DRIFT,)),), seconds=4.0), tmp_path / "b")[0]
    merged = merge_reports([a, b])
    assert [(r.machine, r.guest) for r in merged.runs] == [("pc-i440fx-7.2", "minimal"), ("pc-q35-7.2", "minimal"),
                                                          ("pc-q35-8.0", "windows")]
    assert merged.verdict == "drift" and merged.seconds == 4.0
    assert merged.runs[1].drifts[0].subject == DRIFT.subject


def test_merge_refuses_overlap_and_mismatch(tmp_path, qabi):
    a = write_reports(RunSet((_run("pc-q35-8.0", "windows"),)), tmp_path / "a")[0]
    b = write_reports(RunSet((_run("pc-q35-8.0", "windows"),)), tmp_path / "b")[0]
    c = write_reports(RunSet((_run("pc-q35-7.2", "windows", spec="debian:sid"),)), tmp_path / "c")[0]
    d = write_reports(RunSet((_run("pc-q35-7.2", "minimal"),), fail_on="break"), tmp_path / "d")[0]
    for paths, message in (([a, b], "overlapping shards"), ([a, c], "not shards of one check"),
                           ([a, d], "not shards of one check"), ([a], "at least two")):
        with pytest.raises(QabiError, match=message):
            merge_reports(paths)
    result = qabi("report", "--merge", str(a), str(b), "-o", str(tmp_path / "m"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "overlapping" in result.stderr
    assert not (tmp_path / "m").exists()


def _shards(tmp_path: Path, count: int, planned: list[tuple[str, str]], drifted: tuple[str, str] | None = None,
            *, only: tuple[int, ...] | None = None) -> list[Path]:
    """Shard reports of one check, written as `--shard I/N` writes them (runs split by `select`)."""
    paths = []
    for i in only or range(1, count + 1):
        runs = tuple(_run(m, g, (DRIFT,) if (m, g) == drifted else ()) for m, g in select(planned, (i, count)))
        runset = RunSet(runs, shard=ShardInfo(i, count, tuple(planned)))
        paths.append(write_reports(runset, tmp_path / f"s{i}-of-{count}")[0])
    return paths


PLANNED = [("pc-i440fx-7.2", "minimal"), ("pc-q35-7.2", "minimal"), ("pc-q35-7.2", "windows")]


def test_a_shard_records_its_place_and_the_merge_needs_every_shard(tmp_path):
    parts = _shards(tmp_path, 3, PLANNED, drifted=("pc-q35-7.2", "windows"))
    data = json.loads(parts[0].read_text())
    assert data["shard"] == {"index": 1, "count": 3, "planned": [list(c) for c in PLANNED]}
    whole = merge_reports(parts)
    assert whole.verdict == "drift" and whole.shard is None
    assert [(r.machine, r.guest) for r in whole.runs] == PLANNED
    # the drifting run's shard is missing: the other two alone must not read "unchanged"
    owner = next(i for i in (1, 2, 3) if ("pc-q35-7.2", "windows") in select(PLANNED, (i, 3)))
    rest = [p for i, p in enumerate(parts, 1) if i != owner]
    with pytest.raises(QabiError, match=rf"shard {owner}/3 missing: the merged verdict would leave out its runs"):
        merge_reports(rest)


def test_merge_refuses_shards_that_do_not_make_one_whole_check(tmp_path):
    parts = _shards(tmp_path, 3, PLANNED)
    again = _shards(tmp_path / "again", 3, PLANNED, only=(1,))[0]
    other = _shards(tmp_path / "other", 3, [*PLANNED, ("pc-q35-8.0", "minimal")], only=(3,))[0]
    halves = _shards(tmp_path / "halves", 2, PLANNED, only=(2,))[0]
    plain = write_reports(RunSet((_run("pc-q35-9.0", "minimal"),)), tmp_path / "plain")[0]
    for paths, message in (([parts[0], again, parts[1], parts[2]], "are both shard 1/3"),
                           ([parts[0], parts[1], other], "of another run list"),
                           ([parts[0], halves], "of another run list"),
                           ([*parts, plain], "was not made with --shard"),
                           ([parts[0], parts[0]], "is given twice")):
        with pytest.raises(QabiError, match=message):
            merge_reports(paths)
    # a shard that lost a run (stopped early, or run with -k): the planned run is in no report
    short = json.loads(parts[2].read_text())
    lost = short["runs"].pop()
    short["verdict"] = "error"          # its only run gone: nothing compared
    parts[2].write_text(json.dumps(short))
    with pytest.raises(QabiError, match=rf"1 planned run\(s\) in no shard's report \({lost['machine']} {lost['guest']}\)"):
        merge_reports(parts)
    result = run_qabi("report", "--merge", str(parts[0]), str(parts[1]), "-o", str(tmp_path / "m"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "missing" in result.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("shard", "message"), [
    ({"index": 4, "count": 3, "planned": []}, "index 4 > count 3"),
    ({"index": 1, "count": 2, "planned": [["pc-q35-7.2", "minimal"]] * 2}, "planned twice"),
    ({"index": 1, "count": 2, "planned": [["pc-q35-9.0", "minimal"]]}, "is not a planned run"),
    ({"index": 0, "count": 2, "planned": []}, "shard/index"),
    ({"index": 1, "count": 2, "planned": [["pc-q35-7.2"]]}, "shard/planned/0"),
])
def test_a_report_with_a_bad_shard_record_is_refused(tmp_path, shard, message):
    path = _shards(tmp_path, 1, [("pc-q35-7.2", "minimal")])[0]
    data = json.loads(path.read_text())
    data["shard"] = shard
    with pytest.raises(QabiError, match=message):
        runset_from_json(data)


def test_shard_reports_say_they_are_a_slice_and_an_empty_shard_says_how_many_to_use(tmp_path):
    one = RunSet((_run("pc-q35-7.2", "minimal"),), shard=ShardInfo(1, 2, tuple(PLANNED[:2])))
    assert one.verdict == "unchanged"
    assert "shard 1/2: 1 of the check's 2 runs, the verdict of the whole check comes from qabi report --merge" \
        in verdict_line(one)
    empty = RunSet((), shard=ShardInfo(3, 3, tuple(PLANNED[:2])))
    assert empty.verdict == "error"
    assert "shard 3/3 holds none of the check's 2 runs: use at most 2 shards" in verdict_line(empty)


# -- progress ----------------------------------------------------------------------------------

def test_progress_is_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    with RunProgress(2, stream=stream) as meter:
        meter.label = "bookworm → trixie"
        meter.start("pc-q35-7.2", "minimal\x1b[2J")
        meter.done(_run("pc-q35-7.2", "minimal\x1b[2J", (DRIFT,)))
        meter.start("pc-q35-8.0", "windows")
        meter.done(_run("pc-q35-8.0", "windows"))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "qabi: [1/2] pc-q35-7.2 minimal\\x1b[2J (bookworm → trixie): started (0s elapsed)"
    assert lines[1] == "qabi: [1/2] pc-q35-7.2 minimal\\x1b[2J (bookworm → trixie): drift"
    assert lines[3] == "qabi: [2/2] pc-q35-8.0 windows (bookworm → trixie): unchanged"
    assert re.fullmatch(r"qabi: 2/2 runs in \d+\.\ds", lines[4])


def test_progress_on_a_terminal_is_a_rich_line():
    stream = io.StringIO()
    with RunProgress(1, stream=stream, tty=True) as meter:
        meter.start("pc-q35-7.2", "minimal")
        meter.done(_run("pc-q35-7.2", "minimal", (DRIFT,)))
    text = stream.getvalue()
    assert "pc-q35-7.2 minimal: drift" in text and "1/1 runs in" in text


# -- cache import refusals (hostile archives) -----------------------------------------------------

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return info


CAP = "pc-q35-8.0_minimal_0123456789abcdef01234567"


@pytest.mark.parametrize("members, message", [
    ([_file(f"{CAP}/../../evil")], "escapes the capture folder"),
    ([_file(f"/{CAP}/manifest.json")], "escapes the capture folder"),
    ([_file("notacapture/manifest.json")], "not in a capture folder"),
    ([_file(f"{CAP}/evil.sh")], "not part of a capture"),
    ([(_link(f"{CAP}/raw/x"), None)], "not a regular file"),
    ([_file(f"{CAP}/raw/x")], "no manifest.json"),
])
def test_cache_import_refuses_hostile_archives(tmp_path, members, message):
    home = tmp_path / "home"
    archive = _tar(tmp_path / "bad.tar", members)
    result = run_qabi("cache", "import", str(archive), env={"XDG_CACHE_HOME": str(home)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert [p.name for p in (home / "qabi" / "captures").iterdir()] == []     # nothing added, no staging left
    assert not (tmp_path / "evil").exists()


# -- integration: real builds, firmware transport ---------------------------------------------------

def _snapshot(home: Path) -> dict[str, int]:
    root = home / "qabi" / "captures"
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if not p.name.endswith(".lock")}


BUMP = ("check", "--old", "debian:trixie", "--new", "debian:trixie", "--machine", "pc-q35-8.0:pc-q35-8.1",
        "--guest", "linux-virtio", *FW)


@pytest.mark.integration
def test_bump_reports_the_entry_point_and_waives_the_machine_name_and_cache_moves_between_runners(tmp_path):
    # runners A and B: the same cache path (as CI runners have), A's captures only in the archive
    runner = tmp_path / "runner"
    env_a = private_captures(runner)
    first = run_qabi(*BUMP, "--json", str(tmp_path / "a.json"), env=env_a)
    assert first.returncode == 1, first.stdout + first.stderr
    report = json.loads((tmp_path / "a.json").read_text())
    drifts = report["runs"][0]["drifts"]
    kind = next(d for d in drifts if d["subject"] == "smbios entry point" and d["path"] == "kind")
    assert (kind["old"], kind["new"], kind["severity"], kind["waived"]) == ("2.x", "3.x", "break", None)
    reason = "machine type bump pc-q35-8.0 → pc-q35-8.1: the machine type's own name"
    waived = {(d["subject"].split(" ")[2], d["path"]) for d in drifts if d["waived"] == reason}
    assert waived == {("1", "fields.version"), ("3", "fields.version"), ("4", "fields.processor_version")}
    assert all(d["waived"] is None for d in drifts if d["old"] != "pc-q35-8.0")
    assert report["runs"][0]["stale_waivers"] == []
    assert "[waived: machine type bump pc-q35-8.0 → pc-q35-8.1" in first.stdout

    # export from runner A, import on runner B: B's run needs no boot
    tarball = tmp_path / "captures.tar.gz"
    exported = run_qabi("cache", "export", str(tarball), env=env_a)
    assert exported.returncode == 0 and "2 captures exported" in exported.stdout, exported.stdout + exported.stderr
    made = _snapshot(runner)
    runner.rename(tmp_path / "runner-a")
    env_b = private_captures(runner)
    assert _snapshot(runner) == {}
    imported = run_qabi("cache", "import", str(tarball), env=env_b)
    assert imported.returncode == 0 and "2 captures imported" in imported.stdout, imported.stderr
    assert _snapshot(runner).keys() == made.keys()
    before = _snapshot(runner)
    again = run_qabi(*BUMP, "--json", str(tmp_path / "b.json"), env=env_b)
    assert again.returncode == 1, again.stderr
    assert _snapshot(runner) == before, "a capture was made: QEMU booted on runner B"
    assert json.loads((tmp_path / "b.json").read_text())["runs"][0]["drifts"] == drifts
    assert run_qabi("cache", "import", str(tarball), env=env_b).stdout.strip().endswith("2 already in the cache")

    # a tampered capture is refused as a whole (named, exit 2), the verified one beside it is added
    with tarfile.open(tarball) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    raw = next(i for i, (m, _d) in enumerate(members) if m.isfile() and "/raw/" in m.name)
    info, data = members[raw]
    assert data
    members[raw] = (info, bytes([data[0] ^ 1]) + data[1:])
    bad = _tar(tmp_path / "tampered.tar", members)
    env_c = private_captures(tmp_path / "c")
    refused = run_qabi("cache", "import", str(bad), env=env_c)
    assert refused.returncode == 2 and "does not match its sha256" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1
    tampered = info.name.split("/")[0]     # that capture is refused whole; the other, verified, is added
    assert tampered in refused.stderr and "1 captures imported" in refused.stderr
    assert {name.split("/")[0] for name in _snapshot(tmp_path / "c")} == {m.name.split("/")[0] for m, _d in members} - {tampered}


SHARD_CHECK = ("check", "--old", "debian:bookworm", "--new", "debian:trixie", "--machine", "pc-i440fx-7.2",
               "--machine", "pc-q35-7.2", "--guest", "minimal", "--guest", "windows", *FW)


def _drift_set(report: dict) -> dict[tuple[str, str], list[tuple]]:
    return {(r["machine"], r["guest"]): sorted(tuple(json.dumps(d[k]) for k in sorted(d)) for d in r["drifts"])
            for r in report["runs"]}


@pytest.mark.integration
def test_three_shards_in_separate_processes_merge_into_the_unsharded_verdict(tmp_path):
    whole = run_qabi(*SHARD_CHECK, "--report", str(tmp_path / "whole"))
    assert whole.returncode == 1, whole.stderr
    procs = [subprocess.Popen([os.sys.executable, "-m", "harness.cli", *SHARD_CHECK, "--shard", f"{i}/3",  # type: ignore[attr-defined]
                               "--report", str(tmp_path / f"shard{i}")], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True) for i in (1, 2, 3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode in (0, 1) for p in procs), outs
    parts = [json.loads((tmp_path / f"shard{i}" / "qabi.json").read_text()) for i in (1, 2, 3)]
    assert sorted(len(p["runs"]) for p in parts) == [1, 1, 2]
    merged = run_qabi("report", "--merge", *(str(tmp_path / f"shard{i}" / "qabi.json") for i in (1, 2, 3)),
                      "-o", str(tmp_path / "merged"))
    assert merged.returncode == whole.returncode == 1, merged.stderr
    a = json.loads((tmp_path / "whole" / "qabi.json").read_text())
    b = json.loads((tmp_path / "merged" / "qabi.json").read_text())
    assert a["verdict"] == b["verdict"] == "drift"
    assert sorted((r["machine"], r["guest"]) for r in a["runs"]) == [(r["machine"], r["guest"]) for r in b["runs"]]
    assert _drift_set(a) == _drift_set(b)
    assert (tmp_path / "merged" / "index.html").is_file()
    # a shard job that failed to hand in its report: no verdict over the other two
    partial = run_qabi("report", "--merge", *(str(tmp_path / f"shard{i}" / "qabi.json") for i in (1, 2)),
                       "-o", str(tmp_path / "partial"))
    assert partial.returncode == 2 and "shard 3/3 missing" in partial.stderr and not (tmp_path / "partial").exists()


@pytest.mark.integration
def test_matrix_shards_split_a_steps_unsupported_runs_too_and_merge_per_step(tmp_path):
    args = ("matrix", "debian:bullseye", "debian:bookworm", "--machine", "pc-q35-5.2", "--machine", "pc-i440fx-7.2",
            "--guest", "minimal", *FW)
    whole = run_qabi(*args, "-o", str(tmp_path / "whole"))
    assert whole.returncode == 1, whole.stdout + whole.stderr
    shards = [run_qabi(*args, "--shard", f"{i}/2", "-o", str(tmp_path / f"m{i}")) for i in (1, 2)]

    def step(root: Path) -> Path:
        return next((root / "steps").glob("1-*")) / "qabi.json"

    parts = [json.loads(step(tmp_path / f"m{i}").read_text()) for i in (1, 2)]
    # the unsupported run (pc-i440fx-7.2 is not on bullseye) is in exactly one shard; both plan it
    assert sorted(len(p["runs"]) for p in parts) == [1, 1]
    assert all(["pc-i440fx-7.2", "minimal"] in p["shard"]["planned"] for p in parts)
    merged = run_qabi("report", "--merge", *(str(step(tmp_path / f"m{i}")) for i in (1, 2)), "-o", str(tmp_path / "mm"))
    full = json.loads(step(tmp_path / "whole").read_text())
    # the shard holding only the unsupported run compared nothing (exit 2); the merge decides
    assert sorted(s.returncode for s in shards) == [1, 2] and merged.returncode == 1, merged.stderr
    got = json.loads((tmp_path / "mm" / "qabi.json").read_text())
    assert got["verdict"] == full["verdict"] == "drift"
    assert _drift_set(got) == _drift_set(full)
    assert {(r["machine"], r["status"]) for r in got["runs"]} == {("pc-q35-5.2", "compared"),
                                                                   ("pc-i440fx-7.2", "unsupported")}


@pytest.mark.integration
def test_matrix_writes_csv_md_json_and_an_html_pivot_linking_each_step(tmp_path):
    out = tmp_path / "m"
    result = run_qabi("matrix", "debian:bullseye", "debian:bookworm", "debian:trixie", "--machine", "pc-q35-5.2",
                      "--machine", "pc-i440fx-7.2", "--guest", "minimal", *FW, "-o", str(out))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "matrix verdict: drift" in result.stdout
    data = pd.read_csv(out / "matrix.csv", keep_default_na=False)
    assert len(data) == 4 and list(data["step"].unique()) == [1, 2]
    assert set(data["step_label"]) == {"bullseye → bookworm", "bookworm → trixie"}
    lacking = data[(data["step"] == 1) & (data["machine"] == "pc-i440fx-7.2")].iloc[0]
    assert lacking["outcome"] == "unsupported" and "pc-i440fx-7.2 is not on debian:bullseye" in lacking["reason"]
    # every row agrees with the step's own report
    for row in data.itertuples():
        page, anchor = row.report.split("#")
        report = json.loads((out / page).with_name("qabi.json").read_text())
        run = report["runs"][int(anchor.removeprefix("run-"))]
        assert (run["machine"], run["guest"]) == (row.machine, row.guest)
        counted = {s: sum(1 for d in run["drifts"] if d["severity"] == s and d["waived"] is None)
                   for s in ("break", "warn", "info")}
        assert counted == {"break": row[data.columns.get_loc("break") + 1], "warn": row.warn, "info": row.info}
        assert (row.outcome == "drift") == bool(counted["break"] + counted["warn"])
    pivot = data.pivot(index="machine", columns="step_label", values="outcome")
    assert pivot.loc["pc-q35-5.2", "bullseye → bookworm"] == "drift"
    matrix = json.loads((out / "matrix.json").read_text())
    assert matrix["verdict"] == "drift" and len(matrix["rows"]) == 4
    assert matrix["pivot"]["pc-i440fx-7.2"]["bullseye → bookworm"]["outcome"] == "unsupported"
    md = (out / "matrix.md").read_text()
    assert "| machine type | bullseye → bookworm | bookworm → trixie |" in md

    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed")
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update",
                          f"--user-data-dir={profile}", "--dump-dom", (out / "index.html").resolve().as_uri()],
                         check=False, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert dom.returncode == 0, dom.stderr[-2000:]
    cells = re.findall(r'<td class="(\w+)" data-outcome="\w+">', dom.stdout)
    assert sorted(cells) == ["drift", "drift", "drift", "unsupported"]
    links = re.findall(r'<a href="(steps/[^"#]+/index\.html)#(run-\d+)">', dom.stdout)
    assert len(links) == 4
    for page, anchor in links:
        assert f'id="{anchor}"' in (out / page).read_text()
    assert '<p class="verdict" id="verdict">verdict: drift</p>' in dom.stdout


# -- the pytest plugin on recorded baselines (no QEMU): shards and bumps ------------------------------
pytest_plugins = ["pytester"]
BOOKWORM = REPO / "fingerprints" / "debian-bookworm-7.2.22_1_7.2+dfsg-7+deb12u18+b3"
TRIXIE = REPO / "fingerprints" / "debian-trixie-10.0.13_1_10.0.13+ds-0+deb13u1"


def _harness(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # this checkout's harness, whichever checkout the editable install points at
    pytester._monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))
    ini = pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_abi=(REPO / "harness/test_guest_abi.py").read_text())
    return pytester.runpytest_subprocess("-p", "harness.plugin", "-p", "no:cacheprovider", "-c", str(ini),
                                         "--rootdir", str(pytester.path), *args)


def test_plugin_shards_merge_into_the_unsharded_report(pytester):
    common = ("--baseline", str(BOOKWORM), "--qemu-new", str(TRIXIE), "--machine", "pc-i440fx-7.2",
              "--machine", "pc-q35-7.2", "--guest", "minimal", "--guest", "legacy")
    whole = _harness(pytester, *common, "--report", "whole")
    shards = [_harness(pytester, *common, "--shard", f"{i}/2", "--report", f"shard{i}") for i in (1, 2)]
    assert whole.ret == 1 and all(s.ret == 1 for s in shards)
    parts = [pytester.path / f"shard{i}" / "qabi.json" for i in (1, 2)]
    assert sorted(len(json.loads(p.read_text())["runs"]) for p in parts) == [2, 2]
    merged = merge_reports(parts)
    full = json.loads((pytester.path / "whole" / "qabi.json").read_text())
    assert merged.verdict == full["verdict"] == "drift"
    # the merged report lists runs by machine type (oldest first), then profile name
    keys = ("subject", "path", "old", "new", "severity", "waived")
    assert {(r.machine, r.guest): [[d.as_dict()[k] for k in keys] for d in r.drifts] for r in merged.runs} == \
        {(r["machine"], r["guest"]): [[d[k] for k in keys] for d in r["drifts"]] for r in full["runs"]}
    assert [(r.machine, r.guest) for r in merged.runs] == sorted((r["machine"], r["guest"]) for r in full["runs"])
    records = [json.loads(p.read_text())["shard"] for p in parts]
    assert [(r["index"], r["count"]) for r in records] == [(1, 2), (2, 2)]
    assert records[0]["planned"] == records[1]["planned"] == [[r["machine"], r["guest"]] for r in full["runs"]]
    with pytest.raises(QabiError, match="was not made with --shard"):
        merge_reports([parts[0], pytester.path / "whole" / "qabi.json"])
    # a shard run with a narrower selection (-k) leaves a planned run out: the merge says so
    narrow = _harness(pytester, *common, "--shard", "2/2", "-k", "not legacy", "--report", "narrow")
    assert narrow.ret == 1
    with pytest.raises(QabiError, match=r"planned run\(s\) in no shard's report \(pc-\S+ legacy"):
        merge_reports([parts[0], pytester.path / "narrow" / "qabi.json"])


def test_plugin_empty_shard_is_one_line_and_exit_2(pytester):
    result = _harness(pytester, "--baseline", str(BOOKWORM), "--qemu-new", str(TRIXIE), "--machine", "pc-q35-7.2",
                      "--guest", "minimal", "--shard", "2/2", "--report", "empty")
    assert result.ret == 2
    assert "qabi: --shard 2/2: the check has 1 planned run(s): use at most 1 shard" in result.stderr.str() + \
        result.stdout.str()


def test_plugin_machine_bump_waives_the_machine_name(pytester):
    result = _harness(pytester, "--baseline", str(BOOKWORM), "--qemu-new", str(BOOKWORM), "--machine",
                      "pc-i440fx-7.2:pc-q35-7.2", "--guest", "minimal", "--report", "rep")
    assert result.ret == 1
    run = json.loads((pytester.path / "rep" / "qabi.json").read_text())["runs"][0]
    assert run["machine"] == "pc-i440fx-7.2:pc-q35-7.2"
    reason = "machine type bump pc-i440fx-7.2 → pc-q35-7.2: the machine type's own name"
    assert {d["path"] for d in run["drifts"] if d["waived"] == reason} >= {"fields.version"}
    assert all(d["waived"] is None for d in run["drifts"] if d["old"] != "pc-i440fx-7.2")


# -- the matrix tables, on synthetic runs (no QEMU) ---------------------------------------------------

def test_matrix_frame_pivot_and_files_from_runsets(tmp_path):
    from harness.matrix.run import Step
    from harness.matrix.table import frame, pivot, write_outputs

    hostile = "<img src=x onerror=alert(1)>"
    s1 = Step(1, "debian:bookworm", "debian:trixie", check=None, folder="steps/1-a")  # type: ignore[arg-type]
    s1.runset = RunSet((_run("pc-q35-7.2", "minimal", (DRIFT,)), _run("pc-q35-7.2", "windows"),
                        Run("pc-q35-8.0", "minimal", status="error", reason=hostile)))
    s2 = Step(2, "debian:trixie", "debian:sid", check=None, folder="steps/2-b")  # type: ignore[arg-type]
    s2.runset = RunSet((_run("pc-q35-7.2", "minimal", (DRIFT.waive("accepted"),)),))
    data = frame([s1, s2])
    assert len(data) == 4
    table = pivot(data)
    assert table.loc["pc-q35-7.2", "bookworm → trixie"]["outcome"] == "drift"
    assert table.loc["pc-q35-7.2", "trixie → sid"]["text"] == "unchanged 1 waived"
    assert table.loc["pc-q35-8.0", "bookworm → trixie"]["outcome"] == "error"
    assert pd.isna(table.loc["pc-q35-8.0", "trixie → sid"])
    out = write_outputs([s1, s2], data, tmp_path, 1.5, "t")
    back = pd.read_csv(out["matrix.csv"], keep_default_na=False)
    assert back.to_dict("records") == data.to_dict("records")
    assert back.loc[0, "report"] == "steps/1-a/index.html#run-0" and back.loc[0, "break"] == 1
    html = out["index.html"].read_text()
    assert hostile not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert json.loads(out["matrix.json"].read_text())["verdict"] == "error"
