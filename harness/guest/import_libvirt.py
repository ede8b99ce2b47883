"""A libvirt domain XML (`virsh dumpxml NAME`, with every controller and address filled in) as a
profile draft (harness/guest/draft.py), mapped as libvirt's QEMU driver maps it to a command
line (libvirt `src/qemu/qemu_command.c`; checked against `virsh domxml-to-native qemu-argv` by
tests/test_profile_import.py).

The XML is parsed with defusedxml: a DTD (hence any entity: billion laughs, external entities) is
refused, and the input is bounded in bytes before it is parsed.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from harness.errors import QabiError
from harness.guest.draft import DEFAULT_DISK, Draft, Value
from harness.guest.profile import VERSIONED_MACHINE

HYPERV_FLAGS = ("relaxed", "vapic", "vpindex", "runtime", "synic", "stimer", "reset", "frequencies",
                "reenlightenment", "tlbflush", "ipi", "evmcs", "avic", "emsr_bitmap", "xmm_input")
NIC_MODELS = {"virtio": "virtio-net-pci", "e1000e": "e1000e", "e1000": "e1000", "rtl8139": "rtl8139",
              "vmxnet3": "vmxnet3", "igb": "igb", "ne2k_pci": "ne2k_pci", "pcnet": "pcnet"}
USB_MODELS = {"qemu-xhci": "qemu-xhci", "nec-xhci": "nec-usb-xhci", "piix3-uhci": "piix3-usb-uhci",
              "piix4-uhci": "piix4-usb-uhci", "ehci": "usb-ehci", "ich9-ehci1": "ich9-usb-ehci1",
              "ich9-uhci1": "ich9-usb-uhci1", "ich9-uhci2": "ich9-usb-uhci2", "ich9-uhci3": "ich9-usb-uhci3"}
PCI_CONTROLLERS = {"pcie-root-port": "pcie-root-port", "pci-bridge": "pci-bridge",
                   "dmi-to-pci-bridge": "i82801b11-bridge", "pcie-to-pci-bridge": "pcie-pci-bridge",
                   "pcie-switch-upstream-port": "x3130-upstream",
                   "pcie-switch-downstream-port": "xio3130-downstream", "pci-expander-bus": "pxb",
                   "pcie-expander-bus": "pxb-pcie"}
SOUND_MODELS = {"ich9": "ich9-intel-hda", "ich6": "intel-hda", "ac97": "AC97", "es1370": "ES1370"}
CODECS = {"duplex": "hda-duplex", "micro": "hda-micro", "output": "hda-output"}
SCSI_MODELS = {"virtio-scsi": "virtio-scsi-pci", "lsilogic": "lsi53c895a", "megasas": "megasas"}
INPUTS = {("tablet", "usb"): "usb-tablet", ("mouse", "usb"): "usb-mouse", ("keyboard", "usb"): "usb-kbd",
          ("tablet", "virtio"): "virtio-tablet-pci", ("mouse", "virtio"): "virtio-mouse-pci",
          ("keyboard", "virtio"): "virtio-keyboard-pci"}
_UNITS = {"b": 1, "bytes": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
          "mb": 10 ** 6, "g": 1 << 30, "gib": 1 << 30, "gb": 10 ** 9, "t": 1 << 40, "tib": 1 << 40}
# elements of <devices> that reach the host: refused, with why and what to do
_REFUSED = {
    "hostdev": "passes a host device through (PCI/vfio, USB, SCSI, mediated): qabi reproduces emulated "
               "hardware only; remove it from the XML to check the rest",
    "smartcard": "passes a host smart card (reader or certificates) through; remove it to check the rest",
    "filesystem": "exports a host directory (virtio-fs / 9p); remove it to check the rest",
    "shmem": "maps host shared memory (ivshmem); remove it to check the rest",
    "vsock": "opens the host's vhost-vsock device; remove it to check the rest",
    "memory": "hot-pluggable memory needs a host memory backend; remove it to check the rest",
    "parallel": "a parallel port needs a host chardev backend; remove it to check the rest",
    "iommu": "an emulated IOMMU is not reproduced by qabi profile import; remove it to check the rest",
    "crypto": "a crypto device needs a host backend; remove it to check the rest",
}
_MAPPED = {"name", "uuid", "memory", "currentMemory", "vcpu", "os", "features", "cpu", "clock", "pm", "sysinfo",
           "devices", "title", "description", "metadata", "on_poweroff", "on_reboot", "on_crash", "on_lockfailure"}
_HOST_SIDE = {"iothreads": "I/O threads", "iothreadids": "I/O threads", "memoryBacking": "host memory backing",
              "numatune": "host NUMA placement", "cputune": "host CPU pinning", "blkiotune": "host I/O weights",
              "memtune": "host memory limits", "resource": "host cgroup partition", "seclabel": "host security label",
              "perf": "host perf events", "keywrap": "host key wrapping", "idmap": "host id mapping",
              "vcpus": "per-vCPU hotplug state", "maxMemory": "memory hotplug ceiling", "throttlegroups":
              "host I/O throttling"}
_DROPPED = {"graphics": "graphics {type} server (host display)", "redirdev": "USB redirection ({type}) over a "
            "host chardev", "audio": "audio backend {type} (a silent one is used)", "emulator": "emulator path",
            "lease": "lock lease", "hub": "USB hub"}


def draft_from_libvirt(text: str, where: str) -> Draft:
    root = _parse(text, where)
    if root.tag != "domain":
        raise QabiError(f"{where}: not a libvirt domain XML (root element <{root.tag[:40]}>)")
    draft = Draft(source=f"libvirt domain {(root.findtext('name') or '?')[:64]!r} ({where})")
    draft.name = (root.findtext("name") or "imported").strip()
    _Mapper(draft, root).run()
    return draft


def _parse(text: str, where: str) -> Element:
    from xml.etree.ElementTree import ParseError

    import defusedxml.ElementTree as SafeET
    from defusedxml import DefusedXmlException

    try:
        return SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise QabiError(f"{where}: refused: the XML declares a DTD or entities ({type(exc).__name__}); a domain "
                        "XML has none") from None
    except ParseError as exc:
        raise QabiError(f"{where}: not well-formed XML ({exc})") from None


def _int(text: str | None, where: str, default: int | None = None) -> int:
    if text is None or not text.strip():
        if default is None:
            raise QabiError(f"{where}: a number is missing")
        return default
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise QabiError(f"{where}: {text.strip()[:40]!r} is not a number") from None


def _bytes(elem: Element | None, where: str, default_unit: str = "kib") -> int:
    if elem is None:
        raise QabiError(f"{where}: missing")
    unit = (elem.get("unit") or default_unit).lower()
    if unit not in _UNITS:
        raise QabiError(f"{where}: unknown unit {unit[:20]!r}")
    return _int(elem.text, where) * _UNITS[unit]


class _Mapper:
    def __init__(self, draft: Draft, root: Element) -> None:
        self.d = draft
        self.root = root
        self.family = "q35"
        self.boot_devs: list[str] = []
        self.hyperv: list[str] = []
        self._booted: set[str] = set()

    # -- the parts of <domain> ------------------------------------------------------------------------
    def run(self) -> None:
        d, root = self.d, self.root
        if root.get("type") not in ("qemu", "kvm"):
            raise d.refuse(f"domain type {root.get('type')!r}", "qabi reproduces QEMU (qemu, kvm) domains")
        d.uuid = (root.findtext("uuid") or "").strip().lower() or None
        d.memory_mib = _bytes(root.find("memory"), "<memory>") // (1 << 20)
        self.os()
        self.features()
        self.cpu()
        self.clock()
        self.pm()
        self.sysinfo()
        self.top_level()
        devices = root.find("devices")
        if devices is not None:
            self.devices(devices)
        if self.hyperv:
            d.top["hyperv"] = self.hyperv

    def top_level(self) -> None:
        """The domain's other elements: host-side tuning dropped with a note, the VM generation ID
        kept (a guest-visible device), confidential computing refused."""
        d = self.d
        for elem in self.root:
            tag = elem.tag
            if tag in _MAPPED:
                continue
            if tag in _HOST_SIDE:
                d.note(f"<{tag}> ({_HOST_SIDE[tag]}): host side, dropped")
            elif tag == "genid":
                guid = (elem.text or "").strip().lower()
                d.add("vmgenid", props={"guid": guid} if guid else {})
                if not guid:
                    d.note("VM generation ID: libvirt makes a new one per start; qabi's is fixed by QEMU's default")
            elif tag == "launchSecurity":
                raise d.refuse("<launchSecurity>", "memory encryption (SEV/TDX) needs the host's hardware and keys; "
                               "qabi reproduces emulated hardware only")
            else:
                d.note(f"<{tag[:30]}>: not reproduced")

    def os(self) -> None:
        d, os_ = self.d, self.root.find("os")
        if os_ is None:
            raise d.refuse("<os>", "missing")
        type_ = os_.find("type")
        machine = (type_.get("machine") if type_ is not None else None) or ""
        if not VERSIONED_MACHINE.fullmatch(machine):
            raise d.refuse(f"machine type {machine[:40]!r}", "not a versioned i440fx or q35 machine type: pass the "
                           "XML through libvirt (virsh define, then virsh dumpxml) so that it names one, "
                           "such as pc-q35-7.2")
        d.machine = machine
        self.family = "q35" if "q35" in machine else "i440fx"
        loader = os_.find("loader")
        efi = os_.get("firmware") == "efi" or (loader is not None and loader.get("type") == "pflash")
        secure = _secure_boot(os_, loader)
        if efi:
            d.top["firmware"] = "ovmf-secboot" if secure else "ovmf"
            if secure and loader is None and os_.find("firmware") is None:
                d.note("firmware='efi' without a Secure Boot choice: taken as OVMF Secure Boot with the Microsoft "
                       "keys, what libvirt's firmware autoselection picks on Debian")
            if secure:
                d.top["smm"] = True
        if loader is not None and (loader.text or "").strip():
            d.note(f"firmware path {(loader.text or '').strip()[:100]}: the build's own OVMF is used")
        if os_.find("nvram") is not None:
            d.note("UEFI variable store (nvram): a fresh copy of the build's template is used")
        for tag in ("kernel", "initrd", "cmdline", "dtb"):
            if os_.find(tag) is not None:
                d.note(f"direct boot <{tag}> (a host path): qabi boots its own probe")
        self.boot_devs = [b.get("dev", "") for b in os_.findall("boot")]
        smbios = os_.find("smbios")
        if smbios is not None and smbios.get("mode") == "host":
            raise d.refuse("<smbios mode='host'>", "copies the host's SMBIOS, which differs per host: use "
                           "mode='sysinfo' with the strings the VM should show")
        if os_.find("bootmenu") is not None:
            d.note("boot menu setting (firmware UI only)")

    def features(self) -> None:
        d, features = self.d, self.root.find("features")
        if features is None:
            return
        for feat in features:
            tag, state = feat.tag, feat.get("state", "on")
            if tag in ("acpi", "apic", "pae"):
                continue
            if tag == "smm":
                d.top["smm"] = state == "on"
            elif tag == "hyperv":
                self._hyperv(feat)
            elif tag == "vmport":
                d.note(f"vmport {state}: not set by the profile (the machine type's default applies)")
            elif tag == "kvm":
                d.note("KVM feature flags (hidden state): only guest-visible under KVM")
            else:
                d.note(f"feature <{tag[:30]}> not reproduced")

    def _hyperv(self, elem: Element) -> None:
        if elem.get("mode") == "passthrough":
            raise self.d.refuse("<hyperv mode='passthrough'>", "takes every Hyper-V feature the host has: list the "
                                "enlightenments (mode='custom')")
        for feat in elem:
            if feat.get("state", "on") != "on":
                continue
            name = feat.tag
            if name == "spinlocks":
                retries = _int(feat.get("retries"), "<spinlocks retries>", 4095)
                self.hyperv.append(f"spinlocks={retries:#x}")
            elif name == "stimer":
                self.hyperv.append("stimer")
                direct = feat.find("direct")
                if direct is not None and direct.get("state") == "on":
                    self.hyperv.append("stimer-direct")
            elif name == "vendor_id":
                self.hyperv.append(f"vendor-id={feat.get('value', '')[:12]}")
            elif name in HYPERV_FLAGS:
                self.hyperv.append(name.replace("_", "-"))
            else:
                self.d.note(f"Hyper-V feature {name[:30]} not reproduced")

    def cpu(self) -> None:
        d, cpu = self.d, self.root.find("cpu")
        vcpu = self.root.find("vcpu")
        count = _int(vcpu.text if vcpu is not None else "1", "<vcpu>")
        current = _int(vcpu.get("current") if vcpu is not None else None, "<vcpu current>", count)
        smp = {"cpus": current}
        topo = cpu.find("topology") if cpu is not None else None
        if topo is not None:
            for key in ("sockets", "dies", "cores", "threads"):
                if topo.get(key) is not None:
                    smp[key] = _int(topo.get(key), f"<topology {key}>")
        else:
            smp.update(sockets=count, cores=1, threads=1)
        if current != count:
            smp["maxcpus"] = count
        d.smp = smp
        if cpu is None:
            return
        mode = cpu.get("mode", "custom")
        if mode in ("host-passthrough", "host-model", "maximum"):
            raise d.refuse(f"<cpu mode='{mode}'>", "the CPU the guest sees depends on the host (or on the QEMU "
                           "build): use a named model, e.g. <cpu mode='custom'><model>Skylake-Client</model>")
        model = cpu.findtext("model")
        if model:
            d.cpu_model = model.strip()
        for feat in cpu.findall("feature"):
            name, policy = feat.get("name", ""), feat.get("policy", "require")
            if policy in ("require", "force"):
                d.cpu_flags.append(f"+{name}")
            elif policy in ("disable", "forbid"):
                d.cpu_flags.append(f"-{name}")
            else:
                d.note(f"CPU feature {name[:30]} (policy {policy[:20]}): decided by the host, not reproduced")
        if cpu.find("numa") is not None:
            d.note("guest NUMA cells: not reproduced")

    def clock(self) -> None:
        d, clock = self.d, self.root.find("clock")
        if clock is None:
            return
        offset = clock.get("offset", "utc")
        d.note(f"clock offset {offset[:20]}: qabi pins the RTC to a fixed time")
        for timer in clock.findall("timer"):
            name, present = timer.get("name", ""), timer.get("present")
            if name == "hpet" and present is not None:
                d.top["hpet"] = present == "yes"
            elif name == "hypervclock" and present == "yes":
                self.hyperv.append("time")
            elif timer.get("tickpolicy") or name in ("rtc", "pit"):
                d.note(f"timer {name[:20]} tick policy: host-side catch-up, not guest-visible")
            elif name == "kvmclock" and present == "no":
                d.cpu_flags.append("-kvmclock")
            elif present is not None:
                d.note(f"timer {name[:20]} present={present[:5]}: not reproduced")

    def pm(self) -> None:
        pm = self.root.find("pm")
        states = {}
        for tag, state in (("suspend-to-mem", "s3"), ("suspend-to-disk", "s4")):
            elem = pm.find(tag) if pm is not None else None
            if elem is not None and elem.get("enabled") in ("yes", "no"):
                states[state] = elem.get("enabled") == "yes"
        if states:
            self.d.top["pm"] = states

    def sysinfo(self) -> None:
        d = self.d
        os_ = self.root.find("os")
        smbios = os_.find("smbios") if os_ is not None else None
        mode = smbios.get("mode") if smbios is not None else None
        info = next((s for s in self.root.findall("sysinfo") if s.get("type") == "smbios"), None)
        if info is None:
            return
        if mode != "sysinfo":
            d.note("<sysinfo> without <smbios mode='sysinfo'>: libvirt does not show it to the guest")
            return
        blocks = {"bios": 0, "system": 1, "baseBoard": 2, "chassis": 3}
        fields = {"asset": "asset", "location": "location"}
        for block, kind in blocks.items():
            for elem in info.findall(block):
                for entry in elem.findall("entry"):
                    name = fields.get(entry.get("name", ""), entry.get("name", ""))
                    value = (entry.text or "").strip()
                    if kind == 1 and name == "uuid":
                        continue                     # the domain's <uuid>: the profile's uuid
                    d.smbios.setdefault(kind, {})[name] = value
        if info.find("oemStrings") is not None:
            d.note("SMBIOS OEM strings (type 11): not reproduced")

    # -- <devices> -----------------------------------------------------------------------------------
    def devices(self, devices: Element) -> None:
        handlers = {"controller": self.controller, "disk": self.disk, "interface": self.interface,
                    "video": self.video, "sound": self.sound, "input": self.input, "watchdog": self.watchdog,
                    "tpm": self.tpm, "memballoon": self.memballoon, "rng": self.rng, "channel": self.channel,
                    "console": self.console, "serial": self.serial, "panic": self.panic}
        # PCI controllers by index, then the other controllers, then the rest: QEMU creates a device's
        # bus before the device
        def rank(elem: Element) -> tuple[int, int]:
            if elem.tag == "controller":
                pci = elem.get("type") == "pci"
                return (0 if pci else 1), (_int(elem.get("index"), "<controller index>", 0) if pci else 0)
            return 2, 0

        ordered = sorted(devices, key=rank)
        for elem in ordered:
            tag = elem.tag
            if tag in _REFUSED:
                raise self.d.refuse(f"<{tag}>", _REFUSED[tag])
            if tag in _DROPPED:
                self.d.note(_DROPPED[tag].format(type=elem.get("type", elem.get("model", ""))[:20]))
            elif tag in handlers:
                handlers[tag](elem)
            else:
                raise self.d.refuse(f"<{tag[:30]}>", "not supported by qabi profile import")

    def _pci(self, elem: Element) -> tuple[str | None, str | None, dict[str, Value]]:
        """(bus, addr, props) of the element's <address type='pci'>, as libvirt writes them."""
        addr = elem.find("address")
        if addr is None or addr.get("type") != "pci":
            return None, None, {}
        bus = _int(addr.get("bus"), "<address bus>", 0)
        slot = _int(addr.get("slot"), "<address slot>", 0)
        function = _int(addr.get("function"), "<address function>", 0)
        if _int(addr.get("domain"), "<address domain>", 0) != 0:
            raise self.d.refuse("PCI domain", "only PCI domain 0 is supported")
        bus_name = ("pcie.0" if self.family == "q35" else "pci.0") if bus == 0 else f"pci.{bus}"
        text = f"{slot:#x}" + (f".{function:#x}" if function else "")
        props: dict[str, Value] = {"multifunction": True} if addr.get("multifunction") == "on" else {}
        return bus_name, text, props

    def _pci_device(self, driver: str, elem: Element, id: str | None = None,
                    props: dict[str, Value] | None = None, mac: str | None = None, disk: str | None = None,
                    audio: bool = False) -> None:
        bus, addr, extra = self._pci(elem)
        self.d.add(driver, id=id, bus=bus, addr=addr, props={**extra, **(props or {})}, mac=mac, disk=disk,
                   audio=audio)

    def controller(self, elem: Element) -> None:
        d = self.d
        kind, model = elem.get("type", ""), elem.get("model")
        index = _int(elem.get("index"), "<controller index>", 0)
        if kind == "pci":
            if model in ("pci-root", "pcie-root"):
                return
            if model not in PCI_CONTROLLERS:
                raise d.refuse(f"PCI controller {model!r}", "not supported by qabi profile import")
            name = elem.find("model")
            driver = (name.get("name") if name is not None else None) or PCI_CONTROLLERS[model]
            target = elem.find("target")
            props: dict[str, Value] = {}
            if target is not None:
                for attr, prop in (("chassis", "chassis"), ("port", "port"), ("chassisNr", "chassis_nr"),
                                   ("busNr", "bus_nr")):
                    if target.get(attr) is not None:
                        props[prop] = _int(target.get(attr), f"<target {attr}>")
                if target.get("hotplug") == "off":
                    props["hotplug"] = False
            self._pci_device(driver, elem, id=f"pci.{index}", props=props)
        elif kind == "usb":
            if model == "none":
                return
            model = model or ("piix3-uhci" if self.family == "i440fx" else "qemu-xhci")
            if model not in USB_MODELS:
                raise d.refuse(f"USB controller {model!r}", "not supported by qabi profile import")
            props = {}
            master = elem.find("master")
            if master is not None:                     # a UHCI companion of an EHCI controller
                props["firstport"] = _int(master.get("startport"), "<master startport>", 0)
                d.note(f"USB companion {model}: its EHCI master bus is not reproduced (on the allow-list it "
                       "is a controller of its own)")
            if elem.get("ports") and "xhci" in model:
                props = {"p2": _int(elem.get("ports"), "<controller ports>"),
                         "p3": _int(elem.get("ports"), "<controller ports>")}
            ident = None if master is not None else "usb" if index == 0 else f"usb{index}"
            self._pci_device(USB_MODELS[model], elem, id=ident, props=props)
        elif kind == "sata":
            if index == 0 and self.family == "q35":
                return                                 # the ICH9 AHCI built into q35 (00:1f.2)
            self._pci_device("ich9-ahci", elem, id=f"sata{index}")
        elif kind == "ide":
            if index == 0 and self.family == "i440fx":
                return                                 # the PIIX3 IDE built into i440fx (00:01.1)
            raise d.refuse("IDE controller", "only the built-in i440fx IDE controller exists")
        elif kind == "virtio-serial":
            props = {"max_ports": _int(elem.get("ports"), "<controller ports>")} if elem.get("ports") else {}
            self._pci_device("virtio-serial-pci", elem, id=f"virtio-serial{index}", props=props)
        elif kind == "scsi":
            model = model or "lsilogic"
            if model not in SCSI_MODELS:
                raise d.refuse(f"SCSI controller {model!r}", "not supported by qabi profile import")
            self._pci_device(SCSI_MODELS[model], elem, id=f"scsi{index}")
        elif kind == "fdc":
            d.note("floppy controller: not reproduced")
        else:
            raise d.refuse(f"<controller type='{kind[:20]}'>", "not supported by qabi profile import")

    def _boot(self, elem: Element, kind: str) -> dict[str, Value]:
        """bootindex from <boot order=...>, else from the first <os><boot dev=...> of this kind."""
        boot = elem.find("boot")
        if boot is not None:
            return {"bootindex": _int(boot.get("order"), "<boot order>")}
        if kind in self.boot_devs and kind not in self._booted:
            self._booted.add(kind)
            return {"bootindex": self.boot_devs.index(kind) + 1}
        return {}

    def disk(self, elem: Element) -> None:
        d = self.d
        device = elem.get("device", "disk")
        if elem.get("type") in ("block", "network", "volume", "nvme", "vhostuser"):
            d.note(f"disk backend type {elem.get('type')}: a blank image is used")
        if device not in ("disk", "cdrom"):
            raise d.refuse(f"<disk device='{device[:20]}'>", "only disks and CD-ROMs are reproduced")
        target = elem.find("target")
        bus = target.get("bus", "") if target is not None else ""
        dev_name = target.get("dev", "?") if target is not None else "?"
        source = elem.find("source")
        path = source.get("file") or source.get("dev") or source.get("name") if source is not None else None
        if path:
            d.note(f"disk {dev_name[:20]}: host path {path[:100]} dropped")
        cdrom = device == "cdrom"
        props = self._boot(elem, "cdrom" if cdrom else "hd")
        serial = elem.findtext("serial")
        if serial:
            props["serial"] = serial.strip()
        disk = None if cdrom else DEFAULT_DISK
        if not cdrom:
            d.note(f"disk {dev_name[:20]}: a blank {DEFAULT_DISK} image (qabi never reads the VM's image)")
        addr = elem.find("address")
        if bus in ("sata", "ide"):
            controller = _int(addr.get("controller"), "<address controller>", 0) if addr is not None else 0
            unit = _int(addr.get("unit"), "<address unit>", 0) if addr is not None else 0
            abus = _int(addr.get("bus"), "<address bus>", 0) if addr is not None else 0
            driver = "ide-cd" if cdrom else "ide-hd"
            if bus == "sata":
                name = f"ide.{unit}" if controller == 0 and self.family == "q35" else f"sata{controller}.{unit}"
                d.add(driver, bus=name, props=props, disk=disk, cdrom=cdrom)
            else:
                d.add(driver, bus=f"ide.{abus}", props={**props, "unit": unit}, disk=disk, cdrom=cdrom)
        elif bus == "virtio":
            if cdrom:
                raise d.refuse("virtio CD-ROM", "libvirt has none")
            driver_elem = elem.find("driver")
            if driver_elem is not None and driver_elem.get("queues"):
                props["num-queues"] = _int(driver_elem.get("queues"), "<driver queues>")
            if driver_elem is not None and driver_elem.get("iothread"):
                d.note(f"disk {dev_name[:20]} iothread: host side, dropped")
            self._pci_device("virtio-blk-pci", elem, props=props, disk=disk)
        elif bus == "scsi":
            controller = _int(addr.get("controller"), "<address controller>", 0) if addr is not None else 0
            if serial and not cdrom:
                props["device_id"] = serial.strip()          # libvirt sets it to the serial
            scsi = {"channel": _int(addr.get("bus"), "<address bus>", 0) if addr is not None else 0,
                    "scsi-id": _int(addr.get("target"), "<address target>", 0) if addr is not None else 0,
                    "lun": _int(addr.get("unit"), "<address unit>", 0) if addr is not None else 0}
            d.add("scsi-cd" if cdrom else "scsi-hd", bus=f"scsi{controller}.0", props={**props, **scsi},
                  disk=disk, cdrom=cdrom)
        elif bus == "usb":
            usb_bus, port = self._usb(elem)
            d.add("usb-storage", bus=usb_bus, props={**props, **port}, disk=disk, cdrom=cdrom)
        else:
            raise d.refuse(f"disk bus {bus[:20]!r}", "not supported by qabi profile import")

    def _usb(self, elem: Element) -> tuple[str, dict[str, Value]]:
        addr = elem.find("address")
        if addr is None or addr.get("type") != "usb":
            return "usb.0", {}
        bus = _int(addr.get("bus"), "<address bus>", 0)
        props: dict[str, Value] = {"port": addr.get("port", "")} if addr.get("port") else {}
        return ("usb.0" if bus == 0 else f"usb{bus}.0"), props

    def interface(self, elem: Element) -> None:
        d = self.d
        kind = elem.get("type", "")
        if kind == "hostdev":
            raise d.refuse("<interface type='hostdev'>", _REFUSED["hostdev"])
        if kind == "vdpa":
            raise d.refuse("<interface type='vdpa'>", "passes a host vDPA device through; remove it to check the rest")
        model_elem = elem.find("model")
        model = model_elem.get("type", "rtl8139") if model_elem is not None else "rtl8139"
        if model not in NIC_MODELS:
            raise d.refuse(f"NIC model {model[:20]!r}", "not supported by qabi profile import")
        mac_elem = elem.find("mac")
        mac = mac_elem.get("address", "").lower() if mac_elem is not None else None
        d.note(f"network backend of NIC {mac or model} ({kind[:20]}): a restricted user-mode network is used")
        props = self._boot(elem, "network")
        queues = elem.find("driver")
        if queues is not None and _int(queues.get("queues"), "<driver queues>", 1) > 1:
            d.note(f"NIC {mac or model} queues={queues.get('queues')}: multiqueue comes with a tap backend, "
                   "not reproduced on qabi's user-mode network")
        rom = elem.find("rom")
        if rom is not None:
            if rom.get("bar") == "off":
                props["rombar"] = 0
            if rom.get("enabled") == "no":
                props["romfile"] = ""
            elif rom.get("file") is not None:
                props["romfile"] = rom.get("file", "")
        self._pci_device(NIC_MODELS[model], elem, props=props, mac=mac)

    def video(self, elem: Element) -> None:
        d = self.d
        model = elem.find("model")
        kind = model.get("type", "") if model is not None else "vga"
        attrs = model.attrib if model is not None else {}
        primary = attrs.get("primary") == "yes" or elem is self._first("video")
        props: dict[str, Value] = {}
        if kind == "qxl":
            for attr, prop in (("ram", "ram_size_mb"), ("vram", "vram_size_mb"), ("vram64", "vram64_size_mb"),
                               ("vgamem", "vgamem_mb")):
                props[prop] = _int(attrs.get(attr), f"<model {attr}>", 0) // 1024
            if attrs.get("heads"):
                props["max_outputs"] = _int(attrs.get("heads"), "<model heads>")
            driver = "qxl-vga" if primary else "qxl"
        elif kind in ("vga", "cirrus"):
            if attrs.get("vram"):
                props["vgamem_mb"] = _int(attrs.get("vram"), "<model vram>") // 1024
            driver = "VGA" if kind == "vga" else "cirrus-vga"
        elif kind == "virtio":
            if attrs.get("heads"):
                props["max_outputs"] = _int(attrs.get("heads"), "<model heads>")
            driver = "virtio-vga" if primary else "virtio-gpu-pci"
            accel = model.find("acceleration") if model is not None else None
            if accel is not None and accel.get("accel3d") == "yes":
                raise d.refuse("virtio-gpu 3D acceleration", "renders on the host GPU; remove accel3d to check the rest")
        elif kind == "bochs":
            driver = "bochs-display"
        elif kind == "ramfb":
            d.add("ramfb")
            return
        elif kind == "none":
            return
        else:
            raise d.refuse(f"video model {kind[:20]!r}", "not supported by qabi profile import")
        self._pci_device(driver, elem, props=props)

    def _first(self, tag: str) -> Element | None:
        devices = self.root.find("devices")
        return devices.find(tag) if devices is not None else None

    def sound(self, elem: Element) -> None:
        d = self.d
        model = elem.get("model", "")
        if model not in SOUND_MODELS:
            raise d.refuse(f"sound model {model[:20]!r}", "not supported by qabi profile import")
        index = sum(1 for dev in d.devices if dev.driver in SOUND_MODELS.values())
        ident = f"sound{index}"
        if model in ("ich9", "ich6"):
            self._pci_device(SOUND_MODELS[model], elem, id=ident)
            codecs = elem.findall("codec") or [Element("codec", type="duplex")]
            for cad, codec in enumerate(codecs):
                kind = codec.get("type", "duplex")
                if kind not in CODECS:
                    raise d.refuse(f"HDA codec {kind[:20]!r}", "not supported by qabi profile import")
                d.add(CODECS[kind], bus=f"{ident}.0", props={"cad": cad}, audio=True)
        else:
            self._pci_device(SOUND_MODELS[model], elem, audio=True)

    def input(self, elem: Element) -> None:
        d = self.d
        kind, bus = elem.get("type", ""), elem.get("bus", "")
        if kind == "passthrough" or kind == "evdev":
            raise d.refuse(f"<input type='{kind}'>", "reads a host input device; remove it to check the rest")
        if bus == "ps2":
            return                                       # the i8042 of the machine type
        driver = INPUTS.get((kind, bus))
        if driver is None:
            raise d.refuse(f"input {kind[:20]} on {bus[:20]}", "not supported by qabi profile import")
        if bus == "usb":
            usb_bus, port = self._usb(elem)
            d.add(driver, bus=usb_bus, props=port)
        else:
            self._pci_device(driver, elem)

    def watchdog(self, elem: Element) -> None:
        model = elem.get("model", "")
        self.d.note(f"watchdog action {elem.get('action', 'reset')[:20]}: host-side")
        if model == "i6300esb":
            self._pci_device("i6300esb", elem)
        elif model == "ib700":
            self.d.add("ib700")
        elif model == "itco":
            self.d.note("iTCO watchdog: part of the q35 chipset")
        else:
            raise self.d.refuse(f"watchdog {model[:20]!r}", "not supported by qabi profile import")

    def tpm(self, elem: Element) -> None:
        d = self.d
        model = elem.get("model", "tpm-tis")
        backend = elem.find("backend")
        kind = backend.get("type", "") if backend is not None else ""
        if kind != "emulator":
            raise d.refuse(f"TPM backend {kind[:20]!r}", "passes the host's TPM through: use <backend type='emulator'> "
                           "(qabi starts its own swtpm)")
        if backend is not None and backend.get("version", "2.0") != "2.0":
            raise d.refuse("TPM 1.2", "qabi emulates TPM 2.0 only")
        if model not in ("tpm-crb", "tpm-tis"):
            raise d.refuse(f"TPM model {model[:20]!r}", "use tpm-crb or tpm-tis")
        d.top["tpm"] = model.removeprefix("tpm-")
        d.note("TPM emulator state: qabi starts swtpm from its own fixed state")

    def memballoon(self, elem: Element) -> None:
        model = elem.get("model", "")
        if model == "none":
            return
        if model != "virtio":
            raise self.d.refuse(f"memballoon {model[:20]!r}", "not supported by qabi profile import")
        props: dict[str, Value] = {}
        if elem.get("autodeflate") == "on":
            props["deflate-on-oom"] = True
        if elem.get("freePageReporting") == "on":
            props["free-page-reporting"] = True
        if elem.find("stats") is not None:
            self.d.note("balloon statistics period: host-side")
        self._pci_device("virtio-balloon-pci", elem, props=props)

    def rng(self, elem: Element) -> None:
        if elem.get("model") != "virtio":
            raise self.d.refuse(f"rng model {elem.get('model', '')[:20]!r}", "not supported by qabi profile import")
        backend = elem.find("backend")
        self.d.note(f"rng backend {backend.get('model', '') if backend is not None else ''}: host entropy source")
        props: dict[str, Value] = {}
        rate = elem.find("rate")
        if rate is not None:
            props["max-bytes"] = _int(rate.get("bytes"), "<rate bytes>")
            props["period"] = _int(rate.get("period"), "<rate period>", 1000)
        self._pci_device("virtio-rng-pci", elem, props=props)

    def _port(self, elem: Element, driver: str) -> None:
        target = elem.find("target")
        name = target.get("name") if target is not None else None
        addr = elem.find("address")
        controller = _int(addr.get("controller"), "<address controller>", 0) if addr is not None else 0
        bus = _int(addr.get("bus"), "<address bus>", 0) if addr is not None else 0
        props: dict[str, Value] = {}
        if addr is not None and addr.get("port") is not None:
            props["nr"] = _int(addr.get("port"), "<address port>")
        if name:
            props["name"] = name
        self.d.note(f"{driver} {name or ''} chardev backend ({elem.get('type', '')[:20]}): host side, not connected")
        self.d.add(driver, bus=f"virtio-serial{controller}.{bus}", props=props)

    def channel(self, elem: Element) -> None:
        target = elem.find("target")
        kind = target.get("type", "") if target is not None else ""
        if kind == "virtio":
            self._port(elem, "virtserialport")
        else:
            self.d.note(f"channel ({kind[:20]}): host side")

    def console(self, elem: Element) -> None:
        target = elem.find("target")
        kind = target.get("type", "serial") if target is not None else "serial"
        if kind == "virtio":
            self._port(elem, "virtconsole")
        elif kind != "serial":
            self.d.note(f"console ({kind[:20]}): not reproduced")
        # type serial: the <serial> element itself

    def serial(self, elem: Element) -> None:
        target = elem.find("target")
        port = _int(target.get("port") if target is not None else None, "<serial port>", 0)
        if port == 0:
            self.d.note("serial port COM1 backend: qabi's own console takes it")
        else:
            self.d.note(f"serial port {port} backend: not connected")
            self.d.add("isa-serial", props={"index": port})

    def panic(self, elem: Element) -> None:
        model = elem.get("model", "isa")
        if model == "isa":
            self.d.add("pvpanic")
        elif model == "pvpanic":
            self._pci_device("pvpanic-pci", elem)
        elif model == "hyperv":
            self.hyperv.append("crash")
        else:
            raise self.d.refuse(f"panic model {model[:20]!r}", "not supported by qabi profile import")


def _secure_boot(os_: Element, loader: Element | None) -> bool:
    """Secure Boot as libvirt decides it: <loader secure>, the firmware feature list, the loader's file
    name; with plain firmware='efi', libvirt's autoselection takes the first firmware descriptor that
    fits, which on Debian is OVMF_CODE_4M.ms.fd (Secure Boot, Microsoft keys enrolled)."""
    if loader is not None and loader.get("secure") in ("yes", "no"):
        return loader.get("secure") == "yes"
    firmware = os_.find("firmware")
    if firmware is not None:
        for feature in firmware.findall("feature"):
            if feature.get("name") == "secure-boot":
                return feature.get("enabled") == "yes"
    if loader is not None and (loader.text or "").strip():
        name = (loader.text or "").strip().rsplit("/", 1)[-1].lower()
        return ".ms." in name or "secboot" in name or ".secure." in name
    return os_.get("firmware") == "efi"
