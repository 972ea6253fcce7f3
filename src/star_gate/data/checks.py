"""Quality checks for a persona–task–gold dataset (`star-gate data check`).

The text checks need no model: one gold per pair, no duplicate or near-duplicate texts, gold
lengths within bounds. The control check needs the scoring model: a gold answer written for a
persona should be more likely when the model has read that persona, log p(g | u, t) > log p(g | t).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field

from star_gate.data.records import Dataset, pair_id

_WORD = re.compile(r"[a-z0-9']+")
NEAR_DUPLICATE = 0.5  # word-trigram Jaccard at or above which two texts count as one


def shingles(text: str, size: int = 3) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < size:
        return {tuple(words)}
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def near_duplicates(texts: dict[str, str], threshold: float) -> list[tuple[str, str, float]]:
    """Pairs of ids whose word-trigram Jaccard similarity reaches the threshold."""
    grams = {key: shingles(text) for key, text in texts.items()}
    found = []
    for a, b in itertools.combinations(grams, 2):
        score = jaccard(grams[a], grams[b])
        if score >= threshold:
            found.append((a, b, score))
    return found


def check_texts(
    dataset: Dataset,
    min_words: int = 60,
    max_words: int = 140,
    near_duplicate: float = NEAR_DUPLICATE,
) -> CheckReport:
    report = CheckReport()
    split_pairs = {key for name in dataset.splits for key in dataset.pair_ids(name)}
    for key in sorted(set(dataset.gold) - split_pairs):
        report.problems.append(f"gold for {key} belongs to no split pair")
    for name in dataset.splits:
        for other in dataset.splits:
            if name < other:
                for kind, index in (("tasks", 0), ("personas", 1)):
                    shared = {key[index] for key in dataset.pair_ids(name)} & {
                        key[index] for key in dataset.pair_ids(other)
                    }
                    if shared:
                        report.problems.append(
                            f"splits {name} and {other} share {kind}: {sorted(shared)}"
                        )
    collections = {
        "task": {k: t.text for k, t in dataset.tasks.items()},
        "persona": {k: p.description for k, p in dataset.personas.items()},
        "gold": {pair_id(*k): g.text for k, g in dataset.gold.items()},
    }
    if dataset.details:
        # Simulated users are draws of one option per detail: two alike are no defect.
        del collections["persona"]
    for kind, texts in collections.items():
        for a, b, score in near_duplicates(texts, near_duplicate):
            report.problems.append(
                f"near-duplicate {kind}s {a} and {b} (trigram Jaccard {score:.2f})"
            )
    if not dataset.gold:  # scored by missing details: nothing to say about gold answers
        report.facts.append(details_summary(dataset))
        return report
    lengths = {k: len(v.split()) for k, v in collections["gold"].items()}
    for key, words in sorted(lengths.items()):
        if not min_words <= words <= max_words:
            report.problems.append(f"gold {key} has {words} words (bounds {min_words}-{max_words})")
    report.facts.append(
        f"{len(dataset.tasks)} tasks, {len(dataset.personas)} personas, {len(dataset.gold)} gold; "
        f"gold length {min(lengths.values())}-{max(lengths.values())} words"
    )
    return report


def details_summary(dataset: Dataset) -> str:
    """One line on a dataset scored by missing details: its pairs, and the details by importance."""
    pairs = list(dataset.details.values())
    vague = sum(p.vague for p in pairs)
    by_importance = Counter(d.importance for p in pairs for d in p.details)
    return (
        f"{len(dataset.tasks)} tasks, {len(dataset.personas)} simulated users, {len(pairs)} pairs "
        f"({vague} vague, {len(pairs) - vague} clear); missing details by importance "
        + ", ".join(f"{level}: {by_importance[level]}" for level in (1, 2, 3))
    )
