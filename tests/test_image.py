"""The reference guest image: deterministic, cached, and it really boots and probes."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import time

import pytest
from conftest import REPO

from harness.guest import KERNEL_CMDLINE, ReferenceImage, build_reference_image
from harness.guest.image import (
    APPLETS,
    ImageError,
    _build_into,
    _Entry,
    load_recipe,
    modinfo,
    read_cpio,
    write_cpio,
)
from harness.transport.framing import parse

RECIPE = REPO / "guests" / "reference"
QEMU = shutil.which("qemu-system-x86_64")


# -- the cpio writer (no network) ---------------------------------------------------------------
def _entries() -> list[_Entry]:
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644
    return [_Entry("tmp", d), _Entry("bin", d), _Entry("bin/busybox", f | 0o111, b"\x7fELF..."),
            _Entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"), _Entry("init", f, b"#!/bin/sh\n"),
            _Entry("dev", d), _Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]


def test_cpio_is_sorted_deterministic_newc():
    one = write_cpio(_entries())
    two = write_cpio(list(reversed(_entries())))
    assert one == two
    assert len(one) % 4 == 0
    entries = read_cpio(one)
    assert [name for name, _, _ in entries] == ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "init",
                                                "tmp"]
    # every header: magic, inode = position, uid/gid/mtime 0
    pos = 0
    for ino, (name, mode, data) in enumerate(entries, start=1):
        fields = [int(one[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        assert one[pos:pos + 6] == b"070701"
        assert fields[0] == ino and fields[2] == fields[3] == fields[5] == 0
        namesize = fields[11]
        pos += 110 + namesize + (-(110 + namesize) % 4) + fields[6] + (-fields[6] % 4)
    assert read_cpio(one)[2] == ("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    assert read_cpio(one)[4][1] == stat.S_IFCHR | 0o600


def test_cpio_refuses_orphans_and_duplicates():
    with pytest.raises(ImageError, match="no parent directory"):
        write_cpio([_Entry("bin/sh", stat.S_IFREG | 0o644, b"")])
    with pytest.raises(ImageError, match="duplicate"):
        write_cpio([_Entry("init", stat.S_IFREG, b""), _Entry("init", stat.S_IFREG, b"")])


def _elf_with_modinfo(info: bytes) -> bytes:
    """A minimal ELF64 LE object with a .shstrtab and a .modinfo section."""
    shstr = b"\0.shstrtab\0.modinfo\0"
    body = shstr + info
    shoff = 64 + len(body)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 1)
    sections = bytes(64)  # the null section
    sections += struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, 64, len(shstr), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 11, 1, 0, 0, 64 + len(shstr), len(info), 0, 0, 1, 0)
    return bytes(header) + body + sections


def test_modinfo_reads_depends_and_name():
    data = _elf_with_modinfo(b"license=GPL\0depends=msr,foo-bar\0name=cpuid\0")
    info = modinfo(data, "test.ko")
    assert info["depends"] == ["msr,foo-bar"] and info["name"] == ["cpuid"]
    with pytest.raises(ImageError, match="not an ELF64"):
        modinfo(b"nope" * 20, "bad.ko")


def test_recipe_is_validated(tmp_path):
    for name in ("init", "probe.sh"):
        shutil.copy(RECIPE / name, tmp_path / name)
    (tmp_path / "packages.toml").write_text('suite = "bookworm"\n[[package]]\nrole = "kernel"\nname = "x"\n')
    with pytest.raises(ImageError, match="needs role, name and version"):
        load_recipe(tmp_path)
    (tmp_path / "packages.toml").write_text('suite = "bookworm"\n')
    with pytest.raises(ImageError, match="role 'kernel'"):
        load_recipe(tmp_path)
    recipe = load_recipe(RECIPE)
    assert {p.role for p in recipe.packages} == {"kernel", "busybox"}
    assert recipe.modules == ("cpuid",)
    assert len(recipe.key) == 64 and recipe.key == load_recipe(RECIPE).key


def test_kernel_cmdline_never_touches_hardware_setup():
    words = KERNEL_CMDLINE.split()
    assert "console=ttyS0" in words and "panic=-1" in words
    for word in words:
        assert not word.startswith(("pci=", "acpi=", "noapic", "nolapic", "nosmp", "maxcpus", "mem=",
                                    "memmap=", "iommu", "intel_iommu", "clearcpuid", "noexec"))


# -- building (needs the archive or a warm cache) -----------------------------------------------
@pytest.fixture(scope="module")
def image() -> ReferenceImage:
    return build_reference_image()


@pytest.mark.integration
def test_two_fresh_builds_are_byte_identical(tmp_path):
    recipe = load_recipe(RECIPE)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _build_into(recipe, tmp_path / name)
    for name in ("vmlinuz", "initramfs.cpio.gz", "image.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.integration
def test_image_contents(image):
    initramfs = image.initramfs.read_bytes()
    assert initramfs[:2] == b"\x1f\x8b" and initramfs[4:8] == b"\0\0\0\0"      # gzip, mtime 0
    entries = {name: (mode, data) for name, mode, data in read_cpio(gzip.decompress(initramfs))}
    assert entries["init"][1] == (RECIPE / "init").read_bytes()
    assert entries["probe.sh"][1] == (RECIPE / "probe.sh").read_bytes()
    assert stat.S_IMODE(entries["init"][0]) == 0o755
    assert entries["bin/busybox"][1][:4] == b"\x7fELF"
    for applet in APPLETS:
        assert entries[f"bin/{applet}"] == (stat.S_IFLNK | 0o777, b"busybox")
    assert stat.S_ISCHR(entries["dev/console"][0])
    for folder in ("proc", "sys", "dev", "tmp"):
        assert stat.S_ISDIR(entries[folder][0])
    assert entries["etc/qabi/modules"][1] == b"cpuid\n"
    assert modinfo(entries["lib/modules/cpuid.ko"][1], "cpuid.ko")["name"] == ["cpuid"]
    paths = [c.path for c in image.contents]
    assert paths == sorted(paths, key=lambda p: p.split("/")) and "/init" in paths and "/probe.sh" in paths
    assert image.sha256 == hashlib.sha256(image.kernel.read_bytes() + initramfs).hexdigest()
    assert image.kernel_version == "6.1.0-50-cloud-amd64"
    assert [(p.role, p.name, p.version) for p in image.packages] == [
        ("kernel", "linux-image-6.1.0-50-cloud-amd64", "6.1.176-1"),
        ("busybox", "busybox-static", "1:1.35.0-4+deb12u1+b1")]
    assert all(len(p.sha256) == 64 for p in image.packages)
    assert image.cmdline == KERNEL_CMDLINE


@pytest.mark.integration
def test_a_second_build_is_a_cache_hit(image):
    before = image.initramfs.stat().st_mtime_ns
    again = build_reference_image()
    assert again == image
    assert again.initramfs.stat().st_mtime_ns == before


_CONCURRENT = """
import json, sys
from harness.guest import build_reference_image
im = build_reference_image()
print(json.dumps({"sha256": im.sha256, "dir": str(im.kernel.parent)}))
"""


@pytest.mark.integration
def test_concurrent_builds_in_a_fresh_cache(image, tmp_path):
    from harness.cache import cache_root

    home = tmp_path / "cache"
    (home / "qabi" / "debs").mkdir(parents=True)
    shutil.copytree(cache_root() / "apt" / "bookworm", home / "qabi" / "apt" / "bookworm")
    for pkg in image.packages:   # the verified .debs, so that no network is needed
        os.symlink(cache_root() / "debs" / pkg.filename, home / "qabi" / "debs" / pkg.filename)
    env = dict(os.environ, XDG_CACHE_HOME=str(home))
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert results[0] == results[1]
    assert results[0]["sha256"] == image.sha256
    built = [p for p in (home / "qabi" / "images").iterdir() if p.is_dir()]
    assert len(built) == 1 and not any(p.name.startswith(".") for p in built)


# -- booting it (system QEMU under TCG) ---------------------------------------------------------
def boot(image: ReferenceImage, smp: int, timeout: float = 180) -> tuple[float, str]:
    argv = [str(QEMU), "-accel", "tcg", "-machine", "pc-q35-7.2", "-nodefaults", "-display", "none",
            "-serial", "stdio", "-kernel", str(image.kernel), "-initrd", str(image.initramfs),
            "-append", image.cmdline, "-m", "512", "-no-reboot", "-smp", str(smp)]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    return time.monotonic() - started, out.decode("ascii", errors="replace")


@pytest.mark.integration
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("smp", [1, 2])
def test_boot_probe_and_parse(image, smp):
    wall, console = boot(image, smp)
    out = parse(console)
    paths = {r.path for r in out.records}
    assert out.skipped == ()
    assert {"/sys/firmware/acpi/tables/DSDT", "/sys/firmware/acpi/tables/FACP",
            "/sys/firmware/acpi/tables/APIC", "/sys/firmware/acpi/tables/MCFG"} <= paths
    assert {"/sys/firmware/dmi/tables/smbios_entry_point", "/sys/firmware/dmi/tables/DMI"} <= paths
    assert {"/sys/bus/pci/devices/0000:00:00.0/config", "/sys/bus/pci/devices/0000:00:1f.0/config",
            "/sys/bus/pci/devices/0000:00:1f.0/resource"} <= paths
    assert {f"/dev/cpu/{n}/cpuid" for n in range(smp)} <= paths and f"/dev/cpu/{smp}/cpuid" not in paths
    assert "/sys/firmware/memmap/0/type" in paths
    assert out.info["kernel"] == image.kernel_version
    print(f"smp={smp}: boot-to-poweroff {wall:.2f}s, probe "
          f"{float(out.info['uptime-probe-end']) - float(out.info['uptime-probe-start']):.2f}s")


@pytest.mark.integration
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_two_boots_see_identical_hardware(image):
    first = parse(boot(image, 2)[1]).records
    second = parse(boot(image, 2)[1]).records
    assert first == second
