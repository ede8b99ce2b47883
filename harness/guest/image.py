"""The reference guest image: a Debian kernel and a busybox initramfs that runs the probe.

Two modes, chosen by the kernel command line (ReferenceImage.cmdline_for):
  serial  /init runs /probe.sh on ttyS0 and powers off (the default);
  ssh     "qabi.transport=ssh": /init starts dropbear (pinned host key, public-key logins only, no
          forwarding), prints @@QABI-SSH-READY on ttyS0 once it listens on port 22 and waits; the
          host uploads the probe by SFTP, runs it and powers the guest off. Bookworm's dropbear
          (2022.83) closes a channel opened while an earlier session's child is exiting (fixed
          upstream in 2024.86), so a client waits for each channel's exit status before the next.
Both modes load the same modules in the same order and configure eth0 the same way.

The initramfs is two concatenated segments (Linux unpacks them in turn):
  1. a gzip'd deterministic cpio (harness.guest.cpio): kernel modules, busybox, dropbear,
     sftp-server and their shared libraries, /etc, /init, /probe.sh;
  2. zero padding to a 4-byte boundary and a small uncompressed cpio with the per-build secrets:
     dropbear's ed25519 host key (new for each build) and root's authorized_keys.
The image hash (ReferenceImage.sha256) is sha256 over the kernel bytes followed by segment 1: the
same recipe and the same resolved packages give the same hash on every machine.

Images are cached under the cache's images/<key>/ (vmlinuz, initramfs.cpio.gz, image.json). The
key hashes the recipe files, this builder's version, the exact package versions the recipe's
series resolved to and the client public key.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import archive
from harness.cache import atomic_write_bytes, cache_dir, file_lock, staging_dir, write_json
from harness.errors import ArchiveError, VerificationError
from harness.guest.cpio import CpioEntry, pad4, with_parents, write_cpio
from harness.guest.debs import fetch_packages, resolve_packages
from harness.guest.kernel import KERNEL_CMDLINE, check_kernel_config, resolve_modules
from harness.guest.libraries import resolve_libraries
from harness.guest.recipe import LIBRARY_ROLE, SINGLE_ROLES, ImageError, PackageRef, Recipe, load_recipe
from harness.guest.sshkeys import client_key, client_public_key, dropbear_host_key

# Bumped whenever the image layout written here changes: part of the cache key.
BUILDER_VERSION = 3

# How the host reaches the probe. /init reads the word from /proc/cmdline; serial is the default.
TRANSPORTS = ("serial", "ssh")
SSH_CMDLINE_WORD = "qabi.transport=ssh"
STAY_CMDLINE_WORD = "qabi.stay=1"       # serial mode: stay up after the probe, probe again on request
SSH_READY = "@@QABI-SSH-READY"        # printed on ttyS0 once dropbear listens on port 22

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
# Files dropbear and glibc read: root logs in with a key only ("*" matches no password), its
# shell must be listed in /etc/shells, and name lookups use the files (glibc has them built in).
ETC_FILES = {
    "etc/passwd": b"root:*:0:0:root:/root:/bin/sh\n",
    "etc/group": b"root:x:0:\n",
    "etc/shells": b"/bin/sh\n",
    "etc/nsswitch.conf": b"passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
}

IMAGE_JSON = "image.json"
KERNEL_NAME = "vmlinuz"
INITRAMFS_NAME = "initramfs.cpio.gz"


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

    def cmdline_for(self, transport: str, stay: bool = False) -> str:
        """The kernel command line for `transport`: "serial" or "ssh"; `stay` (serial only): the
        guest stays up after the probe and probes again for each "probe" line on ttyS0."""
        if transport == "serial":
            return f"{self.cmdline} {STAY_CMDLINE_WORD}" if stay else self.cmdline
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


@dataclass(frozen=True)
class _Assembled:
    kernel: bytes
    kernel_version: str
    entries: list[CpioEntry]            # the deterministic segment
    modules: list[str]               # load order


def _single_file(root: Path, guest_path: str, deb: Path) -> bytes:
    host = root / guest_path.lstrip("/")
    if host.is_symlink() or not host.is_file():
        raise ImageError(f"package {deb.name} has no file {guest_path}")
    return host.read_bytes()


def _assemble(recipe: Recipe, debs: dict[str, list[Path]], work: Path) -> _Assembled:
    roots = {role: work / role for role in SINGLE_ROLES}
    for role, root in roots.items():
        archive.unpack(debs[role], root, relink=False)
    libroot = work / "libraries"
    libroot.mkdir()
    archive.unpack(debs.get(LIBRARY_ROLE, []), libroot, relink=False)

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
        CpioEntry("bin", d), CpioEntry("dev", d), CpioEntry("etc", d), CpioEntry("etc/qabi", d), CpioEntry("lib", d),
        CpioEntry("lib/modules", d), CpioEntry("proc", d), CpioEntry("sys", d), CpioEntry("tmp", stat.S_IFDIR | 0o1777),
        CpioEntry("root", private), CpioEntry("root/.ssh", private), CpioEntry("etc/dropbear", d),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("bin/busybox", exe, busybox),
        CpioEntry("init", exe, recipe.files["init"]),
        CpioEntry("probe.sh", exe, recipe.files["probe.sh"]),
        CpioEntry("etc/qabi/modules", f, "".join(f"{name}\n" for name, _ in modules).encode()),
        CpioEntry(DROPBEAR_PATH.lstrip("/"), exe, dropbear),
        CpioEntry(SFTP_SERVER_PATH.lstrip("/"), exe, sftp),
        CpioEntry(SFTPSERVER_PATH.lstrip("/"), stat.S_IFLNK | 0o777,
               posixpath.relpath(SFTP_SERVER_PATH, posixpath.dirname(SFTPSERVER_PATH)).encode()),
    ]
    entries += [CpioEntry(path, f, data) for path, data in ETC_FILES.items()]
    entries += [CpioEntry(f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox") for applet in APPLETS]
    entries += [CpioEntry(f"lib/modules/{name}.ko", f, data) for name, data in modules]
    known = {e.path for e in entries}
    for lib in libraries:
        if lib.path in known:
            raise ImageError(f"shared library path /{lib.path} collides with another initramfs entry")
        entries.append(lib)
    return _Assembled(vmlinuz.read_bytes(), kver, with_parents(entries), [name for name, _ in modules])


def _secret_entries(host_key: bytes, client_public: str) -> list[CpioEntry]:
    secret = stat.S_IFREG | 0o600
    return [CpioEntry(HOST_KEY_PATH.lstrip("/"), secret, host_key),
            CpioEntry(AUTHORIZED_KEYS_PATH.lstrip("/"), secret, f"{client_public.strip()}\n".encode())]


def _contents(entries: list[CpioEntry], secret: bool = False) -> list[ContentEntry]:
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


def image_key(recipe: Recipe, packages: tuple[PackageRef, ...], client_public: str) -> str:
    """The cache key of the image built from `recipe` with the exact `packages` for the client key
    `client_public`."""
    digest = hashlib.sha256()
    digest.update(f"qabi-reference-image builder={BUILDER_VERSION}\n".encode())
    digest.update(("applets=" + ",".join(APPLETS) + "\n").encode())
    for path, data in sorted(ETC_FILES.items()):
        digest.update(f"{path} {len(data)}\n".encode() + data)
    for name in sorted(recipe.files):
        digest.update(f"{name} {len(recipe.files[name])}\n".encode() + recipe.files[name])
    for pkg in packages:
        digest.update(f"package {pkg.role} {pkg.name} {pkg.version}\n".encode())
    digest.update(f"client {client_public.strip()}\n".encode())
    return digest.hexdigest()


def _build_into(recipe: Recipe, refs: tuple[PackageRef, ...], dest: Path, client_public: str) -> None:
    """Build the image from the exact packages `refs` into the directory `dest`, for the client key
    `client_public` (an OpenSSH public line). Every call makes a new host key."""
    packages, debs = fetch_packages(recipe, refs)
    with tempfile.TemporaryDirectory(prefix="qabi-image-") as tmp:
        built = _assemble(recipe, debs, Path(tmp))
    base = gzip.compress(write_cpio(built.entries), compresslevel=9, mtime=0)
    host_key, host_public = dropbear_host_key()
    secrets = _secret_entries(host_key, client_public)
    # the second archive starts on a 4-byte boundary (the kernel skips the zero padding)
    initramfs = base + pad4(len(base)) + write_cpio(secrets, existing={e.path for e in built.entries},
                                                    first_ino=len(built.entries) + 1)
    atomic_write_bytes(dest / KERNEL_NAME, built.kernel)
    atomic_write_bytes(dest / INITRAMFS_NAME, initramfs, 0o600)    # it holds the host's private key
    write_json(dest / IMAGE_JSON, {
        "builder": BUILDER_VERSION,
        "key": image_key(recipe, refs, client_public),
        "sha256": image_hash(built.kernel, base),
        "kernel_sha256": hashlib.sha256(built.kernel).hexdigest(),
        "initramfs_sha256": hashlib.sha256(initramfs).hexdigest(),
        "initramfs_base_sha256": hashlib.sha256(base).hexdigest(),
        "initramfs_base_size": len(base),
        "kernel_version": built.kernel_version,
        "suite": recipe.suite,
        "series": [{"role": p.role, "name": p.name, "version": p.version} for p in recipe.packages],
        "modules": built.modules,
        "nic_modules": list(recipe.nic_modules),
        "host_key": host_public,
        "client_public_key": client_public.strip(),
        "packages": [p.as_dict() for p in packages],
        "contents": [c.as_dict() for c in _contents(built.entries) + _contents(secrets, secret=True)],
    })


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


def build_reference_image(recipe_dir: Path | None = None, refresh: bool = False) -> ReferenceImage:
    """Build (or take from the cache) the reference guest image described by `recipe_dir`: each
    package series resolved to its newest version in the suite's index (`refresh`: fetch the
    index again first). If the archive no longer has a resolved version (a point release removed
    it since the index was fetched), the index is fetched again and the series resolved anew."""
    recipe = load_recipe(recipe_dir)
    key_file = client_key()
    client_public = client_public_key(key_file)
    try:
        return _cached_or_built(recipe, resolve_packages(recipe, refresh), key_file, client_public)
    except VerificationError:
        raise
    except ArchiveError:
        if refresh:
            raise
    return _cached_or_built(recipe, resolve_packages(recipe, refresh=True), key_file, client_public)


def _cached_or_built(recipe: Recipe, refs: tuple[PackageRef, ...], key_file: Path, client_public: str
                     ) -> ReferenceImage:
    key = image_key(recipe, refs, client_public)
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
            _build_into(recipe, refs, tmp, client_public)
        return _load(final, key_file)
