"""Append the final assistant answer to each kept conversation.

"policy" (the paper): the previous policy answers at temperature 0, which keeps the trained model
able to answer and not only ask. "none" and "gold" are the paper's ablations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from star_gate.data.records import Conversation, Pair
from star_gate.roles.players import Questioner


def regularize(
    kept: Sequence[Conversation],
    pairs: Sequence[Pair],
    policy: Questioner | None,
    mode: Literal["policy", "none", "gold"],
    max_new_tokens: int = 200,
) -> list[Conversation]:
    """Each conversation with its final answer: Q_{k-1}'s (policy), none, or the gold."""
    by_id = {p.pair_id: p for p in pairs}
    if mode == "none":
        return [c.replace(response=None) for c in kept]
    if mode == "gold":
        return [c.replace(response=by_id[c.pair_id].gold.text) for c in kept]
    if policy is None:
        raise ValueError("regularize mode 'policy' needs the previous policy")
    # A conversation the questioner ended by answering (simulate.stop_early) keeps that answer.
    open_ = [c for c in kept if c.response is None]
    responses = iter(
        policy.respond([by_id[c.pair_id].task.text for c in open_], open_, max_new_tokens)
    )
    return [c if c.response is not None else c.replace(response=next(responses)) for c in kept]
