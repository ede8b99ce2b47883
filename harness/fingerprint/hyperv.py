"""Hyper-V: the boot vCPU's hv-* QOM properties as QEMU reports them (read over QMP by the firmware
transport for a profile with `hyperv`: harness/transport/firmware HV_PROPERTIES): the enlightenments
and the ids QEMU puts into the Hyper-V CPUID leaves 0x40000000-0x4000000A. QEMU builds those leaves
under KVM only, and under TCG qabi does not put the profile's enlightenments on -cpu (see
harness/transport/launch.py), so a TCG capture holds the machine type's defaults (every hv-* flag
off, spinlocks, vendor and version ids): what changes with the build for this machine type. With
--accel kvm the profile's values are in it. {} for a capture without it.

    {"vcpu0": {"label": "vCPU 0 Hyper-V properties", "props": {"hv-relaxed": true, "hv-spinlocks": 8191, ...}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import DecodeError

HV_FILE = Path("sys/hypervisor/qabi/vcpu0-hv-properties.json")
MAX_BYTES = 1 << 16


def decode(raw: Path) -> dict[str, Any]:
    path = raw / HV_FILE
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if len(data) > MAX_BYTES:
        raise DecodeError(str(HV_FILE), None, f"{len(data)} bytes (more than {MAX_BYTES})")
    try:
        props = json.loads(data)
    except ValueError as exc:
        raise DecodeError(str(HV_FILE), None, f"not JSON: {exc}") from None
    if not isinstance(props, dict) or not all(isinstance(k, str) and k.startswith("hv-") and
                                              (v is None or isinstance(v, (bool, int, str)))
                                              for k, v in props.items()):
        raise DecodeError(str(HV_FILE), None, "not an object of hv-* scalar properties")
    return {"vcpu0": {"label": "vCPU 0 Hyper-V properties", "props": props}}
