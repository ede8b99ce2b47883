"""SMBIOS: the entry point and every structure of the table the guest's firmware left in memory
(`/sys/firmware/dmi/tables/smbios_entry_point` and `DMI`), decoded per the DMTF SMBIOS Reference
Specification (DSP0134).

Output (SCHEMA.md, "smbios"):

- `entry_point`: kind (`2.x` for the 32-bit `_SM_` anchor, `3.x` for the 64-bit `_SM3_` one,
  `legacy` for a bare `_DMI_`), version, table length (3.x: the table's maximum size), maximum
  structure size (3.x has none in the entry point: the largest structure found), structure count
  (null for 3.x), checksum validity; the table address only reflects allocation and so sits under
  `pointers`.
- one entry per structure, keyed `TYPE/INSTANCE` (the instance counts within a type, in table
  order): type, handle, formatted length, `fields` decoded for the types named in `DECODERS`
  (enumerations by their specification names, as dmidecode prints them; strings resolved, null
  for "no string"; sizes in bytes; handles as hex), the raw `strings`, `extra_hex` for formatted
  bytes past the fields this decoder knows, and for other types the formatted area as `hex`.

Malformed tables (a string index past the string set, a structure running past the table, a
missing double-NUL terminator, duplicate handles, no end-of-table structure, too many structures)
raise DecodeError. Decoding stops at the end-of-table structure (type 127).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import Blob, hx, read_raw
from harness.fingerprint.cpuid import signature

ENTRY_POINT_FILE = "sys/firmware/dmi/tables/smbios_entry_point"
TABLE_FILE = "sys/firmware/dmi/tables/DMI"
MAX_TABLE = 1 << 20
MAX_STRUCTURES = 4096
MAX_STRINGS = 255
END_OF_TABLE = 127

# Type names as dmidecode titles them (the specification's section names, shortened).
TYPE_NAMES: dict[int, str] = {
    0: "BIOS Information", 1: "System Information", 2: "Base Board Information",
    3: "Chassis Information", 4: "Processor Information", 5: "Memory Controller Information",
    6: "Memory Module Information", 7: "Cache Information", 8: "Port Connector Information",
    9: "System Slot Information", 10: "On Board Device Information", 11: "OEM Strings",
    12: "System Configuration Options", 13: "BIOS Language Information", 14: "Group Associations",
    15: "System Event Log", 16: "Physical Memory Array", 17: "Memory Device",
    18: "32-bit Memory Error Information", 19: "Memory Array Mapped Address",
    20: "Memory Device Mapped Address", 21: "Built-in Pointing Device", 22: "Portable Battery",
    23: "System Reset", 24: "Hardware Security", 25: "System Power Controls", 26: "Voltage Probe",
    27: "Cooling Device", 28: "Temperature Probe", 29: "Electrical Current Probe",
    30: "Out-of-band Remote Access", 31: "Boot Integrity Services Entry Point",
    32: "System Boot Information", 33: "64-bit Memory Error Information", 34: "Management Device",
    35: "Management Device Component", 36: "Management Device Threshold Data", 37: "Memory Channel",
    38: "IPMI Device Information", 39: "System Power Supply", 40: "Additional Information",
    41: "Onboard Device", 42: "Management Controller Host Interface", 43: "TPM Device",
    44: "Processor Additional Information", 45: "Firmware Inventory Information",
    46: "String Property", 126: "Inactive", 127: "End Of Table",
}

# Short structure names, used where one structure names another (chassis contained elements).
_SHORT_TYPE_NAMES = (
    "BIOS", "System", "Base Board", "Chassis", "Processor", "Memory Controller", "Memory Module",
    "Cache", "Port Connector", "System Slots", "On Board Devices", "OEM Strings",
    "System Configuration Options", "BIOS Language", "Group Associations", "System Event Log",
    "Physical Memory Array", "Memory Device", "32-bit Memory Error", "Memory Array Mapped Address",
    "Memory Device Mapped Address", "Built-in Pointing Device", "Portable Battery", "System Reset",
    "Hardware Security", "System Power Controls", "Voltage Probe", "Cooling Device",
    "Temperature Probe", "Electrical Current Probe", "Out-of-band Remote Access",
    "Boot Integrity Services", "System Boot", "64-bit Memory Error", "Management Device",
    "Management Device Component", "Management Device Threshold Data", "Memory Channel",
    "IPMI Device", "Power Supply", "Additional Information", "Onboard Device",
    "Management Controller Host Interface", "TPM Device", "Processor", "Firmware",
    "String Property",
)


def type_name(smbios_type: int) -> str:
    if smbios_type in TYPE_NAMES:
        return TYPE_NAMES[smbios_type]
    return "OEM-specific Type" if smbios_type >= 128 else "Unknown Type"


def _out_of_spec(code: int) -> str:
    return f"out of spec ({code:#04x})"


def _enum(table: dict[int, str], code: int) -> str:
    return table.get(code, _out_of_spec(code))


def _seq(first: int, *names: str) -> dict[int, str]:
    """{first: names[0], first + 1: names[1], ...}"""
    return {first + i: name for i, name in enumerate(names)}


def _bits(table: dict[int, str], value: int) -> list[str]:
    return [table[bit] for bit in sorted(table) if value >> bit & 1]


# -- enumerations (DSP0134 section numbers as of 3.7) ---------------------------------------------

_BIOS_CHARACTERISTICS = _seq(
    2, "Unknown", "BIOS characteristics not supported", "ISA is supported", "MCA is supported",
    "EISA is supported", "PCI is supported", "PC Card (PCMCIA) is supported", "PNP is supported",
    "APM is supported", "BIOS is upgradeable", "BIOS shadowing is allowed", "VLB is supported",
    "ESCD support is available", "Boot from CD is supported", "Selectable boot is supported",
    "BIOS ROM is socketed", "Boot from PC Card (PCMCIA) is supported", "EDD is supported",
    "Japanese floppy for NEC 9800 1.2 MB is supported (int 13h)",
    "Japanese floppy for Toshiba 1.2 MB is supported (int 13h)",
    "5.25\"/360 kB floppy services are supported (int 13h)",
    "5.25\"/1.2 MB floppy services are supported (int 13h)",
    "3.5\"/720 kB floppy services are supported (int 13h)",
    "3.5\"/2.88 MB floppy services are supported (int 13h)",
    "Print screen service is supported (int 5h)", "8042 keyboard services are supported (int 9h)",
    "Serial services are supported (int 14h)", "Printer services are supported (int 17h)",
    "CGA/mono video services are supported (int 10h)", "NEC PC-98")  # 7.1.1
_BIOS_CHARACTERISTICS_X1 = _seq(
    0, "ACPI is supported", "USB legacy is supported", "AGP is supported", "I2O boot is supported",
    "LS-120 boot is supported", "ATAPI Zip drive boot is supported", "IEEE 1394 boot is supported",
    "Smart battery is supported")  # 7.1.2.1
_BIOS_CHARACTERISTICS_X2 = _seq(
    0, "BIOS boot specification is supported", "Function key-initiated network boot is supported",
    "Targeted content distribution is supported", "UEFI is supported",
    "System is a virtual machine", "Manufacturing mode is supported",
    "Manufacturing mode is enabled")  # 7.1.2.2
_WAKE_UP_TYPES = _seq(0, "Reserved", "Other", "Unknown", "APM Timer", "Modem Ring", "LAN Remote",
                      "Power Switch", "PCI PME#", "AC Power Restored")  # 7.2.2
_BOARD_FEATURES = _seq(0, "Board is a hosting board", "Board requires at least one daughter board",
                       "Board is removable", "Board is replaceable", "Board is hot swappable")  # 7.3.1
_BOARD_TYPES = _seq(1, "Unknown", "Other", "Server Blade", "Connectivity Switch",
                    "System Management Module", "Processor Module", "I/O Module", "Memory Module",
                    "Daughter Board", "Motherboard", "Processor+Memory Module",
                    "Processor+I/O Module", "Interconnect Board")  # 7.3.2
_CHASSIS_TYPES = _seq(
    1, "Other", "Unknown", "Desktop", "Low Profile Desktop", "Pizza Box", "Mini Tower", "Tower",
    "Portable", "Laptop", "Notebook", "Hand Held", "Docking Station", "All In One", "Sub Notebook",
    "Space-saving", "Lunch Box", "Main Server Chassis", "Expansion Chassis", "Sub Chassis",
    "Bus Expansion Chassis", "Peripheral Chassis", "RAID Chassis", "Rack Mount Chassis",
    "Sealed-case PC", "Multi-system", "CompactPCI", "AdvancedTCA", "Blade", "Blade Enclosing",
    "Tablet", "Convertible", "Detachable", "IoT Gateway", "Embedded PC", "Mini PC",
    "Stick PC")  # 7.4.1
_CHASSIS_STATES = _seq(1, "Other", "Unknown", "Safe", "Warning", "Critical",
                       "Non-recoverable")  # 7.4.2
_CHASSIS_SECURITY = _seq(1, "Other", "Unknown", "None", "External Interface Locked Out",
                         "External Interface Enabled")  # 7.4.3
_PROCESSOR_TYPES = _seq(1, "Other", "Unknown", "Central Processor", "Math Processor",
                        "DSP Processor", "Video Processor")  # 7.5.1
_PROCESSOR_FAMILIES: dict[int, str] = {  # 7.5.2
    **_seq(0x01, "Other", "Unknown", "8086", "80286", "80386", "80486", "8087", "80287", "80387",
           "80487", "Pentium", "Pentium Pro", "Pentium II", "Pentium MMX", "Celeron",
           "Pentium II Xeon", "Pentium III", "M1", "M2", "Celeron M", "Pentium 4 HT", "Intel"),
    **_seq(0x18, "Duron", "K5", "K6", "K6-2", "K6-3", "Athlon", "AMD29000", "K6-2+", "Power PC",
           "Power PC 601", "Power PC 603", "Power PC 603+", "Power PC 604", "Power PC 620",
           "Power PC x704", "Power PC 750", "Core Duo", "Core Duo Mobile", "Core Solo Mobile",
           "Atom", "Core M", "Core m3", "Core m5", "Core m7", "Alpha", "Alpha 21064",
           "Alpha 21066", "Alpha 21164", "Alpha 21164PC", "Alpha 21164a", "Alpha 21264",
           "Alpha 21364", "Turion II Ultra Dual-Core Mobile M", "Turion II Dual-Core Mobile M",
           "Athlon II Dual-Core M", "Opteron 6100", "Opteron 4100", "Opteron 6200", "Opteron 4200",
           "FX", "MIPS", "MIPS R4000", "MIPS R4200", "MIPS R4400", "MIPS R4600", "MIPS R10000",
           "C-Series", "E-Series", "A-Series", "G-Series", "Z-Series", "R-Series", "Opteron 4300",
           "Opteron 6300", "Opteron 3300", "FirePro", "SPARC", "SuperSPARC", "MicroSPARC II",
           "MicroSPARC IIep", "UltraSPARC", "UltraSPARC II", "UltraSPARC IIi", "UltraSPARC III",
           "UltraSPARC IIIi"),
    **_seq(0x60, "68040", "68xxx", "68000", "68010", "68020", "68030", "Athlon X4",
           "Opteron X1000", "Opteron X2000", "Opteron A-Series", "Opteron X3000", "Zen"),
    0x70: "Hobbit", 0x78: "Crusoe TM5000", 0x79: "Crusoe TM3000", 0x7A: "Efficeon TM8000",
    0x80: "Weitek",
    **_seq(0x82, "Itanium", "Athlon 64", "Opteron", "Sempron", "Turion 64", "Dual-Core Opteron",
           "Athlon 64 X2", "Turion 64 X2", "Quad-Core Opteron", "Third-Generation Opteron",
           "Phenom FX", "Phenom X4", "Phenom X2", "Athlon X2", "PA-RISC", "PA-RISC 8500",
           "PA-RISC 8000", "PA-RISC 7300LC", "PA-RISC 7200", "PA-RISC 7100LC", "PA-RISC 7100"),
    **_seq(0xA0, "V30", "Quad-Core Xeon 3200", "Dual-Core Xeon 3000", "Quad-Core Xeon 5300",
           "Dual-Core Xeon 5100", "Dual-Core Xeon 5000", "Dual-Core Xeon LV", "Dual-Core Xeon ULV",
           "Dual-Core Xeon 7100", "Quad-Core Xeon 5400", "Quad-Core Xeon", "Dual-Core Xeon 5200",
           "Dual-Core Xeon 7200", "Quad-Core Xeon 7300", "Quad-Core Xeon 7400",
           "Multi-Core Xeon 7400", "Pentium III Xeon", "Pentium III Speedstep", "Pentium 4",
           "Xeon", "AS400", "Xeon MP", "Athlon XP", "Athlon MP", "Itanium 2", "Pentium M",
           "Celeron D", "Pentium D", "Pentium EE", "Core Solo"),
    **_seq(0xBF, "Core 2 Duo", "Core 2 Solo", "Core 2 Extreme", "Core 2 Quad",
           "Core 2 Extreme Mobile", "Core 2 Duo Mobile", "Core 2 Solo Mobile", "Core i7",
           "Dual-Core Celeron", "IBM390", "G4", "G5", "ESA/390 G6", "z/Architecture", "Core i5",
           "Core i3", "Core i9"),
    **_seq(0xD2, "C7-M", "C7-D", "C7", "Eden", "Multi-Core Xeon", "Dual-Core Xeon 3xxx",
           "Quad-Core Xeon 3xxx", "Nano", "Dual-Core Xeon 5xxx", "Quad-Core Xeon 5xxx"),
    **_seq(0xDD, "Dual-Core Xeon 7xxx", "Quad-Core Xeon 7xxx", "Multi-Core Xeon 7xxx",
           "Multi-Core Xeon 3400"),
    **_seq(0xE4, "Opteron 3000", "Sempron II", "Embedded Opteron Quad-Core", "Phenom Triple-Core",
           "Turion Ultra Dual-Core Mobile", "Turion Dual-Core Mobile", "Athlon Dual-Core",
           "Sempron SI", "Phenom II", "Athlon II", "Six-Core Opteron", "Sempron M"),
    0xFA: "i860", 0xFB: "i960",
    0x100: "ARMv7", 0x101: "ARMv8", 0x102: "ARMv9", 0x104: "SH-3", 0x105: "SH-4", 0x118: "ARM",
    0x119: "StrongARM", 0x12C: "6x86", 0x12D: "MediaGX", 0x12E: "MII", 0x140: "WinChip",
    0x15E: "DSP", 0x1F4: "Video Processor", 0x200: "RV32", 0x201: "RV64", 0x202: "RV128",
    0x258: "LoongArch", 0x259: "Loongson 1", 0x25A: "Loongson 2", 0x25B: "Loongson 3",
}
_PROCESSOR_STATUS = {0: "Unknown", 1: "Enabled", 2: "Disabled By User", 3: "Disabled By BIOS",
                     4: "Idle", 7: "Other"}  # 7.5.1 status
_PROCESSOR_UPGRADES = _seq(  # 7.5.5
    1, "Other", "Unknown", "Daughter Board", "ZIF Socket", "Replaceable Piggy Back", "None",
    "LIF Socket", "Slot 1", "Slot 2", "370-pin Socket", "Slot A", "Slot M", "Socket 423",
    "Socket A (Socket 462)", "Socket 478", "Socket 754", "Socket 940", "Socket 939",
    "Socket mPGA604", "Socket LGA771", "Socket LGA775", "Socket S1", "Socket AM2",
    "Socket F (1207)", "Socket LGA1366", "Socket G34", "Socket AM3", "Socket C32",
    "Socket LGA1156", "Socket LGA1567", "Socket PGA988A", "Socket BGA1288", "Socket rPGA988B",
    "Socket BGA1023", "Socket BGA1224", "Socket BGA1155", "Socket LGA1356", "Socket LGA2011",
    "Socket FS1", "Socket FS2", "Socket FM1", "Socket FM2", "Socket LGA2011-3", "Socket LGA1356-3",
    "Socket LGA1150", "Socket BGA1168", "Socket BGA1234", "Socket BGA1364", "Socket AM4",
    "Socket LGA1151", "Socket BGA1356", "Socket BGA1440", "Socket BGA1515", "Socket LGA3647-1",
    "Socket SP3", "Socket SP3r2", "Socket LGA2066", "Socket BGA1392", "Socket BGA1510",
    "Socket BGA1528", "Socket LGA4189", "Socket LGA1200", "Socket LGA4677", "Socket LGA1700",
    "Socket BGA1744", "Socket BGA1781", "Socket BGA1211", "Socket BGA2422", "Socket LGA1211",
    "Socket LGA2422", "Socket LGA5773", "Socket BGA5773")
_PROCESSOR_CHARACTERISTICS = _seq(1, "Unknown", "64-bit capable", "Multi-Core", "Hardware Thread",
                                  "Execute Protection", "Enhanced Virtualization",
                                  "Power/Performance Control", "128-bit Capable",
                                  "Arm64 SoC ID")  # 7.5.9
_VOLTAGES = {0: "5.0 V", 1: "3.3 V", 2: "2.9 V"}  # 7.5.4
# CPUID leaf 1 EDX, by the names Linux shows in /proc/cpuinfo (processor ID flags, 7.5.3).
_PROCESSOR_ID_FLAGS = {
    0: "fpu", 1: "vme", 2: "de", 3: "pse", 4: "tsc", 5: "msr", 6: "pae", 7: "mce", 8: "cx8",
    9: "apic", 11: "sep", 12: "mtrr", 13: "pge", 14: "mca", 15: "cmov", 16: "pat", 17: "pse36",
    18: "pn", 19: "clflush", 21: "dts", 22: "acpi", 23: "mmx", 24: "fxsr", 25: "sse", 26: "sse2",
    27: "ss", 28: "ht", 29: "tm", 31: "pbe",
}
_CACHE_LOCATIONS = {0: "Internal", 1: "External", 2: "Reserved", 3: "Unknown"}  # 7.8
_CACHE_MODES = {0: "Write Through", 1: "Write Back", 2: "Varies With Memory Address", 3: "Unknown"}
_SRAM_TYPES = _seq(0, "Other", "Unknown", "Non-burst", "Burst", "Pipeline Burst", "Synchronous",
                   "Asynchronous")  # 7.8.2
_CACHE_EC_TYPES = _seq(1, "Other", "Unknown", "None", "Parity", "Single-bit ECC",
                       "Multi-bit ECC")  # 7.8.3
_CACHE_SYSTEM_TYPES = _seq(1, "Other", "Unknown", "Instruction", "Data", "Unified")  # 7.8.4
_CACHE_ASSOCIATIVITY = _seq(1, "Other", "Unknown", "Direct Mapped", "2-way Set-associative",
                            "4-way Set-associative", "Fully Associative", "8-way Set-associative",
                            "16-way Set-associative", "12-way Set-associative",
                            "24-way Set-associative", "32-way Set-associative",
                            "48-way Set-associative", "64-way Set-associative",
                            "20-way Set-associative")  # 7.8.5
_SLOT_TYPES: dict[int, str] = {  # 7.10.1
    **_seq(0x01, "Other", "Unknown", "ISA", "MCA", "EISA", "PCI", "PC Card (PCMCIA)", "VLB",
           "Proprietary", "Processor Card", "Proprietary Memory Card", "I/O Riser Card", "NuBus",
           "PCI-66", "AGP", "AGP 2x", "AGP 4x", "PCI-X", "AGP 8x", "M.2 Socket 1-DP",
           "M.2 Socket 1-SD", "M.2 Socket 2", "M.2 Socket 3", "MXM Type I", "MXM Type II",
           "MXM Type III", "MXM Type III-HE", "MXM Type IV", "MXM 3.0 Type A", "MXM 3.0 Type B",
           "PCI Express 2 SFF-8639 (U.2)", "PCI Express 3 SFF-8639 (U.2)",
           "PCI Express Mini 52-pin with bottom-side keep-outs",
           "PCI Express Mini 52-pin without bottom-side keep-outs", "PCI Express Mini 76-pin",
           "PCI Express 4 SFF-8639 (U.2)", "PCI Express 5 SFF-8639 (U.2)", "OCP NIC 3.0 SFF",
           "OCP NIC 3.0 LFF", "OCP NIC Prior to 3.0"),
    0x30: "CXL FLexbus 1.0",
    **_seq(0xA0, "PC-98/C20", "PC-98/C24", "PC-98/E", "PC-98/Local Bus", "PC-98/Card",
           "PCI Express", "PCI Express x1", "PCI Express x2", "PCI Express x4", "PCI Express x8",
           "PCI Express x16", "PCI Express 2", "PCI Express 2 x1", "PCI Express 2 x2",
           "PCI Express 2 x4", "PCI Express 2 x8", "PCI Express 2 x16", "PCI Express 3",
           "PCI Express 3 x1", "PCI Express 3 x2", "PCI Express 3 x4", "PCI Express 3 x8",
           "PCI Express 3 x16"),
    **_seq(0xB8, "PCI Express 4", "PCI Express 4 x1", "PCI Express 4 x2", "PCI Express 4 x4",
           "PCI Express 4 x8", "PCI Express 4 x16", "PCI Express 5", "PCI Express 5 x1",
           "PCI Express 5 x2", "PCI Express 5 x4", "PCI Express 5 x8", "PCI Express 5 x16",
           "PCI Express 6+", "EDSFF E1", "EDSFF E3"),
}
_SLOT_WIDTHS = _seq(1, "Other", "Unknown", "8-bit", "16-bit", "32-bit", "64-bit", "128-bit", "x1",
                    "x2", "x4", "x8", "x12", "x16", "x32")  # 7.10.2
_SLOT_USAGES = _seq(1, "Other", "Unknown", "Available", "In Use", "Unavailable")  # 7.10.3
_SLOT_LENGTHS = _seq(1, "Other", "Unknown", "Short", "Long", "2.5\" drive form factor",
                     "3.5\" drive form factor")  # 7.10.4
_SLOT_CHARACTERISTICS_1 = _seq(0, "Unknown", "5.0 V is provided", "3.3 V is provided",
                               "Opening is shared", "PC Card-16 is supported",
                               "Cardbus is supported", "Zoom Video is supported",
                               "Modem ring resume is supported")  # 7.10.6
_SLOT_CHARACTERISTICS_2 = _seq(0, "PME signal is supported", "Hot-plug devices are supported",
                               "SMBus signal is supported", "PCIe slot bifurcation is supported",
                               "Async/surprise removal is supported",
                               "Flexbus slot, CXL 1.0 capable", "Flexbus slot, CXL 2.0 capable",
                               "Flexbus slot, CXL 3.0 capable")  # 7.10.7
_MEMORY_ARRAY_LOCATIONS = {  # 7.17.1
    **_seq(1, "Other", "Unknown", "System Board Or Motherboard", "ISA Add-on Card",
           "EISA Add-on Card", "PCI Add-on Card", "MCA Add-on Card", "PCMCIA Add-on Card",
           "Proprietary Add-on Card", "NuBus"),
    **_seq(0xA0, "PC-98/C20 Add-on Card", "PC-98/C24 Add-on Card", "PC-98/E Add-on Card",
           "PC-98/Local Bus Add-on Card", "CXL Add-on Card"),
}
_MEMORY_ARRAY_USES = _seq(1, "Other", "Unknown", "System Memory", "Video Memory", "Flash Memory",
                          "Non-volatile RAM", "Cache Memory")  # 7.17.2
_MEMORY_ARRAY_EC = _seq(1, "Other", "Unknown", "None", "Parity", "Single-bit ECC", "Multi-bit ECC",
                        "CRC")  # 7.17.3
_MEMORY_FORM_FACTORS = _seq(1, "Other", "Unknown", "SIMM", "SIP", "Chip", "DIP", "ZIP",
                            "Proprietary Card", "DIMM", "TSOP", "Row Of Chips", "RIMM", "SODIMM",
                            "SRIMM", "FB-DIMM", "Die")  # 7.18.1
_MEMORY_TYPES = _seq(1, "Other", "Unknown", "DRAM", "EDRAM", "VRAM", "SRAM", "RAM", "ROM", "Flash",
                     "EEPROM", "FEPROM", "EPROM", "CDRAM", "3DRAM", "SDRAM", "SGRAM", "RDRAM", "DDR",
                     "DDR2", "DDR2 FB-DIMM", "Reserved", "Reserved", "Reserved", "DDR3", "FBD2",
                     "DDR4", "LPDDR", "LPDDR2", "LPDDR3", "LPDDR4", "Logical non-volatile device",
                     "HBM", "HBM2", "DDR5", "LPDDR5", "HBM3")  # 7.18.2
_MEMORY_TYPE_DETAILS = _seq(1, "Other", "Unknown", "Fast-paged", "Static Column", "Pseudo-static",
                            "RAMBus", "Synchronous", "CMOS", "EDO", "Window DRAM", "Cache DRAM",
                            "Non-Volatile", "Registered (Buffered)", "Unbuffered (Unregistered)",
                            "LRDIMM")  # 7.18.3
_MEMORY_TECHNOLOGIES = _seq(1, "Other", "Unknown", "DRAM", "NVDIMM-N", "NVDIMM-F", "NVDIMM-P",
                            "Intel Optane DC persistent memory")  # 7.18.6
_MEMORY_OPERATING_MODES = _seq(1, "Other", "Unknown", "Volatile memory",
                               "Byte-accessible persistent memory",
                               "Block-accessible persistent memory")  # 7.18.7
_BOOT_STATUS = _seq(0, "No errors detected", "No bootable media", "Operating system failed to load",
                    "Firmware-detected hardware failure", "Operating system-detected hardware failure",
                    "User-requested boot", "System security violation", "Previously-requested image",
                    "System watchdog timer expired")  # 7.33.2


def _boot_status(code: int) -> str:
    if code in _BOOT_STATUS:
        return _BOOT_STATUS[code]
    if 128 <= code <= 191:
        return "OEM-specific"
    if code >= 192:
        return "Product-specific"
    return _out_of_spec(code)


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Structure:
    """One structure of the table: header, formatted area and string set."""

    type: int
    length: int
    handle: int
    offset: int                 # of the header, in the table
    strings: tuple[str, ...]


class _Fields:
    """Checked reads of one structure's formatted area; offsets are relative to the structure."""

    def __init__(self, table: Blob, s: Structure, version: tuple[int, int]) -> None:
        self.table = table
        self.s = s
        self.version = version
        self.out: dict[str, Any] = {}
        self.decoded = 4          # formatted bytes covered by decoded fields

    def has(self, offset: int, size: int = 1) -> bool:
        present = offset + size <= self.s.length
        if present:
            self.decoded = max(self.decoded, offset + size)
        return present

    def u8(self, offset: int) -> int:
        return self.table.u8(self.s.offset + offset)

    def u16(self, offset: int) -> int:
        return self.table.u16(self.s.offset + offset)

    def u32(self, offset: int) -> int:
        return self.table.u32(self.s.offset + offset)

    def u64(self, offset: int) -> int:
        return self.table.u64(self.s.offset + offset)

    def raw(self, offset: int, size: int) -> bytes:
        return self.table.bytes(self.s.offset + offset, size)

    def string_at(self, index: int, where: int) -> str | None:
        if index == 0:
            return None
        if index > len(self.s.strings):
            raise self.table.fail(self.s.offset + where,
                                  f"type {self.s.type} structure {self.s.handle:#06x}: string {index} "
                                  f"referenced, but the structure has {len(self.s.strings)} strings")
        return self.s.strings[index - 1]

    # field setters: each decodes one field if the structure is long enough to hold it
    def string(self, name: str, offset: int) -> None:
        if self.has(offset):
            self.out[name] = self.string_at(self.u8(offset), offset)

    def byte(self, name: str, offset: int) -> None:
        if self.has(offset):
            self.out[name] = self.u8(offset)

    def word(self, name: str, offset: int) -> None:
        if self.has(offset, 2):
            self.out[name] = self.u16(offset)

    def handle(self, name: str, offset: int) -> None:
        if self.has(offset, 2):
            self.out[name] = hx(self.u16(offset), 4)

    def enum(self, name: str, offset: int, table: dict[int, str]) -> None:
        if self.has(offset):
            self.out[name] = _enum(table, self.u8(offset))

    def flags(self, name: str, offset: int, size: int, table: dict[int, str]) -> None:
        if self.has(offset, size):
            value = int.from_bytes(self.raw(offset, size), "little")
            self.out[name] = _bits(table, value)


def _kb_or_64kb(value: int, flag_bit: int) -> int:
    """A size in 1 KB units, or in 64 KB units when `flag_bit` is set (cache sizes)."""
    if value >> flag_bit & 1:
        return (value & ((1 << flag_bit) - 1)) * 64 * 1024
    return value * 1024


# -- per type decoders -----------------------------------------------------------------------------


def _type0(f: _Fields) -> None:  # 7.1 BIOS Information
    f.string("vendor", 0x04)
    f.string("bios_version", 0x05)
    if f.has(0x06, 2):
        segment = f.u16(0x06)
        f.out["bios_starting_address_segment"] = hx(segment, 4)
        f.out["runtime_size"] = (0x10000 - segment) << 4 if segment else None
    f.string("bios_release_date", 0x08)
    if f.has(0x09):
        code = f.u8(0x09)
        f.out["bios_rom_size"] = (code + 1) * 64 * 1024 if code != 0xFF else None
    if f.has(0x0A, 8):
        value = f.u64(0x0A)
        f.out["bios_characteristics"] = _bits(_BIOS_CHARACTERISTICS, value)
        f.out["bios_characteristics_vendor_bits"] = hx(value >> 32, 8)
    f.flags("bios_characteristics_extension_1", 0x12, 1, _BIOS_CHARACTERISTICS_X1)
    f.flags("bios_characteristics_extension_2", 0x13, 1, _BIOS_CHARACTERISTICS_X2)
    f.byte("system_bios_major_release", 0x14)
    f.byte("system_bios_minor_release", 0x15)
    f.byte("embedded_controller_firmware_major_release", 0x16)
    f.byte("embedded_controller_firmware_minor_release", 0x17)
    if f.has(0x18, 2):
        ext = f.u16(0x18)
        unit = {0: 1 << 20, 1: 1 << 30}.get(ext >> 14)
        f.out["extended_bios_rom_size"] = (ext & 0x3FFF) * unit if unit else None
        if f.out.get("bios_rom_size") is None:
            f.out["bios_rom_size"] = f.out["extended_bios_rom_size"]


def _uuid(raw: bytes, version: tuple[int, int]) -> str:
    if raw == b"\xff" * 16:
        return "Not Present"
    if raw == b"\x00" * 16:
        return "Not Settable"
    if version >= (2, 6):  # the first three fields are little endian since SMBIOS 2.6
        raw = raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _type1(f: _Fields) -> None:  # 7.2 System Information
    f.string("manufacturer", 0x04)
    f.string("product_name", 0x05)
    f.string("version", 0x06)
    f.string("serial_number", 0x07)
    if f.has(0x08, 16):
        f.out["uuid"] = _uuid(f.raw(0x08, 16), f.version)
    f.enum("wake_up_type", 0x18, _WAKE_UP_TYPES)
    f.string("sku_number", 0x19)
    f.string("family", 0x1A)


def _type2(f: _Fields) -> None:  # 7.3 Baseboard (or Module) Information
    f.string("manufacturer", 0x04)
    f.string("product", 0x05)
    f.string("version", 0x06)
    f.string("serial_number", 0x07)
    f.string("asset_tag", 0x08)
    f.flags("feature_flags", 0x09, 1, _BOARD_FEATURES)
    f.string("location_in_chassis", 0x0A)
    f.handle("chassis_handle", 0x0B)
    f.enum("board_type", 0x0D, _BOARD_TYPES)
    if f.has(0x0E):
        count = f.u8(0x0E)
        f.out["number_of_contained_object_handles"] = count
        if f.has(0x0F, 2 * count):
            f.out["contained_object_handles"] = [hx(f.u16(0x0F + 2 * i), 4) for i in range(count)]


def _type3(f: _Fields) -> None:  # 7.4 System Enclosure or Chassis
    f.string("manufacturer", 0x04)
    if f.has(0x05):
        code = f.u8(0x05)
        f.out["type"] = _enum(_CHASSIS_TYPES, code & 0x7F)
        f.out["lock"] = "Present" if code & 0x80 else "Not Present"
    f.string("version", 0x06)
    f.string("serial_number", 0x07)
    f.string("asset_tag_number", 0x08)
    f.enum("boot_up_state", 0x09, _CHASSIS_STATES)
    f.enum("power_supply_state", 0x0A, _CHASSIS_STATES)
    f.enum("thermal_state", 0x0B, _CHASSIS_STATES)
    f.enum("security_status", 0x0C, _CHASSIS_SECURITY)
    if f.has(0x0D, 4):
        f.out["oem_defined"] = hx(f.u32(0x0D), 8)
    if f.has(0x11):
        f.out["height"] = f.u8(0x11) or None       # in U (1.75 in); 0 = unspecified
    if f.has(0x12):
        f.out["number_of_power_cords"] = f.u8(0x12) or None
    if not f.has(0x14):
        return
    count, size = f.u8(0x13), f.u8(0x14)
    f.out["contained_element_count"] = count
    f.out["contained_element_record_length"] = size
    if not f.has(0x15, count * size):
        return
    elements = []
    for i in range(count):
        at = 0x15 + i * size
        element: dict[str, Any] = {"raw": f.raw(at, size).hex()}
        if size >= 3:
            code = f.u8(at)
            if code & 0x80:
                name = _SHORT_TYPE_NAMES[code & 0x7F] if code & 0x7F < len(_SHORT_TYPE_NAMES) else None
                element["type"] = name or _out_of_spec(code & 0x7F)
            else:
                element["type"] = _enum(_BOARD_TYPES, code & 0x7F)
            element["minimum"] = f.u8(at + 1)
            element["maximum"] = f.u8(at + 2)
        elements.append(element)
    f.out["contained_elements"] = elements
    f.string("sku_number", 0x15 + count * size)


def _type4(f: _Fields) -> None:  # 7.5 Processor Information
    f.string("socket_designation", 0x04)
    f.enum("processor_type", 0x05, _PROCESSOR_TYPES)
    if f.has(0x06):
        code = f.u8(0x06)
        if code == 0xFE and f.has(0x28, 2):
            code = f.u16(0x28)
        if code == 0xBE:   # "Core 2" or "K7": the specification lets the manufacturer tell
            maker = (f.string_at(f.u8(0x07), 0x07) or "") if f.has(0x07) else ""
            f.out["processor_family"] = ("Core 2" if "Intel" in maker else "K7" if "AMD" in maker
                                         else "Core 2 or K7")
        else:
            f.out["processor_family"] = _enum(_PROCESSOR_FAMILIES, code)
    f.string("processor_manufacturer", 0x07)
    if f.has(0x08, 8):
        pid = f.u64(0x08)
        f.out["processor_id"] = hx(pid, 16)
        sig = signature(pid & 0xFFFFFFFF)
        f.out["processor_signature"] = {"type": sig["processor_type"], "family": sig["family"],
                                        "model": sig["model"], "stepping": sig["stepping"]}
        f.out["processor_flags"] = _bits(_PROCESSOR_ID_FLAGS, pid >> 32)
    f.string("processor_version", 0x10)
    if f.has(0x11):
        code = f.u8(0x11)
        if code & 0x80:
            f.out["voltage"] = f"{(code & 0x7F) / 10:.1f} V"
        else:
            f.out["voltage"] = " ".join(_bits(_VOLTAGES, code)) or None
    for name, at in (("external_clock", 0x12), ("max_speed", 0x14), ("current_speed", 0x16)):
        if f.has(at, 2):
            f.out[name] = f.u16(at) or None           # MHz; 0 = unknown
    if f.has(0x18):
        status = f.u8(0x18)
        f.out["socket_populated"] = bool(status & 0x40)
        f.out["cpu_status"] = _PROCESSOR_STATUS.get(status & 0x07, _out_of_spec(status & 0x07))
    f.enum("processor_upgrade", 0x19, _PROCESSOR_UPGRADES)
    f.handle("l1_cache_handle", 0x1A)
    f.handle("l2_cache_handle", 0x1C)
    f.handle("l3_cache_handle", 0x1E)
    f.string("serial_number", 0x20)
    f.string("asset_tag", 0x21)
    f.string("part_number", 0x22)
    f.byte("core_count", 0x23)
    f.byte("core_enabled", 0x24)
    f.byte("thread_count", 0x25)
    f.flags("processor_characteristics", 0x26, 2, _PROCESSOR_CHARACTERISTICS)
    if f.has(0x28, 2):
        f.out["processor_family_2"] = hx(f.u16(0x28), 4)
    f.word("core_count_2", 0x2A)
    f.word("core_enabled_2", 0x2C)
    f.word("thread_count_2", 0x2E)
    f.word("thread_enabled", 0x30)


def _type7(f: _Fields) -> None:  # 7.8 Cache Information
    f.string("socket_designation", 0x04)
    if f.has(0x05, 2):
        config = f.u16(0x05)
        f.out["cache_level"] = (config & 0x7) + 1
        f.out["cache_socketed"] = bool(config & 0x8)
        f.out["cache_location"] = _CACHE_LOCATIONS[config >> 5 & 0x3]
        f.out["cache_enabled"] = bool(config & 0x80)
        f.out["operational_mode"] = _CACHE_MODES[config >> 8 & 0x3]
    for name, at in (("maximum_cache_size", 0x07), ("installed_size", 0x09)):
        if f.has(at, 2):
            f.out[name] = _kb_or_64kb(f.u16(at), 15)
    f.flags("supported_sram_type", 0x0B, 2, _SRAM_TYPES)
    f.flags("current_sram_type", 0x0D, 2, _SRAM_TYPES)
    if f.has(0x0F):
        f.out["cache_speed"] = f.u8(0x0F) or None      # ns; 0 = unknown
    f.enum("error_correction_type", 0x10, _CACHE_EC_TYPES)
    f.enum("system_cache_type", 0x11, _CACHE_SYSTEM_TYPES)
    f.enum("associativity", 0x12, _CACHE_ASSOCIATIVITY)
    for name, short, at, short_at in (("maximum_cache_size_2", "maximum_cache_size", 0x13, 0x07),
                                      ("installed_cache_size_2", "installed_size", 0x17, 0x09)):
        if f.has(at, 4):
            f.out[name] = _kb_or_64kb(f.u32(at), 31)
            if f.u16(short_at) == 0xFFFF:      # the 16-bit field says "see the 32-bit one"
                f.out[short] = f.out[name]


def _type9(f: _Fields) -> None:  # 7.10 System Slots
    f.string("slot_designation", 0x04)
    f.enum("slot_type", 0x05, _SLOT_TYPES)
    f.enum("slot_data_bus_width", 0x06, _SLOT_WIDTHS)
    f.enum("current_usage", 0x07, _SLOT_USAGES)
    f.enum("slot_length", 0x08, _SLOT_LENGTHS)
    f.word("slot_id", 0x09)
    f.flags("slot_characteristics_1", 0x0B, 1, _SLOT_CHARACTERISTICS_1)
    f.flags("slot_characteristics_2", 0x0C, 1, _SLOT_CHARACTERISTICS_2)
    if f.has(0x0D, 4):
        segment, bus, devfn = f.u16(0x0D), f.u8(0x0F), f.u8(0x10)
        unset = segment == 0xFFFF and bus == 0xFF and devfn == 0xFF
        f.out["bus_address"] = None if unset else f"{segment:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7:x}"
    f.byte("data_bus_width", 0x11)
    if f.has(0x12):
        count = f.u8(0x12)
        f.out["peer_grouping_count"] = count
        if f.has(0x13, 5 * count):
            peers = []
            for i in range(count):
                at = 0x13 + 5 * i
                segment, bus, devfn, width = f.u16(at), f.u8(at + 2), f.u8(at + 3), f.u8(at + 4)
                peers.append({"address": f"{segment:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7:x}",
                              "width": width})
            f.out["peer_groups"] = peers


def _type11(f: _Fields) -> None:  # 7.12 OEM Strings
    if f.has(0x04):
        count = f.u8(0x04)
        f.out["count"] = count
        f.out["oem_strings"] = [f.string_at(i, 0x04) for i in range(1, count + 1)]


def _type16(f: _Fields) -> None:  # 7.17 Physical Memory Array
    f.enum("location", 0x04, _MEMORY_ARRAY_LOCATIONS)
    f.enum("use", 0x05, _MEMORY_ARRAY_USES)
    f.enum("memory_error_correction", 0x06, _MEMORY_ARRAY_EC)
    if f.has(0x07, 4):
        kb = f.u32(0x07)
        f.out["maximum_capacity"] = None if kb == 0x80000000 else kb * 1024
    f.handle("memory_error_information_handle", 0x0B)
    f.word("number_of_memory_devices", 0x0D)
    if f.has(0x0F, 8):
        f.out["extended_maximum_capacity"] = f.u64(0x0F)
        if f.out.get("maximum_capacity") is None:
            f.out["maximum_capacity"] = f.out["extended_maximum_capacity"]


def _voltage(f: _Fields, name: str, at: int) -> None:
    if f.has(at, 2):
        f.out[name] = f.u16(at) or None               # mV; 0 = unknown


def _type17(f: _Fields) -> None:  # 7.18 Memory Device
    f.handle("physical_memory_array_handle", 0x04)
    f.handle("memory_error_information_handle", 0x06)
    for name, at in (("total_width", 0x08), ("data_width", 0x0A)):
        if f.has(at, 2):
            bits = f.u16(at)
            f.out[name] = None if bits == 0xFFFF else bits
    if f.has(0x0C, 2):
        code = f.u16(0x0C)
        if code == 0xFFFF:
            size: int | None = None
        elif code == 0x7FFF and f.s.length >= 0x20:
            size = (f.u32(0x1C) & 0x7FFFFFFF) << 20
        elif code & 0x8000:
            size = (code & 0x7FFF) << 10
        else:
            size = code << 20
        f.out["size"] = size                          # bytes; 0 = no module installed
    f.enum("form_factor", 0x0E, _MEMORY_FORM_FACTORS)
    f.byte("device_set", 0x0F)
    f.string("device_locator", 0x10)
    f.string("bank_locator", 0x11)
    f.enum("memory_type", 0x12, _MEMORY_TYPES)
    f.flags("type_detail", 0x13, 2, _MEMORY_TYPE_DETAILS)
    if f.has(0x15, 2):
        f.out["speed"] = f.u16(0x15) or None          # MT/s; 0 = unknown
    f.string("manufacturer", 0x17)
    f.string("serial_number", 0x18)
    f.string("asset_tag", 0x19)
    f.string("part_number", 0x1A)
    if f.has(0x1B):
        f.out["rank"] = f.u8(0x1B) & 0x0F or None
    if f.has(0x1C, 4):
        f.out["extended_size"] = (f.u32(0x1C) & 0x7FFFFFFF) << 20
    if f.has(0x20, 2):
        f.out["configured_memory_speed"] = f.u16(0x20) or None
    _voltage(f, "minimum_voltage", 0x22)
    _voltage(f, "maximum_voltage", 0x24)
    _voltage(f, "configured_voltage", 0x26)
    f.enum("memory_technology", 0x28, _MEMORY_TECHNOLOGIES)
    f.flags("memory_operating_mode_capability", 0x29, 2, _MEMORY_OPERATING_MODES)
    f.string("firmware_version", 0x2B)
    for name, at in (("module_manufacturer_id", 0x2C), ("module_product_id", 0x2E),
                     ("memory_subsystem_controller_manufacturer_id", 0x30),
                     ("memory_subsystem_controller_product_id", 0x32)):
        f.handle(name, at)
    for name, at in (("non_volatile_size", 0x34), ("volatile_size", 0x3C), ("cache_size", 0x44),
                     ("logical_size", 0x4C)):
        if f.has(at, 8):
            f.out[name] = f.u64(at)
    for name, at in (("extended_speed", 0x54), ("extended_configured_memory_speed", 0x58)):
        if f.has(at, 4):
            f.out[name] = f.u32(at) & 0x7FFFFFFF


def _mapped_range(f: _Fields, ext_at: int) -> None:
    """Types 19 and 20: a range in KB (0x04, 0x08), or in bytes past 4 TB (ext_at, ext_at + 8)."""
    if not f.has(0x04, 8):
        return
    start, end = f.u32(0x04), f.u32(0x08)
    if start == 0xFFFFFFFF and f.has(ext_at, 16):
        first, last = f.u64(ext_at), f.u64(ext_at + 8)
    else:
        first, last = start << 10, (end << 10) + 0x3FF
    f.out["starting_address"] = hx(first)
    f.out["ending_address"] = hx(last)
    f.out["range_size"] = last - first + 1 if last >= first else None
    if f.has(ext_at, 16):
        f.out["extended_starting_address"] = hx(f.u64(ext_at))
        f.out["extended_ending_address"] = hx(f.u64(ext_at + 8))


def _type19(f: _Fields) -> None:  # 7.20 Memory Array Mapped Address
    _mapped_range(f, 0x0F)
    f.handle("memory_array_handle", 0x0C)
    f.byte("partition_width", 0x0E)


def _position(f: _Fields, name: str, at: int) -> None:
    if f.has(at):
        value = f.u8(at)
        f.out[name] = None if value == 0xFF else value   # 0xFF = unknown


def _type20(f: _Fields) -> None:  # 7.21 Memory Device Mapped Address
    _mapped_range(f, 0x13)
    f.handle("memory_device_handle", 0x0C)
    f.handle("memory_array_mapped_address_handle", 0x0E)
    _position(f, "partition_row_position", 0x10)
    _position(f, "interleave_position", 0x11)
    _position(f, "interleaved_data_depth", 0x12)


def _type32(f: _Fields) -> None:  # 7.33 System Boot Information
    if f.has(0x04, 6):
        f.out["reserved"] = f.raw(0x04, 6).hex()
    if f.has(0x0A):
        f.out["boot_status"] = _boot_status(f.u8(0x0A))


def _type127(f: _Fields) -> None:  # 7.46 End-of-Table
    return


DECODERS: dict[int, Callable[[_Fields], None]] = {
    0: _type0, 1: _type1, 2: _type2, 3: _type3, 4: _type4, 7: _type7, 9: _type9, 11: _type11,
    16: _type16, 17: _type17, 19: _type19, 20: _type20, 32: _type32, 127: _type127,
}


# -- entry point -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryPoint:
    fields: dict[str, Any]
    version: tuple[int, int]
    table_length: int
    structure_count: int | None      # None: 3.x, walk to the end-of-table structure


def _checksum_ok(data: bytes) -> bool:
    return sum(data) & 0xFF == 0


def decode_entry_point(data: bytes) -> EntryPoint:
    ep = Blob(ENTRY_POINT_FILE, data)
    if data[:5] == b"_SM3_":
        length = ep.u8(0x06)
        if length < 0x18:
            raise ep.fail(0x06, f"64-bit entry point length {length} (at least 24 expected)")
        ep.need(0, length, "entry point")
        major, minor, docrev = ep.u8(0x07), ep.u8(0x08), ep.u8(0x09)
        table_length = ep.u32(0x0C)
        fields: dict[str, Any] = {
            "label": "entry point", "kind": "3.x", "version": f"{major}.{minor}.{docrev}",
            "table_length": table_length, "max_structure_size": None, "structure_count": None,
            "checksum_valid": _checksum_ok(ep.bytes(0, length)), "entry_point_length": length,
            "entry_point_revision": ep.u8(0x0A), "pointers": {"table_address": hx(ep.u64(0x10), 16)},
        }
        return EntryPoint(fields, (major, minor), table_length, None)
    if data[:4] == b"_SM_":
        length = ep.u8(0x05)
        if length < 0x1E:
            raise ep.fail(0x05, f"32-bit entry point length {length} (at least 30 expected)")
        ep.need(0, max(length, 0x1F), "entry point")
        if ep.bytes(0x10, 5) != b"_DMI_":
            raise ep.fail(0x10, "no _DMI_ anchor in the intermediate entry point")
        major, minor = ep.u8(0x06), ep.u8(0x07)
        table_length, count = ep.u16(0x16), ep.u16(0x1C)
        fields = {
            "label": "entry point", "kind": "2.x", "version": f"{major}.{minor}",
            "table_length": table_length, "max_structure_size": ep.u16(0x08), "structure_count": count,
            "checksum_valid": _checksum_ok(ep.bytes(0, length)),
            "intermediate_checksum_valid": _checksum_ok(ep.bytes(0x10, 0x0F)),
            "entry_point_length": length, "entry_point_revision": ep.u8(0x0A),
            "formatted_area": ep.bytes(0x0B, 5).hex(), "bcd_revision": hx(ep.u8(0x1E), 2),
            "pointers": {"table_address": hx(ep.u32(0x18), 8)},
        }
        # Some firmware reports 2.31 and 2.33 for 2.3 and 2.6 (as dmidecode corrects them).
        effective = {(2, 31): (2, 3), (2, 33): (2, 6)}.get((major, minor), (major, minor))
        return EntryPoint(fields, effective, table_length, count)
    if data[:5] == b"_DMI_":
        ep.need(0, 0x0F, "legacy entry point")
        bcd = ep.u8(0x0E)
        table_length, count = ep.u16(0x06), ep.u16(0x0C)
        fields = {
            "label": "entry point", "kind": "legacy", "version": f"{bcd >> 4}.{bcd & 0xF}",
            "table_length": table_length, "max_structure_size": None, "structure_count": count,
            "checksum_valid": _checksum_ok(ep.bytes(0, 0x0F)),
            "pointers": {"table_address": hx(ep.u32(0x08), 8)},
        }
        return EntryPoint(fields, (bcd >> 4, bcd & 0xF), table_length, count)
    raise ep.fail(0, f"no SMBIOS anchor (_SM_, _SM3_ or _DMI_): {data[:5]!r}")


# -- structures ------------------------------------------------------------------------------------


def walk(table: Blob, count: int | None) -> tuple[list[Structure], int]:
    """The structures up to the end-of-table one (or `count` of them), and where they end."""
    structures: list[Structure] = []
    handles: dict[int, int] = {}
    offset = 0
    while count is None or len(structures) < count:
        if offset == len(table):
            raise table.fail(offset, f"the table ends after {len(structures)} structures "
                                     "without an end-of-table structure (type 127)")
        if len(structures) >= MAX_STRUCTURES:
            raise table.fail(offset, f"more than {MAX_STRUCTURES} structures")
        table.need(offset, 4, "structure header")
        smbios_type, length, handle = table.u8(offset), table.u8(offset + 1), table.u16(offset + 2)
        if length < 4:
            raise table.fail(offset + 1, f"type {smbios_type} structure of length {length} (at least 4)")
        table.need(offset, length, f"type {smbios_type} structure {handle:#06x}")
        end = table.data.find(b"\0\0", offset + length)
        if end < 0:
            raise table.fail(offset + length, f"type {smbios_type} structure {handle:#06x}: string set "
                                              "has no double-NUL terminator before the end of the table")
        raw_strings = table.data[offset + length:end]
        strings: tuple[str, ...] = ()
        if raw_strings:
            if raw_strings.startswith(b"\0"):
                raise table.fail(offset + length, f"type {smbios_type} structure {handle:#06x}: "
                                                  "string set starts with an empty string")
            parts = raw_strings.split(b"\0")
            if len(parts) > MAX_STRINGS:
                raise table.fail(offset + length, f"type {smbios_type} structure {handle:#06x}: "
                                                  f"{len(parts)} strings (at most {MAX_STRINGS})")
            strings = tuple(p.decode("ascii", errors="backslashreplace") for p in parts)
        if handle in handles:
            raise table.fail(offset + 2, f"handle {handle:#06x} used twice "
                                         f"(also by the structure at {handles[handle]:#x})")
        handles[handle] = offset
        structures.append(Structure(smbios_type, length, handle, offset, strings))
        offset = end + 2
        if smbios_type == END_OF_TABLE:
            break
    return structures, offset


def decode_structure(table: Blob, s: Structure, version: tuple[int, int]) -> dict[str, Any]:
    entry: dict[str, Any] = {"label": f"type {s.type} {type_name(s.type)}", "type": s.type,
                             "handle": hx(s.handle, 4), "length": s.length}
    decoder = DECODERS.get(s.type)
    if decoder is None:
        entry["hex"] = table.bytes(s.offset + 4, s.length - 4).hex()
    else:
        f = _Fields(table, s, version)
        decoder(f)
        entry["fields"] = f.out
        if f.decoded < s.length:
            entry["extra_hex"] = table.bytes(s.offset + f.decoded, s.length - f.decoded).hex()
    entry["strings"] = list(s.strings)
    return entry


def decode(raw: Path) -> dict[str, Any]:
    """{"entry_point": {...}, "TYPE/INSTANCE": {...}, ...} in table order."""
    ep = decode_entry_point(read_raw(raw, ENTRY_POINT_FILE, limit=64))
    data = read_raw(raw, TABLE_FILE, limit=MAX_TABLE)
    if len(data) > ep.table_length:
        raise DecodeError(TABLE_FILE, None, f"{len(data)} bytes, more than the entry point's table "
                                            f"length {ep.table_length}")
    if ep.structure_count == 0:
        raise DecodeError(ENTRY_POINT_FILE, None, "the entry point announces no structures")
    table = Blob(TABLE_FILE, data)
    structures, end = walk(table, ep.structure_count)
    out: dict[str, Any] = {"entry_point": ep.fields}
    if ep.fields["max_structure_size"] is None:
        ends = [s2.offset for s2 in structures[1:]] + [end]
        ep.fields["max_structure_size"] = max(e - s.offset for s, e in zip(structures, ends, strict=True))
    ep.fields["bytes_after_end_of_table"] = len(data) - end
    instances: dict[int, int] = {}
    for s in structures:
        instance = instances.get(s.type, 0)
        instances[s.type] = instance + 1
        out[f"{s.type}/{instance}"] = decode_structure(table, s, ep.version)
    return out
