"""Evaluation beyond scoring: the random-persona condition, judged final answers, and their statistics.

SPEC "Evaluation": log p_base(g | ...) under four conditions on the test pairs, and win rates of
Q_k's temperature-0 answers against Q_0's, judged by a model that sees the persona, with the order of
the two answers randomized (or both orders asked) to control the judge's position bias.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from star_gate.data.records import Conversation, Judgement, Pair, Persona
from star_gate.roles.players import Judge

JudgeOrder = Literal["random", "counterbalanced"]
_OTHER = {"contender": "baseline", "baseline": "contender"}


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, sem


def random_personas(pairs: Sequence[Pair], seed: int) -> dict[str, Persona]:
    """For each pair, another persona of the same pairs (never its own), drawn with the seed."""
    personas = list({p.persona.persona_id: p.persona for p in pairs}.values())
    if len(personas) < 2:
        raise ValueError("the random-persona condition needs at least 2 test personas")
    rng = random.Random(seed)
    return {
        p.pair_id: rng.choice([q for q in personas if q.persona_id != p.persona.persona_id]) for p in pairs
    }


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

    Both lists hold conversations whose `response` is the final answer. In "random" order each
    comparison is asked once, the contender shown first with probability 1/2 (drawn from `seed`,
    in input order, so reruns ask the same questions); "counterbalanced" asks both orders.
    """
    by_pair = {p.pair_id: p for p in pairs}
    baseline_of = {(c.pair_id, c.sample_index): c for c in baseline}
    rng = random.Random(seed)
    orders = []  # per contender answer: which answer is shown first, once or in both orders
    queries = []  # (persona, task, answer shown as A, answer shown as B), in the same sequence
    for mine in contender:
        texts = {"contender": mine.response or "", "baseline": baseline_of[mine.pair_id, mine.sample_index].response or ""}
        firsts = ("contender", "baseline") if order == "counterbalanced" else (rng.choice(("contender", "baseline")),)
        orders.append(firsts)
        pair = by_pair[mine.pair_id]
        queries += [(pair.persona, pair.task.text, texts[first], texts[_OTHER[first]]) for first in firsts]
    picks = iter(judge.pick(*(list(column) for column in zip(*queries))) if queries else [])  # in query order
    return [
        Judgement(
            task_id=mine.task_id,
            persona_id=mine.persona_id,
            sample_index=mine.sample_index,
            target_turns=mine.target_turns,
            contender=label,
            shown_first=firsts,
            verdicts=tuple({"A": first, "B": _OTHER[first]}.get(next(picks), "") for first in firsts),
        )
        for mine, firsts in zip(contender, orders)
    ]


@dataclass(frozen=True)
class WinRate:
    mean: float  # share of comparisons the contender wins, ties counting one half
    sem: float
    count: int  # readable comparisons
    unreadable: int  # comparisons where a judge reply named neither answer
    position_bias: float  # share of verdicts that followed the position, not the answer


def win_rate(judgements: Sequence[Judgement]) -> WinRate:
    scores = [j.score for j in judgements if j.score is not None]
    mean, sem = mean_sem(scores) if scores else (float("nan"), float("nan"))
    return WinRate(mean, sem, len(scores), len(judgements) - len(scores), position_bias(judgements))


def position_bias(judgements: Sequence[Judgement]) -> float:
    """How often the judge's choice follows the position rather than the answer.

    Counterbalanced: the share of comparisons where it picked the same position in both orders.
    Random order: |2 P(picked the first) - 1|, which estimates the same share, because a judge that
    ignores the content in a share b of cases and otherwise decides on content (blind to a position
    that is random) picks the first answer with probability b + (1 - b) / 2.
    """
    both = [j for j in judgements if len(j.verdicts) == 2 and j.score is not None]
    if both:
        return sum(j.verdicts[0] != j.verdicts[1] for j in both) / len(both)
    picks = [first for j in judgements for first in j.first_position_picks]
    return abs(2 * sum(picks) / len(picks) - 1) if picks else float("nan")


def per_pair_means(values: Iterable[tuple[str, float]]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for pair_id, value in values:
        groups[pair_id].append(value)
    return {pair_id: statistics.fmean(v) for pair_id, v in groups.items()}


def persona_gap_share(
    experimental: dict[str, float],
    negative: dict[str, float],
    positive: dict[str, float],
    seed: int = 0,
    resamples: int = 1000,
) -> tuple[float, float]:
    """(experimental - negative) / (positive - negative) over pair means, and its bootstrap SEM.

    The ratio of mean differences, not the mean of per-pair ratios: a pair whose persona barely
    helps (positive ~ negative) would otherwise dominate. The SEM resamples pairs with the seed.
    """
    keys = sorted(experimental.keys() & negative.keys() & positive.keys())
    if not keys:
        return float("nan"), float("nan")

    def share(sample: Sequence[str]) -> float:
        gap = sum(positive[k] - negative[k] for k in sample)
        return sum(experimental[k] - negative[k] for k in sample) / gap if gap > 0 else float("nan")

    rng = random.Random(seed)
    boots = [share(rng.choices(keys, k=len(keys))) for _ in range(resamples)]
    boots = [b for b in boots if math.isfinite(b)]
    return share(keys), statistics.stdev(boots) if len(boots) > 1 else float("nan")
