"""Guests: the built-in reference image (kernel + busybox initramfs running the probe, over the
serial console or, with dropbear, over SSH), guest profiles (profile; drivers: the allow-list of the
drivers and properties a profile may use), `qabi profile import` (profile_import: the entry point; draft: the draft and its
TOML; import_libvirt: a libvirt domain XML; import_argv: a QEMU command line) and bring-your-own
images.

The reference image's modules, by concern: recipe (guests/reference/, package series), debs
(resolving and fetching them through harness.archive), kernel (command line, config, modules),
elf (the ELF reader), libraries (shared-library closure), cpio (the archive writer), sshkeys
(host and client keys) and image (the build, its cache and the ReferenceImage record).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.lazy import lazy_attributes

if TYPE_CHECKING:
    from harness.guest.image import SSH_READY, TRANSPORTS, ReferenceImage, build_reference_image
    from harness.guest.kernel import KERNEL_CMDLINE
    from harness.guest.recipe import REFERENCE_DIR, ImageError
    from harness.guest.sshkeys import client_key

_LAZY = {"SSH_READY": "harness.guest.image", "TRANSPORTS": "harness.guest.image",
         "ReferenceImage": "harness.guest.image", "build_reference_image": "harness.guest.image",
         "KERNEL_CMDLINE": "harness.guest.kernel", "REFERENCE_DIR": "harness.guest.recipe",
         "ImageError": "harness.guest.recipe", "client_key": "harness.guest.sshkeys"}

__all__ = ["KERNEL_CMDLINE", "REFERENCE_DIR", "SSH_READY", "TRANSPORTS", "ImageError", "ReferenceImage",
           "build_reference_image", "client_key"]

__getattr__ = lazy_attributes(__name__, _LAZY)
