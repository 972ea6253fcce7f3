"""Calibrate the IN3 detail matcher's threshold and measure it on the held-out tasks.

The tasks split by `is_held_out` (a hash of the task text): the threshold and the document
frequencies come from the other four fifths only; the held-out fifth is measured once.

Each vague task gives, for each of its details, its `inquiry` as a question that asks about that
detail and about none of the task's other details, plus OFF_TOPIC inquiries drawn (seeded) from
other tasks of the same slice, which must match none of its details. A decision is one (question,
detail) pair; precision counts the off-topic pairs too. Reported: precision, recall, F1; "top-1",
the share of inquiries whose own detail alone scores highest; "off-topic", the share of off-topic
questions that match any detail.

Threshold rule: the best F1 on the calibration tasks among thresholds (0.01 steps) with
precision >= MIN_PRECISION and off-topic matches <= MAX_OFF_TOPIC. The precision floor sits above
0.9 so that the held-out precision, a little lower as a rule, stays above 0.9 too.

    python benchmarks/in3_matcher.py [--json] [--frequencies] [--data train.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from star_gate.data.in3 import bundled_in3_path
from star_gate.roles import detail_matcher
from star_gate.roles.detail_matcher import (
    DetailMatcher,
    count_document_frequencies,
    format_frequency_table,
    is_held_out,
)

MIN_PRECISION = 0.92
MAX_OFF_TOPIC = 0.02
OFF_TOPIC = 3  # off-topic questions per task
MIN_COUNT = 5  # stems seen fewer times are not shipped (they count as unseen)
SEED = 0

# The shipped design first; the others each leave one of its parts out.
DESIGNS = {
    "shipped": {},
    "whole question": {"split_parts": False},
    "no options": {"option_weight": 0.0},
    "no question cues": {"question_cues": False},
    "no word sharing": {"share_words": False},
    "no outside words": {"outside_weight": 0.0},
    "no evidence term": {"evidence_half": 0.0},
    "others count half": {"other_weight": 0.5},
}


@dataclass(frozen=True)
class Item:
    question: str
    details: tuple  # the task's details (SimpleNamespace: description, options, inquiry, ...)
    gold: frozenset[int]  # indices the question asks about; empty when off topic
    off_topic: bool


def read_tasks(path: Path) -> list[dict]:
    """Rows with missing details; each detail as an object, as the roleplayer passes them."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    for row in rows:
        row["details"] = tuple(
            SimpleNamespace(
                description=d["description"],
                options=tuple(d["options"]),
                inquiry=d["inquiry"],
                importance=int(d["importance"]),
            )
            for d in row["missing_details"]
        )
    return [row for row in rows if row["details"]]


def build_items(tasks: list[dict], seed: int = SEED) -> list[Item]:
    """Own inquiries (one positive, the rest negatives) and seeded off-topic inquiries per task."""
    rng = random.Random(seed)
    inquiries = [(t, d.inquiry) for t, task in enumerate(tasks) for d in task["details"]]
    items = []
    for t, task in enumerate(tasks):
        details = task["details"]
        for i, detail in enumerate(details):
            items.append(Item(detail.inquiry, details, frozenset({i}), False))
        others = [q for owner, q in inquiries if owner != t]
        for question in rng.sample(others, OFF_TOPIC):
            items.append(Item(question, details, frozenset(), True))
    return items


def build_joined(tasks: list[dict], seed: int = SEED) -> list[Item]:
    """Two inquiries of one task joined into one question: it asks about both details."""
    rng = random.Random(seed)
    items = []
    for task in tasks:
        details = task["details"]
        if len(details) >= 2:
            i, j = sorted(rng.sample(range(len(details)), 2))
            question = f"{details[i].inquiry} Also, {details[j].inquiry[0].lower()}{details[j].inquiry[1:]}"
            items.append(Item(question, details, frozenset({i, j}), False))
    return items


def both_asked(items: list[Item], scores: list[list[float]], threshold: float) -> float:
    """The share of joined questions whose two details are both matched."""
    both = sum(all(row[i] >= threshold for i in item.gold) for item, row in zip(items, scores))
    return round(both / len(items), 4)


def measure(items: list[Item], scores: list[list[float]], threshold: float) -> dict:
    """Precision, recall, F1, top-1 and off-topic match rate of the decisions at a threshold."""
    hits = false = missed = top = off_hits = 0
    for item, row in zip(items, scores):
        chosen = {i for i, s in enumerate(row) if s >= threshold}
        hits += len(chosen & item.gold)
        false += len(chosen - item.gold)
        missed += len(item.gold - chosen)
        if item.off_topic:
            off_hits += bool(chosen)
        else:
            (own,) = item.gold
            top += row[own] > 0 and all(s < row[own] for i, s in enumerate(row) if i != own)
    precision = hits / (hits + false) if hits + false else 1.0
    recall = hits / (hits + missed)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    off_topic = sum(item.off_topic for item in items)
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "top1": round(top / (len(items) - off_topic), 4),
        "off_topic_match_rate": round(off_hits / off_topic, 4),
    }


def calibrate(items: list[Item], scores: list[list[float]]) -> tuple[float, dict]:
    """The threshold rule of this script's docstring; the highest precision if none qualifies."""
    measured = [(t / 100, measure(items, scores, t / 100)) for t in range(1, 100)]
    allowed = [
        (t, m)
        for t, m in measured
        if m["precision"] >= MIN_PRECISION and m["off_topic_match_rate"] <= MAX_OFF_TOPIC
    ]
    if allowed:
        return max(allowed, key=lambda tm: (tm[1]["f1"], -tm[0]))
    return max(measured, key=lambda tm: (tm[1]["precision"], tm[1]["f1"]))


def evaluate_design(settings: dict, calibration, held_out, joined, frequencies, count) -> dict:
    matcher = DetailMatcher(document_frequencies=frequencies, document_count=count, **settings)
    started = time.perf_counter()
    calibration_scores = [matcher.scores(i.question, i.details) for i in calibration]
    per_second = len(calibration) / (time.perf_counter() - started)
    threshold, fitted = calibrate(calibration, calibration_scores)
    held_scores = [matcher.scores(i.question, i.details) for i in held_out]
    joined_scores = [matcher.scores(i.question, i.details) for i in joined]
    return {
        "threshold": threshold,
        "calibration": fitted,
        "held_out": measure(held_out, held_scores, threshold),
        "held_out_two_details_both_matched": both_asked(joined, joined_scores, threshold),
        "questions_per_second": round(per_second),
    }


def shipped_table_matches(frequencies, count) -> bool:
    """Whether the module ships the frequencies counted here (else `--frequencies` prints them)."""
    table = format_frequency_table(frequencies, MIN_COUNT)
    shipped = detail_matcher.CALIBRATION_FREQUENCIES.split()
    return table.split() == shipped and count == detail_matcher.CALIBRATION_DETAILS


def print_frequencies(frequencies, count) -> None:
    """The two constants to paste at the end of roles/detail_matcher.py."""
    lines = textwrap.wrap(format_frequency_table(frequencies, MIN_COUNT), 92)
    print(f"CALIBRATION_DETAILS = {count}")
    print("CALIBRATION_FREQUENCIES = (")
    for line in lines:
        print(f'    "{line} "')
    print(")")


def print_table(results: dict) -> None:
    head = f"{'design':<18} {'thr':>5} | {'calibration: P':>14} {'R':>6} {'top1':>6} {'off':>6}"
    print(
        f"{head} | {'held-out: P':>11} {'R':>6} {'F1':>6} {'top1':>6} {'off':>6} {'both':>6} {'q/s':>6}"
    )
    for name, r in results.items():
        c, h = r["calibration"], r["held_out"]
        print(
            f"{name:<18} {r['threshold']:>5.2f} | {c['precision']:>14.3f} {c['recall']:>6.3f}"
            f" {c['top1']:>6.3f} {c['off_topic_match_rate']:>6.3f} | {h['precision']:>11.3f}"
            f" {h['recall']:>6.3f} {h['f1']:>6.3f} {h['top1']:>6.3f}"
            f" {h['off_topic_match_rate']:>6.3f} {r['held_out_two_details_both_matched']:>6.3f}"
            f" {r['questions_per_second']:>6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=bundled_in3_path(), help="IN3 train.jsonl")
    parser.add_argument("--json", action="store_true", help="one JSON object on the last line")
    parser.add_argument("--frequencies", action="store_true", help="print the table to ship")
    args = parser.parse_args()
    tasks = read_tasks(args.data)
    calibration_tasks = [t for t in tasks if not is_held_out(t["task"])]
    held_out_tasks = [t for t in tasks if is_held_out(t["task"])]
    frequencies, count = count_document_frequencies(
        d for t in calibration_tasks for d in t["details"]
    )
    if args.frequencies:
        print_frequencies(frequencies, count)
        return
    calibration, held_out = build_items(calibration_tasks), build_items(held_out_tasks)
    joined = build_joined(held_out_tasks)
    print(
        f"{len(calibration_tasks)} calibration tasks ({len(calibration)} questions), "
        f"{len(held_out_tasks)} held-out tasks ({len(held_out)} questions); shipped threshold "
        f"{detail_matcher.CALIBRATED_THRESHOLD}, shipped frequencies "
        f"{'match' if shipped_table_matches(frequencies, count) else 'DIFFER: rerun --frequencies'}"
    )
    results = {
        name: evaluate_design(settings, calibration, held_out, joined, frequencies, count)
        for name, settings in DESIGNS.items()
    }
    print_table(results)
    if args.json:
        print(json.dumps({"min_precision": MIN_PRECISION, "designs": results}))


if __name__ == "__main__":
    main()
