"""A capture decoded into a fingerprint: every registered category's decoder over its raw bytes.
This sits above the category registry (harness/categories.py), which sits above the decoders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import QabiError

if TYPE_CHECKING:
    from harness.capture import Capture

SCHEMA_VERSION = 1


def fingerprint_capture(capture: Capture | Path | str, categories: tuple[str, ...] | None = None,
                        host: Path | None = None) -> dict[str, Any]:
    """Decode a capture (a verified `Capture`, or the path of one, verified now) into a fingerprint
    dict with every registered category (or only `categories`). Host-side categories are decoded
    from `host` (a run's host-side directory, harness/migrate.py) when it holds their inputs, and
    left out otherwise; one named in `categories` must be there."""
    from harness.capture import Capture, load_capture
    from harness.categories import get, names

    if not isinstance(capture, Capture):
        capture = load_capture(Path(capture))
    m = capture.manifest
    out: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "source": {"capture": str(capture.path), "build": m["build"], "machine": m["machine"]["asked"],
                   "machine_resolved": m["machine"]["resolved"], "guest": m["profile"]["name"],
                   "profile": m["profile"], "image": m["image"]["sha256"], "accel": m["accel"],
                   "transport": m.get("transport", "serial")},
    }
    for category in names() if categories is None else categories:
        cat = get(category)
        if not cat.host_side and cat.collected is not None and not cat.collected(capture.raw):
            if categories is not None:
                raise QabiError(f"{capture.path}: no {category!r} data (the {out['source']['transport']} "
                                "transport does not collect it)")
            out["source"].setdefault("not_collected", []).append(category)
        elif not cat.host_side:
            out[category] = cat.decode(capture.raw)
        elif host is not None and all((host / r).exists() for r in cat.raw):
            out[category] = cat.decode(host)
        elif categories is not None:
            raise QabiError(f"{capture.path}: no host-side {category!r} data (it comes with --migrate)")
    return out


def load_fingerprint(path: Path | str) -> dict[str, Any]:
    """A fingerprint JSON file, or a capture directory decoded on the spot (the schema and the
    categories are checked where it is compared: harness.drift.compare)."""
    p = Path(path)
    if p.is_dir():
        return fingerprint_capture(p)
    from harness.cache import read_json

    data: Any = read_json(p, "a fingerprint")
    source = data.setdefault("source", {})
    if isinstance(source, dict):
        source.setdefault("capture", str(p))
    return data

