"""One table of the external programs qabi runs, with the Debian package that provides each."""

from __future__ import annotations

import shutil

from harness.errors import ToolMissing

TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "gpgv": "gpgv",
    "iasl": "acpica-tools",
    "dmidecode": "dmidecode",
    "qemu-img": "qemu-utils",
    "ssh-keygen": "openssh-client",
    "chromium": "chromium",
    "unshare": "util-linux",
    "swtpm": "swtpm",
    "sbsign": "sbsigntool",
}


def require(name: str) -> str:
    """Return the absolute path of tool `name`, or raise naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        package = TOOLS.get(name, name)
        raise ToolMissing(f"required program '{name}' not found: install the Debian package '{package}'")
    return path
