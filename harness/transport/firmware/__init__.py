"""Firmware transport: read the guest-visible hardware at the firmware's hand-off, over qtest.

QEMU boots the profile's hardware with the reference payload (guests/payload/) as `-kernel`, the
same way the serial transport boots the reference kernel (so the same linuxboot option ROM and
fw_cfg layout), the same ISA serial port (its output goes to a file), and a private qtest socket
in the 0700 run dir. At hand-off the payload runs INT 15h E820 and CPUID on the boot vCPU, stores
the results at 0x30000 and halts. The host then reads, over the qtest line protocol
(`read ADDR LEN`, `outl`/`inl` on CF8/CFC), what the reference guest's probe reads from Linux:

- ACPI: RSDP (EBDA, then 0xE0000-0xFFFFF, as Linux searches) -> XSDT (revision >= 2 and set) or
  RSDT -> every table, plus the FADT's DSDT (X_DSDT preferred) and FACS (both pointers),
  named as Linux's /sys/firmware/acpi/tables names them (SSDT1, SSDT2 for repeats);
- SMBIOS: the entry point Linux picks (_SM3_ first, then _SM_, 16-byte aligned in
  0xF0000-0xFFFFF) and the table, trimmed as Linux trims it (after type 127 for 3.x, after the
  structure count for 2.x);
- PCI: every function from bus 0, bridges followed through the secondary bus numbers the
  firmware assigned (a bus seen twice is a looping chain: an error); config space through
  CF8/CFC (256 bytes), and through ECAM at the MCFG base (4096 bytes) for a PCI Express function
  when there is an MCFG, as Linux sizes the sysfs `config` file;
- PCI resources: the sysfs `resource` text Linux would print, derived without touching config
  space: addresses from the BARs the firmware assigned, sizes from QEMU's own `query-pci` over
  QMP (sizing a BAR by writing it would change the state being measured), flags as Linux's
  __pci_read_base sets them, Linux's two fixups that change this file on these machines applied
  (legacy IDE ranges, the boot VGA's shadowed ROM);
- CPUID of vCPU0 as /dev/cpu/0/cpuid, the leaves and subleaves the guest probe keeps (only the
  boot vCPU runs the payload: manifest `probe.cpuid_vcpus` is "0");
- the memory map as /sys/firmware/memmap/N, after Linux's e820 sanitizing;
- then, after everything above (so nothing here changes what it measured), what drivers read:
  fw_cfg's directory and files (fwcfg.py) and the registers behind each function's BARs
  (registers.py, through bars.py).

The records have the guest probe's paths, so capture() writes the same bundle.

The probe is the firmware's own: the profile's `firmware` picks the probe module (PROBES):
seabios.py (the payload above) or ovmf.py (an EFI application OVMF starts; it announces its result
buffer in a mailbox page, and ACPI and SMBIOS are read where the EFI configuration table points;
its CPUID is read in 64-bit mode, its memory map is the UEFI one as Linux's EFI stub turns it into
e820, and it adds the Secure Boot variables and the configuration table as records).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import CaptureError
from harness.qemu.process import spawn
from harness.transport.base import Session, Setup, TransportResult, early_exit_error
from harness.transport.firmware import ovmf, seabios
from harness.transport.firmware.bars import scratch_ram
from harness.transport.firmware.fwcfg import fwcfg_records
from harness.transport.firmware.pci import _mcfg_base, pci_records, qmp_query_pci
from harness.transport.firmware.qtest import Memory, Qtest
from harness.transport.firmware.records import HandOff, cpuid_record, memmap_records, sanitize_e820
from harness.transport.firmware.registers import register_records
from harness.transport.firmware.seabios import PAYLOAD, payload_sha256
from harness.transport.firmware.tables import acpi_records, smbios_records
from harness.transport.framing import Record
from harness.transport.qmp import Qmp

if TYPE_CHECKING:
    from harness.plan import CapturePlan

__all__ = [
    "PAYLOAD",
    "READS",
    "TRANSPORT",
    "FirmwareTransport",
    "Memory",
    "payload_sha256",
    "pci_records",
    "run",
    "sanitize_e820",
]

QTEST_SOCKET = "qtest.sock"
SEABIOS_CLOCK = ("-icount", "shift=7")
"""SeaBIOS under TCG runs on an instruction-count clock, 128 ns of guest time an instruction (sleeping
in real time when halted): its fixed waits (USB port resets and settling, tens of milliseconds of
busy-waiting on the TSC) then cost a few hundred thousand instructions instead of that much host
CPU. The tables, PCI, CPUID, memory map and fw_cfg read are byte-identical either way (checked on
QEMU 5.2, 7.2, 10.0 and 11.1, every SeaBIOS profile, both families); a device timer that runs out
during the boot has run out at the hand-off (QEMU 5.2's e1000e finishes auto-negotiation, so CTRL
has flow control on, as a guest's driver sees it later). Not for OVMF, whose timer tick then costs
more than the waits it saves, and not under KVM."""
READS = f"tables, pci, fw_cfg, registers 1; SeaBIOS under TCG with {' '.join(SEABIOS_CLOCK)}"
"""What the host reads at the hand-off, and on which clock the firmware ran up to it (part of a
firmware capture's cache key: a capture made by a reader that read less, or on another clock, is never
reused as if it had been made by this one)."""
HV_PROPERTIES = "/sys/hypervisor/qabi/vcpu0-hv-properties.json"   # host-read (QMP), not a guest file
CONSOLE = "console.out"


def boot_sha256(firmware: str) -> str:
    """The sha256 of the hand-off probe a profile's `firmware` boots: the payload under SeaBIOS, the
    EFI probe (signed for Secure Boot) under OVMF."""
    if firmware == "seabios":
        return payload_sha256()
    return ovmf.probe_sha256(firmware == "ovmf-secboot")


class FirmwareTransport:
    """The hardware as the firmware hands it to a boot loader, read by the host over qtest."""

    name = "firmware"
    needs_nic = False
    reads = READS

    def setup(self, plan: CapturePlan, workdir: Path, console_log: Path) -> Setup:
        firmware = plan.profile.firmware
        path = PAYLOAD if firmware == "seabios" else ovmf.probe_path(firmware == "ovmf-secboot")
        digest = boot_sha256(firmware)
        clock = SEABIOS_CLOCK if firmware == "seabios" and plan.accel == "tcg" else ()
        return Setup(args=(*clock, "-kernel", str(path),
                           "-chardev", f"file,id=qabicon,path={workdir / CONSOLE}", "-serial", "chardev:qabicon",
                           "-qtest", f"unix:{workdir / QTEST_SOCKET}", "-qtest-log", "none"),
                     image={"sha256": digest, "payload": str(path.relative_to(PAYLOAD.parents[2]))},
                     state=(firmware, bool(plan.profile.hyperv)))

    def run(self, session: Session) -> TransportResult:
        firmware, hyperv = session.setup.state or ("seabios", False)
        return run(session.argv, session.env, session.workdir, session.console_log, session.timeout,
                   firmware, hyperv)


def _wait(qt: Qtest, firmware: str) -> HandOff:
    """Poll until the firmware's probe is done, then read what it recorded."""
    if firmware == "seabios":
        if not seabios.ready(qt):
            raise _NotYet
        return seabios.handoff(qt)
    addr = ovmf.ready(qt)
    if addr is None:
        raise _NotYet
    return ovmf.read_probe(qt, addr)


def hv_properties_record(qmp_path: Path, deadline: float, alive: Any) -> Record:
    """The boot vCPU's hv-* QOM properties (name: value) as JSON, read over QMP: what QEMU would put
    into the Hyper-V CPUID leaves under KVM (under TCG it builds none)."""
    with Qmp.connect(qmp_path, max(1.0, deadline - time.monotonic()), alive, "QEMU") as qmp:
        cpus = qmp.cmd("query-cpus-fast") or []
        path = next((c.get("qom-path") for c in cpus if c.get("cpu-index") == 0), None)
        if not isinstance(path, str):
            raise CaptureError("QEMU's query-cpus-fast names no vCPU 0")
        values: dict[str, Any] = {}
        for prop in qmp.cmd("qom-list", path=path) or []:
            name = str(prop.get("name", ""))
            if name.startswith("hv-") and len(values) < 256:
                value = qmp.cmd("qom-get", path=path, property=name)
                if value is None or isinstance(value, (bool, int, str)):
                    values[name] = value
    return Record(HV_PROPERTIES, (json.dumps(values, indent=1, sort_keys=True) + "\n").encode())


class _NotYet(Exception):
    """The probe has not signalled yet."""


def run(argv: list[str], env: dict[str, str], workdir: Path, console_log: Path, timeout: float,
        firmware: str = "seabios", hyperv: bool = False) -> TransportResult:
    """One hand-off capture; with `hyperv` (the profile asks for enlightenments) the boot vCPU's
    hv-* QOM properties are read over QMP too (HV_PROPERTIES: host-read, as the PCI sizes are)."""
    started = time.monotonic()
    deadline = started + timeout
    stderr_path = workdir / "qemu.stderr"
    timings: dict[str, float] = {}
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(workdir / QTEST_SOCKET))
        listener.listen(1)
        with spawn(argv, env, stderr_path=stderr_path) as proc:
            def alive() -> None:
                if proc.poll() is not None:
                    raise early_exit_error(stderr_path.read_text(errors="replace"), console_log)

            conn = None
            listener.settimeout(0.02)
            while conn is None:
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    alive()
                    if time.monotonic() > deadline:
                        raise CaptureError(f"QEMU never connected to its qtest socket within {timeout:.0f}s") from None
            with contextlib.closing(conn):
                qt = Qtest(conn, deadline + 10, alive)    # replies: a grace beyond the wait
                while True:
                    try:
                        result = _wait(qt, firmware)
                        break
                    except _NotYet:
                        pass
                    if time.monotonic() > deadline:
                        what = "reference payload" if firmware == "seabios" else "EFI probe"
                        raise CaptureError(f"the {what} never signalled completion within "
                                           f"{timeout:.0f}s (console log: {console_log})")
                    time.sleep(0.005 if firmware == "seabios" else 0.05)
                timings["boot_to_handoff"] = round(time.monotonic() - started, 3)
                mem = Memory.from_e820(result.e820)
                acpi = acpi_records(qt, mem, result.rsdp)
                smbios = smbios_records(qt, mem, result.smbios)
                sizes = qmp_query_pci(workdir / "qmp.sock", deadline, alive)
                ecam = _mcfg_base(acpi)
                pci = pci_records(qt, ecam, sizes)
                timings["tables_and_pci"] = round(time.monotonic() - started - timings["boot_to_handoff"], 3)
                mark = time.monotonic()
                fwcfg = fwcfg_records(qt, scratch_ram(result.e820))
                timings["fw_cfg"] = round(time.monotonic() - mark, 3)
                mark = time.monotonic()
                registers = register_records(qt, pci, sizes, ecam)
                timings["registers"] = round(time.monotonic() - mark, 3)
                records = [*acpi, *smbios, *pci, Record("/dev/cpu/0/cpuid", cpuid_record(result.cpuid)),
                           *memmap_records(result.e820), *result.records, *fwcfg, *registers]
                if hyperv:
                    records.append(hv_properties_record(workdir / "qmp.sock", deadline, alive))
            timings["transfer"] = round(time.monotonic() - started - timings["boot_to_handoff"], 3)
    finally:
        listener.close()
        console_log.parent.mkdir(parents=True, exist_ok=True)
        out = workdir / CONSOLE
        console_log.write_bytes(out.read_bytes()[:1 << 20] if out.is_file() else b"")
    timings["total"] = round(time.monotonic() - started, 3)
    info = {**result.info, "cpuid_vcpus": "0", "e820_entries": str(len(result.e820))}
    return TransportResult(records, info, timings, details={"cpuid_vcpus": [0]})


TRANSPORT = FirmwareTransport()
