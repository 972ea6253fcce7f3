"""The bench's comparison of two scoring paths on the same conversations."""

from __future__ import annotations

import pytest

from star_gate.bench import score_drift
from star_gate.data.records import Conversation


def scored(values: dict[str, list[float]]) -> list[Conversation]:
    return [
        Conversation("t1", persona, index, 2, logprob=value)
        for persona, row in values.items()
        for index, value in enumerate(row)
    ]


def test_score_drift_measures_the_differences_and_whether_selection_keeps_the_same():
    present = scored({"p1": [-10.0, -12.0, -11.0], "p2": [-20.0, -20.5, -30.0]})
    # p1's best stays the best; p2's two nearly tied conversations swap.
    new = scored({"p1": [-10.5, -12.5, -11.5], "p2": [-20.5, -20.0, -30.5]})
    drift = score_drift(new, present, top_k=1)
    differences = [-0.5, -0.5, -0.5, -0.5, 0.5, -0.5]
    assert drift["mean"] == pytest.approx(sum(differences) / 6)
    assert drift["sd"] == pytest.approx(0.3727, abs=1e-4)
    assert drift["largest"] == 0.5
    assert (drift["same_kept"], drift["pairs"]) == (1, 2)
    assert score_drift(present, present, top_k=2)["same_kept"] == 2
