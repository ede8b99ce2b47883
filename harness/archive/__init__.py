"""Debian's archive: signed suite indexes read through apt with a private configuration, and a
shared pool of .debs verified against them. Used by the QEMU builds (harness/qemu) and the
reference guest image (harness/guest). Import from here, not from the modules inside."""

from __future__ import annotations

from pathlib import Path

from harness.archive.pool import download, unpack, verify_deb
from harness.archive.sources import SUITES, check_suite, mirrors
from harness.archive.suite import PackageFile, Suite

__all__ = ["SUITES", "PackageFile", "Suite", "check_suite", "download", "fetch_debs", "mirrors", "unpack",
           "verify_deb"]


def fetch_debs(suite: str, requests: list[str], refresh: bool = False) -> tuple[list[PackageFile], list[Path]]:
    """Verified .debs of exactly `requests` (name=version, no dependency closure)."""
    s = Suite(suite)
    s.ensure_index(refresh)
    files = s.package_files(requests)
    return files, download(files)
