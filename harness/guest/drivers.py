"""The driver allow-list: which QEMU device models a guest profile may use, and which properties of
each, with the type of value each property takes.

A profile is hostile input and QEMU runs as root: a driver or a property that reaches the host (a
host USB device, a PCI function's IOMMU group, /dev/vhost-*, a file descriptor, a file, a socket, a
chardev, a netdev, a block device) must never get from a profile to QEMU's command line. So nothing
is refused by name alone: a driver is allowed only if it is in `DRIVERS` (an emulated device model
that reaches nothing on the host but what the launcher gives it: a blank disk image, a restricted
user-mode network, a silent audio backend), and a property only if it is in that driver's list,
with a value of its type. `REFUSED_DRIVERS` and `REFUSED_PROPERTIES` only say *why* something not
on the list is refused.

This module is data plus a small lookup: `driver_rule(name)`, `check_driver(name)` and
`check_property(rule, key, value)` are what the profile loader uses, and what `qabi profile
import` (libvirt XML, QEMU argv) uses to decide what to keep and what to drop with a note.
`drivers_markdown()` renders the tables for the README (a test checks they agree).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from harness.errors import QabiError


class NotAllowed(QabiError):
    """A driver, property or value that a profile may not use; the message says why."""


# -- value types ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValueType:
    """How a property's value is checked and written for QEMU. `qemu` is the class of QEMU property
    types it stands for (`bool`, `OnOffAuto`, `int`, `size`, `str`), for the test that compares the
    table with real builds' `-device DRIVER,help`."""

    name: str                                   # as the README and the messages show it
    qemu: str
    sample: object                              # a value of this type (tests, docs)
    parse: Callable[[object], str | None]       # the QEMU option text, or None if not of this type


def _bool(value: object) -> str | None:
    if isinstance(value, bool):
        return "on" if value else "off"
    return value if value in ("on", "off") else None


def _on_off_auto(value: object) -> str | None:
    return _bool(value) or (value if value == "auto" else None)


def _integer(low: int, high: int) -> Callable[[object], str | None]:
    def parse(value: object) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
        return str(value) if ok else None
    return parse


def _pattern(regex: str) -> Callable[[object], str | None]:
    compiled = re.compile(regex)

    def parse(value: object) -> str | None:
        return value if isinstance(value, str) and compiled.fullmatch(value) else None
    return parse


def _size(value: object) -> str | None:
    return _integer(0, 1 << 62)(value) or _pattern(r"\d{1,16}[KMGT]?")(value)


def _int_type(bits: int, signed: bool = False, low: int | None = None, high: int | None = None) -> ValueType:
    lo = low if low is not None else (-(1 << (bits - 1)) if signed else 0)
    hi = high if high is not None else ((1 << (bits - 1)) - 1 if signed else (1 << bits) - 1)
    return ValueType(f"integer {lo}..{hi}", "int", max(lo, 0) if lo <= 0 <= hi else lo, _integer(lo, hi))


BOOL = ValueType("true/false", "bool", True, _bool)
ON_OFF_AUTO = ValueType("true/false/\"auto\"", "OnOffAuto", "auto", _on_off_auto)
U8, U16, U32, U64 = (_int_type(bits) for bits in (8, 16, 32, 64))
I32 = _int_type(32, signed=True)
BOOTINDEX = _int_type(32, low=-1, high=1023)
ROMBAR = _int_type(32, low=0, high=1)
SIZE = ValueType("size (bytes, or \"64M\")", "size", "64M", _size)
# identity strings the guest reads (disk serial, SCSI vendor, port names): no `,` `/` `=` or spaces
TEXT = ValueType("text [A-Za-z0-9._:+-], up to 64", "str", "QABI-1", _pattern(r"[A-Za-z0-9._:+-]{0,64}"))
NO_ROM = ValueType("\"\" only (no option ROM; a path would be a host file)", "str", "", _pattern(""))
USB_PORT = ValueType("USB port path such as \"1\" or \"1.2\"", "str", "1", _pattern(r"[1-9]\d?(?:\.[1-9]\d?){0,4}"))
UUID = ValueType("lower-case UUID", "str", "6a1e0d3c-0000-4000-8000-0000000000aa",
                 _pattern(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"))
DUPLEX = ValueType("\"half\" or \"full\"", "str", "full", _pattern("half|full"))


# -- property groups (shared by several drivers) -------------------------------------------------
PROPERTY_GROUPS: dict[str, dict[str, ValueType]] = {
    "pci": {"multifunction": BOOL, "rombar": ROMBAR, "romfile": NO_ROM, "acpi-index": U32},
    "virtio": {"disable-legacy": ON_OFF_AUTO, "disable-modern": BOOL, "event_idx": BOOL, "indirect_desc": BOOL,
               "any_layout": BOOL, "iommu_platform": BOOL, "packed": BOOL, "ats": BOOL, "aer": BOOL,
               "page-per-vq": BOOL, "modern-pio-notify": BOOL},
    "nic": {"bootindex": BOOTINDEX},
    "disk": {"serial": TEXT, "bootindex": BOOTINDEX, "logical_block_size": SIZE, "physical_block_size": SIZE,
             "min_io_size": SIZE, "opt_io_size": SIZE, "discard_granularity": SIZE, "write-cache": ON_OFF_AUTO},
    "scsi-disk": {"vendor": TEXT, "product": TEXT, "ver": TEXT, "wwn": U64, "port_wwn": U64, "channel": U32,
                  "scsi-id": U32, "lun": U32},
    "ide-disk": {"model": TEXT, "ver": TEXT, "wwn": U64, "unit": U32},
    "usb": {"port": USB_PORT, "serial": TEXT, "msos-desc": BOOL, "attached": BOOL},
    "usb-input": {"usb_version": _int_type(32, low=1, high=2)},
    "uhci": {"bandwidth": U32, "maxframes": U32},
    "xhci": {"p2": _int_type(32, low=1, high=15), "p3": _int_type(32, low=1, high=15), "streams": BOOL},
    "virtio-input": {"serial": TEXT, "vectors": U32},
    "vga": {"vgamem_mb": _int_type(32, low=1, high=256)},
    "edid": {"edid": BOOL, "xres": U32, "yres": U32},
    "qxl": {"ram_size_mb": U32, "vram_size_mb": U32, "vram64_size_mb": U32, "vgamem_mb": U32, "revision": U32,
            "surfaces": _int_type(32, low=1, high=65536), "max_outputs": U16, "xres": U32, "yres": U32},
    "virtio-gpu": {"max_outputs": _int_type(32, low=1, high=16), "vectors": U32},
    "hda": {"msi": ON_OFF_AUTO, "old_msi_addr": BOOL},
    "hda-codec": {"cad": _int_type(32, low=0, high=14), "mixer": BOOL, "use-timer": BOOL},
    "bridge-reserve": {"bus-reserve": U32, "io-reserve": SIZE, "mem-reserve": SIZE, "pref32-reserve": SIZE,
                       "pref64-reserve": SIZE},
    "pcie-port": {"chassis": U8, "slot": U16, "port": U8, "hotplug": BOOL, "aer_log_max": U16,
                  "power_controller_present": BOOL},
    "virtio-net": {"mq": BOOL, "csum": BOOL, "guest_csum": BOOL, "gso": BOOL, "guest_tso4": BOOL,
                   "guest_tso6": BOOL, "guest_ecn": BOOL, "guest_ufo": BOOL, "guest_uso4": BOOL,
                   "guest_uso6": BOOL, "mrg_rxbuf": BOOL, "status": BOOL, "ctrl_vq": BOOL, "ctrl_rx": BOOL,
                   "ctrl_vlan": BOOL, "ctrl_rx_extra": BOOL, "ctrl_mac_addr": BOOL, "ctrl_guest_offloads": BOOL,
                   "guest_announce": BOOL, "rss": BOOL, "hash": BOOL, "speed": I32, "duplex": DUPLEX,
                   "rx_queue_size": U16, "tx_queue_size": U16, "vectors": U32},
}

# the launcher's own keys: what each of them gives the device on the host side
KEYS = {"mac": "a restricted user-mode network backend (no host network device)",
        "disk": "a blank raw image qabi creates for the run",
        "cdrom": "an empty CD-ROM drive",
        "audio": "a silent audio backend (-audiodev none)"}


@dataclass(frozen=True)
class DriverRule:
    """One allowed driver: what it is, which property groups and own properties it takes, and which
    of the launcher's keys (`mac`, `disk`, `cdrom`, `audio`) apply to it."""

    name: str
    kind: str
    groups: tuple[str, ...] = ()
    props: Mapping[str, ValueType] = field(default_factory=dict)
    keys: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def properties(self) -> dict[str, ValueType]:
        merged: dict[str, ValueType] = {}
        for group in self.groups:
            merged.update(PROPERTY_GROUPS[group])
        merged.update(self.props)
        return merged


def _rules(kind: str, names: str, groups: tuple[str, ...] = (), keys: tuple[str, ...] = (),
           props: Mapping[str, ValueType] | None = None) -> list[DriverRule]:
    return [DriverRule(n, kind, groups, dict(props or {}), keys) for n in names.split()]


_PCI, _VIRTIO = ("pci",), ("pci", "virtio")
# The allow-list. Each driver is an emulated model: what the guest sees is made by QEMU itself, and
# nothing reaches the host but what the launcher attaches through `mac`, `disk`, `cdrom`, `audio`.
_ALLOWED: list[DriverRule] = [
    # NICs (mac = … gives a restricted user-mode backend)
    *_rules("NIC", "e1000 e1000-82544gc e1000-82545em", _PCI + ("nic",), ("mac",),
            {"autonegotiation": BOOL, "mitigation": BOOL, "extra_mac_registers": BOOL, "init-vet": BOOL}),
    *_rules("NIC", "e1000e", _PCI + ("nic",), ("mac",), {"subsys_ven": U16, "subsys": U16, "init-vet": BOOL}),
    *_rules("NIC", "igb rtl8139 ne2k_pci pcnet vmxnet3", _PCI + ("nic",), ("mac",)),
    *_rules("NIC", "virtio-net-pci", _VIRTIO + ("nic", "virtio-net"), ("mac",)),
    # storage controllers, and the disks on them (disk = … / cdrom = true attach qabi's own image)
    *_rules("storage", "ich9-ahci lsi53c895a", _PCI),
    *_rules("storage", "megasas megasas-gen2", _PCI,
            props={"hba_serial": TEXT, "sas_address": U64, "max_cmds": U32, "max_sge": U32, "msi": ON_OFF_AUTO,
                   "msix": ON_OFF_AUTO, "use_jbod": BOOL}),
    *_rules("storage", "virtio-scsi-pci", _VIRTIO,
            props={"num_queues": U32, "virtqueue_size": U32, "max_sectors": U32, "cmd_per_lun": U32,
                   "seg_max_adjust": BOOL, "hotplug": BOOL, "param_change": BOOL, "vectors": U32}),
    *_rules("disk", "virtio-blk-pci", _VIRTIO + ("disk",), ("disk",),
            {"num-queues": U16, "queue-size": U16, "seg-max-adjust": BOOL, "discard": BOOL,
             "write-zeroes": BOOL, "config-wce": BOOL, "vectors": U32}),
    *_rules("disk", "nvme", _PCI + ("disk",), ("disk",),
            {"max_ioqpairs": U32, "msix_qsize": U16, "mdts": U8, "use-intel-id": BOOL, "aerl": U8,
             "aer_max_queued": U32}),
    *_rules("disk", "ide-hd", ("disk", "ide-disk"), ("disk",), {"rotation_rate": U16}),
    *_rules("disk", "ide-cd", ("disk", "ide-disk"), ("cdrom",)),
    *_rules("disk", "scsi-hd", ("disk", "scsi-disk"), ("disk",),
            {"removable": BOOL, "dpofua": BOOL, "rotation_rate": U16}),
    *_rules("disk", "scsi-cd", ("disk", "scsi-disk"), ("cdrom",)),
    *_rules("disk", "usb-storage", ("usb",), ("disk",), {"removable": BOOL, "bootindex": BOOTINDEX}),
    # USB controllers and emulated USB devices
    *_rules("USB", "piix3-usb-uhci piix4-usb-uhci", _PCI + ("uhci",)),
    *_rules("USB", "ich9-usb-uhci1 ich9-usb-uhci2 ich9-usb-uhci3 ich9-usb-uhci4 ich9-usb-uhci5 ich9-usb-uhci6",
            _PCI + ("uhci",), props={"firstport": U32}),
    *_rules("USB", "usb-ehci ich9-usb-ehci1 ich9-usb-ehci2", _PCI, props={"maxframes": U32}),
    *_rules("USB", "qemu-xhci", _PCI + ("xhci",)),
    *_rules("USB", "nec-usb-xhci", _PCI + ("xhci",),
            props={"intrs": U32, "slots": U32, "msi": ON_OFF_AUTO, "msix": ON_OFF_AUTO}),
    *_rules("USB", "usb-tablet usb-mouse usb-kbd", ("usb", "usb-input")),
    *_rules("USB", "usb-hub", ("usb",), props={"ports": _int_type(32, low=1, high=8), "port-power": BOOL}),
    # display
    *_rules("display", "VGA", _PCI + ("vga", "edid"), props={"qemu-extended-regs": BOOL, "mmio": BOOL}),
    *_rules("display", "cirrus-vga", _PCI + ("vga",), props={"blitter": BOOL}),
    *_rules("display", "vmware-svga", _PCI + ("vga",)),
    *_rules("display", "qxl-vga qxl", _PCI + ("qxl",)),
    *_rules("display", "virtio-vga virtio-gpu-pci", _VIRTIO + ("virtio-gpu", "edid")),
    *_rules("display", "bochs-display", _PCI + ("edid",), props={"vgamem": SIZE}),
    *_rules("display", "ramfb"),
    # sound (audio = true connects a silent backend)
    *_rules("sound", "intel-hda ich9-intel-hda", _PCI + ("hda",)),
    *_rules("sound", "hda-duplex hda-output hda-micro", ("hda-codec",), ("audio",)),
    *_rules("sound", "AC97 ES1370", _PCI, ("audio",)),
    # virtio devices that reach nothing on the host
    *_rules("virtio", "virtio-serial-pci", _VIRTIO, props={"max_ports": U32, "vectors": U32}),
    *_rules("virtio", "virtserialport virtconsole", props={"name": TEXT, "nr": U32}),
    *_rules("virtio", "virtio-balloon-pci", _VIRTIO,
            props={"deflate-on-oom": BOOL, "free-page-reporting": BOOL}),
    *_rules("virtio", "virtio-rng-pci", _VIRTIO, props={"max-bytes": U64, "period": U32, "vectors": U32}),
    *_rules("input", "virtio-keyboard-pci virtio-mouse-pci virtio-tablet-pci", _VIRTIO + ("virtio-input",)),
    # watchdogs, panic notifiers, chipset extras
    *_rules("watchdog", "i6300esb", _PCI),
    *_rules("watchdog", "ib700"),
    *_rules("chipset", "pvpanic", props={"events": U8, "ioport": U16}),
    *_rules("chipset", "pvpanic-pci", _PCI, props={"events": U8}),
    *_rules("chipset", "vmgenid", props={"guid": UUID}),
    *_rules("chipset", "vmcoreinfo"),
    *_rules("chipset", "isa-serial", props={"index": _int_type(32, low=0, high=3)}),
    # PCI and PCIe topology
    *_rules("bridge", "pci-bridge", _PCI + ("bridge-reserve",), props={"chassis_nr": U8, "shpc": BOOL,
                                                                     "msi": ON_OFF_AUTO}),
    *_rules("bridge", "pcie-pci-bridge", _PCI, props={"msi": ON_OFF_AUTO}),
    *_rules("bridge", "pcie-root-port", _PCI + ("bridge-reserve", "pcie-port"), props={"disable-acs": BOOL}),
    *_rules("bridge", "ioh3420", _PCI + ("pcie-port",), props={"disable-acs": BOOL}),
    *_rules("bridge", "xio3130-downstream", _PCI + ("pcie-port",)),
    *_rules("bridge", "x3130-upstream", _PCI, props={"port": U8, "aer_log_max": U16}),
    *_rules("bridge", "i82801b11-bridge", _PCI),
    *_rules("bridge", "pxb pxb-pcie", _PCI, props={"bus_nr": U8, "numa_node": U16}),
]
ALIASES = {"ahci": "ich9-ahci", "lsi": "lsi53c895a", "virtio-net": "virtio-net-pci", "virtio-blk": "virtio-blk-pci",
           "virtio-scsi": "virtio-scsi-pci", "virtio-serial": "virtio-serial-pci",
           "virtio-balloon": "virtio-balloon-pci", "virtio-rng": "virtio-rng-pci", "virtio-gpu": "virtio-gpu-pci",
           "virtio-keyboard": "virtio-keyboard-pci", "virtio-mouse": "virtio-mouse-pci",
           "virtio-tablet": "virtio-tablet-pci", "e1000-82540em": "e1000", "ac97": "AC97", "es1370": "ES1370"}
DRIVERS: dict[str, DriverRule] = {rule.name: rule for rule in _ALLOWED}

# Why a driver that is not allowed is refused: the first matching glob says it; anything else is
# "not on the allow-list". Order matters (specific before general).
REFUSED_DRIVERS: tuple[tuple[str, str], ...] = (
    ("usb-host", "claims a host USB device"),
    ("vfio-*", "hands a host PCI function (its IOMMU group) or a mediated device to the guest"),
    ("vhost-user-*", "talks to a vhost-user backend over a host socket"),
    ("vhost-*", "opens a host vhost device (/dev/vhost-net, /dev/vhost-vsock, a vhost-scsi target)"),
    ("usb-redir", "redirects a USB device through a chardev (a host socket or a remote client)"),
    ("ccid-card-passthru", "passes a smart-card reader through a chardev"),
    ("ccid-card-emulated", "reads host smart-card certificates or a host card reader"),
    ("u2f-passthru", "opens a host U2F (hidraw) device"),
    ("virtio-input-host*", "reads a host evdev input device"),
    ("scsi-generic", "passes a host SCSI device (/dev/sg*) through"),
    ("scsi-block", "passes a host block device through"),
    ("virtio-9p*", "exports a host directory"),
    ("usb-mtp", "exports a host directory"),
    ("ivshmem*", "maps host shared memory or a host socket"),
    ("tpm-*", "needs a tpmdev backend (a host TPM or an swtpm socket)"),
    ("nvdimm", "needs a memory backend (host memory or a host file)"),
    ("pc-dimm", "needs a memory backend (host memory or a host file)"),
    ("virtio-mem*", "needs a memory backend (host memory or a host file)"),
    ("virtio-pmem*", "needs a memory backend (host memory or a host file)"),
    ("cxl-type3", "needs a memory backend (host memory or a host file)"),
    ("pvrdma", "opens a host RDMA device"),
    ("x-pci-proxy-dev", "talks to a remote device process over a host socket"),
    ("*loader", "loads a host file into guest memory"),
    ("ipmi-bmc-extern", "talks to an external BMC through a chardev"),
    ("*-x86_64-cpu", "is a CPU model: set cpu = … in the profile"),
)

# Why a property that is not allowed is refused (checked on every driver).
REFUSED_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("*fd", "passes a host file descriptor"),
    ("*fds", "passes host file descriptors"),
    ("chardev", "connects a host character device (a file, a socket, a pty, the terminal)"),
    ("netdev", "connects a host network backend (mac = … gives the NIC a restricted user-mode one)"),
    ("drive", "attaches a host block device or image (disk = … or cdrom = true attach qabi's own)"),
    ("romfile", "names a host file (romfile = \"\", no option ROM, is the only value allowed)"),
    ("*file*", "names a host file"),
    ("*path*", "names a host path"),
    ("*dir", "names a host directory"),
    ("dir*", "names a host directory"),
    ("pcap", "writes a packet capture to a host file"),
    ("*sock*", "names a host socket"),
    ("host*", "reaches a host device or a host-side object"),
    ("sysfsdev", "names a host device"),
    ("evdev", "opens a host input device"),
    ("memdev", "maps host memory or a host file"),
    ("pmrdev", "maps host memory or a host file"),
    ("rng", "selects a host entropy backend"),
    ("tpmdev", "selects a host TPM backend"),
    ("fsdev", "exports a host directory"),
    ("iothread", "names a host I/O thread object"),
    ("audiodev", "is set by audio = true (a silent backend)"),
    ("id", "is a profile key of its own (id = …)"),
    ("bus", "is a profile key of its own (bus = …)"),
    ("addr", "is a profile key of its own (addr = …)"),
    ("mac", "is a profile key of its own (mac = …, which also gives the NIC its backend)"),
    ("driver", "is a profile key of its own (driver = …)"),
)


def _why(table: tuple[tuple[str, str], ...], name: str) -> str | None:
    lowered = name.lower()
    return next((why for glob, why in table if fnmatch.fnmatchcase(lowered, glob.lower())), None)


# -- the lookup ---------------------------------------------------------------------------------------
def driver_rule(name: str) -> DriverRule | None:
    """The allow-list entry of `name` (a QEMU alias resolves to its driver), or None."""
    return DRIVERS.get(ALIASES.get(name, name))


def driver_refusal(name: str) -> str:
    """Why `name` may not be used in a profile (for a driver that is not on the allow-list)."""
    why = _why(REFUSED_DRIVERS, name)
    if why:
        return f"it {why}"
    close = difflib.get_close_matches(name, sorted(DRIVERS), n=4, cutoff=0.75)
    hint = f" (close: {', '.join(close)})" if close else ""
    return f"it is not on the allow-list of emulated drivers{hint}"


def property_refusal(key: str) -> str | None:
    """Why property `key` is refused on every driver (it reaches the host, or the launcher owns it),
    or None for a name that is simply not on a driver's list."""
    return _why(REFUSED_PROPERTIES, key)


def check_driver(name: str) -> DriverRule:
    """The allow-list entry of `name`; NotAllowed naming the driver and why, if it has none."""
    rule = driver_rule(name)
    if rule is None:
        raise NotAllowed(f"driver {name[:80]!r} is not allowed in a profile: {driver_refusal(name)}")
    return rule


def check_property(rule: DriverRule, key: str, value: object) -> str:
    """The QEMU option text of property `key` = `value` on `rule`'s driver; NotAllowed naming the
    driver, the property and why when the property is not on the driver's list or the value is not
    of its type."""
    allowed = rule.properties()
    kind = allowed.get(key)
    text = kind.parse(value) if kind is not None else None
    if text is not None:
        return text
    why = property_refusal(key)
    if why:
        raise NotAllowed(f"property {key[:64]!r} is not allowed on {rule.name}: it {why}")
    if kind is None:
        known = ", ".join(sorted(allowed)) or "none"
        raise NotAllowed(f"property {key[:64]!r} is not allowed on {rule.name} (not on its allow-list; allowed: "
                         f"{known})")
    if isinstance(value, str):
        shown = f"{value[:80]!r}"
    elif isinstance(value, bool | int):
        shown = str(value).lower() if isinstance(value, bool) else str(value)
    else:
        shown = f"a {type(value).__name__}"
    raise NotAllowed(f"property {key[:64]!r} of {rule.name} must be {kind.name}, not {shown}")


def check_key(rule: DriverRule, key: str) -> None:
    """NotAllowed when the launcher key `key` (mac, disk, cdrom, audio) does not apply to the driver."""
    if key not in rule.keys:
        takes = ", ".join(rule.keys) or "none of them"
        raise NotAllowed(f"{key} = … does not apply to {rule.name} (of mac, disk, cdrom, audio it takes {takes})")


# -- the README's tables -----------------------------------------------------------------------------
def drivers_markdown() -> str:
    """The allow-list as Markdown: drivers by kind with their properties, the property groups with
    their types, and why the rest is refused."""
    lines = ["| kind | drivers | keys | properties |", "| --- | --- | --- | --- |"]
    rows: dict[tuple[str, tuple[str, ...], str], list[str]] = {}
    for rule in _ALLOWED:
        own = ", ".join(f"`{k}` ({t.name})" for k, t in rule.props.items())
        props = ", ".join([*(f"*{g}*" for g in rule.groups), *([own] if own else [])]) or "none"
        rows.setdefault((rule.kind, rule.keys, props), []).append(rule.name)
    for (kind, keys, props), names in rows.items():
        key_text = ", ".join(f"`{k}`" for k in keys) or "—"
        lines.append(f"| {kind} | {', '.join(f'`{n}`' for n in names)} | {key_text} | {props} |")
    lines += ["", "Aliases: " + ", ".join(f"`{a}` → `{d}`" for a, d in ALIASES.items()) + ".", "",
              "| property group | properties (value) |", "| --- | --- |"]
    for group, members in PROPERTY_GROUPS.items():
        lines.append(f"| *{group}* | {', '.join(f'`{k}` ({t.name})' for k, t in members.items())} |")
    lines += ["", "| refused driver | why |", "| --- | --- |"]
    lines += [f"| `{glob}` | it {why} |" for glob, why in REFUSED_DRIVERS]
    lines += ["| any other | it is not on the allow-list of emulated drivers |",
              "", "| refused property (on every driver) | why |", "| --- | --- |"]
    lines += [f"| `{glob}` | it {why} |" for glob, why in REFUSED_PROPERTIES]
    lines.append("| any other | it is not on the driver's allow-list |")
    return "\n".join(lines)
