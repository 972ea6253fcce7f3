"""Quality checks for a persona–task–gold dataset (`star-gate data check`).

The text checks need no model: one gold per pair, no duplicate or near-duplicate texts, gold
lengths within bounds. The control check needs the scoring model: a gold answer written for a
persona should be more likely when the model has read that persona, log p(g | u, t) > log p(g | t).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

from star_gate.data.records import Dataset, pair_id

_WORD = re.compile(r"[a-z0-9']+")


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
    near_duplicate: float = 0.5,
) -> CheckReport:
    report = CheckReport()
    split_pairs = {
        (t, p) for spec in dataset.splits.values() for t in spec["tasks"] for p in spec["personas"]
    }
    for key in sorted(set(dataset.gold) - split_pairs):
        report.problems.append(f"gold for {key} belongs to no split pair")
    for name, spec in dataset.splits.items():
        for other, other_spec in dataset.splits.items():
            if name < other:
                for kind in ("tasks", "personas"):
                    shared = set(spec[kind]) & set(other_spec[kind])
                    if shared:
                        report.problems.append(
                            f"splits {name} and {other} share {kind}: {sorted(shared)}"
                        )
    collections = {
        "task": {k: t.text for k, t in dataset.tasks.items()},
        "persona": {k: p.description for k, p in dataset.personas.items()},
        "gold": {pair_id(*k): g.text for k, g in dataset.gold.items()},
    }
    for kind, texts in collections.items():
        for a, b, score in near_duplicates(texts, near_duplicate):
            report.problems.append(
                f"near-duplicate {kind}s {a} and {b} (trigram Jaccard {score:.2f})"
            )
    lengths = {k: len(v.split()) for k, v in collections["gold"].items()}
    for key, words in sorted(lengths.items()):
        if not min_words <= words <= max_words:
            report.problems.append(f"gold {key} has {words} words (bounds {min_words}-{max_words})")
    report.facts.append(
        f"{len(dataset.tasks)} tasks, {len(dataset.personas)} personas, {len(dataset.gold)} gold; "
        f"gold length {min(lengths.values())}-{max(lengths.values())} words"
    )
    return report
