"""Score gold responses with the frozen base model: log p_base(g | t, s) and the controls."""

from __future__ import annotations

from collections.abc import Sequence

from star_gate.backends.base import Backend
from star_gate.data.records import Conversation, Pair, ScoredControl
from star_gate.roles import views


def score_conversations(
    conversations: Sequence[Conversation], pairs: Sequence[Pair], scorer: Backend
) -> list[Conversation]:
    """Set each conversation's logprob to log p_base(gold | task, conversation), batched."""
    by_id = {p.pair_id: p for p in pairs}
    chats = [views.scoring_chat(by_id[c.pair_id].task.text, c) for c in conversations]
    golds = [by_id[c.pair_id].gold.text for c in conversations]
    scores = scorer.logprobs(chats, golds)
    return [c.replace(logprob=s) for c, s in zip(conversations, scores)]


def score_controls(pairs: Sequence[Pair], scorer: Backend) -> list[ScoredControl]:
    """Negative (task only) and positive (persona + task) controls for every pair."""
    negative = [views.negative_control_chat(p.task.text) for p in pairs]
    positive = [views.positive_control_chat(p.task.text, p.persona) for p in pairs]
    golds = [p.gold.text for p in pairs]
    scores = scorer.logprobs(negative + positive, golds + golds)
    n = len(pairs)
    return [
        ScoredControl(p.task.task_id, p.persona.persona_id, condition, scores[offset + i])
        for offset, condition in ((0, "negative"), (n, "positive"))
        for i, p in enumerate(pairs)
    ]
