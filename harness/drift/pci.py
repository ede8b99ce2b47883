"""PCI: one entry per function (`DDDD:BB:DD.F`)."""

from __future__ import annotations

import re
from collections import defaultdict
from difflib import SequenceMatcher
from typing import Any

from harness.drift.common import atom_drift, label_of, make_drift, presence_drift
from harness.drift.diffing import Name, canonical, changes, to_int
from harness.drift.model import Drift
from harness.drift.pci_state import runtime_mask

CATEGORY = "pci"
CAP_LISTS = ("capabilities", "extended_capabilities")
# Kept for the report only, or derived from other fields: every `*_name` (and a class's `name`)
# is looked up in pci.ids from ids that are compared themselves.
_DERIVED = {"label", "config_hex"}
_HEADER_END = {0: 0x40, 1: 0x40, 2: 0x80}
_LIST_END = {"capabilities": 0x100}
_SHOWN = 32  # changed config bytes listed in a config_hex drift's old/new


def _derived(key: str) -> bool:
    return key in _DERIVED or key.endswith("_name")


def _subject(key: str, entry: dict[str, Any]) -> str:
    return f"pci {key} {label_of(entry, '')}".rstrip()


def _cap_name(cap: dict[str, Any]) -> str:
    name = cap.get("name")
    return name if isinstance(name, str) and name else str(cap.get("id", "?"))


def _cap_body(cap: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cap.items() if k not in ("id", "name")}


Pair = tuple[dict[str, Any] | None, dict[str, Any] | None]


def _pair_caps(olds: list[dict[str, Any]], news: list[dict[str, Any]]) -> list[Pair]:
    """Capabilities of one id matched across sides: same offset first, then in list order
    (difflib on their content when the counts differ); ordered by offset."""
    pairs: list[Pair] = []
    rest_new = list(news)
    rest_old = []
    for a in olds:
        same = next((b for b in rest_new if b.get("offset") == a.get("offset")), None)
        if same is None:
            rest_old.append(a)
        else:
            rest_new.remove(same)
            pairs.append((a, same))
    if len(rest_old) == len(rest_new):
        pairs.extend(zip(rest_old, rest_new, strict=True))
    else:
        ka = [canonical({k: v for k, v in c.items() if k != "offset"}) for c in rest_old]
        kb = [canonical({k: v for k, v in c.items() if k != "offset"}) for c in rest_new]
        for tag, i1, i2, j1, j2 in SequenceMatcher(None, ka, kb, autojunk=False).get_opcodes():
            if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
                pairs.extend(zip(rest_old[i1:i2], rest_new[j1:j2], strict=True))
            else:
                pairs.extend((c, None) for c in rest_old[i1:i2])
                pairs.extend((None, c) for c in rest_new[j1:j2])

    def offset(pair: Pair) -> int:
        cap = pair[1] if pair[1] is not None else pair[0]
        value = to_int(cap.get("offset")) if cap is not None else None
        return value if value is not None else 1 << 16

    return sorted(pairs, key=offset)


def _key_caps(old: list[Any], new: list[Any]) -> tuple[dict[Name, Any], dict[Name, Any],
                                                        dict[Name, list[int | None]]]:
    """Capabilities keyed by id and occurrence (`MSI-X`, `Vendor Specific#2`), matched across sides.

    Returns both keyed dicts and, per key, the offsets it occupies on either side."""
    groups: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = defaultdict(lambda: ([], []))
    order: list[str] = []
    for side, caps in enumerate((old, new)):
        for cap in caps:
            if not isinstance(cap, dict):
                continue
            ident = str(to_int(cap.get("id")) if to_int(cap.get("id")) is not None else cap.get("id"))
            if ident not in groups:
                order.append(ident)
            groups[ident][side].append(cap)
    out_old: dict[Name, Any] = {}
    out_new: dict[Name, Any] = {}
    offsets: dict[Name, list[int | None]] = {}
    for ident in order:
        olds, news = groups[ident]
        pairs = _pair_caps(olds, news)
        for n, (a, b) in enumerate(pairs, 1):
            name = _cap_name(b if b is not None else a or {})
            key = Name(name if len(pairs) == 1 else f"{name}#{n}")
            offsets[key] = [to_int(c.get("offset")) for c in (a, b) if c is not None]
            if a is not None:
                out_old[key] = _cap_body(a)
            if b is not None:
                out_new[key] = _cap_body(b)
    return out_old, out_new, offsets


def _prepare(entry: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if not _derived(k) and k not in CAP_LISTS}
    cls = out.get("class")
    if isinstance(cls, dict):
        out["class"] = {k: v for k, v in cls.items() if k != "name" and not k.endswith("_name")}
    bars = out.get("bars")
    if isinstance(bars, list) and all(isinstance(b, dict) and isinstance(b.get("index"), int) for b in bars):
        out["bars"] = {b["index"]: {k: v for k, v in b.items() if k != "index"} for b in bars}
    return out


def _hex_bytes(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    text = re.sub(r"0x", "", value)
    text = re.sub(r"[^0-9a-fA-F]", "", text)
    try:
        return bytes.fromhex(text)
    except ValueError:
        return None


def _regions(caps: dict[Name, list[int | None]], list_name: str, config_len: int,
             drifted: set[Name]) -> list[tuple[int, int]]:
    """Byte ranges of the drifted capabilities: from their offset to the next capability's."""
    starts = sorted({o for offs in caps.values() for o in offs if o is not None})
    end = _LIST_END.get(list_name, max(config_len, 0x100))
    out = []
    for key in drifted:
        for off in caps.get(key, []):
            if off is None:
                continue
            later = [s for s in starts if s > off]
            out.append((off, min(later) if later else end))
    return out


def _config_drift(key: str, subject: str, old: dict[str, Any], new: dict[str, Any],
                  drifts: list[Drift], cap_offsets: dict[str, dict[Name, list[int | None]]]) -> Drift | None:
    """One drift for config bytes that changed where no decoded field explains it.

    The header (0x00–0x3f) is decoded field by field and what the fingerprint leaves out there
    is allocation (BAR and ROM addresses, interrupt line, bus numbers); a capability's bytes are
    explained when that capability drifted; bits the guest's drivers program (pci_state) are
    run-time state. Anything else that changed is reported here."""
    a, b = _hex_bytes(old.get("config_hex")), _hex_bytes(new.get("config_hex"))
    if a is None or b is None or a == b:
        return None
    header_type = to_int(new.get("header_type"))
    header_end = _HEADER_END.get(header_type if header_type is not None else 0, 0x40)
    explained: list[tuple[int, int]] = [(0, header_end)]
    for list_name in CAP_LISTS:
        drifted = {k for k in cap_offsets[list_name]
                   if any(d.path.startswith(f"{list_name}[{k}]") for d in drifts)}
        explained += _regions(cap_offsets[list_name], list_name, max(len(a), len(b)), drifted)
    state = runtime_mask((old, new))
    changed = []
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == y or (x is None and y == 0) or (y is None and x == 0):
            continue
        if x is not None and y is not None and not (x ^ y) & ~state.get(i, 0) & 0xff:
            continue
        if not any(lo <= i < hi for lo, hi in explained):
            changed.append((i, x, y))
    size_note = f"config space {len(a)} → {len(b)} bytes" if len(a) != len(b) and not drifts else None
    if not changed and not size_note:
        return None

    def byte(v: int | None) -> str:
        return "--" if v is None else format(v, "02x")

    more = f" (+{len(changed) - _SHOWN} more)" if len(changed) > _SHOWN else ""
    old_text = " ".join(f"{i:#05x}={byte(x)}" for i, x, _ in changed[:_SHOWN]) + more
    new_text = " ".join(f"{i:#05x}={byte(y)}" for i, _, y in changed[:_SHOWN]) + more
    lines = [f"{i:#05x}: {byte(x)} → {byte(y)}" for i, x, y in changed]
    detail = "config bytes no decoded field explains:\n" + "\n".join(lines) if lines else ""
    if size_note:
        detail = (size_note + "\n" + detail).strip()
    return make_drift(CATEGORY, key, subject, "config_hex",
                      old_text or len(a), new_text or len(b), detail=detail)


def _cap_summary(name: str, value: Any) -> str:
    base = name.split("#")[0]
    offset = value.get("offset") if isinstance(value, dict) else None
    return f"{base} capability at {offset}" if offset is not None else f"{base} capability"


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    drifts: list[Drift] = []
    for key in sorted(old.keys() | new.keys()):
        if key not in new or key not in old:
            entry = old.get(key) or new[key]
            drifts.append(presence_drift(CATEGORY, key, _subject(key, entry), label_of(entry, key),
                                         added=key not in old, path="(device)"))
            continue
        o, n = old[key], new[key]
        subject = _subject(key, o)
        a, b = _prepare(o), _prepare(n)
        cap_offsets: dict[str, dict[Name, list[int | None]]] = {}
        for list_name in CAP_LISTS:
            ca, cb, offs = _key_caps(o.get(list_name) or [], n.get(list_name) or [])
            cap_offsets[list_name] = offs
            if list_name in o or list_name in n:
                a[list_name], b[list_name] = ca, cb
        mine: list[Drift] = []
        for atom in changes(a, b):
            if len(atom.parts) == 2 and atom.parts[0] in CAP_LISTS and atom.change != "changed":
                value = atom.new if atom.change == "added" else atom.old
                summary = _cap_summary(str(atom.parts[1]), value)
                mine.append(presence_drift(CATEGORY, key, subject, summary, atom.change == "added",
                                           path=atom.path))
            else:
                mine.append(atom_drift(CATEGORY, key, subject, atom))
        extra = _config_drift(key, subject, o, n, mine, cap_offsets)
        if extra is not None:
            mine.append(extra)
        drifts += mine
    return drifts
