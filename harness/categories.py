"""The category registry: the one place that names what qabi compares.

A category is a name, a title, the raw inputs it reads (paths under a capture's `raw/`), a
decoder (raw dir → entries keyed by identity), a comparer (old entries, new entries → drifts) and
its rows of the severity policy. The fingerprint stage decodes every registered category, the
drift stage compares them, every report and the JSON Schema list them in registry order, and the
pytest harness makes one item per category. Adding a category is one `register()` call:

    register(Category("hpet", "HPET", raw=("sys/firmware/acpi/tables/HPET",),
                      decode=my_decode, compare=my_compare, policy=(PolicyRule(...),)))

A *host-side* category (`host_side=True`: migration, vmstate, props) is not read by the guest:
its raw inputs are files in a run's host-side directory (what QEMU says about the VM), present
only when the run collected them (`--migrate`). The fingerprint stage decodes it only when that
directory is given and holds its inputs; `compare()` compares it when both fingerprints have it,
and refuses a pair where only one has it. A guest-side category missing stays an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.drift.model import Drift
    from harness.drift.policy import PolicyRule

Decoder = Callable[[Path], dict[str, Any]]
Comparer = Callable[[dict[str, Any], dict[str, Any]], "list[Drift]"]


@dataclass(frozen=True)
class Category:
    name: str                          # the key in a fingerprint, a drift's `category`, a pytest id part
    title: str                         # what a report heading says
    raw: tuple[str, ...]               # inputs under raw/ (files or directories)
    decode: Decoder
    compare: Comparer
    policy: tuple[PolicyRule, ...] = ()   # severity rows for this category, first match wins
    host_side: bool = False            # raw inputs from the run's host-side dir, only with --migrate

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or not self.name.islower():
            raise ValueError(f"category name {self.name!r} must be a lower-case identifier")


_REGISTRY: dict[str, Category] = {}


def _builtins() -> None:
    from harness.drift import acpi as acpi_drift
    from harness.drift import cpuid as cpuid_drift
    from harness.drift import e820 as e820_drift
    from harness.drift import host as host_drift
    from harness.drift import pci as pci_drift
    from harness.drift import policy
    from harness.drift import smbios as smbios_drift
    from harness.drift import uefi as uefi_drift
    from harness.fingerprint import acpi, cpuid, e820, host, pci, smbios, uefi

    for category in (
        Category("pci", "PCI", (pci.DEVICES,), pci.decode, pci_drift.compare, policy.PCI),
        Category("cpuid", "CPUID", (cpuid.CPU_DIR,), cpuid.decode, cpuid_drift.compare, policy.CPUID),
        Category("acpi", "ACPI", (acpi.TABLES,), acpi.decode, acpi_drift.compare, policy.ACPI),
        Category("smbios", "SMBIOS", (smbios.ENTRY_POINT_FILE, smbios.TABLE_FILE), smbios.decode,
                 smbios_drift.compare, policy.SMBIOS),
        Category("e820", "memory map (e820)", (str(e820.MEMMAP),), e820.decode, e820_drift.compare, policy.E820),
        Category("uefi", "UEFI (Secure Boot, configuration tables, memory map)", (str(uefi.EFI),), uefi.decode,
                 uefi_drift.compare, policy.UEFI),
        Category("migration", "live migration", (host.MIGRATION,), host.decode_migration,
                 host_drift.compare_migration, policy.MIGRATION, host_side=True),
        Category("vmstate", "migration schema (vmstate)", (host.VMSTATE,), host.decode_vmstate,
                 host_drift.compare_vmstate, policy.VMSTATE, host_side=True),
        Category("props", "device properties", (host.PROPS,), host.decode_props, host_drift.compare_props,
                 policy.PROPS, host_side=True),
        Category("hyperv", "Hyper-V enlightenments (vCPU hv-* properties)", (host.PROPS,), host.decode_hyperv,
                 host_drift.compare_hyperv, policy.HYPERV, host_side=True),
    ):
        _REGISTRY.setdefault(category.name, category)


def registry() -> dict[str, Category]:
    """Every registered category by name, in registration order (the built-in ten first)."""
    if not _REGISTRY:
        _builtins()
    return _REGISTRY


def names() -> tuple[str, ...]:
    return tuple(registry())


def guest_names() -> tuple[str, ...]:
    """The guest-side categories: always in a fingerprint, decoded from a capture's raw/."""
    return tuple(name for name, c in registry().items() if not c.host_side)


def host_names() -> tuple[str, ...]:
    """The host-side categories (only in runs that collected them)."""
    return tuple(name for name, c in registry().items() if c.host_side)


def get(name: str) -> Category:
    try:
        return registry()[name]
    except KeyError:
        raise KeyError(f"unknown category {name!r} (known: {', '.join(names())})") from None


def register(category: Category) -> None:
    reg = registry()
    if category.name in reg:
        raise ValueError(f"category {category.name!r} is already registered")
    reg[category.name] = category


def unregister(name: str) -> None:
    registry().pop(name, None)


@contextmanager
def registered(category: Category) -> Iterator[Category]:
    """`category` registered for the duration of a with-block (tests, plugins)."""
    register(category)
    try:
        yield category
    finally:
        unregister(category.name)


__all__ = ["Category", "Comparer", "Decoder", "get", "guest_names", "host_names", "names", "register", "registered",
           "registry", "unregister"]
