"""Read a finished (or half-finished) run directory and summarise its evaluation, without any model.

Used by `star-gate run` for its closing table and by `star-gate report`. Everything here is read
only: it never writes into the run directory.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from star_gate.config import RunConfig, load_config
from star_gate.data.jsonl import read_jsonl
from star_gate.data.records import AnswerFit, Conversation, Judgement, QuestionGain, ScoredControl
from star_gate.rundir import Layout
from star_gate.stats import (
    WinRate,
    asking_share,
    mean_sem,
    non_answer_share,
    paired_differences,
    per_pair_means,
    persona_gap_share,
    win_rate,
)


@dataclass(frozen=True)
class Estimate:
    label: str
    mean: float
    sem: float
    count: int


class RunResults:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{self.root} is not a run directory (no manifest.json)")
        contents = json.loads(manifest.read_text(encoding="utf-8"))
        self.stages: dict = contents["stages"]
        self.created: str | None = contents.get("created")
        self._records: dict[
            str, list
        ] = {}  # each file parsed once: a report asks for it many times

    @property
    def wall_seconds(self) -> float | None:
        """From the run directory's creation to its last finished stage (a resumed run's pauses
        included)."""
        finished = [entry["finished"] for entry in self.stages.values() if "finished" in entry]
        if self.created is None or not finished:
            return None
        start = datetime.fromisoformat(self.created)
        return (datetime.fromisoformat(max(finished)) - start).total_seconds()

    @property
    def method(self) -> str:
        """What trained this run's questioners, in a few words (for comparison tables)."""
        config = self.config
        if config.loop == "online":
            credit = "per question" if config.online.per_turn else "per conversation"
            return f"online (GRPO, credit {credit}, KL {config.online.kl_coef:g})"
        objective = "DPO" if config.train.objective == "dpo" else "SFT"
        return f"{objective}, final answer: {config.regularize.mode}"

    @cached_property
    def config(self) -> RunConfig:
        return load_config(self.root / "config.yaml", [])

    @property
    def name(self) -> str:
        return self.root.name

    def has(self, key: str) -> bool:
        return key in self.stages and (self.root / self.stages[key]["output"]).exists()

    def _rows(self, key: str, decode):
        if key not in self._records:
            path = self.root / self.stages[key]["output"] if self.has(key) else None
            self._records[key] = [decode(row) for _, row in read_jsonl(path)] if path else []
        return self._records[key]

    # -- records ------------------------------------------------------------------------------
    def iterations(self) -> list[int]:
        """Iterations whose test conversations were scored, in order."""
        return Layout.evaluated_iterations(self.stages)

    def controls(self, condition: str) -> dict[str, float]:
        rows = self._rows(Layout.CONTROLS_KEY, ScoredControl.from_json)
        return {c.pair_id: c.logprob for c in rows if c.condition == condition}

    def scored(self, iteration: int, condition: str = "experimental") -> list[Conversation]:
        _, _, key, _ = Layout.condition_keys(iteration, condition)
        return self._rows(key, Conversation.from_json)

    def answers(self, iteration: int) -> list[Conversation]:
        return self._rows(Layout.eval_key(iteration, "answers"), Conversation.from_json)

    def judgements(self, iteration: int, kind: str = "judge") -> list[Judgement]:
        return self._rows(Layout.eval_key(iteration, kind), Judgement.from_json)

    def answer_fits(self, iteration: int) -> list[AnswerFit]:
        return self._rows(Layout.eval_key(iteration, "persona_fit"), AnswerFit.from_json)

    def regularized(self, iteration: int) -> list[Conversation]:
        """The kept conversations of training iteration k with the final answers Q_{k-1} wrote."""
        return self._rows(Layout.stage_key(iteration, "regularize"), Conversation.from_json)

    def online_rounds(self) -> list[tuple[int, int, dict]]:
        """loop online: (iteration, round, its manifest entry: reward, reward_sem, kl, loss, ...)
        for every finished round, in order: the reward curve."""
        rounds = []
        for iteration in range(1, self.config.iterations + 1):
            for index in range(1, self.config.online.rounds + 1):
                key = Layout.online_round(iteration, index)[0]
                if key in self.stages:
                    rounds.append((iteration, index, self.stages[key]))
        return rounds

    def training_iterations(self) -> list[int]:
        """Iterations whose regularization answers were written, in order."""
        return Layout.trained_iterations(self.stages)

    # -- summaries ----------------------------------------------------------------------------
    def control_rows(self) -> list[Estimate]:
        rows = []
        for condition in ("negative", "positive"):
            values = list(self.controls(condition).values())
            if values:
                rows.append(Estimate(f"{condition} control", *mean_sem(values), len(values)))
        return rows

    def logprob(self, iteration: int, condition: str = "experimental") -> Estimate | None:
        values = [c.logprob for c in self.scored(iteration, condition)]
        label = f"Q_{iteration} " + (
            "conversations" if condition == "experimental" else "random persona"
        )
        return Estimate(label, *mean_sem(values), len(values)) if values else None

    def paired_gain(self, later: int, earlier: int = 0) -> Estimate | None:
        """Per test pair, mean log-prob under Q_later's conversations minus Q_earlier's; mean ± SEM over
        pairs. Pairing removes the (large) differences between gold answers' lengths."""
        a, b = (
            per_pair_means((c.pair_id, c.logprob) for c in self.scored(k)) for k in (later, earlier)
        )
        diffs = paired_differences(a, b)
        return (
            Estimate(f"Q_{later} - Q_{earlier}, paired by test pair", *mean_sem(diffs), len(diffs))
            if diffs
            else None
        )

    def gap_share(self, iteration: int, condition: str = "experimental") -> tuple[float, float]:
        values = per_pair_means((c.pair_id, c.logprob) for c in self.scored(iteration, condition))
        return persona_gap_share(
            values, self.controls("negative"), self.controls("positive"), seed=self.config.seed
        )

    def win_rate(self, iteration: int, kind: str = "judge") -> WinRate | None:
        judgements = self.judgements(iteration, kind)
        return win_rate(judgements) if judgements else None

    def win_rates_by_length(self, iteration: int, kind: str = "judge") -> dict[int, WinRate]:
        groups: dict[int, list[Judgement]] = defaultdict(list)
        for judgement in self.judgements(iteration, kind):
            groups[judgement.target_turns].append(judgement)
        return {turns: win_rate(groups[turns]) for turns in sorted(groups)}

    def persona_fit(self, iteration: int) -> Estimate | None:
        """Q_k's final answers' persona fit (nats per token): mean ± SEM over test pairs' means."""
        values = list(
            per_pair_means((f.pair_id, f.fit) for f in self.answer_fits(iteration)).values()
        )
        return (
            Estimate(f"Q_{iteration} persona fit", *mean_sem(values), len(values))
            if values
            else None
        )

    def persona_fit_gain(self, later: int, earlier: int = 0) -> Estimate | None:
        """Per test pair, the mean persona fit of Q_later's final answers minus Q_earlier's; mean ±
        SEM over pairs."""
        a, b = (
            per_pair_means((f.pair_id, f.fit) for f in self.answer_fits(k))
            for k in (later, earlier)
        )
        diffs = paired_differences(a, b)
        label = f"Q_{later} - Q_{earlier} persona fit, paired by test pair"
        return Estimate(label, *mean_sem(diffs), len(diffs)) if diffs else None

    def non_answers(self, iteration: int, kind: str = "answers") -> Estimate | None:
        """Share of Q_k's judged final answers (kind base_answers: Q_BASE's after Q_k's
        conversations) that are no answer (stages/evaluate.py, is_non_answer)."""
        rows = self._rows(Layout.eval_key(iteration, kind), Conversation.from_json)
        mean, sem, count = non_answer_share(c.response for c in rows)
        return Estimate(f"Q_{iteration} non-answers", mean, sem, count) if count else None

    def regularized_non_answers(self, iteration: int) -> Estimate | None:
        """Share of training iteration k's regularization answers (written by Q_{k-1}) that are no
        answer; None when there are none (regularize.mode none, or not run yet)."""
        responses = [c.response for c in self.regularized(iteration) if c.response is not None]
        mean, sem, count = non_answer_share(responses)
        return (
            Estimate(f"iter_{iteration} regularization non-answers", mean, sem, count)
            if count
            else None
        )

    def asking(self, iteration: int) -> Estimate | None:
        """Share of Q_k's questioner turns in its test conversations that ask (roles/answers.asks),
        mean ± SEM over test pairs; n counts turns."""
        mean, sem, turns = asking_share(self.scored(iteration))
        return Estimate(f"Q_{iteration} turns that ask", mean, sem, turns) if turns else None

    def training_asking(self, iteration: int) -> tuple[Estimate, Estimate] | None:
        """Training iteration k (questions by Q_{k-1}): the share of questioner turns that ask in
        all its sampled conversations, and in those selection kept."""
        shares = []
        for stage in ("score", "select"):
            rows = self._rows(Layout.stage_key(iteration, stage), Conversation.from_json)
            mean, sem, turns = asking_share(rows)
            if not turns:
                return None
            shares.append(Estimate(f"iter_{iteration} {stage}", mean, sem, turns))
        return shares[0], shares[1]

    def rejected_questions(self, iteration: int) -> float | None:
        """Questioner samples rejected for asking nothing (simulate.ask_samples), per turn of Q_k's
        test conversations; None without conversations."""
        rows = self.scored(iteration)
        turns = sum(len(c.questions) for c in rows)
        return sum(c.rejected_questions for c in rows) / turns if turns else None

    def questions_asked(self, iteration: int) -> Estimate | None:
        """Questions Q_k asked per test conversation (answered ones): mean ± SEM over test pairs.
        With simulate.stop_early the questioner decides; otherwise the sampler does."""
        means = per_pair_means((c.pair_id, len(c.answers)) for c in self.scored(iteration))
        values = list(means.values())
        return (
            Estimate(f"Q_{iteration} questions asked", *mean_sem(values), len(values))
            if values
            else None
        )

    def question_gains(self, iteration: int) -> list[Estimate]:
        """For question 1, 2, ... of Q_k's test conversations, the gain in gold log-prob it brought:
        mean ± SEM over test pairs (each pair's mean over its conversations that asked it)."""
        rows = self._rows(Layout.eval_key(iteration, "question_gains"), QuestionGain.from_json)
        estimates = []
        for question in sorted({g.question for g in rows}):
            means = per_pair_means((g.pair_id, g.gain) for g in rows if g.question == question)
            label = f"Q_{iteration} question {question}"
            estimates.append(Estimate(label, *mean_sem(list(means.values())), len(means)))
        return estimates

    def iteration_metrics(self, iteration: int) -> dict[str, float]:
        """The numbers a run logs once per iteration (train.report_to): how much selection raised
        the training conversations' gold log-prob, the training loss, and the test split's gains.
        Only those that exist; the evaluation's are Q_iteration's."""
        metrics: dict[str, float] = {}
        scored = self._rows(Layout.stage_key(iteration, "score"), Conversation.from_json)
        kept = self._rows(Layout.stage_key(iteration, "select"), Conversation.from_json)
        if scored and kept:
            all_mean, kept_mean = (
                mean_sem([c.logprob for c in rows])[0] for rows in (scored, kept)
            )
            metrics["select/kept_logprob_gain"] = kept_mean - all_mean
        train = self.stages.get(Layout.stage_key(iteration, "train"), {})
        if "train_loss" in train:
            metrics["train/loss"] = train["train_loss"]
        estimates = {
            "eval/logprob": self.logprob(iteration),
            "eval/gain_vs_q0": self.paired_gain(iteration) if iteration > 0 else None,
            "eval/persona_fit": self.persona_fit(iteration),
            "eval/non_answers": self.non_answers(iteration),
            "eval/questions_asked": self.questions_asked(iteration),
            "eval/asking_share": self.asking(iteration),
        }
        metrics |= {
            name: estimate.mean for name, estimate in estimates.items() if estimate is not None
        }
        if self.scored(iteration):
            metrics["eval/gap_share"] = self.gap_share(iteration)[0]
        if (rate := self.win_rate(iteration)) is not None:
            metrics["eval/win_rate_vs_q0"] = rate.mean
        return metrics


# -- several runs ----------------------------------------------------------------------------------
SEED_FIELDS = {"seed", "run_dir"}  # what repeats of one experiment may differ in


def repeats_of_one_config(runs: Sequence[RunResults]) -> bool:
    """Whether the runs are one experiment run again with other seeds: their configs agree on
    everything but the seed and the run directory."""
    settings = [run.config.model_dump(mode="json", exclude=SEED_FIELDS) for run in runs]
    return len(runs) > 1 and all(s == settings[0] for s in settings[1:])


def pooled_gain(runs: Sequence[RunResults], later: int, earlier: int = 0) -> Estimate | None:
    """Each run's paired Q_later − Q_earlier on the test split, averaged over the runs, ± an SEM
    that holds both how much training runs differ and each run's own noise.

    A run counts once, as one draw of the whole experiment (its own training data, training and
    test conversations). The SEM is the larger of the spread between the runs' gains, over
    sqrt(runs), and the runs' own SEMs, as a root mean square over sqrt(runs): two or three runs
    can agree by chance far more closely than their error bars allow, and their spread alone
    would then claim a precision that no run has."""
    gains = [run.paired_gain(later, earlier) for run in runs]
    if len(gains) < 2 or any(gain is None for gain in gains):
        return None
    mean, between = mean_sem([gain.mean for gain in gains])
    within = math.sqrt(statistics.fmean(gain.sem**2 for gain in gains) / len(gains))
    label = f"Q_{later} - Q_{earlier}, pooled over {len(runs)} runs"
    return Estimate(label, mean, max(between, within), len(runs))
