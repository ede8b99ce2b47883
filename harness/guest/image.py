"""The reference guest image: a pinned Debian cloud kernel and a busybox initramfs that runs the probe.

The recipe lives in guests/reference/ (packages.toml, init, probe.sh). The initramfs is a gzip'd
newc cpio written here, byte for byte deterministic: entries sorted by path, inode numbers in
that order, mtime 0, owner 0:0, gzip header mtime 0. The same recipe and the same packages always
give the same bytes, so the image hash (sha256 over the kernel bytes followed by the initramfs
bytes) identifies exactly what the guest ran.

Images are cached under the cache's images/<recipe key>/ (vmlinuz, initramfs.cpio.gz,
image.json). The key hashes the recipe files and this builder's version; a pinned
name=version names one .deb in Debian's archive, so a cache hit needs no network.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.cache import cache_dir, file_lock, staging_dir
from harness.errors import QabiError
from harness.tools import require

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "guests" / "reference"

# Bumped whenever the image layout written here changes: part of the cache key.
BUILDER_VERSION = 1

# The kernel command line the launcher passes with this image. Only options that change what
# the kernel prints or how fast it boots under TCG, never how it programs the hardware the probe
# reads (no pci=, acpi=, noapic, nosmp, mem=...):
#   nokaslr                  the decompressor skips relocating the kernel (~0.1 s)
#   edd=off                  no BIOS disk probing in the real-mode setup code
#   cryptomgr.notests        no crypto self-tests at boot (~0.7 s)
#   ipv6.disable=1           the IPv6 stack is not initialised
#   lpj=10000000             no delay-loop calibration on each secondary vCPU (~0.1 s per vCPU
#                            when the CPU model lacks constant_tsc); udelay() uses the TSC and is
#                            merely scaled if the host's TSC is not 2.5 GHz
#   initcall_blacklist=...   skip initcalls that only feed tracing, TCP congestion control, keyrings
#                            and module-signature certificates (~0.4 s together). cpuid.ko then
#                            loads unverified (taints the kernel; signatures are not enforced).
# mitigations=off was measured too: no difference under TCG (the alternatives patching it would
# avoid costs the same either way), so it is left out.
INITCALL_BLACKLIST = (
    "init_kprobe_trace", "init_blk_tracer", "init_graph_tracefs", "init_trace_printk_function_export",
    "cubictcp_register", "crypto_kdf108_init", "load_system_certificate_list", "init_encrypted",
    "slab_sysfs_init",
)
KERNEL_CMDLINE = " ".join([
    "console=ttyS0", "quiet", "loglevel=0", "panic=-1", "nokaslr", "edd=off", "cryptomgr.notests",
    "ipv6.disable=1", "lpj=10000000", f"initcall_blacklist={','.join(INITCALL_BLACKLIST)}",
])

# busybox applets /init and /probe.sh run (each becomes /bin/NAME -> busybox)
APPLETS = ("base64", "cat", "cp", "dd", "dmesg", "insmod", "mkdir", "mount", "od", "poweroff", "rm", "sh",
           "sha256sum", "stty", "wc")

IMAGE_JSON = "image.json"
KERNEL_NAME = "vmlinuz"
INITRAMFS_NAME = "initramfs.cpio.gz"
MAX_MODULES = 64


class ImageError(QabiError):
    """The reference image could not be built or its cached copy is damaged."""


# -- records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PackageRef:
    """One pinned package the image is built from."""

    role: str
    name: str
    version: str
    filename: str = ""
    sha256: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "name": self.name, "version": self.version,
                "filename": self.filename, "sha256": self.sha256}


@dataclass(frozen=True)
class ContentEntry:
    """One entry of the initramfs."""

    path: str            # absolute guest path
    kind: str            # "dir" | "file" | "symlink" | "chardev"
    mode: int            # permission bits
    size: int = 0
    sha256: str | None = None      # files
    target: str | None = None      # symlinks
    rdev: tuple[int, int] | None = None  # device nodes

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "kind": self.kind, "mode": f"{self.mode:04o}"}
        if self.kind == "file":
            data["size"] = self.size
            data["sha256"] = self.sha256
        if self.target is not None:
            data["target"] = self.target
        if self.rdev is not None:
            data["rdev"] = list(self.rdev)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContentEntry:
        rdev = data.get("rdev")
        return cls(path=str(data["path"]), kind=str(data["kind"]), mode=int(str(data["mode"]), 8),
                   size=int(data.get("size", 0)), sha256=data.get("sha256"), target=data.get("target"),
                   rdev=(int(rdev[0]), int(rdev[1])) if rdev else None)


@dataclass(frozen=True)
class ReferenceImage:
    """A built reference guest: boot it with `-kernel kernel -initrd initramfs -append cmdline`."""

    kernel: Path
    initramfs: Path
    sha256: str                      # sha256(kernel bytes + initramfs bytes)
    kernel_version: str              # uname -r of the guest kernel
    contents: tuple[ContentEntry, ...]
    packages: tuple[PackageRef, ...]
    modules: tuple[str, ...] = ()    # in load order
    cmdline: str = KERNEL_CMDLINE
    key: str = ""                    # cache key (hash of the recipe)
    initramfs_sha256: str = ""
    kernel_sha256: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "key": self.key,
            "kernel": str(self.kernel),
            "kernel_sha256": self.kernel_sha256,
            "kernel_size": self.kernel.stat().st_size if self.kernel.exists() else None,
            "initramfs": str(self.initramfs),
            "initramfs_sha256": self.initramfs_sha256,
            "initramfs_size": self.initramfs.stat().st_size if self.initramfs.exists() else None,
            "kernel_version": self.kernel_version,
            "cmdline": self.cmdline,
            "modules": list(self.modules),
            "packages": [p.as_dict() for p in self.packages],
            "contents": [c.as_dict() for c in self.contents],
        }


# -- the recipe ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    directory: Path
    suite: str
    packages: tuple[PackageRef, ...]
    modules: tuple[str, ...]
    files: dict[str, bytes]          # recipe file name -> bytes (packages.toml, init, probe.sh)

    @property
    def key(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"qabi-reference-image builder={BUILDER_VERSION}\n".encode())
        digest.update(("applets=" + ",".join(APPLETS) + "\n").encode())
        for name in sorted(self.files):
            data = self.files[name]
            digest.update(f"{name} {len(data)}\n".encode())
            digest.update(data)
        return digest.hexdigest()

    def package(self, role: str) -> PackageRef:
        for pkg in self.packages:
            if pkg.role == role:
                return pkg
        raise ImageError(f"{self.directory / 'packages.toml'}: no package with role '{role}'")


def load_recipe(directory: Path | None = None) -> Recipe:
    directory = directory or REFERENCE_DIR
    files: dict[str, bytes] = {}
    for name in ("packages.toml", "init", "probe.sh"):
        path = directory / name
        try:
            files[name] = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"reference guest recipe file {path} cannot be read: {exc.strerror}") from None
    try:
        data = tomllib.loads(files["packages.toml"].decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"{directory / 'packages.toml'}: malformed TOML: {exc}") from None
    suite = data.get("suite")
    if not isinstance(suite, str) or not suite:
        raise ImageError(f"{directory / 'packages.toml'}: 'suite' must be a Debian suite name")
    packages = []
    for entry in data.get("package", []):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("role", "name",
                                                                                           "version")):
            raise ImageError(f"{directory / 'packages.toml'}: every [[package]] needs role, name and version")
        packages.append(PackageRef(entry["role"], entry["name"], entry["version"]))
    roles = [p.role for p in packages]
    for role in ("kernel", "busybox"):
        if roles.count(role) != 1:
            raise ImageError(f"{directory / 'packages.toml'}: exactly one package must have role '{role}'")
    modules = data.get("modules", {}).get("load", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ImageError(f"{directory / 'packages.toml'}: [modules] load must be a list of module names")
    return Recipe(directory, suite, tuple(packages), tuple(modules), files)


# -- kernel modules -----------------------------------------------------------------------------
def modinfo(data: bytes, name: str) -> dict[str, list[str]]:
    """The .modinfo section of an ELF64 little-endian kernel module, as key -> values."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ImageError(f"kernel module {name} is not an ELF64 little-endian object")
    try:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        if shentsize < 64 or shnum == 0 or shstrndx >= shnum:
            raise ValueError("bad section header table")

        def section(index: int) -> tuple[int, int, int]:
            base = shoff + index * shentsize
            name_off, = struct.unpack_from("<I", data, base)
            offset, size = struct.unpack_from("<QQ", data, base + 0x18)
            if offset + size > len(data):
                raise ValueError("section beyond end of file")
            return name_off, offset, size

        _, str_off, str_size = section(shstrndx)
        for index in range(shnum):
            name_off, offset, size = section(index)
            if name_off >= str_size:
                continue
            end = data.index(b"\0", str_off + name_off)
            if data[str_off + name_off:end] == b".modinfo":
                info: dict[str, list[str]] = {}
                for item in data[offset:offset + size].split(b"\0"):
                    key, sep, value = item.partition(b"=")
                    if sep:
                        info.setdefault(key.decode(errors="replace"), []).append(
                            value.decode(errors="replace"))
                return info
    except (struct.error, ValueError) as exc:
        raise ImageError(f"kernel module {name}: malformed ELF: {exc}") from None
    raise ImageError(f"kernel module {name} has no .modinfo section")


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


# -- cpio ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    path: str                  # without leading slash
    mode: int                  # full st_mode
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _cpio_header(ino: int, mode: int, nlink: int, size: int, rdev: tuple[int, int], namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return b"070701" + b"".join(b"%08X" % value for value in fields)


def write_cpio(entries: list[_Entry]) -> bytes:
    """A newc archive of `entries`: sorted by path, inodes 1.. in that order, mtime 0, owner 0:0."""
    out = bytearray()
    ordered = sorted(entries, key=lambda e: e.path.split("/"))
    seen: set[str] = set()
    for ino, entry in enumerate(ordered, start=1):
        if entry.path in seen or not entry.path or entry.path.startswith("/"):
            raise ImageError(f"bad or duplicate initramfs path {entry.path!r}")
        seen.add(entry.path)
        parent = entry.path.rpartition("/")[0]
        if parent and parent not in seen:
            raise ImageError(f"initramfs entry {entry.path} has no parent directory entry")
        name = entry.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        out += _cpio_header(ino, entry.mode, nlink, len(entry.data), entry.rdev, len(name))
        out += name + _pad4(110 + len(name))
        out += entry.data + _pad4(len(entry.data))
    name = b"TRAILER!!!\0"
    out += _cpio_header(0, 0, 1, 0, (0, 0), len(name)) + name + _pad4(110 + len(name))
    return bytes(out)


def read_cpio(data: bytes) -> list[tuple[str, int, bytes]]:
    """(path, mode, data) of every entry of a newc archive (for tests and inspection)."""
    entries: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != b"070701":
            raise ImageError(f"not a newc cpio archive at offset {pos:#x}")
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        body = name_start + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append((name, mode, data[body:body + size]))
        pos = body + size + (-size % 4)


# -- building -----------------------------------------------------------------------------------
def _extract(deb: Path, dest: Path) -> None:
    done = subprocess.run([require("dpkg-deb"), "-x", str(deb), str(dest)], check=False, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ImageError(f"cannot unpack {deb.name}: {done.stderr.strip()}")


def _fetch(recipe: Recipe) -> tuple[list[PackageRef], dict[str, Path]]:
    from harness.qemu.archive import fetch_debs

    requests = [f"{p.name}={p.version}" for p in recipe.packages]
    files, paths = fetch_debs(recipe.suite, requests)
    by_name = {f.name: (f, path) for f, path in zip(files, paths, strict=True)}
    refs: list[PackageRef] = []
    debs: dict[str, Path] = {}
    for pkg in recipe.packages:
        if pkg.name not in by_name or by_name[pkg.name][0].version != pkg.version:
            raise ImageError(f"the archive did not give {pkg.name}={pkg.version} for suite {recipe.suite}")
        pf, path = by_name[pkg.name]
        refs.append(PackageRef(pkg.role, pkg.name, pkg.version, pf.filename, pf.sha256))
        debs[pkg.role] = path
    return refs, debs


def _assemble(recipe: Recipe, debs: dict[str, Path], work: Path) -> tuple[bytes, str, list[_Entry], list[str]]:
    """(kernel bytes, kernel version, initramfs entries, module load order)."""
    kroot, broot = work / "kernel", work / "busybox"
    _extract(debs["kernel"], kroot)
    _extract(debs["busybox"], broot)
    versions = sorted(p.name for p in (kroot / "lib" / "modules").iterdir() if p.is_dir()) \
        if (kroot / "lib" / "modules").is_dir() else []
    if len(versions) != 1:
        raise ImageError(f"kernel package {debs['kernel'].name}: expected one lib/modules/<version>, "
                         f"found {versions or 'none'}")
    kver = versions[0]
    vmlinuz = kroot / "boot" / f"vmlinuz-{kver}"
    if not vmlinuz.is_file():
        raise ImageError(f"kernel package {debs['kernel'].name} has no boot/vmlinuz-{kver}")
    busybox = broot / "bin" / "busybox"
    if not busybox.is_file():
        raise ImageError(f"busybox package {debs['busybox'].name} has no bin/busybox")
    modules = resolve_modules(kroot / "lib" / "modules" / kver, recipe.modules)

    d, f, exe = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    entries = [
        _Entry("bin", d), _Entry("dev", d), _Entry("etc", d), _Entry("etc/qabi", d), _Entry("lib", d),
        _Entry("lib/modules", d), _Entry("proc", d), _Entry("sys", d), _Entry("tmp", stat.S_IFDIR | 0o1777),
        _Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        _Entry("bin/busybox", exe, busybox.read_bytes()),
        _Entry("init", exe, recipe.files["init"]),
        _Entry("probe.sh", exe, recipe.files["probe.sh"]),
        _Entry("etc/qabi/modules", f, "".join(f"{name}\n" for name, _ in modules).encode()),
    ]
    entries += [_Entry(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox") for applet in APPLETS]
    entries += [_Entry(f"lib/modules/{name}.ko", f, data) for name, data in modules]
    return vmlinuz.read_bytes(), kver, entries, [name for name, _ in modules]


def _contents(entries: list[_Entry]) -> list[ContentEntry]:
    out = []
    for e in sorted(entries, key=lambda e: e.path.split("/")):
        perm = stat.S_IMODE(e.mode)
        path = "/" + e.path
        if stat.S_ISDIR(e.mode):
            out.append(ContentEntry(path, "dir", perm))
        elif stat.S_ISLNK(e.mode):
            out.append(ContentEntry(path, "symlink", perm, target=e.data.decode()))
        elif stat.S_ISCHR(e.mode):
            out.append(ContentEntry(path, "chardev", perm, rdev=e.rdev))
        else:
            out.append(ContentEntry(path, "file", perm, len(e.data), hashlib.sha256(e.data).hexdigest()))
    return out


def image_hash(kernel: bytes, initramfs: bytes) -> str:
    return hashlib.sha256(kernel + initramfs).hexdigest()


def _build_into(recipe: Recipe, dest: Path) -> None:
    refs, debs = _fetch(recipe)
    with tempfile.TemporaryDirectory(prefix="qabi-image-") as tmp:
        kernel, kver, entries, modules = _assemble(recipe, debs, Path(tmp))
    initramfs = gzip.compress(write_cpio(entries), compresslevel=9, mtime=0)
    (dest / KERNEL_NAME).write_bytes(kernel)
    (dest / INITRAMFS_NAME).write_bytes(initramfs)
    meta = {
        "builder": BUILDER_VERSION,
        "key": recipe.key,
        "sha256": image_hash(kernel, initramfs),
        "kernel_sha256": hashlib.sha256(kernel).hexdigest(),
        "initramfs_sha256": hashlib.sha256(initramfs).hexdigest(),
        "kernel_version": kver,
        "suite": recipe.suite,
        "modules": modules,
        "packages": [p.as_dict() for p in refs],
        "contents": [c.as_dict() for c in _contents(entries)],
    }
    (dest / IMAGE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _load(directory: Path, verify: bool = True) -> ReferenceImage:
    try:
        meta = json.loads((directory / IMAGE_JSON).read_text())
        kernel, initramfs = directory / KERNEL_NAME, directory / INITRAMFS_NAME
        if verify:
            digest = image_hash(kernel.read_bytes(), initramfs.read_bytes())
            if digest != meta["sha256"]:
                raise ImageError(f"cached reference image {directory} is damaged: sha256 {digest}, "
                                 f"recorded {meta['sha256']}")
        return ReferenceImage(
            kernel=kernel, initramfs=initramfs, sha256=meta["sha256"], kernel_version=meta["kernel_version"],
            contents=tuple(ContentEntry.from_dict(c) for c in meta["contents"]),
            packages=tuple(PackageRef(**p) for p in meta["packages"]),
            modules=tuple(meta["modules"]), cmdline=KERNEL_CMDLINE, key=meta["key"],
            initramfs_sha256=meta["initramfs_sha256"], kernel_sha256=meta["kernel_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"cached reference image {directory} is unreadable: {exc}") from None


def build_reference_image(recipe_dir: Path | None = None) -> ReferenceImage:
    """Build (or take from the cache) the reference guest image described by `recipe_dir`."""
    recipe = load_recipe(recipe_dir)
    images = cache_dir("images")
    final = images / recipe.key
    with file_lock(images / f"{recipe.key}.lock"):
        if (final / IMAGE_JSON).is_file():
            try:
                return _load(final)
            except ImageError:
                shutil.rmtree(final, ignore_errors=True)   # damaged: rebuild below
        elif final.exists():
            shutil.rmtree(final, ignore_errors=True)       # left over without image.json
        with staging_dir(final) as tmp:
            os.chmod(tmp, 0o755)
            _build_into(recipe, tmp)
        return _load(final)
