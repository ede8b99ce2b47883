"""Debian version strings: ordering (as `dpkg --compare-versions` orders them) and series patterns."""

from __future__ import annotations

import functools
import re

_VERSION = re.compile(r"^(?:(\d+):)?([0-9][A-Za-z0-9.+~:-]*?)(?:-([A-Za-z0-9.+~]+))?$")


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternate non-digit runs (by _order) and digit runs (numerically)."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split(version: str) -> tuple[int, str, str]:
    match = _VERSION.match(version)
    if not match:
        raise ValueError(f"not a Debian version: {version!r}")
    return int(match.group(1) or 0), match.group(2), match.group(3) or ""


def compare_versions(a: str, b: str) -> int:
    """<0, 0 or >0 as Debian version `a` is older than, equal to or newer than `b`."""
    (ea, ua, ra), (eb, ub, rb) = _split(a), _split(b)
    if ea != eb:
        return ea - eb
    return _compare_part(ua, ub) or _compare_part(ra, rb)


def newest(versions: list[str]) -> str:
    return max(versions, key=functools.cmp_to_key(compare_versions))


def matches(pattern: str, text: str, star: str = ".*") -> bool:
    """Whether `text` is in the series `pattern`, where each `*` matches the regular expression
    `star` (any text by default) and everything else is literal; no `*` means exactly `text`."""
    return re.fullmatch(star.join(re.escape(part) for part in pattern.split("*")), text) is not None


def matches_name(pattern: str, name: str) -> bool:
    """Whether the package `name` is in the series `pattern`, where `*` is a number (an ABI number:
    `linux-image-6.1.0-*-amd64` matches linux-image-6.1.0-57-amd64, not the -cloud- flavour)."""
    return matches(pattern, name, "[0-9]+")
