"""Fuzzing the SMBIOS and CPUID decoders with mutated real bytes: whatever the guest hands us, the
only exception that may escape is DecodeError, and what decodes is JSON-ready."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError
from harness.fingerprint import cpuid, smbios

CAPTURES = Path(__file__).parent / "data" / "captures"
CAPTURE_DIRS = [m.parent for m in sorted(CAPTURES.glob("*/manifest.json"))
                if json.loads(m.read_text()).get("complete") is True]
TABLES = "sys/firmware/dmi/tables"

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with a few byte-level edits: overwrites, bit flips, truncation, insertion, deletion."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["set", "flip", "truncate", "insert", "delete", "word"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "set" and out:
            out[at] = draw(st.integers(0, 255))
        elif op == "flip" and out:
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif op == "delete":
            del out[at:at + draw(st.integers(1, 32))]
        elif op == "word" and len(out) >= 4:
            at = min(at, len(out) - 4)
            out[at:at + 4] = draw(st.sampled_from([b"\0\0\0\0", b"\xff\xff\xff\xff", b"\x7f\0\0\0",
                                                    b"\0\0\0\x80", b"\xff\0\0\0"]))
    return bytes(out)


def decodes_or_decode_error(decoder: object, raw: Path) -> None:
    assert callable(decoder)
    try:
        result = decoder(raw)
    except DecodeError as exc:
        event("DecodeError: " + str(exc).split(": ", 1)[-1][:40])
        return
    event("decoded")
    json.dumps(result)


@pytest.mark.skipif(not CAPTURE_DIRS, reason="no captures")
@FUZZ
@given(data=st.data())
def test_smbios_fuzz(data: st.DataObject) -> None:
    capture = data.draw(st.sampled_from(CAPTURE_DIRS), label="capture")
    tables = capture / "raw" / TABLES
    ep = (tables / "smbios_entry_point").read_bytes()
    table = (tables / "DMI").read_bytes()
    which = data.draw(st.sampled_from(["table", "table", "table", "entry_point", "both"]), label="which")
    if which in ("table", "both"):
        table = data.draw(mutated(table), label="table")
        if ep[:4] == b"_SM_" and len(table) < 0x10000 and data.draw(st.booleans(), label="fix length"):
            ep = ep[:0x16] + len(table).to_bytes(2, "little") + ep[0x18:]   # walk the whole table
    if which in ("entry_point", "both"):
        ep = data.draw(mutated(ep), label="entry_point")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        (raw / TABLES).mkdir(parents=True)
        (raw / TABLES / "smbios_entry_point").write_bytes(ep)
        (raw / TABLES / "DMI").write_bytes(table)
        decodes_or_decode_error(smbios.decode, raw)


@pytest.mark.skipif(not CAPTURE_DIRS, reason="no captures")
@FUZZ
@given(data=st.data())
def test_cpuid_fuzz(data: st.DataObject) -> None:
    capture = data.draw(st.sampled_from(CAPTURE_DIRS), label="capture")
    records = sorted((capture / "raw" / "dev" / "cpu").glob("*/cpuid"))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        for path in records:
            body = path.read_bytes()
            if data.draw(st.booleans(), label=f"mutate vCPU {path.parent.name}"):
                body = data.draw(mutated(body), label=f"vCPU {path.parent.name}")
            target = raw / "dev" / "cpu" / path.parent.name / "cpuid"
            target.parent.mkdir(parents=True)
            target.write_bytes(body)
        decodes_or_decode_error(cpuid.decode, raw)


@pytest.mark.skipif(not CAPTURE_DIRS, reason="no captures")
@FUZZ
@given(data=st.data())
def test_cpuid_fuzz_aligned(data: st.DataObject) -> None:
    """Whole-entry edits keep the record size valid, so the decoding itself gets exercised."""
    capture = data.draw(st.sampled_from(CAPTURE_DIRS), label="capture")
    body = bytearray((capture / "raw" / "dev" / "cpu" / "0" / "cpuid").read_bytes())
    entries = len(body) // cpuid.ENTRY
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, entries - 1))
        reg = data.draw(st.integers(2, 5))          # eax..edx: the leaf and subleaf stay in order
        value = data.draw(st.integers(0, 0xFFFFFFFF))
        body[i * 24 + reg * 4:i * 24 + reg * 4 + 4] = value.to_bytes(4, "little")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        (raw / "dev" / "cpu" / "0").mkdir(parents=True)
        (raw / "dev" / "cpu" / "0" / "cpuid").write_bytes(bytes(body))
        decodes_or_decode_error(cpuid.decode, raw)


@pytest.mark.skipif(not CAPTURE_DIRS, reason="no captures")
@FUZZ
@given(data=st.data())
def test_smbios_fuzz_formatted_areas(data: st.DataObject) -> None:
    """Edits inside formatted areas only (string sets and lengths intact): every field decoder runs
    on arbitrary values, including string indexes past the string set."""
    capture = data.draw(st.sampled_from(CAPTURE_DIRS), label="capture")
    tables = capture / "raw" / TABLES
    table = bytearray((tables / "DMI").read_bytes())
    spans, offset = [], 0
    while offset < len(table):
        length = table[offset + 1]
        spans.append((offset + 4, offset + length))
        end = table.index(b"\0\0", offset + length) + 2
        if table[offset] == 127:
            break
        offset = end
    for _ in range(data.draw(st.integers(1, 8))):
        start, stop = data.draw(st.sampled_from([s for s in spans if s[1] > s[0]]))
        at = data.draw(st.integers(start, stop - 1))
        table[at] = data.draw(st.integers(0, 255))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        (raw / TABLES).mkdir(parents=True)
        (raw / TABLES / "smbios_entry_point").write_bytes((tables / "smbios_entry_point").read_bytes())
        (raw / TABLES / "DMI").write_bytes(bytes(table))
        decodes_or_decode_error(smbios.decode, raw)
