"""GuestProfile: the VM hardware as a user would configure it (guests/NAME.toml).

The machine type is chosen per run; a profile may list devices for one machine family only
(`families = ["q35"]`). Every guest-visible value that could vary from run to run (UUID, MACs,
disk serials, RTC) is fixed here or by the launcher.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.cache import TOML_LIMIT, parse_toml, read_text
from harness.errors import QabiError, UnsupportedError
from harness.guest.drivers import DriverRule, NotAllowed, check_driver, check_key, check_property

_T = TypeVar("_T")
GUESTS_DIR = Path(__file__).resolve().parents[2] / "guests"
FAMILIES = ("i440fx", "q35")
_DEVICE_KEYS = {"driver", "id", "addr", "bus", "families", "props", "mac", "disk", "cdrom", "audio"}


def machine_family(machine: str) -> str:
    """'i440fx' or 'q35' for the machine types qabi knows (aliases included)."""
    if machine == "pc" or machine.startswith("pc-i440fx") or re.fullmatch(r"pc-\d.*", machine):
        return "i440fx"
    if machine == "q35" or machine.startswith("pc-q35"):
        return "q35"
    raise UnsupportedError(f"machine type '{machine}' is not of the i440fx or q35 family")


@dataclass(frozen=True)
class Device:
    driver: str
    id: str | None = None
    addr: str | None = None
    bus: str | None = None
    families: tuple[str, ...] = FAMILIES
    props: tuple[tuple[str, str], ...] = ()
    mac: str | None = None
    disk: str | None = None
    cdrom: bool = False
    audio: bool = False


@dataclass(frozen=True)
class GuestProfile:
    name: str
    description: str
    cpu: str
    memory_mib: int
    smp: tuple[tuple[str, int], ...]
    uuid: str
    devices: tuple[Device, ...] = field(default_factory=tuple)
    source: str = ""
    machine: str | None = None            # the machine type the VM runs (an imported profile pins it)
    smbios: tuple[tuple[int, tuple[tuple[str, str], ...]], ...] = ()   # (type, ((field, value), ...))
    pm: tuple[tuple[str, bool], ...] = ()     # ACPI sleep states offered: (("s3", False), ...); unset: default
    families: tuple[str, ...] = FAMILIES       # the machine families the profile applies to
    firmware: str = "seabios"                  # seabios | ovmf | ovmf-secboot
    smm: bool | None = None                    # None: the machine type's default
    tpm: str | None = None                     # crb | tis: a TPM 2.0 on swtpm, started by qabi
    hyperv: tuple[tuple[str, str | None], ...] = ()   # Hyper-V enlightenments: (name, value or None)
    hpet: bool | None = None                   # None: the machine type's default

    @property
    def uefi(self) -> bool:
        return self.firmware != "seabios"

    def applies_to(self, machine: str) -> bool:
        """Whether this profile runs on `machine`'s family at all (`families`; a q35-only profile is
        not planned on i440fx: it is not a run there, neither a pass nor a skip)."""
        return machine_family(machine) in self.families

    def cpu_option(self, hyperv: bool = True) -> str:
        """The -cpu value: the named model, its flags, then (with `hyperv`) the Hyper-V enlightenments
        as hv-* properties."""
        hv = [f"hv-{name}={value}" if value is not None else f"hv-{name}=on" for name, value in self.hyperv]
        return ",".join([self.cpu, *(hv if hyperv else [])])

    def devices_for(self, machine: str) -> list[Device]:
        family = machine_family(machine)
        return [d for d in self.devices if family in d.families]

    def drivers_for(self, machine: str) -> list[str]:
        tpm = {TPM_DRIVERS[self.tpm]} if self.tpm else set()
        return sorted({d.driver for d in self.devices_for(machine)} | tpm)

    def nics_for(self, machine: str) -> list[Device]:
        return [d for d in self.devices_for(machine) if d.mac]


def _fail(path: Path, message: str) -> QabiError:
    return QabiError(f"{path}: {message}")


# -- the schema: every key known, every value of a bounded shape that cannot reach a host file or
# another QEMU option (profile files are hostile input: they may come from anyone); drivers and their
# properties only from the allow-list of harness/guest/drivers.py -----------------------------------
_TOP_KEYS = {"name", "description", "cpu", "memory", "smp", "uuid", "device", "families", "firmware", "smm",
             "tpm", "hyperv", "hpet", "machine", "smbios", "pm"}
FIRMWARES = ("seabios", "ovmf", "ovmf-secboot")
# The TPM: `tpm = "crb" | "tis"` is the one -device driver a profile gets outside [[device]] (on
# qabi's swtpm backend, harness/transport/platform.py); kept in this small table, apart from the
# device schema, so that a driver allow-list and this stay two separate tables.
TPM_DRIVERS = {"crb": "tpm-crb", "tis": "tpm-tis"}
TPMS = tuple(TPM_DRIVERS)
# Hyper-V enlightenments a profile may ask for (QEMU's hv-* CPU properties), with the value shape each
# takes: None = on/off only, else the pattern and the bounds of its number (spinlocks: retries, >= 0xfff).
HYPERV: dict[str, tuple[int, int] | None] = {
    "relaxed": None, "vapic": None, "spinlocks": (0xFFF, 0xFFFFFFFF), "vpindex": None, "runtime": None,
    "synic": None, "stimer": None, "stimer-direct": None, "frequencies": None, "tlbflush": None,
    "tlbflush-ext": None, "tlbflush-direct": None, "ipi": None, "reset": None, "time": None, "crash": None,
    "reenlightenment": None, "avic": None, "xmm-input": None, "emsr-bitmap": None,
}
_HV_ITEM = re.compile(r"([a-z][a-z-]{1,31})(?:=(0x[0-9a-fA-F]{1,8}|\d{1,10}))?")
# CPU models and options that pass the host's CPU through: never (the guest would see the host)
_HOST_CPU = re.compile(r"(?:^|,)(?:host|max)(?:,|$)|host-phys-bits|host-cache-info|migratable=off")
_SMP_KEYS = ("cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus")
MAX_VCPUS = 288
MEMORY_MIB = (16, 1 << 20)                     # 16 MiB .. 1 TiB
DISK_BYTES = (512, 1 << 40)                    # 512 bytes .. 1 TiB (blank sparse files)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")          # goes into cache paths
DRIVER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CPU_FLAG = r"(?:[+-][A-Za-z0-9._-]+|[A-Za-z0-9._-]+=(?:on|off|\d+))"
CPU = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}(?:,{_CPU_FLAG}){{0,32}}")
DEVICE_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
BUS = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}(?:\.\d{1,3})?")
ADDR = re.compile(r"(?:0x)?[0-9a-fA-F]{1,2}(?:\.(?:0x)?[0-7])?")
MAC = re.compile(r"[0-9a-f][02468ace](?::[0-9a-f]{2}){5}")     # lower case, unicast
PROP_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# a versioned machine type: what a profile pins (an alias such as q35 names another type on each build)
VERSIONED_MACHINE = re.compile(r"pc-(?:i440fx|q35)-\d{1,2}\.\d{1,2}")
# SMBIOS strings the profile sets (-smbios type=N,field=value): printable ASCII, bounded
SMBIOS_FIELDS = {0: ("vendor", "version", "date", "release"),
                 1: ("manufacturer", "product", "version", "serial", "sku", "family"),
                 2: ("manufacturer", "product", "version", "serial", "asset", "location"),
                 3: ("manufacturer", "version", "serial", "asset", "sku")}
SMBIOS_VALUE = re.compile(r"[ -~]{0,64}")
RESERVED_ID_PREFIX = "qabi"                     # ids the launcher gives its own objects


def _str(path: Path, where: str, value: object, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"{where} must be a string, not {type(value).__name__}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _fail(path, f"{where} {value[:80]!r} is not valid (expected {pattern.pattern})")
    return value


def _int(path: Path, where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"{where} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise _fail(path, f"{where} = {value} is out of range ({low}..{high})")
    return value


def _device(path: Path, index: int, raw: object) -> Device:
    where = f"device {index}"
    if not isinstance(raw, dict):
        raise _fail(path, f"{where} must be a table ([[device]])")
    unknown = set(raw) - _DEVICE_KEYS
    if unknown:
        raise _fail(path, f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(_DEVICE_KEYS))})")
    if "driver" not in raw:
        raise _fail(path, f"{where}: 'driver' (a string) is required")
    driver = _str(path, f"{where}: driver", raw["driver"], DRIVER)
    rule = _allowed(path, where, check_driver, driver)
    families_raw = _families(path, f"{where}: ", raw.get("families", list(FAMILIES)))
    dev_id = _str(path, f"{where}: id", raw["id"], DEVICE_ID) if "id" in raw else None
    if dev_id and dev_id.lower().startswith(RESERVED_ID_PREFIX):
        raise _fail(path, f"{where}: id {dev_id!r}: ids starting with '{RESERVED_ID_PREFIX}' are qabi's own")
    props = raw.get("props", {})
    if not isinstance(props, dict):
        raise _fail(path, f"{where}: 'props' must be a table")
    disk = _str(path, f"{where}: disk", raw["disk"]) if "disk" in raw else None
    if disk is not None:
        size = disk_size(disk)
        if not DISK_BYTES[0] <= size <= DISK_BYTES[1] or size % 512:
            raise _fail(path, f"{where}: disk size {disk!r} must be a multiple of 512 bytes, 512 bytes to 1T")
    flags = {}
    for key in ("cdrom", "audio"):
        value = raw.get(key, False)
        if not isinstance(value, bool):
            raise _fail(path, f"{where}: {key} must be true or false")
        flags[key] = value
    for key in ("mac", "disk", "cdrom", "audio"):
        if raw.get(key, False) is not False:
            _allowed(path, where, check_key, rule, key)
    return Device(
        driver=driver, id=dev_id,
        addr=_str(path, f"{where}: addr", raw["addr"], ADDR) if "addr" in raw else None,
        bus=_str(path, f"{where}: bus", raw["bus"], BUS) if "bus" in raw else None,
        families=tuple(families_raw),
        props=tuple(_prop(path, where, rule, k, v) for k, v in props.items()),
        mac=_str(path, f"{where}: mac", raw["mac"], MAC) if "mac" in raw else None,
        disk=disk, cdrom=flags["cdrom"], audio=flags["audio"])


def _prop(path: Path, where: str, rule: DriverRule, key: str, value: object) -> tuple[str, str]:
    """One `props` entry as QEMU option text: only a property on the driver's allow-list
    (harness/guest/drivers.py), with a value of its type; anything else is refused, naming why."""
    _str(path, f"{where}: property name", key, PROP_KEY)
    return key, _allowed(path, where, check_property, rule, key, value)


def _allowed(path: Path, where: str, check: Callable[..., _T], *args: Any) -> _T:
    """`check(*args)` of harness/guest/drivers.py, its refusal naming the profile file and device."""
    try:
        return check(*args)
    except NotAllowed as exc:
        raise _fail(path, f"{where}: {exc}") from None


def _machine(path: Path, raw: object) -> str:
    machine = _str(path, "machine", raw)
    if not VERSIONED_MACHINE.fullmatch(machine):
        raise _fail(path, f"machine {machine[:80]!r} is not a versioned i440fx or q35 machine type (such as "
                          "pc-q35-7.2): an alias names another machine type on each build")
    return machine


def _smbios(path: Path, raw: object) -> tuple[tuple[int, tuple[tuple[str, str], ...]], ...]:
    """`[smbios]` with `type0` .. `type3` tables of strings (the system UUID is `uuid`)."""
    if not isinstance(raw, dict):
        raise _fail(path, "smbios must be a table ([smbios] with type0 .. type3)")
    known = {f"type{t}": t for t in SMBIOS_FIELDS}
    out = []
    for key, table in raw.items():
        if key not in known:
            raise _fail(path, f"smbios: unknown key {key[:40]!r} (known: {', '.join(known)})")
        kind = known[key]
        if not isinstance(table, dict):
            raise _fail(path, f"smbios.{key} must be a table of strings")
        unknown = sorted(set(table) - set(SMBIOS_FIELDS[kind]))
        if unknown:
            raise _fail(path, f"smbios.{key}: unknown field(s) {', '.join(u[:40] for u in unknown)} "
                              f"(known: {', '.join(SMBIOS_FIELDS[kind])})")
        out.append((kind, tuple((k, _str(path, f"smbios.{key}.{k}", v, SMBIOS_VALUE)) for k, v in table.items())))
    return tuple(sorted(out))


def _pm(path: Path, raw: object) -> tuple[tuple[str, bool], ...]:
    """`pm = { s3 = false, s4 = false }`: whether the DSDT offers S3 (suspend to RAM) and S4."""
    if not isinstance(raw, dict) or not set(raw) <= {"s3", "s4"}:
        raise _fail(path, "pm must be a table such as { s3 = false, s4 = false }")
    return tuple((k, _bool(path, f"pm.{k}", v)) for k, v in sorted(raw.items()))


def _name(path: Path, data: dict[str, Any]) -> str:
    if "name" in data:
        return _str(path, "name", data["name"], NAME)
    if not NAME.fullmatch(path.stem):
        raise _fail(path, f"the file name {path.stem[:80]!r} is not a valid profile name (expected {NAME.pattern}; "
                          "or set name = ...)")
    return path.stem


def _smp(path: Path, raw: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, dict):
        raise _fail(path, f"smp must be a table such as {{ cpus = {raw if isinstance(raw, int) else 1} }}, "
                          f"not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_SMP_KEYS))
    if unknown:
        raise _fail(path, f"smp: unknown key(s) {', '.join(unknown)} (known: {', '.join(_SMP_KEYS)})")
    if "cpus" not in raw:
        raise _fail(path, "smp: 'cpus' is required")
    return tuple((k, _int(path, f"smp.{k}", v, 1, MAX_VCPUS)) for k, v in raw.items())


def _hyperv(path: Path, raw: object) -> tuple[tuple[str, str | None], ...]:
    if not isinstance(raw, list) or len(raw) > len(HYPERV):
        raise _fail(path, f"hyperv must be a list of enlightenments such as [\"relaxed\", \"spinlocks=0x1fff\"] "
                          f"(at most {len(HYPERV)})")
    out: list[tuple[str, str | None]] = []
    for item in raw:
        text = _str(path, "hyperv item", item)
        match = _HV_ITEM.fullmatch(text)
        if not match or match.group(1) not in HYPERV:
            raise _fail(path, f"hyperv: {text[:80]!r} is not a known enlightenment (known: {', '.join(HYPERV)})")
        name, value = match.group(1), match.group(2)
        bounds = HYPERV[name]
        if (bounds is None) != (value is None):
            raise _fail(path, f"hyperv: {name} {'takes no value' if bounds is None else 'needs a value'}")
        if bounds is not None and value is not None and not bounds[0] <= int(value, 0) <= bounds[1]:
            raise _fail(path, f"hyperv: {name}={value} is out of range ({bounds[0]:#x}..{bounds[1]:#x})")
        if name in (n for n, _ in out):
            raise _fail(path, f"hyperv: {name} is given twice")
        out.append((name, value))
    return tuple(out)


def _choice(path: Path, key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(path, f"{key} = {str(value)[:40]!r} is not one of {', '.join(choices)}")
    return str(value)


def _bool(path: Path, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"{key} must be true or false")
    return value


def _families(path: Path, where: str, raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not set(raw) <= set(FAMILIES):
        raise _fail(path, f"{where}families must be a non-empty list among {', '.join(FAMILIES)}")
    return tuple(f for f in FAMILIES if f in raw)


def _platform(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The platform keys: machine families, firmware, SMM, TPM, Hyper-V, HPET (checked together:
    Secure Boot needs SMM, and OVMF's SMM and Secure Boot need q35)."""
    out: dict[str, Any] = {"families": _families(path, "", data.get("families", list(FAMILIES)))}
    out["firmware"] = _choice(path, "firmware", data.get("firmware", "seabios"), FIRMWARES)
    out["smm"] = _bool(path, "smm", data["smm"]) if "smm" in data else None
    out["tpm"] = _choice(path, "tpm", data["tpm"], TPMS) if "tpm" in data else None
    out["hyperv"] = _hyperv(path, data.get("hyperv", []))
    out["hpet"] = _bool(path, "hpet", data["hpet"]) if "hpet" in data else None
    if out["firmware"] == "ovmf-secboot":
        if out["smm"] is not True:
            raise _fail(path, "firmware = \"ovmf-secboot\" needs smm = true (the Secure Boot variables live in SMM)")
        if out["families"] != ("q35",):
            raise _fail(path, "firmware = \"ovmf-secboot\" needs families = [\"q35\"] (OVMF's SMM build runs on q35 only)")
    return out


def load_profile(name_or_path: str) -> GuestProfile:
    """Load `guests/NAME.toml` (or a path to a profile file), checked against a strict schema."""
    path = Path(name_or_path)
    if not name_or_path.endswith(".toml"):
        if not NAME.fullmatch(name_or_path):
            raise QabiError(f"bad guest profile name {name_or_path[:80]!r} (known: {', '.join(profile_names())})")
        path = GUESTS_DIR / f"{name_or_path}.toml"
    if not (path.exists() or path.is_symlink()):   # there but not a regular file: read_toml says so
        raise QabiError(f"unknown guest profile '{name_or_path[:200]}' (known: {', '.join(profile_names())})")
    return parse_profile(read_text(path, "a guest profile", TOML_LIMIT), path)


def parse_profile(text: str, path: Path) -> GuestProfile:
    """A profile's TOML `text` (from `path`, which names it in messages), checked against the schema."""
    data = parse_toml(text, str(path), "a guest profile")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("cpu", "memory", "uuid"):
        if key not in data:
            raise _fail(path, f"missing key '{key}'")
    devices_raw = data.get("device", [])
    if not isinstance(devices_raw, list):
        raise _fail(path, "device must be an array of tables ([[device]])")
    devices = tuple(_device(path, i, d) for i, d in enumerate(devices_raw))
    for family in FAMILIES:
        ids = [d.id for d in devices if d.id and family in d.families]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup:
            raise _fail(path, f"device id {dup!r} is used twice on {family}")
    profile = GuestProfile(
        name=_name(path, data), description=_str(path, "description", data.get("description", "")),
        cpu=_str(path, "cpu", data["cpu"], CPU),
        memory_mib=_int(path, "memory (MiB)", data["memory"], *MEMORY_MIB),
        smp=_smp(path, data.get("smp", {"cpus": 1})), uuid=_str(path, "uuid", data["uuid"]),
        devices=devices, source=str(path), **_platform(path, data),
        machine=_machine(path, data["machine"]) if "machine" in data else None,
        smbios=_smbios(path, data["smbios"]) if "smbios" in data else (),
        pm=_pm(path, data["pm"]) if "pm" in data else ())
    if profile.machine is not None and not profile.applies_to(profile.machine):
        raise _fail(path, f"machine = {profile.machine} is not of the profile's families "
                          f"({', '.join(profile.families)})")
    if _HOST_CPU.search(profile.cpu):
        raise _fail(path, f"cpu {profile.cpu[:80]!r}: host CPU passthrough (host, max, host-phys-bits, host-cache-info) "
                          "is not allowed: name a CPU model (and a fixed phys-bits)")
    if not re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", profile.uuid):
        raise _fail(path, f"uuid '{profile.uuid[:80]}' is not a lower-case UUID")
    return profile


def profile_names() -> list[str]:
    return sorted(p.stem for p in GUESTS_DIR.glob("*.toml"))


def close_devices(driver: str, devices: Iterable[str]) -> str:
    """` (close: e1000, e1000e)` when `devices` has names close to `driver`, else ""."""
    close = difflib.get_close_matches(driver, sorted(set(devices)), n=4, cutoff=0.75)
    return f" (close: {', '.join(close)})" if close else ""


def check_supported(profile: GuestProfile, machine: str, devices: set[str] | frozenset[str]) -> None:
    """Raise UnsupportedError naming the first device of the profile that the build lacks (with the
    build's close device names: a typo shows its fix)."""
    for driver in profile.drivers_for(machine):
        if driver not in devices:
            raise UnsupportedError(f"unsupported on this build: {driver}{close_devices(driver, devices)}")


def disk_size(text: str) -> int:
    match = re.fullmatch(r"(\d{1,16})([KMGT]?)", text.strip().upper())
    if not match:
        raise QabiError(f"bad disk size '{text}' (use e.g. 1M)")
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2)]
