"""The statistics of a run's evaluation: means with their standard errors, win rates and the
judge's position bias, the share of the persona gap closed, and the share of final answers that do
not answer. Pure functions of numbers and records; no model, no files."""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from star_gate.data.records import Judgement
from star_gate.roles.answers import asks, is_non_answer


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, sem


# -- final answers that are no answers -------------------------------------------------------------
def non_answer_share(texts: Iterable[str | None]) -> tuple[float, float, int]:
    """Share of final answers that are non-answers, its SEM, and the number of answers."""
    flags = [float(is_non_answer(t)) for t in texts]
    return (*mean_sem(flags), len(flags)) if flags else (float("nan"), float("nan"), 0)


# -- questioner turns that ask ----------------------------------------------------------------------
def asking_share(conversations: Iterable) -> tuple[float, float, int]:
    """Share of questioner turns that ask the person something (roles/answers.asks): the mean over
    pairs of each pair's share, its SEM over pairs (a pair's turns are not independent), and the
    number of turns."""
    flags = [(c.pair_id, float(asks(q))) for c in conversations for q in c.questions]
    if not flags:
        return float("nan"), float("nan"), 0
    return (*mean_sem(list(per_pair_means(flags).values())), len(flags))


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

    Counterbalanced and calibrated: the share of comparisons where its raw picks were the same
    position in both orders (for calibrated, the bias that calibration removes from the decision).
    Random order: |2 P(picked the first) - 1|, which estimates the same share, because a judge that
    ignores the content in a share b of cases and otherwise decides on content (blind to a position
    that is random) picks the first answer with probability b + (1 - b) / 2.
    Pointwise and persona_fit show no positions: nan (reported as n/a).
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


def paired_differences(later: dict[str, float], earlier: dict[str, float]) -> list[float]:
    """later - earlier for each pair id both have (per_pair_means of two conditions)."""
    return [later[k] - earlier[k] for k in later if k in earlier]


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
