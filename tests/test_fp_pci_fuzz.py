"""Fuzzing the PCI decoder with mutated real config spaces: only DecodeError may escape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fp_pci import CAPTURED_10_0_Q35, _captured

from harness.errors import DecodeError
from harness.fingerprint import pci

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"


def _sample(where: str, config: bytes, resource: bytes) -> tuple[str, bytes, bytes, list[int], list[int]]:
    entry = pci.decode_device(where, config, resource)
    pointers = [0x34] + [int(c["offset"], 16) + 1 for c in entry["capabilities"]]
    ext = [int(c["offset"], 16) for c in entry["extended_capabilities"]]
    return where, config, resource, pointers, ext


def _samples() -> list[tuple[str, bytes, bytes, list[int], list[int]]]:
    """(where, config, resource, standard pointer offsets, extended header offsets) per distinct
    function (the committed captures, plus the root port, bridge and SR-IOV NIC embedded in
    test_fp_pci), functions with the most capabilities first."""
    seen: set[bytes] = set()
    out = [_sample(f"{pci.DEVICES}/{key}", *_captured(key)) for key in CAPTURED_10_0_Q35]
    for manifest in sorted(CAPTURES.glob("*/manifest.json")):
        try:
            if json.loads(manifest.read_text()).get("complete") is not True:
                continue
        except (OSError, ValueError):
            continue
        for dev in sorted((manifest.parent / "raw" / pci.DEVICES).iterdir()):
            config, resource = (dev / "config").read_bytes(), (dev / "resource").read_bytes()
            if config in seen:
                continue
            seen.add(config)
            out.append(_sample(f"{pci.DEVICES}/{dev.name}", config, resource))
    out.sort(key=lambda s: -len(s[3]) - len(s[4]))
    return out


SAMPLES = _samples()
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_error(where: str, config: bytes, resource: bytes) -> dict[str, Any] | None:
    try:
        entry = pci.decode_device(where, config, resource)
    except DecodeError as exc:
        assert exc.file.startswith(where)
        return None
    json.dumps(entry)
    assert bytes.fromhex(entry["config_hex"]) == config
    assert len(entry["capabilities"]) <= pci.STD_CAP_LIMIT
    assert len(entry["extended_capabilities"]) <= pci.EXT_CAP_LIMIT
    return entry


_OPS = st.one_of(
    st.tuples(st.just("pointer"), st.integers(0, 31), st.integers(0, 255)),
    st.tuples(st.just("ext_next"), st.integers(0, 31), st.integers(0, 0xfff)),
    st.tuples(st.just("ext_header"), st.integers(0, 31), st.integers(0, 0xffffffff)),
    st.tuples(st.just("flip"), st.integers(0, 0x3ff), st.integers(0, 7)),
    st.tuples(st.just("byte"), st.integers(0, 0xfff), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 4096), st.just(0)),
)


@FUZZ
@given(st.integers(0, max(len(SAMPLES) - 1, 0)), st.lists(_OPS, min_size=1, max_size=6))
def test_mutated_config_spaces(which: int, ops: list[tuple[str, int, int]]) -> None:
    where, config, resource, pointers, ext = SAMPLES[which]
    data = bytearray(config)
    for op, a, b in ops:
        if op == "pointer":
            at = pointers[a % len(pointers)]
            if at < len(data):
                data[at] = b
        elif op in ("ext_next", "ext_header") and ext:
            at = ext[a % len(ext)]
            if at + 4 <= len(data):
                header = int.from_bytes(data[at:at + 4], "little")
                header = (header & 0xfffff) | b << 20 if op == "ext_next" else b
                data[at:at + 4] = header.to_bytes(4, "little")
        elif op == "flip" and a < len(data):
            data[a] ^= 1 << b
        elif op == "byte" and a < len(data):
            data[a] = b
        elif op == "truncate":
            del data[a:]
    _decode_or_error(where, bytes(data), resource)


@FUZZ
@given(st.integers(0, max(len(SAMPLES) - 1, 0)), st.integers(0, 12), st.binary(max_size=80),
       st.integers(0, 2000))
def test_mutated_resources(which: int, line: int, junk: bytes, cut: int) -> None:
    where, config, resource, _, _ = SAMPLES[which]
    lines = resource.splitlines(keepends=True)
    if line < len(lines):
        lines[line] = junk + b"\n"
    _decode_or_error(where, config, b"".join(lines)[:cut] if cut < 1000 else b"".join(lines))


@FUZZ
@given(st.binary(min_size=0, max_size=300), st.sampled_from([256, 4096, 0]))
def test_random_config_spaces(prefix: bytes, pad: int) -> None:
    """Random headers over a zero-filled space of a real size: walks start from random pointers."""
    data = prefix + bytes(max(pad - len(prefix), 0))
    where, _, resource, _, _ = SAMPLES[0]
    _decode_or_error(where, data, resource)


def test_every_pointer_value_on_every_capability() -> None:
    """Exhaustive: each standard capability pointer of the richest device set to each byte value."""
    where, config, resource, pointers, _ = SAMPLES[0]
    outcomes = {"ok": 0, "error": 0}
    for at in pointers:
        for value in range(256):
            data = bytearray(config)
            data[at] = value
            outcomes["ok" if _decode_or_error(where, bytes(data), resource) is not None else "error"] += 1
    assert outcomes["ok"] and outcomes["error"]
