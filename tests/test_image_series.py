"""Issue 16 class 11 (pin rot): the reference image names package series, resolved at build time to
the newest version the index has, and a kernel update inside the series leaves the hardware
fingerprint unchanged. Real Debian packages (bookworm and bookworm-security), real QEMU (TCG)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from harness.archive.version import compare_versions, matches, matches_name, newest
from harness.guest import build_reference_image
from harness.guest.debs import resolve_packages
from harness.guest.recipe import load_recipe

RECIPE = REPO / "guests" / "reference"
MACHINE = "pc-q35-7.2"


# -- Debian version order (no network) ------------------------------------------------------------
PAIRS = ["1.0", "1.0-1", "1.0-1+deb12u1", "1.0-2", "1.0~rc1", "1.0+b1", "1:0.9", "2.36-9+deb12u14",
         "2.36-9+deb12u9", "6.1.176-1", "6.1.192-3", "6.1.27-1", "1:1.35.0-4+deb12u1+b1", "1:1.35.0-4+deb12u1",
         "1.0a", "1.0~~", "1.0~", "2022.83-1+deb12u3"]


def test_version_order_agrees_with_dpkg():
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        pytest.skip("dpkg is not installed")
    for a in PAIRS:
        for b in PAIRS:
            ours = compare_versions(a, b)
            lt = subprocess.run([dpkg, "--compare-versions", a, "lt", b], check=False).returncode == 0
            eq = subprocess.run([dpkg, "--compare-versions", a, "eq", b], check=False).returncode == 0
            assert (ours < 0, ours == 0) == (lt, eq), (a, b, ours)
    assert newest(["6.1.176-1", "6.1.192-3", "6.1.27-1"]) == "6.1.192-3"
    assert matches("6.1.*", "6.1.192-3") and not matches("6.1.*", "6.12.1-1")
    assert matches("1:1.35.0-*", "1:1.35.0-4+deb12u1+b1") and matches("2.36-9", "2.36-9")
    assert not matches("2.36-9", "2.36-9+deb12u1") and not matches("1.2.0-*", "1x2.0-1")
    assert matches_name("linux-image-6.1.0-*-amd64", "linux-image-6.1.0-57-amd64")
    for other in ("linux-image-6.1.0-57-cloud-amd64", "linux-image-6.1.0-57-rt-amd64", "linux-image-6.1.0--amd64"):
        assert not matches_name("linux-image-6.1.0-*-amd64", other)


# -- two kernels, one fingerprint ---------------------------------------------------------------------
def _recipe_with(dest: Path, suite: str, exact: dict[str, str]) -> Path:
    """A copy of the reference recipe for `suite`, with the packages in `exact` (name -> version)
    pinned exactly and the others left as series."""
    dest.mkdir(parents=True)
    for name in ("init", "probe.sh"):
        shutil.copy(RECIPE / name, dest / name)
    lines = [f'suite = "{suite}"']
    recipe = load_recipe(RECIPE)
    for spec in recipe.packages:
        resolved = [(n, v) for n, v in exact.items() if matches_name(spec.name, n)]
        name, version = resolved[0] if resolved else (spec.name, spec.version)
        lines += ["[[package]]", f'role = "{spec.role}"', f'name = "{name}"', f'version = "{version}"']
    text = (RECIPE / "packages.toml").read_text()
    lines.append(text[text.index("[modules]"):])
    (dest / "packages.toml").write_text("\n".join(lines) + "\n")
    return dest


@pytest.mark.integration
@pytest.mark.parametrize("profile", ["windows", "linux-virtio"])
def test_a_kernel_update_keeps_the_fingerprint(tmp_path, profile):
    from harness.capture import capture, plan_capture
    from harness.drift import compare
    from harness.fingerprint import fingerprint_capture
    from harness.guest.profile import load_profile
    from harness.plan import SERIAL
    from harness.qemu import resolve

    base = resolve_packages(load_recipe(RECIPE))
    others = {p.name: p.version for p in base if p.role != "kernel"}
    old_dir = _recipe_with(tmp_path / "old", "bookworm", {p.name: p.version for p in base})
    new_dir = _recipe_with(tmp_path / "new", "bookworm-security", others)   # the kernel series floats
    new_refs = resolve_packages(load_recipe(new_dir))
    old_kernel, new_kernel = base[0], new_refs[0]
    if old_kernel.version == new_kernel.version:
        pytest.skip(f"bookworm-security has no kernel newer than bookworm's {old_kernel.version} today")
    assert [p for p in new_refs if p.role != "kernel"] == [p for p in base if p.role != "kernel"]

    old, new = build_reference_image(old_dir), build_reference_image(new_dir)
    assert (old.packages[0].name, old.packages[0].version) == (old_kernel.name, old_kernel.version)
    assert (new.packages[0].name, new.packages[0].version) == (new_kernel.name, new_kernel.version)
    assert old.kernel_version != new.kernel_version and old.sha256 != new.sha256
    assert re.fullmatch(r"6\.1\.0-\d+-amd64", new.kernel_version)
    # deterministic: the same recipe and packages give the same image identity again
    assert build_reference_image(new_dir).sha256 == new.sha256

    build = resolve("system")
    prof = load_profile(profile)
    caps = [capture(plan_capture(build, prof, MACHINE, timeout=300, access=SERIAL, reference=recipe),
                    tmp_path / f"cap-{side}")
            for side, recipe in (("old", old_dir), ("new", new_dir))]
    images = [c.manifest["image"] for c in caps]
    assert images[0]["sha256"] == old.sha256 and images[1]["sha256"] == new.sha256
    assert images[0]["kernel"] == old.kernel_version and images[1]["kernel"] == new.kernel_version
    prints = [fingerprint_capture(tmp_path / f"cap-{side}") for side in ("old", "new")]
    comparison = compare(prints[0], prints[1])
    assert comparison.drifts == (), [f"{d.subject} {d.path}: {d.old} -> {d.new}" for d in comparison.drifts]
