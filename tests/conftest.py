"""Shared helpers for qabi's own tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def run_qabi(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(check=False, args=[sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.fixture
def qabi():
    return run_qabi


@pytest.fixture
def cache_copy(tmp_path):
    """A private XDG_CACHE_HOME seeded with copies of chosen parts of the real cache: paths under it
    ("apt/bullseye"), and with `build` (the directory name of a provisioned build under builds/)
    the packages it was unpacked from and (`with_prefix`) the prefix and its suite's `latest`
    pointer. Only those parts: the whole cache holds gigabytes of other builds."""
    from harness.cache import cache_root

    real = cache_root()

    def make(*parts: str, build: str | None = None, with_prefix: bool = True) -> Path:
        home = tmp_path / "cache"
        if build is not None:
            manifest = json.loads((real / "builds" / build / "qabi-prefix.json").read_text())
            parts += tuple(f"debs/{pkg['filename']}" for pkg in manifest["packages"])
            if with_prefix:
                parts += (f"builds/{build}", f"builds/latest/{manifest['suite']}.json")
        for part in parts:
            src, dest = real / part, home / "qabi" / part
            if src.is_dir():
                shutil.copytree(src, dest, symlinks=True)
            elif src.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
        (home / "qabi").mkdir(parents=True, exist_ok=True)
        return home

    return make


SHARED = ("builds", "info", "images", "series", "apt", "debs", "baselines")


def private_captures(home: Path) -> dict[str, str]:
    """XDG_CACHE_HOME `home` sharing the real cache's builds and images, with captures of its own."""
    from harness.cache import cache_root

    real = cache_root()
    (home / "qabi" / "captures").mkdir(parents=True, exist_ok=True)
    for part in SHARED:
        (real / part).mkdir(exist_ok=True)
        link = home / "qabi" / part
        if not link.exists():
            link.symlink_to(real / part)
    return {"XDG_CACHE_HOME": str(home)}


@pytest.fixture(scope="session")
def qabi_cache_home() -> str:
    """The XDG_CACHE_HOME of the suite's qabi cache (read before any test moves HOME)."""
    from harness.cache import cache_root

    return str(cache_root().parent)


@pytest.fixture
def pytester(pytester: pytest.Pytester, qabi_cache_home: str, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester points HOME at its tmp dir, which gave every inner `pytest harness/` run an empty qabi
    cache (build info, reference image, baselines and captures made again: 10-190 s a test). The
    inner runs share the suite's cache instead, as `pytest harness/` in CI shares the runner's."""
    monkeypatch.setenv("XDG_CACHE_HOME", qabi_cache_home)
    return pytester


def pytest_configure(config: pytest.Config) -> None:
    """Plain `-n 2` (xdist's --dist load) hands each worker a quarter of the suite up front, and a
    worker whose share holds the long integration tests runs them to the end while the other idles;
    --dist worksteal lets an idle worker take over half of what the other still has queued."""
    if getattr(config.option, "dist", "no") == "load":
        config.option.dist = "worksteal"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (`-n 2`), the integration tests (they boot QEMU or provision builds: seconds to
    minutes each) are handed out first and the unit tests fill in after them, so that no long test
    starts last on one worker while the other has nothing left. The order is the same on every
    worker (a stable sort of the same collection), as xdist requires."""
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("integration") is None)


# -- faulty reference guests (test_capture: serial, test_ssh: ssh) ------------------------------------
@dataclass(frozen=True)
class Fault:
    """One way a reference guest misbehaves, run when the VM's SMBIOS UUID ends in `uuid_last`."""

    uuid_last: str
    where: str      # "serial": instead of the serial-mode probe in /init; "init": in /init once the
                    # kernel's views are mounted; "probe": first in the probe; "tools": after the
                    # probe's list of required tools (to change it)
    lines: str      # shell
    timeout: str    # the capture's --timeout
    message: str    # what the one stderr line says (a regular expression)


def _faulty_recipe(folder: Path, faults: Iterable[Fault]) -> Path:
    """A copy of the reference recipe that holds every fault of `faults`, each run by the guest whose
    SMBIOS UUID names it: one image for them all (one image build), each case boots its own copy of
    a profile under that UUID (`with_uuid`)."""
    recipe = folder / "recipe"
    shutil.copytree(REPO / "guests" / "reference", recipe)
    faults = list(faults)

    def cases(where: str) -> str:
        chosen = "".join(f"*-{f.uuid_last})\n{f.lines}\n;;\n" for f in faults if f.where == where)
        return f"read -r uuid </sys/class/dmi/id/product_uuid\ncase $uuid in\n{chosen}esac\n"

    def insert(name: str, after: str, where: str, replace: bool = False) -> None:
        text = (recipe / name).read_text()
        at = text.index(after)          # ValueError: the reference recipe changed under the test
        end = at + len(after)
        if not replace:
            at = end
        (recipe / name).write_text(text[:at] + cases(where) + text[end:])

    insert("init", "    QABI_PROBE_BATCH=1 /bin/sh /probe.sh >/dev/ttyS0 2>&1\n", "serial", replace=True)
    insert("init", "mount -t devtmpfs devtmpfs /dev\n", "init")
    insert("probe.sh", "printf '@@QABI-BEGIN 1\\n'\n", "probe")
    insert("probe.sh", 'tools="dd od base64 sha256sum wc mkdir rm"\n', "tools")
    return recipe


def with_uuid(folder: Path, guest: str, last: str) -> Path:
    """guests/GUEST.toml under a UUID ending in `last` (the profile's name is the file stem)."""
    text = (REPO / "guests" / f"{guest}.toml").read_text()
    uuid = re.search(r'^uuid = "([0-9a-f-]{36})"$', text, re.MULTILINE)
    assert uuid, guest
    path = folder / f"{guest}-{last}.toml"
    path.write_text(text.replace(uuid.group(1), uuid.group(1)[:-12] + last))
    return path


FLIP = r'''QABI_PROBE_BATCH=1 /bin/sh /probe.sh >/tmp/out 2>&1
flipped=
while IFS= read -r line; do
    if [ -z "$flipped" ] && [ "${#line}" -gt 20 ] && [ "${line#@@}" = "$line" ]; then
        first=${line%"${line#?}"}
        if [ "$first" = A ]; then line="B${line#?}"; else line="A${line#?}"; fi
        flipped=1
    fi
    printf '%s\n' "$line"
done </tmp/out >/dev/ttyS0'''
TRUNCATE = r'''QABI_PROBE_BATCH=1 /bin/sh /probe.sh >/tmp/out 2>&1
n=0
while IFS= read -r line && [ "$n" -lt 150 ]; do printf '%s\n' "$line"; n=$((n + 1)); done </tmp/out >/dev/ttyS0'''
HANG = "while :; do :; done"
# test_capture: the serial transport
FAULTS = {
    "flipped-byte": Fault("0000000000f1", "serial", FLIP, "120", "checksum mismatch for /"),
    "truncated": Fault("0000000000f2", "serial", TRUNCATE, "120", "truncated"),
    # a hang waits for the timeout: a short one
    "never-answers": Fault("0000000000f3", "serial", HANG, "10", r"guest never started the probe \(timed out"),
}


# the dropbear process serving this session is the parent of the `sh -c` that runs the probe
KILL_SESSION = r'''printf '@@QABI-REC /sys/firmware/acpi/tables/DSDT 4 0000000000000000000000000000000000000000000000000000000000000000\n'
read -r _a _b _c _pp _rest </proc/$PPID/stat
kill -9 "$_pp"
sleep 5 2>/dev/null || read -r _x </dev/console'''
# test_ssh: the ssh transport
SSH_FAULTS = {
    # /init never gets as far as starting dropbear (it waits for the timeout: a short one)
    "sshd-never-answers": Fault("0000000000e1", "init", "read -r never </dev/console", "10",
                                r"sshd never answered within 10s .*console log: .*console\.log"),
    # the guest lacks a tool the probe needs (busybox finds its applets without links, so the
    # reference guest cannot lose one: the probe asks for one it does not have)
    "missing-tool": Fault("0000000000e2", "tools", 'tools="$tools perl"', "120",
                          r"missing tool: perl \(needed by the qabi probe\)"),
    # the connection drops while the probe is sending
    "connection-dropped": Fault("0000000000e3", "probe", KILL_SESSION, "120", r"SSH connection dropped"),
}




@pytest.fixture
def qemu_tmp() -> Iterator[Path]:
    """A short private TMPDIR for one qabi subprocess: its QEMU's argv carries this path (in its
    socket paths, which must stay short), so a test finds its own QEMU among other workers'."""
    folder = Path(tempfile.mkdtemp(prefix="qt-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def faulty_recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference recipe with every fault of FAULTS and SSH_FAULTS: one image build serves them all."""
    return _faulty_recipe(tmp_path_factory.mktemp("faulty"), [*FAULTS.values(), *SSH_FAULTS.values()])
