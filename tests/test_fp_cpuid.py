"""CPUID decoder: real facts on every capture (vendor, family/model/stepping per the SDM, one record
per vCPU, APIC IDs as the only per-vCPU difference, the hypervisor leaf), decoding of known
register values, and malformed records."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from harness.errors import DecodeError
from harness.fingerprint import cpuid

CAPTURES = Path(__file__).parent / "data" / "captures"
CAPTURE_DIRS = [m.parent for m in sorted(CAPTURES.glob("*/manifest.json"))
                if json.loads(m.read_text()).get("complete") is True]

# What QEMU defines for the CPU models the guest profiles use (target/i386/cpu.c builtin_x86_defs):
# qemu64 is vendor AMD, family 6 model 6 stepping 3; Nehalem is family 6 model 26 stepping 3.
MODELS: dict[str, dict[str, Any]] = {
    "qemu64": {"vendor": "AuthenticAMD", "eax": 0x00000663, "family": 6, "model": 6, "stepping": 3,
               "brand": "QEMU Virtual CPU version 2.5+"},
    "Nehalem": {"vendor": "GenuineIntel", "eax": 0x000106A3, "family": 6, "model": 26, "stepping": 3,
                "brand": "Intel Core i7 9xx (Nehalem Class Core i7)"},
}
SIGNATURES = {"tcg": "TCGTCGTCGTCG", "kvm": "KVMKVMKVM"}


def manifest(capture: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((capture / "manifest.json").read_text())
    return data


def by_vcpu(fp: dict[str, Any]) -> dict[int, dict[tuple[int, int], dict[str, Any]]]:
    out: dict[int, dict[tuple[int, int], dict[str, Any]]] = {}
    for entry in fp.values():
        out.setdefault(entry["vcpu"], {})[(entry["leaf"], entry["subleaf"])] = entry
    return out


def test_there_are_captures() -> None:
    assert len(CAPTURE_DIRS) >= 4


@pytest.mark.parametrize("capture", CAPTURE_DIRS, ids=lambda p: p.name)
def test_real_facts(capture: Path) -> None:
    m = manifest(capture)
    fp = cpuid.decode(capture / "raw")
    vcpus = by_vcpu(fp)
    # one set of leaves per vCPU of the profile, the same leaves on each
    assert sorted(vcpus) == list(range(m["profile"]["smp"]["cpus"]))
    assert len({frozenset(leaves) for leaves in vcpus.values()}) == 1
    model = MODELS[m["profile"]["cpu"]]
    for leaves in vcpus.values():
        leaf0, leaf1 = leaves[(0, 0)], leaves[(1, 0)]
        assert leaf0["fields"]["vendor"] == model["vendor"]
        assert int(leaf1["eax"], 16) == model["eax"]
        f = leaf1["fields"]
        assert (f["family"], f["model"], f["stepping"]) == (model["family"], model["model"], model["stepping"])
        assert leaves[(0x80000002, 0)]["fields"]["brand_string"] == model["brand"]
        # the hypervisor bit, and its leaf with the accelerator's signature
        assert leaf1["features"]["ecx"]["31"] == "hypervisor"
        hv = leaves[(0x40000000, 0)]["fields"]
        assert hv["signature"] == SIGNATURES[m["accel"]]
        assert hv["hypervisor"] == m["accel"].upper()
        # what every x86-64 guest needs is named
        assert {"fpu", "tsc", "cx8", "apic", "cmov", "clflush", "sse", "sse2"} <= set(leaf1["features"]["edx"].values())
        assert {"lm", "nx", "syscall"} <= set(leaves[(0x80000001, 0)]["features"]["edx"].values())
        assert f["clflush_line_size"] == 64
        ext8 = leaves[(0x80000008, 0)]["fields"]
        assert (ext8["physical_address_bits"], ext8["linear_address_bits"]) == (40, 48)
        # the APIC ID of leaf 1 is the x2APIC ID of every topology level
        for (leaf, _), entry in leaves.items():
            if leaf == 0xB:
                assert entry["fields"]["x2apic_id"] == f["apic_id"]
        # logical processor count and HTT follow the topology
        cpus = m["profile"]["smp"]["cpus"]
        assert ("ht" in leaf1["features"]["edx"].values()) == (cpus > 1)
        assert f["max_logical_processors"] == (cpus if cpus > 1 else 0)


@pytest.mark.parametrize("capture", CAPTURE_DIRS, ids=lambda p: p.name)
def test_apic_ids_are_the_only_difference_between_vcpus(capture: Path) -> None:
    vcpus = by_vcpu(cpuid.decode(capture / "raw"))
    apic_ids = [leaves[(1, 0)]["fields"]["apic_id"] for leaves in vcpus.values()]
    assert len(set(apic_ids)) == len(apic_ids)
    first = vcpus[0]
    for vcpu, leaves in vcpus.items():
        one = leaves[(1, 0)]
        assert (one["eax"], one["ecx"], one["edx"]) == (first[(1, 0)]["eax"], first[(1, 0)]["ecx"],
                                                        first[(1, 0)]["edx"])
        assert int(one["ebx"], 16) & 0x00FFFFFF == int(first[(1, 0)]["ebx"], 16) & 0x00FFFFFF
        # everywhere: registers differ only where the entry names a per-vCPU field
        for key, entry in leaves.items():
            base = first[key]
            allowed = {name.split(".")[0] for name in entry["per_vcpu"]}
            for reg in cpuid.REGISTERS:
                if entry[reg] != base[reg]:
                    assert reg in allowed, f"vCPU {vcpu} leaf {key[0]:#x}/{key[1]:#x} {reg} differs"
            fields = {name.split(".")[1] for name in entry["per_vcpu"]}
            assert fields <= set(entry["fields"])
            for name, value in entry["fields"].items():
                if name not in fields:
                    assert value == base["fields"][name], (vcpu, key, name)


@pytest.mark.parametrize("capture", CAPTURE_DIRS, ids=lambda p: p.name)
def test_entries_follow_the_schema(capture: Path) -> None:
    fp = cpuid.decode(capture / "raw")
    for key, entry in fp.items():
        vcpu, leaf, subleaf = key.split("/")
        assert len(leaf) == 10 and leaf.startswith("0x") and subleaf.startswith("0x")
        assert (int(vcpu), int(leaf, 16), int(subleaf, 16)) == (entry["vcpu"], entry["leaf"], entry["subleaf"])
        assert entry["label"] == f"leaf {entry['leaf']:#x} subleaf {entry['subleaf']:#x}"
        for reg in cpuid.REGISTERS:
            assert len(entry[reg]) == 10 and entry[reg].startswith("0x")
        for reg, bits in entry["features"].items():
            for bit, name in bits.items():
                assert int(entry[reg], 16) >> int(bit) & 1, (key, reg, bit, name)
        json.dumps(entry)


def test_leaves_decode_as_the_sdm_says() -> None:
    capture = next(c for c in CAPTURE_DIRS if manifest(c)["profile"]["cpu"] == "Nehalem")
    leaves = by_vcpu(cpuid.decode(capture / "raw"))[0]
    # QEMU's legacy cache model: leaf 2 descriptors and leaf 4 say the same thing
    names = [d["name"] for d in leaves[(2, 0)]["fields"]["descriptors"]]
    assert names == ["L3: 16 MB, 16-way, 64 byte lines", "L2: 2 MB, 8-way, 64 byte lines",
                     "L1i: 32 KB, 8-way, 64 byte lines", "L1d: 32 KB, 8-way, 64 byte lines"]
    caches = [leaves[(4, s)]["fields"] for s in range(4)]
    assert [(c["level"], c["cache_type"], c["size"], c["ways"], c["line_size"]) for c in caches] == [
        (1, "data", 32 << 10, 8, 64), (1, "instruction", 32 << 10, 8, 64), (2, "unified", 4 << 20, 16, 64),
        (3, "unified", 16 << 20, 16, 64)]
    assert leaves[(0xB, 0)]["fields"]["level_type"] == "SMT"
    assert leaves[(0xB, 1)]["fields"]["level_type"] == "core"
    ext6 = leaves[(0x80000006, 0)]["fields"]
    assert (ext6["l2_size"], ext6["l2_ways"], ext6["l2_line_size"]) == (512 << 10, 16, 64)
    ext5 = leaves[(0x80000005, 0)]["fields"]
    assert (ext5["l1d_size"], ext5["l1d_ways"], ext5["l1i_size"]) == (64 << 10, 2, 64 << 10)


@pytest.mark.parametrize("eax, family, model, stepping", [
    (0x000106A3, 6, 26, 3),      # Nehalem: extended model prefixes family 6
    (0x00000663, 6, 6, 3),       # qemu64
    (0x000806EC, 6, 142, 12),    # Kaby Lake
    (0x00A20F12, 25, 33, 2),     # Zen 3: extended family adds to 0xF
    (0x00000F41, 15, 4, 1),      # Pentium 4
    (0x00010521, 5, 2, 1),       # family 5: the extended model is ignored
    (0x00600F12, 21, 1, 2),      # Bulldozer: family 0xF + 6
])
def test_signature(eax: int, family: int, model: int, stepping: int) -> None:
    sig = cpuid.signature(eax)
    assert (sig["family"], sig["model"], sig["stepping"]) == (family, model, stepping)


# -- synthetic records ---------------------------------------------------------------------------------


def record(*entries: tuple[int, int, int, int, int, int]) -> bytes:
    return b"".join(struct.pack("<6I", *e) for e in entries)


def minimal(extra: tuple[tuple[int, int, int, int, int, int], ...] = (), max_leaf: int = 1,
            ecx1: int = 0) -> list[tuple[int, int, int, int, int, int]]:
    entries = [(0, 0, max_leaf, 0x756E6547, 0x6C65746E, 0x49656E69), (1, 0, 0x106A3, 0, ecx1, 0),
               *[(leaf, 0, 0, 0, 0, 0) for leaf in range(2, max_leaf + 1)],
               (0x80000000, 0, 0x80000000, 0, 0, 0), *extra]
    return sorted(entries)


def write(tmp_path: Path, data: bytes, vcpu: str = "0") -> Path:
    raw = tmp_path / "raw"
    (raw / "dev" / "cpu" / vcpu).mkdir(parents=True, exist_ok=True)
    (raw / "dev" / "cpu" / vcpu / "cpuid").write_bytes(data)
    return raw


def test_kvm_and_xsave_leaves(tmp_path: Path) -> None:
    entries = minimal(max_leaf=0xD, ecx1=1 << 31, extra=(
        (0xD, 1, 0x0F, 0x240, 0x100, 0), (0xD, 2, 0x100, 0x240, 0, 0),
        (0x40000000, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D),
        (0x40000001, 0, 0x01007AFB, 0, 0, 0)))
    entries = [e if e[:2] != (0xD, 0) else (0xD, 0, 0x7, 0x340, 0x340, 0) for e in entries]
    entries = [e if e[:2] != (7, 0) else (7, 0, 0, 1 << 5 | 1 << 0, 1 << 2, 1 << 4) for e in entries]
    fp = cpuid.decode(write(tmp_path, record(*entries)))
    assert fp["0/0x40000000/0x0"]["fields"]["signature"] == "KVMKVMKVM"
    kvm = fp["0/0x40000001/0x0"]["features"]["eax"]
    assert {"kvmclock", "kvmclock2", "async_pf", "steal_time", "pv_eoi", "pv_unhalt", "kvmclock_stable_bit"} <= set(
        kvm.values())
    assert fp["0/0x0000000d/0x0"]["features"]["eax"] == {"0": "x87", "1": "sse", "2": "avx"}
    assert fp["0/0x0000000d/0x0"]["fields"]["xcr0_supported"] == "0x0000000000000007"
    assert fp["0/0x0000000d/0x1"]["features"]["eax"] == {"0": "xsaveopt", "1": "xsavec", "2": "xgetbv1",
                                                          "3": "xsaves"}
    assert fp["0/0x0000000d/0x1"]["features"]["ecx"] == {"8": "pt"}
    assert fp["0/0x0000000d/0x2"]["fields"] == {"component": "avx", "size": 256, "offset": 576,
                                                 "supervisor": False, "aligned": False, "xfd": False}
    assert fp["0/0x00000007/0x0"]["features"] == {"ebx": {"0": "fsgsbase", "5": "avx2"}, "ecx": {"2": "umip"},
                                                  "edx": {"4": "fsrm"}}


def test_pdcm_is_named(tmp_path: Path) -> None:
    fp = cpuid.decode(write(tmp_path, record(*minimal(ecx1=1 << 15))))
    assert fp["0/0x00000001/0x0"]["features"]["ecx"] == {"15": "pdcm"}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:-1], "not a whole number of 24-byte entries"),
    (lambda d: b"", "empty CPUID record"),
    (lambda d: d[24:], "no leaf 0"),
    (lambda d: d[:24] + d[48:], "leaf 0x1 missing"),
    (lambda d: d[24:48] + d[:24] + d[48:], "out of order"),
    (lambda d: d + d[-24:], "out of order"),
    (lambda d: d + record((0xC0000000, 0, 0, 0, 0, 0)), "outside the ranges"),
    (lambda d: d + record((0x80000000, 64, 0, 0, 0, 0)), "at most 0x3f"),
    (lambda d: d + record((0x80000001, 0, 0, 0, 0, 0)), "beyond the maximum leaf"),
    (lambda d: record(*sorted(minimal() + [(0x40000000, 0, 0x40000000, 0, 0, 0)])),
     "hypervisor leaf without a hypervisor"),
    (lambda d: record(*minimal(ecx1=1 << 31)), "leaf 0x40000000 is missing"),
    (lambda d: d[:-24], "no leaf 0x80000000"),
    (lambda d: d * 1400, "limit"),
])
def test_malformed_records(mutate: Any, message: str, tmp_path: Path) -> None:
    data = mutate(record(*minimal()))
    with pytest.raises(DecodeError, match=message) as info:
        cpuid.decode(write(tmp_path, data))
    assert info.value.file.startswith("dev/cpu")


def test_bad_vcpu_directories(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="no CPUID records"):
        cpuid.decode(tmp_path)
    raw = write(tmp_path, record(*minimal()), vcpu="cpu0")
    with pytest.raises(DecodeError, match="vCPU numbers only"):
        cpuid.decode(raw)


def test_decode_time() -> None:
    import time

    raw = CAPTURE_DIRS[0] / "raw"
    start = time.perf_counter()
    for _ in range(20):
        cpuid.decode(raw)
    assert (time.perf_counter() - start) / 20 < 0.05
