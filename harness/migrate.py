"""Live migration, vmstate and device properties: what QEMU itself says about one (machine, profile).

    outcome = migrate_run(old_plan, new_plan, direction, rundir)

- **Live migration** (`forward`: old → new; `both`: then back, new → old). The reference guest
  boots under the source build in stay mode (serial console, it probes and waits), the
  destination starts with the same machine type and profile and `-incoming unix:WORK/mig.sock`,
  the source migrates over QMP, and a leg is `ok` only when the source says `completed`, the
  destination runs (`query-status` → `running`) and the same guest answers a new probe run.
  The destination dying, a stream that does not finish in time, or a guest that does not answer
  make the leg `failed` with a one-line error (the destination's own, naming the section it
  could not load). No QEMU is left running on any path (harness.qemu.process.spawn).
- **Device properties**: every device of the running VM (QOM tree under /machine: the profile's
  devices, the machine's built-in ones and their device children such as virtio-backend) with
  the scalar values of its properties (`qom-list` + `qom-get`, QEMU 5.2 and later), read on the
  source before it migrates and on the destination before the stream arrives.
- **vmstate**: `-dump-vmstate` of each build for the machine type. QEMU dumps the migration
  schema of every device *type* that has one, whatever the machine instantiates; kept are the
  types instantiated on either VM (from the QOM walk).

The results are host-side raw inputs of the `migration`, `vmstate` and `props` categories,
written as JSON into two directories: `old/` (expected: the old build's vmstate and properties,
and per leg the guest's capture *before* migrating) and `new/` (the new build's, and per leg the
capture *after*), so that comparing old with new compares before with after.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.cache import atomic_write_bytes
from harness.errors import CaptureError, QabiError
from harness.plan import CapturePlan
from harness.qemu.process import private_dir, spawn
from harness.transport.base import TransportResult, early_exit_error
from harness.transport.framing import write_raw
from harness.transport.launch import QMP_SOCKET, dump_vmstate_argv, qemu_argv
from harness.transport.qmp import Qmp, QmpError

if TYPE_CHECKING:
    from harness.transport.serial import LiveConsole

Direction = Literal["forward", "both"]
DIRECTIONS: tuple[str, ...] = ("none", "forward", "both")
LegStatus = Literal["ok", "failed"]
MIGRATION_FILE = "migration.json"
VMSTATE_FILE = "vmstate.json"
PROPS_FILE = "props.json"
MIG_SOCKET = "mig.sock"
ROLLBACK_SOCKET = "mig-back.sock"
DUMP_TIMEOUT = 60.0
QMP_TIMEOUT = 30.0
MAX_PROPS = 4096                 # properties read per VM (a runaway QOM tree is an error)
# the destination's own words for the section it could not load
_SECTION = re.compile(r"(?:of device|savevm section or instance) '([^']+)'")


def check_direction(value: str | None) -> str:
    """"none", "forward" or "both" (None and "" mean "none")."""
    value = value or "none"
    if value not in DIRECTIONS:
        raise QabiError(f"--migrate must be forward or both, not '{value}'")
    return value


@dataclass(frozen=True)
class Leg:
    """One migration: `forward` (old → new) or `rollback` (new → old)."""

    direction: str
    source: str                      # build specs
    destination: str
    status: LegStatus
    seconds: float | None = None     # migrate command to the destination running (or the failure)
    error: str | None = None
    section: str | None = None       # the vmstate section the destination named
    device: str | None = None        # the device type of that section on the source VM, when known

    def as_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "source": self.source, "destination": self.destination,
                "status": self.status, "seconds": self.seconds, "error": self.error,
                "section": self.section, "device": self.device}


@dataclass(frozen=True)
class Outcome:
    """What migrate_run found: its legs and the two host-side directories (old/, new/)."""

    legs: tuple[Leg, ...]
    old: Path
    new: Path
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


# -- one running VM ----------------------------------------------------------------------------------

class LiveVM:
    """One QEMU of a migration: its process, console and QMP (all closed by the caller's ExitStack)."""

    def __init__(self, plan: CapturePlan, work: Path, name: str, console: LiveConsole,
                 stack: contextlib.ExitStack, incoming: Path | None = None, paused: bool = False) -> None:
        self.plan = plan
        self.name = name
        self.dir = work / name
        self.dir.mkdir(mode=0o700)
        self.stderr = self.dir / "qemu.stderr"
        from harness.transport.serial import SOCKET, TRANSPORT  # the live guest is on its serial console

        setup = TRANSPORT.setup(plan, self.dir, console.console_log, stay=True)
        argv = qemu_argv(plan, self.dir, setup, incoming=incoming, paused=paused)
        self.proc = stack.enter_context(spawn(argv, plan.build.environ(), stderr_path=self.stderr))
        timeout = min(plan.timeout, 60.0)
        try:
            console.attach(self.dir / SOCKET, self.proc, timeout)
            self.qmp = Qmp.connect(self.dir / QMP_SOCKET, timeout, self.alive, what=f"{plan.build.spec} ({name})")
        except CaptureError:
            if not self.alive():
                raise self.exit_error() from None
            raise
        stack.callback(self.qmp.close)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_error(self) -> Exception:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return early_exit_error(self.stderr_text(), self.dir / "console.log")

    def stderr_text(self) -> str:
        try:
            return self.stderr.read_text(errors="replace")[-8192:]
        except OSError:
            return ""

    def kill(self) -> None:
        self.qmp.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)


def _destination_error(vm: LiveVM) -> tuple[str, str | None]:
    """The destination's one-line reason (its line naming the section first) and that section."""
    lines = [ln.strip() for ln in vm.stderr_text().splitlines() if ln.strip()]
    for ln in lines:
        match = _SECTION.search(ln)
        if match:
            return _strip_prog(ln), match.group(1)
    if lines:
        return _strip_prog(lines[-1]), None
    return f"exit status {vm.proc.poll()}", None


def _strip_prog(line: str) -> str:
    return re.sub(r"^\S*qemu-system-\S+: ", "", line)[:400]


def migrate(src: LiveVM, dst: LiveVM, sock: Path, console: LiveConsole, direction: str,
            devices: dict[str, dict[str, Any]], timeout: float | None = None) -> tuple[Leg, TransportResult | None]:
    """Migrate `src` to `dst` (which waits on `sock`), then have the guest probe again, all within
    `timeout` seconds (default: the source plan's timeout)."""
    timeout = timeout or src.plan.timeout
    started = time.monotonic()
    deadline = started + timeout

    def leg(status: LegStatus, error: str | None = None, section: str | None = None) -> Leg:
        device = _section_device(section, devices) if section else None
        return Leg(direction, src.plan.build.spec, dst.plan.build.spec, status,
                   round(time.monotonic() - started, 3), error, section, device)

    def failed_dst() -> Leg:
        if dst.alive():
            dst.kill()
        error, section = _destination_error(dst)
        return leg("failed", f"destination {dst.plan.build.spec} failed to load the stream: {error}", section)

    try:
        src.qmp.cmd("migrate", timeout=QMP_TIMEOUT, uri=f"unix:{sock}")
    except QmpError as exc:
        return (failed_dst() if not dst.alive() else leg("failed", f"migrate refused: {exc}")), None
    source_status = "active"
    while True:  # the source's view
        if not dst.alive():
            return failed_dst(), None
        try:
            info = src.qmp.cmd("query-migrate", timeout=QMP_TIMEOUT) or {}
        except QmpError as exc:
            return leg("failed", f"source {src.plan.build.spec} stopped answering: {exc}"), None
        source_status = str(info.get("status", "?"))
        if source_status == "completed":
            break
        if source_status in ("failed", "cancelled"):
            time.sleep(0.5)   # let the destination say why before reading its stderr
            if not dst.alive() or dst.stderr_text().strip():
                return failed_dst(), None
            return leg("failed", f"source reports migration {source_status}: {info.get('error-desc', '')}"), None
        if time.monotonic() > deadline:
            return leg("failed", f"migration stalled: not completed within {timeout:.0f}s "
                                 f"(source status {source_status})"), None
        time.sleep(0.05)
    # the source says completed: that alone proves nothing; the destination must run
    status = "?"
    while time.monotonic() < deadline:
        if not dst.alive():
            return failed_dst(), None
        try:
            status = str((dst.qmp.cmd("query-status", timeout=QMP_TIMEOUT) or {}).get("status"))
        except QmpError:
            return failed_dst(), None
        if status == "running":
            break
        if status in ("internal-error", "shutdown", "guest-panicked", "io-error"):
            return leg("failed", f"destination {dst.plan.build.spec} is in state {status} after the stream"), None
        time.sleep(0.05)
    else:
        return leg("failed", f"destination {dst.plan.build.spec} did not run within {timeout:.0f}s "
                             f"(status {status})"), None
    seconds = round(time.monotonic() - started, 3)
    try:
        result = console.probe(max(5.0, deadline - time.monotonic()), ask=True)
    except CaptureError as exc:
        if not dst.alive():
            return failed_dst(), None
        return leg("failed", f"guest does not answer after migration: {exc}"), None
    return replace(leg("ok"), seconds=seconds), result


def _section_device(section: str, devices: dict[str, dict[str, Any]]) -> str | None:
    """The device type of a section like `0000:00:03.0/virtio-net` on the VM (by PCI address),
    or the section's own idstr."""
    head, _, idstr = section.rpartition("/")
    match = re.fullmatch(r"[0-9a-f]{4}:00:([0-9a-f]{2})\.([0-7])", head)
    if match:
        devfn = int(match.group(1), 16) << 3 | int(match.group(2))
        for entry in devices.values():
            if entry.get("props", {}).get("addr") == devfn and entry.get("pci"):
                return str(entry["type"])
    return idstr or None


# -- the QOM walk ------------------------------------------------------------------------------------

def device_tree(qmp: Qmp) -> dict[str, dict[str, Any]]:
    """Every device under /machine (and their device children) with the scalar values of its
    properties, keyed by type (`#N` for the Nth of a type in QOM order)."""
    device_types = {t["name"] for t in qmp.cmd("qom-list-types", implements="device", abstract=True) or ()}
    pci_types = {t["name"] for t in qmp.cmd("qom-list-types", implements="pci-device", abstract=True) or ()}
    out: dict[str, dict[str, Any]] = {}
    budget = [MAX_PROPS]

    def natural(name: str) -> tuple[Any, ...]:
        return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))

    def walk(path: str, parent: str | None) -> None:
        children = []
        for prop in qmp.cmd("qom-list", path=path) or ():
            kind = str(prop.get("type", ""))
            if kind.startswith("child<") and kind.endswith(">"):
                children.append((str(prop["name"]), kind[6:-1]))
        for name, kind in sorted(children, key=lambda c: natural(c[0])):
            child = f"{path}/{name}"
            if kind in device_types:
                # keyed by type, not by QOM path: releases move built-in devices around the tree
                # (QEMU 10.0 made PIIX3's RTC, PM, IDE and DMA its children)
                key, n = kind, 2
                while key in out:
                    key, n = f"{kind}#{n}", n + 1
                out[key] = {"type": kind, "pci": kind in pci_types, "path": child.removeprefix("/machine/"),
                            "props": _props(qmp, child, budget)}
                walk(child, key)
            elif kind == "container" and parent is None:
                walk(child, None)

    walk("/machine", None)
    return out


def _props(qmp: Qmp, path: str, budget: list[int]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for prop in qmp.cmd("qom-list", path=path) or ():
        name, kind = str(prop.get("name")), str(prop.get("type", ""))
        if kind.startswith(("child<", "link<")):
            continue
        budget[0] -= 1
        if budget[0] < 0:
            raise CaptureError(f"more than {MAX_PROPS} device properties on the VM")
        try:
            value = qmp.cmd("qom-get", path=path, property=name)
        except QmpError as exc:
            if "closed" in str(exc) or "lost" in str(exc) or "in time" in str(exc):
                raise
            continue        # write-only or not readable in this state
        if value is None or isinstance(value, (bool, int, float, str)):
            values[name] = value
    return values


# -- vmstate ------------------------------------------------------------------------------------------

def dump_vmstate(plan: CapturePlan) -> dict[str, Any]:
    """`-dump-vmstate` of `plan`'s build for its machine type, parsed; QabiError (one line) when
    the build cannot."""
    build = plan.build
    with private_dir("qabi-vmstate-") as work:
        target = work / VMSTATE_FILE
        argv = dump_vmstate_argv(build, plan.machine, target)
        try:
            proc = subprocess.run(argv, env=build.environ(), stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=DUMP_TIMEOUT, start_new_session=True, check=False)
        except subprocess.TimeoutExpired:
            raise QabiError(f"{build.spec} cannot -dump-vmstate for {plan.machine}: "
                            f"no answer within {DUMP_TIMEOUT:.0f}s") from None
        except OSError as exc:
            raise QabiError(f"{build.spec} cannot -dump-vmstate: {exc}") from None
        text = proc.stderr.decode(errors="replace").strip()
        if proc.returncode != 0 or not target.is_file():
            last = _strip_prog(text.splitlines()[-1]) if text else f"exit status {proc.returncode}, no dump"
            raise QabiError(f"{build.spec} cannot -dump-vmstate for {plan.machine}: {last}")
        if target.stat().st_size > 64 << 20:
            raise QabiError(f"{build.spec}: -dump-vmstate output larger than 64 MiB")
        try:
            data = json.loads(target.read_text(errors="replace"))
        except ValueError as exc:
            raise QabiError(f"{build.spec}: -dump-vmstate wrote malformed JSON ({exc})") from None
    if not isinstance(data, dict):
        raise QabiError(f"{build.spec}: -dump-vmstate wrote no JSON object")
    return data


# -- the whole run ------------------------------------------------------------------------------------

def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def _keep(path: Path, result: TransportResult) -> str:
    """Write a probe run's records under `path`/raw; the relative raw dir."""
    raw = path / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    write_raw(result.records, raw)
    return "raw"


@contextlib.contextmanager
def _session() -> Iterator[tuple[Path, contextlib.ExitStack]]:
    with private_dir("qabi-mig-") as work, contextlib.ExitStack() as stack:
        yield work, stack


def migrate_run(old: CapturePlan, new: CapturePlan, direction: str, rundir: Path,
                leg_timeout: float | None = None) -> Outcome:
    """Migrate a guest old → new (and back for `both`), read the VMs' device properties and both
    builds' vmstate; write the host-side inputs into RUNDIR/old and RUNDIR/new.

    `leg_timeout` bounds each leg, from the migrate command to the guest's answer on the
    destination (default: the source plan's timeout; the boots keep their plans' timeouts)."""
    check_direction(direction)
    started = time.monotonic()
    shutil.rmtree(rundir, ignore_errors=True)
    old_dir, new_dir = rundir / "old", rundir / "new"
    old_dir.mkdir(parents=True)
    new_dir.mkdir(parents=True)
    timings: dict[str, float] = {}
    vm_old = dump_vmstate(old)
    vm_new = dump_vmstate(new)
    timings["vmstate"] = round(time.monotonic() - started, 3)
    legs: list[Leg] = []
    expected: dict[str, Any] = {}
    observed: dict[str, Any] = {}
    props: dict[str, dict[str, Any]] = {}
    with _session() as (work, stack):
        from harness.transport.serial import LiveConsole

        console = LiveConsole(rundir / "console.log")
        stack.callback(console.close)
        # properties are read where both VMs are built and nothing has run yet (no firmware or
        # guest has programmed a device): the source paused (-S), the destination before the stream
        src = LiveVM(old, work, "src", console, stack, paused=True)
        t = time.monotonic()
        props["old"] = device_tree(src.qmp)
        timings["props"] = round(time.monotonic() - t, 3)
        src.qmp.cmd("cont", timeout=QMP_TIMEOUT)
        t = time.monotonic()
        before = console.probe(old.timeout, ask=False)
        timings["boot_and_probe"] = round(time.monotonic() - t, 3)
        dst = LiveVM(new, work, "dst", console, stack, incoming=work / MIG_SOCKET)
        props["new"] = device_tree(dst.qmp)
        forward, after = migrate(src, dst, work / MIG_SOCKET, console, "forward", props["old"],
                                 leg_timeout)
        legs.append(forward)
        expected["forward"] = {**forward.as_dict(), "status": "ok", "error": None, "section": None,
                               "device": None, "raw": _keep(old_dir / "forward", before)}
        observed["forward"] = {**forward.as_dict(), "raw": _keep(new_dir / "forward", after) if after else None}
        src.kill()
        if direction == "both":
            if after is not None:       # the same guest goes back
                back_src, back_before = dst, after
            else:                       # forward failed: a guest booted on the new build goes back
                dst.kill()
                back_src = LiveVM(new, work, "src2", console, stack)
                back_before = console.probe(new.timeout, ask=False)
            back_dst = LiveVM(old, work, "dst2", console, stack, incoming=work / ROLLBACK_SOCKET)
            rollback, back_after = migrate(back_src, back_dst, work / ROLLBACK_SOCKET, console, "rollback",
                                           props["new"], leg_timeout)
            legs.append(rollback)
            # expected (old/): the capture before moving; observed (new/): after moving
            expected["rollback"] = {**rollback.as_dict(), "status": "ok", "error": None, "section": None,
                                    "device": None, "raw": _keep(old_dir / "rollback", back_before)}
            observed["rollback"] = {**rollback.as_dict(),
                                    "raw": _keep(new_dir / "rollback", back_after) if back_after else None}
    types = {e["type"] for side in props.values() for e in side.values()}
    for data, folder in ((vm_old, old_dir), (vm_new, new_dir)):
        kept = {k: v for k, v in data.items() if k in types and isinstance(v, dict)}
        kept["vmschkmachine"] = data.get("vmschkmachine", {})
        _write(folder / VMSTATE_FILE, kept)
    _write(old_dir / PROPS_FILE, props["old"])
    _write(new_dir / PROPS_FILE, props["new"])
    _write(old_dir / MIGRATION_FILE, expected)
    _write(new_dir / MIGRATION_FILE, observed)
    return Outcome(tuple(legs), old_dir, new_dir, round(time.monotonic() - started, 3), timings)
