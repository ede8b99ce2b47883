"""Guests: the built-in reference image (kernel + busybox initramfs running the probe, over the
serial console or, with dropbear, over SSH)."""

from harness.guest.image import (
    KERNEL_CMDLINE,
    REFERENCE_DIR,
    SSH_READY,
    TRANSPORTS,
    ImageError,
    ReferenceImage,
    build_reference_image,
    client_key,
)

__all__ = ["KERNEL_CMDLINE", "REFERENCE_DIR", "SSH_READY", "TRANSPORTS", "ImageError", "ReferenceImage", "build_reference_image",
           "client_key"]
