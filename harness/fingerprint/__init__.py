"""Fingerprint: decode a capture's raw bytes into plain, JSON-ready dicts keyed by identity.

One module per category (pci, cpuid, acpi, smbios, e820), each with `decode(raw: Path) -> dict`.
The contract is in SCHEMA.md beside this file. Raw bytes are the truth; a fingerprint can always
be recomputed from a capture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import DecodeError, QabiError

SCHEMA_VERSION = 1
CATEGORIES = ("pci", "cpuid", "acpi", "smbios", "e820")


def _decoders() -> dict[str, Any]:
    from harness.fingerprint import acpi, cpuid, e820, pci, smbios

    return {"pci": pci.decode, "cpuid": cpuid.decode, "acpi": acpi.decode, "smbios": smbios.decode,
            "e820": e820.decode}


def fingerprint_capture(path: Path | str, categories: tuple[str, ...] = CATEGORIES) -> dict[str, Any]:
    """Decode the complete, verified capture at `path` into a fingerprint dict."""
    from harness.capture import load_capture

    capture = load_capture(Path(path))
    m = capture.manifest
    out: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "source": {"capture": str(capture.path), "build": m["build"], "machine": m["machine"]["asked"],
                   "machine_resolved": m["machine"]["resolved"], "guest": m["profile"]["name"],
                   "profile": m["profile"], "image": m["image"]["sha256"], "accel": m["accel"]},
    }
    decoders = _decoders()
    for category in categories:
        out[category] = decoders[category](capture.raw)
    return out


def load_fingerprint(path: Path | str) -> dict[str, Any]:
    """A fingerprint JSON file, or a capture directory decoded on the spot (the schema and the
    categories are checked where it is compared: harness.drift.compare)."""
    p = Path(path)
    if p.is_dir():
        return fingerprint_capture(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QabiError(f"{p}: no such fingerprint file or capture directory") from None
    except OSError as exc:
        raise QabiError(f"cannot read {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise QabiError(f"{p}: not a fingerprint (not UTF-8 JSON)") from None
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise QabiError(f"{p}: not a fingerprint (invalid JSON: {exc})") from None
    if not isinstance(data, dict):
        raise QabiError(f"{p}: not a fingerprint (not a JSON object)")
    source = data.setdefault("source", {})
    if isinstance(source, dict):
        source.setdefault("capture", str(p))
    return data


__all__ = ["CATEGORIES", "SCHEMA_VERSION", "DecodeError", "fingerprint_capture", "load_fingerprint"]
