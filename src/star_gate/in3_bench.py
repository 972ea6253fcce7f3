"""`star-gate bench in3`: the IN3 (Tell Me More!) measures for Q_0 and each trained questioner.

The conversations are the evaluation's own (Pipeline.evaluate_checkpoints into a run directory of
their own, so a rerun resumes): each questioner talks to the details roleplayer on the dataset's
held-out split, may answer at once (simulate.stop_early), and asks at most evaluate.max_turns
questions. From them, per questioner:
    vagueness accuracy   asks on a vague request, answers at once on a clear one
    details recovered    share of the missing details some question asked about, by importance
                         and in total (the detail matcher decides, where IN3's authors had people)
    rounds               questions asked per vague request
    details / question   details recovered per question asked, on vague requests
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from star_gate.data.records import Conversation, Pair
from star_gate.stages.score import details_reward, recovered_details
from star_gate.stats import mean_sem, paired_differences, per_pair_means

# Qian et al. 2024, Table 3, IN3 test split (108 tasks), judged by people.
PUBLISHED = {
    "Mistral-7B-Instruct-v0.2": {"vagueness_accuracy": 0.49, "recovered": 0.52},
    "Llama-2-7B-chat": {"vagueness_accuracy": 0.80, "recovered": 0.42},
    "GPT-4": {"vagueness_accuracy": 0.82, "recovered": 0.61, "by_importance": (0.38, 0.63, 0.75)},
    "Mistral-Interact": {"vagueness_accuracy": 0.85, "recovered": 0.62},
}
HOW_OURS_DIFFER = (
    "Ours: the bundled data's held-out fifth of IN3's training split (not their test split), users "
    "simulated by the details roleplayer, a detail counted as recovered when the detail matcher "
    "finds a question that asks about it; theirs: IN3's test split, judged by people."
)


@dataclass(frozen=True)
class In3Measures:
    label: str
    conversations: int
    vagueness_accuracy: float
    always_ask_accuracy: float  # what a questioner that always asks would score on the same pairs
    recovered: float  # share of all missing details recovered (unweighted)
    by_importance: tuple[float, float, float]  # importance 1, 2, 3
    weighted: float  # mean details reward on vague requests: importance-weighted share
    weighted_sem: float
    rounds: float  # questions per vague request
    details_per_question: float
    vague_rewards: dict[str, float]  # pair id -> mean details reward over its conversations


def paired_gain(later: In3Measures, earlier: In3Measures) -> tuple[float, float, int]:
    """Mean ± SEM over vague pairs of later's details reward minus earlier's."""
    diffs = paired_differences(later.vague_rewards, earlier.vague_rewards)
    if len(diffs) < 2:
        return float("nan"), float("nan"), len(diffs)
    return (*mean_sem(diffs), len(diffs))


def _share(hits: int, total: int) -> float:
    return hits / total if total else float("nan")


def in3_measures(
    label: str, conversations: Sequence[Conversation], pairs: Sequence[Pair], matcher
) -> In3Measures:
    """The IN3 measures of one questioner's conversations (pairs carry the missing details)."""
    by_id = {p.pair_id: p for p in pairs}
    correct = vague_count = questions = 0
    found = {1: 0, 2: 0, 3: 0}
    total = {1: 0, 2: 0, 3: 0}
    rewards, by_pair = [], []
    for c in conversations:
        details = by_id[c.pair_id].details
        asked = bool(c.questions)
        correct += asked == details.vague
        if not details.vague:
            continue
        vague_count += 1
        questions += len(c.questions)
        recovered = recovered_details(details, c.questions, matcher)
        for i, detail in enumerate(details.details):
            total[detail.importance] += 1
            found[detail.importance] += i in recovered
        rewards.append(details_reward(details, c.questions, matcher, recovered))
        by_pair.append((c.pair_id, rewards[-1]))
    weighted, weighted_sem = mean_sem(rewards) if rewards else (float("nan"), float("nan"))
    return In3Measures(
        label=label,
        conversations=len(conversations),
        vagueness_accuracy=_share(correct, len(conversations)),
        always_ask_accuracy=_share(vague_count, len(conversations)),
        recovered=_share(sum(found.values()), sum(total.values())),
        by_importance=tuple(_share(found[level], total[level]) for level in (1, 2, 3)),
        weighted=weighted,
        weighted_sem=weighted_sem,
        rounds=_share(questions, vague_count),
        details_per_question=_share(sum(found.values()), questions),
        vague_rewards=per_pair_means(by_pair),
    )
