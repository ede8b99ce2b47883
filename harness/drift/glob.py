"""The one glob syntax qabi uses for policy rows and waivers.

`*` matches any run of characters (dots and slashes included), `?` matches one character,
`{a,b,c}` matches any of the alternatives (which may themselves contain globs, and may be empty:
`class{,.*}`). Every other character is literal — square brackets too, because subjects and
paths contain them (`pci 0000:00:05.0 [1af4:1005] Virtio RNG`, `capabilities[MSI-X].offset`).
"""

from __future__ import annotations

import re
from functools import lru_cache


def _translate(pattern: str, start: int, stop_at_comma: bool) -> tuple[str, int]:
    """Regex source for pattern[start:], up to an unnested `}` (or `,` inside braces)."""
    out: list[str] = []
    i = start
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            while i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "{" and _closing_brace(pattern, i) is not None:
            alternatives: list[str] = []
            i += 1
            while True:
                source, i = _translate(pattern, i, True)
                alternatives.append(source)
                if pattern[i] == "}":
                    break
                i += 1  # skip the comma
            out.append("(?:" + "|".join(alternatives) + ")")
        elif stop_at_comma and c in ",}":
            return "".join(out), i
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out), i


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
    """Why `pattern` is not a well-formed glob (an unbalanced brace), or None."""
    depth = 0
    for c in pattern:
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                return "a '}' without its '{'"
    return "a '{' without its '}'" if depth else None


def matches_everything(pattern: str) -> bool:
    """`pattern` is only stars (`*`, `**`…): it matches any text."""
    return bool(pattern) and not pattern.strip("*")


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The compiled, anchored regular expression for `pattern`."""
    source, _ = _translate(pattern, 0, False)
    return re.compile(r"\A" + source + r"\Z", re.DOTALL)


def glob_match(pattern: str, text: str) -> bool:
    """Whether the whole of `text` matches `pattern`."""
    return compile_glob(pattern).match(text) is not None
