"""loop online: the pure parts of an on-policy round.

Which pairs a round samples; each conversation's advantage, GRPO-style (its reward against the
mean of its pair's group, optionally over the group's standard deviation), or per question
(`online.per_turn`: the reward still to come from that question, against the group's mean at the
same question); and the tokens that carry them: the questioner's own turns, as it produced them.
The reward is the score (gold log-prob, or details recovered) less select.turn_cost per question.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Sequence

from star_gate.data.records import Conversation, Pair
from star_gate.roles import views
from star_gate.roles.prompts import Message, PromptTemplate
from star_gate.stages.select import worth
from star_gate.stages.train import questioner_turns, tokenize_with_turns

Key = tuple[str, int]  # (pair id, sample index)


def round_pairs(pairs: Sequence[Pair], round_index: int, per_round: int, seed: int) -> list[Pair]:
    """The pairs of round `round_index` (1-based): consecutive slices of one seeded order of the
    split, wrapping around, so that every pair comes up before any comes up twice."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    start = (round_index - 1) * per_round
    return [order[(start + i) % len(order)] for i in range(min(per_round, len(order)))]


def _groups(conversations: Sequence[Conversation]) -> dict[str, list[Conversation]]:
    groups: dict[str, list[Conversation]] = defaultdict(list)
    for c in conversations:
        groups[c.pair_id].append(c)
    return groups


def _scale(rewards: Sequence[float], normalize: bool) -> float:
    """What a group's advantages are divided by: its rewards' standard deviation, or 1."""
    spread = statistics.pstdev(rewards) if normalize and len(rewards) > 1 else 0.0
    return spread if spread > 1e-8 else 1.0


def conversation_advantages(
    scored: Sequence[Conversation], turn_cost: float = 0.0, normalize: bool = True
) -> dict[Key, list[float]]:
    """GRPO: one advantage per conversation, its reward minus its group's mean (over the group's
    standard deviation with normalize), for every trained turn of it."""
    advantages = {}
    for group in _groups(scored).values():
        rewards = [worth(c, turn_cost) for c in group]
        mean, scale = statistics.fmean(rewards), _scale(rewards, normalize)
        for c, reward in zip(group, rewards):
            advantages[(c.pair_id, c.sample_index)] = [(reward - mean) / scale] * _turns(c)
    return advantages


def _turns(conversation: Conversation) -> int:
    """Trained turns: the questions, and the answer that ended the conversation early, if any."""
    return len(conversation.questions) + (conversation.response is not None)


def turn_advantages(
    scored: Sequence[Conversation],
    prefix_scores: dict[tuple[str, int, int], float],
    turn_cost: float = 0.0,
    normalize: bool = True,
) -> dict[Key, list[float]]:
    """Per question: turn t's reward to go, R_t = score - score before question t - turn_cost x
    the questions from t on, against the group's mean of R_t (a conversation that had already
    ended counts 0: it gains nothing more). An answer that ended the conversation early is a turn
    with R = 0, so stopping is credited against what the group's others still gained.

    prefix_scores: (pair id, sample index, questions asked) -> score of the conversation cut
    there (stages/score.conversation_prefixes, scored like whole conversations).
    """
    advantages = {}
    for group in _groups(scored).values():
        to_go = {}
        for c in group:
            asked = len(c.questions)
            before = [prefix_scores[(c.pair_id, c.sample_index, j)] for j in range(asked)]
            to_go[c.sample_index] = [
                c.logprob - before[t] - turn_cost * (asked - t) for t in range(asked)
            ] + ([0.0] if c.response is not None else [])
        longest = max(len(r) for r in to_go.values())
        baseline = [
            statistics.fmean(r[t] if t < len(r) else 0.0 for r in to_go.values())
            for t in range(longest)
        ]
        scale = _scale([worth(c, turn_cost) for c in group], normalize)
        for c in group:
            advantages[(c.pair_id, c.sample_index)] = [
                (value - baseline[t]) / scale for t, value in enumerate(to_go[c.sample_index])
            ]
    return advantages


def online_chat(
    template: PromptTemplate, task: str, conversation: Conversation
) -> tuple[list[Message], list[int]]:
    """The chat exactly as the questioner produced it (its own prompt, no final-answer cue), and
    the indices of its turns: each question, and the answer that ended it early, if any."""
    messages = views.questioner_chat(template, task, conversation)
    if conversation.response is not None:
        messages.append({"role": "assistant", "content": conversation.response})
    return messages, questioner_turns(template, messages)


def policy_examples(
    scored: Sequence[Conversation],
    advantages: dict[Key, list[float]],
    pairs: Sequence[Pair],
    template: PromptTemplate,
    tokenizer,
    max_length: int,
) -> tuple[list[dict], int]:
    """One example per conversation: its token ids and each token's weight (its turn's
    advantage; 0 for context), and how many were cut to max_length. A conversation without a
    trained turn (it answered at once without early stopping) gives none."""
    tasks = {p.pair_id: p.task.text for p in pairs}
    examples, truncated = [], 0
    for c in scored:
        weights = advantages[(c.pair_id, c.sample_index)]
        if not weights:
            continue
        messages, trainable = online_chat(template, tasks[c.pair_id], c)
        ids, turns, cut = tokenize_with_turns(tokenizer, messages, trainable, max_length)
        truncated += cut
        examples.append(
            {
                "input_ids": ids,
                "weights": [weights[turn - 1] if turn else 0.0 for turn in turns],
                "trained": [int(turn > 0) for turn in turns],
            }
        )
    return examples, truncated
