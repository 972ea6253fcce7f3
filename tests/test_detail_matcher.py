"""The IN3 detail matcher: which missing details a question asks about, strictly."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from star_gate.data.in3 import bundled_in3_path
from star_gate.roles.detail_matcher import DetailMatcher, is_held_out, question_parts

TRAIN = bundled_in3_path()  # IN3's training split, shipped with the package


def detail(description: str, *options: str) -> SimpleNamespace:
    # The inquiry is a trap: the matcher must not read it.
    return SimpleNamespace(
        description=description, options=options, inquiry="favourite colour?", importance=2
    )


TRIP = [
    detail("Duration of the trip", "3-5 days", "1 week", "More than a week"),
    detail("Budget for the trip", "Economy", "Mid-range", "Luxury"),
    detail("Accommodation preferences", "Hotel", "Hostel", "Apartment rental"),
    detail("Activities of interest", "Sightseeing", "Cultural experiences", "Shopping"),
]
DURATION, BUDGET, ACCOMMODATION = 0, 1, 2


@pytest.fixture(scope="module")
def matcher() -> DetailMatcher:
    return DetailMatcher()


def test_a_budget_question_matches_the_budget_detail_only(matcher):
    assert matcher.asked("What is your budget for the trip?", TRIP) == [BUDGET]


def test_a_question_about_two_details_matches_both(matcher):
    asked = matcher.asked("How long is the trip, and what is your budget?", TRIP)
    assert sorted(asked) == [DURATION, BUDGET]


def test_options_represent_a_detail(matcher):
    assert matcher.asked("Would you rather stay in a hotel or a hostel?", TRIP) == [ACCOMMODATION]


@pytest.mark.parametrize(
    "question",
    ["What is your favourite colour?", "Do you have any pets?", "Which programming language?"],
)
def test_an_off_topic_question_matches_nothing(matcher, question):
    assert matcher.asked(question, TRIP) == []
    assert max(matcher.scores(question, TRIP)) < matcher.threshold


def test_the_inquiry_is_not_used(matcher):
    # Every detail's inquiry above asks for a favourite colour; still nothing matches it.
    assert matcher.scores("What is your favourite colour?", TRIP) == [0.0] * len(TRIP)


def test_asked_is_best_first_and_scores_are_bounded(matcher):
    question = "How long is the trip, and what is your budget?"
    scores = matcher.scores(question, TRIP)
    asked = matcher.asked(question, TRIP)
    assert [scores[i] for i in asked] == sorted((scores[i] for i in asked), reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_no_details_no_scores(matcher):
    assert matcher.scores("What is your budget?", []) == []
    assert matcher.asked("What is your budget?", []) == []


def test_scores_are_deterministic():
    question = "What is your budget, and how long will you stay?"
    first = DetailMatcher().scores(question, TRIP)
    assert DetailMatcher().scores(question, TRIP) == first
    assert DetailMatcher().scores(question, list(TRIP)) == first


def test_a_question_splits_into_its_sentences_and_clauses():
    parts = question_parts("What is your budget, and how long will you stay? Any hotel?")
    assert parts[0] == "What is your budget, and how long will you stay? Any hotel?"
    assert {"What is your budget", "how long will you stay", "Any hotel"} <= set(parts)


def test_a_higher_threshold_matches_no_more():
    lenient, strict = DetailMatcher(threshold=0.5), DetailMatcher(threshold=0.99)
    question = "What is your budget for the trip?"
    assert set(strict.asked(question, TRIP)) <= set(lenient.asked(question, TRIP))
    assert strict.asked("Tell me about the trip.", TRIP) == []


def test_is_held_out_is_the_sha256_rule():
    for task in ["I would like to plan a trip to Paris next month.", "", "Écrire un poème"]:
        digest = int(hashlib.sha256(task.encode("utf-8")).hexdigest(), 16)
        assert is_held_out(task) == (digest % 5 == 0)
        assert is_held_out(task) == is_held_out(task)


def test_is_held_out_keeps_back_about_a_fifth_of_the_training_file():
    tasks = [json.loads(line)["task"] for line in TRAIN.read_text(encoding="utf-8").splitlines()]
    share = sum(map(is_held_out, tasks)) / len(tasks)
    assert 0.17 < share < 0.23
