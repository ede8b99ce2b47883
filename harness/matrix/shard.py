"""Sharding: `--shard I/N` takes a deterministic slice of a check's runs for CI runner I of N.

The slice is a function of the run list alone (no clock, no host, no cache state), so every
runner computes the same partition. Runs are balanced by expected cost: a per-transport boot
cost scaled by the profile's device count, then assigned greedily, most expensive first, to the
least loaded shard (ties: the lower shard number, then the run's name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from harness.errors import QabiError

Shard = tuple[int, int]
_SHARD = re.compile(r"(\d+)/(\d+)")

# Seconds per capture side, measured order of magnitude on a 2-core TCG host (docs/measurements.md).
TRANSPORT_COST = {"firmware": 1.5, "serial": 8.0, "ssh": 15.0}
UEFI_BOOT_COST = 5.0    # OVMF (Secure Boot, SMM) to the EFI probe under TCG: 2.6 s idle, 8-13 s on a busy host
DECODE_COST = 1.0      # fingerprint + compare of one run (iasl dominates)


def parse_shard(text: str | None) -> Shard | None:
    """`I/N` (1 ≤ I ≤ N) → (I, N); None/"" → None; anything else a one-line QabiError."""
    if not text:
        return None
    m = _SHARD.fullmatch(text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise QabiError(f"--shard {text!r}: expected I/N with 1 <= I <= N (e.g. 2/3)")
    return int(m.group(1)), int(m.group(2))


def check_shard(shard: Shard | None) -> None:
    if shard is not None and not (isinstance(shard, tuple) and len(shard) == 2 and 1 <= shard[0] <= shard[1]):
        raise QabiError(f"shard {shard!r}: expected (I, N) with 1 <= I <= N")


def profile_cost(guest: str, transport: str) -> float:
    """Expected seconds of one run of `guest` over `transport` (both sides plus the decode)."""
    from harness.guest.profile import load_profile

    try:
        profile = load_profile(guest)
    except QabiError:
        return DECODE_COST     # an unloadable profile fails fast: it costs little
    base = TRANSPORT_COST.get(transport, TRANSPORT_COST["serial"])
    if profile.uefi:
        base = max(base, UEFI_BOOT_COST)
    return 2 * base * (1 + 0.1 * len(profile.devices)) + DECODE_COST


def assign(cases: Sequence[tuple[str, str]], shards: int,
           cost: Callable[[tuple[str, str]], float]) -> list[int]:
    """The shard (1-based) of each case: greedy longest-first onto the least loaded shard."""
    order = sorted(range(len(cases)), key=lambda i: (-cost(cases[i]), cases[i]))
    loads = [0.0] * shards
    out = [0] * len(cases)
    for i in order:
        target = min(range(shards), key=lambda s: (loads[s], s))
        loads[target] += cost(cases[i])
        out[i] = target + 1
    return out


def select(cases: Sequence[tuple[str, str]], shard: Shard | None, transport: str = "serial") -> list[tuple[str, str]]:
    """The cases of shard I/N, in their original order (all of them without a shard)."""
    if shard is None:
        return list(cases)
    check_shard(shard)
    index, total = shard
    costs: dict[str, float] = {}

    def cost(case: tuple[str, str]) -> float:
        if case[1] not in costs:
            costs[case[1]] = profile_cost(case[1], transport)
        return costs[case[1]]

    owners = assign(cases, total, cost)
    return [case for case, owner in zip(cases, owners, strict=True) if owner == index]
