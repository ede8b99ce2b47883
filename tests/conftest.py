"""Shared helpers for qabi's own tests."""

from __future__ import annotations

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
    """A private XDG_CACHE_HOME seeded with copies of chosen parts of the real cache."""
    from harness.cache import cache_root

    real = cache_root()

    def make(*parts: str) -> Path:
        home = tmp_path / "cache"
        for part in parts:
            src = real / part
            if src.is_dir():
                shutil.copytree(src, home / "qabi" / part, symlinks=True)
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
