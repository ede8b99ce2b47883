"""Settings: environment variables override the user's config file, which overrides `[tool.qabi]`.

Keys (config file `$XDG_CONFIG_HOME/qabi/config.toml` or `[tool.qabi]` in ./pyproject.toml):
  debian-mirror           base URL of the Debian archive (env QABI_DEBIAN_MIRROR)
  debian-security-mirror  base URL of the security archive (env QABI_DEBIAN_SECURITY_MIRROR)
  debian-keyring          keyring the archive signatures are verified against (env QABI_DEBIAN_KEYRING)
When no mirror is configured, the first Debian archive found in the host's apt sources is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.cache import read_toml


def _config_files() -> list[Path]:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [Path(base) / "qabi" / "config.toml"]


def pyproject_settings(start: Path | None = None) -> dict[str, Any]:
    """`[tool.qabi]` of the nearest pyproject.toml at or above `start` (default: the working dir)."""
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            table = read_toml(candidate, "a pyproject.toml").get("tool", {}).get("qabi", {})
            return dict(table) if isinstance(table, dict) else {}
    return {}


def setting(key: str, default: str | None = None) -> str | None:
    env = "QABI_" + key.upper().replace("-", "_")
    if os.environ.get(env):
        return os.environ[env]
    for path in _config_files():
        if path.exists() or path.is_symlink():   # there but not a regular file: refused, not skipped
            value = read_toml(path, "a qabi config file").get(key)
            if value is not None:
                return str(value)
    value = pyproject_settings().get(key)
    return str(value) if value is not None else default
