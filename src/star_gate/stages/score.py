"""Score gold responses with the frozen base model: log p_base(g | t, s) and the controls."""

from __future__ import annotations

from collections.abc import Sequence

from star_gate.backends.base import Backend
from star_gate.data.records import Conversation, Pair, QuestionGain, ScoredControl
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


def conversation_prefixes(conversations: Sequence[Conversation]) -> list[Conversation]:
    """Each conversation cut before each of its answered questions (none asked, the first one
    asked, ...), to be scored like whole conversations; the whole one is scored already."""
    return [
        c.replace(turns=c.turns[: 2 * asked], logprob=None, response=None)
        for c in conversations
        for asked in range(len(c.answers))
    ]


def question_gains(
    scored: Sequence[Conversation], scored_prefixes: Sequence[Conversation]
) -> list[QuestionGain]:
    """Per conversation and question, the gain in log p_base(gold) that question and its answer
    brought: the scores of conversation_prefixes(scored), then the whole conversation's."""
    by_prefix = {(p.pair_id, p.sample_index, len(p.turns) // 2): p.logprob for p in scored_prefixes}
    gains = []
    for c in scored:
        asked = len(c.answers)
        scores = [by_prefix[(c.pair_id, c.sample_index, j)] for j in range(asked)] + [c.logprob]
        gains += [
            QuestionGain(
                c.task_id,
                c.persona_id,
                c.sample_index,
                c.target_turns,
                q,
                scores[q] - scores[q - 1],
            )
            for q in range(1, asked + 1)
        ]
    return gains
