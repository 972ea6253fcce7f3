"""Evaluation beyond scoring: the random-persona condition, judged final answers, and the persona
fit of answers (their statistics are in stats.py).

SPEC "Evaluation": log p_base(g | ...) under four conditions on the test pairs, and win rates of
Q_k's temperature-0 answers against Q_0's, judged by a model that sees the persona, with the order of
the two answers randomized (or both orders asked, or both asked and calibrated) to control the
judge's position bias; or judged one answer at a time (pointwise), or without a judge by each
answer's persona fit under the frozen base model. Also: the persona fit of each final answer.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from star_gate.backends.base import Backend
from star_gate.data.records import AnswerFit, Conversation, Judgement, Pair, Persona
from star_gate.roles import views
from star_gate.roles.players import Judge

JudgeOrder = Literal["random", "counterbalanced", "calibrated"]
_OTHER = {"contender": "baseline", "baseline": "contender"}


def random_personas(pairs: Sequence[Pair], seed: int) -> dict[str, Persona]:
    """For each pair, another persona of the same pairs (never its own), drawn with the seed."""
    personas = list({p.persona.persona_id: p.persona for p in pairs}.values())
    if len(personas) < 2:
        raise ValueError("the random-persona condition needs at least 2 test personas")
    rng = random.Random(seed)
    return {
        p.pair_id: rng.choice([q for q in personas if q.persona_id != p.persona.persona_id])
        for p in pairs
    }


@dataclass(frozen=True)
class Outcome:
    """One comparison's result, as a Judgement holds it (see data/records.py)."""

    shown_first: tuple[str, ...]
    verdicts: tuple[str, ...]
    margin: float | None = None


# One comparison to make: (persona, task, the contender's answer, the baseline's answer).
Comparison = tuple[Persona, str, str, str]


def compare(
    items: Sequence[Comparison], judge: Judge, order: JudgeOrder, seed: int
) -> list[Outcome]:
    """Ask the judge about each (persona, task, contender, baseline), in one batched call.

    Pairwise methods (generate, logprobs): in "random" order each comparison is asked once, the
    contender shown first with probability 1/2 (drawn from `seed`, in input order, so reruns ask
    the same questions); "counterbalanced" asks both orders; "calibrated" (logprobs only) asks
    both orders and decides by the contender's log-odds log p(its letter) - log p(the other's)
    averaged over them (the margin), so a constant bias toward a position cancels out, while the
    verdicts keep each order's raw pick. Pointwise: the judge sees each answer alone, asked once
    whatever the order; the margin is the contender's log p('Yes') - log p('No') minus the
    baseline's.
    """
    if judge.method == "pointwise":
        personas, tasks = [i[0] for i in items] * 2, [i[1] for i in items] * 2
        scores = judge.fit_scores(personas, tasks, [i[2] for i in items] + [i[3] for i in items])
        return [
            Outcome((), (), mine - theirs)
            for mine, theirs in zip(scores[: len(items)], scores[len(items) :])
        ]
    if order == "calibrated" and judge.method != "logprobs":
        raise ValueError(
            f"judge order 'calibrated' needs judge method 'logprobs', not {judge.method!r}"
        )
    rng = random.Random(seed)
    orders = []  # per comparison: which answer is shown first, once or in both orders
    queries = []  # (persona, task, answer shown as A, answer shown as B), in the same sequence
    for persona, task, contender, baseline in items:
        texts = {"contender": contender, "baseline": baseline}
        both = order in ("counterbalanced", "calibrated")
        firsts = ("contender", "baseline") if both else (rng.choice(("contender", "baseline")),)
        orders.append(firsts)
        queries += [(persona, task, texts[first], texts[_OTHER[first]]) for first in firsts]
    columns = [list(column) for column in zip(*queries)]
    if order == "calibrated":
        odds = judge.log_odds(*columns) if queries else []
        outcomes = []
        for index, firsts in enumerate(orders):
            first_order, second_order = (
                odds[2 * index],
                odds[2 * index + 1],
            )  # contender at A, then at B
            raw = tuple(
                first if o >= 0 else _OTHER[first]
                for first, o in zip(firsts, (first_order, second_order))
            )
            outcomes.append(Outcome(firsts, raw, (first_order - second_order) / 2))
        return outcomes
    picks = iter(judge.pick(*columns) if queries else [])  # in query order
    return [
        Outcome(
            firsts, tuple({"A": first, "B": _OTHER[first]}.get(next(picks), "") for first in firsts)
        )
        for firsts in orders
    ]


def _comparisons(
    contender: Sequence[Conversation], baseline: Sequence[Conversation], pairs: Sequence[Pair]
) -> list[Comparison]:
    by_pair = {p.pair_id: p for p in pairs}
    baseline_of = {(c.pair_id, c.sample_index): c for c in baseline}
    return [
        (
            by_pair[mine.pair_id].persona,
            by_pair[mine.pair_id].task.text,
            mine.response or "",
            baseline_of[mine.pair_id, mine.sample_index].response or "",
        )
        for mine in contender
    ]


def _judgements(
    contender: Sequence[Conversation], label: str, outcomes: Sequence[Outcome]
) -> list[Judgement]:
    return [
        Judgement(
            task_id=mine.task_id,
            persona_id=mine.persona_id,
            sample_index=mine.sample_index,
            target_turns=mine.target_turns,
            contender=label,
            shown_first=outcome.shown_first,
            verdicts=outcome.verdicts,
            margin=outcome.margin,
        )
        for mine, outcome in zip(contender, outcomes)
    ]


def judge_answers(
    contender: Sequence[Conversation],
    baseline: Sequence[Conversation],
    pairs: Sequence[Pair],
    judge: Judge,
    label: str,
    order: JudgeOrder,
    seed: int,
) -> list[Judgement]:
    """Compare each contender answer with the baseline answer of the same pair and sample index.

    Both lists hold conversations whose `response` is the final answer; see `compare` for the
    orders and methods.
    """
    return _judgements(
        contender, label, compare(_comparisons(contender, baseline, pairs), judge, order, seed)
    )


def judge_answers_by_fit(
    contender: Sequence[Conversation],
    baseline: Sequence[Conversation],
    pairs: Sequence[Pair],
    scorer: Backend,
    label: str,
) -> list[Judgement]:
    """judge_method persona_fit: no judge; the answer with the higher persona fit (`persona_fits`,
    under the frozen base model) wins. No position, so no position bias."""
    return _judgements(
        contender, label, compare_by_fit(_comparisons(contender, baseline, pairs), scorer)
    )


def compare_by_fit(items: Sequence[Comparison], scorer: Backend) -> list[Outcome]:
    """Outcomes decided by which answer fits its persona better (judge_method persona_fit)."""
    personas, tasks = [i[0] for i in items] * 2, [i[1] for i in items] * 2
    fits = [
        f[-1]
        for f in persona_fits(
            personas, tasks, [i[2] for i in items] + [i[3] for i in items], scorer
        )
    ]
    return [
        Outcome((), (), mine - theirs)
        for mine, theirs in zip(fits[: len(items)], fits[len(items) :])
    ]


# -- persona fit of an answer ----------------------------------------------------------------------
def _per_token_scorer(scorer: Backend):
    """The backend's `token_logprobs(chats, completions)` (transformers, vLLM), or None."""
    method = getattr(scorer, "token_logprobs", None)
    if method is None:
        return None
    try:
        names = list(inspect.signature(method).parameters)[:2]
    except (TypeError, ValueError):
        return None
    return method if names == ["chats", "completions"] else None


def persona_fits(
    personas: Sequence[Persona], tasks: Sequence[str], answers: Sequence[str], scorer: Backend
) -> list[tuple[float, float, int, str, float]]:
    """For each answer: (log p(a | persona, task), log p(a | task), length, unit, fit), where
    fit = the difference of the two divided by the answer's length.

    The prompts are the positive and negative controls' (views.positive_control_chat and
    negative_control_chat), scored by the frozen base model. The length is the answer's number of
    tokens when the scorer lists per-token log-probs (`token_logprobs`, unit "tokens"), else its
    number of whitespace-separated words (unit "words"): a rougher normaliser, but the same for
    both answers of a comparison. An empty answer has length 0 and fit 0.
    """
    count = len(answers)
    if not count:
        return []
    chats = [views.positive_control_chat(t, p) for p, t in zip(personas, tasks)]
    chats += [views.negative_control_chat(t) for t in tasks]
    completions = list(answers) * 2
    per_token = _per_token_scorer(scorer)
    if per_token is not None:
        rows = per_token(chats, completions)
        sums = [math.fsum(row) for row in rows]
        lengths, unit = [len(row) for row in rows[:count]], "tokens"
    else:
        sums = scorer.logprobs(chats, completions)
        lengths, unit = [len(a.split()) for a in answers], "words"
    return [
        (mine, blind, length, unit, (mine - blind) / length if length else 0.0)
        for mine, blind, length in zip(sums[:count], sums[count:], lengths)
    ]


def answer_fits(
    conversations: Sequence[Conversation], pairs: Sequence[Pair], scorer: Backend
) -> list[AnswerFit]:
    """The persona fit of each conversation's final answer (`response`), for its own pair's persona."""
    by_pair = {p.pair_id: p for p in pairs}
    chosen = [by_pair[c.pair_id] for c in conversations]
    rows = persona_fits(
        [p.persona for p in chosen],
        [p.task.text for p in chosen],
        [c.response or "" for c in conversations],
        scorer,
    )
    return [
        AnswerFit(c.task_id, c.persona_id, c.sample_index, c.target_turns, *row)
        for c, row in zip(conversations, rows)
    ]
