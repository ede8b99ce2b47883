"""QEMU builds: resolve a spec string (system | PATH | debian:SUITE[=VERSION]) to a runnable QemuBuild."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.lazy import lazy_attributes

if TYPE_CHECKING:
    from harness.qemu.build import BuildInfo, QemuBuild, cached_builds, resolve, verify_prefix

_LAZY = dict.fromkeys(("BuildInfo", "QemuBuild", "cached_builds", "resolve", "verify_prefix"), "harness.qemu.build")

__all__ = ["BuildInfo", "QemuBuild", "cached_builds", "resolve", "verify_prefix"]

__getattr__ = lazy_attributes(__name__, _LAZY)
