"""Bring-your-own guest images: a user's qcow2 or raw disk, booted with the profile's hardware.

The file is only ever opened by QEMU with snapshot=on (writes go to a temporary overlay), and it
is identified in the capture's manifest by its sha256, so a capture says exactly what ran. A qcow2
may name other files that QEMU would open too, any host file the guest could then read back: a
backing file (chain) or an external data file. Such images are refused, so the one file hashed is
the one file QEMU opens.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.cache import sha256_file
from harness.errors import QabiError
from harness.tools import require

QCOW2_MAGIC = b"QFI\xfb"
# formats QEMU could open but we do not accept (convert them with qemu-img first)
_OTHER_FORMATS = {b"KDMV": "VMDK", b"vhdxfile": "VHDX", b"conectix": "VHD", b"<<< Oracle VM": "VDI",
                  b"QEVM": "QED"}


INFO_TIMEOUT = 60


class GuestImageError(QabiError):
    """A bring-your-own guest image that qabi does not boot."""


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
        raise GuestImageError(f"guest image {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise GuestImageError(f"guest image {path} is not readable")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith(QCOW2_MAGIC):
        fmt = "qcow2"
    else:
        for magic, name in _OTHER_FORMATS.items():
            if head.startswith(magic):
                raise GuestImageError(f"guest image {path} is a {name} image; convert it to qcow2 or raw first "
                                f"(qemu-img convert -O qcow2 ...)")
        fmt = "raw"
        if path.stat().st_size < 512:
            raise GuestImageError(f"guest image {path} is too small to be a disk image")
    if fmt == "qcow2":
        _refuse_external_files(path)
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _DIGESTS:  # hashing a multi-GB image once per process is enough
        _DIGESTS[key] = sha256_file(path)
    return GuestImage(path, fmt, st.st_size, _DIGESTS[key])


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def _qemu_img_info(path: Path, chain: bool) -> tuple[int, str, str]:
    argv = [require("qemu-img"), "info", "--output=json", "-f", "qcow2", *(["--backing-chain"] if chain else []),
            str(path)]
    try:
        done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=INFO_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise GuestImageError(f"guest image {path}: qemu-img info timed out after {INFO_TIMEOUT}s") from None
    return done.returncode, done.stdout, done.stderr


def _refuse_external_files(path: Path) -> None:
    """Refuse a qcow2 that names a backing file or an external data file (QEMU would open them)."""
    code, out, err = _qemu_img_info(path, chain=True)
    if code != 0:   # e.g. a backing file that does not exist: look at the image alone
        code, out, err = _qemu_img_info(path, chain=False)
    if code != 0:
        reason = (err.strip().splitlines() or ["failed"])[-1]
        raise GuestImageError(f"guest image {path} cannot be read by qemu-img: {reason}")
    try:
        info = json.loads(out)
        chain = info if isinstance(info, list) else [info]
        top = chain[0]
        data = (top.get("format-specific") or {}).get("data") or {}
    except (ValueError, AttributeError, IndexError, TypeError):
        raise GuestImageError(f"guest image {path}: qemu-img info gave unreadable output") from None
    backing = top.get("backing-filename")
    if backing is not None or len(chain) > 1:
        raise GuestImageError(f"guest image {path} has a backing file ({backing!r}); refused, because QEMU would "
                              "open it too: flatten it first (qemu-img convert -O qcow2 IN OUT)")
    if data.get("data-file") is not None:
        raise GuestImageError(f"guest image {path} has an external data file ({data['data-file']!r}); refused, "
                              "because QEMU would open it too: convert it first (qemu-img convert -O qcow2 IN OUT)")

