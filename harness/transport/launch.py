"""The launcher: the one place that assembles QEMU's whole command line for a capture.

    argv = qemu_argv(plan, workdir, setup)

= the build's prefix (loader, binary, -L firmware dirs) + fixed options (no user config, no
default devices, no display, no reboot) + the accelerator + the profile's hardware on the machine
type + what the transport set up (boot, console, control channel) + a private QMP socket.
Every value that comes from a profile is a separate argv item; nothing goes through a shell.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import QabiError
from harness.guest.profile import GuestProfile, disk_size, machine_family
from harness.transport.platform import machine_options, platform_args

if TYPE_CHECKING:
    from harness.plan import CapturePlan
    from harness.qemu import QemuBuild
    from harness.transport.base import Setup

ACCELS = ("tcg", "kvm")
# TCG runs single-threaded: the guest sees the same hardware, and two concurrent captures on a
# 2-core host no longer fight over both cores (docs/measurements.md).
ACCEL_ARGS = {"tcg": "tcg,thread=single", "kvm": "kvm"}
RTC_BASE = "2020-01-01T00:00:00"
AUDIODEV_ID = "qabi-snd"
QMP_SOCKET = "qmp.sock"
PM_DEVICE = {"q35": "ICH9-LPC", "i440fx": "PIIX4_PM"}     # where a machine family's S3/S4 switches are


def check_accel(accel: str) -> str:
    if accel not in ACCELS:
        raise QabiError(f"unknown accelerator '{accel}' (use {' or '.join(ACCELS)})")
    return accel


def qemu_argv(plan: CapturePlan, workdir: Path, setup: Setup, incoming: Path | None = None,
              paused: bool = False) -> list[str]:
    """The whole argv of one capture's QEMU; with `incoming` (live migration's destination) it
    waits for a migration stream on that unix socket instead of booting; `paused`: the vCPUs wait
    for QMP `cont` (the VM is built, nothing has run)."""
    wait = ["-incoming", f"unix:{incoming}"] if incoming is not None else []
    wait += ["-S"] if paused else []
    return [*plan.build.argv(), "-no-user-config", "-nodefaults", "-display", "none", "-no-reboot",
            "-accel", ACCEL_ARGS[check_accel(plan.accel)],
            *hardware_args(plan.profile, plan.machine, workdir, setup.hostfwd, setup.boot_disk, plan.accel),
            *platform_args(plan, workdir), *setup.args, "-qmp", f"unix:{workdir / QMP_SOCKET},server=on,wait=off", *wait]


def dump_vmstate_argv(build: QemuBuild, machine: str, out: Path) -> list[str]:
    """The argv that makes `build` write the migration schema of every device type it has with a
    vmstate (class-level: what the machine type instantiates is not taken into account by QEMU)
    for `machine` to `out` and exit."""
    return [*build.argv(), "-no-user-config", "-nodefaults", "-display", "none", "-machine", machine,
            "-accel", "tcg", "-dump-vmstate", str(out)]


def hardware_args(profile: GuestProfile, machine: str, workdir: Path, hostfwd: str | None = None,
                  boot_disk: tuple[Path, str] | None = None, accel: str = "tcg") -> list[str]:
    """The hardware part of the argv for `profile` on `machine`; blank disks go in `workdir`.

    `hostfwd` is added to the first NIC's user-mode backend (the SSH transport). `boot_disk`
    (path, format) backs the first disk instead of a blank one, always with snapshot=on: the
    guest's writes go to a temporary overlay, never to that file. Neither changes what the guest
    sees of its hardware.

    The profile's Hyper-V enlightenments go on -cpu under KVM only: QEMU builds the Hyper-V CPUID
    leaves (0x40000000-0x4000000A) and MSRs only under KVM, so under TCG the guest sees none of them
    either way, and QEMU 7.2 refuses hv-vpindex under TCG ("kernel doesn't allow setting HyperV
    VP_INDEX"). What the vCPU's hv-* properties are per machine type is read over QMP instead.
    """
    smp = ",".join(f"{k}={v}" for k, v in profile.smp)
    args = ["-machine", machine + machine_options(profile), "-cpu", profile.cpu_option(hyperv=accel == "kvm"),
            "-m", str(profile.memory_mib), "-smp", smp, "-uuid", profile.uuid, "-rtc", f"base={RTC_BASE},clock=vm"]
    for kind, fields in profile.smbios:
        args += ["-smbios", ",".join([f"type={kind}", *(f"{k}={_opt(v)}" for k, v in fields)])]
    power = PM_DEVICE[machine_family(machine)]
    for state, offered in profile.pm:
        args += ["-global", f"{power}.disable_{state}={0 if offered else 1}"]
    devices = profile.devices_for(machine)
    if any(d.audio for d in devices):
        args += ["-audiodev", f"none,id={AUDIODEV_ID}"]
    first_nic = next((d for d in devices if d.mac), None)
    first_disk = next((d for d in devices if d.disk), None)
    if boot_disk is not None and first_disk is None:
        raise QabiError(f"profile '{profile.name}' has no disk to attach the guest image to")
    for index, dev in enumerate(devices):
        opts = [dev.driver]
        if dev.id:
            opts.append(f"id={dev.id}")
        if dev.bus:
            opts.append(f"bus={dev.bus}")
        if dev.addr:
            opts.append(f"addr={dev.addr}")
        if dev.mac:
            fwd = f",hostfwd={hostfwd}" if hostfwd and dev is first_nic else ""
            args += ["-netdev", f"user,id=qabinet{index},restrict=on{fwd}"]
            opts += [f"netdev=qabinet{index}", f"mac={dev.mac}"]
        if dev.disk and boot_disk is not None and dev is first_disk:
            path, fmt = boot_disk
            args += ["-drive", f"if=none,id=qabidisk{index},file={_drive_path(path)},format={fmt},snapshot=on"]
            opts.append(f"drive=qabidisk{index}")
        elif dev.disk:
            image = workdir / f"disk{index}.img"
            with open(image, "wb") as handle:
                handle.truncate(disk_size(dev.disk))
            args += ["-drive", f"if=none,id=qabidisk{index},file={image},format=raw,cache=unsafe"]
            opts.append(f"drive=qabidisk{index}")
        if dev.cdrom:
            args += ["-drive", f"if=none,id=qabicd{index},media=cdrom"]
            opts.append(f"drive=qabicd{index}")
        if dev.audio:
            opts.append(f"audiodev={AUDIODEV_ID}")
        # the profile loader refuses commas already; escaping them too keeps a value one value
        opts += [f"{k}={_opt(v)}" for k, v in dev.props]
        args += ["-device", ",".join(opts)]
    return args


def _opt(value: str) -> str:
    """A QEMU option value: `,` doubled, so that it can never start another option."""
    return value.replace(",", ",,")


def _drive_path(path: Path) -> str:
    text = str(path.resolve())
    if "," in text:
        raise QabiError(f"guest image path {text} contains a comma, which QEMU's -drive cannot take")
    return text
