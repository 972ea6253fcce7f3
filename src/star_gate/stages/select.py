"""Keep the top-k conversations per pair by gold log-prob, or (train.objective dpo) preference
pairs: the best conversations of a pair against its worst."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from star_gate.data.records import Conversation


def worth(conversation: Conversation, turn_cost: float = 0.0) -> float:
    """What selection ranks by: the gold log-prob, less turn_cost nats per question asked."""
    return conversation.logprob - turn_cost * len(conversation.answers)


def _ranked_groups(
    conversations: Sequence[Conversation], turn_cost: float = 0.0
) -> list[list[Conversation]]:
    """Each pair's conversations, best first (worth; ties broken by sample index, so the order is
    deterministic), pairs in order of first appearance."""
    if any(c.logprob is None for c in conversations):
        raise ValueError("selection needs scored conversations (run the score stage first)")
    groups: dict[str, list[Conversation]] = defaultdict(list)
    for c in conversations:
        groups[c.pair_id].append(c)
    return [
        sorted(group, key=lambda c: (-worth(c, turn_cost), c.sample_index))
        for group in groups.values()
    ]


def select_top_k(
    conversations: Sequence[Conversation],
    k: int,
    turn_cost: float = 0.0,
    min_score: float | None = None,
) -> list[Conversation]:
    """Best k per pair; with min_score, only those whose score reaches it (a pair whose best
    conversation did no good teaches nothing, and would teach whatever it happened to do)."""
    return [
        c
        for group in _ranked_groups(conversations, turn_cost)
        for c in group[:k]
        if min_score is None or c.logprob >= min_score
    ]


def select_preference_pairs(
    conversations: Sequence[Conversation], k: int, min_margin: float = 0.0, turn_cost: float = 0.0
) -> list[Conversation]:
    """Up to k (chosen, rejected) pairs per (task, persona): the i-th best against the i-th worst
    (by worth), kept while chosen beats rejected by more than min_margin nats. Returned flat, chosen then
    rejected, pair after pair: `preference_pairs` reads them back."""
    kept = []
    for group in _ranked_groups(conversations, turn_cost):
        for i in range(min(k, len(group) // 2)):
            chosen, rejected = group[i], group[-1 - i]
            if worth(chosen, turn_cost) - worth(rejected, turn_cost) <= min_margin:
                break  # later pairs have smaller margins still
            kept += [chosen, rejected]
    return kept


def preference_pairs(
    selected: Sequence[Conversation], turn_cost: float = 0.0
) -> list[tuple[Conversation, Conversation]]:
    """The (chosen, rejected) pairs that select_preference_pairs wrote (with this turn_cost),
    after any stage that keeps the records in order (regularize appends the final answers)."""
    if len(selected) % 2:
        raise ValueError("preference records come in (chosen, rejected) twos; got an odd number")
    pairs = list(zip(selected[::2], selected[1::2]))
    for chosen, rejected in pairs:
        if chosen.pair_id != rejected.pair_id or worth(chosen, turn_cost) < worth(
            rejected, turn_cost
        ):
            raise ValueError(
                f"records {chosen.pair_id}#{chosen.sample_index} and {rejected.pair_id}#{rejected.sample_index} "
                "are not a (chosen, rejected) pair of one (task, persona)"
            )
    return pairs
