"""The drifts that the committed baselines and tests/data/captures give, as JSON.

`python3 tests/golden_drifts.py > tests/data/golden-drifts.json` records them; the test
`test_golden_drifts.py` checks that the code still gives exactly these (a refactoring keeps
verdicts, subjects, paths, values and severities).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CAPTURES = ROOT / "tests" / "data" / "captures"
BASELINES = ROOT / "fingerprints"
VERSIONS = ("5.2", "7.2", "10.0", "11.1")
KEYS = ("category", "subject", "path", "old", "new", "severity", "waived", "change", "key", "detail")


def pairs() -> list[tuple[str, Path, Path]]:
    out = []
    runs = sorted({p.name.split("-", 2)[2] for p in CAPTURES.iterdir() if p.is_dir()})
    for run in runs:
        for old, new in itertools.pairwise(VERSIONS):
            out.append((f"captures {old} -> {new} {run}", CAPTURES / f"qemu-{old}-{run}",
                        CAPTURES / f"qemu-{new}-{run}"))
    bases = sorted(p for p in BASELINES.iterdir() if p.is_dir())
    for old, new in itertools.pairwise(bases):
        for run in sorted(p.parent for p in old.glob("*/*/manifest.json")):
            rel = run.relative_to(old)
            if (new / rel).is_dir():
                out.append((f"baselines {old.name} -> {new.name} {rel}", run, new / rel))
    return out


def record() -> dict[str, Any]:
    from harness.baseline import baseline_capture
    from harness.drift import compare, load_fingerprint, load_waivers

    waivers = load_waivers(BASELINES / "waivers.toml")
    out: dict[str, Any] = {}
    for name, old, new in pairs():
        if name.startswith("baselines"):
            old = baseline_capture(old.parent.parent, old.parent.name, old.name).path
            new = baseline_capture(new.parent.parent, new.parent.name, new.name).path
        comparison = compare(load_fingerprint(old), load_fingerprint(new), waivers)
        out[name] = [{k: d.as_dict()[k] for k in KEYS} for d in comparison.drifts]
    return out


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=1, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")
