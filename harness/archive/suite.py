"""One suite of Debian's archive through apt with a private configuration (as devscripts' chdist
does): the signed index verified with gpgv, packages resolved by apt (target release pinned so
sibling packages resolve to the same version), URIs, sizes and SHA256 as the signed index gives."""

from __future__ import annotations

import re
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from harness.archive.sources import SUITES, check_suite, keyring, mirrors
from harness.archive.version import matches, matches_name, newest
from harness.cache import atomic_write_bytes, cache_dir, file_lock
from harness.errors import ArchiveError, VerificationError
from harness.tools import require

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

    def releases(self) -> list[Path]:
        """The signed index files (InRelease) as fetched."""
        return sorted((self.root / "state" / "lists").glob("*_InRelease"))

    def has_index(self) -> bool:
        return bool(self.releases()) and bool(list((self.root / "state" / "lists").glob("*_Packages*")))

    def update(self) -> None:
        """Fetch the suite's signed index and verify its signature with gpgv."""
        r = self.root
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/trusted.gpg.d", "state/lists/partial",
                    "cache/archives/partial"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(r / "etc" / "sources.list", self._sources())
        (r / "state" / "status").touch()
        try:
            self._apt("apt-get", "update", "-q")
        except ArchiveError as exc:
            if "NO_PUBKEY" in str(exc) or "signature" in str(exc).lower() or "not signed" in str(exc):
                raise VerificationError(f"signature check failed for suite {self.suite}: {exc}") from None
            raise
        self.verify_signatures()

    def verify_signatures(self) -> None:
        lists = self.releases()
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

    def newest_in_series(self, name: str, version: str) -> tuple[str, str]:
        """The newest (package, version) in the series `name` / `version`, e.g.
        `linux-image-6.1.0-*-amd64` / `6.1.*` (see harness.archive.version: `*` is a number in a
        name and any text in a version)."""
        prefix = name.split("*", 1)[0]
        names = self._apt("apt-cache", "pkgnames", prefix).split() if prefix != name else [name]
        found = [(n, v) for n in sorted(set(names)) if matches_name(name, n)
                 for v in sorted(set(self.versions(n))) if matches(version, v)]
        if not found:
            raise ArchiveError(f"suite {self.suite} has no package {name} with a version in {version}")
        best = newest([v for _, v in found])
        return min(n for n, v in found if v == best), best

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
