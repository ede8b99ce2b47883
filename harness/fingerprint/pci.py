"""PCI: every function the guest enumerated, decoded from its config space and sysfs resources.

Input, per function, under `raw/sys/bus/pci/devices/DDDD:BB:DD.F/`:

- `config`   — the config space as the guest read it (256 bytes conventional, 4096 PCIe);
- `resource` — the sysfs text, one `0xSTART 0xEND 0xFLAGS` line per resource (BARs 0–5, the ROM,
  then SR-IOV and bridge windows, depending on the guest kernel).

What goes into an entry is what the device model fixes: ids, class, revision, header layout,
status bits the device hardwires, BAR kinds and sizes, the ROM size, capabilities and their
read-only fields. What firmware or the guest's drivers program (BAR and ROM addresses, the
command register's enables, the interrupt line, MSI addresses, control registers) is left out;
it is all still in `config_hex` for the report's hex view.

Names come from the pci.ids database (Debian package `pci.ids`, or `hwdata` which links to it):
`/usr/share/misc/pci.ids` or `/usr/share/hwdata/pci.ids`, parsed once per process. A missing
database or an unknown id gives null names, never an error. Names depend on the host's copy of
the database, not on the guest: they are derived data.

Guest bytes are untrusted: every read is bounds-checked, capability walks are bounded and detect
cycles, and anything malformed raises `DecodeError` naming the file and the offset.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import Blob, hx, read_raw

DEVICES = "sys/bus/pci/devices"
PCI_IDS_PATHS = (Path("/usr/share/misc/pci.ids"), Path("/usr/share/hwdata/pci.ids"))

MAX_FUNCTIONS = 8192            # 256 buses × 32 devices would already be absurd for one guest
CONFIG_MIN = 64                 # the standard header; less is a truncated read
CONFIG_STD = 256
CONFIG_EXT = 4096
RESOURCE_MAX_BYTES = 4096       # 17 lines of 57 characters is the most Linux prints
RESOURCE_MAX_LINES = 32
STD_CAP_LIMIT = (CONFIG_STD - 0x40) // 4      # distinct dword-aligned places a capability can be
EXT_CAP_LIMIT = (CONFIG_EXT - CONFIG_STD) // 4

_NAME = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
_RESOURCE_LINE = re.compile(r"0x([0-9a-fA-F]{1,16}) 0x([0-9a-fA-F]{1,16}) 0x([0-9a-fA-F]{1,16})")

# Linux resource flags (include/linux/ioport.h).
IORESOURCE_IO = 0x100
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
IORESOURCE_MEM_64 = 0x100000
IORESOURCE_ROM_SHADOW = 0x2
IORESOURCE_PCI_FIXED = 0x10


# -- pci.ids -----------------------------------------------------------------------------------

@dataclass
class PciIds:
    """The names in one pci.ids file."""

    path: str
    version: str | None = None
    vendors: dict[int, str] = field(default_factory=dict)
    devices: dict[tuple[int, int], str] = field(default_factory=dict)
    subsystems: dict[tuple[int, int, int, int], str] = field(default_factory=dict)
    classes: dict[int, str] = field(default_factory=dict)
    subclasses: dict[tuple[int, int], str] = field(default_factory=dict)
    prog_ifs: dict[tuple[int, int, int], str] = field(default_factory=dict)


def parse_pci_ids(text: str, path: str = "pci.ids") -> PciIds:
    """Parse the pci.ids format: vendors with tab-indented devices and subsystems, then `C` classes
    with subclasses and programming interfaces. Lines that do not fit are skipped."""
    ids = PciIds(path)
    vendor = device = base = sub = None
    in_classes = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if line.startswith("#\tVersion:"):
                ids.version = line.split(":", 1)[1].strip()
            continue
        depth = len(line) - len(line.lstrip("\t"))
        body = line.strip()
        parts = body.split(None, 1)
        try:
            if depth == 0:
                if parts[0] == "C" and len(parts) == 2:
                    code, name = parts[1].split(None, 1)
                    base, sub, in_classes = int(code, 16), None, True
                    ids.classes[base] = name
                elif len(parts[0]) == 4 and len(parts) == 2:
                    vendor, device, in_classes = int(parts[0], 16), None, False
                    ids.vendors[vendor] = parts[1]
                else:
                    vendor = base = None     # another list (`X` device types…): not ours
            elif depth == 1 and len(parts) == 2:
                if in_classes and base is not None:
                    sub = int(parts[0], 16)
                    ids.subclasses[(base, sub)] = parts[1]
                elif vendor is not None:
                    device = int(parts[0], 16)
                    ids.devices[(vendor, device)] = parts[1]
            elif depth == 2:
                if in_classes and base is not None and sub is not None and len(parts) == 2:
                    ids.prog_ifs[(base, sub, int(parts[0], 16))] = parts[1]
                elif vendor is not None and device is not None:
                    sv, sd, name = body.split(None, 2)
                    ids.subsystems[(vendor, device, int(sv, 16), int(sd, 16))] = name
        except ValueError:
            continue
    return ids


_IDS_CACHE: dict[str, PciIds | None] = {}


def pci_ids() -> PciIds | None:
    """The host's pci.ids, parsed once per process; None when it is not installed."""
    if "db" not in _IDS_CACHE:
        db = None
        for path in PCI_IDS_PATHS:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            db = parse_pci_ids(text, str(path))
            break
        _IDS_CACHE["db"] = db
    return _IDS_CACHE["db"]


# -- small helpers -----------------------------------------------------------------------------

def _bit(value: int, n: int) -> bool:
    return bool(value >> n & 1)


def _bits(value: int, lo: int, width: int) -> int:
    return value >> lo & ((1 << width) - 1)


def _flags(value: int, names: dict[int, str]) -> list[str]:
    return [name for bit, name in names.items() if _bit(value, bit)]


@dataclass(frozen=True)
class _Resource:
    start: int
    end: int
    flags: int

    @property
    def size(self) -> int:
        return 0 if self.start == 0 and self.end == 0 else self.end - self.start + 1


def parse_resources(name: str, data: bytes) -> list[_Resource]:
    """The sysfs `resource` text: one `0xSTART 0xEND 0xFLAGS` line per resource."""
    if len(data) > RESOURCE_MAX_BYTES:
        raise DecodeError(name, None, f"{len(data)} bytes (limit {RESOURCE_MAX_BYTES})")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise DecodeError(name, exc.start, "not ASCII text") from None
    out: list[_Resource] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped:
            if len(out) >= RESOURCE_MAX_LINES:
                raise DecodeError(name, offset, f"more than {RESOURCE_MAX_LINES} resource lines")
            m = _RESOURCE_LINE.fullmatch(stripped)
            if m is None:
                raise DecodeError(name, offset, f"not a '0xSTART 0xEND 0xFLAGS' line: {stripped[:60]!r}")
            start, end, flags = (int(g, 16) for g in m.groups())
            if end < start:
                raise DecodeError(name, offset, f"resource ends before it starts ({start:#x} > {end:#x})")
            out.append(_Resource(start, end, flags))
        offset += len(line)
    if len(out) < 7:
        raise DecodeError(name, None, f"{len(out)} resource lines (at least 7 expected: 6 BARs and the ROM)")
    return out


# -- header ------------------------------------------------------------------------------------

HEADER_TYPES = {0: "endpoint", 1: "PCI-to-PCI bridge", 2: "CardBus bridge"}
DEVSEL = ("fast", "medium", "slow", "reserved")
INTERRUPT_PINS = {1: "INTA", 2: "INTB", 3: "INTC", 4: "INTD"}


def _status(value: int) -> dict[str, Any]:
    """Status bits the device hardwires; the error and interrupt bits are run-time state."""
    return {
        "immediate_readiness": _bit(value, 0),
        "capabilities_list": _bit(value, 4),
        "66mhz": _bit(value, 5),
        "udf": _bit(value, 6),
        "fast_back_to_back": _bit(value, 7),
        "devsel_timing": DEVSEL[_bits(value, 9, 2)],
    }


def _command_fixed(value: int) -> dict[str, Any]:
    """Command bits neither firmware nor the guest's drivers program (I/O, memory, bus master,
    parity, SERR and INTx-disable are programmed and left out): a device model either
    hardwires these or they change only when the model does."""
    return {
        "special_cycles": _bit(value, 3),
        "memory_write_invalidate": _bit(value, 4),
        "vga_palette_snoop": _bit(value, 5),
        "idsel_stepping": _bit(value, 7),
        "fast_back_to_back_enable": _bit(value, 9),
        "reserved": hx(value & 0xf800, 4),
    }


def _bars(blob: Blob, count: int, resources: list[_Resource], res_name: str) -> list[dict[str, Any]]:
    """BAR kinds from the config bits (read-only in hardware), sizes from the kernel's resources
    (0 when the kernel left the BAR unassigned).

    A BAR that reads 0 and has no resource is not implemented and is omitted. A BAR that reads 0
    but has a fixed resource is a legacy range the kernel assigned (IDE compatibility mode)."""
    out: list[dict[str, Any]] = []
    index = 0
    while index < count:
        offset = 0x10 + 4 * index
        value = blob.u32(offset)
        res = resources[index]
        if value == 0:
            if res.size and res.flags & IORESOURCE_PCI_FIXED:
                kind = "io" if res.flags & IORESOURCE_IO else "mem32"
                out.append({"index": index, "kind": kind, "prefetchable": bool(res.flags & IORESOURCE_PREFETCH),
                            "size": res.size, "legacy": True})
            elif res.size:
                # A 32-bit memory BAR the firmware left at address 0 reads exactly 0.
                out.append({"index": index, "kind": "mem32", "prefetchable": False, "size": res.size})
            index += 1
            continue
        if value & 1:
            kind, prefetchable, limit = "io", False, 1 << 16
        else:
            mem_type = _bits(value, 1, 2)
            if mem_type == 3:
                raise blob.fail(offset, f"BAR {index} has the reserved memory type 3")
            if mem_type == 2 and index + 1 >= count:
                raise blob.fail(offset, f"64-bit BAR {index} has no upper half")
            kind = {0: "mem32", 1: "mem1m", 2: "mem64"}[mem_type]
            prefetchable = _bit(value, 3)
            limit = {0: 1 << 32, 1: 1 << 20, 2: 1 << 64}[mem_type]
        if res.size > limit:
            raise DecodeError(res_name, None, f"BAR {index} ({kind}) has an absurd size of {res.size:#x} bytes")
        out.append({"index": index, "kind": kind, "prefetchable": prefetchable, "size": res.size})
        index += 2 if kind == "mem64" else 1
    return out


def _rom(blob: Blob, offset: int, res: _Resource) -> dict[str, Any]:
    """ROM size from the resource; the ROM BAR's address and enable bit are allocation. A boot VGA
    device's ROM is shadowed: the kernel reports the legacy 0xc0000 window, not the BAR."""
    implemented = blob.u32(offset) != 0 or res.size > 0
    if res.size > 1 << 32:
        raise blob.fail(offset, f"ROM of absurd size {res.size:#x} bytes")
    return {"rom_size": res.size if res.size else None,
            "rom_shadowed": bool(res.flags & IORESOURCE_ROM_SHADOW) if implemented else False}


def _bridge(blob: Blob, resources: list[_Resource]) -> dict[str, Any]:
    """Type 1 header: bus numbers and which windows exist (not where they are)."""
    windows = resources[-4:] if len(resources) >= 11 else []
    io_base, io_limit = blob.u8(0x1c), blob.u8(0x1d)
    mem_base, mem_limit = blob.u16(0x20), blob.u16(0x22)
    pref_base, pref_limit = blob.u16(0x24), blob.u16(0x26)

    def window(index: int) -> bool:
        return len(windows) > index and (windows[index].size > 0 or windows[index].flags != 0)

    io = bool(io_base or io_limit) or window(0)
    pref = bool(pref_base or pref_limit) or window(2)
    return {
        "primary": blob.u8(0x18), "secondary": blob.u8(0x19), "subordinate": blob.u8(0x1a),
        "io_window": io,
        "io_32bit": io and (io_base & 0xf) == 1,
        "mem_window": bool(mem_base or mem_limit) or window(1),
        "prefetchable_window": pref,
        "prefetchable_64bit": pref and (pref_base & 0xf) == 1,
        "secondary_status": {k: v for k, v in _status(blob.u16(0x1e)).items()
                             if k in ("66mhz", "fast_back_to_back", "devsel_timing")},
    }


# -- standard capabilities ---------------------------------------------------------------------

CAP_NAMES = {
    0x01: "Power Management", 0x02: "AGP", 0x03: "VPD", 0x04: "Slot Identification", 0x05: "MSI",
    0x06: "CompactPCI Hot Swap", 0x07: "PCI-X", 0x08: "HyperTransport", 0x09: "Vendor Specific",
    0x0a: "Debug Port", 0x0b: "CompactPCI Central Resource Control", 0x0c: "PCI Hot-Plug",
    0x0d: "Bridge Subsystem ID", 0x0e: "AGP 8x", 0x0f: "Secure Device", 0x10: "PCI Express",
    0x11: "MSI-X", 0x12: "SATA", 0x13: "Advanced Features", 0x14: "Enhanced Allocation",
    0x15: "Flattening Portal Bridge",
}

PM_AUX_MA = (0, 55, 100, 160, 220, 270, 320, 375)
PCIE_TYPES = {
    0: "Endpoint", 1: "Legacy Endpoint", 4: "Root Port", 5: "Upstream Switch Port",
    6: "Downstream Switch Port", 7: "PCIe to PCI/PCI-X Bridge", 8: "PCI/PCI-X to PCIe Bridge",
    9: "Root Complex Integrated Endpoint", 10: "Root Complex Event Collector",
}
LINK_SPEEDS = {1: "2.5GT/s", 2: "5GT/s", 3: "8GT/s", 4: "16GT/s", 5: "32GT/s", 6: "64GT/s"}
VIRTIO_CFG_TYPES = {1: "common", 2: "notify", 3: "isr", 4: "device", 5: "pci_cfg",
                    8: "shared_memory", 9: "vendor"}
VIRTIO_VENDOR = 0x1af4


@dataclass(frozen=True)
class _Ctx:
    vendor: int
    device: int
    header_type: int
    resources: tuple[_Resource, ...] = ()


def _speed(code: int) -> str:
    return LINK_SPEEDS.get(code, hx(code))


def _cap_pm(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    pmc = blob.u16(off + 2)
    pmcsr = blob.u16(off + 4)
    return {
        "version": _bits(pmc, 0, 3),
        "pme_clock": _bit(pmc, 3),
        "immediate_readiness_d0": _bit(pmc, 4),
        "dsi": _bit(pmc, 5),
        "aux_current_ma": PM_AUX_MA[_bits(pmc, 6, 3)],
        "d1": _bit(pmc, 9),
        "d2": _bit(pmc, 10),
        "pme_support": _flags(pmc >> 11, {0: "D0", 1: "D1", 2: "D2", 3: "D3hot", 4: "D3cold"}),
        "no_soft_reset": _bit(pmcsr, 3),
        "bridge_support": hx(blob.u8(off + 6), 2),
    }


def _cap_msi(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    ctl = blob.u16(off + 2)
    return {
        "multiple_message_capable": 1 << _bits(ctl, 1, 3),
        "64bit": _bit(ctl, 7),
        "per_vector_masking": _bit(ctl, 8),
        "extended_message_data": _bit(ctl, 9),
    }


def _cap_msix(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    ctl = blob.u16(off + 2)
    table, pba = blob.u32(off + 4), blob.u32(off + 8)
    return {
        "table_size": _bits(ctl, 0, 11) + 1,
        "table_bir": table & 7,
        "table_offset": hx(table & ~7 & 0xffffffff),
        "pba_bir": pba & 7,
        "pba_offset": hx(pba & ~7 & 0xffffffff),
    }


def _cap_pcie(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    caps = blob.u16(off + 2)
    version, port = _bits(caps, 0, 4), _bits(caps, 4, 4)
    devcap = blob.u32(off + 4)
    out: dict[str, Any] = {
        "version": version,
        "device_type": PCIE_TYPES.get(port, hx(port)),
        "slot_implemented": _bit(caps, 8),
        "interrupt_message_number": _bits(caps, 9, 5),
        "device": {
            "max_payload": 128 << _bits(devcap, 0, 3),
            "phantom_functions": _bits(devcap, 3, 2),
            "extended_tag": _bit(devcap, 5),
            "l0s_acceptable_latency": _bits(devcap, 6, 3),
            "l1_acceptable_latency": _bits(devcap, 9, 3),
            "role_based_error_reporting": _bit(devcap, 15),
            "flr": _bit(devcap, 28),
        },
    }
    # Link registers are reserved for root-complex integrated functions, but guests still read
    # them (QEMU's RCiEPs report a link): decode them for every type.
    linkcap = blob.u32(off + 0x0c)
    linksta = blob.u16(off + 0x12)
    out["link"] = {
        "max_speed": _speed(_bits(linkcap, 0, 4)),
        "max_width": _bits(linkcap, 4, 6),
        "aspm_support": _flags(_bits(linkcap, 10, 2), {0: "L0s", 1: "L1"}),
        "l0s_exit_latency": _bits(linkcap, 12, 3),
        "l1_exit_latency": _bits(linkcap, 15, 3),
        "clock_power_management": _bit(linkcap, 18),
        "surprise_down_reporting": _bit(linkcap, 19),
        "dll_link_active_reporting": _bit(linkcap, 20),
        "bandwidth_notification": _bit(linkcap, 21),
        "aspm_optionality_compliance": _bit(linkcap, 22),
        "port_number": _bits(linkcap, 24, 8),
        "status": {
            "current_speed": _speed(_bits(linksta, 0, 4)),
            "negotiated_width": _bits(linksta, 4, 6),
            "slot_clock_configuration": _bit(linksta, 12),
            "dll_link_active": _bit(linksta, 13),
        },
    }
    if _bit(caps, 8):
        slotcap = blob.u32(off + 0x14)
        out["slot"] = {
            "attention_button": _bit(slotcap, 0),
            "power_controller": _bit(slotcap, 1),
            "mrl_sensor": _bit(slotcap, 2),
            "attention_indicator": _bit(slotcap, 3),
            "power_indicator": _bit(slotcap, 4),
            "hot_plug_surprise": _bit(slotcap, 5),
            "hot_plug_capable": _bit(slotcap, 6),
            "power_limit_value": _bits(slotcap, 7, 8),
            "power_limit_scale": _bits(slotcap, 15, 2),
            "electromechanical_interlock": _bit(slotcap, 17),
            "no_command_completed": _bit(slotcap, 18),
            "physical_slot_number": _bits(slotcap, 19, 13),
        }
    if port in (4, 10):
        out["root_crs_software_visibility"] = _bit(blob.u16(off + 0x1e), 0)
    if version >= 2:
        devcap2 = blob.u32(off + 0x24)
        out["device2"] = {
            "completion_timeout_ranges": hx(_bits(devcap2, 0, 4)),
            "completion_timeout_disable": _bit(devcap2, 4),
            "ari_forwarding": _bit(devcap2, 5),
            "atomic_op_routing": _bit(devcap2, 6),
            "atomic_op_completer": _flags(_bits(devcap2, 7, 3), {0: "32bit", 1: "64bit", 2: "128bitCAS"}),
            "ltr": _bit(devcap2, 11),
            "tph_completer": _bits(devcap2, 12, 2),
            "10bit_tag_completer": _bit(devcap2, 16),
            "10bit_tag_requester": _bit(devcap2, 17),
            "obff": _bits(devcap2, 18, 2),
            "extended_fmt_field": _bit(devcap2, 20),
            "end_end_tlp_prefix": _bit(devcap2, 21),
            "max_end_end_tlp_prefixes": _bits(devcap2, 22, 2),
            "frs": _bit(devcap2, 31),
        }
        linkcap2 = blob.u32(off + 0x2c)
        out["link2"] = {
            "supported_speeds": [_speed(n) for n in range(1, 8) if _bit(linkcap2, n)],
            "crosslink": _bit(linkcap2, 8),
        }
        if _bit(caps, 8):
            out["slot2"] = hx(blob.u32(off + 0x34), 8)
    return out


def _cap_vendor(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    length = blob.u8(off + 2)
    if ctx.vendor == VIRTIO_VENDOR and length >= 16:
        cfg_type = blob.u8(off + 3)
        out: dict[str, Any] = {"cap_length": length,
                               "cfg_type": VIRTIO_CFG_TYPES.get(cfg_type, hx(cfg_type, 2))}
        if cfg_type == 5:
            # VIRTIO_PCI_CAP_PCI_CFG: bar/offset/length are a window the driver writes to.
            return out
        out.update({"bar": blob.u8(off + 4), "id": blob.u8(off + 5),
                    "offset": hx(blob.u32(off + 8)), "length": blob.u32(off + 12)})
        if cfg_type == 2 and length >= 20:
            out["notify_off_multiplier"] = blob.u32(off + 16)
        if cfg_type == 8 and length >= 24:
            out["offset"] = hx(blob.u32(off + 8) | blob.u32(off + 16) << 32)
            out["length"] = blob.u32(off + 12) | blob.u32(off + 20) << 32
        return out
    if length < 3:
        return {"length": length}
    return {"length": length, "data": blob.bytes(off + 3, length - 3, "vendor-specific capability").hex()}


def _cap_sata(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    rev = blob.u8(off + 2)
    loc = blob.u32(off + 4)
    barloc = _bits(loc, 0, 4)
    where: str | int = barloc - 4 if 4 <= barloc <= 9 else "config" if barloc == 0xf else hx(barloc)
    return {"revision": f"{_bits(rev, 4, 4)}.{_bits(rev, 0, 4)}", "bar": where,
            "bar_offset": hx(_bits(loc, 4, 20) * 4)}


def _cap_ssvid(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    return {"subsystem_vendor": hx(blob.u16(off + 4), 4), "subsystem_device": hx(blob.u16(off + 6), 4)}


def _cap_debug(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    value = blob.u16(off + 2)
    return {"bar": _bits(value, 13, 3), "offset": hx(_bits(value, 0, 13))}


def _cap_af(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    caps = blob.u8(off + 3)
    return {"length": blob.u8(off + 2), "transactions_pending": _bit(caps, 0), "flr": _bit(caps, 1)}


def _cap_pcix(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    if ctx.header_type == 1:
        return {"secondary_status": hx(blob.u16(off + 2), 4)}
    status = blob.u32(off + 4)
    return {"64bit": _bit(status, 16), "133mhz": _bit(status, 17), "max_read_byte_count": 512 << _bits(status, 21, 2),
            "max_outstanding_split": _bits(status, 23, 3), "266mhz": _bit(status, 30), "533mhz": _bit(status, 31)}


_CapDecoder = Callable[[Blob, int, _Ctx], dict[str, Any]]
STD_DECODERS: dict[int, _CapDecoder] = {
    0x01: _cap_pm, 0x05: _cap_msi, 0x07: _cap_pcix, 0x09: _cap_vendor, 0x0a: _cap_debug,
    0x0d: _cap_ssvid, 0x10: _cap_pcie, 0x11: _cap_msix, 0x12: _cap_sata, 0x13: _cap_af,
}


def _std_caps(blob: Blob, first: int, ctx: _Ctx) -> list[dict[str, Any]]:
    """The standard capability list, in list order, bounded and cycle-checked."""
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    where, ptr = first, blob.u8(first) & 0xfc
    while ptr:
        if ptr < 0x40:
            raise blob.fail(where, f"capability pointer {ptr:#04x} points into the standard header")
        if ptr in seen:
            raise blob.fail(where, f"capability pointer {ptr:#04x} loops back to an earlier capability")
        if len(seen) >= STD_CAP_LIMIT:
            raise blob.fail(where, f"more than {STD_CAP_LIMIT} capabilities")
        seen.add(ptr)
        cap_id = blob.u8(ptr)
        decoder = STD_DECODERS.get(cap_id)
        out.append({"id": hx(cap_id, 2), "name": CAP_NAMES.get(cap_id), "offset": hx(ptr, 2),
                    "fields": decoder(blob, ptr, ctx) if decoder else {}})
        where, ptr = ptr + 1, blob.u8(ptr + 1) & 0xfc
    return out


# -- extended capabilities ---------------------------------------------------------------------

EXT_CAP_NAMES = {
    0x0000: "Null", 0x0001: "AER", 0x0002: "Virtual Channel", 0x0003: "Device Serial Number",
    0x0004: "Power Budgeting", 0x0005: "Root Complex Link Declaration",
    0x0006: "Root Complex Internal Link Control", 0x0007: "Root Complex Event Collector Endpoint Association",
    0x0008: "Multi-Function Virtual Channel", 0x0009: "Virtual Channel (MFVC)", 0x000a: "RCRB Header",
    0x000b: "Vendor-Specific Extended", 0x000c: "Configuration Access Correlation",
    0x000d: "ACS", 0x000e: "ARI", 0x000f: "ATS", 0x0010: "SR-IOV", 0x0011: "MR-IOV",
    0x0012: "Multicast", 0x0013: "PRI", 0x0014: "Enhanced Allocation", 0x0015: "Resizable BAR",
    0x0016: "Dynamic Power Allocation", 0x0017: "TPH Requester", 0x0018: "LTR",
    0x0019: "Secondary PCI Express", 0x001a: "PMUX", 0x001b: "PASID", 0x001c: "LNR",
    0x001d: "DPC", 0x001e: "L1 PM Substates", 0x001f: "PTM", 0x0020: "M-PCIe",
    0x0021: "FRS Queueing", 0x0022: "Readiness Time Reporting", 0x0023: "DVSEC",
    0x0024: "VF Resizable BAR", 0x0025: "Data Link Feature", 0x0026: "Physical Layer 16.0 GT/s",
    0x0027: "Lane Margining at the Receiver", 0x0028: "Hierarchy ID",
    0x0029: "Native PCIe Enclosure Management", 0x002a: "Physical Layer 32.0 GT/s",
    0x002b: "Alternate Protocol", 0x002c: "System Firmware Intermediary", 0x002d: "Shadow Functions",
    0x002e: "Data Object Exchange", 0x002f: "Device 3", 0x0030: "IDE", 0x0031: "Physical Layer 64.0 GT/s",
    0x0032: "Flit Logging", 0x0033: "Flit Performance Measurement", 0x0034: "Flit Error Injection",
}


# AER error bits (PCIe Base Specification, Advanced Error Reporting capability: Uncorrectable and
# Correctable Error Status/Mask/Severity registers); a set bit without a name shows as `bitN`
_AER_UNCORRECTABLE = {
    0: "undefined", 4: "data_link_protocol", 5: "surprise_down", 12: "poisoned_tlp",
    13: "flow_control_protocol", 14: "completion_timeout", 15: "completer_abort", 16: "unexpected_completion",
    17: "receiver_overflow", 18: "malformed_tlp", 19: "ecrc", 20: "unsupported_request", 21: "acs_violation",
    22: "uncorrectable_internal", 23: "mc_blocked_tlp", 24: "atomicop_egress_blocked", 25: "tlp_prefix_blocked",
    26: "poisoned_tlp_egress_blocked", 27: "dmwr_request_egress_blocked", 28: "ide_check_failed",
    29: "misrouted_ide_tlp", 30: "pcrc_check_failed", 31: "tlp_translation_egress_blocked",
}
_AER_CORRECTABLE = {
    0: "receiver_error", 6: "bad_tlp", 7: "bad_dllp", 8: "replay_num_rollover", 12: "replay_timer_timeout",
    13: "advisory_non_fatal", 14: "corrected_internal", 15: "header_log_overflow",
}


def _all_flags(value: int, names: dict[int, str], width: int = 32) -> list[str]:
    """Every set bit: its name, or `bitN` for one the table does not name (never dropped)."""
    return [names.get(bit, f"bit{bit}") for bit in range(width) if _bit(value, bit)]


def _ext_aer(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    """Capabilities, and the power-on error masks and severities (which QEMU sets per machine
    type, e.g. the `x-pcie-err-unc-mask` compat property); the status registers are run time."""
    caps = blob.u32(off + 0x18)
    return {"ecrc_generation_capable": _bit(caps, 5), "ecrc_check_capable": _bit(caps, 7),
            "multiple_header_recording_capable": _bit(caps, 9), "tlp_prefix_log_present": _bit(caps, 11),
            "uncorrectable_mask": _all_flags(blob.u32(off + 0x08), _AER_UNCORRECTABLE),
            "uncorrectable_severity": _all_flags(blob.u32(off + 0x0c), _AER_UNCORRECTABLE),
            "correctable_mask": _all_flags(blob.u32(off + 0x14), _AER_CORRECTABLE)}


def _ext_dsn(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    return {"serial": hx(blob.u64(off + 4), 16)}


def _ext_ari(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    caps = blob.u16(off + 4)
    return {"mfvc_function_groups": _bit(caps, 0), "acs_function_groups": _bit(caps, 1),
            "next_function": _bits(caps, 8, 8)}


def _ext_acs(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    caps = blob.u16(off + 4)
    return {"capabilities": _flags(caps, {0: "source_validation", 1: "translation_blocking",
                                          2: "p2p_request_redirect", 3: "p2p_completion_redirect",
                                          4: "upstream_forwarding", 5: "p2p_egress_control",
                                          6: "direct_translated_p2p"}),
            "egress_control_vector_size": _bits(caps, 8, 8)}


def _vf_bars(blob: Blob, base: int, total_vfs: int, ctx: _Ctx) -> list[dict[str, Any]]:
    """VF BAR kinds, and each VF's BAR size when the guest kernel lists the IOV resources (lines
    7–12 of `resource`, which span the BAR of every VF: Total VFs × the size of one)."""
    iov = ctx.resources[7:13] if len(ctx.resources) >= 13 else ()
    out: list[dict[str, Any]] = []
    index = 0
    while index < 6:
        value = blob.u32(base + 4 * index)
        step = 1
        if value:
            if value & 1:
                kind = "io"
            else:
                kind = {0: "mem32", 1: "mem1m", 2: "mem64", 3: "reserved"}[_bits(value, 1, 2)]
                step = 2 if kind == "mem64" else 1
            bar: dict[str, Any] = {"index": index, "kind": kind, "prefetchable": not value & 1 and _bit(value, 3)}
            if iov and total_vfs:
                bar["size"] = iov[index].size // total_vfs
            out.append(bar)
        index += step
    return out


def _ext_sriov(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    caps = blob.u32(off + 4)
    return {
        "vf_migration": _bit(caps, 0), "ari_capable_hierarchy_preserved": _bit(caps, 1),
        "interrupt_message_number": _bits(caps, 21, 11),
        "initial_vfs": blob.u16(off + 0x0c), "total_vfs": blob.u16(off + 0x0e),
        "function_dependency_link": blob.u8(off + 0x12),
        "first_vf_offset": blob.u16(off + 0x14), "vf_stride": blob.u16(off + 0x16),
        "vf_device": hx(blob.u16(off + 0x1a), 4),
        "supported_page_sizes": hx(blob.u32(off + 0x1c)),
        "vf_bars": _vf_bars(blob, off + 0x24, blob.u16(off + 0x0e), ctx),
    }


def _ext_ats(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    caps = blob.u16(off + 4)
    return {"invalidate_queue_depth": _bits(caps, 0, 5), "page_aligned_request": _bit(caps, 5),
            "global_invalidate": _bit(caps, 6)}


def _ext_pasid(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    caps = blob.u16(off + 4)
    return {"execute_permission": _bit(caps, 1), "privileged_mode": _bit(caps, 2),
            "max_pasid_width": _bits(caps, 8, 5)}


def _ext_pri(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    return {"outstanding_page_request_capacity": blob.u32(off + 8)}


def _ext_rebar(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    count = _bits(blob.u32(off + 8), 5, 3)
    if not 1 <= count <= 6:
        raise blob.fail(off + 8, f"Resizable BAR capability lists {count} BARs (1 to 6 allowed)")
    bars = []
    for n in range(count):
        entry = off + 4 + 8 * n
        bars.append({"index": _bits(blob.u32(entry + 4), 0, 3),
                     "supported_sizes": hx(_bits(blob.u32(entry), 4, 28))})
    return {"bars": bars}


def _ext_vsec(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    header = blob.u32(off + 4)
    return {"vsec_id": hx(_bits(header, 0, 16), 4), "vsec_revision": _bits(header, 16, 4),
            "vsec_length": _bits(header, 20, 12)}


def _ext_dvsec(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    header = blob.u32(off + 4)
    return {"dvsec_vendor": hx(_bits(header, 0, 16), 4), "dvsec_revision": _bits(header, 16, 4),
            "dvsec_length": _bits(header, 20, 12), "dvsec_id": hx(blob.u16(off + 8), 4)}


def _ext_caps_dword(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    return {"capabilities": hx(blob.u32(off + 4), 8)}


def _ext_vc(blob: Blob, off: int, ctx: _Ctx) -> dict[str, Any]:
    cap1 = blob.u32(off + 4)
    return {"extended_vc_count": _bits(cap1, 0, 3), "low_priority_extended_vc_count": _bits(cap1, 4, 3)}


EXT_DECODERS: dict[int, _CapDecoder] = {
    0x0001: _ext_aer, 0x0002: _ext_vc, 0x0003: _ext_dsn, 0x0009: _ext_vc, 0x000b: _ext_vsec,
    0x000d: _ext_acs, 0x000e: _ext_ari, 0x000f: _ext_ats, 0x0010: _ext_sriov, 0x0012: _ext_caps_dword,
    0x0013: _ext_pri, 0x0015: _ext_rebar, 0x0017: _ext_caps_dword, 0x001b: _ext_pasid,
    0x001d: _ext_caps_dword, 0x001e: _ext_caps_dword, 0x001f: _ext_caps_dword, 0x0023: _ext_dvsec,
    0x0025: _ext_caps_dword,
}


def _ext_caps(blob: Blob, ctx: _Ctx) -> list[dict[str, Any]]:
    """The extended capability list from 0x100, bounded and cycle-checked."""
    out: list[dict[str, Any]] = []
    header = blob.u32(CONFIG_STD)
    if header in (0, 0xffffffff):
        return out
    seen: set[int] = set()
    where, ptr = CONFIG_STD, CONFIG_STD
    while True:
        if ptr < CONFIG_STD:
            raise blob.fail(where, f"extended capability pointer {ptr:#05x} points below 0x100")
        if ptr in seen:
            raise blob.fail(where, f"extended capability pointer {ptr:#05x} loops back to an earlier capability")
        if len(seen) >= EXT_CAP_LIMIT:
            raise blob.fail(where, f"more than {EXT_CAP_LIMIT} extended capabilities")
        seen.add(ptr)
        header = blob.u32(ptr)
        cap_id = _bits(header, 0, 16)
        decoder = EXT_DECODERS.get(cap_id)
        out.append({"id": hx(cap_id, 4), "name": EXT_CAP_NAMES.get(cap_id), "version": _bits(header, 16, 4),
                    "offset": hx(ptr, 3), "fields": decoder(blob, ptr, ctx) if decoder else {}})
        nxt = _bits(header, 20, 12) & 0xffc
        if not nxt:
            return out
        where, ptr = ptr, nxt


# -- one function ------------------------------------------------------------------------------

def _names(vendor: int, device: int, sv: int | None, sd: int | None, base: int, sub: int,
           prog_if: int) -> dict[str, str | None]:
    db = pci_ids()
    if db is None:
        return {"vendor": None, "device": None, "subsystem_vendor": None, "subsystem": None,
                "base": None, "sub": None, "prog_if": None}
    return {
        "vendor": db.vendors.get(vendor), "device": db.devices.get((vendor, device)),
        "subsystem_vendor": db.vendors.get(sv) if sv is not None else None,
        "subsystem": db.subsystems.get((vendor, device, sv, sd)) if sv is not None and sd is not None else None,
        "base": db.classes.get(base), "sub": db.subclasses.get((base, sub)),
        "prog_if": db.prog_ifs.get((base, sub, prog_if)),
    }


def decode_device(where: str, config: bytes, resource: bytes) -> dict[str, Any]:
    """One function's entry from its config bytes and resource text; `where` is the function's
    directory relative to raw/ (for error messages)."""
    cfg_name, res_name = f"{where}/config", f"{where}/resource"
    size = len(config)
    if size < CONFIG_MIN:
        raise DecodeError(cfg_name, size, f"config space truncated to {size} bytes (at least {CONFIG_MIN})")
    if size > CONFIG_STD and size != CONFIG_EXT:
        raise DecodeError(cfg_name, size, f"config space of {size} bytes (256 or 4096 expected)")
    blob = Blob(cfg_name, config)
    std = Blob(cfg_name, config[:CONFIG_STD])
    resources = parse_resources(res_name, resource)

    vendor, device = blob.u16(0x00), blob.u16(0x02)
    if vendor in (0xffff, 0x0000):
        raise blob.fail(0, f"vendor id {vendor:#06x}: no function answered the config read")
    command, status = blob.u16(0x04), blob.u16(0x06)
    revision, prog_if, sub, base = blob.u8(0x08), blob.u8(0x09), blob.u8(0x0a), blob.u8(0x0b)
    header = blob.u8(0x0e)
    header_type = header & 0x7f
    if header_type not in HEADER_TYPES:
        raise blob.fail(0x0e, f"unknown header type {header_type:#04x}")
    ctx = _Ctx(vendor, device, header_type, tuple(resources))

    entry: dict[str, Any] = {}
    sv: int | None = None
    sd: int | None = None
    bridge: dict[str, Any] | None = None
    if header_type == 0:
        sv, sd = blob.u16(0x2c), blob.u16(0x2e)
        bars = _bars(blob, 6, resources, res_name)
        rom = _rom(blob, 0x30, resources[6])
        cap_ptr = 0x34
    elif header_type == 1:
        bars = _bars(blob, 2, resources, res_name)
        rom = _rom(blob, 0x38, resources[6])
        bridge = _bridge(blob, resources)
        cap_ptr = 0x34
    else:
        bars = _bars(blob, 1, resources, res_name)
        rom = {"rom_size": None, "rom_shadowed": False}
        bridge = {"primary": blob.u8(0x18), "secondary": blob.u8(0x19), "subordinate": blob.u8(0x1a)}
        cap_ptr = 0x14
        if size >= 0x44:
            sv, sd = blob.u16(0x40), blob.u16(0x42)

    caps = _std_caps(std, cap_ptr, ctx) if _bit(status, 4) else []
    if sv is None:
        ssvid = next((c["fields"] for c in caps if c["id"] == "0x0d"), None)
        if ssvid is not None:
            sv, sd = int(ssvid["subsystem_vendor"], 16), int(ssvid["subsystem_device"], 16)
    ext = _ext_caps(blob, ctx) if size == CONFIG_EXT else []

    names = _names(vendor, device, sv, sd, base, sub, prog_if)
    class_name = names["sub"] or names["base"]
    shown = names["device"] or class_name or "device"
    pin = blob.u8(0x3d)
    entry.update({
        "label": f"[{vendor:04x}:{device:04x}] {shown}",
        "vendor": hx(vendor, 4), "device": hx(device, 4),
        "subsystem_vendor": hx(sv, 4) if sv is not None else None,
        "subsystem_device": hx(sd, 4) if sd is not None else None,
        "vendor_name": names["vendor"], "device_name": names["device"],
        "subsystem_vendor_name": names["subsystem_vendor"], "subsystem_name": names["subsystem"],
        "class": {"base": hx(base, 2), "sub": hx(sub, 2), "prog_if": hx(prog_if, 2), "name": class_name,
                  "base_name": names["base"], "prog_if_name": names["prog_if"]},
        "revision": hx(revision, 2),
        "header_type": header_type,
        "multifunction": _bit(header, 7),
        "interrupt_pin": INTERRUPT_PINS.get(pin, hx(pin, 2)) if pin else None,
        "command_fixed": _command_fixed(command),
        "status": _status(status),
        "bist_capable": _bit(blob.u8(0x0f), 7),
    })
    if header_type == 0:
        entry["min_gnt"], entry["max_lat"] = blob.u8(0x3e), blob.u8(0x3f)
    entry["bars"] = bars
    entry.update(rom)
    if bridge is not None:
        entry["bridge"] = bridge
    entry["capabilities"] = caps
    entry["extended_capabilities"] = ext
    entry["config_hex"] = config.hex()
    return entry


def decode(raw: Path) -> dict[str, Any]:
    """{"DDDD:BB:DD.F": entry} for every PCI function in the capture, in address order."""
    base = raw / DEVICES
    if not base.is_dir():
        raise DecodeError(DEVICES, None, "the capture has no PCI devices")
    found = list(itertools.islice(base.iterdir(), MAX_FUNCTIONS + 1))
    if len(found) > MAX_FUNCTIONS:
        raise DecodeError(DEVICES, None, f"more than {MAX_FUNCTIONS} PCI functions")
    out: dict[str, Any] = {}
    for path in sorted(found, key=lambda p: p.name):
        where = f"{DEVICES}/{path.name}"
        if not _NAME.fullmatch(path.name) or not path.is_dir():
            raise DecodeError(where, None, "not a PCI function directory (DDDD:BB:DD.F)")
        config = read_raw(raw, f"{where}/config", CONFIG_EXT)
        resource = read_raw(raw, f"{where}/resource", RESOURCE_MAX_BYTES)
        out[path.name] = decode_device(where, config, resource)
    if not out:
        raise DecodeError(DEVICES, None, "no PCI functions in the capture")
    return out
