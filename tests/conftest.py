"""Shared helpers for qabi's own tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist (`-n 2`), the integration tests (they boot QEMU or provision builds: seconds to
    minutes each) are handed out first and the unit tests fill in after them, so that no long test
    starts last on one worker while the other has nothing left. The order is the same on every
    worker (a stable sort of the same collection), as xdist requires."""
    if getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("integration") is None)
