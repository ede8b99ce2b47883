"""QEMU builds: resolve a spec string (system | PATH | debian:SUITE[=VERSION]) to a runnable QemuBuild."""

from harness.qemu.build import BuildInfo, QemuBuild, cached_builds, resolve, verify_prefix

__all__ = ["BuildInfo", "QemuBuild", "cached_builds", "resolve", "verify_prefix"]
