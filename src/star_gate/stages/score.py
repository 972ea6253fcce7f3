"""Score conversations: the gold response's log-prob under the frozen base model, log p_base(g |
t, s), and its controls (score.reward gold_logprob, the paper's); the same with the gold answer's
opening address left unscored (gold_after_address); or the share of the pair's missing
details that the conversation's questions asked about (score.reward details), which needs no gold
and no model.

Both rewards are stored in the records' `logprob` field, the conversation's score."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from star_gate.backends.base import Backend
from star_gate.data.records import Conversation, Pair, PairDetails, QuestionGain, ScoredControl
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


def gold_address(pair: Pair) -> str:
    """The gold answer's opening address ("Aoife,") when it opens with any part of the person's
    name ("Nguyen Lan" is addressed as "Lan,"), else ''. 354 of the 360 bundled gold answers do."""
    head, comma, _ = pair.gold.text.partition(",")
    named = len(head.split()) <= 3 and any(
        part.lower() in head.lower() for part in pair.persona.name.split()
    )
    return head + comma if comma and named else ""


def _address_cost(chats: list, pairs: Sequence[Pair], scorer: Backend) -> list[float]:
    """log p_base(address | chat) per chat, 0 where the gold opens with no address. The address
    is whole words, so its tokens are the gold's first tokens and subtracting this from the gold's
    log-prob leaves log p(rest of the gold | chat, address)."""
    addresses = [gold_address(p) for p in pairs]
    costs = [0.0] * len(chats)
    scored = [i for i, a in enumerate(addresses) if a]
    if scored:
        values = scorer.logprobs([chats[i] for i in scored], [addresses[i] for i in scored])
        for i, value in zip(scored, values):
            costs[i] = value
    return costs


def less_address(
    scored: Sequence[Conversation], pairs: Sequence[Pair], scorer: Backend
) -> list[Conversation]:
    """Scored conversations less the log-prob of their gold's opening address: log p_base(rest of
    the gold | task, conversation, address)."""
    by_id = {p.pair_id: p for p in pairs}
    chats = [views.scoring_chat(by_id[c.pair_id].task.text, c) for c in scored]
    costs = _address_cost(chats, [by_id[c.pair_id] for c in scored], scorer)
    return [c.replace(logprob=c.logprob - cost) for c, cost in zip(scored, costs)]


def score_conversations_after_address(
    conversations: Sequence[Conversation], pairs: Sequence[Pair], scorer: Backend
) -> list[Conversation]:
    """score.reward gold_after_address. The bundled gold answers open with the person's first
    name, which one persona sentence gives away and which is worth about 6 nats: most of what a
    conversation can gain. Without the address, the score is what the conversation tells about
    the person beyond the name."""
    return less_address(score_conversations(conversations, pairs, scorer), pairs, scorer)


def _control_chats(pairs: Sequence[Pair]) -> list[tuple[str, Pair, list]]:
    """(condition, pair, chat) of every pair's negative (task only), then positive (persona +
    task) control: one definition for the controls' scores and their addresses' costs."""
    return [("negative", p, views.negative_control_chat(p.task.text)) for p in pairs] + [
        ("positive", p, views.positive_control_chat(p.task.text, p.persona)) for p in pairs
    ]


def score_controls(pairs: Sequence[Pair], scorer: Backend) -> list[ScoredControl]:
    """Negative (task only) and positive (persona + task) controls for every pair."""
    controls = _control_chats(pairs)
    scores = scorer.logprobs(
        [chat for _, _, chat in controls], [p.gold.text for _, p, _ in controls]
    )
    return [
        ScoredControl(p.task.task_id, p.persona.persona_id, condition, score)
        for (condition, p, _), score in zip(controls, scores)
    ]


def score_controls_after_address(pairs: Sequence[Pair], scorer: Backend) -> list[ScoredControl]:
    """score_controls with each gold answer's opening address left unscored."""
    controls = _control_chats(pairs)
    costs = _address_cost([chat for _, _, chat in controls], [p for _, p, _ in controls], scorer)
    return [
        replace(c, logprob=c.logprob - cost)
        for c, cost in zip(score_controls(pairs, scorer), costs)
    ]


def details_reward(
    details: PairDetails, questions: Sequence[str], matcher, recovered: set[int] | None = None
) -> float:
    """The importance-weighted share of the missing details that some question asked about. A
    clear request (no missing details) scores 1 when answered at once and 0 once anything is
    asked: asking is then the mistake. recovered: recovered_details(...), when already known."""
    if not details.details:
        return 0.0 if questions else 1.0
    if recovered is None:
        recovered = recovered_details(details, questions, matcher)
    total = sum(d.importance for d in details.details)
    return sum(details.details[i].importance for i in recovered) / total


def recovered_details(details: PairDetails, questions: Sequence[str], matcher) -> set[int]:
    """Indices of the missing details that at least one of the questions asked about."""
    return {i for question in questions for i in matcher.asked(question, details.details)}


def score_details(
    conversations: Sequence[Conversation], pairs: Sequence[Pair], matcher
) -> list[Conversation]:
    """Set each conversation's score (`logprob`) to its details_reward."""
    by_id = {p.pair_id: p for p in pairs}
    return [
        c.replace(logprob=details_reward(by_id[c.pair_id].details, c.questions, matcher))
        for c in conversations
    ]


def details_controls(pairs: Sequence[Pair]) -> list[ScoredControl]:
    """The controls under score.reward details, exact without a model: nothing recovered without a
    conversation (negative; 1 for a clear request, where not asking is right), everything when the
    whole persona is known (positive)."""
    return [
        ScoredControl(p.task.task_id, p.persona.persona_id, condition, score)
        for condition in ("negative", "positive")
        for p in pairs
        for score in [1.0 if condition == "positive" or not p.details.details else 0.0]
    ]


def conversation_prefixes(conversations: Sequence[Conversation]) -> list[Conversation]:
    """Each conversation cut before each of its answered questions (none asked, the first one
    asked, ...), to be scored like whole conversations; the whole one is scored already."""
    return [
        c.replace(turns=c.turns[: 2 * asked], logprob=None, response=None)
        for c in conversations
        for asked in range(len(c.answers))
    ]


def prefix_scores(scored_prefixes: Sequence[Conversation]) -> dict[tuple[str, int, int], float]:
    """(pair id, sample index, questions asked) -> the score of that conversation cut there, from
    conversation_prefixes scored like whole conversations."""
    return {(p.pair_id, p.sample_index, len(p.turns) // 2): p.logprob for p in scored_prefixes}


def question_gains(
    scored: Sequence[Conversation], scored_prefixes: Sequence[Conversation]
) -> list[QuestionGain]:
    """Per conversation and question, the gain in log p_base(gold) that question and its answer
    brought: the scores of conversation_prefixes(scored), then the whole conversation's."""
    by_prefix = prefix_scores(scored_prefixes)
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
