r"""AML: decompile DSDT/SSDTs with iasl and index the ASL namespace by device path.

Decompiling: every AML table of a capture is written under a fixed name into one private
temporary directory and disassembled there with `iasl -e <the other AML tables> -d <table>`, so
method calls into other tables resolve (no guessed argument counts). iasl runs with a timeout,
limits on output size, memory and CPU, and a relative file name, so nothing about the host
reaches the text. If the run with external tables fails, the table is disassembled on its own;
if that fails too the table is malformed: DecodeError. The banner comment (tool version, date,
file name, a copy of the header) is dropped: the ASL starts at `DefinitionBlock`.

Indexing: a block parser over the ASL text (strings and comments masked, braces matched) that
resolves `Scope`, nested `Device`, `\` and `^` prefixes and multi-segment names to full paths
by ACPI's rules (acpi_names.py, shared with the ASL diff), written as iasl writes them
(`\_SB.PCI0.S18`: name segments without their padding `_`). Every `Device` (and `Processor`,
`ThermalZone`, `PowerResource`) becomes one entry:

    {"kind": "Device", "hid", "cid", "uid", "adr", "sun": values as printed (EisaId → "PNP0A03",
     strings as they are, integers as hex strings, packages as lists) or None,
     "names": [Name objects of the device, in order], "methods": {name: ASL text},
     "asl": ASL text of the device block, children included}

`names` and `methods` include objects added to the device by a `Scope` block elsewhere in the
same table (they live in the device's namespace); `asl` is the `Device` block itself.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import resource
import subprocess
import tempfile
import textwrap
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cache import memory_scratch
from harness.errors import DecodeError
from harness.fingerprint.acpi_names import ROOT, Frame, Namespace, last_segment, mask, parent_path
from harness.fingerprint.binary import hx
from harness.tools import require

IASL_TIMEOUT = 60.0
MAX_AML = 4 << 20
MAX_ASL = 64 << 20
MAX_LOG_TAIL = 400
IASL_MEMORY = 2 << 30
AML_START = 36
INDEXED = {"Device", "Processor", "ThermalZone", "PowerResource"}
IDENTITY = {"_HID": "hid", "_CID": "cid", "_UID": "uid", "_ADR": "adr", "_SUN": "sun"}

# -- running iasl ---------------------------------------------------------------------------------


def _limits() -> None:  # pragma: no cover - runs in the child
    resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_ASL, MAX_ASL))
    resource.setrlimit(resource.RLIMIT_AS, (IASL_MEMORY, IASL_MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (int(IASL_TIMEOUT) + 5, int(IASL_TIMEOUT) + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


_SERIOUS = re.compile(r"error|could not|not contain|too long|abort", re.IGNORECASE)


def _iasl_error(log: Path) -> tuple[str, int]:
    """iasl's diagnostics for a rejected table, and the table offset it names (else the AML start)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            tail = f.read().decode("ascii", errors="replace")
    except OSError:
        return "no diagnostics", AML_START
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    wanted = [line for line in lines if _SERIOUS.search(line)]
    text = "; ".join(wanted[-3:] or lines[-3:]) or "no diagnostics"
    at = re.search(r"at table offset 0x([0-9A-Fa-f]{1,8})\b", tail)
    return text[:MAX_LOG_TAIL], int(at.group(1), 16) if at else AML_START


def _run_iasl(iasl: str, folder: Path, name: str, externals: list[str], rel: str) -> str | None:
    """The .dsl text of `name` in `folder`, or None if iasl rejected it."""
    out = folder / f"{name}.dsl"
    log = folder / f"{name}.log"
    out.unlink(missing_ok=True)
    argv = [iasl, *(["-e", *externals] if externals else []), "-d", name]
    try:
        with log.open("wb") as sink:
            proc = subprocess.run(argv, check=False, cwd=folder, stdin=subprocess.DEVNULL, stdout=sink,
                                  stderr=sink, timeout=IASL_TIMEOUT, preexec_fn=_limits,
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise DecodeError(rel, AML_START, f"iasl did not finish within {IASL_TIMEOUT:g} s") from None
    if proc.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        return None
    if out.stat().st_size >= MAX_ASL:
        raise DecodeError(rel, AML_START, f"iasl output exceeds {MAX_ASL} bytes")
    return out.read_text(encoding="ascii", errors="backslashreplace")


def _strip_banner(text: str, rel: str) -> str:
    m = re.search(r"^DefinitionBlock\s*\(", text, re.MULTILINE)
    if m is None:
        raise DecodeError(rel, AML_START, "iasl produced no DefinitionBlock")
    return "\n".join(line.rstrip() for line in text[m.start():].splitlines()) + "\n"


def _file_names(keys: list[str]) -> dict[str, str]:
    names: dict[str, str] = {}
    for i, key in enumerate(keys):
        name = re.sub(r"[^A-Za-z0-9]", "_", key)
        names[key] = name if name not in names.values() else f"{name}_{i}"
    return names


def disassemble(tables: dict[str, tuple[str, bytes]]) -> dict[str, str]:
    """{key: ASL text} for {key: (path relative to raw, AML table bytes)}."""
    if not tables:
        return {}
    for rel, data in tables.values():
        if len(data) > MAX_AML:
            raise DecodeError(rel, None, f"{len(data)} bytes of AML (limit {MAX_AML})")
    iasl = require("iasl")
    order = sorted(tables, key=lambda k: (not k.endswith("DSDT"), k.count("/"), k))
    names = _file_names(order)
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="qabi-iasl-", dir=memory_scratch()) as tmp:
        folder = Path(tmp)
        for key in order:
            (folder / names[key]).write_bytes(tables[key][1])
        for key in order:
            rel = tables[key][0]
            others = [names[k] for k in order if k != key]
            text = _run_iasl(iasl, folder, names[key], others, rel) if others else None
            if text is None:
                text = _run_iasl(iasl, folder, names[key], [], rel)
            if text is None:
                reason, offset = _iasl_error(folder / f"{names[key]}.log")
                raise DecodeError(rel, offset, f"iasl cannot disassemble the AML: {reason}")
            out[key] = _strip_banner(text, rel)
    return out


# -- values of Name() -----------------------------------------------------------------------------

_INT = re.compile(r"0[xX][0-9A-Fa-f]+|[0-9]+")
_EISAID = re.compile(r'EisaId\s*\(\s*"([^"]*)"\s*\)')
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_PACKAGE = re.compile(r"(?:Var)?Package\s*\([^()]*\)\s*\{(.*)\}", re.DOTALL)


def _split_items(text: str) -> list[str]:
    items: list[str] = []
    depth, start, quoted, i = 0, 0, False, 0
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c in "({":
            depth += 1
        elif c in ")}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
        i += 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def value(text: str, ones: int) -> Any:
    """A Name() value as printed: EisaId("X") and "X" → "X", integers → hex strings, Package →
    list; anything else → its text with whitespace collapsed."""
    t = " ".join(text.split())
    if m := _EISAID.fullmatch(t):
        return m.group(1)
    if m := _STRING.fullmatch(t):
        return m.group(1)
    if _INT.fullmatch(t):
        return hx(int(t, 0) if t.lower().startswith("0x") else int(t))
    if t in ("Zero", "One", "Ones"):
        return hx({"Zero": 0, "One": 1, "Ones": ones}[t])
    if m := _PACKAGE.fullmatch(t):
        return [value(item, ones) for item in _split_items(m.group(1))]
    return t


# -- the block parser -----------------------------------------------------------------------------

_HEADER = re.compile(r"\s*(DefinitionBlock|Device|Scope|Processor|ThermalZone|PowerResource|Method)\s*\("
                     r"\s*([^\s,()]*)")
_EVENT = re.compile(r"[{}]|\bName\s*\(")
_PARENS = re.compile(r"[()]")


@dataclass
class _Object:
    names: list[tuple[str, str]] = field(default_factory=list)   # (segment, value text)
    methods: dict[str, str] = field(default_factory=dict)


def _statement_start(code: str, brace: int, floor: int) -> int:
    """The start of the line where the statement that this `{` opens begins."""
    depth, seen, i = 0, False, brace - 1
    while i >= floor:
        c = code[i]
        if c == ")":
            depth += 1
        elif c == "(":
            depth -= 1
        elif c == "\n" and depth <= 0 and seen:
            return i + 1
        if not c.isspace():
            seen = True
        i -= 1
    return code.rfind("\n", 0, floor) + 1


def _close_paren(code: str, open_at: int, rel: str) -> int:
    depth = 0
    for m in _PARENS.finditer(code, open_at):
        depth += 1 if m.group() == "(" else -1
        if depth == 0:
            return m.start()
    raise DecodeError(rel, AML_START, "unbalanced parentheses in the disassembled ASL")


def _block(text: str, start: int, end: int) -> str:
    return textwrap.dedent(text[start:end]).strip("\n")


def index(asl: str, rel: str, revision: int) -> dict[str, dict[str, Any]]:
    """{device path: entry} for the ASL text of one table (see the module docstring)."""
    code, clean = mask(asl)
    ones = 0xFFFFFFFF if revision < 2 else 0xFFFFFFFFFFFFFFFF
    namespace = Namespace.of_table(code)
    stack: list[Frame] = []
    objects: dict[str, _Object] = {}
    devices: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    floor = 0

    def scope_now() -> str:
        return stack[-1].path if stack else ROOT

    for m in _EVENT.finditer(code):
        token = m.group()
        if token == "{":
            start = _statement_start(code, m.start(), floor)
            header = _HEADER.match(code, start, m.start())
            in_method = bool(stack) and stack[-1].in_method
            kind, path = "", scope_now()
            if header is not None:
                kind, name = header.group(1), header.group(2)
                if kind == "DefinitionBlock":
                    path = ROOT
                elif name:
                    path = (namespace.open_scope if kind == "Scope" else namespace.define)(scope_now(), name)
                    if kind in INDEXED and not in_method and path not in order:
                        order.append(path)
            stack.append(Frame(kind, path, start, in_method or kind == "Method"))
            floor = m.end()
        elif token == "}":
            if not stack:
                raise DecodeError(rel, AML_START, "unbalanced braces in the disassembled ASL")
            frame = stack.pop()
            floor = m.end()
            if frame.in_method and frame.kind != "Method":
                continue
            if frame.kind == "Method":
                if not (stack and stack[-1].in_method):
                    obj = objects.setdefault(parent_path(frame.path), _Object())
                    seg = last_segment(frame.path)
                    text = _block(asl, frame.start, m.end())
                    obj.methods[seg] = obj.methods[seg] + "\n" + text if seg in obj.methods else text
            elif frame.kind in INDEXED:
                text = _block(asl, frame.start, m.end())
                if frame.path in devices:
                    devices[frame.path]["asl"] += "\n" + text
                else:
                    devices[frame.path] = {"kind": frame.kind, "asl": text}
        else:
            if stack and stack[-1].in_method:
                continue
            open_at = m.end() - 1
            close = _close_paren(code, open_at, rel)
            comma = code.find(",", open_at, close)
            if comma < 0:
                continue
            target = code[open_at + 1:comma].strip()
            if not target:
                continue
            path = namespace.define(scope_now(), target)
            objects.setdefault(parent_path(path), _Object()).names.append(
                (last_segment(path), clean[comma + 1:close]))
    if stack:
        raise DecodeError(rel, AML_START, "unbalanced braces in the disassembled ASL")

    out: dict[str, dict[str, Any]] = {}
    for path in order:
        obj = objects.get(path, _Object())
        entry: dict[str, Any] = {"kind": devices[path]["kind"]}
        for key in IDENTITY.values():
            entry[key] = None
        names: list[str] = []
        for seg, text in obj.names:
            if seg in IDENTITY and entry[IDENTITY[seg]] is None:
                entry[IDENTITY[seg]] = value(text, ones)
            if seg not in names:
                names.append(seg)
        entry["names"] = names
        entry["methods"] = dict(obj.methods)
        entry["asl"] = devices[path]["asl"]
        out[path] = entry
    return out


_DECOMPILED: dict[str, dict[str, tuple[str, dict[str, dict[str, Any]]]]] = {}
_DECOMPILED_MAX = 64
_DECOMPILED_LOCK = threading.Lock()


def decompile(tables: dict[str, tuple[str, bytes]]) -> dict[str, tuple[str, dict[str, dict[str, Any]]]]:
    """{key: (ASL text, devices)} for {key: (path relative to raw, AML table bytes)}.

    The same tables (by key and bytes: the old and new side of a run whose ACPI did not change, the
    same capture decoded twice, with the same iasl and limits) are decompiled once per process; each
    caller gets its own copy."""
    digest = hashlib.sha256(f"{require('iasl')}\0{IASL_TIMEOUT}\0".encode())
    for key in sorted(tables):
        digest.update(f"{key}\0{len(tables[key][1])}\0".encode())
        digest.update(tables[key][1])
    memo = digest.hexdigest()
    with _DECOMPILED_LOCK:
        done = _DECOMPILED.get(memo)
    if done is None:
        texts = disassemble(tables)
        done = {key: (text, index(text, tables[key][0], tables[key][1][8])) for key, text in texts.items()}
        with _DECOMPILED_LOCK:
            if len(_DECOMPILED) >= _DECOMPILED_MAX:
                _DECOMPILED.pop(next(iter(_DECOMPILED)))
            _DECOMPILED[memo] = done
    return copy.deepcopy(done)
