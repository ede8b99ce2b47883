"""The recipe's packages from Debian's archive (through harness.archive): each series resolved to
the newest exact version the suite's signed index has, fetched into the shared pool of verified
.debs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness import archive
from harness.cache import cache_dir, write_json
from harness.errors import ArchiveError
from harness.guest.recipe import ImageError, PackageRef, Recipe


def _index_digest(suite: archive.Suite) -> str:
    """Identifies the suite's signed index as fetched (it changes only when the index is refreshed)."""
    digest = hashlib.sha256()
    for release in suite.releases():
        digest.update(release.read_bytes())
    return digest.hexdigest()


def resolve_packages(recipe: Recipe, refresh: bool = False) -> tuple[PackageRef, ...]:
    """The exact (role, name, version) of every package series of `recipe`, newest in its series.

    The answer is cached by the recipe's package list and the signed index it came from, so a
    warm cache resolves without running apt or touching the network.
    """
    suite = archive.Suite(recipe.suite)
    suite.ensure_index(refresh)
    specs = [[p.role, p.name, p.version] for p in recipe.packages]
    key = hashlib.sha256(json.dumps(["series-1", recipe.suite, specs, _index_digest(suite)]).encode()).hexdigest()
    cached = cache_dir("series") / f"{key}.json"
    try:
        return tuple(PackageRef(**p) for p in json.loads(cached.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    refs = []
    for spec in recipe.packages:
        try:
            name, version = suite.newest_in_series(spec.name, spec.version)
        except ArchiveError as exc:
            raise ImageError(f"{recipe.directory / 'packages.toml'}: {exc}") from None
        refs.append(PackageRef(spec.role, name, version))
    write_json(cached, [{"role": r.role, "name": r.name, "version": r.version} for r in refs])
    return tuple(refs)


def fetch_packages(recipe: Recipe, refs: tuple[PackageRef, ...]) -> tuple[list[PackageRef], dict[str, list[Path]]]:
    """The verified .debs of `refs`: the records with filename and sha256 filled in, and the
    .deb files by role."""
    files, paths = archive.fetch_debs(recipe.suite, [f"{p.name}={p.version}" for p in refs])
    by_name = {f.name: (f, path) for f, path in zip(files, paths, strict=True)}
    out: list[PackageRef] = []
    debs: dict[str, list[Path]] = {}
    for pkg in refs:
        if pkg.name not in by_name or by_name[pkg.name][0].version != pkg.version:
            raise ImageError(f"the archive did not give {pkg.name}={pkg.version} for suite {recipe.suite}")
        pf, path = by_name[pkg.name]
        out.append(PackageRef(pkg.role, pkg.name, pkg.version, pf.filename, pf.sha256))
        debs.setdefault(pkg.role, []).append(path)
    return out, debs
