"""The records that flow between stages.

Every stage is a function from a list of these records to another list of them. They are plain
frozen dataclasses with string ids so that they round-trip through JSONL unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

Speaker = Literal["questioner", "roleplayer"]


def pair_id(task_id: str, persona_id: str) -> str:
    """The id of a (task, persona) pair, which groups its records."""
    return f"{task_id}|{persona_id}"


class PairRecord:
    """What every record about one (task, persona) pair has: its pair id, and a JSON form that is
    its fields as they are."""

    task_id: str
    persona_id: str

    @property
    def pair_id(self) -> str:
        return pair_id(self.task_id, self.persona_id)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, row: dict):
        return cls(**row)


@dataclass(frozen=True)
class Task:
    task_id: str
    text: str


@dataclass(frozen=True)
class Persona:
    persona_id: str
    name: str
    description: str


@dataclass(frozen=True)
class Gold:
    """The oracle's persona-tailored answer to one task."""

    task_id: str
    persona_id: str
    text: str
    oracle: str = "unknown"


@dataclass(frozen=True)
class MissingDetail:
    """One detail a vague request leaves out (IN3), and the simulated user's answer to it."""

    description: str  # e.g. "Duration of the trip"
    importance: int  # 1 (nice to know) to 3 (cannot answer without it)
    inquiry: str  # an example question that asks for it
    options: tuple[str, ...]
    choice: str  # this user's option

    @property
    def fact(self) -> str:
        """How the user states it, e.g. "Duration of the trip: 1 week"."""
        return f"{self.description}: {self.choice}"


@dataclass(frozen=True)
class PairDetails(PairRecord):
    """What a request leaves out and this user's answers (IN3): the key that the `details` reward
    and the IN3 roleplayer read. A clear request has no missing details."""

    task_id: str
    persona_id: str
    vague: bool
    category: str
    details: tuple[MissingDetail, ...] = ()

    def to_json(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "details": [dataclasses.asdict(d) for d in self.details],
        }

    @classmethod
    def from_json(cls, row: dict) -> PairDetails:
        details = tuple(
            MissingDetail(**{**d, "options": tuple(d["options"])}) for d in row.get("details", ())
        )
        return cls(**{**row, "details": details})


@dataclass(frozen=True)
class Pair:
    """One (task, persona) cell of a split, with its gold response (None in a dataset scored by
    missing details instead) and, in such a dataset, its missing details."""

    task: Task
    persona: Persona
    gold: Gold | None
    details: PairDetails | None = None

    @property
    def pair_id(self) -> str:
        return pair_id(self.task.task_id, self.persona.persona_id)


@dataclass(frozen=True)
class Turn:
    speaker: Speaker
    text: str


@dataclass(frozen=True)
class Conversation(PairRecord):
    """A simulated dialogue about one pair, stored with game roles (not chat roles)."""

    task_id: str
    persona_id: str
    sample_index: int
    target_turns: int
    turns: tuple[Turn, ...] = ()
    roleplayer_persona_id: str | None = (
        None  # differs from persona_id in the random-persona control
    )
    logprob: float | None = None  # log p_base(gold | task, conversation), set by the score stage
    response: str | None = None  # final assistant answer, set by the regularize stage
    rejected_questions: int = 0  # questioner samples resampled for asking nothing (ask_samples)

    @property
    def questions(self) -> list[str]:
        return [t.text for t in self.turns if t.speaker == "questioner"]

    @property
    def answers(self) -> list[str]:
        return [t.text for t in self.turns if t.speaker == "roleplayer"]

    @property
    def is_finished(self) -> bool:
        """All its questions answered, or (simulate.stop_early) ended by the questioner's answer."""
        return self.response is not None or len(self.answers) >= self.target_turns

    def with_turn(self, speaker: Speaker, text: str) -> Conversation:
        return dataclasses.replace(self, turns=(*self.turns, Turn(speaker, text)))

    def replace(self, **changes) -> Conversation:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_json(cls, row: dict) -> Conversation:
        turns = tuple(Turn(t["speaker"], t["text"]) for t in row.get("turns", ()))
        return cls(**{**row, "turns": turns})


@dataclass(frozen=True)
class ScoredControl(PairRecord):
    """A gold log-prob under a control condition that needs no conversation."""

    task_id: str
    persona_id: str
    condition: Literal["negative", "positive"]
    logprob: float


@dataclass(frozen=True)
class Judgement(PairRecord):
    """One comparison of a contender's final answer with the baseline's (Q_0's) for one test pair.

    `shown_first` lists, for each order the judge was asked, which answer was in position A;
    `verdicts` lists the answer the judge picked each time ("contender", "baseline", or "" when
    the reply named neither). One entry in random-order mode, two in counterbalanced and
    calibrated mode, none for the pointwise and persona-fit methods (which show one answer at a
    time, so there is no position).

    `margin`, when set, decides instead of the verdicts: the contender's advantage (> 0 wins,
    < 0 loses, 0 ties). Calibrated order: the contender's log-odds log p(its letter) - log p(the
    other letter), averaged over both orders (the verdicts stay the raw per-order picks, for the
    position bias); pointwise: [log p('Yes') - log p('No')] of the contender's answer minus the
    baseline's; persona_fit: fit(contender's answer) - fit(baseline's). Records written before
    the field existed have none and load as before; it is left out of the JSON when unset.
    """

    task_id: str
    persona_id: str
    sample_index: int
    target_turns: int
    contender: str  # e.g. "Q_2", or "Q_BASE answering after Q_2" in the response-model ablation
    shown_first: tuple[str, ...]
    verdicts: tuple[str, ...]
    margin: float | None = None

    @property
    def score(self) -> float | None:
        """The contender's result: 1 win, 0 loss, 0.5 tie (the two orders disagree, or a margin of
        0); None if unreadable. A margin, when there is one, decides."""
        if self.margin is not None:
            if math.isnan(self.margin):
                return None
            return 1.0 if self.margin > 0 else 0.0 if self.margin < 0 else 0.5
        if "" in self.verdicts or not self.verdicts:
            return None
        if len(set(self.verdicts)) > 1:
            return 0.5
        return 1.0 if self.verdicts[0] == "contender" else 0.0

    @property
    def first_position_picks(self) -> list[bool]:
        """For each readable verdict: did the judge pick the answer shown first?"""
        return [v == shown for v, shown in zip(self.verdicts, self.shown_first) if v]

    def to_json(self) -> dict:
        row = dataclasses.asdict(self)
        if self.margin is None:  # records of the methods without a margin stay as they were
            del row["margin"]
        return row

    @classmethod
    def from_json(cls, row: dict) -> Judgement:
        return cls(
            **{**row, "shown_first": tuple(row["shown_first"]), "verdicts": tuple(row["verdicts"])}
        )


@dataclass(frozen=True)
class AnswerFit(PairRecord):
    """How much better one final answer fits its pair's persona than a persona-blind reading.

    fit = [log p_base(answer | persona, task) - log p_base(answer | task)] / length, where length
    is the answer's number of tokens under the scorer (`unit` "tokens"), or its number of words
    when the scorer cannot list per-token log-probs (`unit` "words"). An empty answer has fit 0.
    """

    task_id: str
    persona_id: str
    sample_index: int
    target_turns: int
    with_persona: float  # log p_base(answer | persona, task), summed over the answer
    without_persona: float  # log p_base(answer | task)
    length: int
    unit: str  # "tokens" or "words"
    fit: float


@dataclass(frozen=True)
class QuestionGain(PairRecord):
    """What one question of a conversation, with its answer, added to log p_base(gold): the score
    after questions 1..`question` minus the score after questions 1..`question` - 1."""

    task_id: str
    persona_id: str
    sample_index: int
    target_turns: int
    question: int  # 1 for the first question
    gain: float


@dataclass
class Dataset:
    """Tasks, personas, gold responses (or missing details) and the splits that group them.

    A split is either every pairing of its tasks and personas (`{"tasks": [...], "personas":
    [...]}`) or a list of pairs (`{"pairs": [[task_id, persona_id], ...]}`), for personas that
    belong to one task, as IN3's simulated users do."""

    tasks: dict[str, Task]
    personas: dict[str, Persona]
    gold: dict[tuple[str, str], Gold]
    splits: dict[str, dict[str, list]] = field(default_factory=dict)
    details: dict[tuple[str, str], PairDetails] = field(default_factory=dict)

    def pair_ids(self, split: str) -> list[tuple[str, str]]:
        """The (task_id, persona_id) pairs of a split, task by task."""
        return split_pair_ids(self.splits[split])

    def split_personas(self, split: str) -> list[str]:
        """The persona ids a split uses, in order of first use."""
        return list(dict.fromkeys(p for _, p in self.pair_ids(split)))

    def pairs(self, split: str) -> list[Pair]:
        return [
            Pair(self.tasks[t], self.personas[p], self.gold.get((t, p)), self.details.get((t, p)))
            for t, p in self.pair_ids(split)
        ]


def split_pair_ids(spec: dict[str, list]) -> list[tuple[str, str]]:
    """A split's (task_id, persona_id) pairs, whichever of its two forms it has."""
    if "pairs" in spec:
        return [(t, p) for t, p in spec["pairs"]]
    return [(t, p) for t in spec["tasks"] for p in spec["personas"]]
