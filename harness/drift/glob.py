"""The one glob syntax qabi uses for policy rows and waivers.

`*` matches any run of characters (dots and slashes included), `?` matches one character,
`{a,b,c}` matches any of the alternatives (which may themselves contain globs, and may be empty:
`class{,.*}`). Every other character is literal — square brackets too, because subjects and
paths contain them (`pci 0000:00:05.0 [1af4:1005] Virtio RNG`, `capabilities[MSI-X].offset`).

Globs come from hostile files (waivers), so matching never expands braces and never backtracks:
a glob compiles to a small automaton (one state per character, star and brace group) that reads
the text once, keeping the set of states it can be in — time linear in the text for a glob of
bounded size (MAX_GLOB characters, braces nested at most MAX_DEPTH deep; `glob_problem` refuses
larger ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

MAX_GLOB = 1024     # characters
MAX_DEPTH = 8       # braces inside braces

# what a catch-all is decided by: subjects and paths of every category as qabi writes them, and
# strings no drift has (empty, odd characters); a glob that matches all of either set waives everything
SUBJECT_PROBES = (
    "pci 0000:00:03.0 [1af4:1000] Virtio network device",
    "pci 0000:00:1f.2 [8086:2922] 82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode]",
    "cpuid leaf 0x80000001 edx bit 11 (syscall)", "cpuid leaf 0x1 ecx bit 15 (pdcm)", "acpi DSDT \\_SB.PCI0.S18",
    "acpi APIC", "acpi FACP", "smbios type 1 System Information", "smbios entry point", "e820", "e820 range 3",
    "migration vmstate", "vmstate virtio-net", "props virtio-net-pci", "profile device qxl-vga (device)",
    "registers 0000:00:04.0 virtio block device", "fw_cfg etc/boot/kernel", "uefi keys/db", "hyperv vcpu0")
PATH_PROBES = ("config_hex", "header.revision", "asl", "edx[11]", "fields.bios_version", "pointers.table_address",
               "capabilities[MSI-X].offset", "bars[0].size", "ranges[2].type", "present", "fields.version_id",
               "props.x-pcie-err-unc-mask")
ODD_PROBES = ("", "x", "0", " ", "*", "?", "{", "}", ",", "\\", "\n", "\x00", "\t\r", "é", "\u2603\U0001f600",
              "'\"`$(){}[]<>|;&!#%^~", "a" * 300, "-- --", "\\\\?\\C:")


@dataclass(frozen=True)
class Glob:
    """A compiled glob: `states[i]` is (kind, char, next states); kind `c` reads `char`, `?` any one
    character, `*` any character and stays, `|` reads nothing (a brace's alternatives), `$` accepts."""

    states: tuple[tuple[str, str, tuple[int, ...]], ...]
    start: int

    def match(self, text: str) -> bool:
        """Whether the whole of `text` matches: one pass, the set of live states per character."""
        live = self._closure((self.start,))
        for ch in text:
            step: list[int] = []
            for s in live:
                kind, char, nexts = self.states[s]
                if kind == "*":
                    step.append(s)
                elif kind == "?" or (kind == "c" and char == ch):
                    step.extend(nexts)
            if not step:
                return False
            live = self._closure(step)
        return any(self.states[s][0] == "$" for s in live)

    def _closure(self, states: tuple[int, ...] | list[int]) -> frozenset[int]:
        """`states` and every state reachable from them without reading (brace splits, zero-width stars)."""
        seen: set[int] = set()
        todo = list(states)
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            kind, _char, nexts = self.states[s]
            if kind in "|*":
                todo.extend(nexts)
        return frozenset(seen)


Item = tuple[str, str, list[list["Item"]]]   # (kind c/?/*/{, char, alternatives of a brace)


def _parse(pattern: str, start: int, in_brace: bool, depth: int) -> tuple[list[Item], int]:
    """The items of pattern[start:], up to an unnested `}` (or `,` inside braces)."""
    items: list[Item] = []
    i = start
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if not (items and items[-1][0] == "*"):
                items.append(("*", "", []))
        elif c == "?":
            items.append(("?", "", []))
        elif c == "{" and _closing_brace(pattern, i) is not None:
            alternatives: list[list[Item]] = []
            i += 1
            while True:
                alternative, i = _parse(pattern, i, True, depth + 1)
                alternatives.append(alternative)
                if pattern[i] == "}":
                    break
                i += 1  # skip the comma
            items.append(("{", "", alternatives))
        elif in_brace and c in ",}":
            return items, i
        else:
            items.append(("c", c, []))
        i += 1
    return items, i


def _closing_brace(pattern: str, start: int) -> int | None:
    depth = 0
    for i in range(start, len(pattern)):
        if pattern[i] == "{":
            depth += 1
        elif pattern[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def glob_problem(pattern: str) -> str | None:
    """Why `pattern` is not a glob qabi takes (an unbalanced brace, too long, braces nested too
    deeply), or None."""
    if len(pattern) > MAX_GLOB:
        return f"over {MAX_GLOB} characters"
    depth = 0
    for c in pattern:
        if c == "{":
            depth += 1
            if depth > MAX_DEPTH:
                return f"braces nested over {MAX_DEPTH} deep"
        elif c == "}":
            depth -= 1
            if depth < 0:
                return "a '}' without its '{'"
    return "a '{' without its '}'" if depth else None


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> Glob:
    """The automaton for `pattern` (braces compiled, never expanded)."""
    problem = glob_problem(pattern)
    if problem and not problem.startswith("a '"):      # unbalanced braces are literal; size is bounded
        raise ValueError(f"glob {pattern[:80]!r}: {problem}")
    items, _ = _parse(pattern, 0, False, 0)
    states: list[tuple[str, str, tuple[int, ...]]] = [("$", "", ())]

    def build(seq: list[Item], follow: int) -> int:
        for kind, char, alternatives in reversed(seq):
            if kind == "{":
                starts = tuple(build(alt, follow) for alt in alternatives)
                states.append(("|", "", starts))
            else:
                states.append((kind, char, (follow,)))
            follow = len(states) - 1
        return follow

    start = build(items, 0)
    return Glob(tuple(states), start)


def glob_match(pattern: str, text: str) -> bool:
    """Whether the whole of `text` matches `pattern`."""
    return compile_glob(pattern).match(text)


def matches_everything(pattern: str, probes: tuple[str, ...]) -> bool:
    """`pattern` matches every string, as far as a waiver can tell: every one of `probes` (what qabi's
    drifts look like: SUBJECT_PROBES, PATH_PROBES, the category names), or every non-empty string of
    ODD_PROBES. Decided by what the glob matches,
    never by how it is spelled (`*`, `{*}`, `?*`, `{,?*}` all match everything)."""
    glob = compile_glob(pattern)
    return all(glob.match(p) for p in probes) or all(glob.match(p) for p in ODD_PROBES if p)
