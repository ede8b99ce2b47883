"""Settings: environment variables override the user's config file, which overrides `[tool.qabi]`.

Keys (config file `$XDG_CONFIG_HOME/qabi/config.toml` or `[tool.qabi]` in ./pyproject.toml):
  debian-mirror           base URL of the Debian archive (env QABI_DEBIAN_MIRROR)
  debian-security-mirror  base URL of the security archive (env QABI_DEBIAN_SECURITY_MIRROR)
  debian-keyring          keyring the archive signatures are verified against (env QABI_DEBIAN_KEYRING)
When no mirror is configured, the first Debian archive found in the host's apt sources is used.
The other keys are `pytest harness/`'s options (harness/plugin.py). Both tables are checked when
read (`checked_settings`): an unknown key or a value of another type is one line, exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from harness.cache import read_toml
from harness.errors import QabiError


def _config_files() -> list[Path]:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [Path(base) / "qabi" / "config.toml"]


# Every key of the config file and of `[tool.qabi]`: text, or for LISTS text or a list of text
# (the archive's keys here, the rest are `pytest harness/`'s options: harness/plugin.py).
KEYS = ("debian-mirror", "debian-security-mirror", "debian-keyring", "qemu-old", "qemu-new", "baseline", "machine",
        "guest", "accel", "waivers", "fail-on", "report", "transport", "guest-image", "ssh-user", "ssh-key",
        "ssh-host-key", "shard", "migrate")
LISTS = ("machine", "guest")


def checked_settings(table: Any, where: str) -> dict[str, Any]:
    """A settings table whose keys are all known and whose values have their types (text, or text
    or a list of text for LISTS); anything else is a one-line QabiError naming `where`."""
    if not isinstance(table, dict):
        raise QabiError(f"{where} must be a table of settings, not a {type(table).__name__}")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise QabiError(f"{where}: unknown key(s) {', '.join(k[:40] for k in unknown[:5])} (known: {', '.join(KEYS)})")
    for key, value in table.items():
        many = key in LISTS
        if isinstance(value, str) or many and isinstance(value, list) and all(isinstance(v, str) for v in value):
            continue
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:40] + "…"
        raise QabiError(f"{where}: {key} = {shown} is a {type(value).__name__}; expected "
                        + ("a string or a list of strings" if many else "a string"))
    return dict(table)


def pyproject_settings(start: Path | None = None) -> dict[str, Any]:
    """`[tool.qabi]` of the nearest pyproject.toml at or above `start` (default: the working dir),
    checked (`checked_settings`)."""
    here = (start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            tool = read_toml(candidate, "a pyproject.toml").get("tool", {})
            if not isinstance(tool, dict) or "qabi" not in tool:
                return {}
            return checked_settings(tool["qabi"], f"{candidate} [tool.qabi]")
    return {}


def setting(key: str, default: str | None = None) -> str | None:
    env = "QABI_" + key.upper().replace("-", "_")
    if os.environ.get(env):
        return os.environ[env]
    for path in _config_files():
        if path.exists() or path.is_symlink():   # there but not a regular file: refused, not skipped
            value = checked_settings(read_toml(path, "a qabi config file"), str(path)).get(key)
            if value is not None:
                return str(value)
    value = pyproject_settings().get(key)
    return str(value) if value is not None else default
