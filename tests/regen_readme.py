"""Regenerate the README's generated tables: `python3 tests/regen_readme.py`."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def splice(text: str, name: str, block: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text:
        return text
    head, rest = text.split(begin, 1)
    _old, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block.strip()}\n{end}{tail}"


if __name__ == "__main__":
    from harness.drift import impact_markdown, policy_markdown
    from harness.guest.drivers import drivers_markdown

    readme = ROOT / "README.md"
    text = splice(readme.read_text(), "policy", policy_markdown())
    text = splice(text, "impact", impact_markdown())
    text = splice(text, "drivers", drivers_markdown())
    readme.write_text(text)
