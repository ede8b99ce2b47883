"""qabi: prove that a QEMU update keeps the guest-visible hardware ABI of a pinned machine type."""

__version__ = "0.1.0"
