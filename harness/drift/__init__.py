"""Drift: compare two fingerprints and name every device and field that changed.

    comparison = compare(old_fp, new_fp, load_waivers("fingerprints/waivers.toml"))
    comparison.drifts            # most severe first, then subject, then path; waived ones included
    comparison.stale_waivers     # waivers that matched nothing
    comparison.verdict("warn")   # "unchanged" | "drift"
    comparison.only("pci")       # one category (one pytest item per category)

Severity comes from ONE table (policy.py, `policy_rows()`); the comparers and the policy rows of
each category are found through the category registry (harness/categories.py).
"""

from __future__ import annotations

from harness.drift.engine import check_fingerprint, compare, load_fingerprint
from harness.drift.model import SEVERITIES, Comparison, Drift, Severity, Verdict, at_least
from harness.drift.policy import PolicyRule, policy_markdown, policy_rows, rule_for, severity_for
from harness.drift.waivers import DEFAULT_WAIVERS, Waiver, Waivers, load_waivers, parse_waivers

__all__ = [
    "DEFAULT_WAIVERS", "SEVERITIES", "Comparison", "Drift", "PolicyRule", "Severity",
    "Verdict", "Waiver", "Waivers", "at_least", "check_fingerprint", "compare", "load_fingerprint",
    "load_waivers", "parse_waivers", "policy_markdown", "policy_rows", "rule_for", "severity_for",
]
