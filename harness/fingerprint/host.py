"""Host-side categories: what QEMU says about a VM, not what the guest read (harness/migrate.py).

Their raw inputs are JSON files in a run's host-side directory (not in a capture's raw/), present
only when the run migrated (`--migrate`):

- `migration.json` → `migration`: per leg (`forward`, `rollback`) the leg's result and the guest's
  hardware as decoded from its probe run (on the old side: before moving, the expected state;
  on the new side: after moving, the observed one);
- `vmstate.json` → `vmstate`: per device type instantiated on the VM, its `-dump-vmstate` entry;
- `props.json` → `props`: per device of the running VM, its type and the scalar values of its
  QOM properties; and → `hyperv`: per vCPU, its `hv-*` properties (the Hyper-V enlightenments and
  the ids QEMU puts in the Hyper-V CPUID leaves 0x40000000-0x4000000A, which it builds under KVM
  only: their values per machine type are what a Windows guest on KVM gets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import DecodeError

MIGRATION = "migration.json"
VMSTATE = "vmstate.json"
PROPS = "props.json"
MAX_SIZE = 64 << 20
_LEG_KEYS = ("status", "error", "section", "device", "source", "destination", "seconds")


def _load(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_SIZE:
            raise DecodeError(path.name, None, f"larger than {MAX_SIZE >> 20} MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DecodeError(str(path), None, "missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(path.name, None, f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DecodeError(path.name, None, "not an object of objects")
    return data


def decode_migration(host: Path) -> dict[str, Any]:
    """Per leg: status, error, section, device, source, destination, seconds, and `hardware`
    (every guest-side category decoded from the leg's probe run; None when there was none)."""
    from harness.categories import get, guest_names

    out: dict[str, Any] = {}
    for leg, entry in _load(host / MIGRATION).items():
        if entry.get("status") not in ("ok", "failed"):
            raise DecodeError(MIGRATION, None, f"leg {leg!r} has no status ok/failed")
        decoded = {k: entry.get(k) for k in _LEG_KEYS}
        raw = entry.get("raw")
        hardware = None
        if raw is not None:
            folder = (host / leg / str(raw)).resolve()
            if not folder.is_relative_to(host.resolve()) or not folder.is_dir():
                raise DecodeError(MIGRATION, None, f"leg {leg!r}: probe run {raw!r} is not in {host}")
            hardware = {name: get(name).decode(folder) for name in guest_names()}
        decoded["hardware"] = hardware
        out[str(leg)] = decoded
    return out


def decode_vmstate(host: Path) -> dict[str, Any]:
    """Per device type: its vmstate section (version_id, minimum_version_id, Description)."""
    data = _load(host / VMSTATE)
    data.pop("vmschkmachine", None)
    for name, section in data.items():
        desc = section.get("Description")
        if not isinstance(desc, dict) or not isinstance(section.get("version_id"), int):
            raise DecodeError(VMSTATE, None, f"section {name!r} has no Description or version_id")
    return data


def decode_props(host: Path) -> dict[str, Any]:
    """Per device: {"type", "pci", "props": {name: scalar}}."""
    data = _load(host / PROPS)
    for key, entry in data.items():
        if not isinstance(entry.get("type"), str) or not isinstance(entry.get("props"), dict):
            raise DecodeError(PROPS, None, f"device {key!r} has no type or props")
    return data


CPU_TYPE_SUFFIX = "-x86_64-cpu"
HV_PREFIX = "hv-"


def is_hyperv_prop(entry: dict[str, Any], name: str) -> bool:
    """A vCPU's hv-* property: the `hyperv` category's, left out of `props`."""
    return str(entry.get("type", "")).endswith(CPU_TYPE_SUFFIX) and name.startswith(HV_PREFIX)


def decode_hyperv(host: Path) -> dict[str, Any]:
    """Per vCPU: {"type", "pci": False, "props": {hv-* name: value}}."""
    return {key: {**entry, "props": {k: v for k, v in entry["props"].items() if is_hyperv_prop(entry, k)}}
            for key, entry in decode_props(host).items() if str(entry["type"]).endswith(CPU_TYPE_SUFFIX)}
