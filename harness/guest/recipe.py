"""The reference guest's recipe: guests/reference/ (packages.toml, init, probe.sh).

packages.toml names each package the image is built from by a series, not an exact version:
`name` and `version` are patterns (`linux-image-6.1.0-*-amd64`, `6.1.*`; `*` is a number in a name
and any text in a version); the build takes the newest version in the series that the suite's
signed index has (a value without `*` is exact).
Debian removes superseded versions at each point release, so an exact pin would rot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import parse_toml, read_input
from harness.errors import QabiError

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "guests" / "reference"
RECIPE_FILES = ("packages.toml", "init", "probe.sh")
RECIPE_LIMIT = 1 << 20     # bytes per recipe file

# Package roles in packages.toml: exactly one of each, except "library" (any number).
SINGLE_ROLES = ("kernel", "busybox", "dropbear", "sftp-server")
LIBRARY_ROLE = "library"


class ImageError(QabiError):
    """The reference image could not be built or its cached copy is damaged."""


@dataclass(frozen=True)
class PackageSpec:
    """One package series of the recipe: `name` and `version` are patterns over the suite's index."""

    role: str
    name: str
    version: str


@dataclass(frozen=True)
class PackageRef:
    """One exact package the image is built from (a PackageSpec resolved against the index)."""

    role: str
    name: str
    version: str
    filename: str = ""
    sha256: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "name": self.name, "version": self.version,
                "filename": self.filename, "sha256": self.sha256}


@dataclass(frozen=True)
class Recipe:
    directory: Path
    suite: str
    packages: tuple[PackageSpec, ...]
    modules: tuple[str, ...]         # every module /init loads (nic_modules first), before dependencies
    files: dict[str, bytes]          # recipe file name -> bytes (packages.toml, init, probe.sh)
    nic_modules: tuple[str, ...] = ()


def _module_list(data: dict[str, Any], key: str, where: Path) -> tuple[str, ...]:
    modules = data.get("modules", {}).get(key, [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ImageError(f"{where}: [modules] {key} must be a list of module names")
    return tuple(modules)


def load_recipe(directory: Path | None = None) -> Recipe:
    directory = directory or REFERENCE_DIR
    files: dict[str, bytes] = {}
    for name in RECIPE_FILES:
        path = directory / name
        try:
            files[name] = read_input(path, "a reference guest recipe file", RECIPE_LIMIT)
        except QabiError as exc:
            raise ImageError(str(exc)) from None
    toml = directory / "packages.toml"
    try:
        text = files["packages.toml"].decode()
    except UnicodeDecodeError:
        raise ImageError(f"{toml}: malformed TOML: not UTF-8 text") from None
    data = parse_toml(text, str(toml), error=ImageError)
    suite = data.get("suite")
    if not isinstance(suite, str) or not suite:
        raise ImageError(f"{toml}: 'suite' must be a Debian suite name")
    packages = []
    for entry in data.get("package", []):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) and entry[k]
                                                  for k in ("role", "name", "version")):
            raise ImageError(f"{toml}: every [[package]] needs role, name and version")
        if set(entry) - {"role", "name", "version"}:
            raise ImageError(f"{toml}: package {entry['name']} has unknown keys "
                             f"{', '.join(sorted(set(entry) - {'role', 'name', 'version'}))}")
        if entry["role"] not in (*SINGLE_ROLES, LIBRARY_ROLE):
            raise ImageError(f"{toml}: package {entry['name']} has unknown role '{entry['role']}' (roles: "
                             f"{', '.join((*SINGLE_ROLES, LIBRARY_ROLE))})")
        packages.append(PackageSpec(entry["role"], entry["name"], entry["version"]))
    roles = [p.role for p in packages]
    for role in SINGLE_ROLES:
        if roles.count(role) != 1:
            raise ImageError(f"{toml}: exactly one package must have role '{role}'")
    names = [p.name for p in packages]
    for name in names:
        if names.count(name) > 1:
            raise ImageError(f"{toml}: package {name} is listed twice")
    nic = _module_list(data, "nic", toml)
    load = _module_list(data, "load", toml)
    return Recipe(directory, suite, tuple(packages), nic + load, files, nic)


