"""The shared libraries (and dynamic loader) the guest's dynamically linked programs need, taken
from the recipe's library packages by following DT_NEEDED recursively."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from harness.guest.cpio import CpioEntry
from harness.guest.elf import elf_dynamic
from harness.guest.recipe import ImageError

# The directories glibc's loader searches on Debian x86-64 when there is no ld.so.cache.
LIBRARY_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")
MAX_LIBRARIES = 64
MAX_SYMLINKS = 40


def _walk(root: Path, guest_path: str) -> tuple[list[tuple[str, str]], str] | None:
    """Follow `guest_path` inside the tree `root` (absolute symlinks stay inside it):
    ([(symlink, its target)...], the regular file it names), or None if there is no such file."""
    parts = [p for p in guest_path.split("/") if p]
    resolved: list[str] = []
    links: list[tuple[str, str]] = []
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        here = "/" + "/".join((*resolved, part))
        host = root / here.lstrip("/")
        if host.is_symlink():
            if len(links) >= MAX_SYMLINKS:
                raise ImageError(f"too many symbolic links resolving {guest_path}")
            target = os.readlink(host)
            links.append((here, target))
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if not host.exists():
            return None
        resolved.append(part)
    final = "/" + "/".join(resolved)
    return (links, final) if (root / final.lstrip("/")).is_file() else None


def _file_mode(path: Path) -> int:
    """0755 or 0644, by the package's executable bit (independent of the umask at extraction)."""
    return 0o755 if path.stat().st_mode & 0o111 else 0o644


def resolve_libraries(root: Path, binaries: Sequence[tuple[str, bytes]]) -> list[CpioEntry]:
    """The dynamic loader and every shared library `binaries` ((guest path, bytes) pairs) need,
    recursively, taken from the tree `root` (the pinned library packages unpacked together): the
    files at their package paths and the symlinks that lead to them, sorted by path."""
    entries: dict[str, CpioEntry] = {}
    queue: list[tuple[str, bytes]] = list(binaries)
    loaded: set[str] = set()
    while queue:
        who, data = queue.pop(0)
        dyn = elf_dynamic(data, who)
        wants: list[tuple[str, list[str]]] = []
        if dyn.interpreter is not None:
            if not dyn.interpreter.startswith("/"):
                raise ImageError(f"{who}: the dynamic loader {dyn.interpreter} is not an absolute path")
            wants.append((dyn.interpreter, [dyn.interpreter]))
        for name in dyn.needed:
            if "/" in name or name in (".", ".."):
                raise ImageError(f"{who} needs a shared library by path ({name}), which is not supported")
            wants.append((name, [f"{d}/{name}" for d in LIBRARY_DIRS]))
        for name, candidates in wants:
            found = next((hit for hit in (_walk(root, c) for c in candidates) if hit is not None), None)
            if found is None:
                what = "dynamic loader" if name.startswith("/") else "shared library"
                raise ImageError(f"{what} {name}, needed by {who}, is in none of the pinned library packages "
                                 f"(searched {', '.join(candidates)}); pin the package that ships it in "
                                 "packages.toml with role \"library\"")
            links, final = found
            for link, target in links:
                entries[link] = CpioEntry(link.lstrip("/"), stat.S_IFLNK | 0o777, target.encode())
            if final not in loaded:
                loaded.add(final)
                host = root / final.lstrip("/")
                body = host.read_bytes()
                entries[final] = CpioEntry(final.lstrip("/"), stat.S_IFREG | _file_mode(host), body)
                queue.append((final, body))
                if len(loaded) > MAX_LIBRARIES:
                    raise ImageError(f"more than {MAX_LIBRARIES} shared libraries needed by "
                                     f"{', '.join(path for path, _ in binaries)}")
    return sorted(entries.values(), key=lambda e: e.path.split("/"))
