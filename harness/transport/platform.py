"""The platform a profile asks for beyond its devices: UEFI firmware (OVMF as pflash), SMM,
Secure Boot, a TPM 2.0 on swtpm, Hyper-V enlightenments and HPET. The launcher (launch.py) puts
`platform_args` on QEMU's command line; `platform(plan, workdir)` makes what those arguments name
exist for the capture's lifetime:

- OVMF: the code image read-only from the build's own OVMF dir (`--firmware-from` swaps it), and
  a per-capture COPY of the vars template in the 0700 run dir (the template is never written). For
  `ovmf-secboot` the template is the build's Microsoft-enrolled one (OVMF_VARS_4M.ms.fd) with the
  probe's test certificate (guests/efi/keys/db.crt) added to db, made once per template and cached
  by content hash (virt-firmware's virt-fw-vars).
- TPM: swtpm, started per capture on a socket in the run dir from a fresh copy of the committed
  manufactured state (guests/tpm/: the same endorsement key every run), unprivileged (as `nobody`
  when qabi runs as root), in its own process group, killed with QEMU.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cache import atomic_write_bytes, cache_dir, file_lock, sha256_file
from harness.errors import CaptureError, QabiError, UnsupportedError
from harness.guest.profile import TPM_DRIVERS
from harness.qemu.process import spawn
from harness.tools import require

if TYPE_CHECKING:
    from harness.guest.profile import GuestProfile
    from harness.plan import CapturePlan
    from harness.qemu import QemuBuild

GUESTS = Path(__file__).resolve().parents[2] / "guests"
TEST_CERT = GUESTS / "efi" / "keys" / "db.crt"
TEST_KEY = GUESTS / "efi" / "keys" / "db.key"      # committed, not secret: it signs test images only
SIGN_TIMEOUT = 60.0
TPM_STATE = GUESTS / "tpm" / "tpm2-00.permall"
# owner GUID of the test certificate in db (any fixed GUID: it is part of the db bytes)
TEST_CERT_OWNER = "7161626b-0000-4000-8000-000000000001"
# (code, vars template) per firmware, first match in the build's OVMF dir: the 4 MiB images (what
# virt-install and Proxmox pick; the only ones from trixie on), then the 2 MiB ones (bullseye).
OVMF_IMAGES = {
    "ovmf": (("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"), ("OVMF_CODE.fd", "OVMF_VARS.fd")),
    "ovmf-secboot": (("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd"), ("OVMF_CODE.secboot.fd", "OVMF_VARS.ms.fd")),
}
VARS_COPY = "OVMF_VARS.fd"
TPM_DIR = "tpm"
TPM_SOCKET = "tpm/swtpm.sock"          # in the TPM dir: swtpm opens it after dropping privileges
TPM_START_TIMEOUT = 10.0
VARS_TIMEOUT = 120


def ovmf_images(build: QemuBuild, firmware: str) -> tuple[Path, Path]:
    """The (code, vars template) images of `build` for `firmware`; UnsupportedError when the build
    has no OVMF or not these images."""
    where = build.ovmf_dir()
    if where is None:
        raise UnsupportedError(f"unsupported on this build: OVMF ({build.spec} has no OVMF firmware)")
    for code, template in OVMF_IMAGES[firmware]:
        if (where / code).is_file() and (where / template).is_file():
            return where / code, where / template
    names = ", ".join(f"{c} + {t}" for c, t in OVMF_IMAGES[firmware])
    raise UnsupportedError(f"unsupported on this build: {firmware} (no {names} in {where})")


def vars_template(build: QemuBuild, firmware: str) -> Path:
    """The vars file a capture copies: the build's template, for Secure Boot with the test
    certificate enrolled in db (cached by the template's and the certificate's content)."""
    _code, template = ovmf_images(build, firmware)
    if firmware != "ovmf-secboot":
        return template
    digest = hashlib.sha256(template.read_bytes() + TEST_CERT.read_bytes()).hexdigest()[:32]
    out = cache_dir("ovmf-vars") / f"{digest}.fd"
    with file_lock(out.with_suffix(".lock")):
        if not out.is_file():
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            try:
                done = subprocess.run([sys.executable, "-m", "virt.firmware.vars", "--input", str(template),
                                       "--add-db", TEST_CERT_OWNER, str(TEST_CERT), "--output", str(tmp)],
                                      check=False, capture_output=True, text=True, timeout=VARS_TIMEOUT,
                                      stdin=subprocess.DEVNULL)
                if done.returncode != 0 or not tmp.is_file():
                    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                    raise QabiError(f"cannot enroll the probe's test key into {template.name} (virt-fw-vars, "
                                    f"pip package virt-firmware): {last}")
                atomic_write_bytes(out, tmp.read_bytes())
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    return out


def reference_boot(plan: CapturePlan, kernel: Path, cmdline: str) -> tuple[Path, str]:
    """The reference kernel and command line a profile boots: as built, or under Secure Boot
    (`ovmf-secboot`) a kernel that also carries a signature by the test key the vars enroll in db
    (sbsign adds it beside Debian's; deterministic, cached by content) and a command line that lets
    the kernel load its module-signing certificates (lockdown then verifies every module /init
    loads), so that the serial and ssh transports boot the reference guest as the firmware transport
    boots its signed probe."""
    if plan.profile.firmware != "ovmf-secboot":
        return kernel, cmdline
    digest = hashlib.sha256(kernel.read_bytes() + TEST_CERT.read_bytes() + TEST_KEY.read_bytes()).hexdigest()[:32]
    out = cache_dir("signed-kernels") / f"{digest}.efi"
    with file_lock(out.with_suffix(".lock")):
        if not out.is_file():
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            try:
                done = subprocess.run([require("sbsign"), "--key", str(TEST_KEY), "--cert", str(TEST_CERT),
                                       "--output", str(tmp), str(kernel)], check=False, capture_output=True,
                                      text=True, timeout=SIGN_TIMEOUT, stdin=subprocess.DEVNULL)
                if done.returncode != 0 or not tmp.is_file():
                    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                    raise QabiError(f"cannot sign the reference kernel for Secure Boot (sbsign): {last}")
                atomic_write_bytes(out, tmp.read_bytes())
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
    return out, cmdline.replace("load_system_certificate_list,", "").replace(",load_system_certificate_list", "")


def platform_key(plan: CapturePlan) -> dict[str, str]:
    """What of the platform decides a capture's bytes beyond the profile text (for cache keys)."""
    profile = plan.profile
    parts: dict[str, str] = {}
    if profile.uefi:
        code, _template = ovmf_images(plan.build, profile.firmware)
        parts["ovmf_code"] = sha256_file(code)
        parts["ovmf_vars"] = sha256_file(vars_template(plan.build, profile.firmware))
        if plan.access.transport == "firmware":
            from harness.transport.firmware.ovmf import probe_sha256

            parts["efi_probe"] = probe_sha256(profile.firmware == "ovmf-secboot")
        elif profile.firmware == "ovmf-secboot" and plan.user_image is None:
            parts["kernel_signer"] = sha256_file(TEST_CERT)     # the reference kernel's added signature
    if profile.tpm:
        parts["tpm_state"] = sha256_file(TPM_STATE)
    if profile.hyperv and plan.access.transport == "firmware":
        parts["hv_properties"] = "qmp-1"      # the capture holds the vCPU's hv-* properties
    return parts


def machine_options(profile: GuestProfile) -> str:
    """`,smm=on,hpet=off`: the machine properties the profile sets (empty when none)."""
    opts = ""
    if profile.smm is not None:
        opts += f",smm={'on' if profile.smm else 'off'}"
    if profile.hpet is not None:
        opts += f",hpet={'on' if profile.hpet else 'off'}"
    return opts


def platform_args(plan: CapturePlan, workdir: Path) -> list[str]:
    """The firmware and TPM options of `plan` (paths in `workdir`, made by `platform`)."""
    profile = plan.profile
    args: list[str] = []
    if profile.uefi:
        code, _template = ovmf_images(plan.build, profile.firmware)
        args += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_drive_path(code)}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={workdir / VARS_COPY}"]
        if profile.firmware == "ovmf-secboot":
            args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    args += tpm_args(profile, workdir)
    return args


def tpm_args(profile: GuestProfile, workdir: Path) -> list[str]:
    if profile.tpm is None:
        return []
    return ["-chardev", f"socket,id=qabitpmchr,path={workdir / TPM_SOCKET}",
            "-tpmdev", "emulator,id=qabitpm,chardev=qabitpmchr",
            "-device", f"{TPM_DRIVERS[profile.tpm]},tpmdev=qabitpm"]


@contextlib.contextmanager
def platform(plan: CapturePlan, workdir: Path) -> Iterator[None]:
    """Make the vars copy and start swtpm for one capture; swtpm is killed on leaving."""
    profile = plan.profile
    if profile.uefi:
        shutil.copyfile(vars_template(plan.build, profile.firmware), workdir / VARS_COPY)
        os.chmod(workdir / VARS_COPY, 0o600)
    if profile.tpm is None:
        yield
        return
    with _swtpm(workdir):
        yield


def _drive_path(path: Path) -> str:
    text = str(path)
    if "," in text:
        raise QabiError(f"firmware path {text} contains a comma, which QEMU's -drive cannot take")
    return text


@contextlib.contextmanager
def _swtpm(workdir: Path) -> Iterator[None]:
    state = workdir / TPM_DIR
    state.mkdir(mode=0o700)
    shutil.copyfile(TPM_STATE, state / TPM_STATE.name)
    socket_path = workdir / TPM_SOCKET
    argv = [require("swtpm"), "socket", "--tpm2", "--tpmstate", f"dir={state}",
            "--ctrl", f"type=unixio,path={socket_path}", "--log", f"file={state / 'swtpm.log'},level=1",
            "--flags", "not-need-init"]
    if os.geteuid() == 0:
        # unprivileged: swtpm runs as nobody; the run dir stays root's (traversable, not listable),
        # the TPM dir (state, socket, log) is nobody's 0700
        nobody = pwd.getpwnam("nobody")
        os.chmod(workdir, 0o711)
        (state / "swtpm.log").touch()
        for path in (state, state / TPM_STATE.name, state / "swtpm.log"):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        argv += ["--runas", str(nobody.pw_uid)]
    stderr = workdir / "swtpm.stderr"
    with spawn(argv, dict(os.environ), stderr_path=stderr) as proc:
        deadline = time.monotonic() + TPM_START_TIMEOUT
        while not socket_path.exists():
            if proc.poll() is not None:
                text = (stderr.read_text(errors="replace") + "\n" +
                        (state / "swtpm.log").read_text(errors="replace")).strip().splitlines()
                raise CaptureError(f"swtpm exited at start: {text[-1] if text else 'no message'}")
            if time.monotonic() > deadline:
                raise CaptureError(f"swtpm did not open its socket within {TPM_START_TIMEOUT:.0f}s")
            time.sleep(0.01)
        yield
