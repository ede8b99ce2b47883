"""A real Debian guest image for the "bring your own guest image" SSH tests, built once and cached.

`debian_image(pubkey)` runs guests/byo/build-debian-image (debootstrap; needs root and the
network, about 2.5 minutes) the first time and returns the cached image afterwards. The cache
lives in $XDG_CACHE_HOME/qabi/byo/<key>/ (default ~/.cache/qabi), keyed by the script's bytes,
the public key, the user and the suite; a file lock makes concurrent pytest workers build it once,
and the build happens in a staging directory that is renamed into place only when complete.
Boot the image with `snapshot=on` (or an overlay): the cached file must never change.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.cache import cache_dir, file_lock, sha256_file, staging_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "guests" / "byo" / "build-debian-image"
IMAGE_NAME = "image.qcow2"
HOSTKEYS_NAME = IMAGE_NAME + ".hostkeys"


class ByoImageError(RuntimeError):
    """The image could not be built (not root, a host tool missing, no mirror, build failure)."""


@dataclass(frozen=True)
class ByoImage:
    path: Path  # the qcow2; never write to it (boot with snapshot=on)
    host_keys: list[str]  # the image's sshd host keys, OpenSSH "keytype base64" lines
    user: str  # the login user; key-only SSH, passwordless sudo


def image_sha256(path: Path) -> str:
    """The sha256 of an image file (to check that a boot left it unchanged)."""
    return sha256_file(path)


def cache_key(pubkey: bytes, user: str, suite: str) -> str:
    digest = hashlib.sha256()
    for part in (SCRIPT.read_bytes(), pubkey, user.encode(), suite.encode()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:32]


def _load(directory: Path, user: str) -> ByoImage | None:
    image, hostkeys = directory / IMAGE_NAME, directory / HOSTKEYS_NAME
    if not (image.is_file() and hostkeys.is_file()):
        return None
    keys = [line.strip() for line in hostkeys.read_text().splitlines() if line.strip()]
    return ByoImage(path=image, host_keys=keys, user=user) if keys else None


def _run_build(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the build in its own process group; on timeout or interrupt stop the whole group."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        # SIGTERM first so the script's trap removes its work dir; then make sure.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def debian_image(pubkey: Path, user: str = "qabi", *, suite: str = "bookworm",
                 timeout: float = 3600.0) -> ByoImage:
    """The cached Debian image that lets `user` in with `pubkey`; built on first use."""
    key_bytes = Path(pubkey).read_bytes()
    key = cache_key(key_bytes, user, suite)
    root = cache_dir("byo")
    final = root / key
    cached = _load(final, user)
    if cached is not None:
        return cached
    with file_lock(root / f"{key}.lock"):
        cached = _load(final, user)
        if cached is not None:
            return cached
        if final.exists():  # incomplete (should not happen: it only appears by rename)
            shutil.rmtree(final)
        for stale in root.glob(f".{key}.*"):  # left by a build that was killed outright
            shutil.rmtree(stale, ignore_errors=True)
        with staging_dir(final) as stage:
            stage.chmod(0o755)
            (stage / "authorized_key.pub").write_bytes(key_bytes)
            argv = [str(SCRIPT), "--out", str(stage / IMAGE_NAME),
                    "--authorized-key", str(stage / "authorized_key.pub"), "--user", user, "--suite", suite]
            # The script's scratch space (a whole debootstrap root) goes inside the staging dir, so
            # even a build killed with SIGKILL leaves nothing outside the cache, unless the cache is
            # on a nodev/noexec filesystem where a chroot cannot work.
            env = dict(os.environ)
            if not os.statvfs(stage).f_flag & (os.ST_NODEV | os.ST_NOEXEC):
                env["TMPDIR"] = str(stage)
            try:
                result = _run_build(argv, env, timeout)
            except subprocess.TimeoutExpired:
                raise ByoImageError(f"build-debian-image timed out after {timeout:.0f}s") from None
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines()
                reason = lines[-1] if lines else f"exit status {result.returncode}"
                log = stage / (IMAGE_NAME + ".log")
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.is_file() else ""
                raise ByoImageError(reason + (f"\n{tail}" if tail else ""))
            (stage / "authorized_key.pub").unlink()
            if _load(stage, user) is None:
                raise ByoImageError(f"build-debian-image wrote no image or host keys in {stage}")
        built = _load(final, user)
        assert built is not None
        return built
