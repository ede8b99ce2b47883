"""QEMU builds from PATH and from Debian's archive: real packages, real verification, real runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_qabi

# Every build the project promises to run side by side on this host (issue: QEMU builds).
SPECS = [
    "system",
    "debian:bullseye=1:5.2+dfsg-11+deb11u3",
    "debian:bullseye-security",
    "debian:bookworm-security",
    "debian:bookworm",
    "debian:bookworm-backports",
    "debian:trixie",
    "debian:forky",
    "debian:sid",
]


def _upstream(package_version: str) -> str:
    """'1:10.0.13+ds-0+deb13u1' -> '10.0.13'."""
    return re.sub(r"^\d+:", "", package_version).split("+")[0].split("-")[0]


@pytest.mark.integration
@pytest.mark.parametrize("spec", SPECS)
def test_info_reports_true_version_and_machines(spec):
    done = run_qabi("qemu", "info", "--json", spec)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    # the version QEMU reports over QMP is the one its package says it is
    upstream = _upstream(info["package_version"])
    assert info["version"].split(".")[:2] == upstream.split(".")[:2], (info["version"], upstream)
    if spec == "debian:bullseye=1:5.2+dfsg-11+deb11u3":
        assert info["version"] == "5.2.0" and info["package_version"] == "1:5.2+dfsg-11+deb11u3"
    names = {m["name"] for m in info["machines"]}
    assert {"pc-i440fx-5.2", "pc-q35-5.2"} <= names
    aliases = {m["alias"]: m["name"] for m in info["machines"] if m["alias"]}
    assert aliases["pc"].startswith("pc-i440fx-") and aliases["q35"].startswith("pc-q35-")
    assert "virtio-net-pci" in info["devices"] and "e1000" in info["devices"]
    assert re.fullmatch(r"[0-9a-f]{64}", info["sha256"])
    if spec.startswith("debian:"):
        # runs through its own prefix: loader, libraries and firmware all inside the cache
        prefix = info["executable"].rsplit("/usr/bin/", 1)[0]
        assert info["argv"].index(info["executable"]) > 0
        assert all(d.startswith(prefix) for d in info["firmware_dirs"])
        assert any(d.endswith(("usr/share/seabios", "usr/share/qemu")) for d in info["firmware_dirs"])


def test_unknown_suite_is_one_line_exit_2():
    done = run_qabi("qemu", "info", "debian:potato")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "unknown Debian suite 'potato'" in done.stderr


def test_unknown_spec_is_exit_2():
    done = run_qabi("qemu", "info", "qemu-9000")
    assert done.returncode == 2 and "unknown QEMU spec" in done.stderr


def _prefix_name(spec: str) -> str:
    """The directory (under the cache's builds/) of a provisioned build."""
    from harness.qemu import resolve

    prefix = resolve(spec).prefix
    assert prefix, spec
    return Path(prefix).name


@pytest.mark.integration
def test_version_not_in_suite_is_exit_2(cache_copy):
    home = cache_copy("apt/bullseye")
    done = run_qabi("qemu", "fetch", "debian:bullseye=1:9.9+nope-1", env={"XDG_CACHE_HOME": str(home)})
    assert done.returncode == 2
    assert "is not in suite bullseye" in done.stderr and "1:5.2+dfsg-11+deb11u3" in done.stderr


@pytest.mark.integration
def test_tampered_cached_package_is_refused(cache_copy):
    run_qabi("qemu", "fetch", "debian:bullseye=1:5.2+dfsg-11+deb11u3")
    home = cache_copy("apt/bullseye", build=_prefix_name("debian:bullseye=1:5.2+dfsg-11+deb11u3"))
    prefix = next((home / "qabi" / "builds").glob("bullseye_1_5.2+dfsg-11+deb11u3"))
    manifest = json.loads((prefix / "qabi-prefix.json").read_text())
    victim = home / "qabi" / "debs" / manifest["packages"][0]["filename"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    done = run_qabi("qemu", "fetch", "debian:bullseye=1:5.2+dfsg-11+deb11u3", env={"XDG_CACHE_HOME": str(home)})
    assert done.returncode == 2
    assert "checksum mismatch" in done.stderr and victim.name in done.stderr
    assert done.stderr.strip().count("\n") == 0


@pytest.mark.integration
def test_tampered_signed_index_is_refused(cache_copy):
    home = cache_copy("apt/bullseye")
    release = next((home / "qabi" / "apt" / "bullseye" / "state" / "lists").glob("*_InRelease"))
    text = release.read_bytes().replace(b"Suite: oldoldstable", b"Suite: oldoldstablf", 1)
    if text == release.read_bytes():  # whatever the suite is called today, change one signed byte
        raw = bytearray(text)
        raw[200] ^= 0x01
        text = bytes(raw)
    release.write_bytes(text)
    done = run_qabi("qemu", "fetch", "debian:bullseye=1:5.2+dfsg-11+deb11u3", env={"XDG_CACHE_HOME": str(home)})
    assert done.returncode == 2
    assert "signature check failed" in done.stderr


@pytest.mark.integration
def test_wrong_keyring_is_a_signature_failure(tmp_path):
    done = run_qabi("qemu", "fetch", "debian:bullseye-security",
                    env={"XDG_CACHE_HOME": str(tmp_path),
                         "QABI_DEBIAN_KEYRING": "/usr/share/keyrings/debian-archive-removed-keys.gpg"})
    assert done.returncode == 2
    assert "signature check failed" in done.stderr


@pytest.mark.integration
def test_two_concurrent_fetches_leave_one_prefix(cache_copy):
    run_qabi("qemu", "fetch", "debian:bullseye=1:5.2+dfsg-11+deb11u3")
    # packages cached, no prefix yet: both race to build it
    home = cache_copy("apt/bullseye", build=_prefix_name("debian:bullseye=1:5.2+dfsg-11+deb11u3"), with_prefix=False)
    env = {"XDG_CACHE_HOME": str(home)}
    argv = [sys.executable, "-m", "harness.cli", "qemu", "fetch", "debian:bullseye=1:5.2+dfsg-11+deb11u3"]
    procs = [subprocess.Popen(argv, cwd=REPO, env={**__import__("os").environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    builds = home / "qabi" / "builds"
    prefixes = [p for p in builds.iterdir() if p.is_dir() and p.name != "latest"]
    assert [p.name for p in prefixes] == ["bullseye_1_5.2+dfsg-11+deb11u3"]
    assert not list(builds.glob(".*"))  # no half-built staging dirs left behind


@pytest.mark.integration
def test_second_fetch_needs_no_network(cache_copy):
    run_qabi("qemu", "fetch", "debian:bookworm")
    home = cache_copy("apt/bookworm", build=_prefix_name("debian:bookworm"))
    # an unreachable archive: any network use would fail
    env = {"XDG_CACHE_HOME": str(home), "QABI_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
           "QABI_DEBIAN_SECURITY_MIRROR": "http://127.0.0.1:9/debian-security"}
    done = run_qabi("qemu", "fetch", "debian:bookworm", env=env)
    assert done.returncode == 0, done.stderr
    done = run_qabi("qemu", "info", "--offline", "debian:trixie", env={**env, "XDG_CACHE_HOME": str(Path(home) / "x")})
    assert done.returncode == 2 and "not in the cache" in done.stderr


@pytest.mark.integration
def test_firmware_from_swaps_only_the_firmware():
    done = run_qabi("qemu", "info", "--json", "debian:bookworm", "--firmware-from", "debian:bullseye-security")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["version"].startswith("7.2.")
    assert info["firmware_from"] == "debian:bullseye-security"
    assert all("bullseye-security_" in d for d in info["firmware_dirs"])
    assert "bookworm_" in info["executable"]


def test_mirror_is_read_from_host_apt_sources(monkeypatch):
    from harness.archive import sources as archive

    monkeypatch.delenv("QABI_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("QABI_DEBIAN_SECURITY_MIRROR", raising=False)
    main, security = archive.mirrors()
    hosts = [uri for uri, _ in archive._host_sources()]
    assert main in [h.rstrip("/") for h in hosts]
    assert security.endswith("-security") or security in [h.rstrip("/") for h in hosts]
    monkeypatch.setenv("QABI_DEBIAN_MIRROR", "http://127.0.0.1:1/x")
    assert archive.mirrors()[0] == "http://127.0.0.1:1/x"


@pytest.mark.integration
@pytest.mark.parametrize("spec", SPECS)
def test_each_build_boots_the_reference_guest_under_tcg(spec):
    from harness.capture import load_capture, plan_capture
    from harness.check import captured
    from harness.guest.profile import load_profile
    from harness.plan import SERIAL
    from harness.qemu import resolve

    cap = load_capture(captured(plan_capture(resolve(spec), load_profile("minimal"), "pc-i440fx-5.2",
                                             access=SERIAL)).path)
    assert cap.manifest["accel"] == "tcg" and cap.manifest["build"]["spec"] == spec
    assert "raw/sys/firmware/acpi/tables/DSDT" in cap.manifest["files"]


# -- two builds provisioned side by side share their downloads -------------------------------------

def _one_real_deb() -> Path:
    """A real .deb of the pool (fetching debian:bookworm fills it, when nothing has yet)."""
    from harness.cache import cache_root
    from harness.qemu import resolve

    resolve("debian:bookworm")
    debs = sorted((cache_root() / "debs").glob("*.deb"), key=lambda p: p.stat().st_size)
    return debs[len(debs) // 2]


def _side_by_side(pkg, workers: int = 2):
    import threading

    from harness.archive import pool

    results: list[object] = []
    calls: list[str] = []
    real_fetch = pool._fetch

    def counted(p, dest):
        calls.append(p.filename)
        threading.Event().wait(0.2)          # a slow mirror: the other thread asks meanwhile
        real_fetch(p, dest)

    def one():
        try:
            results.append(pool.download([pkg])[0])
        except Exception as exc:  # noqa: BLE001 - the test looks at what each thread got
            results.append(exc)

    pool._fetch = counted  # type: ignore[assignment]  # the real download, counted and slowed
    try:
        threads = [threading.Thread(target=one) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        pool._fetch = real_fetch
    return results, calls


def test_a_deb_two_builds_need_is_downloaded_once(tmp_path, monkeypatch):
    import hashlib

    from harness.archive.suite import PackageFile

    deb = _one_real_deb()
    data = deb.read_bytes()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pkg = PackageFile("pkg", "1", deb.as_uri(), deb.name, len(data), hashlib.sha256(data).hexdigest())
    results, calls = _side_by_side(pkg, workers=3)
    assert calls == [deb.name]
    assert len(results) == 3 and len({str(r) for r in results}) == 1
    assert Path(str(results[0])).read_bytes() == data


def test_a_deb_that_fails_verification_fails_every_waiting_build(tmp_path, monkeypatch):
    from harness.archive.suite import PackageFile
    from harness.errors import VerificationError

    deb = _one_real_deb()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pkg = PackageFile("pkg", "1", deb.as_uri(), deb.name, deb.stat().st_size, "0" * 64)
    results, calls = _side_by_side(pkg)
    assert calls == [deb.name]
    assert [type(r) for r in results] == [VerificationError, VerificationError]
    assert not (tmp_path / "cache" / "qabi" / "debs" / deb.name).exists()
