"""compare(): two fingerprints → a Comparison (drifts, severity, waivers, verdict)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from harness.categories import get, names
from harness.drift import cpuid as cpuid_drift
from harness.drift import uefi as uefi_drift
from harness.drift.impact import assess
from harness.drift.model import Comparison, Drift
from harness.drift.pci_state import comparing
from harness.drift.waivers import Waivers
from harness.errors import QabiError
from harness.fingerprint import load_fingerprint  # noqa: F401 - re-exported by harness.drift

SCHEMA_VERSION = 1


def _name(fp: Any, side: str) -> str:
    source = fp.get("source") if isinstance(fp, dict) else None
    capture = source.get("capture") if isinstance(source, dict) else None
    return f"{side} fingerprint ({capture})" if capture else f"{side} fingerprint"


def check_fingerprint(fp: Any, side: str, categories: Iterable[str] | None = None) -> None:
    """QabiError unless `fp` is a schema-1 fingerprint with every one of `categories`."""
    if not isinstance(fp, dict):
        raise QabiError(f"{side} fingerprint is not a JSON object")
    name = _name(fp, side)
    if fp.get("schema") != SCHEMA_VERSION:
        raise QabiError(f"{name} has schema {fp.get('schema')!r}; this qabi reads schema {SCHEMA_VERSION}")
    for category in names() if categories is None else categories:
        if category not in fp:
            raise QabiError(f"{name} has no {category!r} data: a partial fingerprint is never compared")
        entries = fp[category]
        if not isinstance(entries, dict):
            raise QabiError(f"{name}: {category!r} is not an object keyed by identity")
        for key, entry in entries.items():
            if not isinstance(entry, dict):
                raise QabiError(f"{name}: {category} entry {key!r} is not an object")


def _present(cats: tuple[str, ...], old: Any, new: Any) -> tuple[str, ...]:
    """`cats` without the host-side categories neither fingerprint has; one side only is an error."""
    out = []
    for category in cats:
        if get(category).host_side:
            has = [isinstance(fp, dict) and category in fp for fp in (old, new)]
            if not any(has):
                continue
            if not all(has):
                side = "old" if has[0] else "new"
                raise QabiError(f"only the {side} fingerprint has {category!r} data: a host-side category "
                                "is compared only between two runs that both collected it")
        out.append(category)
    return tuple(out)


# categories that two transports read differently: what of them is compared, and a note on the rest
ACROSS_TRANSPORTS = {"cpuid": cpuid_drift.across_transports, "uefi": uefi_drift.across_transports}


def compare(old: dict[str, Any], new: dict[str, Any], waivers: Waivers | None = None, *,
            categories: Iterable[str] | None = None) -> Comparison:
    """Every guest-visible difference between two fingerprints, most severe first, each with its
    guest impact and group id (set after the waivers: a group never mixes waived and unwaived).

    `categories` restricts the comparison (default: every registered guest-side one, and each
    host-side one that both fingerprints have); only those need to be present. Raises QabiError
    for a fingerprint that is not schema 1 or lacks a compared category, and for a host-side
    category that only one of the two has (never compared as if it were unchanged)."""
    cats = tuple(names() if categories is None else categories)
    if categories is None:
        cats = _present(cats, old, new)
    unknown = [c for c in cats if c not in names()]
    if unknown:
        raise QabiError(f"unknown categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)} "
                        f"(known: {', '.join(names())})")
    check_fingerprint(old, "old", cats)
    check_fingerprint(new, "new", cats)
    drifts: list[Drift] = []
    notes: list[str] = []
    for category in cats:
        try:
            a, b = old[category], new[category]
            if category in ACROSS_TRANSPORTS:   # captures over two transports: what both read
                a, b, transport_notes = ACROSS_TRANSPORTS[category](old, new)
                notes += transport_notes
            with comparing(old, new):
                drifts += get(category).compare(a, b)
        except QabiError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise QabiError(f"cannot compare {category}: malformed fingerprint data "
                            f"({type(exc).__name__}: {exc})") from exc
    stale: list[Any] = []
    if waivers is not None:
        drifts, stale = waivers.apply(drifts, cats)
    drifts = assess(drifts, old, new)
    drifts.sort(key=Drift.sort_key)
    return Comparison(drifts=tuple(drifts), stale_waivers=tuple(stale), categories=cats,
                      waivers_source=waivers.source if waivers is not None else None, notes=tuple(notes))
