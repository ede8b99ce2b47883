"""A QEMU command line (libvirt's per-domain log, `ps -o args`, Proxmox's `qm showcmd`) as a profile
draft (harness/guest/draft.py).

The text is split as a shell would (`shlex`), leading `NAME=value` environment words and the
binary are skipped, and each option is read with QEMU's option syntax: `driver,key=value,...`
with `,,` for a literal comma (or a JSON object, as libvirt writes -device, -blockdev, -object
and -netdev). Devices go through the driver allow-list; disks, NICs and chardevs lose their host
backends (a blank image, a restricted user-mode network, nothing), each with a note.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from harness.errors import QabiError
from harness.guest.draft import DEFAULT_DISK, Draft, ImportRefused, Value
from harness.guest.profile import VERSIONED_MACHINE

# options that take no argument
FLAGS = {"-S", "-no-user-config", "-nodefaults", "-nodefconfig", "-no-hpet", "-no-shutdown", "-no-reboot",
         "-enable-kvm", "-nographic", "-daemonize", "-snapshot", "-full-screen", "-no-fd-bootchk", "-usb",
         "-no-acpi", "-enable-fips", "-no-quit", "-only-migratable", "-preconfig", "-no-graphic"}
# options that only concern the host (or qabi's own launcher): dropped with a note
HOST_OPTIONS = {
    "-name": "", "-mon": "monitor", "-qmp": "QMP socket", "-monitor": "monitor", "-pidfile": "",
    "-msg": "", "-sandbox": "", "-overcommit": "",
    "-display": "display", "-vnc": "VNC server", "-spice": "SPICE server", "-nographic": "display",
    "-audiodev": "audio backend (a silent one is used)", "-D": "log file", "-d": "debug log",
    "-k": "keyboard layout", "-runas": "user", "-chroot": "chroot", "-run-with": "process settings",
    "-trace": "trace events", "-accel": "accelerator (qabi takes --accel)", "-enable-kvm": "accelerator "
    "(qabi takes --accel)", "-daemonize": "", "-no-shutdown": "",
    "-no-reboot": "reboot behaviour", "-S": "", "-no-user-config": "",
    "-nodefaults": "", "-nodefconfig": "",
    "-boot": "boot menu/order (bootindex on devices is kept)", "-rtc": "RTC base and drift (qabi pins the RTC)",
    "-L": "firmware directory (the build's own is used)", "-incoming": "incoming migration",
    "-serial": "serial backend (qabi's own console is COM1)", "-full-screen": "display",
    "-snapshot": "disk snapshot mode", "-no-quit": "display",
    "-kernel": "direct kernel boot (qabi boots its own probe)", "-initrd": "initrd (host path)",
    "-append": "kernel command line", "-readconfig": "config file (a host file, not read: its devices are "
    "missing from the profile)", "-fw_cfg": "fw_cfg file from the host (not reproduced)",
    "-add-fd": "file descriptor", "-iscsi": "iSCSI initiator", "-parallel": "parallel port backend",
    "-watchdog-action": "watchdog action", "-id": "", "-only-migratable": "migration policy", "-preconfig": "start mode",
}
DROPPED_DRIVERS = {"usb-redir": "USB redirection over a host chardev"}
BACKENDS = ("-drive", "-blockdev", "-netdev", "-tpmdev", "-chardev", "-object")
VGA_OPTION = {"std": "VGA", "cirrus": "cirrus-vga", "qxl": "qxl-vga", "virtio": "virtio-vga", "vmware": "vmware-svga",
              "none": None}
MACHINE_HOST_PROPS = {"usb", "dump-guest-core", "mem-merge", "memory-backend", "accel", "kernel_irqchip",
                      "kernel-irqchip", "pflash0", "pflash1", "type", "graphics", "confidential-guest-support",
                      "sata", "smbus", "pit", "pic"}


def split_options(text: str, implied: str | None = None) -> list[tuple[str, str]]:
    """QEMU's `a=b,c=d` option text: `,,` is a literal comma; the first item may omit its key
    (`implied`: -device's driver, -machine's type, -cpu's model)."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current))
    out = []
    for n, item in enumerate(items):
        key, eq, value = item.partition("=")
        if not eq:
            if n == 0 and implied:
                out.append((implied, item))
            elif item:
                out.append((item, "on"))                 # a bare flag (`-cpu qemu64,+x` style handled apart)
        else:
            out.append((key, value))
    return out


def _options(text: str, implied: str | None) -> dict[str, Value]:
    """An option's value as a dict: a JSON object (libvirt's form) or QEMU's keyval text."""
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise QabiError(f"option value {text[:60]!r}… is not valid JSON") from None
        if not isinstance(data, dict):
            raise QabiError("an option's JSON value must be an object")
        return {str(k): v for k, v in data.items() if isinstance(v, str | int | bool)}
    return dict(split_options(text, implied))


@dataclass
class _State:
    drives: dict[str, dict[str, Value]] = field(default_factory=dict)   # -drive id / -blockdev node-name
    netdevs: dict[str, str] = field(default_factory=dict)
    tpmdevs: dict[str, str] = field(default_factory=dict)
    pflash: list[str] = field(default_factory=list)
    nics: int = 0


def tokens(text: str) -> list[str]:
    try:
        words = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:
        raise QabiError(f"not a command line: {exc}") from None
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words.pop(0)                                   # LC_ALL=C PATH=... as libvirt's log writes them
    if words and not words[0].startswith("-"):
        words.pop(0)                                   # the binary
    return words


def draft_from_argv(text: str, where: str) -> Draft:
    words = tokens(text)
    if not words:
        raise QabiError(f"{where}: no QEMU options found")
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-"):
            raise QabiError(f"{where}: {word[:60]!r} is not an option (options start with -)")
        opt = "-" + word.lstrip("-")                   # --device = -device
        if opt in FLAGS:
            pairs.append((opt, None))
            i += 1
            continue
        if i + 1 >= len(words):
            raise QabiError(f"{where}: option {opt[:40]} needs a value")
        pairs.append((opt, words[i + 1]))
        i += 2
    name = next((v for o, v in pairs if o == "-name" and v), "imported")
    draft = Draft(source=f"QEMU command line ({where})")
    draft.name = str(_options(name, "guest").get("guest", "imported"))
    _Mapper(draft).run(pairs)
    return draft


class _Mapper:
    def __init__(self, draft: Draft) -> None:
        self.d = draft
        self.s = _State()
        self.hyperv: list[str] = []
        self.secure = False

    def run(self, pairs: list[tuple[str, str | None]]) -> None:
        d = self.d
        # backends first (a -device may come before the -netdev it names)
        for opt, value in pairs:
            if opt in BACKENDS and value is not None:
                self.backend(opt, value)
        for opt, value in pairs:
            if opt in BACKENDS:
                continue
            handler = getattr(self, "opt_" + opt[1:].replace("-", "_"), None)
            if handler is not None:
                handler(value or "")
            elif opt in HOST_OPTIONS:
                if HOST_OPTIONS[opt]:
                    d.note(f"{opt} ({HOST_OPTIONS[opt]}): host side, dropped")
            else:
                raise d.refuse(f"option {opt[:40]}", "not supported by qabi profile import")
        if self.s.pflash:
            d.top["firmware"] = "ovmf-secboot" if self.secure or any(
                ".ms." in p or "secboot" in p for p in self.s.pflash) else "ovmf"
        if self.hyperv:
            d.top["hyperv"] = self.hyperv

    # -- backends: remembered by id, dropped with a note ----------------------------------------------
    def backend(self, opt: str, value: str) -> None:
        d = self.d
        if opt == "-drive":
            opts = _options(value, "file")
            ident = str(opts.get("id", f"drive{len(self.s.drives)}"))
            self.s.drives[ident] = opts
            if opts.get("file"):
                d.note(f"drive {ident}: host path {str(opts['file'])[:100]} dropped")
            if opts.get("if") == "pflash":
                self.s.pflash.append(str(opts.get("file", "")))
            elif opts.get("if") not in (None, "none"):
                self._legacy_drive(ident, opts)
        elif opt == "-blockdev":
            opts = _options(value, None)
            node = str(opts.get("node-name", ""))
            self.s.drives[node] = opts
            if opts.get("filename"):
                d.note(f"block node {node}: host path {str(opts['filename'])[:100]} dropped")
        elif opt == "-netdev":
            opts = _options(value, "type")
            kind = str(opts.get("type", "?"))
            self.s.netdevs[str(opts.get("id", ""))] = kind
            d.note(f"network backend {str(opts.get('id', ''))[:40]} ({kind[:20]}): a restricted user-mode network "
                   "is used")
        elif opt == "-tpmdev":
            opts = _options(value, "type")
            if opts.get("type") != "emulator":
                raise d.refuse(f"-tpmdev {str(opts.get('type'))[:20]}", "passes the host's TPM through: use an "
                               "emulated TPM (qabi starts its own swtpm)")
            self.s.tpmdevs[str(opts.get("id", ""))] = "emulator"
            d.note("TPM emulator state: qabi starts swtpm from its own fixed state")
        elif opt == "-chardev":
            opts = _options(value, "backend")
            d.note(f"chardev {str(opts.get('id', ''))[:40]} ({str(opts.get('backend', ''))[:20]}): host side, "
                   "dropped")
        elif opt == "-object":
            opts = _options(value, "qom-type")
            kind = str(opts.get("qom-type", ""))
            if kind in ("secret", "memory-backend-ram") and opts.get("id") in ("masterKey0", "pc.ram"):
                return                                   # libvirt's own: no guest-visible part
            d.note(f"object {kind[:30]} {str(opts.get('id', ''))[:30]}: host side, dropped")

    def _legacy_drive(self, ident: str, opts: dict[str, Value]) -> None:
        d = self.d
        kind = opts.get("if", "ide")
        cdrom = opts.get("media") == "cdrom"
        if kind == "virtio" and not cdrom:
            d.add("virtio-blk-pci", disk=DEFAULT_DISK)
        elif kind == "ide":
            index_text = str(opts.get("index", len([x for x in d.devices if x.driver.startswith("ide-")])))
            if not re.fullmatch(r"[0-3]", index_text):
                raise d.refuse(f"-drive index={index_text[:20]}", "an IDE drive index is 0 to 3")
            index = int(index_text)
            d.add("ide-cd" if cdrom else "ide-hd", bus=f"ide.{index // 2}", props={"unit": index % 2},
                  **({"cdrom": True} if cdrom else {"disk": DEFAULT_DISK}))  # type: ignore[arg-type]
        else:
            raise d.refuse(f"-drive if={str(kind)[:20]}", "not supported by qabi profile import")

    # -- the machine ----------------------------------------------------------------------------------
    def opt_machine(self, value: str) -> None:
        d = self.d
        opts = _options(value, "type")
        machine = str(opts.get("type", ""))
        pve = re.fullmatch(r"(.+)\+pve\d{1,3}", machine)
        if pve:                                        # Proxmox's own revision of an upstream type
            d.note(f"machine type {machine[:40]}: Proxmox's revision of {pve.group(1)[:40]}, checked as "
                   f"{pve.group(1)[:40]}")
            machine = pve.group(1)
        if not VERSIONED_MACHINE.fullmatch(machine):
            raise d.refuse(f"machine type {machine[:40]!r}", "not a versioned i440fx or q35 machine type (such as "
                           "pc-q35-7.2): an alias names another machine type on each QEMU build")
        d.machine = machine
        for key, val in opts.items():
            if key == "smm":
                d.top["smm"] = val in ("on", True)
            elif key == "hpet":
                d.top["hpet"] = val in ("on", True)
            elif key in ("pflash0", "pflash1"):
                node = self.s.drives.get(str(val), {})
                target = self.s.drives.get(str(node.get("file", "")), {})
                self.s.pflash.append(str(target.get("filename", node.get("filename", ""))))
            elif key not in MACHINE_HOST_PROPS:
                d.note(f"machine option {key[:30]}={str(val)[:20]}: not set by the profile (the machine type's "
                       "default applies)")

    opt_M = opt_machine

    def opt_cpu(self, value: str) -> None:
        d = self.d
        parts = value.split(",")
        model = parts[0]
        if model in ("host", "max"):
            raise d.refuse(f"-cpu {model}", "the CPU the guest sees depends on the host (or on the QEMU build): use "
                           "a named model such as Skylake-Client-v4")
        d.cpu_model = model
        for part in parts[1:]:
            key, eq, val = part.partition("=")
            if key.startswith(("hv-", "hv_")):
                name = key[3:].replace("_", "-")
                if eq and val not in ("on", "off"):
                    self.hyperv.append(f"{name}={val}")
                elif val != "off":
                    self.hyperv.append(name)
            elif part.startswith(("+", "-")) and not eq:
                d.cpu_flags.append(part)
            elif eq and val in ("on", "off"):
                d.cpu_flags.append(f"{'+' if val == 'on' else '-'}{key}")
            elif eq and re.fullmatch(r"\d+", val):
                d.cpu_flags.append(part)
            else:
                d.note(f"CPU option {part[:40]}: not reproduced")

    def opt_m(self, value: str) -> None:
        opts = _options(value, "size")
        size = str(opts.get("size", "128"))
        match = re.fullmatch(r"(\d{1,12})([MGT]?)B?", size.upper())
        if not match:
            raise self.d.refuse(f"-m {size[:20]}", "not a memory size")
        self.d.memory_mib = int(match.group(1)) * {"": 1, "M": 1, "G": 1024, "T": 1 << 20}[match.group(2)]
        if "slots" in opts or "maxmem" in opts:
            self.d.note("memory hotplug slots: not reproduced")

    def opt_smp(self, value: str) -> None:
        opts = _options(value, "cpus")
        smp: dict[str, int] = {}
        for key in ("cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus"):
            if key in opts:
                try:
                    smp[key] = int(str(opts[key]))
                except ValueError:
                    raise self.d.refuse(f"-smp {key}", "not a number") from None
        self.d.smp = smp

    def opt_uuid(self, value: str) -> None:
        self.d.uuid = value.lower()

    def opt_smbios(self, value: str) -> None:
        d = self.d
        opts = _options(value, None)
        if "file" in opts:
            raise d.refuse("-smbios file=", "loads SMBIOS tables from a host file: give the strings with "
                           "-smbios type=N,field=value")
        kind_text = str(opts.pop("type", ""))
        if not re.fullmatch(r"\d{1,3}", kind_text):
            raise d.refuse(f"-smbios type={kind_text[:20]}", "not an SMBIOS structure type")
        kind = int(kind_text)
        if kind not in (0, 1, 2, 3):
            d.note(f"SMBIOS type {kind}: not reproduced")
            return
        opts.pop("uuid", None)
        if kind == 0:
            opts.pop("uefi", None)
        d.smbios.setdefault(kind, {}).update({k: str(v) for k, v in opts.items()})

    def opt_global(self, value: str) -> None:
        d = self.d
        if value.startswith("driver="):
            opts = _options(value, None)
            driver, prop, val = str(opts.get("driver")), str(opts.get("property")), str(opts.get("value"))
        else:
            target, _, val = value.partition("=")
            driver, _, prop = target.rpartition(".")
        if driver == "cfi.pflash01" and prop == "secure":
            self.secure = val == "on"
        elif driver in ("ICH9-LPC", "PIIX4_PM") and prop in ("disable_s3", "disable_s4") and val in ("0", "1"):
            pm = d.top.setdefault("pm", {})
            assert isinstance(pm, dict)
            pm[prop.removeprefix("disable_")] = val == "0"
        else:
            d.note(f"-global {driver[:30]}.{prop[:30]}={val[:20]}: not reproduced")

    def opt_no_hpet(self, value: str) -> None:
        self.d.top["hpet"] = False

    def opt_vga(self, value: str) -> None:
        if value not in VGA_OPTION:
            raise self.d.refuse(f"-vga {value[:20]}", "not supported by qabi profile import")
        driver = VGA_OPTION[value]
        if driver:
            self.d.add(driver)

    def opt_bios(self, value: str) -> None:
        self.d.note(f"-bios {value[:100]}: the build's own firmware is used")
        if "ovmf" in value.lower():
            self.d.top["firmware"] = "ovmf"

    def opt_nic(self, value: str) -> None:
        opts = _options(value, "type")
        self.d.note(f"-nic backend {str(opts.get('type', ''))[:20]}: a restricted user-mode network is used")
        model = str(opts.get("model", "e1000"))
        self.d.add({"virtio": "virtio-net-pci"}.get(model, model), mac=self._mac(opts.get("mac")))

    def _mac(self, value: Value | None) -> str:
        self.s.nics += 1
        if value is None:                                # QEMU's own default: 52:54:00:12:34:56 + n
            return f"52:54:00:12:34:{0x55 + self.s.nics:02x}"
        return str(value).lower()

    # -- devices ------------------------------------------------------------------------------------
    def opt_device(self, value: str) -> None:
        d = self.d
        opts = _options(value, "driver")
        driver = str(opts.pop("driver", ""))
        if driver in ("tpm-crb", "tpm-tis"):
            if str(opts.get("tpmdev", "")) not in self.s.tpmdevs:
                raise d.refuse(f"device {driver}", "its tpmdev is not an emulator (-tpmdev emulator)")
            d.top["tpm"] = driver.removeprefix("tpm-")
            return
        if driver in DROPPED_DRIVERS:
            d.note(f"{driver} {str(opts.get('id', ''))[:30]}: {DROPPED_DRIVERS[driver]}, dropped")
            return
        if driver == "isa-serial" and str(opts.get("index", "0")) == "0" and "chardev" in opts:
            d.note("serial port COM1: qabi's own console takes it")
            return
        keys: dict[str, object] = {}
        ident = opts.pop("id", None)
        bus = opts.pop("bus", None)
        addr = opts.pop("addr", None)
        if "netdev" in opts:
            opts.pop("netdev")
            keys["mac"] = self._mac(opts.pop("mac", None))
        elif "mac" in opts:
            keys["mac"] = self._mac(opts.pop("mac"))
        if "drive" in opts:
            node = str(opts.pop("drive"))
            drive = self.s.drives.get(node, {})
            if driver in ("ide-cd", "scsi-cd") or drive.get("media") == "cdrom":
                keys["cdrom"] = True
            else:
                keys["disk"] = DEFAULT_DISK
                d.note(f"disk {node[:40]}: a blank {DEFAULT_DISK} image (qabi never reads the VM's image)")
        elif driver in ("ide-cd", "scsi-cd"):
            keys["cdrom"] = True
        if "chardev" in opts:
            opts.pop("chardev")
        if "audiodev" in opts:
            opts.pop("audiodev")
            keys["audio"] = True
        for host_side in ("iothread", "rng", "memdev"):
            if host_side in opts:
                d.note(f"{driver} {host_side} {str(opts.pop(host_side))[:40]}: host side, dropped")
        props = self._props(driver, opts)
        d.add(driver, id=str(ident) if ident else None, bus=str(bus) if bus else None,
              addr=_addr(addr) if addr is not None else None, props=props, **keys)  # type: ignore[arg-type]

    def _props(self, driver: str, opts: dict[str, Value]) -> dict[str, Value]:
        """libvirt's byte sizes of QXL as the MiB properties the allow-list has."""
        props = dict(opts)
        if driver in ("qxl-vga", "qxl"):
            for key in ("ram_size", "vram_size"):
                if key in props:
                    props[f"{key}_mb"] = int(str(props.pop(key)), 0) // (1 << 20)
        return props


def _addr(value: Value) -> str:
    text = str(value)
    if isinstance(value, int):
        return f"{value:#x}"
    slot, dot, function = text.partition(".")
    try:
        out = f"{int(slot, 16):#x}"
        if dot and int(function, 16):
            out += f".{int(function, 16):#x}"
    except ValueError:
        raise ImportRefused(f"PCI address {text[:20]!r} is not slot[.function]") from None
    return out
