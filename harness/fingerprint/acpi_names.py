r"""ACPI namespace paths in disassembled ASL: the one place that turns a name written in a scope
into a full path, for the AML decoder (aml.py) and the ASL diff (drift/asl.py) alike.

Paths are written as iasl writes them: `\_SB.PCI0.S18` (name segments without their padding
`_`). A name resolves as ACPI resolves it:

- `\X.Y` is absolute; each leading `^` moves one scope up; `X.Y` is relative to the scope;
- a single bare segment used by `Scope (X)` follows the search rules: the nearest enclosing
  scope (the current one first, then each parent up to the root) where `X` is already known;
  if none has it, the current scope. Object definitions (`Device (X)`, `Name (X, …)`) never
  search: they create `X` in the current scope.

`Namespace` holds what is known so far in one table (the predefined root scopes, the table's
`External` declarations and every object defined before this point), so that both stages see
the same objects when they resolve a `Scope`. `mask` blanks strings and comments so that braces
and names are found only in code.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

ROOT = "\\"
PREDEFINED_SCOPES = ("\\_GPE", "\\_PR", "\\_SB", "\\_SI", "\\_TZ")


def norm_path(path: str) -> str:
    r"""`\_SB_.PCI0.S18_` → `\_SB.PCI0.S18` (name segments lose their padding underscores)."""
    segments = [s for s in path.lstrip(ROOT).split(".") if s]
    return ROOT + ".".join(s.rstrip("_") or s for s in segments)


def parent_path(path: str) -> str:
    r"""The enclosing scope of a path (`\` for the root and its children)."""
    p = norm_path(path)
    return p.rsplit(".", 1)[0] if "." in p else ROOT


def last_segment(path: str) -> str:
    return norm_path(path).rsplit(".", 1)[-1].lstrip(ROOT)


def _join(scope: str, name: str) -> str:
    return norm_path(name if scope == ROOT else f"{scope}.{name}")


def resolve(scope: str, name: str, known: Collection[str] | None = None) -> str:
    r"""The full path of `name` used in `scope`; with `known`, a single bare segment follows the
    ACPI search rules (the nearest enclosing scope that has it), as `Scope (X)` does."""
    if name.startswith(ROOT):
        return norm_path(name)
    carets = len(name) - len(name.lstrip("^"))
    for _ in range(carets):
        scope = parent_path(scope)
    name = name[carets:]
    if known is not None and not carets and "." not in name:
        s = scope
        while True:
            candidate = _join(s, name)
            if candidate in known:
                return candidate
            if s == ROOT:
                break
            s = parent_path(s)
    return _join(scope, name)


_EXTERNAL = re.compile(r"\bExternal\s*\(\s*([^\s,()]+)")


@dataclass
class Namespace:
    """The objects known so far in one table, for resolving names the way ACPI does."""

    known: set[str] = field(default_factory=lambda: set(PREDEFINED_SCOPES))

    @classmethod
    def of_table(cls, code: str, also: Iterable[str] = ()) -> Namespace:
        """The namespace at the start of a table: the predefined scopes, the table's `External`
        declarations (`code` with strings and comments masked) and the paths in `also`."""
        ns = cls()
        ns.known.update(resolve(ROOT, m.group(1)) for m in _EXTERNAL.finditer(code))
        ns.known.update(norm_path(p) for p in also)
        return ns

    def define(self, scope: str, name: str) -> str:
        """`name` defined in `scope` (Device, Method, Name, …): its path, now known."""
        path = resolve(scope, name)
        self.known.add(path)
        return path

    def open_scope(self, scope: str, name: str) -> str:
        """The path that `Scope (name)` in `scope` opens (search rules apply), now known."""
        path = resolve(scope, name, self.known)
        self.known.add(path)
        return path


@dataclass
class Frame:
    """One open `{ }` block of an ASL parser."""

    kind: str            # DefinitionBlock, Device, Scope, Method, … or "" for other blocks
    path: str            # the object's path (named blocks) or the enclosing scope (others)
    start: int           # where its statement starts (an offset or a line number)
    in_method: bool = False


_LEXEME = re.compile(r'"(?:[^"\\\n]|\\.)*"|/\*.*?(?:\*/|\Z)|//[^\n]*', re.DOTALL)
# Blanking keeps every character that str.splitlines() breaks on, so lines stay lines.
_NOT_NEWLINE = re.compile(r"[^\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def mask(text: str) -> tuple[str, str]:
    """(code, clean): same length and line breaks as `text`; `code` has string contents and
    comments blanked, `clean` has only comments blanked."""
    code: list[str] = []
    clean: list[str] = []
    pos = 0
    for m in _LEXEME.finditer(text):
        before = text[pos:m.start()]
        code.append(before)
        clean.append(before)
        token = m.group()
        if token.startswith('"'):
            code.append('"' + _NOT_NEWLINE.sub(" ", token[1:-1]) + '"')
            clean.append(token)
        else:
            blank = _NOT_NEWLINE.sub(" ", token)
            code.append(blank)
            clean.append(blank)
        pos = m.end()
    code.append(text[pos:])
    clean.append(text[pos:])
    return "".join(code), "".join(clean)
