"""The probe's framing, on real console logs of the reference guest (tests/data/console/)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import DATA, REPO

from harness.errors import CaptureError
from harness.transport.framing import (
    MAX_RECORD,
    MAX_STREAM,
    Record,
    StreamParser,
    parse,
    parse_stream,
    write_raw,
)

CONSOLE = DATA / "console"
LOG_1CPU = CONSOLE / "q35-7.2-tcg-1cpu.log"          # the launcher's command line: quiet
LOG_2CPU = CONSOLE / "q35-7.2-tcg-2cpu-verbose.log"  # loglevel=6: kernel messages before the probe
PROBE = REPO / "guests" / "reference" / "probe.sh"


def _text(path: Path) -> str:
    return path.read_bytes().decode("ascii", errors="replace")


def _lines(path: Path) -> list[str]:
    return _text(path).split("\n")


def _rec_index(lines: list[str], guest_path: str) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(f"@@QABI-REC {guest_path} "))


# -- the real logs ------------------------------------------------------------------------------
@pytest.mark.parametrize("log", [LOG_1CPU, LOG_2CPU], ids=["1cpu", "2cpu-verbose"])
def test_real_log_parses_into_every_category(log):
    out = parse(_text(log))
    paths = [r.path for r in out.records]
    assert out.skipped == ()
    assert len(paths) == len(set(paths))
    assert "/sys/firmware/acpi/tables/DSDT" in paths
    assert "/sys/firmware/acpi/tables/FACP" in paths
    assert "/sys/firmware/dmi/tables/smbios_entry_point" in paths
    assert "/sys/firmware/dmi/tables/DMI" in paths
    assert "/sys/bus/pci/devices/0000:00:00.0/config" in paths
    assert "/sys/bus/pci/devices/0000:00:1f.0/resource" in paths
    assert "/dev/cpu/0/cpuid" in paths
    assert {"/sys/firmware/memmap/0/start", "/sys/firmware/memmap/0/end", "/sys/firmware/memmap/0/type"} <= set(paths)
    assert out.info["kernel"] == "6.1.0-50-cloud-amd64"
    assert float(out.info["uptime-probe-end"]) >= float(out.info["uptime-probe-start"])
    records = {r.path: r.data for r in out.records}
    assert records["/sys/firmware/acpi/tables/DSDT"][:4] == b"DSDT"
    assert len(records["/sys/firmware/acpi/tables/DSDT"]) == struct.unpack_from("<I", records[
        "/sys/firmware/acpi/tables/DSDT"], 4)[0]
    assert records["/sys/firmware/dmi/tables/smbios_entry_point"][:4] in (b"_SM_", b"_SM3")
    assert len(records["/sys/bus/pci/devices/0000:00:00.0/config"]) in (256, 4096)
    assert records["/sys/bus/pci/devices/0000:00:00.0/config"][:4] == bytes.fromhex("8680c029")  # 8086:29c0
    assert records["/sys/firmware/memmap/0/start"] == b"0x0\n"
    assert parse_stream(_text(log)) == list(out.records)


def test_cpuid_records_are_24_byte_entries_ordered_by_leaf_then_subleaf():
    out = parse(_text(LOG_2CPU))
    cpus = [r for r in out.records if r.path.startswith("/dev/cpu/")]
    assert [r.path for r in cpus] == ["/dev/cpu/0/cpuid", "/dev/cpu/1/cpuid"]
    tables = []
    for record in cpus:
        assert len(record.data) % 24 == 0
        entries = [struct.unpack_from("<6I", record.data, off) for off in range(0, len(record.data), 24)]
        keys = [(leaf, sub) for leaf, sub, *_ in entries]
        assert keys == sorted(keys) and len(keys) == len(set(keys))
        regs = {(leaf, sub): r for leaf, sub, *r in entries}
        max_basic = regs[(0, 0)][0]
        assert [leaf for leaf, sub in keys if leaf < 0x40000000 and sub == 0] == list(range(max_basic + 1))
        max_ext = regs[(0x80000000, 0)][0]
        assert [leaf for leaf, sub in keys if leaf >= 0x80000000 and sub == 0] == \
            list(range(0x80000000, max_ext + 1))
        # vendor string of leaf 0: ebx, edx, ecx
        vendor = struct.pack("<3I", regs[(0, 0)][1], regs[(0, 0)][3], regs[(0, 0)][2])
        assert vendor in (b"AuthenticAMD", b"GenuineIntel")
        # TCG's hypervisor leaf 0x40000000: "TCGTCGTCGTCG"
        assert struct.pack("<3I", *regs[(0x40000000, 0)][1:4]) == b"TCGTCGTCGTCG"
        # leaf 0xb enumerates its topology levels: subleaf 1 exists, the level-type-0 one does not
        assert (0xB, 1) in regs
        assert all((regs[(0xB, s)][2] >> 8) & 0xFF for s in range(8) if (0xB, s) in regs)
        tables.append(regs)
    # the APIC id in leaf 1 ebx[31:24] is what differs between vCPUs
    assert tables[0][(1, 0)][1] >> 24 == 0 and tables[1][(1, 0)][1] >> 24 == 1


def test_noise_before_begin_is_ignored_and_crlf_or_lf_both_work():
    text = _text(LOG_2CPU)
    assert text.index("@@QABI-BEGIN") > 1000             # the kernel's own messages come first
    crlf = parse(text)
    lf = parse(text.replace("\r\n", "\n"))
    assert crlf.records == lf.records


def test_kernel_noise_between_records_is_ignored():
    lines = _lines(LOG_1CPU)
    i = _rec_index(lines, "/sys/firmware/acpi/tables/FACP")
    noisy = lines[:i] + ["[    3.141592] random: crng init done\r", "", "x" * 300] + lines[i:]
    assert parse("\n".join(noisy)).records == parse("\n".join(lines)).records


def test_streaming_in_arbitrary_chunks_gives_the_same_records():
    text = _text(LOG_2CPU)
    whole = parse(text)
    parser = StreamParser()
    sizes = [1, 7, 64, 333, 4096]
    pos = 0
    n = 0
    while pos < len(text):
        chunk = text[pos:pos + sizes[n % len(sizes)]]
        parser.feed(chunk)
        pos += len(chunk)
        n += 1
        if "@@QABI-TRAILER" not in text[:pos]:
            assert not parser.done
    assert parser.done
    assert parser.result().records == whole.records


# -- tampering ----------------------------------------------------------------------------------
def test_flipped_byte_is_a_checksum_mismatch_naming_the_path():
    lines = _lines(LOG_1CPU)
    i = _rec_index(lines, "/sys/firmware/acpi/tables/DSDT")
    body = lines[i + 1].rstrip("\r")
    data = bytearray(base64.b64decode(body))
    data[10] ^= 0x01
    lines[i + 1] = base64.b64encode(bytes(data)).decode() + "\r"
    with pytest.raises(CaptureError, match=r"^checksum mismatch for /sys/firmware/acpi/tables/DSDT: "):
        parse("\n".join(lines))


def test_truncated_inside_a_record():
    lines = _lines(LOG_1CPU)
    i = _rec_index(lines, "/sys/firmware/acpi/tables/DSDT")
    with pytest.raises(CaptureError, match=r"^probe output truncated inside record /sys/firmware/acpi/tables/DSDT"):
        parse("\n".join(lines[:i + 5]))


def test_truncated_before_the_trailer():
    text = _text(LOG_1CPU)
    cut = text.index("@@QABI-INFO uptime-probe-end")
    with pytest.raises(CaptureError, match=r"^probe output truncated: no @@QABI-TRAILER after 45 records"):
        parse(text[:cut])


def test_a_lost_end_line_is_reported_as_truncation():
    lines = _lines(LOG_1CPU)
    i = _rec_index(lines, "/sys/firmware/acpi/tables/FACP")
    end = next(j for j in range(i, len(lines)) if lines[j].startswith("@@QABI-END"))
    del lines[end]
    with pytest.raises(CaptureError, match=r"record /sys/firmware/acpi/tables/FACP has no @@QABI-END"):
        parse("\n".join(lines))


def test_wrong_record_count():
    text = re.sub(r"@@QABI-TRAILER \d+", "@@QABI-TRAILER 46", _text(LOG_1CPU))
    with pytest.raises(CaptureError, match=r"^record count mismatch: the trailer says 46, received 45$"):
        parse(text)


def test_wrong_size():
    lines = _lines(LOG_1CPU)
    i = _rec_index(lines, "/sys/firmware/acpi/tables/FACP")
    path, size, digest = lines[i].rstrip("\r").split(" ")[1:]
    lines[i] = f"@@QABI-REC {path} {int(size) + 1} {digest}\r"
    with pytest.raises(CaptureError, match=rf"^size mismatch for {path}: the probe said {int(size) + 1} bytes"):
        parse("\n".join(lines))


def test_non_base64_line_inside_a_record():
    lines = _lines(LOG_1CPU)
    i = _rec_index(lines, "/sys/firmware/dmi/tables/DMI")
    lines.insert(i + 2, "garbage: not base64!\r")
    with pytest.raises(CaptureError, match=r"^non-base64 line inside record /sys/firmware/dmi/tables/DMI"):
        parse("\n".join(lines))


def test_kernel_taking_over_the_console_mid_record_is_truncation():
    lines = _lines(LOG_1CPU)
    i = _rec_index(lines, "/sys/firmware/dmi/tables/DMI")
    del lines[i + 2:]
    lines.append("[    4.000000] reboot: Power down\r")
    with pytest.raises(CaptureError, match=r"^probe output truncated inside record /sys/firmware/dmi/tables/DMI"):
        parse("\n".join(lines))


def test_end_must_name_the_record():
    lines = _lines(LOG_1CPU)
    i = _rec_index(lines, "/sys/firmware/acpi/tables/HPET")
    end = next(j for j in range(i, len(lines)) if lines[j].startswith("@@QABI-END"))
    lines[end] = "@@QABI-END /sys/firmware/acpi/tables/WAET\r"
    with pytest.raises(CaptureError, match=r"does not match @@QABI-REC /sys/firmware/acpi/tables/HPET"):
        parse("\n".join(lines))


def test_no_begin_means_the_probe_never_ran():
    kernel_only = "\n".join(line for line in _lines(LOG_2CPU) if not line.startswith("@@QABI-"))
    with pytest.raises(CaptureError, match=r"^guest never started the probe"):
        parse(kernel_only)
    with pytest.raises(CaptureError, match=r"^guest never started the probe"):
        parse("")


def test_the_probe_reporting_an_error():
    text = "@@QABI-BEGIN 1\n@@QABI-ERROR missing tool: base64 (needed by the qabi probe)\n@@QABI-TRAILER 0\n"
    with pytest.raises(CaptureError, match=r"^guest probe failed: missing tool: base64"):
        parse(text)


def test_skips_are_kept():
    text = ("@@QABI-BEGIN 1\n@@QABI-SKIP /sys/firmware/dmi/tables/DMI Permission denied\n"
            "@@QABI-REC /x 0 " + hashlib.sha256(b"").hexdigest() + "\n@@QABI-END /x\n@@QABI-TRAILER 1\n")
    out = parse(text)
    assert out.records == (Record("/x", b""),)
    assert [(s.path, s.reason) for s in out.skipped] == [("/sys/firmware/dmi/tables/DMI", "Permission denied")]


def test_protocol_and_directive_errors():
    with pytest.raises(CaptureError, match="unsupported probe protocol"):
        parse("@@QABI-BEGIN 2\n@@QABI-TRAILER 0\n")
    with pytest.raises(CaptureError, match="started twice"):
        parse("@@QABI-BEGIN 1\n@@QABI-BEGIN 1\n@@QABI-TRAILER 0\n")
    with pytest.raises(CaptureError, match="before @@QABI-BEGIN"):
        parse("@@QABI-TRAILER 0\n")
    with pytest.raises(CaptureError, match="unknown probe directive"):
        parse("@@QABI-BEGIN 1\n@@QABI-FOO x\n@@QABI-TRAILER 0\n")
    digest = hashlib.sha256(b"").hexdigest()
    for bad in ("relative", "/a/../b", "/a//b", "/", "/a b"):
        with pytest.raises(CaptureError, match="malformed|bad record path"):
            parse(f"@@QABI-BEGIN 1\n@@QABI-REC {bad} 0 {digest}\n@@QABI-END {bad}\n@@QABI-TRAILER 1\n")
    with pytest.raises(CaptureError, match="sent twice"):
        parse(f"@@QABI-BEGIN 1\n@@QABI-REC /a 0 {digest}\n@@QABI-END /a\n"
              f"@@QABI-REC /a 0 {digest}\n@@QABI-END /a\n@@QABI-TRAILER 2\n")


def test_size_bounds():
    digest = hashlib.sha256(b"").hexdigest()
    with pytest.raises(CaptureError, match=r"more than the 16 MiB limit"):
        parse(f"@@QABI-BEGIN 1\n@@QABI-REC /big {MAX_RECORD + 1} {digest}\n")
    parser = StreamParser()
    noise = ("x" * 1023 + "\n") * 1024
    with pytest.raises(CaptureError, match=r"^console output exceeds 64 MiB$"):
        for _ in range(MAX_STREAM // len(noise) + 1):
            parser.feed(noise)


# -- write_raw ----------------------------------------------------------------------------------
def test_write_raw_mirrors_guest_paths(tmp_path):
    records = parse_stream(_text(LOG_1CPU))
    files = write_raw(records, tmp_path / "raw")
    assert len(files) == len(records)
    for record in records:
        rel = record.path.lstrip("/")
        assert files[rel] == hashlib.sha256(record.data).hexdigest()
        assert (tmp_path / "raw" / rel).read_bytes() == record.data


@pytest.mark.parametrize("path", ["/a/../../etc/passwd", "/..", "/a/./b", "relative/x", "/a\\b"])
def test_write_raw_refuses_unsafe_paths(tmp_path, path):
    with pytest.raises(CaptureError):
        write_raw([Record(path, b"x")], tmp_path / "raw")
    assert not any((tmp_path / "raw").rglob("*"))


def test_write_raw_refuses_symlinks_and_overwrites(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, raw / "sys")
    with pytest.raises(CaptureError, match="in the way"):
        write_raw([Record("/sys/x", b"x")], raw)
    assert not (outside / "x").exists()
    with pytest.raises(CaptureError, match="already exists"):
        write_raw([Record("/a", b"1"), Record("/a", b"2")], tmp_path / "raw2")


# -- the probe on this host (a normal distribution: dash, coreutils) ----------------------------
SHELLS = [s for s in (["sh"], ["dash"], ["bash", "--posix"], ["busybox", "sh"]) if shutil.which(s[0])]


@pytest.mark.parametrize("shell", SHELLS, ids=[" ".join(s) for s in SHELLS])
def test_probe_runs_on_this_host(shell, tmp_path):
    done = subprocess.run([*shell, str(PROBE)], check=False, capture_output=True, text=True, timeout=120,
                          env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stdout[-500:] + done.stderr
    out = parse(done.stdout)
    assert out.records or out.skipped
    for record in out.records:
        if record.path.startswith("/sys/"):       # what this same user reads now
            assert Path(record.path).read_bytes() == record.data, record.path
    for record in out.records:
        if record.path.startswith("/dev/cpu/"):
            assert len(record.data) % 24 == 0 and record.data[:8] == b"\0" * 8
    assert list(tmp_path.iterdir()) == []          # the probe removed its staging directory


def test_probe_names_a_missing_tool(tmp_path):
    # a PATH with everything but base64
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("dd", "od", "sha256sum", "wc", "mkdir", "rm", "cat", "tr"):
        found = shutil.which(tool)
        assert found
        os.symlink(found, bindir / tool)
    done = subprocess.run([shutil.which("sh") or "/bin/sh", str(PROBE)], check=False, capture_output=True,
                          text=True, timeout=60, env={"PATH": str(bindir), "TMPDIR": str(tmp_path)})
    assert done.returncode != 0
    with pytest.raises(CaptureError, match=r"^guest probe failed: missing tool: base64"):
        parse(done.stdout)
