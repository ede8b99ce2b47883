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


RTC_BASE = "2020-01-01T00:00:00"
AUDIODEV_ID = "qabi-snd"


def qemu_args(profile: GuestProfile, machine: str, workdir: Path, hostfwd: str | None = None,
              boot_disk: tuple[Path, str] | None = None) -> list[str]:
    """The hardware part of QEMU's argv for `profile` on `machine`; blank disks go in `workdir`.

    `hostfwd` is added to the first NIC's user-mode backend (the SSH transport). `boot_disk`
    (path, format) backs the first disk instead of a blank one, always with snapshot=on: the
    guest's writes go to a temporary overlay, never to that file. Neither changes what the guest
    sees of its hardware.
    """
    smp = ",".join(f"{k}={v}" for k, v in profile.smp)
    args = ["-machine", machine, "-cpu", profile.cpu, "-m", str(profile.memory_mib), "-smp", smp,
            "-uuid", profile.uuid, "-rtc", f"base={RTC_BASE},clock=vm"]
    devices = profile.devices_for(machine)
    if any(d.audio for d in devices):
        args += ["-audiodev", f"none,id={AUDIODEV_ID}"]
    first_nic = next((d for d in devices if d.mac), None)
    first_disk = next((d for d in devices if d.disk), None)
    if boot_disk is not None and first_disk is None:
        raise QabiError(f"profile '{profile.name}' has no disk to attach the guest image to")
    for index, dev in enumerate(devices):
        opts = [dev.driver]
        if dev.id:
            opts.append(f"id={dev.id}")
        if dev.bus:
            opts.append(f"bus={dev.bus}")
        if dev.addr:
            opts.append(f"addr={dev.addr}")
        if dev.mac:
            fwd = f",hostfwd={hostfwd}" if hostfwd and dev is first_nic else ""
            args += ["-netdev", f"user,id=qabinet{index},restrict=on{fwd}"]
            opts += [f"netdev=qabinet{index}", f"mac={dev.mac}"]
        if dev.disk and boot_disk is not None and dev is first_disk:
            path, fmt = boot_disk
            args += ["-drive", f"if=none,id=qabidisk{index},file={_drive_path(path)},format={fmt},snapshot=on"]
            opts.append(f"drive=qabidisk{index}")
        elif dev.disk:
            image = workdir / f"disk{index}.img"
            with open(image, "wb") as handle:
                handle.truncate(_size(dev.disk))
            args += ["-drive", f"if=none,id=qabidisk{index},file={image},format=raw,cache=unsafe"]
            opts.append(f"drive=qabidisk{index}")
        if dev.cdrom:
            args += ["-drive", f"if=none,id=qabicd{index},media=cdrom"]
            opts.append(f"drive=qabicd{index}")
        if dev.audio:
            opts.append(f"audiodev={AUDIODEV_ID}")
        opts += [f"{k}={v}" for k, v in dev.props]
        args += ["-device", ",".join(opts)]
    return args


def _drive_path(path: Path) -> str:
    text = str(path.resolve())
    if "," in text:
        raise QabiError(f"guest image path {text} contains a comma, which QEMU's -drive cannot take")
    return text


def _size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    if not match:
        raise QabiError(f"bad disk size '{text}' (use e.g. 1M)")
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)]
