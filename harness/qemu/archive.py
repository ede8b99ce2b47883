"""Debian's archive, read through apt with a private configuration (as devscripts' chdist does).

Every suite gets its own apt state under the cache. The suite's signed index is verified with
gpgv against the Debian archive keyring, packages are resolved by apt (target release pinned so
sibling packages resolve to the same version), downloaded by us and verified against the
SHA256 the signed index gives; a mismatch is an error, never a warning.

The archive base URL is never written in this repository: it is read from the host's apt
sources at run time, or from the `debian-mirror` / `debian-security-mirror` settings.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from harness.cache import cache_dir, file_lock, sha256_file
from harness.config import setting
from harness.errors import ArchiveError, VerificationError
from harness.tools import require

# suite -> (archive kind of its own index, base suite it needs beside it or None)
SUITES: dict[str, tuple[str, str | None]] = {
    "bullseye": ("main", None),
    "bullseye-security": ("security", "bullseye"),
    "bookworm": ("main", None),
    "bookworm-security": ("security", "bookworm"),
    "bookworm-backports": ("main", "bookworm"),
    "trixie": ("main", None),
    "trixie-security": ("security", "trixie"),
    "trixie-backports": ("main", "trixie"),
    "forky": ("main", None),
    "sid": ("main", None),
}

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DOWNLOAD_TIMEOUT = 120
APT_TIMEOUT = 600


@dataclass(frozen=True)
class PackageFile:
    """One .deb as the signed index describes it."""

    name: str
    version: str
    uri: str
    filename: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "filename": self.filename,
                "size": self.size, "sha256": self.sha256}


def _host_sources() -> list[tuple[str, list[str]]]:
    """(uri, suites) of every enabled entry in the host's apt sources."""
    entries: list[tuple[str, list[str]]] = []
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in files:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            parts = re.sub(r"\[[^\]]*\]", "", line).split()
            if len(parts) >= 3 and parts[0] == "deb":
                entries.append((parts[1], [parts[2]]))
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                continue
            for uri in fields.get("uris", "").split():
                entries.append((uri, fields.get("suites", "").split()))
    return entries


def mirrors() -> tuple[str, str]:
    """(main archive base, security archive base), from settings or the host's apt sources."""
    main = setting("debian-mirror")
    security = setting("debian-security-mirror")
    known = {s.split("-")[0] for s in SUITES} | {"stable", "testing", "unstable", "oldstable"}
    if not main or not security:
        for uri, suites in _host_sources():
            bases = {s.split("-")[0] for s in suites}
            if not bases & known:
                continue
            if any(s.endswith("-security") for s in suites):
                security = security or uri
            else:
                main = main or uri
    if not main:
        raise ArchiveError(
            "no Debian archive found in the host's apt sources: set QABI_DEBIAN_MIRROR "
            "(or debian-mirror in the qabi config)")
    if not security:
        security = re.sub(r"/debian/?$", "/debian-security", main.rstrip("/"))
    return main.rstrip("/"), security.rstrip("/")


def keyring() -> str:
    path = setting("debian-keyring", DEFAULT_KEYRING) or DEFAULT_KEYRING
    if not os.path.isfile(path):
        raise ArchiveError(f"Debian archive keyring {path} not found: install the Debian package "
                           "'debian-archive-keyring'")
    return path


def check_suite(suite: str) -> None:
    if suite not in SUITES:
        raise ArchiveError(f"unknown Debian suite '{suite}' (known: {', '.join(SUITES)})")


class Suite:
    """A private apt configuration for one suite (plus the base suite it needs)."""

    def __init__(self, suite: str) -> None:
        check_suite(suite)
        self.suite = suite
        self.root = cache_dir("apt", suite)
        self.keyring = keyring()

    # -- apt plumbing -------------------------------------------------------------------------
    def _sources(self) -> str:
        main, security = mirrors()
        kind, base = SUITES[self.suite]
        lines = []
        if base:
            lines.append(f"deb [signed-by={self.keyring}] {main} {base} main")
        lines.append(f"deb [signed-by={self.keyring}] {security if kind == 'security' else main} "
                     f"{self.suite} main")
        return "\n".join(lines) + "\n"

    def _options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc={r}/etc", "-o", f"Dir::Etc::sourcelist={r}/etc/sources.list",
            "-o", "Dir::Etc::sourceparts=-", "-o", f"Dir::Etc::preferencesparts={r}/etc/preferences.d",
            "-o", f"Dir::Etc::trustedparts={r}/etc/trusted.gpg.d", "-o", f"Dir::Etc::parts={r}/etc/apt.conf.d",
            "-o", f"Dir::State={r}/state", "-o", f"Dir::State::status={r}/state/status",
            "-o", f"Dir::Cache={r}/cache", "-o", "APT::Architecture=amd64", "-o", "APT::Architectures=amd64",
            "-o", "Debug::NoLocking=1", "-o", "APT::Get::List-Cleanup=0", "-o", "Acquire::Languages=none",
            "-o", "APT::Install-Recommends=0", "-o", "APT::Sandbox::User=root", "-o", "Acquire::Retries=3",
        ]

    def _apt(self, tool: str, *args: str) -> str:
        argv = [require(tool), *self._options(), *args]
        try:
            done = subprocess.run(check=False, args=argv, capture_output=True, text=True, timeout=APT_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ArchiveError(f"{tool} {' '.join(args)} timed out after {APT_TIMEOUT}s") from None
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.startswith(("E:", "W:", "Err"))]
            reason = lines[0] if lines else (done.stderr.strip().splitlines() or ["failed"])[-1]
            raise ArchiveError(f"{tool} for suite {self.suite}: {reason}")
        return done.stdout

    def _lists(self) -> list[Path]:
        return sorted((self.root / "state" / "lists").glob("*_InRelease"))

    def has_index(self) -> bool:
        return bool(self._lists()) and bool(list((self.root / "state" / "lists").glob("*_Packages*")))

    def update(self) -> None:
        """Fetch the suite's signed index and verify its signature with gpgv."""
        r = self.root
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/trusted.gpg.d", "state/lists/partial",
                    "cache/archives/partial"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        (r / "etc" / "sources.list").write_text(self._sources())
        (r / "state" / "status").touch()
        try:
            self._apt("apt-get", "update", "-q")
        except ArchiveError as exc:
            if "NO_PUBKEY" in str(exc) or "signature" in str(exc).lower() or "not signed" in str(exc):
                raise VerificationError(f"signature check failed for suite {self.suite}: {exc}") from None
            raise
        self.verify_signatures()

    def verify_signatures(self) -> None:
        lists = self._lists()
        if not lists:
            raise VerificationError(f"suite {self.suite}: no signed index (InRelease) was fetched")
        gpgv = require("gpgv")
        for release in lists:
            done = subprocess.run(check=False, args=[gpgv, "--keyring", self.keyring, str(release)], capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
            if done.returncode != 0:
                raise VerificationError(f"signature check failed for {release.name} against {self.keyring}")

    def ensure_index(self, refresh: bool = False) -> None:
        with file_lock(self.root / "lock"):
            if refresh or not self.has_index():
                self.update()
            else:
                self.verify_signatures()

    # -- queries ------------------------------------------------------------------------------
    def candidate(self, package: str) -> str:
        """The newest version of `package` in this suite (what `debian:SUITE` means)."""
        out = self._apt("apt-cache", "-t", self.suite, "policy", package)
        match = re.search(r"Candidate:\s*(\S+)", out)
        if not match or match.group(1) == "(none)":
            raise ArchiveError(f"package {package} not found in suite {self.suite}")
        return match.group(1)

    def versions(self, package: str) -> list[str]:
        out = self._apt("apt-cache", "madison", package)
        return [line.split("|")[1].strip() for line in out.splitlines() if line.count("|") >= 2]

    def exists(self, package: str) -> bool:
        try:
            out = self._apt("apt-cache", "show", "--no-all-versions", package)
        except ArchiveError:
            return False
        return bool(out.strip())

    def resolve(self, requests: list[str]) -> list[PackageFile]:
        """The dependency closure of `requests` (name or name=version), as the signed index has it."""
        out = self._apt("apt-get", "-t", self.suite, "install", "--print-uris", "-qq", "-y",
                        "--no-install-recommends", *requests)
        pinned = []
        for line in out.splitlines():
            m = re.match(r"'[^']+' (\S+) \d+ ", line)
            if m:
                filename = urllib.parse.unquote(m.group(1))
                pinned.append(f"{filename.split('_')[0]}={filename.split('_')[1]}")
        if not pinned:
            raise ArchiveError(f"apt resolved nothing for {' '.join(requests)} in suite {self.suite}")
        return self.package_files(pinned)

    def package_files(self, pinned: list[str]) -> list[PackageFile]:
        """URI, size and SHA256 (from the signed index) of each exact `name=version`."""
        out = self._apt("apt-get", "download", "--print-uris", "-qq", *pinned)
        files = []
        for line in out.splitlines():
            m = re.match(r"'([^']+)' (\S+) (\d+) SHA256:([0-9a-f]{64})", line)
            if m:
                filename = urllib.parse.unquote(m.group(2))
                name, version = filename.split("_")[0], filename.split("_")[1]
                files.append(PackageFile(name, version, m.group(1), filename, int(m.group(3)), m.group(4)))
        if len(files) != len(pinned):
            raise ArchiveError(f"suite {self.suite}: the signed index gives no SHA256 for some of "
                               f"{' '.join(pinned)}")
        return files


# -- the shared pool of verified .debs ----------------------------------------------------------
def _pool() -> Path:
    return cache_dir("debs")


def verify_deb(path: Path, pkg: PackageFile) -> None:
    digest = sha256_file(path)
    if digest != pkg.sha256:
        raise VerificationError(
            f"checksum mismatch for {path}: the signed index says sha256 {pkg.sha256}, the file has "
            f"{digest} (delete it to download it again)")


def download(packages: list[PackageFile]) -> list[Path]:
    """Return the verified .deb of every package, downloading the ones the pool lacks."""
    pool = _pool()

    def one(pkg: PackageFile) -> Path:
        dest = pool / pkg.filename
        if dest.exists():
            verify_deb(dest, pkg)
            return dest
        fd, tmp = tempfile.mkstemp(prefix=f".{pkg.filename}.", dir=pool)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(pkg.uri, timeout=DOWNLOAD_TIMEOUT) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            verify_deb(Path(tmp), pkg)
            os.replace(tmp, dest)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise ArchiveError(f"cannot download {pkg.uri}: {exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest

    with ThreadPoolExecutor(max_workers=4) as pool_exec:
        return list(pool_exec.map(one, packages))


def unpack(debs: list[Path], dest: Path) -> None:
    """Unpack every .deb into `dest` and make absolute symlinks point inside it."""
    dpkg_deb = require("dpkg-deb")

    def one(deb: Path) -> None:
        done = subprocess.run(check=False, args=[dpkg_deb, "-x", str(deb), str(dest)], capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ArchiveError(f"cannot unpack {deb.name}: {done.stderr.strip()}")

    # dpkg-deb -x of two packages sharing a directory is safe; files never overlap in a closure
    with ThreadPoolExecutor(max_workers=4) as pool_exec:
        list(pool_exec.map(one, debs))
    relink_absolute_symlinks(dest)


def relink_absolute_symlinks(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = os.path.join(dirpath, name)
            if os.path.islink(link):
                target = os.readlink(link)
                if target.startswith("/"):
                    inside = os.path.join(str(root), target.lstrip("/"))
                    os.unlink(link)
                    os.symlink(os.path.relpath(inside, dirpath), link)


def fetch_debs(suite: str, requests: list[str], refresh: bool = False) -> tuple[list[PackageFile], list[Path]]:
    """Verified .debs of exactly `requests` (name=version, no dependency closure).

    Used for the reference guest's pinned packages (kernel, busybox).
    """
    s = Suite(suite)
    s.ensure_index(refresh)
    files = s.package_files(requests)
    return files, download(files)


def record_json(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
