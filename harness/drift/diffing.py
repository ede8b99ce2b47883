"""Generic field-level diff of two fingerprint entries, on top of DeepDiff.

Entries are first *aligned*: lists whose items are dicts or lists are matched item to item
with difflib (so an inserted range or list item is one addition, not a shift of every later
index) and turned into dicts keyed by `Pos`; lists of scalars are left to DeepDiff, which aligns
them the same way. Category modules re-key lists that have an identity (PCI BARs by index,
capabilities by id) before calling `changes()`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from harness.drift.model import Change


class Name(str):
    """A dict key that stands for a list item (shown in brackets: `capabilities[MSI-X]`)."""

    __slots__ = ()


@dataclass(frozen=True)
class Pos:
    """A list item after alignment: its index on each side (None where it is absent)."""

    old: int | None
    new: int | None

    def __str__(self) -> str:
        return str(self.new if self.new is not None else self.old)


@dataclass(frozen=True)
class Atom:
    """One changed leaf (or one added/removed subtree) inside an entry."""

    parts: tuple[Any, ...]
    old: Any
    new: Any
    change: Change

    @property
    def path(self) -> str:
        return format_path(self.parts)


def format_path(parts: tuple[Any, ...] | list[Any]) -> str:
    """`('capabilities', Name('MSI-X'), 'fields', 'table_size')` → `capabilities[MSI-X].fields.table_size`."""
    out = ""
    for part in parts:
        if isinstance(part, Name | Pos | int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def canonical(value: Any) -> str:
    return json.dumps(plain(value), sort_keys=True, default=str)


def plain(value: Any) -> Any:
    """Back to JSON-ready data: Pos-keyed dicts become lists, Name and int keys strings."""
    if isinstance(value, dict):
        if value and all(isinstance(k, Pos) for k in value):
            ordered = sorted(value.items(), key=lambda kv: (kv[0].new if kv[0].new is not None else -1,
                                                            kv[0].old if kv[0].old is not None else -1))
            return [plain(v) for _, v in ordered]
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, Name):
        return str(value)
    return value


def _is_container(value: Any) -> bool:
    return isinstance(value, dict | list)


def align(old: Any, new: Any) -> tuple[Any, Any]:
    """Both sides with lists of containers matched item to item (see the module docstring)."""
    if isinstance(old, dict) and isinstance(new, dict):
        a = dict(old)
        b = dict(new)
        for key in old.keys() & new.keys():
            a[key], b[key] = align(old[key], new[key])
        return a, b
    if (isinstance(old, list) and isinstance(new, list)
            and (any(map(_is_container, old)) or any(map(_is_container, new)))):
        ka = [canonical(x) for x in old]
        kb = [canonical(x) for x in new]
        oa: dict[Pos, Any] = {}
        ob: dict[Pos, Any] = {}
        for tag, i1, i2, j1, j2 in SequenceMatcher(None, ka, kb, autojunk=False).get_opcodes():
            if tag == "equal" or (tag == "replace" and i2 - i1 == j2 - j1):
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                    pos = Pos(i, j)
                    oa[pos], ob[pos] = align(old[i], new[j])
            else:
                for i in range(i1, i2):
                    oa[Pos(i, None)] = old[i]
                for j in range(j1, j2):
                    ob[Pos(None, j)] = new[j]
        return oa, ob
    return old, new


# deepdiff looks for these at import and, when they are installed, imports them to hash their types
# (numpy starts OpenBLAS threads, pandas and pydantic take a quarter of a second): the fingerprints
# hold only JSON-ready values, so deepdiff is imported as if they were absent, unless already loaded.
_DEEPDIFF_OPTIONAL = ("numpy", "pandas", "polars", "pydantic", "orjson")
_IMPORTING = threading.Lock()


def _deepdiff() -> tuple[Any, Any]:
    """deepdiff's DeepDiff and its `notpresent` marker, imported without its optional type libraries."""
    import sys

    with _IMPORTING:
        blocked = [] if "deepdiff.diff" in sys.modules else [n for n in _DEEPDIFF_OPTIONAL if n not in sys.modules]
        for name in blocked:
            sys.modules[name] = None  # type: ignore[assignment]  # import of `name` raises ImportError
        try:
            from deepdiff import DeepDiff
            from deepdiff.helper import notpresent
        finally:
            for name in blocked:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]
    return DeepDiff, notpresent


def changes(old: Any, new: Any, prefix: tuple[Any, ...] = ()) -> list[Atom]:
    """Every difference between `old` and `new` as atoms, in path order (none for equal entries: DeepDiff
    is imported only when there is a difference to describe)."""
    if type(old) is type(new) and old == new:
        return []
    DeepDiff, notpresent = _deepdiff()

    a, b = align(old, new)
    tree = DeepDiff(a, b, ignore_order=False, verbose_level=2, view="tree")
    atoms: list[Atom] = []
    for levels in tree.values():
        for level in levels:
            parts = prefix + tuple(level.path(output_format="list"))
            t1, t2 = level.t1, level.t2
            if t1 is notpresent:
                atoms.append(Atom(parts, None, plain(t2), "added"))
            elif t2 is notpresent:
                atoms.append(Atom(parts, plain(t1), None, "removed"))
            else:
                atoms.append(Atom(parts, plain(t1), plain(t2), "changed"))
    atoms.sort(key=lambda atom: atom.path)
    return atoms


def to_int(value: Any) -> int | None:
    """An int from an int or a "0x…"/decimal string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            try:
                return int(value, 16)
            except ValueError:
                return None
    return None
