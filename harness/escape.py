"""Text from a guest, a file or a user made safe for a terminal: the one escaper of control
characters (errors, progress lines, reports)."""

from __future__ import annotations

import re

_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def escape_controls(text: str, keep: str = "\t") -> str:
    r"""`text` with every C0/C1 control character (and DEL) except those in `keep` written as
    `\xNN`: safe to print to a terminal. Error messages keep "\n" and "\t"; a report line keeps
    only the tab (a newline inside one line is guest text)."""
    return _CONTROLS.sub(lambda m: m.group() if m.group() in keep else f"\\x{ord(m.group()):02x}", text)
