"""The draft of an imported profile (`qabi profile import`, harness/guest/profile_import.py): what
the libvirt and command-line importers (import_libvirt.py, import_argv.py) fill, each device checked
against the driver allow-list (harness/guest/drivers.py) as the profile loader checks it, and the
profile TOML it becomes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from harness.errors import QabiError
from harness.guest.drivers import DriverRule, NotAllowed, check_driver, check_property
from harness.guest.profile import DEVICE_ID, NAME, RESERVED_ID_PREFIX, machine_family

MAX_INPUT = 1 << 20                  # bytes: a domain XML or a command line is a few KiB
DEFAULT_DISK = "64G"                 # the blank image of an imported disk (sparse: costs nothing)
Value = str | int | bool


class ImportRefused(QabiError):
    """Something in the VM that qabi cannot reproduce without reaching the host: says why and what to
    use instead."""


@dataclass
class DraftDevice:
    driver: str
    id: str | None = None
    bus: str | None = None
    addr: str | None = None
    props: dict[str, Value] = field(default_factory=dict)
    mac: str | None = None
    disk: str | None = None
    cdrom: bool = False
    audio: bool = False


@dataclass
class Draft:
    """The profile being imported, as the TOML keys it will have, and the notes for dropped parts."""

    source: str                                   # what the input is, for messages ("libvirt domain win11")
    name: str = "imported"
    machine: str | None = None
    cpu_model: str = "qemu64"
    cpu_flags: list[str] = field(default_factory=list)
    memory_mib: int | None = None
    smp: dict[str, int] = field(default_factory=dict)
    uuid: str | None = None
    smbios: dict[int, dict[str, str]] = field(default_factory=dict)
    top: dict[str, Any] = field(default_factory=dict)     # firmware, smm, tpm, hyperv, hpet, pm
    devices: list[DraftDevice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _ids: dict[str, str] = field(default_factory=dict)

    # -- notes and refusals ------------------------------------------------------------------------
    def note(self, text: str) -> None:
        """One line about a dropped part; the VM's own text in it (paths, names) with control
        characters written as `\\xNN`, so that it can neither reach the terminal nor end the TOML comment."""
        from harness.report.text import escape_controls

        line = escape_controls(" ".join(text.split())[:300], keep="")
        if line not in self.notes:
            self.notes.append(line)

    def refuse(self, what: str, why: str) -> ImportRefused:
        return ImportRefused(f"{self.source}: {what[:120]}: {why}")

    # -- ids and buses: QEMU's names, made profile ids (`pci.1` -> `pci-1`) -----------------------------
    def ident(self, name: str) -> str:
        if name not in self._ids:
            ident = re.sub(r"[^A-Za-z0-9_-]", "-", name)[:32]
            if not ident[:1].isalpha() or ident.lower().startswith(RESERVED_ID_PREFIX):
                ident = f"d{ident}"[:32]
            while ident in self._ids.values():
                ident = f"{ident[:29]}-{len(self._ids)}"
            if not DEVICE_ID.fullmatch(ident):
                raise self.refuse(f"device id {name!r}", "not a usable device id")
            self._ids[name] = ident
        return self._ids[name]

    def bus(self, name: str) -> str:
        """A bus name with the device ids in it renamed as `ident` renamed them (`pci.1` -> `pci-1`,
        `virtio-serial0.0` stays); built-in buses (`pcie.0`, `ide.1`, `usb.0` of id `usb`) as they are."""
        if name in self._ids:
            return self._ids[name]
        head, dot, tail = name.rpartition(".")
        if dot and head in self._ids:
            return f"{self._ids[head]}.{tail}"
        return name

    # -- devices, checked against the allow-list ------------------------------------------------------
    def add(self, driver: str, *, id: str | None = None, bus: str | None = None, addr: str | None = None,
            props: dict[str, Value] | None = None, mac: str | None = None, disk: str | None = None,
            cdrom: bool = False, audio: bool = False) -> DraftDevice:
        rule = self.rule(driver)
        checked: dict[str, Value] = {}
        for key, value in (props or {}).items():
            typed = self.prop(rule, key, value)
            if typed is not None:
                checked[key] = typed
        dev = DraftDevice(rule.name, self.ident(id) if id else None, bus, addr, checked, mac, disk, cdrom, audio)
        self.devices.append(dev)
        return dev

    def rule(self, driver: str) -> DriverRule:
        try:
            return check_driver(driver)
        except NotAllowed as exc:
            raise self.refuse(f"device {driver}", str(exc)) from None

    def prop(self, rule: DriverRule, key: str, value: Value) -> Value | None:
        """`value` as the profile's TOML takes it (bool, int or text, by the property's type); a
        property the allow-list refuses (a host file, a descriptor, a backend) is refused here; one
        that is merely not on the driver's list is dropped with a note (None)."""
        kind = rule.properties().get(key)
        typed = _typed(value, kind.qemu if kind else "")
        try:
            check_property(rule, key, typed)
        except NotAllowed as exc:
            if kind is None and "(not on its allow-list" in str(exc):
                self.note(f"{rule.name} property {key[:40]}={str(value)[:40]}: not on the driver allow-list, "
                          "not reproduced")
                return None
            raise self.refuse(f"device {rule.name}", str(exc)) from None
        return typed

    # -- the profile ---------------------------------------------------------------------------------
    def profile_data(self) -> dict[str, Any]:
        if self.machine is None:
            raise self.refuse("machine type", "the VM names none (give -machine / <type machine=...>)")
        family = machine_family(self.machine)
        data: dict[str, Any] = {
            "name": _profile_name(self.name),
            "description": f"imported from {self.source} by qabi profile import",
            "machine": self.machine,
            "families": [family],
            "cpu": ",".join([self.cpu_model, *self.cpu_flags]),
            "memory": self.memory_mib if self.memory_mib is not None else 128,
            "smp": self.smp or {"cpus": 1},
            "uuid": self.uuid or "00000000-0000-4000-8000-000000000000",
            **self.top,
        }
        if "hyperv" in data:
            data["hyperv"] = sorted(set(data["hyperv"]))
        if self.smbios:
            data["smbios"] = {f"type{k}": v for k, v in sorted(self.smbios.items())}
        devices = []
        for dev in self.devices:
            entry: dict[str, Any] = {"driver": dev.driver}
            for key in ("id", "bus", "addr", "mac", "disk"):
                if getattr(dev, key) is not None:
                    entry[key] = self.bus(dev.bus) if key == "bus" and dev.bus else getattr(dev, key)
            for key in ("cdrom", "audio"):
                if getattr(dev, key):
                    entry[key] = True
            if dev.props:
                entry["props"] = dev.props
            devices.append(entry)
        data["device"] = devices
        return data


def _typed(value: Value, qemu: str) -> Value:
    """A command-line text value as the type its property takes (`on` -> true, `16` -> 16)."""
    if not isinstance(value, str):
        return value
    if qemu in ("bool", "OnOffAuto") and value in ("on", "off", "true", "false", "yes", "no"):
        return value in ("on", "true", "yes")
    if qemu in ("int", "size") and re.fullmatch(r"-?\d{1,20}|0x[0-9a-fA-F]{1,16}", value):
        return int(value, 0)
    return value


def _profile_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "-", name).strip("-_")[:64] or "imported"
    return cleaned if NAME.fullmatch(cleaned) else f"vm-{cleaned}"[:64]


# -- TOML out (the profile schema's shapes only: strings, integers, booleans, lists, tables) ----------
def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)       # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def to_toml(data: dict[str, Any], notes: list[str]) -> str:
    lines = ["# Made by `qabi profile import`. Dropped from the VM (host-only parts):"]
    lines += [f"#   {n}" for n in notes] or ["#   nothing"]
    lines.append("")
    tables = {k: v for k, v in data.items()
              if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values())}
    for key, value in data.items():
        if key not in tables and key != "device":
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, table in tables.items():
        for sub, fields in table.items():
            lines += ["", f"[{_toml_key(key)}.{_toml_key(sub)}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in fields.items()]
    for dev in data.get("device", []):
        lines += ["", "[[device]]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in dev.items()]
    return "\n".join(lines) + "\n"
