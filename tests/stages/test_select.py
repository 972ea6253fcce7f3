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


def test_turn_cost_prefers_the_conversation_that_asks_less_for_as_much(dataset):
    from star_gate.stages import select_preference_pairs

    def asked(c, n):
        for _ in range(n):
            c = c.with_turn("questioner", "Q?").with_turn("roleplayer", "A.")
        return c

    short, long_ = scored("t1", "p1", [-10.0, -9.0])
    convs = [asked(short, 1), asked(long_, 3)]  # the long one is 1 nat better, for 2 more questions
    assert [c.sample_index for c in select_top_k(convs, 1)] == [1]
    assert [c.sample_index for c in select_top_k(convs, 1, turn_cost=0.4)] == [1]  # 1.0 > 0.8
    assert [c.sample_index for c in select_top_k(convs, 1, turn_cost=0.6)] == [0]  # 1.0 < 1.2
    pair = select_preference_pairs(convs, 1, turn_cost=0.6)
    assert [c.sample_index for c in pair] == [0, 1]


def test_min_score_drops_pairs_whose_best_did_no_good():
    convs = scored("t1", "p1", [0.0, 0.0, 0.0]) + scored("t2", "p1", [0.0, 0.5, 0.25])
    kept = select_top_k(convs, 2, min_score=0.01)
    assert [(c.pair_id, c.sample_index) for c in kept] == [("t2|p1", 1), ("t2|p1", 2)]
    assert len(select_top_k(convs, 1)) == 2, "without min_score every pair keeps its best"
