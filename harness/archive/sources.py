"""Where Debian's archive is and which suites qabi knows: the mirror is read from the host's apt
sources at run time (or the debian-mirror / debian-security-mirror settings), never written in
this repository."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from harness.config import setting
from harness.errors import ArchiveError

# suite -> (archive kind of its own index, base suite it needs beside it or None)
SUITES: dict[str, tuple[str, str | None]] = {
    "bullseye": ("main", None),
    "bullseye-security": ("security", "bullseye"),
    "bookworm": ("main", None),
    "bookworm-security": ("security", "bookworm"),
    "bookworm-backports": ("main", "bookworm"),
    "trixie": ("main", None),
    "trixie-security": ("security", "trixie"),
    "trixie-backports": ("main", "trixie"),
    "forky": ("main", None),
    "sid": ("main", None),
}

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"



def _host_sources() -> list[tuple[str, list[str]]]:
    """(uri, suites) of every enabled entry in the host's apt sources."""
    entries: list[tuple[str, list[str]]] = []
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in files:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            parts = re.sub(r"\[[^\]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb":
                entries.append((parts[1], [parts[2]]))
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split()))
    return entries


def mirrors() -> tuple[str, str]:
    """(main archive base, security archive base), from settings or the host's apt sources."""
    main = setting("debian-mirror")
    security = setting("debian-security-mirror")
    known = {s.split("-")[0] for s in SUITES} | {"stable", "testing", "unstable", "oldstable"}
    if not main or not security:
        for uri, suites in _host_sources():
            bases = {s.split("-")[0] for s in suites}
            if not bases & known:
                continue
            if any(s.endswith("-security") for s in suites):
                security = security or uri
            else:
                main = main or uri
    if not main:
        raise ArchiveError(
            "no Debian archive found in the host's apt sources: set QABI_DEBIAN_MIRROR "
            "(or debian-mirror in the qabi config)")
    if not security:
        security = re.sub(r"/debian/?$", "/debian-security", main.rstrip("/"))
    return main.rstrip("/"), security.rstrip("/")


def keyring() -> str:
    path = setting("debian-keyring", DEFAULT_KEYRING) or DEFAULT_KEYRING
    if not os.path.isfile(path):
        raise ArchiveError(f"Debian archive keyring {path} not found: install the Debian package "
                           "'debian-archive-keyring'")
    return path


def check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise ArchiveError(f"unknown Debian suite '{suite}' (known: {', '.join(SUITES)})")
