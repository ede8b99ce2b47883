"""fw_cfg: QEMU's firmware configuration files, as the firmware and the guest read them.

Input: raw/sys/firmware/qemu_fw_cfg (the firmware transport mirrors Linux's qemu_fw_cfg sysfs:
`rev`, `by_key/N/{key,name,size,raw}`). One entry per file name:

    {"label": NAME, "size": BYTES, "sha256": ..., "decoded": {...}}

plus `(interface)` with the ID item (`revision`, `dma`) and `selectors`: "in name order from
0x0020" (how QEMU numbers the files, so a selector follows from the names) or each file's. Decoded where the format is known
(etc/e820, bootorder, bios-geometry, etc/boot-fail-wait, etc/smi/*, etc/system-states,
etc/msr_feature_control, etc/reserved-memory-end, short text); a file qabi did not read (its own
payload) has `"content": "not read"`. ACPI and SMBIOS files are compared by hash here: their
tables are decoded by the acpi and smbios categories.

A capture without raw/sys/firmware/qemu_fw_cfg/rev has no fw_cfg data (not collected).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import hx, read_raw

ROOT = "sys/firmware/qemu_fw_cfg"
REV = f"{ROOT}/rev"
MAX_FILES = 1024
MAX_TEXT = 4096
FIRST_FILE = 0x20
E820_TYPES = {1: "RAM", 2: "reserved", 3: "ACPI", 4: "NVS", 5: "unusable"}
SMI_FEATURES = {0: "ICH9_BROADCAST", 1: "CPU_HOTPLUG", 2: "CPU_HOT_UNPLUG"}


def collected(raw: Path) -> bool:
    return (raw / REV).is_file()


def _int_text(raw: Path, rel: str) -> int:
    text = read_raw(raw, rel, 64).decode("ascii", errors="replace").strip()
    if not text.isdigit():
        raise DecodeError(rel, 0, f"not a decimal number: {text[:20]!r}")
    return int(text)


def _bits(value: int, names: dict[int, str]) -> list[str]:
    return [names.get(b, f"bit {b}") for b in range(64) if value >> b & 1]


def _decode(name: str, data: bytes) -> dict[str, Any] | None:
    if name == "etc/e820":
        if len(data) % 20:
            raise DecodeError(f"fw_cfg {name}", None, f"{len(data)} bytes: not whole 20-byte entries")
        return {"ranges": [f"{hx(a)}+{hx(n)} {E820_TYPES.get(t, t)}" for a, n, t in struct.iter_unpack("<QQI", data)]}
    if name in ("bootorder", "bios-geometry"):
        return {"lines": data.decode("ascii", errors="backslashreplace").rstrip("\0\n").split("\n") if data else []}
    if name in ("etc/smi/supported-features", "etc/smi/requested-features") and len(data) == 8:
        return {"features": _bits(struct.unpack("<Q", data)[0], SMI_FEATURES)}
    if name in ("etc/boot-fail-wait", "etc/smi/features-ok", "etc/msr_feature_control",
                "etc/reserved-memory-end", "etc/tpm/config") and len(data) in (1, 2, 4, 8):
        return {"value": hx(int.from_bytes(data, "little"))}
    if name == "etc/system-states":
        return {"states": {f"S{i}": ("enabled " if b & 0x80 else "disabled ") + hx(b & 0x7F)
                           for i, b in enumerate(data)}}
    if len(data) <= MAX_TEXT and data and b"\0" not in data.rstrip(b"\0") and all(32 <= b < 127 or b in (9, 10, 13, 0) for b in data):
        return {"text": data.decode("ascii").rstrip("\0")}
    return None


def decode(raw: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rev = _int_text(raw, REV)
    out["(interface)"] = {"label": "fw_cfg interface", "revision": rev, "dma": bool(rev & 2)}
    base = raw / ROOT / "by_key"
    keys = sorted(base.iterdir()) if base.is_dir() else []
    if len(keys) > MAX_FILES:
        raise DecodeError(f"{ROOT}/by_key", None, f"{len(keys)} files (more than {MAX_FILES})")
    selectors: dict[str, int] = {}
    for folder in keys:
        rel = f"{ROOT}/by_key/{folder.name}"
        if not folder.name.isdigit() or not folder.is_dir():
            raise DecodeError(rel, None, "unexpected entry in the fw_cfg directory")
        name = read_raw(raw, f"{rel}/name", 64).decode("ascii", errors="backslashreplace").strip()
        size = _int_text(raw, f"{rel}/size")
        if not name or name in out:
            raise DecodeError(f"{rel}/name", None, f"an empty or repeated file name {name!r}")
        selectors[name] = _int_text(raw, f"{rel}/key")
        entry: dict[str, Any] = {"label": name, "size": size}
        if (folder / "raw").is_file():
            data = read_raw(raw, f"{rel}/raw")
            if len(data) != size:
                raise DecodeError(f"{rel}/raw", None, f"{len(data)} bytes where the directory says {size}")
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            decoded = _decode(name, data)
            if decoded is not None:
                entry["decoded"] = decoded
        else:
            entry["content"] = "not read"
        out[name] = entry
    # QEMU numbers the files from 0x20 in name order (fw_cfg_add_file): a file added shifts every
    # later selector, which the added file's own drift already says; any other numbering is listed
    ordered = {name: FIRST_FILE + i for i, name in enumerate(sorted(selectors))}
    out["(interface)"]["selectors"] = ("in name order from 0x0020" if selectors == ordered
                                       else {name: hx(sel, 4) for name, sel in sorted(selectors.items())})
    return out
