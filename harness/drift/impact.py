"""Guest impact: what Windows and Linux do about a drift. ONE table, first matching row wins.

Levels, in order:

    none        no guest reads it, or reads it without reacting
    driver      a bound driver (or the OS's CPU, memory or ACPI code) sees a changed capability,
                resource or behaviour; no new device
    device      a device appears, disappears or changes hardware/compatible ID: a new devnode
                and driver install (Windows), a rebind or another module (Linux)
    activation  Windows only: a component of the hardware identity Windows activation weighs
                changed (SMBIOS system/baseboard identity and UUID, ACPI OEM IDs for OEM
                activation, CPU model, display/storage/network adapter IDs)
    recovery    Windows only: BitLocker recovery at the next boot (worse than reactivation: the
                48-digit recovery key is needed before Windows starts): a measurement the TPM
                protector is sealed to changed (Secure Boot state or key databases: PCR 7; the
                firmware build: PCR 0 without PCR 7 binding), or the TPM itself is gone

Rows are matched like the severity policy (harness/drift/policy.py): category, entry glob (the
drift's entry key without anything run-specific: `DSDT`, `1/0`, `0x00000001/0x0`,
`0000:00:03.0`), path glob, and a facet glob: for ACPI namespace devices how the guest
identifies them (`hid`, `adr`, `bare`: harness/drift/acpi.py `identity_facet`), for PCI
functions the adapter kind Windows activation hashes (`display`, `storage`, `network`, or
`other`). An unknown facet is "": the rows that lower a level name their facet, so without one
a drift gets the conservative row. Every row carries the reason and the source it rests on.

`impact_for(drift, facet)` is one drift's impact; `compare()` stores it on every Drift
(`assess`, which also sets the group id); `run_impact(drifts)` is a run's worst Windows and
Linux impact over its *unwaived* drifts (a waiver records that someone accepted the change, so
it does not count toward the run's impact; each waived drift still shows its own).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from harness.drift.acpi import identity_facet
from harness.drift.glob import glob_match
from harness.drift.model import Drift

Level = Literal["none", "driver", "device", "activation", "recovery"]
LEVELS: tuple[Level, ...] = ("none", "driver", "device", "activation", "recovery")
_RANK = {level: i for i, level in enumerate(LEVELS)}

# -- sources (cited by the rows) -------------------------------------------------------------------
MS_PCI_IDS = ("Microsoft Learn, 'Identifiers for PCI devices' (hardware IDs PCI\\VEN_&DEV_&SUBSYS_&REV_, "
              "compatible IDs PCI\\VEN_&CC_…): https://learn.microsoft.com/en-us/windows-hardware/drivers/"
              "install/identifiers-for-pci-devices")
MS_INSTANCE_ID = ("Microsoft Learn, 'Device instance ID' (PCI\\VEN_1000&DEV_0001&SUBSYS_00000000&REV_02\\1&08: "
                  "a changed ID is another devnode): https://learn.microsoft.com/windows-hardware/drivers/"
                  "install/device-instance-ids")
MS_ACPI_IDS = ("Microsoft Learn, 'Device management namespace objects' (Acpi.sys builds ACPI\\… device IDs "
               "from _HID/_CID/_UID): https://learn.microsoft.com/en-us/windows-hardware/drivers/bringup/"
               "device-management-namespace-objects")
MS_ACPI_FILTER = ("Microsoft Learn, 'Acpi.sys: the Windows ACPI driver' (a namespace device integrated on the "
                  "board gets an ACPI bus *filter* above its bus driver's PDO, others a PDO): "
                  "https://learn.microsoft.com/windows-hardware/drivers/kernel/acpi-driver")
MPA = ("Microsoft Product Activation for Windows XP, Technical Market Bulletin (Aug 2001) and T. Lopatic, "
       "'Inside Windows Product Activation' (tecchannel, 2001): the hardware hash has bit-fields for display "
       "adapter, SCSI and IDE adapter IDs, NIC MAC, RAM size, processor model string and serial, disk and "
       "volume serials: https://www.tecchannel.de/a/inside-windows-product-activation,401697,9")
MS_SLIC = ("Microsoft, 'Microsoft Software Licensing Tables (SLIC and MSDM)' (OEM Activation 2.0/3.0): "
           "https://learn.microsoft.com/previous-versions/windows/hardware/design/dn653305(v=vs.85); "
           "the OEM ID/table ID match requirement: QubesOS/qubes-issues#5279 and QEMU's -machine "
           "oem-id/oem-table-id (6.0)")
WIN_SMBIOS = ("Windows binds a digital licence to the system's SMBIOS identity: VM products keep the SMBIOS "
              "UUID across moves so that Windows stays activated (Parallels/vagrant-parallels#113, "
              "pr1ntf/iohyve#198, VMware KB 1541 'Changing or keeping a UUID for a moved virtual machine'); "
              "Windows computer hardware IDs (CHIDs) hash SMBIOS manufacturer, family, product, SKU, "
              "baseboard and BIOS fields for driver targeting")
LINUX_PCI = ("Linux: PCI drivers match struct pci_device_id (vendor, device, subvendor, subdevice, class) "
             "against MODALIAS=pci:vVVVVVVVVdDDDDDDDDsvSSSSSSSSsdSSSSSSSSbcBBscSSiII "
             "(include/linux/mod_devicetable.h; drivers/pci/pci-driver.c); the revision is not in it")
LINUX_ACPI = ("Linux: ACPI drivers match struct acpi_device_id on _HID and _CID "
              "(Documentation/firmware-guide/acpi/enumeration.rst); a node with only _ADR becomes the "
              "ACPI companion (firmware_node) of the PCI device at that address, never a device of its own "
              "(drivers/acpi/glue.c; commit fdad4e7a 'ACPI / scan: Prefer devices without _HID for _ADR "
              "matching')")
LINUX_CPU = ("Linux: CPU drivers match struct x86_cpu_id (vendor, family, model, feature) via "
             "MODALIAS=cpu:type:x86,venVVVVfamFFFFmodMMMM:feature:… (arch/x86/kernel/cpu/match.c, "
             "drivers/base/cpu.c)")
LINUX_DMI = ("Linux: quirks and platform drivers match struct dmi_system_id on DMI strings "
             "(MODALIAS=dmi:bvn…:bvr…:svn…:pn…; drivers/firmware/dmi-id.c)")
ACPI_SPEC = "ACPI 6.5 specification, §5.2 (system description tables) and §6.1 (_HID, _CID, _UID, _ADR)"
SMBIOS_SPEC = "DMTF DSP0134 SMBIOS Reference Specification 3.x, §5.2 (entry points) and §7 (structures)"
BITLOCKER = ("Microsoft Learn, 'BitLocker recovery overview' (recovery is triggered by changes to the boot "
             "configuration and firmware the TPM measures: Secure Boot policy, firmware updates, a TPM that "
             "was cleared or is missing): https://learn.microsoft.com/windows/security/operating-system-security/"
             "data-protection/bitlocker/recovery-overview; 'BitLocker Group Policy settings' (on UEFI with "
             "Secure Boot the TPM protector is bound to PCR 7 and 11; otherwise PCR 0, 2, 4, 11)")
TCG_PFP = ("TCG PC Client Platform Firmware Profile Specification 1.05, §3.3.4 (PCR 0: firmware code; PCR 7: "
           "SecureBoot, PK, KEK, db, dbx)")
UEFI_SPEC = "UEFI Specification 2.10, §32 (Secure Boot and driver signing) and §4.6 (configuration table)"
HIBERNATE = ("Linux arch/x86/power/hibernate.c (resume refuses an image whose e820 map differs); Windows "
             "resume from hibernation likewise needs the same memory map")


@dataclass(frozen=True)
class Impact:
    """What each guest does about one drift. `component` names the Windows activation component
    (or "" when the Windows level is not activation); `rule` is the table row's name."""

    windows: Level
    linux: Level
    why: str
    component: str = ""
    rule: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"windows": self.windows, "linux": self.linux, "why": self.why}


@dataclass(frozen=True)
class ImpactRule:
    name: str
    category: str
    path: str
    windows: Level
    linux: Level
    why: str
    source: str
    entry: str = "*"
    facet: str = "*"
    component: str = ""
    example: tuple[str, str, str] = ("", "", "")   # (entry, path, facet) this row, and no earlier one, decides

    def matches(self, category: str, entry: str, path: str, facet: str) -> bool:
        return (glob_match(self.category, category) and glob_match(self.entry, entry)
                and glob_match(self.path, path) and glob_match(self.facet, facet))

    def impact(self) -> Impact:
        return Impact(self.windows, self.linux, self.why,
                      self.component if self.windows in ("activation", "recovery") else "", self.name)


_CAPS = "{capabilities,extended_capabilities}"
_IDS = "{vendor,device,subsystem_vendor,subsystem_device,revision}"
_ADAPTERS = "{display,storage,network}"
_SYSTEM_IDENTITY = "fields.{manufacturer,product*,version,serial*,uuid,sku*,family,asset_tag,type}"

IMPACT: tuple[ImpactRule, ...] = (
    # -- every category ----------------------------------------------------------------------------
    ImpactRule("pointers", "*", "pointers.*", "none", "none",
               "Table addresses: where the firmware put things; the OS follows them.", ACPI_SPEC,
               example=("FACP", "pointers.dsdt", "")),
    ImpactRule("checksums", "*", "{checksum*,*.checksum*,*checksum_valid}", "none", "none",
               "Checksums follow from the bytes; they are checked, not bound to.", ACPI_SPEC,
               example=("DSDT", "header.checksum", "")),
    # -- pci ---------------------------------------------------------------------------------------
    ImpactRule("pci-adapter-presence", "pci", "(device)", "activation", "device",
               "A display, storage or network adapter appeared or disappeared: a new devnode and driver, "
               "and an adapter hardware ID Windows activation hashes.", f"{MPA}; {MS_INSTANCE_ID}; {LINUX_PCI}",
               facet=_ADAPTERS, component="adapter hardware ID (display, SCSI/IDE, network)",
               example=("0000:00:02.0", "(device)", "display")),
    ImpactRule("pci-presence", "pci", "(device)", "device", "device",
               "A PCI function appeared or disappeared: Windows creates (or loses) a devnode and installs "
               "a driver; Linux probes a driver by modalias.", f"{MS_INSTANCE_ID}; {LINUX_PCI}",
               example=("0000:00:05.0", "(device)", "other")),
    ImpactRule("pci-adapter-ids", "pci", _IDS, "activation", "device",
               "IDs of a display, storage or network adapter: its Windows hardware ID (hashed by "
               "activation) and device instance ID change.", f"{MPA}; {MS_PCI_IDS}; {LINUX_PCI}",
               facet=_ADAPTERS, component="adapter hardware ID (display, SCSI/IDE, network)",
               example=("0000:00:1f.2", "device", "storage")),
    ImpactRule("pci-ids", "pci", "{vendor,device}", "device", "device",
               "Vendor and device ID: every Windows hardware ID and the Linux modalias change; another "
               "driver (or none) binds.", f"{MS_PCI_IDS}; {LINUX_PCI}",
               example=("0000:00:05.0", "vendor", "other")),
    ImpactRule("pci-subsystem", "pci", "{subsystem_vendor,subsystem_device}", "device", "driver",
               "Subsystem IDs: in Windows' most specific hardware ID and its device instance ID (a new "
               "devnode, driver reinstalled); in the Linux modalias, but Linux ID tables rarely match on "
               "them (quirks and driver_data do).", f"{MS_PCI_IDS}; {MS_INSTANCE_ID}; {LINUX_PCI}",
               example=("0000:00:05.0", "subsystem_device", "other")),
    ImpactRule("pci-revision", "pci", "revision", "device", "driver",
               "Revision: REV_ is in Windows' hardware ID and device instance ID (a new devnode); not in "
               "the Linux modalias, drivers only test it for quirks.", f"{MS_PCI_IDS}; {MS_INSTANCE_ID}; {LINUX_PCI}",
               example=("0000:00:05.0", "revision", "other")),
    ImpactRule("pci-class", "pci", "{class,class.*}", "device", "device",
               "Class code: Windows' compatible IDs (CC_) and the Linux modalias (bc/sc/i); class drivers "
               "(AHCI, xHCI, VGA) bind by it.", f"{MS_PCI_IDS}; {LINUX_PCI}",
               example=("0000:00:05.0", "class.prog_if", "other")),
    ImpactRule("pci-header-type", "pci", "header_type", "device", "device",
               "Header type: endpoint or bridge, a different kind of function for the bus driver.",
               f"{MS_PCI_IDS}; {LINUX_PCI}", example=("0000:00:05.0", "header_type", "other")),
    ImpactRule("pci-rom", "pci", "rom_size", "none", "none",
               "Option ROM size: the firmware runs the ROM (iPXE, VGA BIOS); the OS drivers of QEMU's "
               "devices do not read it.", "PCI Local Bus 3.0 §6.3.1 (expansion ROM); " + LINUX_PCI,
               example=("0000:00:03.0", "rom_size", "network")),
    ImpactRule("pci-resources", "pci", "bars*", "driver", "driver",
               "BARs: the resources the bound driver maps; same device, other layout.", LINUX_PCI,
               example=("0000:00:05.0", "bars[1].size", "other")),
    ImpactRule("pci-capabilities", "pci", _CAPS + "[*]*", "driver", "driver",
               "Capabilities (MSI-X table size, MSI, PCIe, power management): how the bound driver sets "
               "the device up and how many interrupts it gets; the hardware IDs do not change.",
               f"{MS_PCI_IDS}; {LINUX_PCI}", example=("0000:00:05.0", "capabilities[MSI-X].fields.table_size", "other")),
    ImpactRule("pci-bus-numbers", "pci", "bridge.{primary,secondary,subordinate}", "none", "none",
               "Bridge bus numbers: the firmware's enumeration; the OS may renumber.", LINUX_PCI,
               example=("0000:00:1e.0", "bridge.secondary", "other")),
    ImpactRule("pci-other", "pci", "*", "driver", "driver",
               "Other config space (interrupt pin, status bits, undecoded bytes): what the bound driver "
               "reads; identity unchanged.", LINUX_PCI,
               example=("0000:00:05.0", "interrupt_pin", "other")),
    # -- cpuid -------------------------------------------------------------------------------------
    ImpactRule("cpu-count", "cpuid", "", "device", "device",
               "A vCPU appeared or disappeared: a processor device is added or removed.",
               f"{MS_ACPI_IDS}; {LINUX_CPU}", entry="vcpu", example=("vcpu", "", "")),
    ImpactRule("cpu-brand", "cpuid", "fields.brand_string*", "activation", "none",
               "Brand string: the processor model string Windows activation hashes; Linux only shows it.",
               MPA, entry="0x8000000{2,3,4}/*", component="processor model string",
               example=("0x80000002/0x0", "fields.brand_string", "")),
    ImpactRule("cpu-identity", "cpuid", "fields.{vendor,*family*,*model*}", "activation", "device",
               "Vendor, family, model: the processor model Windows activation hashes and its processor "
               "device ID; the Linux CPU modalias, so other CPU drivers bind (intel_idle, coretemp…).",
               f"{MPA}; {LINUX_CPU}", component="processor model",
               example=("0x00000001/0x0", "fields.model", "")),
    ImpactRule("cpu-stepping", "cpuid", "fields.stepping", "driver", "driver",
               "Stepping: errata and mitigation checks; not in the processor's device ID.", LINUX_CPU,
               example=("0x00000001/0x0", "fields.stepping", "")),
    ImpactRule("cpu-other", "cpuid", "*", "driver", "driver",
               "Feature bits, leaves, cache and topology: the kernel enables or tunes code paths (and "
               "Linux loads feature-matched modules); no device changes.", LINUX_CPU,
               example=("0x00000001/0x0", "ecx[15]", "")),
    # -- acpi --------------------------------------------------------------------------------------
    ImpactRule("acpi-tpm-presence", "acpi", "", "recovery", "driver",
               "The TPM2 table appeared or disappeared: without its TPM, BitLocker's TPM protector cannot "
               "unseal (recovery); Linux loses or gains its TPM driver.", f"{BITLOCKER}; {TCG_PFP}",
               entry="TPM2", component="TPM", example=("TPM2", "", "")),
    ImpactRule("acpi-licensing-tables", "acpi", "*", "activation", "none",
               "SLIC/MSDM: OEM activation's licensing tables; Linux ignores them.", MS_SLIC,
               entry="{SLIC,MSDM}", component="OEM activation table (SLIC/MSDM)",
               example=("MSDM", "", "")),
    ImpactRule("acpi-oem-ids", "acpi", "header.oem_{id,table_id}", "activation", "none",
               "OEM ID and OEM table ID of the RSDT/XSDT (the FADT stands for them: QEMU writes the same "
               "pair into every table and Linux does not export the RSDT/XSDT): OEM activation requires "
               "them to match the SLIC table's; Linux only quirks a few real vendors' IDs.",
               MS_SLIC, entry="{RSDT,XSDT,FACP}", component="ACPI OEM ID / OEM table ID (OEM activation)",
               example=("FACP", "header.oem_id", "")),
    ImpactRule("acpi-aml-table", "acpi", "", "device", "device",
               "A DSDT/SSDT appeared or disappeared: the namespace devices it declares come or go.",
               f"{MS_ACPI_IDS}; {LINUX_ACPI}", entry="{DSDT,SSDT*}", example=("SSDT1", "", "")),
    ImpactRule("acpi-table", "acpi", "", "driver", "driver",
               "Another ACPI table appeared or disappeared (HPET, WAET, MCFG…): the OS's timer, interrupt "
               "or PCI code uses it; no namespace device.", ACPI_SPEC, example=("HPET", "", "")),
    ImpactRule("acpi-companion", "acpi", "(device)", "driver", "driver",
               "A node without _HID/_CID (only _ADR, or nothing), nor any child with one: the ACPI "
               "companion of a PCI function. Windows attaches its ACPI filter to the existing PCI device "
               "(no new devnode); Linux binds it as that device's firmware node. The driver sees its "
               "methods (_DSM, _EJ0, _PRW, _S0W).", f"{MS_ACPI_FILTER}; {LINUX_ACPI}",
               facet="{adr,bare}", example=("DSDT", "(device)", "adr")),
    ImpactRule("acpi-device", "acpi", "(device)", "device", "device",
               "A namespace device with a _HID/_CID (or children with one) appeared or disappeared: "
               "Acpi.sys creates a PDO for it, Linux an acpi_device drivers match on.",
               f"{MS_ACPI_IDS}; {LINUX_ACPI}", example=("DSDT", "(device)", "hid")),
    ImpactRule("acpi-hid", "acpi", "{hid,cid}", "device", "device",
               "_HID/_CID: the ACPI\\… hardware and compatible IDs, and what acpi_device_id matches.",
               f"{MS_ACPI_IDS}; {LINUX_ACPI}", example=("DSDT", "hid", "hid")),
    ImpactRule("acpi-uid", "acpi", "uid", "device", "driver",
               "_UID: the instance part of Windows' device instance ID (ACPI\\PNP0501\\1): a new devnode; "
               "Linux drivers use it to name instances.", f"{MS_ACPI_IDS}; {MS_INSTANCE_ID}; {LINUX_ACPI}",
               example=("DSDT", "uid", "hid")),
    ImpactRule("acpi-adr-ignored", "acpi", "adr", "none", "none",
               "_ADR of a device that has a _HID: the _HID identifies it, _ADR is ignored (the ACPI spec "
               "makes them exclusive; Linux matches _ADR only on nodes without _HID).",
               f"{ACPI_SPEC}; {LINUX_ACPI}", facet="hid", example=("DSDT", "adr", "hid")),
    ImpactRule("acpi-adr", "acpi", "adr", "driver", "driver",
               "_ADR of a companion node: it now describes another PCI function, whose driver gets its "
               "ACPI methods; no device appears.", f"{MS_ACPI_FILTER}; {LINUX_ACPI}",
               example=("DSDT", "adr", "adr")),
    ImpactRule("acpi-tooling", "acpi", "header.creator_*", "none", "none",
               "Creator ID and revision: the tool that built the table.", ACPI_SPEC,
               example=("DSDT", "header.creator_revision", "")),
    ImpactRule("acpi-other", "acpi", "*", "driver", "driver",
               "AML methods, table revision, FADT flags, MADT entries: behaviour the OS's ACPI code or a "
               "bound driver runs; no identity.", ACPI_SPEC, example=("DSDT", "asl", "adr")),
    # -- smbios ------------------------------------------------------------------------------------
    ImpactRule("smbios-entry-point", "smbios", "kind", "activation", "none",
               "Entry point kind: a 3.x-only entry point hides every table from older Windows, and with "
               "them the system identity; Linux reads both kinds.", f"{SMBIOS_SPEC}; {WIN_SMBIOS}",
               entry="entry_point", component="SMBIOS tables (entry point)",
               example=("entry_point", "kind", "")),
    ImpactRule("smbios-identity-structure", "smbios", "", "activation", "driver",
               "A system, baseboard or chassis structure appeared or disappeared: the identity Windows "
               "binds its licence to; Linux DMI matches.", f"{WIN_SMBIOS}; {LINUX_DMI}",
               entry="{1,2,3}/*", component="SMBIOS system/baseboard/chassis identity",
               example=("1/0", "", "")),
    ImpactRule("smbios-identity", "smbios", _SYSTEM_IDENTITY, "activation", "driver",
               "System, baseboard, chassis identity (manufacturer, product, version, serial, UUID, SKU, "
               "family): what Windows binds its licence to; Linux DMI quirks and modules match it.",
               f"{WIN_SMBIOS}; {LINUX_DMI}", entry="{1,2,3}/*",
               component="SMBIOS system/baseboard/chassis identity", example=("1/0", "fields.manufacturer", "")),
    ImpactRule("smbios-handles", "smbios", "{handle,fields.*handle*}", "none", "none",
               "Structure handles: allocated in table order.", SMBIOS_SPEC, example=("4/0", "handle", "")),
    ImpactRule("smbios-bios", "smbios", "*", "driver", "driver",
               "BIOS vendor, version, date: Windows' computer hardware IDs (driver and firmware targeting) "
               "and Linux DMI quirks match them.", f"{WIN_SMBIOS}; {LINUX_DMI}", entry="0/*",
               example=("0/0", "fields.bios_version", "")),
    ImpactRule("smbios-informational", "smbios", "*", "none", "none",
               "Processor, memory device and memory array structures: informational; the OS reads the "
               "CPU through CPUID and sizes memory from the firmware memory map.", SMBIOS_SPEC,
               entry="{4,16,17,19}/*", example=("4/0", "fields.max_speed", "")),
    ImpactRule("smbios-other", "smbios", "*", "driver", "driver",
               "Other SMBIOS structures and fields: tools and DMI matches may read them.", LINUX_DMI,
               example=("32/0", "fields.status", "")),
    # -- uefi --------------------------------------------------------------------------------------
    ImpactRule("uefi-secure-boot", "uefi", "*", "recovery", "none",
               "Secure Boot state: PCR 7 changes, so BitLocker (bound to PCR 7 on UEFI with Secure Boot) "
               "asks for its recovery key; Linux boots on (a PCR 7-sealed LUKS key would not unseal).",
               f"{BITLOCKER}; {TCG_PFP}", entry="secure_boot", component="Secure Boot state (PCR 7)",
               example=("secure_boot", "SecureBoot", "")),
    ImpactRule("uefi-keys", "uefi", "*", "recovery", "none",
               "PK, KEK, db or dbx: PCR 7 measures them, so BitLocker asks for its recovery key; a db or "
               "dbx change also decides whether the boot loader may run at all.",
               f"{BITLOCKER}; {TCG_PFP}; {UEFI_SPEC}", entry="keys/*",
               component="Secure Boot key database (PCR 7)", example=("keys/dbx", "sha256", "")),
    ImpactRule("uefi-firmware", "uefi", "*", "recovery", "none",
               "Another firmware build (vendor, revision): PCR 0 measures the firmware code, so BitLocker "
               "without PCR 7 binding asks for its recovery key (with PCR 7 binding it does not).",
               f"{BITLOCKER}; {TCG_PFP}", entry="firmware", component="firmware measurement (PCR 0)",
               example=("firmware", "revision", "")),
    ImpactRule("uefi-other", "uefi", "*", "driver", "driver",
               "Configuration tables and the runtime part of the UEFI memory map: what the OS's EFI code "
               "uses (runtime services, the TCG event log); no identity.", f"{UEFI_SPEC}; {HIBERNATE}",
               example=("memmap", "ranges[1].start", "")),
    # -- hyperv ------------------------------------------------------------------------------------
    ImpactRule("hyperv", "hyperv", "*", "driver", "driver",
               "Hyper-V enlightenments and ids (KVM only): the paravirtual interfaces Windows' kernel and "
               "Linux's hyperv code use (timers, IPIs, TLB flush, synthetic interrupts); no device.",
               "QEMU docs/system/i386/hyperv.rst (the hv-* flags and the CPUID leaves they set); Microsoft "
               "Hypervisor Top Level Functional Specification (the 0x40000000 leaves)",
               example=("Skylake-Client-v4-x86_64-cpu", "hv-spinlocks", "")),
    # -- e820 --------------------------------------------------------------------------------------
    ImpactRule("e820", "e820", "*", "driver", "driver",
               "Memory map: the kernel lays itself out in it, and resume from hibernation needs the same "
               "map; RAM size counts for activation only across a size bucket, which a layout change "
               "does not cross.", f"{HIBERNATE}; {MPA}", example=("map", "ranges[2].end", "")),
    # -- anything else -----------------------------------------------------------------------------
    ImpactRule("unknown", "*", "*", "driver", "driver",
               "Not named above: assume a bound driver may notice (conservative).", "qabi default",
               example=("", "", "")),
)


def impact_markdown() -> str:
    """The impact table as Markdown, for the README's "How to read a drift" (generated)."""
    lines = ["| row | category | entry | path | facet | Windows | Linux | why | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in IMPACT:
        code = [r.name, r.category, r.entry, r.path or '""', r.facet, r.windows, r.linux]
        cells = [f"`{c}`" for c in code] + [r.why, r.source]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def rule_for(category: str, entry: str, path: str, facet: str = "") -> ImpactRule:
    """The first row of IMPACT that matches."""
    for rule in IMPACT:
        if rule.matches(category, entry, path, facet):
            return rule
    raise AssertionError("IMPACT ends with a catch-all row")  # pragma: no cover


def entry_of(drift: Drift) -> str:
    """The entry key the tables match on, from the drift's key: `DSDT \\_SB.X` → `DSDT`,
    `1/0x00000001/0x0` → `0x00000001/0x0`, `vcpu 1` → `vcpu`."""
    key = drift.key
    if drift.category == "acpi":
        return key.split(" ", 1)[0]
    if drift.category == "cpuid":
        return "vcpu" if key.startswith("vcpu") else "/".join(key.split("/")[-2:])
    return key


def impact_for(drift: Drift, facet: str = "") -> Impact:
    """One drift's impact; `facet` as `facet_of` computes it ("" = unknown: conservative)."""
    return rule_for(drift.category, entry_of(drift), drift.path, facet).impact()


# -- facets ------------------------------------------------------------------------------------------

_ADAPTER_CLASSES = {0x01: "storage", 0x02: "network", 0x03: "display"}


def _pci_facet(entry: Any) -> str:
    if not isinstance(entry, Mapping):
        return ""
    cls = entry.get("class")
    base = cls.get("base") if isinstance(cls, Mapping) else None
    try:
        code = int(base, 16) if isinstance(base, str) else int(base) if isinstance(base, int) else None
    except ValueError:
        code = None
    return "" if code is None else _ADAPTER_CLASSES.get(code, "other")


def facet_of(drift: Drift, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> str:
    """The facet of a drift, looked up in the two fingerprints it came from ("" when unknown)."""
    sides = [fp for fp in (new, old) if isinstance(fp, Mapping)]
    if drift.category == "pci":
        for fp in sides:
            facet = _pci_facet((fp.get("pci") or {}).get(drift.key))
            if facet:
                return facet
        return ""
    if drift.category == "acpi" and " " in drift.key:
        table, path = drift.key.split(" ", 1)
        facets = []
        for fp in sides:
            devices = ((fp.get("acpi") or {}).get(table) or {}).get("devices")
            if isinstance(devices, Mapping):
                facets.append(identity_facet(devices, path, subtree=drift.path == "(device)"))
        if "hid" in facets:
            return "hid"
        return next((f for f in facets if f), "")
    return ""


# -- groups: the same change on several subjects -------------------------------------------------------

def _own_name(drift: Drift) -> str | None:
    """The name a change may mention of its own subject: an ACPI device's last name segment."""
    if drift.category == "acpi" and " " in drift.key:
        path = drift.key.split(" ", 1)[1]
        return path.rsplit(".", 1)[-1].lstrip("\\") or None
    return None


_SLOT_NUMBER = re.compile(r"(Name\s*\(\s*\w*SUN\w*\s*,\s*)[^)]+")


def _anonymous(text: str, drift: Drift) -> str:
    """`text` with the subject's own name (full path and last segment) and its slot number
    (`Name (_SUN, 0x03)`, QEMU's `Name (ASUN, 0x03)`) replaced."""
    text = _SLOT_NUMBER.sub(r"\1<sun>", text)
    if " " in drift.key:
        text = text.replace(drift.key.split(" ", 1)[1], "<path>")
    name = _own_name(drift)
    if name:
        text = re.sub(rf"(?<![0-9A-Za-z_]){re.escape(name)}_*(?![0-9A-Za-z_])", "<name>", text)
    return text


def _changed_lines(old: str, new: str) -> list[str]:
    import difflib

    a, b = old.splitlines(), new.splitlines()
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            out += ["-" + line.strip() for line in a[i1:i2]] + ["+" + line.strip() for line in b[j1:j2]]
    return out


def change_signature(drift: Drift) -> str:
    """What makes two drifts the same change: category, path, kind, severity, waiver, impact, and
    old → new — for multi-line text (ASL) the changed lines only, with the subject's own name
    and slot number taken out. The subject is not part of it (nor its entry, except a CPUID
    leaf: the same register bit of two leaves is two features)."""
    if isinstance(drift.old, str) and isinstance(drift.new, str) and ("\n" in drift.old or "\n" in drift.new):
        values: Any = [_anonymous(line, drift) for line in _changed_lines(drift.old, drift.new)]
    else:
        values = [_anonymous(json.dumps(v, sort_keys=True, default=str), drift) for v in (drift.old, drift.new)]
    impact = drift.impact.as_dict() if drift.impact is not None else None
    leaf = entry_of(drift) if drift.category == "cpuid" else ""  # a register bit means nothing without its leaf
    return json.dumps([drift.category, leaf, drift.path, drift.change, drift.severity, drift.waived, impact, values],
                      sort_keys=True, default=str)


def group_id(drift: Drift) -> str:
    """A short, deterministic id of the drift's change signature."""
    return hashlib.sha256(change_signature(drift).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DriftGroup:
    """Drifts that are the same change on several subjects (one member when it is not shared)."""

    id: str
    members: tuple[Drift, ...]

    @property
    def representative(self) -> Drift:
        return self.members[0]

    @property
    def subjects(self) -> tuple[str, ...]:
        return tuple(d.subject for d in self.members)

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.id, "count": len(self.members), "subjects": list(self.subjects),
                "representative": self.representative.as_dict()}


def groups(drifts: Iterable[Drift]) -> list[DriftGroup]:
    """Drifts by group, in the order of each group's first member (drifts without a group id are
    given one here)."""
    members: dict[str, list[Drift]] = {}
    for d in drifts:
        members.setdefault(d.group or group_id(d), []).append(d)
    return [DriftGroup(gid, tuple(ds)) for gid, ds in members.items()]


# -- a comparison's drifts and a run ------------------------------------------------------------------

def assess(drifts: Sequence[Drift], old: Mapping[str, Any] | None = None,
           new: Mapping[str, Any] | None = None) -> list[Drift]:
    """The drifts with `impact` (from the two fingerprints they came from) and `group` set."""
    out = []
    for d in drifts:
        d = replace(d, impact=impact_for(d, facet_of(d, old, new)))
        out.append(replace(d, group=group_id(d)))
    return out


def worst(levels: Iterable[str]) -> Level:
    return max((lv for lv in levels if lv in _RANK), key=_RANK.__getitem__, default="none")  # type: ignore[arg-type]


def _component(d: Drift, os_name: str) -> str:
    assert d.impact is not None
    where = f"{d.subject} {d.path}".rstrip()
    if os_name == "windows" and d.impact.windows in ("activation", "recovery") and d.impact.component:
        return f"{d.impact.component}: {where}"
    return where


def run_impact(drifts: Iterable[Drift]) -> dict[str, dict[str, Any]]:
    """A run's impact: per OS the worst level of its unwaived drifts and the components at that
    level (one per group: "subject path", with "(+N more)" for a shared change; for activation
    prefixed with the activation component). Waived drifts do not count."""
    assessed = [d if d.impact is not None else replace(d, impact=impact_for(d)) for d in drifts if d.waived is None]
    out: dict[str, dict[str, Any]] = {}
    for os_name in ("windows", "linux"):
        def level(d: Drift, os_name: str = os_name) -> str:
            assert d.impact is not None
            return str(getattr(d.impact, os_name))
        top = worst(level(d) for d in assessed)
        components: list[str] = []
        if top != "none":
            for g in groups(d for d in assessed if level(d) == top):
                text = _component(g.representative, os_name)
                if len(g.members) > 1:
                    text += f" (+{len(g.members) - 1} more)"
                if text not in components:
                    components.append(text)
        out[os_name] = {"level": top, "components": components}
    return out
