"""Fingerprint: decode a capture's raw bytes into plain, JSON-ready dicts keyed by identity.

One decoder per category, `decode(raw: Path) -> dict` (acpi.py, cpuid.py, pci.py, smbios.py, e820.py,
host.py), found through the category registry (harness/categories.py); decode.py's
`fingerprint_capture` is the stage's entry point. The contract is in SCHEMA.md beside this file. Raw
bytes are the truth; a fingerprint can always be recomputed from a capture.
"""

from __future__ import annotations

from harness.lazy import lazy_attributes

# each name from its module on first use: the package imports nothing itself, so the registry can
# import the decoders below it without pulling in decode.py above it (tests/test_imports.py)
_LAZY = {"SCHEMA_VERSION": "harness.fingerprint.decode", "fingerprint_capture": "harness.fingerprint.decode",
         "load_fingerprint": "harness.fingerprint.decode", "DecodeError": "harness.errors"}

__getattr__ = lazy_attributes(__name__, _LAZY)
