"""The guest-visible ABI check: one item per (machine type, guest profile, category).

Run `pytest harness/` (embedded default: debian:bookworm-security -> debian:bookworm on
pc-i440fx-7.2 and pc-q35-7.2, every profile), or choose with --qemu-old/--qemu-new/--baseline,
--machine, --guest, --accel, --waivers, --fail-on, --report. See harness/plugin.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.plugin import failure_message, qabi_session


def test_guest_abi(request: pytest.FixtureRequest, qabi_case: tuple[str, str, str], qabi_run: Any) -> None:
    _machine, _guest, category = qabi_case
    message = failure_message(qabi_session(request.config), qabi_run, category)
    if message:
        pytest.fail(message, pytrace=False)
