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
- the memory map as /sys/firmware/memmap/N, after Linux's e820 sanitizing.

The records have the guest probe's paths, so capture() writes the same bundle.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import CaptureError
from harness.qemu.process import spawn
from harness.transport.base import Session, Setup, TransportResult
from harness.transport.framing import MAX_RECORD, Record
from harness.transport.serial import early_exit_error

if TYPE_CHECKING:
    from harness.capture import CapturePlan

PAYLOAD_DIR = Path(__file__).resolve().parents[2] / "guests" / "payload"
PAYLOAD = PAYLOAD_DIR / "payload.bin"
QTEST_SOCKET = "qtest.sock"
CONSOLE = "console.out"

RESULT = 0x30000
MARKER = 0x4E4F4451            # "QDON"
E820_AT = RESULT + 0x100
CPUID_AT = RESULT + 0x1000
MAX_E820 = 128
MAX_CPUID = (0x10000 - 0x1000) // 24

MAX_TABLES = 256
MAX_BUSES = 256
FOUR_G = 1 << 32


# -- qtest ------------------------------------------------------------------------------------

class Qtest:
    """The qtest line protocol on a connected socket: one command per line, one `OK ...` reply
    (or `FAIL ...`) per command, in order; `batch` pipelines many commands."""

    def __init__(self, conn: socket.socket, deadline: float, alive: Any) -> None:
        self._conn = conn
        self._buf = b""
        self._deadline = deadline
        self._alive = alive

    def _line(self) -> str:
        while b"\n" not in self._buf:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise CaptureError("timed out talking to QEMU's qtest socket")
            self._conn.settimeout(min(remaining, 1.0))
            try:
                chunk = self._conn.recv(1 << 20)
            except TimeoutError:
                self._alive()
                continue
            except OSError:           # reset: QEMU is exiting (a bad option, too much memory)
                chunk = b""
            if not chunk:
                self._closed()
            self._buf += chunk
            if len(self._buf) > (64 << 20):
                raise CaptureError("qtest reply too long")
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("ascii", errors="replace")

    def _closed(self) -> None:
        """The socket closed: QEMU is exiting. Give it a moment, so that its own reason (stderr)
        is the error, and fall back to saying the socket closed."""
        end = time.monotonic() + 5
        while time.monotonic() < end:
            self._alive()
            time.sleep(0.05)
        raise CaptureError("QEMU closed its qtest socket")

    def batch(self, commands: list[str]) -> list[str]:
        """Send `commands`, return the text after `OK` of each reply (IRQ lines skipped)."""
        if not commands:
            return []
        self._conn.settimeout(max(0.1, self._deadline - time.monotonic()))
        try:
            self._conn.sendall("".join(c + "\n" for c in commands).encode())
        except OSError:
            self._closed()
        out: list[str] = []
        while len(out) < len(commands):
            line = self._line()
            if line.startswith("IRQ"):
                continue
            if not line.startswith("OK"):
                raise CaptureError(f"qtest refused {commands[len(out)][:40]!r}: {line[:80]}")
            out.append(line[2:].strip())
        return out

    def read(self, addr: int, length: int) -> bytes:
        if length <= 0:
            return b""
        (reply,) = self.batch([f"b64read {addr:#x} {length:#x}"])
        try:
            data = base64.b64decode(reply, validate=True)
        except ValueError:
            raise CaptureError(f"qtest sent a malformed reply for {length} bytes at {addr:#x}") from None
        if len(data) != length:
            raise CaptureError(f"qtest returned {len(data)} bytes for {length} at {addr:#x}")
        return data

    def readl(self, addr: int) -> int:
        return int(self.batch([f"readl {addr:#x}"])[0], 16)

    def config_dwords(self, bdf: int, count: int = 64) -> bytes:
        """The first 4*count bytes of a function's config space, through CF8/CFC."""
        cmds = []
        for i in range(count):
            cmds += [f"outl 0xcf8 {0x80000000 | bdf << 8 | i * 4:#x}", "inl 0xcfc"]
        replies = self.batch(cmds)
        return b"".join(struct.pack("<I", int(replies[2 * i + 1], 16) & 0xFFFFFFFF) for i in range(count))


# -- guest memory bounds ----------------------------------------------------------------------

E820_RAM, E820_RESERVED, E820_ACPI, E820_NVS = 1, 2, 3, 4


@dataclass(frozen=True)
class Memory:
    """Guest memory the firmware described: what a table pointer may point at."""

    ranges: tuple[tuple[int, int], ...]          # [start, end) ranges

    @classmethod
    def from_e820(cls, entries: list[tuple[int, int, int]]) -> Memory:
        """RAM, ACPI and NVS ranges, the first MiB, and reserved ranges that adjoin them (the
        firmware's own data at the top of RAM); reserved ranges elsewhere (MMIO windows, the
        flash) are not memory."""
        spans = [(0, 0x100000)] + [(a, a + n) for a, n, t in entries if t in (E820_RAM, E820_ACPI, E820_NVS)]
        reserved = sorted((a, a + n) for a, n, t in entries if t == E820_RESERVED)
        merged = _merge(spans)
        while True:
            joined = [r for r in reserved if any(a <= r[0] <= b or a <= r[1] <= b for a, b in merged)]
            grown = _merge(merged + joined)
            if grown == merged:
                return cls(tuple(merged))
            merged = grown

    def check(self, what: str, addr: int, length: int) -> None:
        if not any(a <= addr < b for a, b in self.ranges):
            raise CaptureError(f"{what} at {addr:#x} is outside guest RAM")
        if length > MAX_RECORD:
            raise CaptureError(f"{what} at {addr:#x} claims {length} bytes (more than {MAX_RECORD >> 20} MiB)")
        if not any(a <= addr and addr + length <= b for a, b in self.ranges):
            raise CaptureError(f"{what} at {addr:#x} is {length} bytes long and runs past guest memory")


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


# -- the payload's results ----------------------------------------------------------------------

@dataclass(frozen=True)
class PayloadResult:
    e820: list[tuple[int, int, int]]
    e820_status: int
    cpuid: dict[tuple[int, int], tuple[int, int, int, int]]
    cpuid_order: list[tuple[int, int]]


def read_payload(qt: Qtest) -> PayloadResult:
    header = qt.read(RESULT, 0x28)
    _marker, version, n_e820, n_cpuid, status = struct.unpack_from("<5I", header)
    if version != 1:
        raise CaptureError(f"the payload wrote result version {version} (this qabi reads 1)")
    if n_e820 > MAX_E820 or n_cpuid > MAX_CPUID:
        raise CaptureError(f"the payload wrote absurd counts ({n_e820} e820, {n_cpuid} cpuid entries)")
    raw = qt.read(E820_AT, 20 * n_e820)
    e820 = [struct.unpack_from("<QQI", raw, 20 * i) for i in range(n_e820)]
    raw = qt.read(CPUID_AT, 24 * n_cpuid)
    cpuid: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    order = []
    for i in range(n_cpuid):
        leaf, sub, a, b, c, d = struct.unpack_from("<6I", raw, 24 * i)
        cpuid[(leaf, sub)] = (a, b, c, d)
        order.append((leaf, sub))
    return PayloadResult([(a, n, t) for a, n, t in e820], status, cpuid, order)


# -- CPUID: the guest probe's selection ---------------------------------------------------------

L40, L80, X1D = 0x40000000, 0x80000000, 0x8000001D
SUBLEAF_LEAVES = (4, 7, 11, 13, 15, 16, 18, 20, 23, 24, 29, 31, 0x8000001D, 0x80000020, 0x80000026)


def _set_bits(mask: int, first: int) -> list[int]:
    return [n for n in range(first, 64) if mask >> n & 1]


def cpuid_record(regs: dict[tuple[int, int], tuple[int, int, int, int]]) -> bytes:
    """The /dev/cpu/N/cpuid record the guest probe (guests/reference/probe.sh) writes from the
    same CPUID answers: its ranges, its subleaf rules, leaf then subleaf order."""
    def get(leaf: int, sub: int) -> tuple[int, int, int, int]:
        try:
            return regs[(leaf, sub)]
        except KeyError:
            raise CaptureError(f"the payload did not record CPUID leaf {leaf:#x} subleaf {sub}") from None

    maxb = min(get(0, 0)[0], 255)
    maxh = get(L40, 0)[0]
    if not L40 <= maxh <= L40 + 255:
        maxh = L40
    maxe = get(L80, 0)[0]
    if not L80 <= maxe <= L80 + 255:
        maxe = L80
    hv = get(1, 0)[2] >> 31 & 1 if maxb >= 1 else 0
    out = bytearray()

    def emit(leaf: int, sub: int, r: tuple[int, int, int, int]) -> None:
        out.extend(struct.pack("<6I", leaf, sub, *r))

    def subleaves(leaf: int, r0: tuple[int, int, int, int]) -> list[int]:
        eax, ebx, _ecx, edx = r0
        wanted: list[int] = []
        if leaf in (4, X1D) or leaf in (11, 31, 0x80000026):
            reg, shift, mask = (0, 0, 31) if leaf in (4, X1D) else (2, 8, 255)
            if not r0[reg] >> shift & mask:
                return []
            for s in range(1, 64):
                if not get(leaf, s)[reg] >> shift & mask:
                    break
                wanted.append(s)
            return wanted
        if leaf in (7, 20, 23, 24, 29):
            return list(range(1, min(eax, 63) + 1))
        if leaf == 13:
            subs = {1, *_set_bits(eax | edx << 32, 2)}
            r1 = get(13, 1)
            subs |= set(_set_bits(r1[2] | r1[3] << 32, 2))
            return sorted(s for s in subs if s <= 63)
        if leaf == 15:
            return _set_bits(edx, 1)
        if leaf in (16, 0x80000020):
            return _set_bits(ebx, 1)
        if leaf == 18:
            sgx = [1]
            for s in range(2, 64):
                if not get(18, s)[0] & 15:
                    break
                sgx.append(s)
            return sgx
        return []

    for first, last in ((0, maxb), (L40, maxh), (L80, maxe)):
        if first == L40 and hv != 1:
            continue
        for leaf in range(first, last + 1):
            r0 = get(leaf, 0)
            emit(leaf, 0, r0)
            in_span = (leaf <= min(31, maxb)) if leaf < L80 else (leaf <= min(X1D + 9, maxe))
            if leaf in SUBLEAF_LEAVES and in_span:
                for s in subleaves(leaf, r0):
                    emit(leaf, s, get(leaf, s))
    return bytes(out)


# -- memory map ---------------------------------------------------------------------------------

E820_NAMES = {1: "System RAM", 3: "ACPI Tables", 4: "ACPI Non-volatile Storage", 5: "Unusable memory",
              7: "Persistent Memory", 12: "Persistent Memory (legacy)", 0xEFFFFFFF: "Soft Reserved"}


def sanitize_e820(entries: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Linux's e820__update_table: overlaps resolved to the higher type, zero sizes dropped,
    adjacent ranges of one type merged, sorted."""
    points: list[tuple[int, int, int]] = []          # (address, is_end, index)
    for i, (addr, size, _kind) in enumerate(entries):
        if size and addr + size > addr:
            points += [(addr, 0, i), (addr + size, 1, i)]
    points.sort(key=lambda p: (p[0], p[1]))
    active: set[int] = set()
    out: list[tuple[int, int, int]] = []
    last_kind, last_addr = 0, 0
    i = 0
    while i < len(points):
        addr = points[i][0]
        while i < len(points) and points[i][0] == addr:
            _, is_end, index = points[i]
            if is_end:
                active.discard(index)
            else:
                active.add(index)
            i += 1
        kind = max((entries[j][2] for j in active), default=0)
        if kind != last_kind:
            if last_kind:
                out.append((last_addr, addr - last_addr, last_kind))
            last_kind, last_addr = kind, addr
    return out


def memmap_records(entries: list[tuple[int, int, int]]) -> list[Record]:
    records = []
    for n, (addr, size, kind) in enumerate(sanitize_e820(entries)):
        base = f"/sys/firmware/memmap/{n}"
        records += [Record(f"{base}/start", f"{addr:#x}\n".encode()),
                    Record(f"{base}/end", f"{addr + size - 1:#x}\n".encode()),
                    Record(f"{base}/type", f"{E820_NAMES.get(kind, 'Reserved')}\n".encode())]
    return records


# -- ACPI ----------------------------------------------------------------------------------------

def _checksum_ok(data: bytes) -> bool:
    return sum(data) & 0xFF == 0


def find_rsdp(qt: Qtest) -> tuple[int, bytes]:
    """Linux's acpi_find_root_pointer: the first 1 KiB of the EBDA, then 0xE0000-0xFFFFF."""
    ebda = struct.unpack("<H", qt.read(0x40E, 2))[0] << 4
    areas = [(ebda, 1024)] if 0x400 <= ebda < 0xA0000 else []
    areas.append((0xE0000, 0x20000))
    for start, length in areas:
        block = qt.read(start, length)
        for off in range(0, length - 20 + 1, 16):
            if block[off:off + 8] != b"RSD PTR " or not _checksum_ok(block[off:off + 20]):
                continue
            rev = block[off + 15]
            if rev >= 2:
                length2 = struct.unpack_from("<I", block, off + 20)[0]
                if length2 < 36 or off + length2 > len(block):
                    length2 = 36
                if not _checksum_ok(block[off:off + length2]):
                    continue
                return start + off, block[off:off + length2]
            return start + off, block[off:off + 20]
    raise CaptureError("no ACPI RSDP in the EBDA or 0xE0000-0xFFFFF: did the firmware run?")


def _table(qt: Qtest, mem: Memory, addr: int, what: str) -> bytes:
    mem.check(what, addr, 8)
    head = qt.read(addr, 8)
    length = struct.unpack_from("<I", head, 4)[0]
    if length < 8:
        raise CaptureError(f"{what} at {addr:#x} has an impossible length {length}")
    mem.check(what, addr, length)
    return qt.read(addr, length)


def acpi_records(qt: Qtest, mem: Memory) -> list[Record]:
    _rsdp_addr, rsdp = find_rsdp(qt)
    rev = rsdp[15]
    xsdt = struct.unpack_from("<Q", rsdp, 24)[0] if rev >= 2 and len(rsdp) >= 32 else 0
    if xsdt:
        root = _table(qt, mem, xsdt, "XSDT")
        size = 8
    else:
        root = _table(qt, mem, struct.unpack_from("<I", rsdp, 16)[0], "RSDT")
        size = 4
    if len(root) < 36:
        raise CaptureError(f"the ACPI root table is {len(root)} bytes long (shorter than its header)")
    body = root[36:]
    pointers = [int.from_bytes(body[i:i + size], "little") for i in range(0, len(body) - size + 1, size)]
    if len(pointers) > MAX_TABLES:
        raise CaptureError(f"the ACPI root table lists {len(pointers)} tables (more than {MAX_TABLES})")
    tables: list[bytes] = []
    seen: set[int] = set()

    def add(addr: int, what: str) -> bytes | None:
        if not addr or addr in seen:
            return None
        seen.add(addr)
        data = _table(qt, mem, addr, what)
        tables.append(data)
        return data

    for index, addr in enumerate(pointers):
        data = add(addr, f"ACPI table #{index} of the {'XSDT' if xsdt else 'RSDT'}")
        if data is not None and data[:4] == b"FACP":
            def field(offset: int, width: int, fadt: bytes = data) -> int:
                return int.from_bytes(fadt[offset:offset + width], "little") if len(fadt) >= offset + width else 0
            x_dsdt, dsdt = field(140, 8), field(40, 4)
            add(x_dsdt or dsdt, "DSDT")
            add(field(36, 4), "FACS")
            add(field(132, 8), "FACS (X_FIRMWARE_CTRL)")
    counts: dict[bytes, int] = {}
    for data in tables:
        counts[data[:4]] = counts.get(data[:4], 0) + 1
    records = []
    seq: dict[bytes, int] = {}
    for data in tables:
        sig = data[:4]
        name = sig.decode("ascii", errors="replace")
        if not all(0x21 <= c < 0x7F and chr(c) not in "/\\" for c in sig):
            raise CaptureError(f"an ACPI table has the unusable signature {sig!r}")
        if counts[sig] > 1:
            seq[sig] = seq.get(sig, 0) + 1
            name += str(seq[sig])
        records.append(Record(f"/sys/firmware/acpi/tables/{name}", data))
    return records


# -- SMBIOS --------------------------------------------------------------------------------------

def smbios_records(qt: Qtest, mem: Memory) -> list[Record]:
    """Linux's dmi_scan_machine without EFI: a valid _SM3_ first, then _SM_ (with _DMI_)."""
    area = qt.read(0xF0000, 0x10000)
    entry = None
    for off in range(0, 0x10000 - 32 + 1, 16):
        if area[off:off + 5] == b"_SM3_":
            n = area[off + 6]
            if 24 <= n <= 32 and _checksum_ok(area[off:off + n]):
                table_len = struct.unpack_from("<I", area, off + 12)[0]
                addr = struct.unpack_from("<Q", area, off + 16)[0]
                entry = (area[off:off + n], addr, table_len, None)
                break
    if entry is None:
        for off in range(0, 0x10000 - 32 + 1, 16):
            if area[off:off + 4] == b"_SM_":
                n = area[off + 5]
                if 0x1E <= n <= 32 and _checksum_ok(area[off:off + n]) and area[off + 16:off + 21] == b"_DMI_" \
                        and _checksum_ok(area[off + 16:off + 31]):
                    table_len = struct.unpack_from("<H", area, off + 0x16)[0]
                    addr = struct.unpack_from("<I", area, off + 0x18)[0]
                    count = struct.unpack_from("<H", area, off + 0x1C)[0]
                    entry = (area[off:off + n], addr, table_len, count)
                    break
    if entry is None:
        raise CaptureError("no SMBIOS entry point in 0xF0000-0xFFFFF")
    point, addr, table_len, count = entry
    mem.check("the SMBIOS table", addr, table_len)
    table = qt.read(addr, table_len)
    # dmi_decode_table: walk the structures, stop after `count` (2.x) or after type 127 (3.x)
    pos = done = 0
    while pos + 4 <= len(table) and (count is None or done < count):
        kind, length = table[pos], table[pos + 1]
        end = pos + length
        while end + 1 < len(table) and table[end:end + 2] != b"\0\0":
            end += 1
        pos = end + 2
        done += 1
        if count is None and kind == 127:
            break
    if pos < len(table):
        table = table[:pos]
    return [Record("/sys/firmware/dmi/tables/smbios_entry_point", point),
            Record("/sys/firmware/dmi/tables/DMI", table)]


# -- PCI -----------------------------------------------------------------------------------------

IORESOURCE_IO, IORESOURCE_MEM = 0x100, 0x200
IORESOURCE_PREFETCH, IORESOURCE_READONLY = 0x2000, 0x4000
IORESOURCE_SIZEALIGN, IORESOURCE_MEM_64 = 0x40000, 0x100000
IORESOURCE_PCI_FIXED, IORESOURCE_ROM_SHADOW = 0x10, 0x2
LEGACY_IO = IORESOURCE_IO | IORESOURCE_PCI_FIXED
LINES_ENDPOINT, LINES_BRIDGE = 13, 17      # PCI_BRIDGE_RESOURCES / PCI_NUM_RESOURCES (with IOV)


def _find_cap(config: bytes, cap_id: int) -> int | None:
    if not config[6] & 0x10:
        return None
    pos, seen = config[0x34] & 0xFC, set()
    while pos >= 0x40 and pos not in seen and pos + 2 <= len(config):
        seen.add(pos)
        if config[pos] == cap_id:
            return pos
        pos = config[pos + 1] & 0xFC
    return None


def _mcfg_base(tables: list[Record]) -> int | None:
    for rec in tables:
        if rec.path.rsplit("/", 1)[-1].startswith("MCFG") and len(rec.data) >= 44 + 16:
            base, segment, first_bus = struct.unpack_from("<QHB", rec.data, 44)
            if segment == 0 and first_bus == 0:
                return int(base)
    return None


def qmp_query_pci(qmp_path: Path, deadline: float, alive: Any) -> dict[tuple[int, int, int], dict[int, int]]:
    """(bus, slot, function) -> {region index (6 = ROM): size}, from QEMU's query-pci."""
    conn = None
    while conn is None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(qmp_path))
            conn = s
        except (ConnectionRefusedError, FileNotFoundError):
            s.close()
            alive()
            if time.monotonic() > deadline:
                raise CaptureError("QEMU did not answer on its QMP socket") from None
            time.sleep(0.01)
    try:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        reader = conn.makefile("rb")

        def reply() -> Any:
            while True:
                line = reader.readline(16 << 20)
                if not line:
                    raise CaptureError("QEMU closed its QMP socket")
                msg = json.loads(line)
                if "return" in msg:
                    return msg["return"]
                if "error" in msg:
                    raise CaptureError(f"QMP error: {msg['error'].get('desc', msg['error'])}")
        json.loads(reader.readline(1 << 20) or b"{}")           # greeting
        conn.sendall(b'{"execute":"qmp_capabilities"}\n')
        reply()
        conn.sendall(b'{"execute":"query-pci"}\n')
        buses = reply()
    except (OSError, ValueError) as exc:
        alive()
        raise CaptureError(f"cannot read the PCI regions over QMP: {exc}") from None
    finally:
        conn.close()
    out: dict[tuple[int, int, int], dict[int, int]] = {}

    def walk(devices: list[dict[str, Any]], bus: int, depth: int) -> None:
        if depth > MAX_BUSES:
            raise CaptureError("query-pci nests bridges absurdly deep")
        for dev in devices:
            key = (int(dev["bus"]), int(dev["slot"]), int(dev["function"]))
            out[key] = {int(r["bar"]): int(r["size"]) for r in dev.get("regions", [])}
            bridge = dev.get("pci_bridge")
            if bridge:
                walk(bridge.get("devices", []), int(bridge["bus"]["secondary"]), depth + 1)

    for bus in buses:
        walk(bus.get("devices", []), int(bus["bus"]), 0)
    return out


def resource_text(config: bytes, sizes: dict[int, int], boot_vga: bool) -> bytes:
    """The sysfs `resource` file Linux prints for this function (see the module docstring)."""
    header_type = config[0x0E] & 0x7F
    nbars = {0: 6, 1: 2}.get(header_type, 0)
    lines = [(0, 0, 0)] * (LINES_BRIDGE if header_type == 1 else LINES_ENDPOINT)
    i = 0
    while i < nbars:
        value = struct.unpack_from("<I", config, 0x10 + 4 * i)[0]
        size = sizes.get(i, 0)
        step = 1
        if size:
            if value & 1:
                start, flags = value & ~3, IORESOURCE_IO | (value & 3) | IORESOURCE_SIZEALIGN
            else:
                start, flags = value & ~0xF, IORESOURCE_MEM | (value & 0xF) | IORESOURCE_SIZEALIGN
                if value & 8:
                    flags |= IORESOURCE_PREFETCH
                if value >> 1 & 3 == 2:
                    flags |= IORESOURCE_MEM_64
                    if i + 1 < nbars:
                        start |= struct.unpack_from("<I", config, 0x14 + 4 * i)[0] << 32
                    step = 2
            lines[i] = (start, start + size - 1, flags)
        i += step
    rom_offset = {0: 0x30, 1: 0x38}.get(header_type)
    if rom_offset is not None and sizes.get(6):
        rom = struct.unpack_from("<I", config, rom_offset)[0]
        start = rom & ~0x7FF
        flags = (rom & 1) | IORESOURCE_MEM | IORESOURCE_PREFETCH | IORESOURCE_READONLY | IORESOURCE_SIZEALIGN
        lines[6] = (start, start + sizes[6] - 1, flags)
    class_code = config[0x0B] << 8 | config[0x0A]
    if header_type == 0 and class_code == 0x0101:               # pci_setup_device: legacy IDE
        prog_if = config[0x09]
        if not prog_if & 1:
            lines[0], lines[1] = (0x1F0, 0x1F7, LEGACY_IO), (0x3F6, 0x3F6, LEGACY_IO)
        if not prog_if & 4:
            lines[2], lines[3] = (0x170, 0x177, LEGACY_IO), (0x376, 0x376, LEGACY_IO)
    if boot_vga:                                                # pci_fixup_video
        lines[6] = (0xC0000, 0xDFFFF, IORESOURCE_MEM | IORESOURCE_ROM_SHADOW | IORESOURCE_PCI_FIXED)
    return "".join(f"0x{a:016x} 0x{b:016x} 0x{f:016x}\n" for a, b, f in lines).encode()


def pci_records(qt: Qtest, ecam: int | None, sizes: dict[tuple[int, int, int], dict[int, int]]) -> list[Record]:
    """Every function from bus 0, bridges followed; config and resource records."""
    records: list[Record] = []
    pending, seen = [0], {0}
    vga_done = False
    while pending:
        bus = pending.pop(0)
        for dev in range(32):
            functions = 1
            fn = 0
            while fn < functions:
                bdf = bus << 8 | dev << 3 | fn
                fn += 1
                ident = qt.config_dwords(bdf, 1)
                if ident[:2] in (b"\xff\xff", b"\x00\x00"):
                    if fn == 1:
                        break
                    continue
                config = qt.config_dwords(bdf)
                if fn == 1 and config[0x0E] & 0x80:
                    functions = 8
                if ecam is not None and _find_cap(config, 0x10) is not None:
                    ext = qt.read(ecam + (bdf << 12), 4096)
                    if ext[0x100:0x104] != b"\xff\xff\xff\xff":
                        config = config + ext[256:]
                class_code = config[0x0B] << 8 | config[0x0A]
                command = struct.unpack_from("<H", config, 4)[0]
                boot_vga = False
                if class_code == 0x0300 and command & 3 and not vga_done:
                    boot_vga = vga_done = True
                where = f"/sys/bus/pci/devices/0000:{bus:02x}:{dev:02x}.{fn - 1}"
                records.append(Record(f"{where}/config", config))
                records.append(Record(f"{where}/resource",
                                      resource_text(config, sizes.get((bus, dev, fn - 1), {}), boot_vga)))
                if config[0x0E] & 0x7F == 1:
                    secondary = config[0x19]
                    if secondary in seen or secondary <= bus:
                        raise CaptureError(f"PCI bridge {where[21:]} leads to bus {secondary:#04x}, which was "
                                           "already scanned: a looping bridge chain")
                    if len(seen) >= MAX_BUSES:
                        raise CaptureError(f"more than {MAX_BUSES} PCI buses")
                    seen.add(secondary)
                    pending.append(secondary)
    return records


# -- the transport -------------------------------------------------------------------------------

def payload_bytes() -> bytes:
    try:
        return PAYLOAD.read_bytes()
    except OSError as exc:
        raise CaptureError(f"the reference payload {PAYLOAD} is unreadable: {exc.strerror}") from None


def payload_sha256() -> str:
    """The sha256 of the payload that boots (it decides a firmware capture's bytes: cache keys)."""
    return hashlib.sha256(payload_bytes()).hexdigest()


class FirmwareTransport:
    """The hardware as the firmware hands it to a boot loader, read by the host over qtest."""

    name = "firmware"
    needs_nic = False

    def setup(self, plan: CapturePlan, workdir: Path, console_log: Path) -> Setup:
        digest = payload_sha256()
        return Setup(args=("-kernel", str(PAYLOAD),
                           "-chardev", f"file,id=qabicon,path={workdir / CONSOLE}", "-serial", "chardev:qabicon",
                           "-qtest", f"unix:{workdir / QTEST_SOCKET}"),
                     image={"sha256": digest, "payload": "guests/payload/payload.bin"})

    def run(self, session: Session) -> TransportResult:
        return run(session.argv, session.env, session.workdir, session.console_log, session.timeout)


def run(argv: list[str], env: dict[str, str], workdir: Path, console_log: Path, timeout: float) -> TransportResult:
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
                while qt.readl(RESULT) != MARKER:
                    if time.monotonic() > deadline:
                        raise CaptureError(f"the reference payload never signalled completion within "
                                           f"{timeout:.0f}s (console log: {console_log})")
                    time.sleep(0.005)
                timings["boot_to_handoff"] = round(time.monotonic() - started, 3)
                result = read_payload(qt)
                if result.e820_status not in (0, 3) or not result.e820:
                    raise CaptureError(f"the firmware's INT 15h E820 failed (status {result.e820_status}, "
                                       f"{len(result.e820)} entries)")
                mem = Memory.from_e820(result.e820)
                acpi = acpi_records(qt, mem)
                smbios = smbios_records(qt, mem)
                sizes = qmp_query_pci(workdir / "qmp.sock", deadline, alive)
                pci = pci_records(qt, _mcfg_base(acpi), sizes)
                records = [*acpi, *smbios, *pci, Record("/dev/cpu/0/cpuid", cpuid_record(result.cpuid)),
                           *memmap_records(result.e820)]
            timings["transfer"] = round(time.monotonic() - started - timings["boot_to_handoff"], 3)
    finally:
        listener.close()
        console_log.parent.mkdir(parents=True, exist_ok=True)
        out = workdir / CONSOLE
        console_log.write_bytes(out.read_bytes()[:1 << 20] if out.is_file() else b"")
    timings["total"] = round(time.monotonic() - started, 3)
    info = {"payload": "1", "cpuid_vcpus": "0", "e820_entries": str(len(result.e820))}
    return TransportResult(records, info, timings, details={"cpuid_vcpus": [0]})


TRANSPORT = FirmwareTransport()
