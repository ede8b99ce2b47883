"""Fuzzing the ACPI decoders with mutated real tables: whatever the bytes, the only exception that
escapes is DecodeError, and what comes back is JSON-ready."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import DecodeError
from harness.fingerprint import acpi, aml
from harness.fingerprint.binary import Blob

CAPTURES = DATA / "captures"
BINARY = ("FACP", "APIC", "HPET", "MCFG", "WAET", "FACS")


def _samples() -> dict[str, bytes]:
    """One real copy of each binary table kind and size (the i440fx FADT is 116 bytes, q35's 244)."""
    out: dict[str, bytes] = {}
    for capture in sorted(CAPTURES.glob("*/raw")) if CAPTURES.is_dir() else []:
        for key in BINARY:
            path = capture / acpi.TABLES / key
            if path.is_file():
                data = path.read_bytes()
                out.setdefault(f"{key}-{len(data)}", data)
    return out


SAMPLES = _samples()
DSDT = next((p.read_bytes() for p in sorted(CAPTURES.glob(f"*/raw/{acpi.TABLES}/DSDT"))), b"")
pytestmark = pytest.mark.skipif(not SAMPLES or not DSDT, reason="no captured ACPI tables")


def _set_length(data: bytearray) -> None:
    if len(data) >= 8:
        data[4:8] = len(data).to_bytes(4, "little")


def _fix_checksum(data: bytearray) -> None:
    if len(data) >= 10:
        data[9] = 0
        data[9] = (-sum(data)) & 0xFF


@st.composite
def mutated(draw: st.DrawFn, tables: dict[str, bytes]) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(tables)))
    data = bytearray(tables[name])
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(("flip", "byte", "word", "truncate", "extend", "insert", "delete")))
        size = len(data)
        if op in ("flip", "byte", "word", "delete") and not size:
            continue
        if op == "flip":
            i = draw(st.integers(0, size - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[draw(st.integers(0, size - 1))] = draw(st.integers(0, 255))
        elif op == "word":
            i = draw(st.integers(0, max(0, size - 4)))
            data[i:i + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
        elif op == "truncate":
            del data[draw(st.integers(0, size)):]
        elif op == "extend":
            data += draw(st.binary(max_size=64))
        elif op == "insert":
            i = draw(st.integers(0, size))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            i = draw(st.integers(0, size - 1))
            del data[i:i + draw(st.integers(1, 16))]
    if draw(st.booleans()):        # most mutations should get past the length check
        _set_length(data)
    if draw(st.booleans()):
        _fix_checksum(data)
    return name, bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SAMPLES))
def test_binary_table_decoders_raise_only_decode_error(case: tuple[str, bytes]) -> None:
    name, data = case
    try:
        entry = acpi.decode_table(Blob(name, data))
    except DecodeError as exc:
        assert exc.file == name
        return
    json.dumps(entry)
    assert entry["header"]["length"] == len(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(sorted(acpi.BODY_DECODERS) + ["FACS", "DSDT", "XXXX"]),
       st.booleans())
def test_random_bytes_under_every_signature(body: bytes, signature: str, fix_length: bool) -> None:
    data = bytearray(signature.encode() + body)
    if fix_length:
        _set_length(data)
    try:
        json.dumps(acpi.decode_table(Blob(signature, bytes(data))))
    except DecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_asl_index_raises_only_decode_error(data: st.DataObject) -> None:
    """The namespace parser on mangled ASL (cheap: no iasl)."""
    text = _asl()
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 400)))
        insert = data.draw(st.sampled_from(["", "{", "}", "(", ")", '"', "/*", "*/", "//", "\n", "^", "\\",
                                            "Device (", "Scope (^^^", "Name (", "Method (X, 0) {"]))
        text = text[:i] + insert + text[j:]
    try:
        json.dumps(aml.index(text, "DSDT", revision=data.draw(st.integers(0, 3))))
    except DecodeError as exc:
        assert exc.file == "DSDT"


_ASL: list[str] = []


def _asl() -> str:
    if not _ASL:
        _ASL.append(aml.disassemble({"DSDT": ("DSDT", DSDT)})["DSDT"])
    return _ASL[0]


@settings(max_examples=6, deadline=None)
@given(st.lists(st.tuples(st.integers(36, len(DSDT) - 1 if DSDT else 36), st.integers(0, 255)),
                min_size=1, max_size=40),
       st.integers(36, len(DSDT) if DSDT else 36))
def test_mutated_aml_raises_only_decode_error(pokes: list[tuple[int, int]], keep: int) -> None:
    """iasl on damaged AML (slow, so only a handful): a result or a DecodeError naming the table."""
    data = bytearray(DSDT[:keep])
    for offset, value in pokes:
        if offset < len(data):
            data[offset] = value
    _set_length(data)
    rel = f"{acpi.TABLES}/DSDT"
    try:
        result = aml.decompile({"DSDT": (rel, bytes(data))})
    except DecodeError as exc:
        assert exc.file == rel
        return
    json.dumps(result)


def test_samples_cover_every_binary_table() -> None:
    assert {name.split("-")[0] for name in SAMPLES} == set(BINARY)
    assert any(name.startswith("FACP-116") for name in SAMPLES) and any(name.startswith("FACP-244")
                                                                        for name in SAMPLES)


def test_fuzz_inputs_exist() -> None:
    assert Path(CAPTURES).is_dir()
