"""Keep the top-k conversations per pair by gold log-prob."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from star_gate.data.records import Conversation


def select_top_k(conversations: Sequence[Conversation], k: int) -> list[Conversation]:
    """Best k per pair (ties broken by sample index, so the choice is deterministic)."""
    if any(c.logprob is None for c in conversations):
        raise ValueError("select_top_k needs scored conversations (run the score stage first)")
    groups: dict[str, list[Conversation]] = defaultdict(list)
    for c in conversations:
        groups[c.pair_id].append(c)
    kept = []
    for group in groups.values():
        kept += sorted(group, key=lambda c: (-c.logprob, c.sample_index))[:k]
    return kept
