"""The reference guest image: deterministic, cached, and it really boots and probes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest
from conftest import REPO
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.archive import unpack
from harness.archive.version import matches, matches_name
from harness.guest import KERNEL_CMDLINE, SSH_READY, ReferenceImage, build_reference_image, client_key
from harness.guest.cpio import CpioEntry, read_cpio, split_initramfs, write_cpio
from harness.guest.debs import fetch_packages, resolve_packages
from harness.guest.elf import elf_dynamic, modinfo
from harness.guest.image import APPLETS, DROPBEAR_PATH, SFTP_SERVER_PATH, SFTPSERVER_PATH, image_key
from harness.guest.kernel import REQUIRED_KERNEL_CONFIG, check_kernel_config
from harness.guest.libraries import resolve_libraries
from harness.guest.recipe import LIBRARY_ROLE, ImageError, PackageRef, load_recipe
from harness.guest.sshkeys import client_public_key, dropbear_host_key, openssh_public_line
from harness.transport.framing import parse

RECIPE = REPO / "guests" / "reference"
QEMU = shutil.which("qemu-system-x86_64")


# -- the cpio writer (no network) ---------------------------------------------------------------
def _entries() -> list[CpioEntry]:
    d, f = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644
    return [CpioEntry("tmp", d), CpioEntry("bin", d), CpioEntry("bin/busybox", f | 0o111, b"\x7fELF..."),
            CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"), CpioEntry("init", f, b"#!/bin/sh\n"),
            CpioEntry("dev", d), CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]


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
        write_cpio([CpioEntry("bin/sh", stat.S_IFREG | 0o644, b"")])
    with pytest.raises(ImageError, match="duplicate"):
        write_cpio([CpioEntry("init", stat.S_IFREG, b""), CpioEntry("init", stat.S_IFREG, b"")])


def test_second_cpio_builds_on_the_first():
    """The per-build archive holds only files whose directories the first archive made."""
    secret = [CpioEntry("root/.ssh/authorized_keys", stat.S_IFREG | 0o600, b"ssh-ed25519 AAAA\n")]
    with pytest.raises(ImageError, match="no parent directory"):
        write_cpio(secret)
    data = write_cpio(secret, existing={"root", "root/.ssh"}, first_ino=8)
    assert read_cpio(data) == [("root/.ssh/authorized_keys", stat.S_IFREG | 0o600, b"ssh-ed25519 AAAA\n")]
    assert int(data[6:14], 16) == 8
    with pytest.raises(ImageError, match="duplicate"):
        write_cpio([CpioEntry("root", stat.S_IFDIR | 0o700)], existing={"root"})


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


def _elf(needed: list[str], interp: str | None = None, e_type: int = 3) -> bytes:
    """A minimal x86-64 ELF64 LE file: one PT_LOAD mapping the file at address 0, an optional
    PT_INTERP, and a PT_DYNAMIC with DT_NEEDED entries, DT_STRTAB and DT_STRSZ."""
    strtab, offsets = b"\0", []
    for name in needed:
        offsets.append(len(strtab))
        strtab += name.encode() + b"\0"
    interp_bytes = interp.encode() + b"\0" if interp else b""
    nph = 3 if interp else 2
    interp_off = 64 + 56 * nph
    str_off = interp_off + len(interp_bytes)
    dyn_off = str_off + len(strtab) + (-(str_off + len(strtab)) % 8)
    dyn = b"".join(struct.pack("<qQ", 1, o) for o in offsets)
    dyn += struct.pack("<qQ", 5, str_off) + struct.pack("<qQ", 10, len(strtab)) + struct.pack("<qQ", 0, 0)
    total = dyn_off + len(dyn)
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    struct.pack_into("<HH", header, 0x10, e_type, 62)
    struct.pack_into("<Q", header, 0x20, 64)
    struct.pack_into("<HH", header, 0x36, 56, nph)
    phs = b""
    if interp:
        phs += struct.pack("<IIQQQQQQ", 3, 4, interp_off, interp_off, interp_off, len(interp_bytes),
                           len(interp_bytes), 1)
    phs += struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, total, total, 0x1000)
    phs += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, len(dyn), len(dyn), 8)
    body = bytes(header) + phs + interp_bytes + strtab
    return body + b"\0" * (dyn_off - len(body)) + dyn


def test_elf_dynamic_reads_interpreter_and_needed():
    exe = _elf(["libfoo.so.1", "libc.so.6"], interp="/lib64/ld-linux-x86-64.so.2", e_type=2)
    dyn = elf_dynamic(exe, "prog")
    assert dyn.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert dyn.needed == ("libfoo.so.1", "libc.so.6")
    assert elf_dynamic(_elf([]), "lib").needed == ()
    with pytest.raises(ImageError, match="not an ELF64"):
        elf_dynamic(b"#!/bin/sh\n" * 10, "script")
    with pytest.raises(ImageError, match="malformed ELF: machine 40"):
        elf_dynamic(exe[:0x12] + struct.pack("<H", 40) + exe[0x14:], "arm")
    with pytest.raises(ImageError, match="malformed ELF"):
        elf_dynamic(exe[:200], "truncated")


def test_library_resolver_follows_symlinks_and_names_what_is_missing(tmp_path):
    lib, usrlib = tmp_path / "lib" / "x86_64-linux-gnu", tmp_path / "usr" / "lib" / "x86_64-linux-gnu"
    lib.mkdir(parents=True)
    usrlib.mkdir(parents=True)
    (tmp_path / "lib64").mkdir()
    (lib / "ld.so").write_bytes(_elf([]))
    os.symlink("/lib/x86_64-linux-gnu/ld.so", tmp_path / "lib64" / "ld-linux-x86-64.so.2")   # absolute
    (lib / "libfoo.so.1.2").write_bytes(_elf(["libbar.so.2"]))
    os.symlink("libfoo.so.1.2", lib / "libfoo.so.1")
    (usrlib / "libbar.so.2").write_bytes(_elf(["libfoo.so.1"]))      # a cycle is fine
    (lib / "libfoo.so.1.2").chmod(0o600)
    prog = _elf(["libfoo.so.1"], interp="/lib64/ld-linux-x86-64.so.2", e_type=2)
    entries = {e.path: e for e in resolve_libraries(tmp_path, [("/usr/bin/prog", prog)])}
    assert sorted(entries) == ["lib/x86_64-linux-gnu/ld.so", "lib/x86_64-linux-gnu/libfoo.so.1",
                               "lib/x86_64-linux-gnu/libfoo.so.1.2", "lib64/ld-linux-x86-64.so.2",
                               "usr/lib/x86_64-linux-gnu/libbar.so.2"]
    assert entries["lib64/ld-linux-x86-64.so.2"] == CpioEntry("lib64/ld-linux-x86-64.so.2", stat.S_IFLNK | 0o777,
                                                           b"/lib/x86_64-linux-gnu/ld.so")
    assert entries["lib/x86_64-linux-gnu/libfoo.so.1.2"].mode == stat.S_IFREG | 0o644
    assert entries["usr/lib/x86_64-linux-gnu/libbar.so.2"].data == _elf(["libfoo.so.1"])
    (usrlib / "libbar.so.2").unlink()
    with pytest.raises(ImageError, match=r"shared library libbar\.so\.2, needed by "
                                         r"/lib/x86_64-linux-gnu/libfoo\.so\.1\.2, is in none of the pinned"):
        resolve_libraries(tmp_path, [("/usr/bin/prog", prog)])
    (tmp_path / "lib64" / "ld-linux-x86-64.so.2").unlink()
    with pytest.raises(ImageError, match="dynamic loader /lib64/ld-linux-x86-64.so.2, needed by /usr/bin/prog"):
        resolve_libraries(tmp_path, [("/usr/bin/prog", prog)])


def test_recipe_is_validated(tmp_path):
    for name in ("init", "probe.sh"):
        shutil.copy(RECIPE / name, tmp_path / name)
    (tmp_path / "packages.toml").write_text('suite = "bookworm"\n[[package]]\nrole = "kernel"\nname = "x"\n')
    with pytest.raises(ImageError, match="needs role, name and version"):
        load_recipe(tmp_path)
    (tmp_path / "packages.toml").write_text('suite = "bookworm"\n')
    with pytest.raises(ImageError, match="role 'kernel'"):
        load_recipe(tmp_path)
    (tmp_path / "packages.toml").write_text('suite = "bookworm"\n[[package]]\nrole = "kernal"\nname = "x"\n'
                                            'version = "1"\n')
    with pytest.raises(ImageError, match="unknown role 'kernal'"):
        load_recipe(tmp_path)
    recipe = load_recipe(RECIPE)
    assert {p.role for p in recipe.packages} == {"kernel", "busybox", "dropbear", "sftp-server", LIBRARY_ROLE}
    assert recipe.nic_modules == ("virtio_pci", "virtio_net", "e1000", "e1000e", "8139cp")
    assert recipe.modules == (*recipe.nic_modules, "cpuid")
    assert all("*" in p.version for p in recipe.packages)          # series, not exact pins
    refs = (PackageRef("kernel", "k", "1"),)
    assert len(image_key(recipe, refs, "ssh-ed25519 AAAA1")) == 64
    assert image_key(recipe, refs, "ssh-ed25519 AAAA1") == image_key(load_recipe(RECIPE), refs, "ssh-ed25519 AAAA1")
    assert image_key(recipe, refs, "ssh-ed25519 AAAA1") != image_key(recipe, refs, "ssh-ed25519 AAAA2")
    assert image_key(recipe, refs, "ssh-ed25519 AAAA1") != image_key(recipe, (PackageRef("kernel", "k", "2"),),
                                                                   "ssh-ed25519 AAAA1")


def test_cmdline_for_each_transport():
    image = ReferenceImage(kernel=Path("k"), initramfs=Path("i"), sha256="", kernel_version="", contents=(),
                           packages=())
    assert image.cmdline_for("serial") == KERNEL_CMDLINE
    assert image.cmdline_for("ssh") == KERNEL_CMDLINE + " qabi.transport=ssh"
    with pytest.raises(ImageError, match="unknown transport 'telnet'"):
        image.cmdline_for("telnet")


def test_dropbear_host_key_format():
    blob, line = dropbear_host_key()
    # string "ssh-ed25519", uint32 64, seed (32) || public (32)
    assert blob[:4] == struct.pack(">I", 11) and blob[4:15] == b"ssh-ed25519"
    assert blob[15:19] == struct.pack(">I", 64) and len(blob) == 19 + 64
    seed, public = blob[19:51], blob[51:]
    assert Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw() == public
    assert line == openssh_public_line(public)
    kind, b64 = line.split()
    key = paramiko.PKey.from_type_string(kind, base64.b64decode(b64))
    assert key.get_name() == "ssh-ed25519" and key.asbytes() == base64.b64decode(b64)
    assert dropbear_host_key()[1] != line


def test_client_key_is_made_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = client_key()
    assert path == tmp_path / "qabi" / "ssh" / "id_ed25519"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    public = client_public_key(path)
    assert path.with_name("id_ed25519.pub").read_text().split()[:2] == public.split()
    key = paramiko.Ed25519Key.from_private_key_file(str(path))
    assert f"{key.get_name()} {key.get_base64()}" == public
    before = path.read_bytes()
    assert client_key() == path and path.read_bytes() == before
    path.write_text("not a key\n")
    with pytest.raises(ImageError, match="not a readable unencrypted OpenSSH private key"):
        client_key()


def test_kernel_config_check_names_what_is_missing():
    good = "\n".join(f"{opt}=y" for opt in REQUIRED_KERNEL_CONFIG) + "\n# CONFIG_FOO is not set\n"
    check_kernel_config(good, "k.deb")
    bad = good.replace("CONFIG_DMI_SYSFS=y", "CONFIG_DMI_SYSFS=m").replace("CONFIG_RD_GZIP=y\n", "")
    with pytest.raises(ImageError, match=r"k\.deb: .*CONFIG_RD_GZIP \(not set\), CONFIG_DMI_SYSFS \(=m\)$"):
        check_kernel_config(bad, "k.deb")


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


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory) -> Path:
    """The recipe's dropbear, sftp-server and library packages, each unpacked into ROOT/<name>."""
    recipe = load_recipe(RECIPE)
    refs, debs = fetch_packages(recipe, resolve_packages(recipe))
    root = tmp_path_factory.mktemp("packages")
    by_file = {path.name: path for paths in debs.values() for path in paths}
    for ref in refs:
        if ref.role in ("dropbear", "sftp-server", LIBRARY_ROLE):
            unpack([by_file[ref.filename.rpartition("/")[2]]], root / ref.name, relink=False)
    return root


def _library_root(unpacked: Path, dest: Path, leave_out: str = "") -> Path:
    recipe = load_recipe(RECIPE)
    for pkg in recipe.packages:
        if pkg.role == LIBRARY_ROLE and pkg.name != leave_out:
            shutil.copytree(unpacked / pkg.name, dest, symlinks=True, dirs_exist_ok=True)
    return dest


@pytest.mark.integration
def test_library_resolver_on_the_real_dropbear(unpacked, tmp_path):
    dropbear = (unpacked / "dropbear-bin" / DROPBEAR_PATH.lstrip("/")).read_bytes()
    dyn = elf_dynamic(dropbear, DROPBEAR_PATH)
    assert dyn.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert {"libtomcrypt.so.1", "libtommath.so.1", "libz.so.1", "libcrypt.so.1", "libc.so.6"} <= set(dyn.needed)
    assert b"\0" + SFTPSERVER_PATH.encode() + b"\0" in dropbear      # Debian's compiled-in SFTPSERVER_PATH
    libroot = _library_root(unpacked, tmp_path / "libs")
    entries = {"/" + e.path: e for e in resolve_libraries(libroot, [(DROPBEAR_PATH, dropbear)])}
    # the loader (a symlink into /lib/x86_64-linux-gnu), every DT_NEEDED by its soname, and what
    # the libraries need in turn (libtomcrypt needs libgmp)
    assert stat.S_ISLNK(entries["/lib64/ld-linux-x86-64.so.2"].mode)
    assert "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" in entries
    for soname in ("libtomcrypt.so.1", "libtommath.so.1", "libgmp.so.10"):
        assert f"/usr/lib/x86_64-linux-gnu/{soname}" in entries, soname
    for soname in ("libc.so.6", "libz.so.1", "libcrypt.so.1"):
        assert f"/lib/x86_64-linux-gnu/{soname}" in entries, soname
    files = [e for e in entries.values() if stat.S_ISREG(e.mode)]
    for entry in files:      # every library is a real x86-64 ELF whose own needs are all present
        for need in elf_dynamic(entry.data, entry.path).needed:
            assert any(p.endswith("/" + need) for p in entries), (entry.path, need)
    sftp = (unpacked / "openssh-sftp-server" / SFTP_SERVER_PATH.lstrip("/")).read_bytes()
    assert elf_dynamic(sftp, SFTP_SERVER_PATH).needed == ("libc.so.6",)


@pytest.mark.integration
def test_a_missing_library_is_named(unpacked, tmp_path):
    dropbear = (unpacked / "dropbear-bin" / DROPBEAR_PATH.lstrip("/")).read_bytes()
    libroot = _library_root(unpacked, tmp_path / "libs", leave_out="libtommath1")
    with pytest.raises(ImageError, match=r"shared library libtommath\.so\.1, needed by /usr/sbin/dropbear, "
                                         r"is in none of the pinned library packages"):
        resolve_libraries(libroot, [(DROPBEAR_PATH, dropbear)])


def _cache_with_debs(home: Path, image: ReferenceImage) -> dict[str, str]:
    """An empty XDG_CACHE_HOME that holds only the suite index and the image's verified .debs."""
    from harness.cache import cache_root

    (home / "qabi" / "debs").mkdir(parents=True)
    shutil.copytree(cache_root() / "apt" / "bookworm", home / "qabi" / "apt" / "bookworm")
    for pkg in image.packages:   # the verified .debs, so that no network is needed
        os.symlink(cache_root() / "debs" / pkg.filename, home / "qabi" / "debs" / pkg.filename)
    return dict(os.environ, XDG_CACHE_HOME=str(home))


@pytest.mark.integration
def test_builds_in_two_caches_share_the_deterministic_part(image, tmp_path, monkeypatch):
    # cache a: the suite's own, where `image` was built; cache b: an empty one, built afresh here
    env = _cache_with_debs(tmp_path / "b", image)
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    a, b = image, build_reference_image()
    assert b.kernel.parent.is_relative_to(tmp_path / "b") and not a.kernel.parent.is_relative_to(tmp_path)
    assert a.kernel.read_bytes() == b.kernel.read_bytes()
    base_a = a.initramfs.read_bytes()[:a.initramfs_base_size]
    assert base_a == b.initramfs.read_bytes()[:b.initramfs_base_size]
    assert hashlib.sha256(base_a).hexdigest() == a.initramfs_base_sha256 == b.initramfs_base_sha256
    assert a.sha256 == b.sha256 == image.sha256                  # the image's identity
    # what differs: the per-build host key, the per-cache client key, hence the whole file
    assert a.host_key != b.host_key and a.host_key.startswith("ssh-ed25519 AAAA")
    assert client_public_key(a.client_key) != client_public_key(b.client_key)
    assert a.key != b.key and a.initramfs_sha256 != b.initramfs_sha256
    assert [c for c in a.contents if not c.secret] == [c for c in b.contents if not c.secret]
    assert [(c.path, c.mode) for c in a.contents if c.secret] == [(c.path, c.mode) for c in b.contents if c.secret]


@pytest.mark.integration
def test_image_contents(image):
    initramfs = image.initramfs.read_bytes()
    assert initramfs[:2] == b"\x1f\x8b" and initramfs[4:8] == b"\0\0\0\0"      # gzip, mtime 0
    assert hashlib.sha256(initramfs[:image.initramfs_base_size]).hexdigest() == image.initramfs_base_sha256
    base, secret = split_initramfs(initramfs, image.initramfs_base_size)
    pos = initramfs.index(b"070701", image.initramfs_base_size)     # the second archive: 4-byte aligned
    assert pos % 4 == 0 and initramfs[pos:] == secret and not initramfs[image.initramfs_base_size:pos].strip(b"\0")
    entries = {name: (mode, data) for name, mode, data in read_cpio(base)}
    secrets = {name: (mode, data) for name, mode, data in read_cpio(secret)}
    assert entries["init"][1] == (RECIPE / "init").read_bytes()
    assert entries["probe.sh"][1] == (RECIPE / "probe.sh").read_bytes()
    assert stat.S_IMODE(entries["init"][0]) == 0o755
    assert entries["bin/busybox"][1][:4] == b"\x7fELF"
    for applet in APPLETS:
        assert entries[f"bin/{applet}"] == (stat.S_IFLNK | 0o777, b"busybox")
    assert stat.S_ISCHR(entries["dev/console"][0])
    for folder in ("proc", "sys", "dev", "tmp"):
        assert stat.S_ISDIR(entries[folder][0])
    recipe = load_recipe(RECIPE)
    loaded = entries["etc/qabi/modules"][1].decode().split()
    assert loaded == list(image.modules) and image.nic_modules == recipe.nic_modules
    wanted = [m.replace("-", "_") for m in recipe.modules]
    assert [m for m in loaded if m in wanted] == wanted                # in the recipe's order
    for name in loaded:
        assert modinfo(entries[f"lib/modules/{name}.ko"][1], f"{name}.ko")["name"] == [name]
        assert modinfo(entries[f"lib/modules/{name}.ko"][1], f"{name}.ko")["vermagic"][0].startswith(
            image.kernel_version + " ")
        for dep in ",".join(modinfo(entries[f"lib/modules/{name}.ko"][1], name).get("depends", [])).split(","):
            assert not dep or loaded.index(dep) < loaded.index(name)
    # ssh mode: dropbear, sftp-server where dropbear looks for it, the loader and libraries
    assert entries[DROPBEAR_PATH.lstrip("/")][0] == stat.S_IFREG | 0o755
    assert entries[SFTP_SERVER_PATH.lstrip("/")][0] == stat.S_IFREG | 0o755
    assert entries[SFTPSERVER_PATH.lstrip("/")] == (stat.S_IFLNK | 0o777, b"openssh/sftp-server")
    assert entries["lib64/ld-linux-x86-64.so.2"][0] == stat.S_IFLNK | 0o777
    assert elf_dynamic(entries[DROPBEAR_PATH.lstrip("/")][1], "dropbear").interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert entries["etc/passwd"][1] == b"root:*:0:0:root:/root:/bin/sh\n"
    assert b"root:" in entries["etc/group"][1] and entries["etc/shells"][1] == b"/bin/sh\n"
    assert b"passwd: files" in entries["etc/nsswitch.conf"][1]
    for folder in ("root", "root/.ssh"):
        assert entries[folder][0] == stat.S_IFDIR | 0o700
    assert stat.S_ISDIR(entries["etc/dropbear"][0])
    # the secrets are in the second archive only, 0600, owned 0:0 like everything
    assert sorted(secrets) == ["etc/dropbear/dropbear_ed25519_host_key", "root/.ssh/authorized_keys"]
    assert not set(secrets) & set(entries)
    assert all(mode == stat.S_IFREG | 0o600 for mode, _ in secrets.values())
    assert all(int(initramfs[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) == 0 for i in (2, 3, 5))   # uid gid mtime
    assert secrets["root/.ssh/authorized_keys"][1].decode().split() == client_public_key(image.client_key).split()
    host = secrets["etc/dropbear/dropbear_ed25519_host_key"][1]
    assert host[4:15] == b"ssh-ed25519" and openssh_public_line(host[51:]) == image.host_key
    assert Ed25519PrivateKey.from_private_bytes(host[19:51]).public_key().public_bytes_raw() == host[51:]
    paths = [c.path for c in image.contents if not c.secret]
    assert paths == sorted(paths, key=lambda p: p.split("/")) and "/init" in paths and "/probe.sh" in paths
    assert [c.path for c in image.contents if c.secret] == ["/" + p for p in sorted(secrets)]
    assert image.sha256 == hashlib.sha256(image.kernel.read_bytes() + initramfs[:image.initramfs_base_size]
                                          ).hexdigest()
    assert image.initramfs_sha256 == hashlib.sha256(initramfs).hexdigest()
    # every package is the newest of its series in the index, recorded exactly in image.json
    assert list(image.packages) == [
        PackageRef(r.role, r.name, r.version, p.filename, p.sha256)
        for r, p in zip(resolve_packages(recipe), image.packages, strict=True)]
    for spec, pkg in zip(recipe.packages, image.packages, strict=True):
        assert matches_name(spec.name, pkg.name) and matches(spec.version, pkg.version)
    assert image.packages[0].name == f"linux-image-{image.kernel_version}"
    assert image.kernel_version.startswith("6.1.0-") and image.kernel_version.endswith("-amd64")
    assert all(len(p.sha256) == 64 for p in image.packages)
    assert image.cmdline == KERNEL_CMDLINE and image.cmdline_for("serial") == KERNEL_CMDLINE
    assert image.client_key == client_key()
    meta = json.loads((image.kernel.parent / "image.json").read_text())
    assert [(p["name"], p["version"]) for p in meta["packages"]] == [(p.name, p.version) for p in image.packages]
    assert meta["host_key"] == image.host_key and meta["initramfs_base_size"] == image.initramfs_base_size


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
    home = tmp_path / "cache"
    env = _cache_with_debs(home, image)
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


@pytest.fixture(scope="module")
def booted(image: ReferenceImage) -> Callable[[int, int], tuple[float, str]]:
    """booted(smp, n): the nth boot of the image with `smp` vCPUs (made once, shared by the tests)."""
    made: dict[int, list[tuple[float, str]]] = {}

    def nth(smp: int, n: int) -> tuple[float, str]:
        runs = made.setdefault(smp, [])
        while len(runs) <= n:
            runs.append(boot(image, smp))
        return runs[n]

    return nth


@pytest.mark.integration
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("smp", [1, 2])
def test_boot_probe_and_parse(image, booted, smp):
    wall, console = booted(smp, 0)
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
def test_two_boots_see_identical_hardware(booted):
    first = parse(booted(2, 0)[1]).records     # the boot test_boot_probe_and_parse[2] parsed, if it ran here
    second = parse(booted(2, 1)[1]).records
    assert first == second


# -- ssh mode -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pinned_client(port: int, host_key: str) -> paramiko.SSHClient:
    """A client that accepts exactly `host_key` for the guest and nothing else."""
    kind, b64 = host_key.split()[:2]
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{port}", kind, paramiko.PKey.from_type_string(kind, base64.b64decode(b64)))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def _connect(client: paramiko.SSHClient, port: int, key: Path) -> None:
    client.connect("127.0.0.1", port=port, username="root", key_filename=str(key), look_for_keys=False,
                   allow_agent=False, timeout=30, banner_timeout=30, auth_timeout=30)


def _run(client: paramiko.SSHClient, command: str) -> tuple[int, bytes]:
    """(exit status, stdout) of `command`. Waits for the exit status before the next channel is
    opened: bookworm's dropbear (2022.83) closes a new channel at once if a child's SIGCHLD is
    pending while it is opened (upstream issues #173/#321, fixed in 2024.86)."""
    transport = client.get_transport()
    assert transport is not None
    channel = transport.open_session(timeout=30)
    channel.settimeout(60)
    channel.exec_command(command)
    channel.shutdown_write()
    out = b""
    while chunk := channel.recv(1 << 16):
        out += chunk
    status = channel.recv_exit_status()
    channel.close()
    return status, out


@pytest.mark.integration
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_ssh_mode_login_sftp_and_host_key_pinning(image, tmp_path):
    port, log = _free_port(), tmp_path / "console.log"
    argv = [str(QEMU), "-accel", "tcg", "-machine", "pc-q35-7.2", "-nodefaults", "-display", "none",
            "-serial", f"file:{log}", "-m", "512", "-no-reboot",
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "e1000e,netdev=n0",
            "-kernel", str(image.kernel), "-initrd", str(image.initramfs), "-append", image.cmdline_for("ssh")]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while SSH_READY.encode() not in (log.read_bytes() if log.exists() else b""):
            assert proc.poll() is None, f"QEMU exited: {proc.stderr.read().decode(errors='replace') if proc.stderr else ''}"
            assert time.monotonic() < deadline, f"no {SSH_READY} within 180 s: {log.read_text(errors='replace')}"
            time.sleep(0.2)
        console = log.read_text(errors="replace")
        assert "qabi-init:" not in console and "@@QABI-SSH-ERROR" not in console, console

        # a client that pins another host key is refused before it authenticates
        stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
        with _pinned_client(port, openssh_public_line(stranger)) as wrong, pytest.raises(paramiko.BadHostKeyException):
            _connect(wrong, port, image.client_key)

        with _pinned_client(port, image.host_key) as client:
            _connect(client, port, image.client_key)
            status, cmdline = _run(client, "cat /proc/cmdline")
            assert status == 0 and cmdline.decode().strip() == image.cmdline_for("ssh")
            status, modules = _run(client, "cat /proc/modules")
            assert status == 0 and {"e1000e", "cpuid"} <= {line.split()[0] for line in modules.decode().splitlines()}

            payload = os.urandom(100_000) + b"qabi"
            sftp = client.open_sftp()
            with sftp.open("upload.bin", "wb") as handle:
                handle.write(payload)
            assert sftp.stat("upload.bin").st_size == len(payload)
            sftp.get("upload.bin", str(tmp_path / "back.bin"))
            assert sftp.normalize(".") == "/root"
            channel = sftp.get_channel()          # end sftp-server and wait for it (see _run)
            assert channel is not None
            channel.shutdown_write()
            assert channel.status_event.wait(30) and channel.recv_exit_status() == 0
            sftp.close()
            assert (tmp_path / "back.bin").read_bytes() == payload
            status, digest = _run(client, "sha256sum /root/upload.bin")
            assert status == 0 and digest.split()[0].decode() == hashlib.sha256(payload).hexdigest()

            transport = client.get_transport()
            assert transport is not None
            transport.open_session(timeout=30).exec_command("poweroff -f")
        assert proc.wait(timeout=60) == 0
        assert "Pubkey auth succeeded for 'root'" in log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
