"""Just enough ASL structure to attribute a change to the innermost device whose own text changed.

iasl's disassembly is regular: `Device (NAME)` or `Scope (NAME)` on one line, its `{` on the
next, its `}` on a line of its own. We track braces (outside strings and comments) and the
namespace path of every Device and Scope block, resolved by the same rules as the AML decoder
(harness/fingerprint/acpi_names.py), then:

- a device's *own* ASL is its block without the blocks of child devices the fingerprint indexes
  (those are compared on their own) and without its `Name (_HID|_CID|_UID|_ADR, …)` statements
  (reported as their own drifts);
- `Scope (DEVICE)` blocks elsewhere in the table that add to an indexed device (QEMU's PCI
  hotplug methods in `Scope (_SB.PCI0)`) count as that device's own ASL too;
- a table's own ASL is its text without the disassembler's leading comment, the
  `DefinitionBlock` line (the header is compared field by field), the indexed device blocks
  and the Scope blocks attributed to them.

Blank lines, trailing blanks and Scope blocks left empty are dropped so that removing a block
leaves no trace.
"""

from __future__ import annotations

import difflib
import re
import textwrap
from collections.abc import Collection
from dataclasses import dataclass, field

from harness.fingerprint.acpi_names import ROOT, Frame, Namespace, mask, norm_path, parent_path

_HEADER = re.compile(r"^\s*(Device|Scope|Processor|ThermalZone|PowerResource|Method)\s*\(\s*([^\s,()]+)")
_NAME = re.compile(r"\bName\s*\(\s*([^\s,()]+)\s*,")
_IDENTITY_NAME = re.compile(r"^\s*Name\s*\(\s*(_HID|_CID|_UID|_ADR)_*\s*,")
_DEFINITION_BLOCK = re.compile(r"^\s*DefinitionBlock\s*\(")
_STRUCTURE = re.compile(r"[{}()]")


@dataclass
class _Parsed:
    lines: list[str]
    devices: list[tuple[str, int, int]] = field(default_factory=list)    # path, first line, last line
    scopes: list[tuple[str, int, int]] = field(default_factory=list)     # path, first line, last line
    identity: list[tuple[str, int, int]] = field(default_factory=list)   # device path, first, last


def _parse(text: str, base: str = ROOT, known: Collection[str] = ()) -> _Parsed:
    """Line spans of Device and Scope blocks and of the identity Names of devices. Paths resolve
    as the AML decoder resolves them (acpi_names.py): `text` is a whole table, or a block that
    sits in scope `base` of a table whose objects include `known`."""
    parsed = _Parsed(text.splitlines())
    code = mask(text)[0]
    namespace = Namespace.of_table(code, known)
    stack: list[Frame] = []
    pending: Frame | None = None
    identity: tuple[str, int, int] | None = None   # device path, first line, open parens/braces
    for n, line in enumerate(code.splitlines()):
        scope = stack[-1].path if stack else base
        in_method = bool(stack) and stack[-1].in_method
        if m := _HEADER.match(line):
            kind = m.group(1)
            path = (namespace.open_scope if kind == "Scope" else namespace.define)(scope, m.group(2))
            pending = Frame(kind, path, n, in_method or kind == "Method")
        elif identity is None and stack and stack[-1].kind == "Device" and _IDENTITY_NAME.match(line):
            identity = (stack[-1].path, n, 0)
        if not in_method:
            for name in _NAME.finditer(line):
                namespace.define(scope, name.group(1))
        for t in _STRUCTURE.findall(line):
            if identity is not None:
                identity = (identity[0], identity[1], identity[2] + (1 if t in "({" else -1))
            if t == "{":
                stack.append(pending or Frame("", scope, n, in_method))
                pending = None
            elif t == "}" and stack:
                frame = stack.pop()
                if frame.kind == "Device":
                    parsed.devices.append((frame.path, frame.start, n))
                elif frame.kind == "Scope":
                    parsed.scopes.append((frame.path, frame.start, n))
        if identity is not None and identity[2] <= 0:
            parsed.identity.append((identity[0], identity[1], n))
            identity = None
    return parsed


def _keep(parsed: _Parsed, drop: list[tuple[int, int]], first: int = 0, last: int | None = None) -> str:
    gone: set[int] = set()
    for lo, hi in drop:
        gone.update(range(lo, hi + 1))
    end = len(parsed.lines) - 1 if last is None else last
    kept = [parsed.lines[i].rstrip() for i in range(first, end + 1) if i not in gone]
    return "\n".join(_drop_empty_scopes([line for line in kept if line.strip()]))


_SCOPE_LINE = re.compile(r"^\s*Scope\s*\([^)]*\)\s*(//.*)?$")


def _drop_empty_scopes(lines: list[str]) -> list[str]:
    """Remove `Scope (X) { }` left empty once the blocks inside it were taken out."""
    out: list[str] = []
    for line in lines:
        out.append(line)
        while (len(out) >= 3 and out[-1].strip() == "}" and out[-2].strip() == "{"
               and _SCOPE_LINE.match(out[-3])):
            del out[-3:]
    return out


def device_own_text(asl: str, path: str, known: Collection[str]) -> str:
    """The device's own ASL: its block without indexed child devices and identity Names."""
    me = norm_path(path)
    known_norm = {norm_path(k) for k in known}
    parsed = _parse(asl, parent_path(me), known_norm)
    mine = [(lo, hi) for p, lo, hi in parsed.devices if p == me]
    first, last = max(mine, key=lambda span: span[1] - span[0]) if mine else (0, len(parsed.lines) - 1)
    drop = [(lo, hi) for p, lo, hi in parsed.devices
            if p != me and p in known_norm and first <= lo and hi <= last]
    drop += [(lo, hi) for p, lo, hi in parsed.identity if p == me]
    return _keep(parsed, drop, first, last)


def split_table(asl: str, known: Collection[str]) -> tuple[str, dict[str, str]]:
    """The table's own ASL, and per indexed device the text of `Scope (DEVICE)` blocks that add
    to it from outside its Device block (QEMU puts PCI hotplug methods in `Scope (_SB.PCI0)`).

    The table's own ASL leaves out the disassembler's leading comment, the DefinitionBlock line
    (the header is compared field by field), indexed device blocks and those Scope blocks."""
    text = asl
    stripped = text.lstrip()
    if stripped.startswith("/*") and "*/" in stripped:
        text = stripped[stripped.index("*/") + 2:]
    known_norm = {norm_path(k) for k in known}
    parsed = _parse(text)
    owned = [(p, lo, hi) for p, lo, hi in parsed.devices + parsed.scopes if p in known_norm]
    drop = [(lo, hi) for _, lo, hi in owned]
    drop += [(n, n) for n, line in enumerate(parsed.lines) if _DEFINITION_BLOCK.match(line)]
    extensions: dict[str, list[str]] = {}
    for path, lo, hi in parsed.scopes:
        if path not in known_norm:
            continue
        inner = [(a, b) for p, a, b in owned if lo < a and b <= hi and (a, b) != (lo, hi)]
        part = textwrap.dedent(_keep(parsed, inner, lo, hi))
        if part:
            extensions.setdefault(path, []).append(part)
    return _keep(parsed, drop), {p: "\n".join(parts) for p, parts in extensions.items()}


def table_own_text(asl: str, known: Collection[str]) -> str:
    """The table's ASL outside the indexed devices (and Scope blocks extending them)."""
    return split_table(asl, known)[0]


def unified(old: str, new: str, label: str, context: int = 3) -> str:
    return "\n".join(difflib.unified_diff(old.splitlines(), new.splitlines(), f"old {label}", f"new {label}",
                                          n=context, lineterm=""))
