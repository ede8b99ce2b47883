"""The reference guest image: a pinned Debian kernel and a busybox initramfs that runs the probe.

The recipe lives in guests/reference/ (packages.toml, init, probe.sh). The kernel is Debian's
generic flavour (linux-image-6.1.0-50-amd64), whose NIC drivers (virtio-net, e1000, e1000e,
8139cp) /init loads in both modes; the cloud flavour used before has no e1000/e1000e/rtl8139
drivers. Measured under TCG (debian:bookworm QEMU 7.2, pc-q35-7.2, serial capture wall time,
median of 5, on a 2-core host shared with other work, so +-1 s): minimal 3.7 s with the cloud
kernel -> 7.2 s with the generic one -> 8.4 s with the NIC drivers loaded (this image); windows
5.6 -> 8.4 -> 10.1 s; linux-virtio 5.2 -> 8.8 -> 9.5 s. The kernel change costs ~3.5 s before the
guest's clock even starts: the generic vmlinuz is XZ-compressed (the cloud one LZ4) and its
decompressor is slow under TCG; its boot to /init is only ~0.3 s slower. Loading the modules and
bringing eth0 up add 0.4-0.6 s of guest time. Booting the uncompressed vmlinux instead (PVH
entry) would avoid the decompression but changes the boot path and the memory map the guest
sees, so it is not done.

Two modes, chosen by the kernel command line (ReferenceImage.cmdline_for):
  serial  /init runs /probe.sh on ttyS0 and powers off (the default);
  ssh     "qabi.transport=ssh": /init starts dropbear (pinned host key, public-key logins only, no
          forwarding), prints @@QABI-SSH-READY on ttyS0 once it listens on port 22 and waits; the
          host uploads the probe by SFTP, runs it and powers the guest off. Bookworm's dropbear
          (2022.83) closes a new channel at once when a session's child exits while the channel
          is being opened (upstream issues #173/#321, fixed in 2024.86), so a client must wait
          for each channel's exit status (for SFTP: send EOF, then wait) before opening the next.
Both modes load the same modules in the same order and configure eth0 the same way before the
probe runs, so they read the same hardware state.

The initramfs is two concatenated segments (Linux unpacks them in turn):
  1. a gzip'd newc cpio written here, byte for byte deterministic: entries sorted by path, inode
     numbers in that order, mtime 0, owner 0:0, gzip header mtime 0 - kernel modules, busybox,
     dropbear, sftp-server and their shared libraries (resolved from the ELF headers against the
     pinned library packages), /etc, /init, /probe.sh;
  2. zero padding to a 4-byte boundary and a small uncompressed newc cpio with the per-build
     secrets: dropbear's ed25519 host key (generated for each build) and root's authorized_keys
     (the public half of the cache's client key, made once by client_key()).
The image hash (ReferenceImage.sha256) is sha256 over the kernel bytes followed by segment 1, so
the same recipe and the same packages give the same hash on every machine, although each build
has its own host key; initramfs_sha256 covers the whole file.

Images are cached under the cache's images/<key>/ (vmlinuz, initramfs.cpio.gz, image.json). The
key hashes the recipe files, this builder's version and the client public key (a new client key
means a new image); a pinned name=version names one .deb in Debian's archive, so a cache hit
needs no network.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import shutil
import stat
import struct
import subprocess
import tempfile
import tomllib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cache import cache_dir, file_lock, staging_dir
from harness.errors import QabiError
from harness.tools import require

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "guests" / "reference"

# Bumped whenever the image layout written here changes: part of the cache key.
BUILDER_VERSION = 2

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
#                            and module-signature certificates (~0.4 s together). The modules then
#                            load unverified (taints the kernel; signatures are not enforced).
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

# What the probe and /init need built into the kernel (=y), checked against the kernel package's
# boot/config-<version> at build time: the initramfs, /proc, sysfs and devtmpfs, the serial
# console, ACPI tables and DMI in sysfs, the firmware memory map, PCI sysfs, IPv4 (ssh mode) and
# loadable modules. (The drivers /init loads are found as modules by resolve_modules.)
REQUIRED_KERNEL_CONFIG = (
    "CONFIG_BLK_DEV_INITRD", "CONFIG_RD_GZIP", "CONFIG_PROC_FS", "CONFIG_SYSFS", "CONFIG_DEVTMPFS",
    "CONFIG_SERIAL_8250", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_ACPI", "CONFIG_DMI", "CONFIG_DMI_SYSFS",
    "CONFIG_FIRMWARE_MEMMAP", "CONFIG_PCI", "CONFIG_INET", "CONFIG_MODULES",
)

# How the host reaches the probe. /init reads the word from /proc/cmdline; serial is the default.
TRANSPORTS = ("serial", "ssh")
SSH_CMDLINE_WORD = "qabi.transport=ssh"
SSH_READY = "@@QABI-SSH-READY"        # printed on ttyS0 once dropbear listens on port 22
SSH_ERROR = "@@QABI-SSH-ERROR"        # printed on ttyS0 (then poweroff) if dropbear fails

# busybox applets /init and /probe.sh run (each becomes /bin/NAME -> busybox)
APPLETS = ("base64", "cat", "cp", "dd", "dmesg", "insmod", "ip", "mkdir", "mount", "od", "poweroff", "rm",
           "sh", "sha256sum", "sleep", "stty", "wc")

# Where things go in the guest.
DROPBEAR_PATH = "/usr/sbin/dropbear"
SFTP_SERVER_PATH = "/usr/lib/openssh/sftp-server"   # where openssh-sftp-server installs it
# Debian's dropbear runs "sftp" requests as this program (SFTPSERVER_PATH, compiled in; the
# build checks that the pinned binary names it). openssh-sftp-server ships it as a symlink.
SFTPSERVER_PATH = "/usr/lib/sftp-server"
HOST_KEY_PATH = "/etc/dropbear/dropbear_ed25519_host_key"
AUTHORIZED_KEYS_PATH = "/root/.ssh/authorized_keys"
# The directories glibc's loader searches on Debian x86-64 when there is no ld.so.cache.
LIBRARY_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib")

# Files dropbear and glibc read: root logs in with a key only ("*" matches no password), its
# shell must be listed in /etc/shells, and name lookups use the files (glibc has them built in).
ETC_FILES = {
    "etc/passwd": b"root:*:0:0:root:/root:/bin/sh\n",
    "etc/group": b"root:x:0:\n",
    "etc/shells": b"/bin/sh\n",
    "etc/nsswitch.conf": b"passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
}

# Package roles in packages.toml: exactly one of each, except "library" (any number).
SINGLE_ROLES = ("kernel", "busybox", "dropbear", "sftp-server")
LIBRARY_ROLE = "library"

IMAGE_JSON = "image.json"
KERNEL_NAME = "vmlinuz"
INITRAMFS_NAME = "initramfs.cpio.gz"
CLIENT_KEY_NAME = "id_ed25519"
MAX_MODULES = 64
MAX_LIBRARIES = 64
MAX_SYMLINKS = 40


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
    secret: bool = False           # in the per-build segment (host key, authorized_keys)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "kind": self.kind, "mode": f"{self.mode:04o}"}
        if self.kind == "file":
            data["size"] = self.size
            data["sha256"] = self.sha256
        if self.target is not None:
            data["target"] = self.target
        if self.rdev is not None:
            data["rdev"] = list(self.rdev)
        if self.secret:
            data["secret"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContentEntry:
        rdev = data.get("rdev")
        return cls(path=str(data["path"]), kind=str(data["kind"]), mode=int(str(data["mode"]), 8),
                   size=int(data.get("size", 0)), sha256=data.get("sha256"), target=data.get("target"),
                   rdev=(int(rdev[0]), int(rdev[1])) if rdev else None, secret=bool(data.get("secret", False)))


@dataclass(frozen=True)
class ReferenceImage:
    """A built reference guest: boot it with `-kernel kernel -initrd initramfs -append cmdline_for(t)`."""

    kernel: Path
    initramfs: Path
    sha256: str                      # sha256(kernel bytes + deterministic initramfs segment)
    kernel_version: str              # uname -r of the guest kernel
    contents: tuple[ContentEntry, ...]
    packages: tuple[PackageRef, ...]
    modules: tuple[str, ...] = ()    # in load order, dependencies included
    cmdline: str = KERNEL_CMDLINE    # serial mode
    key: str = ""                    # cache key (hash of the recipe and the client public key)
    initramfs_sha256: str = ""       # the whole initramfs file
    kernel_sha256: str = ""
    host_key: str = ""               # dropbear's host key, OpenSSH public line "ssh-ed25519 AAAA..."
    client_key: Path = field(default_factory=Path)   # private key (OpenSSH format) root logs in with
    nic_modules: tuple[str, ...] = ()                # the NIC drivers packages.toml asks for
    initramfs_base_sha256: str = ""  # the deterministic segment (the first initramfs_base_size bytes)
    initramfs_base_size: int = 0

    def cmdline_for(self, transport: str) -> str:
        """The kernel command line for `transport`: "serial" or "ssh"."""
        if transport == "serial":
            return self.cmdline
        if transport == "ssh":
            return f"{self.cmdline} {SSH_CMDLINE_WORD}"
        raise ImageError(f"unknown transport '{transport}' (the reference guest knows {' and '.join(TRANSPORTS)})")

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
            "initramfs_base_sha256": self.initramfs_base_sha256,
            "initramfs_base_size": self.initramfs_base_size,
            "kernel_version": self.kernel_version,
            "cmdline": self.cmdline,
            "cmdlines": {t: self.cmdline_for(t) for t in TRANSPORTS},
            "host_key": self.host_key,
            "client_key": str(self.client_key),
            "modules": list(self.modules),
            "nic_modules": list(self.nic_modules),
            "packages": [p.as_dict() for p in self.packages],
            "contents": [c.as_dict() for c in self.contents],
        }


# -- the recipe ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    directory: Path
    suite: str
    packages: tuple[PackageRef, ...]
    modules: tuple[str, ...]         # every module /init loads (nic_modules first), before dependencies
    files: dict[str, bytes]          # recipe file name -> bytes (packages.toml, init, probe.sh)
    nic_modules: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"qabi-reference-image builder={BUILDER_VERSION}\n".encode())
        digest.update(("applets=" + ",".join(APPLETS) + "\n").encode())
        for path, data in sorted(ETC_FILES.items()):
            digest.update(f"{path} {len(data)}\n".encode() + data)
        for name in sorted(self.files):
            data = self.files[name]
            digest.update(f"{name} {len(data)}\n".encode())
            digest.update(data)
        return digest.hexdigest()

    def image_key(self, client_public: str) -> str:
        """The cache key of the image built from this recipe for the client key `client_public`."""
        return hashlib.sha256(f"{self.key}\nclient {client_public.strip()}\n".encode()).hexdigest()

    def package(self, role: str) -> PackageRef:
        for pkg in self.packages:
            if pkg.role == role:
                return pkg
        raise ImageError(f"{self.directory / 'packages.toml'}: no package with role '{role}'")


def _module_list(data: dict[str, Any], key: str, where: Path) -> tuple[str, ...]:
    modules = data.get("modules", {}).get(key, [])
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        raise ImageError(f"{where}: [modules] {key} must be a list of module names")
    return tuple(modules)


def load_recipe(directory: Path | None = None) -> Recipe:
    directory = directory or REFERENCE_DIR
    files: dict[str, bytes] = {}
    for name in ("packages.toml", "init", "probe.sh"):
        path = directory / name
        try:
            files[name] = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"reference guest recipe file {path} cannot be read: {exc.strerror}") from None
    toml = directory / "packages.toml"
    try:
        data = tomllib.loads(files["packages.toml"].decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ImageError(f"{toml}: malformed TOML: {exc}") from None
    suite = data.get("suite")
    if not isinstance(suite, str) or not suite:
        raise ImageError(f"{toml}: 'suite' must be a Debian suite name")
    packages = []
    for entry in data.get("package", []):
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("role", "name",
                                                                                           "version")):
            raise ImageError(f"{toml}: every [[package]] needs role, name and version")
        if entry["role"] not in (*SINGLE_ROLES, LIBRARY_ROLE):
            raise ImageError(f"{toml}: package {entry['name']} has unknown role '{entry['role']}' (roles: "
                             f"{', '.join((*SINGLE_ROLES, LIBRARY_ROLE))})")
        packages.append(PackageRef(entry["role"], entry["name"], entry["version"]))
    roles = [p.role for p in packages]
    for role in SINGLE_ROLES:
        if roles.count(role) != 1:
            raise ImageError(f"{toml}: exactly one package must have role '{role}'")
    names = [p.name for p in packages]
    for name in names:
        if names.count(name) > 1:
            raise ImageError(f"{toml}: package {name} is pinned twice")
    nic = _module_list(data, "nic", toml)
    load = _module_list(data, "load", toml)
    return Recipe(directory, suite, tuple(packages), nic + load, files, nic)


# -- keys ---------------------------------------------------------------------------------------
def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def openssh_public_line(public: bytes) -> str:
    """The OpenSSH public key line ("ssh-ed25519 AAAA...") of a raw 32-byte ed25519 public key."""
    blob = _ssh_string(b"ssh-ed25519") + _ssh_string(public)
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def dropbear_host_key() -> tuple[bytes, str]:
    """A new ed25519 host key: (dropbear's key file bytes, OpenSSH public line).

    Dropbear's format (signkey.c/ed25519.c, buf_put_ed25519_priv_key): string "ssh-ed25519",
    uint32 64, then the 32-byte private seed followed by the 32-byte public key.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    seed, public = key.private_bytes_raw(), key.public_key().public_bytes_raw()
    return _ssh_string(b"ssh-ed25519") + struct.pack(">I", 64) + seed + public, openssh_public_line(public)


def client_public_key(path: Path) -> str:
    """The OpenSSH public line of the ed25519 private key file at `path`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ImageError(f"{path} is not a readable unencrypted OpenSSH private key ({exc}); delete it and "
                         "qabi makes a new one") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ImageError(f"{path} is not an ed25519 key; delete it and qabi makes a new one")
    return openssh_public_line(key.public_key().public_bytes_raw())


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def client_key() -> Path:
    """The client's login key (ed25519, OpenSSH format, 0600, with a .pub), made once in the cache."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = cache_dir("ssh")
    os.chmod(directory, 0o700)
    path = directory / CLIENT_KEY_NAME
    pub = directory / f"{CLIENT_KEY_NAME}.pub"
    with file_lock(directory / f"{CLIENT_KEY_NAME}.lock"):
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()), 0o600)
        line = f"{client_public_key(path)} qabi-client\n"
        if not pub.is_file() or pub.read_text(errors="replace") != line:
            _write_private(pub, line.encode(), 0o644)
    return path


# -- the kernel ---------------------------------------------------------------------------------
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


# -- shared libraries ---------------------------------------------------------------------------
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ = 0, 1, 5, 10
EM_X86_64 = 62


@dataclass(frozen=True)
class ElfDynamic:
    """What the dynamic loader needs to run an ELF file."""

    interpreter: str | None          # PT_INTERP (executables), e.g. /lib64/ld-linux-x86-64.so.2
    needed: tuple[str, ...]          # DT_NEEDED, in order


def elf_dynamic(data: bytes, name: str) -> ElfDynamic:
    """PT_INTERP and DT_NEEDED of an x86-64 ELF64 little-endian executable or shared object."""
    if data[:4] != b"\x7fELF" or len(data) < 64 or data[4] != 2 or data[5] != 1:
        raise ImageError(f"{name} is not an ELF64 little-endian file")
    try:
        e_type, e_machine = struct.unpack_from("<HH", data, 0x10)
        if e_machine != EM_X86_64:
            raise ValueError(f"machine {e_machine}, not x86-64")
        if e_type not in (2, 3):
            raise ValueError(f"type {e_type}, not an executable or shared object")
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        if phentsize < 56 or phoff + phnum * phentsize > len(data):
            raise ValueError("bad program header table")
        loads: list[tuple[int, int, int]] = []
        dynamic: tuple[int, int] | None = None
        interpreter: str | None = None
        for index in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + index * phentsize)
            if p_offset + p_filesz > len(data):
                raise ValueError(f"segment {index} beyond end of file")
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
            elif p_type == PT_INTERP:
                interpreter = data[p_offset:p_offset + p_filesz].split(b"\0")[0].decode()
        if dynamic is None:
            return ElfDynamic(interpreter, ())          # statically linked
        tags: list[tuple[int, int]] = []
        for pos in range(dynamic[0], dynamic[0] + dynamic[1] - 15, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == DT_NULL:
                break
            tags.append((tag, value))
        strtab = [v for t, v in tags if t == DT_STRTAB]
        strsz = [v for t, v in tags if t == DT_STRSZ]
        if len(strtab) != 1 or len(strsz) != 1:
            raise ValueError("dynamic section without one DT_STRTAB and one DT_STRSZ")
        # DT_STRTAB is an address: find the file offset of the PT_LOAD segment holding it
        for vaddr, offset, filesz in loads:
            if vaddr <= strtab[0] and strtab[0] + strsz[0] <= vaddr + filesz:
                stroff = offset + strtab[0] - vaddr
                break
        else:
            raise ValueError("DT_STRTAB is in no loaded segment")
        needed = []
        for tag, value in tags:
            if tag == DT_NEEDED:
                if value >= strsz[0]:
                    raise ValueError("DT_NEEDED beyond the string table")
                end = data.index(b"\0", stroff + value, stroff + strsz[0])
                needed.append(data[stroff + value:end].decode())
        return ElfDynamic(interpreter, tuple(needed))
    except (struct.error, ValueError) as exc:
        raise ImageError(f"{name}: malformed ELF: {exc}") from None


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


def resolve_libraries(root: Path, binaries: Sequence[tuple[str, bytes]]) -> list[_Entry]:
    """The dynamic loader and every shared library `binaries` ((guest path, bytes) pairs) need,
    recursively, taken from the tree `root` (the pinned library packages unpacked together): the
    files at their package paths and the symlinks that lead to them, sorted by path."""
    entries: dict[str, _Entry] = {}
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
                entries[link] = _Entry(link.lstrip("/"), stat.S_IFLNK | 0o777, target.encode())
            if final not in loaded:
                loaded.add(final)
                host = root / final.lstrip("/")
                body = host.read_bytes()
                entries[final] = _Entry(final.lstrip("/"), stat.S_IFREG | _file_mode(host), body)
                queue.append((final, body))
                if len(loaded) > MAX_LIBRARIES:
                    raise ImageError(f"more than {MAX_LIBRARIES} shared libraries needed by "
                                     f"{', '.join(path for path, _ in binaries)}")
    return sorted(entries.values(), key=lambda e: e.path.split("/"))


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


def write_cpio(entries: list[_Entry], existing: Iterable[str] = (), first_ino: int = 1) -> bytes:
    """A newc archive of `entries`: sorted by path, inodes first_ino.. in that order, mtime 0, owner 0:0.

    `existing`: directories an earlier archive of the same initramfs already made (parents of
    entries that this archive does not contain itself).
    """
    out = bytearray()
    ordered = sorted(entries, key=lambda e: e.path.split("/"))
    seen: set[str] = set()
    made = set(existing)
    for ino, entry in enumerate(ordered, start=first_ino):
        if entry.path in seen or entry.path in made or not entry.path or entry.path.startswith("/"):
            raise ImageError(f"bad or duplicate initramfs path {entry.path!r}")
        seen.add(entry.path)
        parent = entry.path.rpartition("/")[0]
        if parent and parent not in seen and parent not in made:
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


def split_initramfs(data: bytes, base_size: int) -> tuple[bytes, bytes]:
    """(the deterministic cpio, the per-build cpio) of an initramfs whose first segment (gzip'd)
    is `base_size` bytes long; the padding between them is dropped."""
    if data[:2] != b"\x1f\x8b" or not 0 < base_size <= len(data):
        raise ImageError("not a qabi initramfs (gzip'd cpio, then a cpio of per-build files)")
    try:
        base = gzip.decompress(data[:base_size])
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageError(f"initramfs: the deterministic segment is not valid gzip: {exc}") from None
    return base, data[base_size:].lstrip(b"\0")


def _with_parents(entries: list[_Entry]) -> list[_Entry]:
    """`entries` and a 0755 directory entry for every ancestor directory they lack."""
    have = {e.path for e in entries}
    out = list(entries)
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        while parent and parent not in have:
            have.add(parent)
            out.append(_Entry(parent, stat.S_IFDIR | 0o755))
            parent = parent.rpartition("/")[0]
    return out


# -- building -----------------------------------------------------------------------------------
def _extract(deb: Path, dest: Path) -> None:
    done = subprocess.run([require("dpkg-deb"), "-x", str(deb), str(dest)], check=False, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ImageError(f"cannot unpack {deb.name}: {done.stderr.strip()}")


def _fetch(recipe: Recipe) -> tuple[list[PackageRef], dict[str, list[Path]]]:
    """The verified pinned packages: their records and, by role, their .deb files."""
    from harness.qemu.archive import fetch_debs

    requests = [f"{p.name}={p.version}" for p in recipe.packages]
    files, paths = fetch_debs(recipe.suite, requests)
    by_name = {f.name: (f, path) for f, path in zip(files, paths, strict=True)}
    refs: list[PackageRef] = []
    debs: dict[str, list[Path]] = {}
    for pkg in recipe.packages:
        if pkg.name not in by_name or by_name[pkg.name][0].version != pkg.version:
            raise ImageError(f"the archive did not give {pkg.name}={pkg.version} for suite {recipe.suite}")
        pf, path = by_name[pkg.name]
        refs.append(PackageRef(pkg.role, pkg.name, pkg.version, pf.filename, pf.sha256))
        debs.setdefault(pkg.role, []).append(path)
    return refs, debs


@dataclass(frozen=True)
class _Assembled:
    kernel: bytes
    kernel_version: str
    entries: list[_Entry]            # the deterministic segment
    modules: list[str]               # load order


def _single_file(root: Path, guest_path: str, deb: Path) -> bytes:
    host = root / guest_path.lstrip("/")
    if host.is_symlink() or not host.is_file():
        raise ImageError(f"package {deb.name} has no file {guest_path}")
    return host.read_bytes()


def _assemble(recipe: Recipe, debs: dict[str, list[Path]], work: Path) -> _Assembled:
    roots = {role: work / role for role in SINGLE_ROLES}
    for role, root in roots.items():
        _extract(debs[role][0], root)
    libroot = work / "libraries"
    libroot.mkdir()
    for deb in debs.get(LIBRARY_ROLE, []):
        _extract(deb, libroot)

    kroot, kdeb = roots["kernel"], debs["kernel"][0]
    versions = sorted(p.name for p in (kroot / "lib" / "modules").iterdir() if p.is_dir()) \
        if (kroot / "lib" / "modules").is_dir() else []
    if len(versions) != 1:
        raise ImageError(f"kernel package {kdeb.name}: expected one lib/modules/<version>, found {versions or 'none'}")
    kver = versions[0]
    vmlinuz = kroot / "boot" / f"vmlinuz-{kver}"
    if not vmlinuz.is_file():
        raise ImageError(f"kernel package {kdeb.name} has no boot/vmlinuz-{kver}")
    config = kroot / "boot" / f"config-{kver}"
    if not config.is_file():
        raise ImageError(f"kernel package {kdeb.name} has no boot/config-{kver}")
    check_kernel_config(config.read_text(errors="replace"), f"kernel package {kdeb.name}")
    busybox = _single_file(roots["busybox"], "/bin/busybox", debs["busybox"][0])
    modules = resolve_modules(kroot / "lib" / "modules" / kver, recipe.modules)

    dropbear = _single_file(roots["dropbear"], DROPBEAR_PATH, debs["dropbear"][0])
    if b"\0" + SFTPSERVER_PATH.encode() + b"\0" not in dropbear:
        raise ImageError(f"{debs['dropbear'][0].name}: {DROPBEAR_PATH} does not name {SFTPSERVER_PATH} "
                         "(its compiled-in SFTPSERVER_PATH changed; update SFTPSERVER_PATH in image.py)")
    sftp = _single_file(roots["sftp-server"], SFTP_SERVER_PATH, debs["sftp-server"][0])
    libraries = resolve_libraries(libroot, [(DROPBEAR_PATH, dropbear), (SFTP_SERVER_PATH, sftp)])

    d, f, exe = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    private = stat.S_IFDIR | 0o700
    entries = [
        _Entry("bin", d), _Entry("dev", d), _Entry("etc", d), _Entry("etc/qabi", d), _Entry("lib", d),
        _Entry("lib/modules", d), _Entry("proc", d), _Entry("sys", d), _Entry("tmp", stat.S_IFDIR | 0o1777),
        _Entry("root", private), _Entry("root/.ssh", private), _Entry("etc/dropbear", d),
        _Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        _Entry("bin/busybox", exe, busybox),
        _Entry("init", exe, recipe.files["init"]),
        _Entry("probe.sh", exe, recipe.files["probe.sh"]),
        _Entry("etc/qabi/modules", f, "".join(f"{name}\n" for name, _ in modules).encode()),
        _Entry(DROPBEAR_PATH.lstrip("/"), exe, dropbear),
        _Entry(SFTP_SERVER_PATH.lstrip("/"), exe, sftp),
        _Entry(SFTPSERVER_PATH.lstrip("/"), stat.S_IFLNK | 0o777,
               posixpath.relpath(SFTP_SERVER_PATH, posixpath.dirname(SFTPSERVER_PATH)).encode()),
    ]
    entries += [_Entry(path, f, data) for path, data in ETC_FILES.items()]
    entries += [_Entry(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox") for applet in APPLETS]
    entries += [_Entry(f"lib/modules/{name}.ko", f, data) for name, data in modules]
    known = {e.path for e in entries}
    for lib in libraries:
        if lib.path in known:
            raise ImageError(f"shared library path /{lib.path} collides with another initramfs entry")
        entries.append(lib)
    return _Assembled(vmlinuz.read_bytes(), kver, _with_parents(entries), [name for name, _ in modules])


def _secret_entries(host_key: bytes, client_public: str) -> list[_Entry]:
    secret = stat.S_IFREG | 0o600
    return [_Entry(HOST_KEY_PATH.lstrip("/"), secret, host_key),
            _Entry(AUTHORIZED_KEYS_PATH.lstrip("/"), secret, f"{client_public.strip()}\n".encode())]


def _contents(entries: list[_Entry], secret: bool = False) -> list[ContentEntry]:
    out = []
    for e in sorted(entries, key=lambda e: e.path.split("/")):
        perm = stat.S_IMODE(e.mode)
        path = "/" + e.path
        if stat.S_ISDIR(e.mode):
            out.append(ContentEntry(path, "dir", perm, secret=secret))
        elif stat.S_ISLNK(e.mode):
            out.append(ContentEntry(path, "symlink", perm, target=e.data.decode(), secret=secret))
        elif stat.S_ISCHR(e.mode):
            out.append(ContentEntry(path, "chardev", perm, rdev=e.rdev, secret=secret))
        else:
            out.append(ContentEntry(path, "file", perm, len(e.data), hashlib.sha256(e.data).hexdigest(), secret=secret))
    return out


def image_hash(kernel: bytes, initramfs_base: bytes) -> str:
    """The image's identity: sha256 over the kernel bytes and the deterministic initramfs segment."""
    return hashlib.sha256(kernel + initramfs_base).hexdigest()


def _build_into(recipe: Recipe, dest: Path, client_public: str | None = None) -> None:
    """Build the image into the directory `dest`, for the client key `client_public` (an OpenSSH
    public line; default: the cache's client key). Every call makes a new host key."""
    if client_public is None:
        client_public = client_public_key(client_key())
    refs, debs = _fetch(recipe)
    with tempfile.TemporaryDirectory(prefix="qabi-image-") as tmp:
        built = _assemble(recipe, debs, Path(tmp))
    base = gzip.compress(write_cpio(built.entries), compresslevel=9, mtime=0)
    host_key, host_public = dropbear_host_key()
    secrets = _secret_entries(host_key, client_public)
    # the second archive starts on a 4-byte boundary (the kernel skips the zero padding)
    initramfs = base + _pad4(len(base)) + write_cpio(secrets, existing={e.path for e in built.entries},
                                                     first_ino=len(built.entries) + 1)
    (dest / KERNEL_NAME).write_bytes(built.kernel)
    _write_private(dest / INITRAMFS_NAME, initramfs, 0o600)    # it holds the host's private key
    meta = {
        "builder": BUILDER_VERSION,
        "key": recipe.image_key(client_public),
        "recipe_key": recipe.key,
        "sha256": image_hash(built.kernel, base),
        "kernel_sha256": hashlib.sha256(built.kernel).hexdigest(),
        "initramfs_sha256": hashlib.sha256(initramfs).hexdigest(),
        "initramfs_base_sha256": hashlib.sha256(base).hexdigest(),
        "initramfs_base_size": len(base),
        "kernel_version": built.kernel_version,
        "suite": recipe.suite,
        "modules": built.modules,
        "nic_modules": list(recipe.nic_modules),
        "host_key": host_public,
        "client_public_key": client_public.strip(),
        "packages": [p.as_dict() for p in refs],
        "contents": [c.as_dict() for c in _contents(built.entries) + _contents(secrets, secret=True)],
    }
    (dest / IMAGE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _load(directory: Path, key_file: Path, verify: bool = True) -> ReferenceImage:
    try:
        meta = json.loads((directory / IMAGE_JSON).read_text())
        kernel, initramfs = directory / KERNEL_NAME, directory / INITRAMFS_NAME
        if verify:
            kbytes, ibytes = kernel.read_bytes(), initramfs.read_bytes()
            base = ibytes[:int(meta["initramfs_base_size"])]
            for what, digest, recorded in (
                    ("sha256", image_hash(kbytes, base), meta["sha256"]),
                    ("initramfs sha256", hashlib.sha256(ibytes).hexdigest(), meta["initramfs_sha256"])):
                if digest != recorded:
                    raise ImageError(f"cached reference image {directory} is damaged: {what} {digest}, "
                                     f"recorded {recorded}")
        return ReferenceImage(
            kernel=kernel, initramfs=initramfs, sha256=meta["sha256"], kernel_version=meta["kernel_version"],
            contents=tuple(ContentEntry.from_dict(c) for c in meta["contents"]),
            packages=tuple(PackageRef(**p) for p in meta["packages"]),
            modules=tuple(meta["modules"]), cmdline=KERNEL_CMDLINE, key=meta["key"],
            initramfs_sha256=meta["initramfs_sha256"], kernel_sha256=meta["kernel_sha256"],
            host_key=meta["host_key"], client_key=key_file, nic_modules=tuple(meta["nic_modules"]),
            initramfs_base_sha256=meta["initramfs_base_sha256"],
            initramfs_base_size=int(meta["initramfs_base_size"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageError(f"cached reference image {directory} is unreadable: {exc}") from None


def build_reference_image(recipe_dir: Path | None = None) -> ReferenceImage:
    """Build (or take from the cache) the reference guest image described by `recipe_dir`."""
    recipe = load_recipe(recipe_dir)
    key_file = client_key()
    client_public = client_public_key(key_file)
    key = recipe.image_key(client_public)
    images = cache_dir("images")
    final = images / key
    with file_lock(images / f"{key}.lock"):
        if (final / IMAGE_JSON).is_file():
            try:
                return _load(final, key_file)
            except ImageError:
                shutil.rmtree(final, ignore_errors=True)   # damaged: rebuild below
        elif final.exists():
            shutil.rmtree(final, ignore_errors=True)       # left over without image.json
        with staging_dir(final) as tmp:
            os.chmod(tmp, 0o755)
            _build_into(recipe, tmp, client_public)
        return _load(final, key_file)
