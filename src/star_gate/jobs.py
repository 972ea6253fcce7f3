"""Jobs: every model call of a stage, as plain data that runs wherever there are players.

A job holds its inputs (pairs, conversations), its seed and the models it needs (by path), so it
is a pure function of its contents and the model weights: run in this process or by a Ray worker
(star_gate/parallel.py), it gives the same records. `run_job` is the one code path for both.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from star_gate.config import RoleplayerConfig
from star_gate.data.records import Conversation, Pair, Persona
from star_gate.roles.factory import Players
from star_gate.roles.players import DetailsRoleplayer
from star_gate.stages import regularize, score_controls, score_conversations, simulate
from star_gate.stages.evaluate import answer_fits, judge_answers, judge_answers_by_fit
from star_gate.stages.score import (
    details_controls,
    score_controls_after_address,
    score_conversations_after_address,
    score_details,
)


def pairs_of(conversations: Sequence[Conversation], pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs these conversations belong to, in pairs' order: all that a job must carry."""
    wanted = {c.pair_id for c in conversations}
    return [p for p in pairs if p.pair_id in wanted]


@dataclass(frozen=True)
class SimulateJob:
    """Conversations between Q_policy and a roleplayer; policy None is the base model."""

    pairs: list[Pair]
    policy: str | None
    roleplayer: RoleplayerConfig | None  # None: roles.roleplayer
    conversations_per_pair: int
    max_turns: int
    seed: int
    acting: dict[str, Persona] | None = None  # pair id -> the persona played instead of its own
    stop_early: bool = False  # the questioner may end a conversation by answering
    openings: tuple[str, ...] = ()  # the first questions' openings (simulate.openings)

    def run(self, players: Players) -> list:
        roleplayer = players.roleplayer(self.roleplayer)
        if isinstance(roleplayer, DetailsRoleplayer):  # it answers from these pairs' details
            roleplayer = roleplayer.knowing(self.pairs)
        return simulate(
            self.pairs,
            players.questioner(self.policy),
            roleplayer,
            conversations_per_pair=self.conversations_per_pair,
            max_turns=self.max_turns,
            seed=self.seed,
            roleplayer_personas=self.acting,
            stop_early=self.stop_early,
            openings=self.openings,
        )


@dataclass(frozen=True)
class ScoreJob:
    """Each conversation's score: log p_base(gold | task, conversation), or (score.reward details)
    the share of missing details it recovered."""

    conversations: list[Conversation]
    pairs: list[Pair]

    def run(self, players: Players) -> list:
        if players.config.score.reward == "details":
            from star_gate.roles.detail_matcher import DetailMatcher

            return score_details(self.conversations, self.pairs, DetailMatcher())
        if players.config.score.reward == "gold_after_address":
            return score_conversations_after_address(
                self.conversations, self.pairs, players.scorer()
            )
        return score_conversations(self.conversations, self.pairs, players.scorer())


@dataclass(frozen=True)
class AnswerJob:
    """Final answers by Q_policy (mode policy), or none, or the gold."""

    conversations: list[Conversation]
    pairs: list[Pair]
    policy: str | None
    mode: Literal["policy", "none", "gold"]
    max_new_tokens: int

    def run(self, players: Players) -> list:
        policy = players.questioner(self.policy) if self.mode == "policy" else None
        return regularize(self.conversations, self.pairs, policy, self.mode, self.max_new_tokens)


@dataclass(frozen=True)
class ControlsJob:
    """The negative and positive controls of each pair, scored by Q_BASE (or, with score.reward
    details, exact: 0 and 1)."""

    pairs: list[Pair]

    def run(self, players: Players) -> list:
        if players.config.score.reward == "details":
            return details_controls(self.pairs)
        if players.config.score.reward == "gold_after_address":
            return score_controls_after_address(self.pairs, players.scorer())
        return score_controls(self.pairs, players.scorer())


@dataclass(frozen=True)
class JudgeJob:
    """The judge's verdicts on contender answers against the baseline's (stages/evaluate.py).

    method persona_fit asks no judge: the frozen base model (the scorer) measures each answer's fit."""

    contender: list[Conversation]
    baseline: list[Conversation]
    pairs: list[Pair]
    label: str
    order: Literal["random", "counterbalanced", "calibrated"]
    seed: int
    method: Literal["generate", "logprobs", "pointwise", "persona_fit"] | None = (
        None  # None: the config's
    )

    def run(self, players: Players) -> list:
        method = self.method or players.config.evaluate.judge_method
        if method == "persona_fit":
            return judge_answers_by_fit(
                self.contender, self.baseline, self.pairs, players.scorer(), self.label
            )
        judge = replace(players.judge(), method=method)
        return judge_answers(
            self.contender, self.baseline, self.pairs, judge, self.label, self.order, self.seed
        )


@dataclass(frozen=True)
class FitJob:
    """The persona fit of each conversation's final answer, measured by Q_BASE."""

    conversations: list[Conversation]
    pairs: list[Pair]

    def run(self, players: Players) -> list:
        return answer_fits(self.conversations, self.pairs, players.scorer())


Job = SimulateJob | ScoreJob | AnswerJob | ControlsJob | JudgeJob | FitJob


def run_job(players: Players, job: Job) -> tuple[list, dict[str, int]]:
    """The job's records and the work its backends counted (truncated prompts, API calls), which
    the pipeline stores with the records in the manifest."""
    return job.run(players), players.new_work()


def covered(job: Job) -> str:
    """What records a chunk's job covers (its pairs, or its conversations), as a short digest:
    a resumed stage reuses a finished chunk only if it covers the same ones, so a run branched
    under another simulate.chunk_pairs does not take old chunks for new ones."""
    if isinstance(job, SimulateJob):
        ids = [p.pair_id for p in job.pairs]
    else:
        ids = [f"{c.pair_id}#{c.sample_index}" for c in job.conversations]
    digest = zlib.crc32("\n".join(ids).encode())
    return f"{digest:08x}:{len(ids)}"
