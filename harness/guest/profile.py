"""GuestProfile: the VM hardware as a user would configure it (guests/NAME.toml).

The machine type is chosen per run; a profile may list devices for one machine family only
(`families = ["q35"]`). Every guest-visible value that could vary from run to run (UUID, MACs,
disk serials, RTC) is fixed here or by the launcher.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import QabiError, UnsupportedError

GUESTS_DIR = Path(__file__).resolve().parents[2] / "guests"
FAMILIES = ("i440fx", "q35")
_DEVICE_KEYS = {"driver", "id", "addr", "bus", "families", "props", "mac", "disk", "cdrom", "audio"}


def machine_family(machine: str) -> str:
    """'i440fx' or 'q35' for the machine types qabi knows (aliases included)."""
    if machine == "pc" or machine.startswith("pc-i440fx") or re.fullmatch(r"pc-\d.*", machine):
        return "i440fx"
    if machine == "q35" or machine.startswith("pc-q35"):
        return "q35"
    raise UnsupportedError(f"machine type '{machine}' is not of the i440fx or q35 family")


@dataclass(frozen=True)
class Device:
    driver: str
    id: str | None = None
    addr: str | None = None
    bus: str | None = None
    families: tuple[str, ...] = FAMILIES
    props: tuple[tuple[str, str], ...] = ()
    mac: str | None = None
    disk: str | None = None
    cdrom: bool = False
    audio: bool = False


@dataclass(frozen=True)
class GuestProfile:
    name: str
    description: str
    cpu: str
    memory_mib: int
    smp: tuple[tuple[str, int], ...]
    uuid: str
    devices: tuple[Device, ...] = field(default_factory=tuple)
    source: str = ""

    def devices_for(self, machine: str) -> list[Device]:
        family = machine_family(machine)
        return [d for d in self.devices if family in d.families]

    def drivers_for(self, machine: str) -> list[str]:
        return sorted({d.driver for d in self.devices_for(machine)})

    def nics_for(self, machine: str) -> list[Device]:
        return [d for d in self.devices_for(machine) if d.mac]


def _fail(path: Path, message: str) -> QabiError:
    return QabiError(f"{path}: {message}")


def _device(path: Path, index: int, raw: dict[str, Any]) -> Device:
    unknown = set(raw) - _DEVICE_KEYS
    if unknown:
        raise _fail(path, f"device {index}: unknown key(s) {', '.join(sorted(unknown))}")
    if not isinstance(raw.get("driver"), str):
        raise _fail(path, f"device {index}: 'driver' (a string) is required")
    families = tuple(raw.get("families", FAMILIES))
    if not set(families) <= set(FAMILIES):
        raise _fail(path, f"device {index}: families must be among {', '.join(FAMILIES)}")
    props = raw.get("props", {})
    if not isinstance(props, dict):
        raise _fail(path, f"device {index}: 'props' must be a table")
    return Device(
        driver=raw["driver"], id=raw.get("id"), addr=raw.get("addr"), bus=raw.get("bus"), families=families,
        props=tuple((str(k), _prop(v)) for k, v in props.items()), mac=raw.get("mac"), disk=raw.get("disk"),
        cdrom=bool(raw.get("cdrom", False)), audio=bool(raw.get("audio", False)))


def _prop(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def load_profile(name_or_path: str) -> GuestProfile:
    """Load `guests/NAME.toml` (or a path to a profile file)."""
    path = Path(name_or_path)
    if not name_or_path.endswith(".toml"):
        path = GUESTS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise QabiError(f"unknown guest profile '{name_or_path}' (known: {', '.join(profile_names())})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"malformed TOML: {exc}") from None
    try:
        smp = data.get("smp", {"cpus": 1})
        profile = GuestProfile(
            name=str(data.get("name", path.stem)), description=str(data.get("description", "")),
            cpu=str(data["cpu"]), memory_mib=int(data["memory"]),
            smp=tuple((str(k), int(v)) for k, v in smp.items()), uuid=str(data["uuid"]),
            devices=tuple(_device(path, i, d) for i, d in enumerate(data.get("device", []))),
            source=str(path))
    except KeyError as exc:
        raise _fail(path, f"missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"bad value: {exc}") from None
    if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", profile.uuid):
        raise _fail(path, f"uuid '{profile.uuid}' is not a lower-case UUID")
    return profile


def profile_names() -> list[str]:
    return sorted(p.stem for p in GUESTS_DIR.glob("*.toml"))


def check_supported(profile: GuestProfile, machine: str, devices: set[str] | frozenset[str]) -> None:
    """Raise UnsupportedError naming the first device of the profile that the build lacks."""
    for driver in profile.drivers_for(machine):
        if driver not in devices:
            raise UnsupportedError(f"unsupported on this build: {driver}")


def disk_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not match:
        raise QabiError(f"bad disk size '{text}' (use e.g. 1M)")
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)]
