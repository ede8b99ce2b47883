"""A refactoring keeps results: the committed baselines and captures give the drifts recorded
in tests/data/golden-drifts.json (by tests/golden_drifts.py, before the change)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.golden_drifts import pairs, record

GOLDEN = Path(__file__).parent / "data" / "golden-drifts.json"


@pytest.fixture(scope="module")
def now() -> dict[str, list[dict[str, object]]]:
    return record()


def test_every_pair_is_recorded() -> None:
    assert sorted(json.loads(GOLDEN.read_text())) == sorted(name for name, _old, _new in pairs())


def test_same_drifts_as_recorded(now: dict[str, list[dict[str, object]]]) -> None:
    golden = json.loads(GOLDEN.read_text())
    for name, drifts in golden.items():
        assert now[name] == drifts, name
