"""CPUID: every leaf and subleaf each vCPU returned (`/dev/cpu/N/cpuid` records written by the
probe: N x 24 bytes of leaf, subleaf, eax, ebx, ecx, edx, u32 little endian, in leaf then subleaf
order), decoded per the Intel SDM (vol. 2A, CPUID) and AMD APM (vol. 3, appendix E).

Output (SCHEMA.md, "cpuid entry"), keyed `VCPU/0xLEAF/0xSUBLEAF` (`0/0x00000001/0x0`):

- `eax` .. `edx` as 8-digit hex;
- `features`: the SET bits this decoder names, per register (`{"ecx": {"15": "pdcm"}}`). Names are
  the ones Linux shows in /proc/cpuinfo; bits Linux keeps out of /proc/cpuinfo carry Linux's
  lower-cased X86_FEATURE_ macro name (`osxsave`, `spec_ctrl`) or, where Linux has no name at
  all, QEMU's property name (`invtsc`, `prefetchwt1`) or the SDM's;
- `fields`: decoded values (vendor, family/model/stepping with the extended fields applied, brand
  string, cache and TLB descriptors, topology levels, XSAVE sizes and components, address sizes…);
- `per_vcpu`: the `register.field` names of fields that differ between vCPUs by design (APIC and
  x2APIC IDs, AMD core and node IDs): topology, not features. Each named field is in `fields`.

A record size that is not a multiple of 24, a vCPU without leaf 0, leaves out of order or out of
the ranges the probe reads, a leaf range the maximum leaf promises but the record lacks, and absurd
counts raise DecodeError: an incomplete CPUID record is never decoded as if it were complete.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.errors import DecodeError
from harness.fingerprint.binary import hx, read_raw

CPU_DIR = "dev/cpu"
ENTRY = 24
MAX_ENTRIES = 4096           # per vCPU: the probe reads at most 3 ranges of 256 leaves x 64 subleaves
MAX_VCPUS = 1024
MAX_SUBLEAF = 63             # the probe stops enumerating subleaves there
RANGES = ((0x0, 0xFF), (0x40000000, 0x400000FF), (0x80000000, 0x800000FF))
REGISTERS = ("eax", "ebx", "ecx", "edx")

Regs = tuple[int, int, int, int]


def _bits(value: int, low: int, high: int) -> int:
    return value >> low & ((1 << (high - low + 1)) - 1)


def _text(*words: int) -> str:
    raw = b"".join(struct.pack("<I", w) for w in words)
    return raw.split(b"\0", 1)[0].decode("ascii", errors="backslashreplace")


# -- feature bit names ---------------------------------------------------------------------------------

def _names(spec: str) -> dict[int, str]:
    """'0 fpu 1 vme ...' -> {0: 'fpu', 1: 'vme', ...}"""
    words = spec.split()
    return {int(words[i]): words[i + 1] for i in range(0, len(words), 2)}


_LEAF1_ECX = _names(
    "0 pni 1 pclmulqdq 2 dtes64 3 monitor 4 ds_cpl 5 vmx 6 smx 7 est 8 tm2 9 ssse3 10 cid 11 sdbg 12 fma "
    "13 cx16 14 xtpr 15 pdcm 17 pcid 18 dca 19 sse4_1 20 sse4_2 21 x2apic 22 movbe 23 popcnt "
    "24 tsc_deadline_timer 25 aes 26 xsave 27 osxsave 28 avx 29 f16c 30 rdrand 31 hypervisor")
_LEAF1_EDX = _names(
    "0 fpu 1 vme 2 de 3 pse 4 tsc 5 msr 6 pae 7 mce 8 cx8 9 apic 11 sep 12 mtrr 13 pge 14 mca 15 cmov "
    "16 pat 17 pse36 18 pn 19 clflush 21 dts 22 acpi 23 mmx 24 fxsr 25 sse 26 sse2 27 ss 28 ht 29 tm "
    "30 ia64 31 pbe")
_XSAVE_COMPONENTS = _names(
    "0 x87 1 sse 2 avx 3 bndregs 4 bndcsr 5 opmask 6 zmm_hi256 7 hi16_zmm 8 pt 9 pkru 10 pasid 11 cet_u "
    "12 cet_s 13 hdc 14 uintr 15 lbr 16 hwp 17 xtilecfg 18 xtiledata 19 apx")

FEATURES: dict[tuple[int, int | None], dict[str, dict[int, str]]] = {
    # (leaf, subleaf or None for "any") -> register -> bit -> name
    (0x1, None): {"ecx": _LEAF1_ECX, "edx": _LEAF1_EDX},
    (0x5, None): {"ecx": _names("0 mwait_ext 1 mwait_irq_break")},
    (0x6, None): {
        "eax": _names("0 dtherm 1 ida 2 arat 4 pln 5 ecmd 6 pts 7 hwp 8 hwp_notify 9 hwp_act_window "
                      "10 hwp_epp 11 hwp_pkg_req 13 hdc 14 turbo_boost_max_3 15 hwp_highest_perf_change "
                      "16 hwp_peci_override 17 hwp_flexible 18 hwp_fast 19 hfi 20 hwp_ignore_idle 23 itd"),
        "ecx": _names("0 aperfmperf 3 epb"),
    },
    (0x7, 0): {
        "ebx": _names("0 fsgsbase 1 tsc_adjust 2 sgx 3 bmi1 4 hle 5 avx2 6 fdp_excptn_only 7 smep 8 bmi2 "
                      "9 erms 10 invpcid 11 rtm 12 cqm 13 zero_fcs_fds 14 mpx 15 rdt_a 16 avx512f "
                      "17 avx512dq 18 rdseed 19 adx 20 smap 21 avx512ifma 22 pcommit 23 clflushopt 24 clwb "
                      "25 intel_pt 26 avx512pf 27 avx512er 28 avx512cd 29 sha_ni 30 avx512bw 31 avx512vl"),
        "ecx": _names("0 prefetchwt1 1 avx512vbmi 2 umip 3 pku 4 ospke 5 waitpkg 6 avx512_vbmi2 7 shstk "
                      "8 gfni 9 vaes 10 vpclmulqdq 11 avx512_vnni 12 avx512_bitalg 13 tme "
                      "14 avx512_vpopcntdq 16 la57 22 rdpid 23 kl 24 bus_lock_detect 25 cldemote "
                      "27 movdiri 28 movdir64b 29 enqcmd 30 sgx_lc 31 pks"),
        "edx": _names("2 avx512_4vnniw 3 avx512_4fmaps 4 fsrm 5 uintr 8 avx512_vp2intersect 9 srbds_ctrl "
                      "10 md_clear 11 rtm_always_abort 13 tsx_force_abort 14 serialize 15 hybrid_cpu "
                      "16 tsxldtrk 18 pconfig 19 arch_lbr 20 ibt 22 amx_bf16 23 avx512_fp16 24 amx_tile "
                      "25 amx_int8 26 spec_ctrl 27 intel_stibp 28 flush_l1d 29 arch_capabilities "
                      "30 core_capabilities 31 spec_ctrl_ssbd"),
    },
    (0x7, 1): {
        "eax": _names("0 sha512 1 sm3 2 sm4 4 avx_vnni 5 avx512_bf16 7 cmpccxadd 8 arch_perfmon_ext "
                      "10 fzrm 11 fsrs 12 fsrc 17 fred 18 lkgs 19 wrmsrns 21 amx_fp16 22 hreset 23 avx_ifma "
                      "26 lam"),
        "ebx": _names("0 intel_ppin"),
        "edx": _names("4 avx_vnni_int8 5 avx_ne_convert 8 amx_complex 10 avx_vnni_int16 14 prefetchiti "
                      "18 cet_sss 19 avx10"),
    },
    (0x7, 2): {"edx": _names("0 psfd 1 ipred_ctrl 2 rrsba_ctrl 3 ddpd_u 4 bhi_ctrl 5 mcdt_no")},
    (0xD, 0): {"eax": _XSAVE_COMPONENTS},
    (0xD, 1): {"eax": _names("0 xsaveopt 1 xsavec 2 xgetbv1 3 xsaves 4 xfd"), "ecx": _XSAVE_COMPONENTS},
    (0x80000001, None): {
        "ecx": _names("0 lahf_lm 1 cmp_legacy 2 svm 3 extapic 4 cr8_legacy 5 abm 6 sse4a 7 misalignsse "
                      "8 3dnowprefetch 9 osvw 10 ibs 11 xop 12 skinit 13 wdt 15 lwp 16 fma4 17 tce "
                      "19 nodeid_msr 21 tbm 22 topoext 23 perfctr_core 24 perfctr_nb 26 bpext 27 ptsc "
                      "28 perfctr_llc 29 mwaitx"),
        # AMD repeats most leaf 1 EDX bits here; Linux names the AMD-only ones.
        "edx": _names("0 fpu 1 vme 2 de 3 pse 4 tsc 5 msr 6 pae 7 mce 8 cx8 9 apic 11 syscall 12 mtrr "
                      "13 pge 14 mca 15 cmov 16 pat 17 pse36 19 mp 20 nx 22 mmxext 23 mmx 24 fxsr "
                      "25 fxsr_opt 26 pdpe1gb 27 rdtscp 29 lm 30 3dnowext 31 3dnow"),
    },
    (0x80000007, None): {
        "ebx": _names("0 overflow_recov 1 succor 3 smca"),
        # Linux's "power management" line; bit 8 (invariant TSC) becomes constant_tsc + nonstop_tsc there.
        "edx": _names("0 ts 1 fid 2 vid 3 ttp 4 tm 5 stc 6 100mhzsteps 7 hwpstate 8 invtsc 9 cpb "
                      "10 eff_freq_ro 11 proc_feedback 12 acc_power"),
    },
    (0x80000008, None): {
        "ebx": _names("0 clzero 1 irperf 2 xsaveerptr 4 rdpru 8 mcommit 9 wbnoinvd 12 amd_ibpb 14 amd_ibrs "
                      "15 amd_stibp 17 amd_stibp_always_on 23 amd_ppin 24 amd_ssbd 25 virt_ssbd "
                      "26 amd_ssb_no 27 cppc 28 amd_psfd 29 btc_no 31 brs"),
    },
    (0x8000000A, None): {
        "edx": _names("0 npt 1 lbrv 2 svm_lock 3 nrip_save 4 tsc_scale 5 vmcb_clean 6 flushbyasid "
                      "7 decodeassists 10 pausefilter 12 pfthreshold 13 avic 15 v_vmsave_vmload 16 vgif "
                      "18 x2avic 20 v_spec_ctrl 25 vnmi"),
    },
    (0x8000001F, None): {
        "eax": _names("0 sme 1 sev 2 vm_page_flush 3 sev_es 4 sev_snp 5 vmpl 9 v_tsc_aux 10 sme_coherent "
                      "14 debug_swap 28 svsm"),
    },
    (0x80000021, None): {
        "eax": _names("0 no_nested_data_bp 1 wrmsr_xx_base_ns 2 lfence_rdtsc 6 null_sel_clr_base 8 autoibrs "
                      "9 no_smm_ctl_msr 27 sbpb 28 ibpb_brtype 29 srso_no"),
    },
}
KVM_FEATURES = {
    "eax": _names("0 kvmclock 1 nopiodelay 2 mmu_op 3 kvmclock2 4 async_pf 5 steal_time 6 pv_eoi "
                  "7 pv_unhalt 9 pv_tlb_flush 10 async_pf_vmexit 11 pv_send_ipi 12 poll_control "
                  "13 pv_sched_yield 14 async_pf_int 15 msi_ext_dest_id 16 hc_map_gpa_range "
                  "17 migration_control 24 kvmclock_stable_bit"),
    "edx": _names("0 kvm_hints_realtime"),
}
HYPERVISORS = {
    "KVMKVMKVM": "KVM", "TCGTCGTCGTCG": "TCG", "Microsoft Hv": "Hyper-V", "Linux KVM Hv": "KVM (Hyper-V)",
    "VMwareVMware": "VMware", "XenVMMXenVMM": "Xen", "VBoxVBoxVBox": "VirtualBox", "bhyve bhyve ": "bhyve",
    " lrpepyh vr": "Parallels", "ACRNACRNACRN": "ACRN",
}

# Leaf 2 descriptors (Intel SDM vol. 2A, table 3-12), the common ones.
LEAF2_DESCRIPTORS: dict[int, str] = {
    0x01: "ITLB: 4 KB pages, 4-way, 32 entries", 0x02: "ITLB: 4 MB pages, fully associative, 2 entries",
    0x03: "DTLB: 4 KB pages, 4-way, 64 entries", 0x04: "DTLB: 4 MB pages, 4-way, 8 entries",
    0x05: "DTLB1: 4 MB pages, 4-way, 32 entries", 0x06: "L1i: 8 KB, 4-way, 32 byte lines",
    0x08: "L1i: 16 KB, 4-way, 32 byte lines", 0x09: "L1i: 32 KB, 4-way, 64 byte lines",
    0x0A: "L1d: 8 KB, 2-way, 32 byte lines", 0x0B: "ITLB: 4 MB pages, 4-way, 4 entries",
    0x0C: "L1d: 16 KB, 4-way, 32 byte lines", 0x0D: "L1d: 16 KB, 4-way, 64 byte lines",
    0x0E: "L1d: 24 KB, 6-way, 64 byte lines", 0x1D: "L2: 128 KB, 2-way, 64 byte lines",
    0x21: "L2: 256 KB, 8-way, 64 byte lines", 0x22: "L3: 512 KB, 4-way, 64 byte lines, 2 lines per sector",
    0x23: "L3: 1 MB, 8-way, 64 byte lines, 2 lines per sector", 0x24: "L2: 1 MB, 16-way, 64 byte lines",
    0x25: "L3: 2 MB, 8-way, 64 byte lines, 2 lines per sector",
    0x29: "L3: 4 MB, 8-way, 64 byte lines, 2 lines per sector", 0x2C: "L1d: 32 KB, 8-way, 64 byte lines",
    0x30: "L1i: 32 KB, 8-way, 64 byte lines",
    0x40: "No L2 cache, or if there is a valid L2 cache, no L3 cache",
    0x41: "L2: 128 KB, 4-way, 32 byte lines", 0x42: "L2: 256 KB, 4-way, 32 byte lines",
    0x43: "L2: 512 KB, 4-way, 32 byte lines", 0x44: "L2: 1 MB, 4-way, 32 byte lines",
    0x45: "L2: 2 MB, 4-way, 32 byte lines", 0x46: "L3: 4 MB, 4-way, 64 byte lines",
    0x47: "L3: 8 MB, 8-way, 64 byte lines", 0x48: "L2: 3 MB, 12-way, 64 byte lines",
    0x49: "L3: 4 MB, 16-way, 64 byte lines (L2 on some Core 2)", 0x4A: "L3: 6 MB, 12-way, 64 byte lines",
    0x4B: "L3: 8 MB, 16-way, 64 byte lines", 0x4C: "L3: 12 MB, 12-way, 64 byte lines",
    0x4D: "L3: 16 MB, 16-way, 64 byte lines", 0x4E: "L2: 6 MB, 24-way, 64 byte lines",
    0x4F: "ITLB: 4 KB pages, 32 entries", 0x50: "ITLB: 4 KB and 2 MB or 4 MB pages, 64 entries",
    0x51: "ITLB: 4 KB and 2 MB or 4 MB pages, 128 entries",
    0x52: "ITLB: 4 KB and 2 MB or 4 MB pages, 256 entries",
    0x55: "ITLB: 2 MB or 4 MB pages, fully associative, 7 entries",
    0x56: "DTLB0: 4 MB pages, 4-way, 16 entries", 0x57: "DTLB0: 4 KB pages, 4-way, 16 entries",
    0x59: "DTLB0: 4 KB pages, fully associative, 16 entries",
    0x5A: "DTLB0: 2 MB or 4 MB pages, 4-way, 32 entries",
    0x5B: "DTLB: 4 KB and 4 MB pages, 64 entries", 0x5C: "DTLB: 4 KB and 4 MB pages, 128 entries",
    0x5D: "DTLB: 4 KB and 4 MB pages, 256 entries", 0x60: "L1d: 16 KB, 8-way, 64 byte lines",
    0x66: "L1d: 8 KB, 4-way, 64 byte lines", 0x67: "L1d: 16 KB, 4-way, 64 byte lines",
    0x68: "L1d: 32 KB, 4-way, 64 byte lines", 0x78: "L2: 1 MB, 4-way, 64 byte lines",
    0x79: "L2: 128 KB, 8-way, 64 byte lines, 2 lines per sector",
    0x7A: "L2: 256 KB, 8-way, 64 byte lines, 2 lines per sector",
    0x7B: "L2: 512 KB, 8-way, 64 byte lines, 2 lines per sector",
    0x7C: "L2: 1 MB, 8-way, 64 byte lines, 2 lines per sector", 0x7D: "L2: 2 MB, 8-way, 64 byte lines",
    0x7F: "L2: 512 KB, 2-way, 64 byte lines", 0x80: "L2: 512 KB, 8-way, 64 byte lines",
    0x82: "L2: 256 KB, 8-way, 32 byte lines", 0x83: "L2: 512 KB, 8-way, 32 byte lines",
    0x84: "L2: 1 MB, 8-way, 32 byte lines", 0x85: "L2: 2 MB, 8-way, 32 byte lines",
    0x86: "L2: 512 KB, 4-way, 64 byte lines", 0x87: "L2: 1 MB, 8-way, 64 byte lines",
    0xB0: "ITLB: 4 KB pages, 4-way, 128 entries", 0xB1: "ITLB: 2 MB pages, 4-way, 8 entries or 4 MB, 4 entries",
    0xB2: "ITLB: 4 KB pages, 4-way, 64 entries", 0xB3: "DTLB: 4 KB pages, 4-way, 128 entries",
    0xB4: "DTLB1: 4 KB pages, 4-way, 256 entries", 0xB5: "ITLB: 4 KB pages, 8-way, 64 entries",
    0xB6: "ITLB: 4 KB pages, 8-way, 128 entries", 0xBA: "DTLB1: 4 KB pages, 4-way, 64 entries",
    0xC0: "DTLB: 4 KB and 4 MB pages, 4-way, 8 entries",
    0xC1: "STLB: 4 KB and 2 MB pages, 8-way, 1024 entries",
    0xC2: "DTLB: 4 KB and 2 MB pages, 4-way, 16 entries", 0xC3: "STLB: 4 KB and 2 MB pages, 6-way, 1536 entries",
    0xCA: "STLB: 4 KB pages, 4-way, 512 entries", 0xD0: "L3: 512 KB, 4-way, 64 byte lines",
    0xD1: "L3: 1 MB, 4-way, 64 byte lines", 0xD2: "L3: 2 MB, 4-way, 64 byte lines",
    0xD6: "L3: 1 MB, 8-way, 64 byte lines", 0xD7: "L3: 2 MB, 8-way, 64 byte lines",
    0xD8: "L3: 4 MB, 8-way, 64 byte lines", 0xDC: "L3: 1.5 MB, 12-way, 64 byte lines",
    0xDD: "L3: 3 MB, 12-way, 64 byte lines", 0xDE: "L3: 6 MB, 12-way, 64 byte lines",
    0xE2: "L3: 2 MB, 16-way, 64 byte lines", 0xE3: "L3: 4 MB, 16-way, 64 byte lines",
    0xE4: "L3: 8 MB, 16-way, 64 byte lines", 0xEA: "L3: 12 MB, 24-way, 64 byte lines",
    0xEB: "L3: 18 MB, 24-way, 64 byte lines", 0xEC: "L3: 24 MB, 24-way, 64 byte lines",
    0xF0: "64-byte prefetching", 0xF1: "128-byte prefetching",
    0xFF: "no cache descriptors: use leaf 4",
}
CACHE_TYPES = {0: "null", 1: "data", 2: "instruction", 3: "unified"}
LEVEL_TYPES = {0: "invalid", 1: "SMT", 2: "core", 3: "module", 4: "tile", 5: "die", 6: "diegrp"}
# L2/L3 associativity encodings of leaf 0x80000006, in ways (None: disabled); AMD and Intel agree
# except on 3, 5, 7 and 9
AMD_WAYS: dict[int, int | str | None] = {0: None, 1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 8: 16, 9: "see leaf 0x8000001d",
                                         0xA: 32, 0xB: 48, 0xC: 64, 0xD: 96, 0xE: 128, 0xF: "full"}
INTEL_WAYS: dict[int, int | str | None] = {k: v for k, v in AMD_WAYS.items() if k not in (3, 5, 9)} | {
    7: "see leaf 4"}


# -- field decoders --------------------------------------------------------------------------------------

Decoded = tuple[dict[str, Any], list[str]]           # fields, per_vcpu
Context = dict[tuple[int, int], Regs]                 # the vCPU's whole record
FieldDecoder = Callable[[int, Regs, Context], Decoded]


def _leaf0(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return {"max_basic_leaf": hx(r[0]), "vendor": _text(r[1], r[3], r[2])}, []


def signature(eax: int) -> dict[str, int]:
    """Family, model and stepping of a leaf 1 EAX, with the extended fields applied as the SDM says:
    the extended family adds to family 0xF only, the extended model prefixes families 0x6 and 0xF."""
    base_family, base_model = _bits(eax, 8, 11), _bits(eax, 4, 7)
    ext_family, ext_model = _bits(eax, 20, 27), _bits(eax, 16, 19)
    return {
        "family": base_family + ext_family if base_family == 0xF else base_family,
        "model": (ext_model << 4) + base_model if base_family in (0x6, 0xF) else base_model,
        "stepping": _bits(eax, 0, 3),
        "base_family": base_family, "extended_family": ext_family,
        "base_model": base_model, "extended_model": ext_model,
        "processor_type": _bits(eax, 12, 13),
    }


def _leaf1(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    fields: dict[str, Any] = signature(r[0])
    fields.update({
        "brand_index": _bits(r[1], 0, 7),
        "clflush_line_size": _bits(r[1], 8, 15) * 8,
        "max_logical_processors": _bits(r[1], 16, 23),
        "apic_id": _bits(r[1], 24, 31),
    })
    return fields, ["ebx.apic_id"]


def _leaf2(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    codes: list[int] = []
    for i, reg in enumerate(r):
        if reg >> 31:
            continue                               # bit 31 set: this register holds no descriptors
        raw = struct.pack("<I", reg)
        codes.extend(b for b in (raw[1:] if i == 0 else raw) if b)   # AL is the iteration count
    return {"iterations": r[0] & 0xFF,
            "descriptors": [{"code": hx(c, 2), "name": LEAF2_DESCRIPTORS.get(c)} for c in codes]}, []


def _cache(r: Regs, amd: bool) -> dict[str, Any]:
    """Leaf 4 and 0x8000001d: deterministic cache parameters."""
    eax, ebx, ecx, edx = r
    ways, partitions, line = _bits(ebx, 22, 31) + 1, _bits(ebx, 12, 21) + 1, _bits(ebx, 0, 11) + 1
    sets = ecx + 1
    fields: dict[str, Any] = {
        "cache_type": CACHE_TYPES.get(_bits(eax, 0, 4), hx(_bits(eax, 0, 4))),
        "level": _bits(eax, 5, 7),
        "self_initializing": bool(eax >> 8 & 1),
        "fully_associative": bool(eax >> 9 & 1),
        "max_sharing_ids": _bits(eax, 14, 25) + 1,
    }
    if not amd:
        fields["max_core_ids"] = _bits(eax, 26, 31) + 1
    if _bits(eax, 0, 4) == 0:
        return fields
    fields.update({
        "ways": ways, "partitions": partitions, "line_size": line, "sets": sets,
        "size": ways * partitions * line * sets,
        "wbinvd_not_inclusive": bool(edx & 1), "inclusive": bool(edx >> 1 & 1),
    })
    if not amd:
        fields["complex_indexing"] = bool(edx >> 2 & 1)
    return fields


def _leaf4(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return _cache(r, amd=False), []


def _leaf5(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    fields: dict[str, Any] = {"monitor_line_size_min": _bits(r[0], 0, 15),
                              "monitor_line_size_max": _bits(r[1], 0, 15)}
    for state in range(8):
        fields[f"c{state}_substates"] = _bits(r[3], 4 * state, 4 * state + 3)
    return fields, []


def _leaf6(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return {"interrupt_thresholds": _bits(r[1], 0, 3)}, []


def _leaf7(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return ({"max_subleaf": r[0]} if subleaf == 0 else {}), []


def _leafa(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return {"version": _bits(r[0], 0, 7), "gp_counters": _bits(r[0], 8, 15),
            "gp_counter_width": _bits(r[0], 16, 23), "events_vector_length": _bits(r[0], 24, 31),
            "fixed_counters": _bits(r[3], 0, 4), "fixed_counter_width": _bits(r[3], 5, 12)}, []


def _topology(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    """Leaves 0xb and 0x1f: one topology level per subleaf."""
    level = _bits(r[2], 8, 15)
    return {"level_number": _bits(r[2], 0, 7), "level_type": LEVEL_TYPES.get(level, hx(level)),
            "x2apic_id_shift": _bits(r[0], 0, 4), "logical_processors": _bits(r[1], 0, 15),
            "x2apic_id": r[3]}, ["edx.x2apic_id"]


def _component(bit: int) -> str:
    return _XSAVE_COMPONENTS.get(bit, f"component {bit}")


def _leafd(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    eax, ebx, ecx, edx = r
    if subleaf == 0:
        return {"xcr0_supported": hx(edx << 32 | eax, 16), "xsave_size_enabled": ebx,
                "xsave_size_supported": ecx}, []
    if subleaf == 1:
        return {"xss_supported": hx(edx << 32 | ecx, 16), "xsave_size_enabled_with_xss": ebx}, []
    return {"component": _component(subleaf), "size": eax, "offset": ebx,
            "supervisor": bool(ecx & 1), "aligned": bool(ecx >> 1 & 1), "xfd": bool(ecx >> 2 & 1)}, []


def _leaf15(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return {"tsc_ratio_denominator": r[0], "tsc_ratio_numerator": r[1], "crystal_hz": r[2]}, []


def _leaf16(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return {"base_frequency_mhz": _bits(r[0], 0, 15), "max_frequency_mhz": _bits(r[1], 0, 15),
            "bus_frequency_mhz": _bits(r[2], 0, 15)}, []


def hypervisor_signature(r: Regs) -> str:
    return _text(r[1], r[2], r[3])


def _hv0(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    sig = hypervisor_signature(r)
    return {"max_hypervisor_leaf": hx(r[0]), "signature": sig, "hypervisor": HYPERVISORS.get(sig)}, []


def _hv1(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    hv0 = ctx.get((0x40000000, 0))
    if hv0 is not None and hypervisor_signature(hv0) == "Microsoft Hv":
        return {"interface_signature": _text(r[0])}, []
    return {}, []


def _ext0(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    fields: dict[str, Any] = {"max_extended_leaf": hx(r[0])}
    vendor = _text(r[1], r[3], r[2])
    if vendor:
        fields["vendor"] = vendor
    return fields, []


def _brand(subleaf: int, r: Regs, ctx: Context, leaf: int) -> Decoded:
    fields: dict[str, Any] = {"brand_string_part": b"".join(struct.pack("<I", x) for x in r)
                              .decode("ascii", errors="backslashreplace")}
    if leaf == 0x80000002:
        parts = [ctx.get((lf, 0)) for lf in (0x80000002, 0x80000003, 0x80000004)]
        if all(p is not None for p in parts):
            fields["brand_string"] = _text(*(w for p in parts if p is not None for w in p)).strip()
    return fields, []


def _ways(table: dict[int, int | str | None], code: int) -> int | str | None:
    return table[code] if code in table else hx(code)


def _tlb(value: int, prefix: str, amd_l1: bool) -> dict[str, Any]:
    if amd_l1:   # 0x80000005: ways [31:24] entries [23:16] (data), [15:8] [7:0] (instruction)
        def ways(code: int) -> int | str | None:
            return "full" if code == 0xFF else code or None
        return {f"{prefix}dtlb_ways": ways(_bits(value, 24, 31)), f"{prefix}dtlb_entries": _bits(value, 16, 23),
                f"{prefix}itlb_ways": ways(_bits(value, 8, 15)), f"{prefix}itlb_entries": _bits(value, 0, 7)}
    return {f"{prefix}dtlb_ways": _ways(AMD_WAYS, _bits(value, 28, 31)),
            f"{prefix}dtlb_entries": _bits(value, 16, 27),
            f"{prefix}itlb_ways": _ways(AMD_WAYS, _bits(value, 12, 15)),
            f"{prefix}itlb_entries": _bits(value, 0, 11)}


def _ext5(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    """AMD L1 caches and TLBs (Intel: reserved, zero)."""
    fields = _tlb(r[0], "l1_2m4m_", True) | _tlb(r[1], "l1_4k_", True)
    for name, reg in (("l1d", r[2]), ("l1i", r[3])):
        assoc = _bits(reg, 16, 23)
        fields.update({f"{name}_size": _bits(reg, 24, 31) * 1024,
                       f"{name}_ways": "full" if assoc == 0xFF else assoc or None,
                       f"{name}_lines_per_tag": _bits(reg, 8, 15), f"{name}_line_size": _bits(reg, 0, 7)})
    return fields, []


def _ext6(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    """L2 (Intel and AMD) and L3 (AMD) caches, L2 TLBs (AMD)."""
    fields = _tlb(r[0], "l2_2m4m_", False) | _tlb(r[1], "l2_4k_", False)
    ecx, edx = r[2], r[3]
    leaf0 = ctx.get((0, 0))
    ways = INTEL_WAYS if leaf0 is not None and _text(leaf0[1], leaf0[3], leaf0[2]) == "GenuineIntel" else AMD_WAYS
    fields.update({"l2_size": _bits(ecx, 16, 31) * 1024, "l2_ways": _ways(ways, _bits(ecx, 12, 15)),
                   "l2_lines_per_tag": _bits(ecx, 8, 11), "l2_line_size": _bits(ecx, 0, 7),
                   "l3_size": _bits(edx, 18, 31) * 512 * 1024, "l3_ways": _ways(AMD_WAYS, _bits(edx, 12, 15)),
                   "l3_lines_per_tag": _bits(edx, 8, 11), "l3_line_size": _bits(edx, 0, 7)})
    return fields, []


def _ext8(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return {"physical_address_bits": _bits(r[0], 0, 7), "linear_address_bits": _bits(r[0], 8, 15),
            "guest_physical_address_bits": _bits(r[0], 16, 23),
            "threads_per_package": _bits(r[2], 0, 7) + 1, "apic_id_size": _bits(r[2], 12, 15),
            "perf_tsc_size": _bits(r[2], 16, 17), "invlpgb_max_pages": _bits(r[3], 0, 15),
            "rdpru_max_id": _bits(r[3], 16, 31)}, []


def _exta(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return {"svm_revision": _bits(r[0], 0, 7), "asid_count": r[1]}, []


def _ext1d(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return _cache(r, amd=True), []


def _ext1e(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return {"extended_apic_id": r[0], "core_id": _bits(r[1], 0, 7),
            "threads_per_core": _bits(r[1], 8, 15) + 1, "node_id": _bits(r[2], 0, 7),
            "nodes_per_processor": _bits(r[2], 8, 10) + 1}, ["eax.extended_apic_id", "ebx.core_id", "ecx.node_id"]


def _ext1f(subleaf: int, r: Regs, ctx: Context) -> Decoded:
    return {"c_bit_position": _bits(r[1], 0, 5), "physical_address_reduction": _bits(r[1], 6, 11),
            "vmpl_count": _bits(r[1], 12, 15), "encrypted_guests": r[2], "min_sev_no_es_asid": r[3]}, []


def _brand_at(leaf: int) -> FieldDecoder:
    return lambda subleaf, r, ctx: _brand(subleaf, r, ctx, leaf)


FIELDS: dict[int, FieldDecoder] = {
    0x0: _leaf0, 0x1: _leaf1, 0x2: _leaf2, 0x4: _leaf4, 0x5: _leaf5, 0x6: _leaf6, 0x7: _leaf7, 0xA: _leafa,
    0xB: _topology, 0xD: _leafd, 0x15: _leaf15, 0x16: _leaf16, 0x1F: _topology,
    0x40000000: _hv0, 0x40000001: _hv1,
    0x80000000: _ext0, 0x80000002: _brand_at(0x80000002), 0x80000003: _brand_at(0x80000003),
    0x80000004: _brand_at(0x80000004), 0x80000005: _ext5, 0x80000006: _ext6, 0x80000008: _ext8,
    0x8000000A: _exta, 0x8000001D: _ext1d, 0x8000001E: _ext1e, 0x8000001F: _ext1f,
}


def feature_names(leaf: int, subleaf: int, ctx: Context) -> dict[str, dict[int, str]]:
    table = FEATURES.get((leaf, subleaf)) or FEATURES.get((leaf, None))
    if table is None and leaf == 0x40000001:
        hv0 = ctx.get((0x40000000, 0))
        if hv0 is not None and hypervisor_signature(hv0) == "KVMKVMKVM":
            table = KVM_FEATURES
    return table or {}


def decode_entry(vcpu: int, leaf: int, subleaf: int, r: Regs, ctx: Context) -> dict[str, Any]:
    features: dict[str, dict[str, str]] = {}
    for reg, names in feature_names(leaf, subleaf, ctx).items():
        value = r[REGISTERS.index(reg)]
        set_bits = {str(bit): name for bit, name in sorted(names.items()) if value >> bit & 1}
        if set_bits:
            features[reg] = set_bits
    decoder = FIELDS.get(leaf)
    fields, per_vcpu = decoder(subleaf, r, ctx) if decoder else ({}, [])
    entry: dict[str, Any] = {"label": f"leaf {leaf:#x} subleaf {subleaf:#x}", "vcpu": vcpu, "leaf": leaf,
                             "subleaf": subleaf}
    entry.update({reg: hx(value, 8) for reg, value in zip(REGISTERS, r, strict=True)})
    entry.update({"features": features, "fields": fields, "per_vcpu": per_vcpu})
    return entry


# -- records ---------------------------------------------------------------------------------------------


def _range_of(leaf: int) -> tuple[int, int] | None:
    for low, high in RANGES:
        if low <= leaf <= high:
            return low, high
    return None


def parse_record(rel: str, data: bytes) -> Context:
    """One vCPU's record: {(leaf, subleaf): (eax, ebx, ecx, edx)}, checked for order and completeness."""
    if not data:
        raise DecodeError(rel, None, "empty CPUID record")
    if len(data) % ENTRY:
        raise DecodeError(rel, len(data) - len(data) % ENTRY,
                          f"{len(data)} bytes is not a whole number of {ENTRY}-byte entries")
    if len(data) // ENTRY > MAX_ENTRIES:
        raise DecodeError(rel, None, f"{len(data) // ENTRY} entries (at most {MAX_ENTRIES})")
    record: Context = {}
    previous = (-1, -1)
    for i, (leaf, subleaf, eax, ebx, ecx, edx) in enumerate(struct.iter_unpack("<6I", data)):
        at = i * ENTRY
        if _range_of(leaf) is None:
            raise DecodeError(rel, at, f"leaf {leaf:#x} is outside the ranges the probe reads")
        if subleaf > MAX_SUBLEAF:
            raise DecodeError(rel, at + 4, f"leaf {leaf:#x} subleaf {subleaf:#x} (at most {MAX_SUBLEAF:#x})")
        if (leaf, subleaf) <= previous:
            raise DecodeError(rel, at, f"leaf {leaf:#x} subleaf {subleaf:#x} out of order "
                                       f"(after leaf {previous[0]:#x} subleaf {previous[1]:#x})")
        previous = (leaf, subleaf)
        record[(leaf, subleaf)] = (eax, ebx, ecx, edx)
    _check_complete(rel, record)
    return record


def _check_complete(rel: str, record: Context) -> None:
    """Every leaf the probe must have read is there (the maximum leaves it was told about)."""
    if (0, 0) not in record:
        raise DecodeError(rel, 0, "no leaf 0")
    expected: list[tuple[int, int]] = [(0, min(record[(0, 0)][0], 0xFF))]
    if (0x80000000, 0) not in record:
        raise DecodeError(rel, None, "no leaf 0x80000000")
    top = record[(0x80000000, 0)][0]
    expected.append((0x80000000, top if 0x80000000 <= top <= 0x800000FF else 0x80000000))
    if (1, 0) in record and record[(1, 0)][2] >> 31:       # a hypervisor is present: its leaves too
        if (0x40000000, 0) not in record:
            raise DecodeError(rel, None, "leaf 1 reports a hypervisor but leaf 0x40000000 is missing")
        top = record[(0x40000000, 0)][0]
        expected.append((0x40000000, top if 0x40000000 <= top <= 0x400000FF else 0x40000000))
    for low, high in expected:
        missing = [leaf for leaf in range(low, high + 1) if (leaf, 0) not in record]
        if missing:
            raise DecodeError(rel, None, f"leaf {missing[0]:#x} missing ({len(missing)} leaves up to "
                                         f"the maximum leaf {high:#x} are absent): incomplete record")
    for leaf, subleaf in record:
        if not any(low <= leaf <= high for low, high in expected):
            raise DecodeError(rel, None, f"leaf {leaf:#x} subleaf {subleaf:#x} is beyond the maximum "
                                         "leaf of its range (or a hypervisor leaf without a hypervisor)")


def vcpus(raw: Path) -> list[int]:
    base = raw / CPU_DIR
    if not base.is_dir():
        raise DecodeError(CPU_DIR, None, "the capture has no CPUID records")
    numbers = []
    for child in base.iterdir():
        if not child.name.isdigit() or len(child.name) > 6:
            raise DecodeError(f"{CPU_DIR}/{child.name}", None, "unexpected entry (vCPU numbers only)")
        numbers.append(int(child.name))
        if len(numbers) > MAX_VCPUS:
            raise DecodeError(CPU_DIR, None, f"more than {MAX_VCPUS} vCPUs")
    if not numbers:
        raise DecodeError(CPU_DIR, None, "no vCPU records")
    return sorted(numbers)


def decode(raw: Path) -> dict[str, Any]:
    """{"VCPU/0xLEAF/0xSUBLEAF": {...}} for every vCPU, in vCPU then leaf then subleaf order."""
    out: dict[str, Any] = {}
    for vcpu in vcpus(raw):
        rel = f"{CPU_DIR}/{vcpu}/cpuid"
        record = parse_record(rel, read_raw(raw, rel, limit=MAX_ENTRIES * ENTRY))
        for (leaf, subleaf), regs in record.items():
            out[f"{vcpu}/{leaf:#010x}/{subleaf:#x}"] = decode_entry(vcpu, leaf, subleaf, regs, record)
    return out
