"""Bring-your-own guest images: a user's qcow2 or raw disk, booted with the profile's hardware.

The file is only ever opened by QEMU with snapshot=on (writes go to a temporary overlay), and it
is identified in the capture's manifest by its sha256, so a capture says exactly what ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from harness.cache import sha256_file
from harness.errors import QabiError

QCOW2_MAGIC = b"QFI\xfb"
# formats QEMU could open but we do not accept (convert them with qemu-img first)
_OTHER_FORMATS = {b"KDMV": "VMDK", b"vhdxfile": "VHDX", b"conectix": "VHD", b"<<< Oracle VM": "VDI",
                  b"QEVM": "QED"}


@dataclass(frozen=True)
class GuestImage:
    path: Path
    format: str          # "qcow2" | "raw"
    size: int
    sha256: str

    def as_json(self) -> dict[str, object]:
        return {"kind": "user", "path": str(self.path), "format": self.format, "size": self.size,
                "sha256": self.sha256}


def open_guest_image(path: Path | str) -> GuestImage:
    """Check that `path` is a readable qcow2 or raw disk image and identify it."""
    path = Path(path).resolve()
    if not path.is_file():
        raise QabiError(f"guest image {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise QabiError(f"guest image {path} is not readable")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(QCOW2_MAGIC):
        fmt = "qcow2"
    else:
        for magic, name in _OTHER_FORMATS.items():
            if head.startswith(magic):
                raise QabiError(f"guest image {path} is a {name} image; convert it to qcow2 or raw first "
                                f"(qemu-img convert -O qcow2 ...)")
        fmt = "raw"
        if path.stat().st_size < 512:
            raise QabiError(f"guest image {path} is too small to be a disk image")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _DIGESTS:  # hashing a multi-GB image once per process is enough
        _DIGESTS[key] = sha256_file(path)
    return GuestImage(path, fmt, st.st_size, _DIGESTS[key])


_DIGESTS: dict[tuple[str, int, int, int], str] = {}
