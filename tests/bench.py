"""Benchmarks: speed and size figures (printed, never asserted). Run: tox -e bench, or
python tests/bench.py [--runs N] [--spec SPEC] [--machine M] [--skip-provision] [--fast-loop] [--fresh-main]
(--fast-loop: only the process start, whole-process capture and cold peer-pair figures, printed first;
--fresh-main: also the main job on an empty cache, provisioning included)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# figures of a normal install: Python writes and reuses bytecode (a sandbox may forbid it)
BASE_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _qabi(*args: str, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    done = subprocess.run(check=False, args=[sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**BASE_ENV, **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"qabi {' '.join(args)} failed: {done.stderr.strip()}")
    return time.monotonic() - started


def bench_provision(spec: str) -> None:
    from harness.qemu import cached_builds

    with tempfile.TemporaryDirectory() as home:
        cold = _qabi("qemu", "fetch", spec, env={"XDG_CACHE_HOME": home})
        warm = _qabi("qemu", "fetch", spec, env={"XDG_CACHE_HOME": home})
        os.environ_backup = dict(os.environ)  # type: ignore[attr-defined]
        os.environ["XDG_CACHE_HOME"] = home
        try:
            (build,) = cached_builds()
        finally:
            os.environ.clear()
            os.environ.update(os.environ_backup)  # type: ignore[attr-defined]
    print(f"provision {spec}: cold {cold:.1f} s, warm {warm:.2f} s, {build['packages']} packages, "
          f"prefix {build['bytes'] / 1e6:.0f} MB")


def bench_capture(spec: str, machine: str, runs: int) -> list[Path]:
    from harness.capture import capture, plan_capture
    from harness.guest.profile import load_profile, profile_names
    from harness.plan import SERIAL
    from harness.qemu import resolve

    build = resolve(spec)
    kept = []
    work = Path(tempfile.mkdtemp(prefix="qabi-bench-"))
    for guest in profile_names():
        walls, phases = [], []
        for i in range(runs):
            out = work / f"{guest}-{i}"
            started = time.monotonic()
            cap = capture(plan_capture(build, load_profile(guest), machine, access=SERIAL), out)
            walls.append(time.monotonic() - started)
            info = {k: float(v) for k, v in cap.manifest.get("probe", {}).items() if k.startswith("uptime")}
            t = cap.manifest["timings"]
            phases.append((info.get("uptime-init", 0.0), info.get("uptime-probe-end", 0.0) - info.get(
                "uptime-probe-start", 0.0), t.get("transfer", 0.0), t.get("boot_to_probe", 0.0)))
        kept.append(work / f"{guest}-0")
        med = statistics.median(walls)
        boot = statistics.median(p[0] for p in phases)
        probe = statistics.median(p[1] for p in phases)
        transfer = statistics.median(p[2] for p in phases)
        print(f"capture {spec} {machine} {guest:<13} median {med:5.2f} s over {runs} "
              f"(guest uptime at /init {boot:4.2f} s = firmware + kernel; probe in guest {probe:4.2f} s; "
              f"host: boot-to-probe {statistics.median(p[3] for p in phases):4.2f} s, "
              f"probe start-to-trailer {transfer:4.2f} s)")
    return kept


def bench_ssh(spec: str, machine: str, runs: int) -> None:
    """SSH against serial capture wall time, same build, machine and profile (profiles with a NIC)."""
    from harness.capture import capture, plan_capture
    from harness.guest.profile import load_profile
    from harness.plan import GuestAccess
    from harness.qemu import resolve

    build = resolve(spec)
    work = Path(tempfile.mkdtemp(prefix="qabi-bench-ssh-"))
    for guest in ("linux-virtio", "windows"):
        walls: dict[str, list[float]] = {"serial": [], "ssh": []}
        ready: list[float] = []
        for i in range(runs):
            for transport in ("serial", "ssh"):
                started = time.monotonic()
                cap = capture(plan_capture(build, load_profile(guest), machine, access=GuestAccess(transport=transport)),
                              work / f"{guest}-{transport}-{i}")
                walls[transport].append(time.monotonic() - started)
                if transport == "ssh":
                    ready.append(cap.manifest["timings"].get("boot_to_ssh", 0.0))
        print(f"transport {spec} {machine} {guest:<13} serial median {statistics.median(walls['serial']):5.2f} s, "
              f"ssh median {statistics.median(walls['ssh']):5.2f} s over {runs} "
              f"(ssh: logged in after {statistics.median(ready):4.2f} s)")


def bench_firmware(spec: str, runs: int, serial_runs: int | None = None) -> None:
    """Firmware against serial capture wall time: median of `runs` (serial: of `serial_runs`, default
    `runs`), each profile, both families."""
    from harness.capture import capture, plan_capture
    from harness.guest.profile import load_profile, profile_names
    from harness.plan import SERIAL, GuestAccess
    from harness.qemu import resolve

    build = resolve(spec)
    work = Path(tempfile.mkdtemp(prefix="qabi-bench-fw-"))
    firmware = GuestAccess(transport="firmware")
    for machine in ("pc-i440fx-7.2", "pc-q35-7.2"):
        for guest in profile_names():
            if load_profile(guest).uefi or not load_profile(guest).applies_to(machine):
                continue                      # bench_uefi: no serial capture under Secure Boot
            walls: dict[str, list[float]] = {"firmware": [], "serial": []}
            for i in range(runs):
                for name, access in (("firmware", firmware), ("serial", SERIAL)):
                    if name == "serial" and i >= (runs if serial_runs is None else serial_runs):
                        continue
                    plan = plan_capture(build, load_profile(guest), machine, access=access)
                    started = time.monotonic()
                    capture(plan, work / f"{machine}-{guest}-{name}-{i}")
                    walls[name].append(time.monotonic() - started)
            fw, serial = statistics.median(walls["firmware"]), statistics.median(walls["serial"])
            print(f"firmware {spec} {machine:<14} {guest:<13} firmware median {fw:5.2f} s, serial median "
                  f"{serial:5.2f} s over {runs}/{len(walls['serial'])} (ratio {fw / serial:4.2f})")


PEER_PAIR = ("debian:trixie", "debian:sid", ("pc-i440fx-7.2", "pc-q35-7.2"))
PEER_SECONDS = 3.2   # QEMU's scripts/compare-machine-types.py on the same pair, as measured in issue 20


def _median_wall(argv: tuple[str, ...], runs: int, env: dict[str, str] | None = None) -> float:
    return statistics.median(_qabi(*argv, env=env) for _ in range(runs))


def _empty_capture_cache(parent: Path) -> dict[str, str]:
    """The environment of a cache with nothing captured: a new XDG_CACHE_HOME under `parent` whose qabi
    folders (builds, images, OVMF vars, ...) link to this user's, all but `captures`."""
    from harness.cache import cache_root

    home = Path(tempfile.mkdtemp(prefix="cache-", dir=parent))
    (home / "qabi").mkdir()
    for entry in cache_root().iterdir():
        if entry.name != "captures" and not entry.name.startswith("."):
            (home / "qabi" / entry.name).symlink_to(entry)
    return {"XDG_CACHE_HOME": str(home)}


def _cold_pair(work: Path, guests: tuple[str, ...], runs: int = 3) -> list[float]:
    """Wall times of `runs` checks of the peer's pair, each on a new empty capture cache under `work`."""
    old, new, machines = PEER_PAIR
    cold = []
    for i in range(runs):
        argv = ("check", "--old", old, "--new", new, *(a for m in machines for a in ("--machine", m)),
                *(a for g in guests for a in ("--guest", g)), "--report", str(work / f"report-{len(guests)}-{i}"))
        env = {**BASE_ENV, **_empty_capture_cache(work)}
        started = time.monotonic()
        done = subprocess.run(check=False, args=[sys.executable, "-m", "harness.cli", *argv],
                              capture_output=True, text=True, cwd=REPO, env=env)
        cold.append(time.monotonic() - started)
        if done.returncode not in (0, 1):
            raise SystemExit(f"qabi {' '.join(argv)} failed: {done.stderr.strip()}")
    return cold


def bench_fast_loop(runs: int = 5) -> None:
    """The fast loop (issue 20): a process that starts at once, a firmware capture as a whole process,
    and the peer's pair cold: an empty capture cache (the builds cached), every capture made.

    The figures are qabi's work, so the bench's own files (captures, reports) go to memory
    (/dev/shm): on a disk file system without a journal (ext4 here), creating a file skips over
    every inode freed nearby in the last one to six minutes, so a run right after a test suite or an
    earlier bench (each deletes thousands of files) would bill qabi for them. The SeaBIOS pair is
    also printed with its capture cache on the disk, next to it, to show that effect."""
    from harness.cache import memory_scratch

    print(f"qabi --help (whole process): median {_median_wall(('--help',), runs):5.2f} s over {runs}")
    spec, machine = "debian:bookworm", "pc-q35-7.2"
    where = "memory" if memory_scratch() else "the disk"
    with tempfile.TemporaryDirectory(prefix="qabi-bench-loop-", dir=memory_scratch()) as scratch:
        work = Path(scratch)
        walls = [_qabi("capture", "--qemu", spec, "--machine", machine, "--guest", "minimal", "-o",
                       str(work / f"capture-{i}")) for i in range(runs)]
        print(f"capture {spec} {machine} minimal over firmware (whole process, bundle in {where}): median "
              f"{statistics.median(walls):5.2f} s over {runs}")
        old, new, machines = PEER_PAIR
        from harness.guest.profile import load_profile, profile_names

        seabios = tuple(g for g in profile_names() if not load_profile(g).uefi)
        for label, guests in ((f"the SeaBIOS profiles ({', '.join(seabios)})", seabios), ("every profile", ())):
            cold = _cold_pair(work, guests)
            print(f"check {old} -> {new} {' '.join(machines)}, {label}, cold (empty capture cache in {where}): "
                  f"median {statistics.median(cold):5.2f} s, best {min(cold):5.2f} s over 3 "
                  f"(compare-machine-types.py: {PEER_SECONDS} s)")
    if memory_scratch():
        with tempfile.TemporaryDirectory(prefix="qabi-bench-disk-") as scratch:
            cold = _cold_pair(Path(scratch), seabios)
        print(f"check {old} -> {new} {' '.join(machines)}, the SeaBIOS profiles, cold (empty capture cache "
              f"on the disk, {tempfile.gettempdir()}): median {statistics.median(cold):5.2f} s, best "
              f"{min(cold):5.2f} s over 3")


def bench_fresh_main_job() -> None:
    """The main job on a machine that has never run qabi: `pytest harness/` on an empty
    XDG_CACHE_HOME (both Debian builds fetched, verified and unpacked, then every capture), with the
    time of each provisioning step as qabi prints it."""
    with tempfile.TemporaryDirectory(prefix="qabi-bench-fresh-") as scratch:
        env = {**BASE_ENV, "XDG_CACHE_HOME": f"{scratch}/cache"}
        started = time.monotonic()
        done = subprocess.run(check=False, args=[sys.executable, "-m", "pytest", "harness/", "-q", "-p",
                                                 "no:cacheprovider", "--report", f"{scratch}/report"],
                              capture_output=True, text=True, cwd=REPO, env=env, stdin=subprocess.DEVNULL)
        wall = time.monotonic() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"pytest harness/ failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    steps = [line.split("qabi: ", 1)[1] for line in done.stderr.splitlines() if ": done in " in line]
    print(f"main job (pytest harness/) on an empty cache: {wall:5.1f} s; " + "; ".join(steps))


def bench_uefi(specs: list[str], machine: str, runs: int) -> None:
    """A UEFI hand-off capture (OVMF to the EFI probe, then the reads) of each UEFI profile: median
    wall time of `runs` fresh captures, and the manifest's boot-to-hand-off time."""
    from harness.capture import capture, plan_capture
    from harness.guest.profile import load_profile, profile_names
    from harness.qemu import resolve

    work = Path(tempfile.mkdtemp(prefix="qabi-bench-uefi-"))
    for spec in specs:
        build = resolve(spec)
        for guest in (g for g in profile_names() if load_profile(g).uefi):
            walls, handoffs = [], []
            for i in range(runs):
                started = time.monotonic()
                cap = capture(plan_capture(build, load_profile(guest), machine), work / f"{spec}-{guest}-{i}")
                walls.append(time.monotonic() - started)
                handoffs.append(cap.manifest["timings"]["boot_to_handoff"])
            print(f"uefi {spec} {machine} {guest:<14} capture median {statistics.median(walls):5.2f} s "
                  f"(min {min(walls):5.2f}, max {max(walls):5.2f}), QEMU start to probe done median "
                  f"{statistics.median(handoffs):5.2f} s over {runs} (load average {os.getloadavg()[0]:.1f})")


def bench_decode(captures: list[Path]) -> None:
    from harness.fingerprint import fingerprint_capture

    for cap in captures:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            fp = fingerprint_capture(cap)
            times.append(time.perf_counter() - started)
        size = len(json.dumps(fp))
        raw = sum(p.stat().st_size for p in (cap / "raw").rglob("*") if p.is_file())
        print(f"decode {cap.name:<16} median {statistics.median(times) * 1000:6.0f} ms, fingerprint "
              f"{size / 1024:6.0f} KiB JSON from {raw / 1024:5.0f} KiB raw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--spec", default="debian:bookworm")
    parser.add_argument("--machine", default="pc-q35-7.2")
    parser.add_argument("--skip-provision", action="store_true")
    parser.add_argument("--firmware-only", action="store_true", help="only the firmware vs serial figures")
    parser.add_argument("--uefi-only", action="store_true", help="only the UEFI hand-off capture figures")
    parser.add_argument("--serial-runs", type=int, help="serial captures per profile in the firmware figures "
                        "(default: --runs)")
    parser.add_argument("--fast-loop", action="store_true", help="only the fast-loop figures (issue 20)")
    parser.add_argument("--fresh-main", action="store_true", help="also the main job on an empty cache "
                        "(downloads two builds: about 100 MB)")
    args = parser.parse_args()
    bench_fast_loop()
    if args.fresh_main:
        bench_fresh_main_job()
    if args.fast_loop:
        return
    if args.firmware_only:
        bench_firmware(args.spec, args.runs, args.serial_runs)
        return
    if args.uefi_only:
        bench_uefi([args.spec, "debian:trixie"], args.machine, args.runs)
        return
    if not args.skip_provision:
        bench_provision("debian:bullseye=1:5.2+dfsg-11+deb11u3")
    captures = bench_capture(args.spec, args.machine, args.runs)
    bench_decode(captures)
    bench_ssh(args.spec, args.machine, args.runs)
    bench_firmware(args.spec, args.runs, args.serial_runs)
    bench_uefi([args.spec, "debian:trixie"], args.machine, args.runs)


if __name__ == "__main__":
    main()
