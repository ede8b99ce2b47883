"""QemuBuild: a runnable QEMU (argv prefix, environment, firmware dirs) and what it reports."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import archive
from harness.cache import cache_dir, file_lock, sha256_file, staging_dir, write_json
from harness.errors import BuildError, VerificationError
from harness.qemu.process import private_dir, spawn
from harness.tools import require

QEMU_PACKAGE = "qemu-system-x86"
BINARY = "qemu-system-x86_64"
# Firmware that newer releases only recommend but that is guest-visible (option ROMs, BIOS), and
# the module package that holds the QXL display where a release splits it out.
FIRMWARE_PACKAGES = ("seabios", "ipxe-qemu", "qemu-system-modules-spice", "ovmf")
PREFIX_MANIFEST = "qabi-prefix.json"
OVMF_PACKAGE = "ovmf"
OVMF_SUBDIR = "usr/share/OVMF"
FIRMWARE_SUBDIRS = ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu", OVMF_SUBDIR)
HOST_OVMF_DIR = "/usr/share/OVMF"          # Debian's ovmf package on the host (the `system` build)
QUERY_TIMEOUT = 60
# Where a Debian QEMU looks for modules and firmware when its own dirs lack a file. A build that
# brings its own firmware runs in a private mount namespace with these hidden, so it can never
# silently load the host's modules (a crash for another QEMU version) or the host's firmware
# (a false attribution of what the guest sees).
HOST_QEMU_DIRS = ("/usr/lib/x86_64-linux-gnu/qemu", "/usr/share/qemu", "/usr/share/seabios",
                  "/usr/lib/ipxe", "/usr/share/ipxe", HOST_OVMF_DIR, "/usr/share/ovmf")
_HIDE_SCRIPT = ('for d in "$@"; do [ "$d" = -- ] && break; if [ -d "$d" ]; then '
                'mount -t tmpfs -o size=4k,mode=0555 qabi-hidden "$d" || exit 125; fi; shift; done; '
                'shift; exec "$@"')


@dataclass(frozen=True)
class BuildInfo:
    """What a build says about itself through QMP."""

    version: str
    machines: tuple[dict[str, Any], ...]
    devices: tuple[str, ...]

    def machine_names(self) -> list[str]:
        return [m["name"] for m in self.machines]

    def resolve_machine(self, name: str) -> str | None:
        for m in self.machines:
            if name in (m["name"], m.get("alias")):
                return str(m["name"])
        return None


@dataclass(frozen=True)
class QemuBuild:
    spec: str
    kind: str                        # "system" | "local" | "debian"
    executable: Path                 # the qemu-system-x86_64 that runs
    sha256: str
    package_version: str             # Debian version, or "local"
    launcher: tuple[str, ...] = ()   # dynamic loader and its options, before the executable
    env: tuple[tuple[str, str], ...] = ()
    firmware_dirs: tuple[str, ...] = ()
    firmware_from: str | None = None
    prefix: str | None = None
    isolate: bool = False            # hide the host's QEMU modules and firmware (see HOST_QEMU_DIRS)
    _info: list[BuildInfo] = field(default_factory=list, compare=False, repr=False)

    def argv(self) -> list[str]:
        """The argv prefix: loader (if any), the binary, and one -L per firmware dir."""
        out = [*self.launcher, str(self.executable)]
        if self.isolate:
            unshare = [require("unshare"), "--mount", "--propagation", "private"]
            if os.geteuid() != 0:
                unshare.append("--map-root-user")
            out = [*unshare, "--", "sh", "-c", _HIDE_SCRIPT, "qabi", *HOST_QEMU_DIRS, "--", *out]
        for d in self.firmware_dirs:
            out += ["-L", d]
        return out

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_", "QEMU_"))}
        env.update(dict(self.env))
        return env

    def with_firmware_from(self, other: QemuBuild) -> QemuBuild:
        return replace(self, firmware_dirs=other.firmware_dirs, firmware_from=other.spec, isolate=True,
                       _info=[])

    def info(self) -> BuildInfo:
        if not self._info:
            self._info.append(query_info(self))
        return self._info[0]

    def provenance(self) -> dict[str, Any]:
        info = self.info()
        return {
            "spec": self.spec, "kind": self.kind, "version": info.version,
            "package_version": self.package_version, "executable": str(self.executable),
            "sha256": self.sha256, "firmware_dirs": list(self.firmware_dirs),
            "firmware_from": self.firmware_from, "ovmf": ovmf_provenance(self),
        }

    def ovmf_dir(self) -> Path | None:
        """The directory of this build's OVMF images: the one in its firmware dirs (a Debian prefix,
        or the prefix `--firmware-from` names), the host's for `system`; None when it has none."""
        for d in self.firmware_dirs:
            if Path(d).name == "OVMF" and Path(d).is_dir():
                return Path(d)
        if self.kind == "system" and Path(HOST_OVMF_DIR).is_dir():
            return Path(HOST_OVMF_DIR)
        return None

    def as_json(self) -> dict[str, Any]:
        info = self.info()
        return {
            **self.provenance(),
            "argv": self.argv(),
            "machines": list(info.machines),
            "devices": list(info.devices),
        }


# -- spec resolution ----------------------------------------------------------------------------
def parse_debian_spec(spec: str) -> tuple[str, str | None]:
    rest = spec[len("debian:"):]
    suite, _, version = rest.partition("=")
    archive.check_suite(suite)
    return suite, (version or None)


def resolve(spec: str, firmware_from: str | None = None, refresh: bool = False,
            offline: bool = False) -> QemuBuild:
    """Turn a spec string (system | PATH | debian:SUITE[=VERSION]) into a runnable QemuBuild."""
    if spec == "system":
        build = _system()
    elif spec.startswith("debian:"):
        suite, version = parse_debian_spec(spec)
        build = _from_prefix(spec, provision(suite, version, refresh=refresh, offline=offline))
    elif "/" in spec or os.path.exists(spec):
        build = _local(spec)
    else:
        raise BuildError(f"unknown QEMU spec '{spec}': use system, a path, or debian:SUITE[=VERSION]")
    if firmware_from:
        build = build.with_firmware_from(resolve(firmware_from, refresh=refresh, offline=offline))
    return build


def _system() -> QemuBuild:
    path = shutil.which(BINARY)
    if not path:
        raise BuildError(f"{BINARY} not on PATH: install the Debian package '{QEMU_PACKAGE}'")
    real = Path(path).resolve()
    version = "local"
    try:
        owner = subprocess.run(check=False, args=["dpkg-query", "-S", str(real)], capture_output=True, text=True, timeout=30)
        if owner.returncode == 0:
            pkg = owner.stdout.split(":")[0].strip()
            ver = subprocess.run(check=False, args=["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                                 text=True, timeout=30)
            version = ver.stdout.strip() or "local"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return QemuBuild("system", "system", real, sha256_file(real), version)


def _local(spec: str) -> QemuBuild:
    path = Path(spec).expanduser().resolve()
    firmware: tuple[str, ...] = ()
    if path.is_dir():
        tree = path
        candidates = [tree / BINARY, tree / "build" / BINARY]
        found = next((c for c in candidates if c.is_file()), None)
        if not found:
            raise BuildError(f"{spec}: no {BINARY} in this build tree")
        pc_bios = next((d for d in [found.parent / "pc-bios", tree / "pc-bios"] if d.is_dir()), None)
        if pc_bios:
            firmware = (str(pc_bios),)
        path = found
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BuildError(f"{spec}: not an executable QEMU binary")
    return QemuBuild(spec, "local", path, sha256_file(path), "local", firmware_dirs=firmware,
                     isolate=bool(firmware))


# -- Debian prefixes ----------------------------------------------------------------------------
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", text)


def _prefix_dir(suite: str, version: str) -> Path:
    return cache_dir("builds") / f"{suite}_{_safe(version)}"


def _pointer(suite: str) -> Path:
    return cache_dir("builds", "latest") / f"{suite}.json"


def provision(suite: str, version: str | None, refresh: bool = False, offline: bool = False) -> Path:
    """Return the verified prefix of qemu-system-x86 from `suite` (newest, or exactly `version`)."""
    if version is None and not refresh and _pointer(suite).is_file():
        version = json.loads(_pointer(suite).read_text())["version"]
    if version is not None:
        prefix = _prefix_dir(suite, version)
        if (prefix / PREFIX_MANIFEST).is_file():
            if not offline:
                _add_ovmf(prefix, suite)
            return prefix
    if offline:
        raise BuildError(f"debian:{suite}{'=' + version if version else ''} is not in the cache and "
                         "the network may not be used")
    s = archive.Suite(suite)
    s.ensure_index(refresh=refresh)
    if version is None:
        version = s.candidate(QEMU_PACKAGE)
    elif version not in s.versions(QEMU_PACKAGE):
        s.ensure_index(refresh=True)
        known = s.versions(QEMU_PACKAGE)
        if version not in known:
            raise BuildError(f"{QEMU_PACKAGE} {version} is not in suite {suite} "
                             f"(it has: {', '.join(known) or 'none'})")
    prefix = _prefix_dir(suite, version)
    with file_lock(prefix.with_name(prefix.name + ".lock")):
        if not (prefix / PREFIX_MANIFEST).is_file():
            requests = [f"{QEMU_PACKAGE}={version}"] + [p for p in FIRMWARE_PACKAGES if s.exists(p)]
            started = time.monotonic()
            files = s.resolve(requests)
            debs = archive.download(files)
            with staging_dir(prefix) as tmp:
                archive.unpack(debs, tmp)
                manifest = {
                    "suite": suite, "package": QEMU_PACKAGE, "version": version,
                    "packages": [f.as_dict() for f in files],
                    "provisioned_seconds": round(time.monotonic() - started, 2),
                }
                write_json(tmp / PREFIX_MANIFEST, manifest)
    _add_ovmf(prefix, suite)            # a prefix made before OVMF joined the closure
    write_json(_pointer(suite), {"suite": suite, "version": version})
    return prefix


def _add_ovmf(prefix: Path, suite: str) -> None:
    """Bring a prefix provisioned before OVMF joined the closure up to date: the suite's `ovmf`
    (its usr/share/OVMF, renamed into place whole) joins it and its manifest."""
    if (prefix / OVMF_SUBDIR).is_dir() or _prefix_ovmf_version(prefix) is not None:
        return
    with file_lock(prefix.with_name(prefix.name + ".lock")):
        manifest = json.loads((prefix / PREFIX_MANIFEST).read_text())
        if (prefix / OVMF_SUBDIR).is_dir() or manifest.get("ovmf_absent"):
            return
        s = archive.Suite(suite)
        s.ensure_index()
        if not s.exists(OVMF_PACKAGE):
            write_json(prefix / PREFIX_MANIFEST, {**manifest, "ovmf_absent": True})
            return
        files = s.resolve([OVMF_PACKAGE])
        debs = archive.download(files)
        unpacked = prefix.with_name(f".{prefix.name}.ovmf-{os.getpid()}")
        try:
            archive.unpack(debs, unpacked)
            with staging_dir(prefix / OVMF_SUBDIR) as tmp:
                for item in (unpacked / OVMF_SUBDIR).iterdir():
                    os.rename(item, tmp / item.name)
        finally:
            shutil.rmtree(unpacked, ignore_errors=True)
        known = {p["name"] for p in manifest["packages"]}
        manifest["packages"] += [f.as_dict() for f in files if f.name not in known]
        write_json(prefix / PREFIX_MANIFEST, manifest)


def _prefix_ovmf_version(prefix: Path) -> str | None:
    try:
        manifest = json.loads((prefix / PREFIX_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return next((str(p["version"]) for p in manifest.get("packages", []) if p.get("name") == OVMF_PACKAGE), None)


_OVMF_HASHES: dict[tuple[str, int, int], str] = {}


def ovmf_provenance(build: QemuBuild) -> dict[str, Any] | None:
    """OVMF as this build runs it: the package version and the sha256 of every image (.fd), or None
    when the build has no OVMF."""
    where = build.ovmf_dir()
    if where is None:
        return None
    version: str | None = None
    if build.kind == "system" and where == Path(HOST_OVMF_DIR):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            done = subprocess.run(check=False, args=["dpkg-query", "-W", "-f=${Version}", OVMF_PACKAGE],
                                  capture_output=True, text=True, timeout=30)
            version = done.stdout.strip() or None
    else:
        version = _prefix_ovmf_version(where.parents[2])
    files = {}
    for image in sorted(where.glob("*.fd")):
        st = image.stat()
        key = (str(image.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _OVMF_HASHES:
            _OVMF_HASHES[key] = sha256_file(image)
        files[image.name] = _OVMF_HASHES[key]
    return {"dir": str(where), "package_version": version, "files": files}


def verify_prefix(prefix: Path) -> None:
    """Re-check every cached .deb of a prefix against the SHA256 its signed index gave."""
    manifest = json.loads((prefix / PREFIX_MANIFEST).read_text())
    pool = cache_dir("debs")
    for pkg in manifest["packages"]:
        deb = pool / pkg["filename"]
        if not deb.is_file():
            raise VerificationError(f"{deb} is missing from the cache (run 'qabi qemu fetch' again)")
        archive.verify_deb(deb, archive.PackageFile(pkg["name"], pkg["version"], "", pkg["filename"],
                                                    pkg["size"], pkg["sha256"]))


def _find(prefix: Path, candidates: list[str]) -> Path | None:
    return next((prefix / c for c in candidates if (prefix / c).exists()), None)


def _from_prefix(spec: str, prefix: Path) -> QemuBuild:
    manifest = json.loads((prefix / PREFIX_MANIFEST).read_text())
    exe = prefix / "usr" / "bin" / BINARY
    loader = _find(prefix, ["lib64/ld-linux-x86-64.so.2", "usr/lib64/ld-linux-x86-64.so.2",
                            "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
                            "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"])
    if not exe.is_file() or loader is None:
        raise BuildError(f"{prefix}: incomplete prefix (no {BINARY} or dynamic loader); delete it and fetch again")
    libdirs: list[str] = []
    module_dir = prefix / "usr/lib/x86_64-linux-gnu/qemu"
    for top in ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"):
        base = prefix / top
        if not base.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(base):
            if Path(dirpath) == module_dir or Path(dirpath).is_relative_to(module_dir):
                continue
            if any(".so" in f for f in files):
                libdirs.append(dirpath)
    firmware = tuple(str(prefix / d) for d in FIRMWARE_SUBDIRS if (prefix / d).is_dir())
    launcher = (str(loader), "--inhibit-cache", "--library-path", ":".join(libdirs))
    return QemuBuild(spec, "debian", exe, sha256_file(exe), manifest["version"], launcher=launcher,
                     env=(("QEMU_MODULE_DIR", str(module_dir)),), firmware_dirs=firmware,
                     prefix=str(prefix), isolate=True)


def cached_builds() -> list[dict[str, Any]]:
    out = []
    for manifest in sorted(cache_dir("builds").glob(f"*/{PREFIX_MANIFEST}")):
        data = json.loads(manifest.read_text())
        size = sum(f.stat().st_size for f in manifest.parent.rglob("*") if f.is_file() and not f.is_symlink())
        out.append({"spec": f"debian:{data['suite']}={data['version']}", "prefix": str(manifest.parent),
                    "packages": len(data["packages"]), "bytes": size})
    return out


# -- asking the build about itself --------------------------------------------------------------
def query_info(build: QemuBuild) -> BuildInfo:
    """Version, machine types (aliases resolved) and device names, through QMP."""
    cached = cache_dir("info") / f"{build.sha256}.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        return BuildInfo(data["version"], tuple(data["machines"]), tuple(data["devices"]))
    from qemu.qmp.legacy import QEMUMonitorProtocol

    with private_dir() as tmp:
        sock = tmp / "qmp.sock"
        qmp = QEMUMonitorProtocol(str(sock), server=True)
        argv = build.argv() + ["-machine", "none", "-nodefaults", "-display", "none", "-S",
                               "-chardev", f"socket,id=qmp,path={sock}", "-mon", "chardev=qmp,mode=control"]
        try:
            with spawn(argv, build.environ(), stderr_path=tmp / "stderr") as proc:
                try:
                    qmp.accept(timeout=QUERY_TIMEOUT)
                except Exception as exc:  # noqa: BLE001 - qemu.qmp raises several kinds
                    proc.poll()
                    err = (tmp / "stderr").read_text(errors="replace").strip()
                    raise BuildError(f"{build.spec}: QEMU did not answer on QMP ({err or exc})") from None
                try:
                    version = qmp.cmd_obj({"execute": "query-version"})["return"]
                    machines = qmp.cmd_obj({"execute": "query-machines"})["return"]
                    types = qmp.cmd_obj({"execute": "qom-list-types",
                                         "arguments": {"implements": "device", "abstract": False}})["return"]
                    qmp.cmd_obj({"execute": "quit"})
                except Exception as exc:  # noqa: BLE001
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=5)
                    lines = (tmp / "stderr").read_text(errors="replace").strip().splitlines()
                    raise BuildError(f"{build.spec}: QEMU failed while answering QMP: "
                                     f"{lines[-1] if lines else exc}") from None
        finally:
            with contextlib.suppress(Exception):  # QEMU closes the socket on quit: EOF is expected
                qmp.close()
    q = version["qemu"]
    text = f"{q['major']}.{q['minor']}.{q['micro']}"
    machine_list = sorted(
        ({"name": m["name"], "alias": m.get("alias"), "default": bool(m.get("is-default")),
          "deprecated": bool(m.get("deprecated"))} for m in machines), key=lambda m: m["name"])
    devices = sorted(t["name"] for t in types)
    write_json(cached, {"version": text, "package": version.get("package", ""),
                                 "machines": machine_list, "devices": devices})
    return BuildInfo(text, tuple(machine_list), tuple(devices))
