"""Which missing details of an IN3 task does a clarifying question ask about? A lexical matcher.

It backs the `details` roleplayer and reward: the simulated user tells the fact of each detail
the question asks about, and says it has no preference when it asks about none. It must be strict:
a question about something else must recover nothing, or asking anything would pay.

A detail is represented by the word stems of its description and of its options only, never by
its `inquiry`: the inquiries are the examples the threshold is calibrated on
(benchmarks/in3_matcher.py), and matching on them would make that measurement trivial.

A detail's score (0 to 1) is the geometric mean of three shares of the IDF mass the question and
the detail have in common (options count for `option_weight` of a description word):

- description coverage: how much of the description the question mentions;
- question share: how much of the question points at this detail rather than at the task's other
  details (question words no detail of the task uses count for `outside_weight` only);
- evidence: how much was matched at all, m / (m + `evidence_half`), so that one shared generic
  word is not enough.

A word shared by several details of the task ("trip" in "Duration of the trip" and "Budget for
the trip") is divided between them: it tells them apart no better than it tells them from nothing.
A few question phrases add the words a description uses for what they ask ("how long" adds
"duration"), since questions and descriptions rarely share those.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from star_gate.data.in3 import is_held_out

__all__ = [
    "CALIBRATED_THRESHOLD",
    "DetailMatcher",
    "content_stems",
    "count_document_frequencies",
    "format_frequency_table",
    "is_held_out",
    "question_stems",
    "stem",
]

# Set by benchmarks/in3_matcher.py: the best F1 on the calibration tasks (4 in 5 of the IN3
# training file) with precision >= 0.92 and at most 2% of off-topic questions matching anything.
# Calibration: precision 0.93, recall 0.86, own detail on top 0.93, off-topic matches 1.0%.
# Held-out fifth: precision 0.92, recall 0.85, own detail on top 0.91, off-topic matches 1.4%.
CALIBRATED_THRESHOLD = 0.63

OPTION_WEIGHT = 0.5  # an option word says less about what a detail is than a description word
OUTSIDE_WEIGHT = 0.25  # question words no detail of the task uses: task topic, or off topic
EVIDENCE_HALF = 2.0  # matched IDF mass at which the evidence share is one half
STEM_LENGTH = 5  # stems are cut here: "location"/"locate", "budget"/"budgeting" meet

_WORD = re.compile(r"[a-z0-9]+")
_SUFFIXES = (
    "ations", "ation", "ings", "ing", "ities", "ity", "ies", "ied", "ness", "ments", "ment",
    "ers", "er", "ed", "es", "ly", "s",
)  # fmt: skip
_STOP_WORDS = frozenset(
    """
    a an the and or of to in on for with by at from as is are was were be been being do does did
    doing you your yours i me my we our us it its this that these those there here what which who
    whom whose when where why how would could should can will shall may might must have has had
    having any some all each every no not yes like want wish please tell know let specify provide
    share describe give mention about into than then so if also just more most much many other such
    only own same too very don prefer preferred preference preferences specific particular user
    users kind kinds type types sort looking plan planning need needs needed eg etc
    """.split()
)  # question and description boilerplate; "user" is how descriptions say "you"
_QUESTION_CUES = (
    ("how long", "duration length time"),
    ("how much", "amount budget cost price spend"),
    ("how many", "number count size"),
    ("how often", "frequency"),
    ("how old", "age"),
    ("how recent", "time recent date"),
    ("how soon", "deadline time urgency turnaround"),
    ("how quickly", "deadline time urgency turnaround speed"),
    ("how far", "distance"),
    ("by when", "deadline time"),
    ("what time", "time"),
    ("when", "date time timing deadline schedule"),
    ("where", "location place area"),
)  # what a question phrase asks for, in the words descriptions use for it


def stem(word: str) -> str:
    """A crude stem: one common suffix off, then cut to STEM_LENGTH, so inflections meet."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:STEM_LENGTH]


@lru_cache(maxsize=65536)
def content_stems(text: str) -> frozenset[str]:
    """The stems of a text's content words (stop words and single letters dropped)."""
    words = _WORD.findall(text.lower())
    return frozenset(stem(w) for w in words if len(w) > 1 and w not in _STOP_WORDS)


@lru_cache(maxsize=65536)
def question_stems(question: str) -> frozenset[str]:
    """A question's content stems, plus the description words its question phrases stand for."""
    stems = set(content_stems(question))
    spaced = f" {' '.join(_WORD.findall(question.lower()))} "
    for phrase, words in _QUESTION_CUES:
        if f" {phrase} " in spaced:
            stems |= content_stems(words)
    return frozenset(stems)


def _detail_stems(detail) -> tuple[frozenset[str], frozenset[str]]:
    """(description stems, option stems not already in the description); never the inquiry."""
    described = content_stems(detail.description)
    options = content_stems(" ".join(detail.options)) - described
    return described, options


def count_document_frequencies(details: Iterable) -> tuple[Counter, int]:
    """In how many details each stem occurs (description and options), and how many details."""
    frequencies: Counter = Counter()
    count = 0
    for detail in details:
        described, options = _detail_stems(detail)
        frequencies.update(described | options)
        count += 1
    return frequencies, count


def format_frequency_table(frequencies: Mapping[str, int], min_count: int) -> str:
    """The frequencies of stems seen at least min_count times, as "stem:count" words (shippable)."""
    kept = sorted((s, n) for s, n in frequencies.items() if n >= min_count)
    return " ".join(f"{s}:{n}" for s, n in kept)


def _parse_frequency_table(table: str) -> dict[str, int]:
    pairs = (item.rsplit(":", 1) for item in table.split())
    return {s: int(n) for s, n in pairs}


class DetailMatcher:
    """Scores a question against a task's missing details; `asked` keeps those at the threshold.

    By default the document frequencies are the ones shipped below, counted on the calibration
    tasks; the calibration script passes its own to measure a design before it is shipped.
    """

    def __init__(
        self,
        threshold: float = CALIBRATED_THRESHOLD,
        *,
        document_frequencies: Mapping[str, int] | None = None,
        document_count: int | None = None,
        option_weight: float = OPTION_WEIGHT,
        outside_weight: float = OUTSIDE_WEIGHT,
        evidence_half: float = EVIDENCE_HALF,
        question_cues: bool = True,
        share_words: bool = True,
    ):
        if document_frequencies is None:
            document_frequencies = _parse_frequency_table(CALIBRATION_FREQUENCIES)
            document_count = CALIBRATION_DETAILS
        if document_count is None:
            raise ValueError("document_count is required with document_frequencies")
        self.threshold = threshold
        self.option_weight = option_weight
        self.outside_weight = outside_weight
        self.evidence_half = evidence_half
        self.question_cues = question_cues
        self.share_words = share_words
        self._frequencies = dict(document_frequencies)
        self._count = document_count

    def idf(self, stem_: str) -> float:
        """Inverse document frequency; a stem rarer than the shipped table counts as unseen."""
        return math.log((self._count + 1) / (self._frequencies.get(stem_, 0) + 1))

    def scores(self, question: str, details: Sequence) -> list[float]:
        """One score in [0, 1] per detail: how surely the question asks about it."""
        asked = question_stems(question) if self.question_cues else content_stems(question)
        terms = [_detail_stems(d) for d in details]
        weight = self._weights(asked, terms)
        used = set().union(*(d | o for d, o in terms))
        question_mass = sum(weight[s] for s in asked & used) + self.outside_weight * sum(
            weight[s] for s in asked - used
        )
        return [self._score(asked, d, o, weight, question_mass) for d, o in terms]

    def asked(self, question: str, details: Sequence) -> list[int]:
        """Indices of the details the question asks about, best first (none: off topic)."""
        scores = self.scores(question, details)
        chosen = [i for i, s in enumerate(scores) if s >= self.threshold]
        return sorted(chosen, key=lambda i: (-scores[i], i))

    def _weights(self, asked: frozenset[str], terms) -> dict[str, float]:
        """IDF of each stem in play, divided among the task's details that use it."""
        users = Counter(s for d, o in terms for s in d | o)
        stems = asked.union(*(d | o for d, o in terms))
        share = (lambda s: max(1, users[s])) if self.share_words else (lambda s: 1)
        return {s: self.idf(s) / share(s) for s in stems}

    def _score(self, asked, described, options, weight, question_mass) -> float:
        matched = sum(weight[s] for s in asked & described) + self.option_weight * sum(
            weight[s] for s in asked & options
        )
        if matched <= 0:
            return 0.0
        description_mass = sum(weight[s] for s in described)
        coverage = min(1.0, matched / description_mass) if description_mass else 1.0
        share = min(1.0, matched / question_mass)
        evidence = matched / (matched + self.evidence_half)
        return (coverage * share * evidence) ** (1 / 3)


# In how many of the calibration tasks' details each stem occurs (stems seen fewer than 5 times
# are left out and count as unseen). Printed by `python benchmarks/in3_matcher.py --frequencies`.
CALIBRATION_DETAILS = 0
CALIBRATION_FREQUENCIES = ""
