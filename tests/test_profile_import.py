"""`qabi profile import`: a profile from a libvirt domain XML or a QEMU command line.

Inputs (tests/data/libvirt/, made as tests/data/libvirt/README.md records): domain XML printed by
virt-install 4.1.0 (`--print-xml 2`, osinfo's defaults) for Windows 11, Windows Server 2022 and
Debian 11, defined in a private libvirt 9.0.0 (`qemu:///embed`) and dumped back (`virsh dumpxml`:
every controller and address filled in), and the command line libvirt makes of each
(`virsh domxml-to-native qemu-argv`). The converter test runs libvirt's QEMU driver itself, in a
private configuration it starts, and compares its command line with the one qabi launches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness.errors import QabiError
from harness.guest.import_argv import split_options, tokens
from harness.guest.profile import parse_profile
from harness.guest.profile_import import import_profile
from tests.conftest import DATA, run_qabi

LIBVIRT = DATA / "libvirt"
DOMAINS = ("win11", "win2k22", "debian11", "server", "win7")


def _imported(name: str, suffix: str = "xml") -> tuple[str, list[str]]:
    path = LIBVIRT / f"{name}.{suffix}"
    return import_profile(path.read_text(), path.name)


def _profile(name: str, suffix: str = "xml"):
    toml, _notes = _imported(name, suffix)
    return parse_profile(toml, Path(f"{name}.toml"))


# -- the Windows 11 domain, as virsh dumpxml prints it ------------------------------------------------
def test_win11_domain_imports_with_its_topology_firmware_and_tpm():
    p = _profile("win11")
    assert p.machine == "pc-q35-7.2" and p.families == ("q35",)
    assert p.uuid == "6f67124f-01f5-47bd-8ccc-cc6652c61550"          # the domain's <uuid>
    assert (p.firmware, p.smm, p.tpm, p.hpet) == ("ovmf-secboot", True, "crb", False)
    assert p.pm == (("s3", False), ("s4", False))                     # <pm> suspend-to-mem/disk off
    assert dict(p.hyperv) == {"relaxed": None, "vapic": None, "spinlocks": "0x1fff", "time": None}
    assert p.cpu == "qemu64" and p.memory_mib == 8192 and dict(p.smp)["cpus"] == 4
    by_driver = {}
    for d in p.devices:
        by_driver.setdefault(d.driver, []).append(d)
    ports = by_driver["pcie-root-port"]
    assert len(ports) == 14
    assert [(d.id, d.bus, d.addr, dict(d.props).get("chassis"), dict(d.props).get("port")) for d in ports[:2]] == [
        ("pci-1", "pcie.0", "0x2", "1", "16"), ("pci-2", "pcie.0", "0x2.0x1", "2", "17")]
    # behind the root ports, at the addresses libvirt gave them
    assert [(d.bus, d.addr, d.mac) for d in by_driver["e1000e"]] == [("pci-1", "0x0", "52:54:00:ea:22:b3")]
    assert [(d.id, d.bus) for d in by_driver["qemu-xhci"]] == [("usb", "pci-2")]
    assert [(d.id, d.bus) for d in by_driver["virtio-serial-pci"]] == [("virtio-serial0", "pci-3")]
    assert [d.bus for d in by_driver["virtio-balloon-pci"]] == ["pci-4"]
    assert [dict(d.props) for d in by_driver["virtserialport"]] == [{"nr": "1", "name": "com.redhat.spice.0"}]
    # SATA disk and CD-ROM on the built-in AHCI: a blank image, never the user's path
    assert [(d.bus, d.disk, d.cdrom) for d in by_driver["ide-hd"] + by_driver["ide-cd"]] == [
        ("ide.0", "64G", False), ("ide.1", None, True)]
    assert [(d.bus, d.addr) for d in by_driver["qxl-vga"]] == [("pcie.0", "0x1")]
    assert dict(by_driver["qxl-vga"][0].props) == {"ram_size_mb": "64", "vram_size_mb": "64", "vram64_size_mb": "0",
                                                   "vgamem_mb": "16", "max_outputs": "1"}
    assert [(d.id, d.addr) for d in by_driver["ich9-intel-hda"]] == [("sound0", "0x1b")]
    assert [(d.bus, d.audio) for d in by_driver["hda-duplex"]] == [("sound0.0", True)]
    assert [(d.bus, dict(d.props)) for d in by_driver["usb-tablet"]] == [("usb.0", {"port": "1"})]
    assert "usb-redir" not in by_driver


def test_win11_import_notes_each_dropped_part_and_no_host_path_reaches_the_profile():
    toml, notes = _imported("win11")
    text = "\n".join(notes)
    for dropped in ("graphics spice server", "USB redirection (spicevmc)", "audio backend spice",
                    "network backend of NIC 52:54:00:ea:22:b3 (user)",
                    "virtserialport com.redhat.spice.0 chardev backend (spicevmc)",
                    "disk sda: host path /tmp/imp/sess/win11.qcow2 dropped",
                    "disk sdb: host path /tmp/imp/sess/win11.iso dropped",
                    "serial port COM1 backend", "TPM emulator state", "clock offset localtime"):
        assert dropped in text, dropped
    assert len(notes) == len(set(notes))
    body = "\n".join(line for line in toml.splitlines() if not line.startswith("#"))
    assert "/tmp/" not in body and "spice" not in body.replace("com.redhat.spice.0", "")


def test_cli_import_writes_the_profile_and_notes_one_line_each(tmp_path):
    out = tmp_path / "win11.toml"
    done = run_qabi("profile", "import", str(LIBVIRT / "win11.xml"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    notes = done.stderr.splitlines()
    assert notes and all(line.startswith("qabi: note: ") for line in notes)
    assert any("USB redirection" in n for n in notes) and any("graphics spice" in n for n in notes)
    assert parse_profile(out.read_text(), out).machine == "pc-q35-7.2"
    again = run_qabi("profile", "import", str(LIBVIRT / "win11.xml"), "-o", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and len(again.stderr.splitlines()) == 1


def test_cli_import_reads_stdin_and_writes_stdout():
    done = subprocess.run([sys.executable, "-m", "harness.cli", "profile", "import", "-"],
                          input=(LIBVIRT / "debian11.argv").read_text(), capture_output=True, text=True,
                          cwd=DATA.parents[1], timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert 'machine = "pc-q35-7.2"' in done.stdout and 'driver = "virtio-blk-pci"' in done.stdout


# -- the command line libvirt makes of the same domain imports to the same profile -------------------------
@pytest.mark.parametrize("name", DOMAINS)
def test_libvirts_command_line_imports_to_the_same_hardware_as_its_xml(name):
    from_xml, from_argv = _profile(name, "xml"), _profile(name, "argv")
    for key in ("machine", "families", "cpu", "memory_mib", "uuid", "firmware", "smm", "tpm", "hpet", "smbios", "pm"):
        assert getattr(from_xml, key) == getattr(from_argv, key), key
    assert sorted(from_xml.hyperv) == sorted(from_argv.hyperv)
    assert dict(from_xml.smp) == dict(from_argv.smp)

    def shape(p):
        return sorted((d.driver, d.bus or "", d.addr or "", d.mac or "", d.disk or "", d.cdrom, d.audio,
                       tuple(sorted((k, v) for k, v in d.props if k != "bootindex"))) for d in p.devices)

    assert shape(from_xml) == shape(from_argv)


def test_debian_domain_maps_virtio_disk_rng_and_guest_agent_channel():
    p = _profile("debian11")
    drivers = [d.driver for d in p.devices]
    assert p.firmware == "seabios" and p.tpm is None and p.hyperv == ()
    for driver in ("virtio-blk-pci", "virtio-net-pci", "virtio-vga", "virtio-rng-pci", "virtio-balloon-pci"):
        assert driver in drivers
    names = sorted(dict(d.props)["name"] for d in p.devices if d.driver == "virtserialport")
    assert names == ["com.redhat.spice.0", "org.qemu.guest_agent.0"]


# -- hostile input: one line, exit 2 ----------------------------------------------------------------------
_DOMAIN = (LIBVIRT / "debian11.xml").read_text()
HOSTILE = {
    "billion-laughs": '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
                      + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
                                for i in range(1, 10))
                      + ']>\n<domain type="qemu"><name>&lol9;</name></domain>',
    "external-entity": '<?xml version="1.0"?>\n<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
                       '<domain type="qemu"><name>&xxe;</name></domain>',
    "external-dtd": '<?xml version="1.0"?>\n<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/x.dtd">\n'
                    '<domain type="qemu"><name>x</name></domain>',
    "hostdev": _DOMAIN.replace("</devices>", "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
                               "<address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source>"
                               "</hostdev></devices>"),
    "vfio-interface": _DOMAIN.replace("<interface type='user'>", "<interface type='hostdev'>"),
    "rom-file-path": _DOMAIN.replace("<model type='virtio'/>\n", "<model type='virtio'/>\n"
                                     "      <rom file='/etc/shadow'/>\n", 1),
    "host-passthrough-cpu": _DOMAIN.replace("<cpu mode='custom' match='exact' check='none'>",
                                            "<cpu mode='host-passthrough' check='none'>"),
    "tpm-passthrough": _DOMAIN.replace("</devices>", "<tpm model='tpm-tis'><backend type='passthrough'>"
                                       "<device path='/dev/tpm0'/></backend></tpm></devices>"),
    "not-well-formed": "<domain type='qemu'><name>x</domain>",
    "oversize": "<domain>" + " " * (1 << 20) + "</domain>",
    "launch-security": _DOMAIN.replace("</devices>", "</devices><launchSecurity type='sev'><policy>0x0003</policy>"
                                       "</launchSecurity>"),
    "argv-vfio": "qemu-system-x86_64 -machine pc-q35-7.2 -device vfio-pci,host=0000:03:00.0",
    "argv-usb-host": "qemu-system-x86_64 -machine pc-q35-7.2 -device usb-host,hostbus=1,hostaddr=2",
    "argv-fd-property": "qemu-system-x86_64 -machine pc-q35-7.2 -device virtio-net-pci,vhostfd=3",
    "argv-path-property": "qemu-system-x86_64 -machine pc-q35-7.2 -device e1000,romfile=/etc/passwd",
    "argv-host-cpu": "qemu-system-x86_64 -machine pc-q35-7.2 -cpu host",
    "argv-alias-machine": "qemu-system-x86_64 -machine q35 -m 512",
    "argv-bad-json": "qemu-system-x86_64 -machine pc-q35-7.2 -device '{\"driver\": '",
    "argv-bad-address": "qemu-system-x86_64 -machine pc-q35-7.2 -device e1000,addr=zz",
    "argv-smbios-file": "qemu-system-x86_64 -machine pc-q35-7.2 -smbios file=/etc/passwd",
    "argv-value-with-comma": "qemu-system-x86_64 -machine pc-q35-7.2 -device virtio-serial-pci -device "
                             "virtserialport,name=a,,romfile=/etc/passwd",
}
HOSTILE_SAYS = {
    "billion-laughs": "DTD or entities", "external-entity": "DTD or entities", "external-dtd": "DTD or entities",
    "hostdev": "passes a host device through", "vfio-interface": "passes a host device through",
    "rom-file-path": "names a host file", "host-passthrough-cpu": "use a named model",
    "tpm-passthrough": "host's TPM", "not-well-formed": "not well-formed", "oversize": "(over 1 MiB)",
    "argv-vfio": "hands a host PCI function", "argv-usb-host": "claims a host USB device",
    "argv-fd-property": "file descriptor", "argv-path-property": "names a host file",
    "argv-host-cpu": "named model", "argv-alias-machine": "not a versioned",
    "launch-security": "memory encryption", "argv-bad-json": "not valid JSON", "argv-bad-address": "not slot[.function]",
    "argv-smbios-file": "loads SMBIOS tables from a host file", "argv-value-with-comma": "must be text",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_is_one_line_and_exit_2(tmp_path, case):
    path = tmp_path / f"{case}.in"
    path.write_text(HOSTILE[case])
    done = run_qabi("profile", "import", str(path), "-o", str(tmp_path / "out.toml"), timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qabi: error: ") and "Traceback" not in done.stderr, lines
    assert HOSTILE_SAYS[case] in lines[0], lines[0]
    assert "root:" not in done.stderr and not (tmp_path / "out.toml").exists()


def test_import_of_a_non_file_is_refused(tmp_path):
    done = run_qabi("profile", "import", str(tmp_path))
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "not a regular file" in done.stderr


def test_option_syntax_double_comma_and_json():
    assert split_options("virtserialport,name=a,,b,nr=1", "driver") == [
        ("driver", "virtserialport"), ("name", "a,b"), ("nr", "1")]
    assert tokens("LC_ALL=C HOME=/x /usr/bin/qemu-system-x86_64 -m 512") == ["-m", "512"]
    with pytest.raises(QabiError, match="not a command line"):
        tokens("qemu -name 'unterminated")


# -- libvirt's own converter, run by the test -----------------------------------------------------------------
def _libvirt_argv(xml: Path) -> list[str]:
    """`virsh domxml-to-native qemu-argv` of `xml` from libvirt's QEMU driver in a private
    configuration: `qemu:///embed` under a temporary root, in a private mount namespace (with a
    passwd that names libvirt's default QEMU user) and network namespace (so the tap device it opens
    for a NIC lives and dies there)."""
    if os.geteuid() != 0 or not shutil.which("virsh") or not shutil.which("unshare"):
        pytest.skip("needs root, virsh (libvirt-clients, libvirt-daemon-driver-qemu) and unshare")
    work = Path(tempfile.mkdtemp(prefix="qabi-lv-"))
    try:
        (work / "root" / "etc").mkdir(parents=True)
        (work / "root" / "etc" / "qemu.conf").write_text('user = "root"\ngroup = "root"\n')
        (work / "passwd").write_text(Path("/etc/passwd").read_text()
                                     + "libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin\n")
        (work / "group").write_text(Path("/etc/group").read_text() + "libvirt-qemu:x:64055:\nkvm:x:64056:\n")
        shutil.copy(xml, work / "dom.xml")
        script = (f"mount --bind {work}/passwd /etc/passwd && mount --bind {work}/group /etc/group && "
                  f"U='qemu:///embed?root={work}/root' && virsh -q -c \"$U\" define {work}/dom.xml >/dev/null && "
                  f"virsh -q -c \"$U\" domxml-to-native qemu-argv --domain {xml.stem}")
        done = subprocess.run(["unshare", "--mount", "--net", "sh", "-c", script], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return tokens(done.stdout)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _opts(value: str, implied: str | None) -> dict[str, object]:
    if value.startswith("{"):
        return json.loads(value)
    return dict(split_options(value, implied))


# the devices' host sides, and what each side adds for itself: not part of the comparison
_BACKEND_PROPS = {"id", "drive", "netdev", "chardev", "audiodev", "tpmdev", "rng", "bus", "addr", "driver"}
_HOST_DRIVERS = {"usb-redir"}           # dropped with a note
_CONSOLE = {"isa-serial"}               # COM1: qabi's console (the transport's -serial) takes it
_NOT_REPRODUCED = {"device_id", "masterbus"}   # not on the driver allow-list: dropped with a note (checked below)


def _hardware(words: list[str]) -> dict[str, object]:
    """What the guest sees in a command line: machine (type, smm, hpet), CPU (model and flags), memory,
    topology, UUID and SMBIOS strings, firmware (the pflash code image), and every device with its
    place (the chain of buses up to the root, by address) and its guest-visible properties."""
    pairs = list(zip(words[::1], words[1:] + [""], strict=True))
    out: dict[str, object] = {"hpet": True, "smbios": [], "secure": False, "pflash": None}
    devices = []
    nodes: dict[str, dict[str, object]] = {}
    for opt, value in pairs:
        if opt == "-machine":
            m = _opts(value, "type")
            out["machine"] = m["type"]
            out["smm"] = m.get("smm", "default")
            if m.get("hpet") == "off":
                out["hpet"] = False
        elif opt == "-no-hpet":
            out["hpet"] = False
        elif opt == "-cpu":
            model, *flags = value.split(",")
            signs = {"on": "+", "off": "-"}                       # x=on is +x, x=off is -x
            out["cpu"] = (model, frozenset(f"{signs[f.split('=')[1]]}{f.split('=')[0]}"
                                           if f.endswith(("=on", "=off")) and not f.startswith("hv-") else f
                                           for f in flags))
        elif opt == "-m":
            out["memory"] = value.split(",")[0]
        elif opt == "-smp":
            smp = _opts(value, "cpus")
            out["smp"] = {k: str(v) for k, v in smp.items()}
        elif opt == "-uuid":
            out["uuid"] = value
        elif opt == "-smbios":
            out["smbios"].append(sorted((k, v) for k, v in split_options(value) if k != "uuid"))  # type: ignore
        elif opt == "-blockdev":
            b = _opts(value, None)
            nodes[str(b.get("node-name"))] = b
        elif opt == "-drive" and "if=pflash" in value and "unit=0" in value:
            out["pflash"] = os.path.realpath(str(_opts(value, None)["file"]))
        elif opt == "-global" and "cfi.pflash01" in value and "secure" in value:
            out["secure"] = True
        elif opt == "-global" and ".disable_s" in value:
            out.setdefault("pm", set()).add(value)               # type: ignore[union-attr]
        elif opt == "-device":
            devices.append(_opts(value, "driver"))
    if out["pflash"] is None and "machine" in out:
        machine_opts = _opts(next(v for o, v in pairs if o == "-machine"), "type")
        if "pflash0" in machine_opts:
            fmt = nodes[str(machine_opts["pflash0"])]
            out["pflash"] = os.path.realpath(str(nodes[str(fmt["file"])]["filename"]))
    ids = {str(d["id"]): d for d in devices if "id" in d}

    def place(dev: dict[str, object]) -> str:
        bus = str(dev.get("bus", ""))
        where = f"@{dev['addr']}" if "addr" in dev else ""
        if "port" in dev and dev["driver"] not in ("pcie-root-port", "xio3130-downstream"):
            where += f"#port{dev['port']}"
        head, _, tail = bus.rpartition(".")
        parent = ids.get(bus) or ids.get(head)
        if parent is None:
            return f"{bus}{where}"
        return f"{place(parent)}/{parent['driver']}{'.' + tail if bus not in ids else ''}{where}"

    def norm(dev: dict[str, object]) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        props = {k: str(v).lower() for k, v in dev.items() if k not in _BACKEND_PROPS | _NOT_REPRODUCED}
        for key in ("ram_size", "vram_size"):                  # libvirt: bytes; the allow-list: MiB
            if key in props:
                props[f"{key}_mb"] = str(int(props.pop(key)) >> 20)
        props = {k: {"true": "on", "false": "off"}.get(v, v) for k, v in props.items()}
        if "addr" in dev:
            slot, _, fn = str(dev["addr"]).partition(".")
            dev["addr"] = f"{int(slot, 16):#x}" + (f".{int(fn, 16):#x}" if fn and int(fn, 16) else "")
        return str(dev["driver"]), place(dev), tuple(sorted(props.items()))

    out["devices"] = sorted(norm(d) for d in devices if d["driver"] not in _HOST_DRIVERS | _CONSOLE)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("name", DOMAINS)
def test_xml_import_matches_libvirts_own_converter(tmp_path, name):
    from harness.capture import plan_capture
    from harness.qemu import resolve
    from harness.transport.base import Setup
    from harness.transport.launch import qemu_argv

    theirs = _hardware(_libvirt_argv(LIBVIRT / f"{name}.xml"))
    profile = _profile(name)
    # the argv of --accel kvm: under TCG the launcher leaves the hv-* enlightenments off -cpu (QEMU
    # builds the Hyper-V CPUID leaves under KVM only); nothing is started here
    plan = plan_capture(resolve("system"), profile, profile.machine or "", "kvm", 30)
    ours = _hardware(tokens(" ".join(map(_quote, qemu_argv(plan, tmp_path, Setup())))))
    for key in ("machine", "smm", "hpet", "cpu", "memory", "smp", "uuid", "smbios", "pflash", "secure", "pm"):
        assert ours.get(key) == theirs.get(key), (key, ours.get(key), theirs.get(key))
    assert ours["devices"] == theirs["devices"]
    assert len(ours["devices"]) >= 10                                   # type: ignore[arg-type]


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


# -- the imported Windows 11 VM, captured and checked -------------------------------------------------------------
@pytest.mark.integration
def test_imported_win11_captures_with_its_topology_uuid_and_tpm(tmp_path):
    profile = tmp_path / "win11.toml"
    done = run_qabi("profile", "import", str(LIBVIRT / "win11.xml"), "-o", str(profile))
    assert done.returncode == 0, done.stderr
    cap = tmp_path / "cap"
    done = run_qabi("capture", "--qemu", "system", "--guest", str(profile), "-o", str(cap), "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert "pc-q35-7.2" in done.stdout                                  # the pinned machine type, no --machine
    done = run_qabi("fingerprint", str(cap), "-o", str(tmp_path / "fp.json"))
    assert done.returncode == 0, done.stderr
    fp = json.loads((tmp_path / "fp.json").read_text())
    pci = {addr: dev["device_name"] for addr, dev in fp["pci"].items()}
    # the topology libvirt gave the domain: root ports at 00:02.0-00:03.5, and behind ports 1-4
    # the e1000e, the xHCI, the virtio-serial and the balloon
    assert [a for a, n in pci.items() if "Root port" in n] == (
        [f"0000:00:02.{f}" for f in range(8)] + [f"0000:00:03.{f}" for f in range(6)])
    assert "82574L" in pci["0000:01:00.0"] and "XHCI" in pci["0000:02:00.0"]
    assert "console" in pci["0000:03:00.0"] and "balloon" in pci["0000:04:00.0"]
    assert "QXL" in pci["0000:00:01.0"] and "HD Audio" in pci["0000:00:1b.0"] and "SATA" in pci["0000:00:1f.2"]
    system = fp["smbios"]["1/0"]["fields"]
    assert system["uuid"] == "6f67124f-01f5-47bd-8ccc-cc6652c61550"
    assert "TPM2" in fp["acpi"]
    assert "MSFT0101" in json.dumps(fp["acpi"]["DSDT"])


@pytest.mark.integration
def test_check_runs_an_imported_profile_on_its_own_machine_type_without_machine(tmp_path):
    profile = tmp_path / "win11.toml"
    assert run_qabi("profile", "import", str(LIBVIRT / "win11.xml"), "-o", str(profile)).returncode == 0
    done = run_qabi("check", "--old", "debian:bookworm", "--new", "debian:trixie", "--guest", str(profile),
                    "--json", str(tmp_path / "v.json"), "--timeout", "120")
    assert done.returncode in (0, 1), done.stdout + done.stderr              # decided: unchanged or drift
    runs = json.loads((tmp_path / "v.json").read_text())["runs"]
    assert [(r["machine"], r["status"]) for r in runs] == [("pc-q35-7.2", "compared")]
    assert runs[0]["guest"] == str(profile)


# -- the pinned machine type is the default: check and pytest harness/ ----------------------------------------------
def test_a_pinned_profile_is_planned_on_its_machine_type_and_an_explicit_machine_wins(tmp_path):
    from harness.check import Check, RunRequest

    profile = tmp_path / "win2k22.toml"
    profile.write_text(_imported("win2k22")[0])
    plain = Check(RunRequest("system", "system", guests=(str(profile), "minimal"),
                             fallback_machines=("pc-i440fx-7.2",)))
    assert plain.planned() == [("pc-i440fx-7.2", "minimal"), ("pc-q35-7.2", str(profile))]
    alone = Check(RunRequest("system", "system", guests=(str(profile),)))
    assert alone.planned() == [("pc-q35-7.2", str(profile))]
    asked = Check(RunRequest("system", "system", machines=("pc-q35-7.1",), guests=(str(profile), "minimal")))
    assert asked.planned() == [("pc-q35-7.1", str(profile)), ("pc-q35-7.1", "minimal")]


def test_pytest_harness_runs_a_pinned_profile_on_its_machine_type_only(tmp_path):
    profile = tmp_path / "w22.toml"
    profile.write_text(_imported("win2k22")[0])
    done = subprocess.run([sys.executable, "-m", "pytest", "harness/", "--qemu-old", "system", "--qemu-new", "system",
                           "--guest", str(profile), "--guest", "minimal", "--co", "-q", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, cwd=DATA.parents[1], timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    items = [line for line in done.stdout.splitlines() if "test_guest_abi[" in line]
    mine = [line for line in items if str(profile) in line]
    assert mine and all("[pc-q35-7.2-" in line for line in mine)
    assert any("[pc-i440fx-7.2-minimal-" in line for line in items)      # the defaults still apply to the rest


def test_server_domain_maps_sysinfo_scsi_named_cpu_and_notes_what_is_not_reproduced():
    toml, notes = _imported("server")
    p = parse_profile(toml, Path("server.toml"))
    assert p.cpu == "Skylake-Client,+pdpe1gb,-hle,-rtm"
    assert dict(p.smp) == {"cpus": 4, "sockets": 1, "dies": 1, "cores": 2, "threads": 2}
    assert dict(p.smbios)[1] == (("manufacturer", "Acme Corp"), ("product", "Server9"), ("version", "2.0"),
                                 ("serial", "SN-12345"), ("sku", "SKU1"), ("family", "Servers"))
    assert dict(dict(p.smbios)[0])["vendor"] == "Acme"
    scsi = [d for d in p.devices if d.driver == "scsi-hd"]
    assert [(d.bus, dict(d.props)["serial"], d.disk) for d in scsi] == [("scsi0.0", "DISK-0001", "64G")]
    assert any("scsi-hd property device_id=DISK-0001: not on the driver allow-list" in n for n in notes)
    assert [dict(d.props).get("num-queues") for d in p.devices if d.driver == "virtio-blk-pci"] == ["2"]
    assert any("queues=4: multiqueue comes with a tap backend" in n for n in notes)
    assert any(d.driver == "pcie-pci-bridge" for d in p.devices)
    behind_bridge = sorted((d.driver, d.bus, d.addr) for d in p.devices if d.driver in ("intel-hda", "i6300esb"))
    assert behind_bridge == [("i6300esb", "pci-16", "0x2"), ("intel-hda", "pci-16", "0x1")]


@pytest.mark.integration
def test_imported_sysinfo_reaches_the_guests_smbios(tmp_path):
    profile = tmp_path / "server.toml"
    assert run_qabi("profile", "import", str(LIBVIRT / "server.xml"), "-o", str(profile)).returncode == 0
    cap = tmp_path / "cap"
    done = run_qabi("capture", "--qemu", "system", "--guest", str(profile), "-o", str(cap), "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert run_qabi("fingerprint", str(cap), "-o", str(tmp_path / "fp.json")).returncode == 0
    smbios = json.loads((tmp_path / "fp.json").read_text())["smbios"]
    system, bios = smbios["1/0"]["fields"], smbios["0/0"]["fields"]
    assert (system["manufacturer"], system["product_name"], system["serial_number"]) == ("Acme Corp", "Server9",
                                                                                       "SN-12345")
    assert system["uuid"] == parse_profile(profile.read_text(), profile).uuid
    assert bios["vendor"] == "Acme"


# -- a command line in QEMU's keyval syntax: the one qabi itself launches --------------------------------------------
@pytest.mark.parametrize(("guest", "machine"), [("win11-proxmox", "pc-q35-7.2"), ("windows", "pc-i440fx-7.2"),
                                                ("legacy", "pc-i440fx-7.2"), ("linux-virtio", "pc-q35-7.2")])
def test_the_command_line_qabi_launches_imports_back_to_the_same_profile(tmp_path, guest, machine):
    """`-device driver,k=v`, `-drive if=none` and `-netdev user` linked by id, `-audiodev`,
    `-smbios`, `-global`, pflash drives: a shipped profile's argv (as `ps` shows it) imports back
    to the same machine, CPU, platform keys and devices (ids and bus names renamed alike)."""
    import shlex

    from harness.capture import plan_capture
    from harness.guest.profile import load_profile
    from harness.qemu import resolve
    from harness.transport.base import Setup
    from harness.transport.launch import qemu_argv

    original = load_profile(guest)
    argv = qemu_argv(plan_capture(resolve("system"), original, machine, "kvm", 30), tmp_path, Setup())
    toml, notes = import_profile(shlex.join(argv), "ps")
    back = parse_profile(toml, Path("back.toml"))
    assert back.machine == machine and back.uuid == original.uuid and dict(back.smp) == dict(original.smp)
    assert (back.cpu, back.memory_mib) == (original.cpu, original.memory_mib)
    for key in ("firmware", "smm", "tpm", "hpet"):
        assert getattr(back, key) == getattr(original, key), key
    assert sorted(back.hyperv) == sorted(original.hyperv)

    def shape(p, machine):
        ids = {d.id: d.driver for d in p.devices_for(machine) if d.id}
        return sorted((d.driver, ids.get((d.bus or "").split(".")[0], d.bus or ""), d.addr and int(
            d.addr.split(".")[0], 16), bool(d.mac), bool(d.disk), d.cdrom, d.audio, tuple(sorted(d.props)))
            for d in p.devices_for(machine))

    assert shape(back, machine) == shape(original, machine)
    assert any("a restricted user-mode network" in n for n in notes) or not original.nics_for(machine)


def test_a_proxmox_machine_revision_is_checked_as_its_upstream_type():
    toml, notes = import_profile("/usr/bin/kvm -id 100 -name 'win,debug-threads=on' -machine "
                                 "type=pc-q35-8.1+pve0 -m 2048 -smp 2,sockets=1,cores=2,maxcpus=2 -vga std", "qm")
    profile = parse_profile(toml, Path("qm.toml"))
    assert profile.machine == "pc-q35-8.1" and profile.name == "win"
    assert [(d.driver, d.addr) for d in profile.devices] == [("VGA", None)]
    assert any("Proxmox's revision of pc-q35-8.1" in n for n in notes)


def test_control_characters_in_the_vms_text_reach_neither_the_terminal_nor_the_profile(tmp_path):
    argv = ("qemu-system-x86_64 -machine pc-q35-7.2 -m 512 -drive 'if=none,id=d0,file=/x/\x1b[2J\x07evil\x00.img' "
            "-device 'ide-hd,bus=ide.0,drive=d0' -name 'a\x1b]0;pwned\x07'")
    (tmp_path / "argv").write_text(argv)
    done = run_qabi("profile", "import", str(tmp_path / "argv"), "-o", str(tmp_path / "p.toml"))
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr and "\\x1b[2J" in done.stderr
    text = (tmp_path / "p.toml").read_text()
    assert "\x1b" not in text and "\x00" not in text
    assert parse_profile(text, tmp_path / "p.toml").devices[0].driver == "ide-hd"


def test_an_i440fx_domain_maps_ide_and_the_usb2_companions():
    toml, notes = _imported("win7")
    p = parse_profile(toml, Path("win7.toml"))
    assert (p.machine, p.families) == ("pc-i440fx-7.2", ("i440fx",))
    assert [(d.driver, d.bus, dict(d.props).get("unit")) for d in p.devices if d.driver.startswith("ide-")] == [
        ("ide-hd", "ide.0", "0"), ("ide-cd", "ide.0", "1")]
    usb = [(d.driver, d.id, d.addr, dict(d.props).get("firstport")) for d in p.devices if "usb-" in d.driver
           and d.driver.startswith("ich9")]
    assert usb == [("ich9-usb-ehci1", "usb", "0x5.0x7", None), ("ich9-usb-uhci1", None, "0x5", "0"),
                   ("ich9-usb-uhci2", None, "0x5.0x1", "2"), ("ich9-usb-uhci3", None, "0x5.0x2", "4")]
    assert sum("USB companion" in n for n in notes) == 3


def test_host_side_domain_elements_are_noted_and_the_generation_id_kept():
    xml = _DOMAIN.replace("<vcpu placement='static'>2</vcpu>", "<vcpu placement='static'>2</vcpu><iothreads>2</iothreads>"
                          "<memoryBacking><hugepages/></memoryBacking><genid>0c8ab1d4-9a63-4d84-8f6f-2b3e7c39a1b0</genid>")
    assert "<iothreads>" in xml
    toml, notes = import_profile(xml, "tuned.xml")
    assert "<iothreads> (I/O threads): host side, dropped" in notes
    assert "<memoryBacking> (host memory backing): host side, dropped" in notes
    gen = [d for d in parse_profile(toml, Path("t.toml")).devices if d.driver == "vmgenid"]
    assert [dict(d.props) for d in gen] == [{"guid": "0c8ab1d4-9a63-4d84-8f6f-2b3e7c39a1b0"}]


def test_virt_installs_own_xml_names_a_machine_alias_and_is_refused_with_the_way_out():
    done = run_qabi("profile", "import", str(LIBVIRT / "win11.virt-install.xml"))
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert "machine type 'q35'" in done.stderr and "virsh dumpxml" in done.stderr
