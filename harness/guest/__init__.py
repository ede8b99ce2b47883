"""Guests: the built-in reference image (kernel + busybox initramfs running the probe)."""

from harness.guest.image import KERNEL_CMDLINE, ReferenceImage, build_reference_image

__all__ = ["KERNEL_CMDLINE", "ReferenceImage", "build_reference_image"]
