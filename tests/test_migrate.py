"""--migrate on real QEMU under TCG: live migration old -> new (and back), vmstate, device properties.

The builds are the system QEMU and wrapper builds around it: an executable script given as a path
spec that execs the same qemu-system-x86_64 with one more option (a changed property on the new
side, an extra device on the old side), which is what a packager's patched build looks like to
qabi. Every failure mode ends with a one-line reason and no QEMU left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_qabi

pytestmark = pytest.mark.integration

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


def _wrapper(folder: Path, name: str, body: str) -> str:
    """An executable script build: `body` runs with $Q the system QEMU and "$@" qabi's argv."""
    path = folder / name
    path.write_text(f"#!/bin/sh\nQ={QEMU}\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture(scope="module")
def builds() -> Iterator[dict[str, str]]:
    # content-stable scripts (their sha256 keys the capture cache) in a short private dir
    folder = Path(tempfile.mkdtemp(prefix="qabi-wrap-"))
    try:
        yield {
            "vectors": _wrapper(folder, "qemu-vectors7", 'exec "$Q" "$@" -global virtio-net-pci.vectors=7'),
            # the extra device only where there is a machine to plug it in (not for -machine none)
            "extra": _wrapper(folder, "qemu-extra-rng", 'case " $* " in *" -machine none "*) exec "$Q" "$@" ;; esac\n'
                                                         'exec "$Q" "$@" -device virtio-rng-pci,addr=0x1e'),
            "novmstate": _wrapper(folder, "qemu-no-vmstate",
                                  'case " $* " in *" -dump-vmstate "*) echo "qemu-system-x86_64: -dump-vmstate: '
                                  'invalid option" >&2; exit 1 ;; esac\nexec "$Q" "$@"'),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _leftover(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (a private dir of this test)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "qemu" in cmdline:
            found.append(cmdline[:200])
    return found


def _check(tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    out = tmp_path / "r.json"
    done = run_qabi("check", *args, "--json", str(out), env={"TMPDIR": str(tmp_path)}, timeout=1200)
    data = json.loads(out.read_text()) if out.is_file() else {}
    if data:
        from harness.report import runset_from_json, to_json

        runset = runset_from_json(data)   # the migration object round-trips
        again = to_json(runset, details=True)
        assert [r.get("migration") for r in again["runs"]] == [r.get("migration") for r in data["runs"]]
    assert not _leftover(str(tmp_path)), "QEMU left running"
    return done.returncode, data, done.stdout + done.stderr


def test_same_build_migrates_ok_and_the_guest_sees_identical_hardware(tmp_path):
    rc, data, out = _check(tmp_path, "--old", "system", "--new", "system", "--migrate", "both",
                           "--machine", "pc-i440fx-7.2", "--guest", "linux-virtio")
    assert rc == 0, out[-3000:]
    run = data["runs"][0]
    assert run["migration"]["status"] == "ok" and run["migration"]["direction"] == "both"
    assert [(leg["direction"], leg["status"]) for leg in run["migration"]["legs"]] == [("forward", "ok"),
                                                                                     ("rollback", "ok")]
    assert {"migration", "vmstate", "props"} <= set(run["categories"]) and run["drifts"] == []
    # before and after: the same raw bytes, record for record
    from harness.cache import cache_dir

    def this_run(folder: Path) -> bool:   # other tests migrate the same machine and profile meanwhile
        record = folder / "new" / "migration.json"
        if not record.is_file():          # another test's migration, still under way
            return False
        legs = json.loads(record.read_text())
        return set(legs) == {"forward", "rollback"} and {legs["forward"]["source"],
                                                         legs["forward"]["destination"]} == {"system"}

    rundirs = sorted((p for p in cache_dir("migrations").glob("pc-i440fx-7.2_linux-virtio_*")
                      if p.is_dir() and this_run(p)), key=lambda p: p.stat().st_mtime)
    for leg in ("forward", "rollback"):
        before, after = rundirs[-1] / "old" / leg / "raw", rundirs[-1] / "new" / leg / "raw"
        files = sorted(p.relative_to(before) for p in before.rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(after) for p in after.rglob("*") if p.is_file())
        assert all((before / f).read_bytes() == (after / f).read_bytes() for f in files)


def test_vectors_destination_refuses_the_stream_naming_the_device(tmp_path, builds):
    rc, data, out = _check(tmp_path, "--old", "system", "--new", builds["vectors"], "--migrate", "forward",
                           "--machine", "pc-i440fx-7.2", "--guest", "linux-virtio")
    assert rc == 1, out[-3000:]
    run = data["runs"][0]
    mig = run["migration"]
    assert mig["status"] == "failed"
    assert "0000:00:03.0/virtio-net" in mig["error"] and "failed to load the stream" in mig["error"]
    assert mig["legs"][0]["device"] == "virtio-net-pci"
    failed = [d for d in run["drifts"] if d["category"] == "migration"]
    assert len(failed) == 1 and failed[0]["severity"] == "break" and "virtio-net-pci" in failed[0]["subject"]
    # the property that made the difference, with both values
    assert any(d["category"] == "props" and d["subject"] == "props virtio-net-pci" and d["path"] == "vectors"
               and d["new"] == 7 and d["old"] != 7 for d in run["drifts"])


def test_old_only_device_fails_migration_naming_the_section(tmp_path, builds):
    rc, data, out = _check(tmp_path, "--old", builds["extra"], "--new", "system", "--migrate", "forward",
                           "--machine", "pc-i440fx-7.2", "--guest", "minimal")
    assert rc == 1, out[-3000:]
    run = data["runs"][0]
    mig = run["migration"]
    assert mig["status"] == "failed" and "0000:00:1e.0/virtio-rng" in mig["error"], mig
    assert mig["legs"][0]["section"] == "0000:00:1e.0/virtio-rng"
    subjects = {d["subject"] for d in run["drifts"] if d["category"] == "migration"}
    assert any("virtio-rng-pci" in s and "0000:00:1e.0/virtio-rng" in s for s in subjects), subjects
    # the device exists on the old VM only (-dump-vmstate is per device type: the same on both builds)
    assert any(d["category"] == "props" and d["subject"] == "props virtio-rng-pci" and d["path"] == "(device)"
               for d in run["drifts"])


def test_build_that_cannot_dump_vmstate_is_one_line_exit_2(tmp_path, builds):
    rc, data, out = _check(tmp_path, "--old", "system", "--new", builds["novmstate"], "--migrate", "forward",
                           "--machine", "pc-i440fx-7.2", "--guest", "minimal")
    assert rc == 2, out[-3000:]
    run = data["runs"][0]
    assert run["status"] == "error" and "cannot -dump-vmstate" in run["reason"] and "\n" not in run["reason"]
    assert run["migration"]["status"] == "skipped"


# -- failure modes inside one migration (harness.migrate.migrate_run, real QEMU) -----------------------

def _plans(timeout: float, guest: str = "minimal") -> tuple:
    from harness.capture import plan_capture
    from harness.guest.profile import load_profile
    from harness.qemu import resolve

    build = resolve("system")
    return tuple(plan_capture(build, load_profile(guest), "pc-i440fx-7.2", timeout=timeout) for _ in range(2))


@pytest.fixture
def short_tmp(monkeypatch) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="qm-"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_stalled_stream_fails_by_timeout(short_tmp, monkeypatch):
    from harness import migrate

    real = migrate.migrate

    def stalled(src, dst, *args, **kwargs):   # the destination QEMU stops reading: a real stall
        os.kill(dst.proc.pid, signal.SIGSTOP)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(migrate, "migrate", stalled)
    old, new = _plans(timeout=90)   # the boot keeps its time; the leg waits 8 s (production: the plan's)
    outcome = migrate.migrate_run(old, new, "forward", short_tmp / "run", leg_timeout=8)
    (leg,) = outcome.legs
    assert leg.status == "failed" and leg.error and leg.error.startswith("migration stalled: not completed within 8s")
    assert not _leftover(str(short_tmp))


def test_guest_that_does_not_answer_after_migration_fails(short_tmp, monkeypatch):
    from harness import migrate
    from harness.transport.serial import LiveConsole

    monkeypatch.setattr(LiveConsole, "request", b"not-a-request\n")   # the guest waits for "probe" in vain
    old, new = _plans(timeout=60)   # a short leg: the migration itself takes a second or two
    outcome = migrate.migrate_run(old, new, "forward", short_tmp / "run", leg_timeout=15)
    (leg,) = outcome.legs
    assert leg.status == "failed" and leg.error and leg.error.startswith("guest does not answer after migration")
    assert "\n" not in leg.error
    assert not _leftover(str(short_tmp))


pytest_plugins = ["pytester"]


def test_pytest_harness_has_migration_items(pytester, monkeypatch):
    """`pytest harness/ --migrate forward`: the registry's host-side categories become items
    (`…-migration`, `…-vmstate`, `…-props`) and pass for the same build on both sides."""
    from conftest import REPO

    monkeypatch.setenv("PYTHONPATH", str(REPO))   # this checkout's harness, whatever is installed

    ini = pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_abi=(REPO / "harness/test_guest_abi.py").read_text())
    result = pytester.runpytest_subprocess("-p", "harness.plugin", "-p", "no:cacheprovider", "-c", str(ini),
                                           "--rootdir", str(pytester.path), "--qemu-old", "system", "--qemu-new",
                                           "system", "--machine", "pc-i440fx-7.2", "--guest", "minimal",
                                           "--migrate", "forward", "--report", "rep", "-v", timeout=1200)
    result.stdout.fnmatch_lines(["*test_guest_abi?pc-i440fx-7.2-minimal-migration? PASSED*",
                                 "*test_guest_abi?pc-i440fx-7.2-minimal-vmstate? PASSED*",
                                 "*test_guest_abi?pc-i440fx-7.2-minimal-props? PASSED*"])
    from harness.categories import names

    result.assert_outcomes(passed=len(names()))     # every guest-side category (firmware: registers, fwcfg too)
    data = json.loads((pytester.path / "rep" / "qabi.json").read_text())
    assert data["runs"][0]["migration"]["status"] == "ok"
