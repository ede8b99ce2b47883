"""The guest kernel: its command line, the options it must have built in, and the modules /init
loads (with their dependencies, read from each module's .modinfo)."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

from harness.guest.elf import modinfo
from harness.guest.recipe import ImageError

# The kernel command line the launcher passes with this image. Only options that change what
# the kernel prints or how fast it boots under TCG, never how it programs the hardware the probe
# reads (no pci=, acpi=, noapic, nosmp, mem=...): nokaslr (no relocation by the decompressor),
# edd=off (no BIOS disk probing), cryptomgr.notests (no crypto self-tests), ipv6.disable=1,
# lpj=10000000 (no delay-loop calibration per vCPU; udelay() uses the TSC), and an
# initcall_blacklist of initcalls that only feed tracing, TCP congestion control, keyrings and
# module-signature certificates (modules then load unverified, which taints the kernel). What each
# saves is in docs/measurements.md.
INITCALL_BLACKLIST = (
    "init_kprobe_trace", "init_blk_tracer", "init_graph_tracefs", "init_trace_printk_function_export",
    "cubictcp_register", "crypto_kdf108_init", "load_system_certificate_list", "init_encrypted",
    "slab_sysfs_init",
)
KERNEL_CMDLINE = " ".join([
    "console=ttyS0", "quiet", "loglevel=0", "panic=-1", "nokaslr", "edd=off", "cryptomgr.notests",
    "ipv6.disable=1", "lpj=10000000", f"initcall_blacklist={','.join(INITCALL_BLACKLIST)}",
])

# What the probe and /init need built into the kernel (=y), checked against the kernel package's
# boot/config-<version> at build time: the initramfs, /proc, sysfs and devtmpfs, the serial
# console, ACPI tables and DMI in sysfs, the firmware memory map, PCI sysfs, IPv4 (ssh mode) and
# loadable modules. (The drivers /init loads are found as modules by resolve_modules.)
REQUIRED_KERNEL_CONFIG = (
    "CONFIG_BLK_DEV_INITRD", "CONFIG_RD_GZIP", "CONFIG_PROC_FS", "CONFIG_SYSFS", "CONFIG_DEVTMPFS",
    "CONFIG_SERIAL_8250", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_ACPI", "CONFIG_DMI", "CONFIG_DMI_SYSFS",
    "CONFIG_FIRMWARE_MEMMAP", "CONFIG_PCI", "CONFIG_INET", "CONFIG_MODULES",
)

def check_kernel_config(text: str, name: str) -> None:
    """Raise unless every REQUIRED_KERNEL_CONFIG option is built in (=y) in the kconfig `text`."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("CONFIG_"):
            values[key] = value
    missing = [f"{opt} ({'=' + values[opt] if opt in values else 'not set'})"
               for opt in REQUIRED_KERNEL_CONFIG if values.get(opt) != "y"]
    if missing:
        raise ImageError(f"{name}: the reference guest needs these built in (=y): {', '.join(missing)}")


MAX_MODULES = 64


def _module_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(raw)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(raw)
    if path.name.endswith(".ko.zst"):
        raise ImageError(f"{path.name}: zstd-compressed modules are not supported (busybox insmod "
                         "cannot read them and Python 3.11 has no zstd)")
    return raw


def resolve_modules(modroot: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(name, uncompressed .ko bytes) of `wanted` and their dependencies, dependencies first."""
    index: dict[str, Path] = {}
    for path in sorted(modroot.rglob("*.ko*")):
        stem = path.name.split(".ko")[0]
        index.setdefault(stem.replace("-", "_"), path)
    ordered: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        norm = name.replace("-", "_")
        if norm in done:
            return
        if norm in chain:
            raise ImageError(f"kernel module dependency cycle: {' -> '.join((*chain, norm))}")
        if norm not in index:
            raise ImageError(f"kernel module {name} is not in the kernel package (is it built in, or "
                             "misspelt in packages.toml?)")
        data = _module_bytes(index[norm])
        info = modinfo(data, index[norm].name)
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                visit(dep, (*chain, norm))
        done.add(norm)
        ordered.append((norm, data))
        if len(ordered) > MAX_MODULES:
            raise ImageError(f"more than {MAX_MODULES} kernel modules needed for {', '.join(wanted)}")

    for name in wanted:
        visit(name, ())
    return ordered
