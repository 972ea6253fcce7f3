"""How often does a judging method pick the answer written for the person? A labelled judge set.

Each comparison takes one (task, persona) pair of a training split: the fitting answer is that
pair's gold, the other is the gold of the same task for a different persona of the same split,
written for someone else. Both persons' first names are taken out of both answers (the gold
answers address the person by name, which would make the set trivial). A method that reads the persona should pick the fitting one; the share
it does is its accuracy. Only training splits are used (never the test split), so tuning a judge
here leaves the test split untouched. `benchmarks/judge_accuracy.py` runs this on real models.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from star_gate.backends.base import Backend
from star_gate.data.records import Dataset, Judgement, Persona, Task
from star_gate.roles.players import Judge
from star_gate.stages.evaluate import compare, compare_by_fit
from star_gate.stats import WinRate, win_rate

METHODS = ("logprobs", "calibrated", "pointwise", "persona_fit", "generate")


@dataclass(frozen=True)
class LabelledComparison:
    task: Task
    persona: Persona
    fitting: str  # the gold written for this persona
    other: str  # the gold of the same task written for `other_persona_id`
    other_persona_id: str


def without_names(text: str, names: Sequence[str]) -> str:
    """The answer with the persons' first names taken out: the gold answers open with the name
    ("Aoife, why not ..."), and a judge must not win by matching names instead of reading the person."""
    for name in names:
        first = name.split()[0] if name.split() else ""
        if not first:
            continue
        text = re.sub(rf"^{re.escape(first)},\s*", "", text)
        text = re.sub(rf"\b{re.escape(first)}\b", "you", text)
    return text[:1].upper() + text[1:]


def labelled_comparisons(
    dataset: Dataset, splits: Sequence[str] = ("A", "B"), count: int = 72, seed: int = 0
) -> list[LabelledComparison]:
    """Up to `count` comparisons drawn with `seed` from every (pair, other persona of the same
    split) of the given splits; all of them when there are fewer."""
    if "test" in splits:
        raise ValueError(
            "the labelled judge set is built from training splits only, never the test split"
        )
    candidates = []
    for split in splits:
        if split not in dataset.splits:
            raise ValueError(f"the dataset has no split {split!r}; it has {sorted(dataset.splits)}")
        personas = dataset.split_personas(split)
        for pair in dataset.pairs(split):
            if pair.gold is None:  # a dataset scored by missing details has no answers to judge
                continue
            for other in personas:
                gold = dataset.gold.get((pair.task.task_id, other))
                if other == pair.persona.persona_id or gold is None:
                    continue
                names = [pair.persona.name, dataset.personas[other].name]
                fitting, unfitting = (
                    without_names(pair.gold.text, names),
                    without_names(gold.text, names),
                )
                if fitting != unfitting:
                    candidates.append(
                        LabelledComparison(pair.task, pair.persona, fitting, unfitting, other)
                    )
    rng = random.Random(seed)
    return rng.sample(candidates, min(count, len(candidates)))


def judge_accuracy(
    comparisons: Sequence[LabelledComparison],
    method: str,
    judge: Judge | None = None,
    scorer: Backend | None = None,
    seed: int = 0,
) -> WinRate:
    """The method's accuracy on the labelled comparisons, as a WinRate of the fitting answer:
    mean (ties count one half) ± SEM, the readable count, the unreadable count, and the position
    bias (nan for pointwise and persona_fit, which show one answer at a time).

    logprobs and generate: one order per comparison, drawn from `seed`, as the evaluation's
    random order; calibrated: both orders, log-odds averaged (its position bias is the raw one);
    pointwise: the judge's log p('Yes') - log p('No') of each answer; persona_fit: the scorer's
    persona fit of each answer (no judge).
    """
    items = [(c.persona, c.task.text, c.fitting, c.other) for c in comparisons]
    if method == "persona_fit":
        if scorer is None:
            raise ValueError("method persona_fit needs a scorer (the frozen base model)")
        outcomes = compare_by_fit(items, scorer)
    elif method in ("logprobs", "calibrated", "pointwise", "generate"):
        if judge is None:
            raise ValueError(f"method {method!r} needs a judge")
        judge_method = "logprobs" if method == "calibrated" else method
        order = "calibrated" if method == "calibrated" else "random"
        outcomes = compare(items, replace(judge, method=judge_method), order, seed)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    judgements = [
        Judgement(
            c.task.task_id,
            c.persona.persona_id,
            0,
            0,
            "fitting",
            o.shown_first,
            o.verdicts,
            o.margin,
        )
        for c, o in zip(comparisons, outcomes)
    ]
    return win_rate(judgements)
