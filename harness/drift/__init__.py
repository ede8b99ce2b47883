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

from harness.drift.engine import check_fingerprint, compare, load_fingerprint
from harness.drift.impact import (
    IMPACT,
    LEVELS,
    DriftGroup,
    Impact,
    ImpactRule,
    groups,
    impact_for,
    impact_markdown,
    run_impact,
)
from harness.drift.model import SEVERITIES, Comparison, Drift, Severity, Verdict, at_least
from harness.drift.policy import PolicyRule, policy_markdown, policy_rows, rule_for, severity_for
from harness.drift.waivers import DEFAULT_WAIVERS, Waiver, Waivers, load_waivers, parse_waivers

__all__ = [
    "DEFAULT_WAIVERS",
    "IMPACT",
    "LEVELS",
    "SEVERITIES",
    "Comparison",
    "Drift",
    "DriftGroup",
    "Impact",
    "ImpactRule",
    "PolicyRule",
    "Severity",
    "Verdict",
    "Waiver",
    "Waivers",
    "at_least",
    "check_fingerprint",
    "compare",
    "groups",
    "impact_for",
    "impact_markdown",
    "load_fingerprint",
    "load_waivers",
    "parse_waivers",
    "policy_markdown",
    "policy_rows",
    "rule_for",
    "run_impact",
    "severity_for",
]
