"""Selection: the top-k conversations per pair by gold log-prob, deterministic under ties."""

from __future__ import annotations

import pytest

from star_gate.data.records import Conversation
from star_gate.stages import select_top_k


def scored(task, persona, logprobs):
    return [
        Conversation(task, persona, sample_index=i, target_turns=1, logprob=lp)
        for i, lp in enumerate(logprobs)
    ]


def test_top_1_per_pair_in_pair_order():
    convs = scored("t2", "p1", [-5.0, -1.0, -3.0]) + scored("t1", "p1", [-2.0, -9.0])
    kept = select_top_k(convs, 1)
    assert [(c.pair_id, c.sample_index) for c in kept] == [("t2|p1", 1), ("t1|p1", 0)]


def test_top_k_sorted_best_first():
    convs = scored("t1", "p1", [-5.0, -1.0, -3.0, -2.0])
    assert [c.sample_index for c in select_top_k(convs, 3)] == [1, 3, 2]


def test_interleaved_pairs_are_grouped():
    a, b = scored("t1", "p1", [-1.0, -4.0]), scored("t1", "p2", [-3.0, -2.0])
    kept = select_top_k([a[0], b[0], a[1], b[1]], 1)
    assert [(c.pair_id, c.sample_index) for c in kept] == [("t1|p1", 0), ("t1|p2", 1)]


def test_ties_break_by_sample_index_whatever_the_input_order():
    convs = scored("t1", "p1", [-2.0, -1.0, -1.0, -1.0])
    assert [c.sample_index for c in select_top_k(convs, 2)] == [1, 2]
    assert [c.sample_index for c in select_top_k(convs[::-1], 2)] == [1, 2]


def test_k_larger_than_group_keeps_all():
    convs = scored("t1", "p1", [-2.0, -1.0])
    assert len(select_top_k(convs, 5)) == 2


def test_unscored_conversations_are_refused():
    convs = scored("t1", "p1", [-2.0]) + [Conversation("t1", "p1", sample_index=1, target_turns=1)]
    with pytest.raises(ValueError, match="run the score stage first"):
        select_top_k(convs, 1)


def test_empty():
    assert select_top_k([], 1) == []
