"""What one capture is to make, as every stage below the pipeline sees it: the build, the profile,
the machine type, the accelerator, the timeout and how the guest is reached. It sits below both
capture.py (which makes captures from plans) and the transports (which run them): neither imports
the other's module for it. `plan_capture` (harness/capture.py) checks a plan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import QabiError

if TYPE_CHECKING:
    from harness.guest.profile import GuestProfile
    from harness.guest.user_image import GuestImage
    from harness.qemu import QemuBuild

# The default transport of every front door (capture, record, check, pytest harness/): the hardware
# at the firmware hand-off, read over qtest. It is ~10x faster than booting Linux and sees PCI
# before any driver wrote it; serial and ssh remain for a real OS's view and your own images.
DEFAULT_TRANSPORT = "firmware"
DEFAULT_TIMEOUT = 180.0
# The default transport of every front door (capture, record, check, pytest harness/): the hardware
# at the firmware hand-off, read over qtest. It is ~10x faster than booting Linux and sees PCI
# before any driver wrote it; serial and ssh remain for a real OS's view and your own images.


@dataclass(frozen=True)
class GuestAccess:
    """Which guest boots and how the probe reaches it.

    firmware (the default): no OS, the host reads the hardware at the firmware hand-off over qtest
    (the reference payload runs CPUID and E820). serial: the reference guest, probe on the console.
    ssh: the reference guest in network mode, or with `guest_image` the user's own disk image (logged in as `ssh_user` with
    `ssh_key`; its host key must be in `ssh_host_keys`, a .pub or known_hosts file).
    """

    transport: str = DEFAULT_TRANSPORT
    guest_image: Path | None = None
    ssh_user: str | None = None
    ssh_key: Path | None = None
    ssh_host_keys: Path | None = None

    def __post_init__(self) -> None:
        ssh_opts = [name for name, value in (("--ssh-user", self.ssh_user), ("--ssh-key", self.ssh_key),
                                             ("--ssh-host-key", self.ssh_host_keys)) if value]
        if self.guest_image is None:
            if ssh_opts:
                raise QabiError(f"{', '.join(ssh_opts)} only apply with --guest-image (the reference guest "
                                "brings its own keys)")
            return
        if self.transport != "ssh":
            raise QabiError("--guest-image needs --transport ssh (a guest image is reached over SSH)")
        if self.ssh_key is None:
            raise QabiError("--guest-image needs --ssh-key (the private key that logs in to the guest)")

    @classmethod
    def from_options(cls, transport: str, guest_image: str | None, ssh_user: str | None, ssh_key: str | None,
                     ssh_host_key: str | None) -> GuestAccess:
        """From the option values of the CLI or the pytest plugin (paths as strings; empty = not given)."""
        def path(value: str | None) -> Path | None:
            return Path(value) if value else None

        return cls(transport=transport, guest_image=path(guest_image), ssh_user=ssh_user or None,
                   ssh_key=path(ssh_key), ssh_host_keys=path(ssh_host_key))

    @property
    def user(self) -> str:
        return self.ssh_user or "root"

    @property
    def boots_reference_image(self) -> bool:
        """Whether the reference guest (kernel + initramfs) boots: not for the firmware payload, nor
        for the user's own image."""
        return self.guest_image is None and self.transport != "firmware"


DEFAULT_ACCESS = GuestAccess()
SERIAL = GuestAccess(transport="serial")


@dataclass(frozen=True)
class CapturePlan:
    """One capture to make: a build, a profile, a machine type (as asked and resolved), the
    accelerator, the timeout and how the guest is reached (`plan_capture` checks them)."""

    build: QemuBuild
    profile: GuestProfile
    asked: str
    machine: str                     # the resolved, versioned machine type
    accel: str = "tcg"
    timeout: float = DEFAULT_TIMEOUT
    access: GuestAccess = DEFAULT_ACCESS
    reference: Path | None = None    # the reference guest's recipe dir (default guests/reference)
    user_image: GuestImage | None = None   # the opened (checked, hashed) --guest-image
