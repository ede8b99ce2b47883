"""Drift: compare two fingerprints and name every device and field that changed.

    comparison = compare(old_fp, new_fp, load_waivers("fingerprints/waivers.toml"))
    comparison.drifts            # most severe first, then subject, then path; waived ones included
    comparison.stale_waivers     # waivers that matched nothing
    comparison.verdict("warn")   # "unchanged" | "drift"
    comparison.only("pci")       # one category (one pytest item per category)

Severity comes from ONE table (policy.py, `policy_rows()`); guest impact (Windows/Linux: none,
driver, device, activation) from ONE table, `IMPACT` (impact.py):

    drift.impact                 # Impact(windows, linux, why); drift.impact.as_dict()
    drift.group                  # the same id on drifts that are the same change on several subjects
    groups(comparison.drifts)    # [DriftGroup(id, members)]: .representative, .subjects
    run_impact(comparison.drifts)  # {"windows": {"level", "components"}, "linux": {...}}, unwaived only

The comparers and policy rows of each category are found through the category registry
(harness/categories.py).
"""

from __future__ import annotations

from harness.lazy import lazy_attributes

# The stage's names, each from its module on first use. The package imports nothing itself: the
# category registry imports the comparers (harness.drift.acpi, …) below it without pulling in the
# engine above it, which reads the registry (tests/test_imports.py keeps the import graph acyclic).
# Code in harness/ imports from the modules themselves.
_MODULES = {
    "harness.drift.engine": ("check_fingerprint", "compare"),
    "harness.drift.impact": ("IMPACT", "LEVELS", "DriftGroup", "Impact", "ImpactRule", "groups", "impact_for",
                             "impact_markdown", "run_impact"),
    "harness.drift.model": ("SEVERITIES", "Comparison", "Drift", "Severity", "Verdict", "at_least"),
    "harness.drift.policy": ("PolicyRule", "policy_markdown", "policy_rows", "rule_for", "severity_for"),
    "harness.drift.waivers": ("DEFAULT_WAIVERS", "Waiver", "Waivers", "load_waivers", "parse_waivers"),
    "harness.fingerprint.decode": ("load_fingerprint",),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

__getattr__ = lazy_attributes(__name__, _LAZY)
