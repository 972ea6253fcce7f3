"""The expert-iteration loop (SPEC, Algorithm 1), with evaluation on the test split.

For iteration k = 1..N on split A, B, A, ...: simulate with Q_{k-1}, score with Q_BASE, keep the
top-k per pair, let Q_{k-1} write the final answers, fine-tune Q_BASE into Q_k, then evaluate Q_k on
the test pairs. Every step writes its records to the run directory and is skipped when rerun.
"""

from __future__ import annotations

import math
import shutil
import statistics
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from star_gate.backends import Backend, SamplingParams, backend_class
from star_gate.config import RoleConfig, RunConfig
from star_gate.data.loaders import load_dataset
from star_gate.data.records import Conversation, Dataset, Pair, ScoredControl
from star_gate.roles.players import GroundedRoleplayer, PersonaRoleplayer, Questioner, Roleplayer
from star_gate.roles.prompts import get_template
from star_gate.rundir import RunDir
from star_gate.stages import regularize, score_controls, score_conversations, select_top_k, simulate
from star_gate.stages.train import build_examples, finetune

STAGES = ("simulate", "score", "select", "regularize", "train")


def stage_seed(seed: int, *parts: object) -> int:
    """A seed per (run seed, stage, iteration, chunk) that is stable across processes."""
    return zlib.crc32("|".join(map(str, (seed, *parts))).encode()) % (2**31)


def limit_splits(dataset: Dataset, max_tasks: int | None, max_personas: int | None) -> Dataset:
    """Keep the first N tasks and personas of each split (demos and smoke tests)."""
    dataset.splits = {
        name: {"tasks": spec["tasks"][:max_tasks], "personas": spec["personas"][:max_personas]}
        for name, spec in dataset.splits.items()
    }
    return dataset


def mean_sem(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sem = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, sem


@dataclass
class EvalRow:
    label: str
    mean: float
    sem: float
    count: int


class Pipeline:
    """Runs, resumes and evaluates one STaR-GATE experiment described by a RunConfig."""

    def __init__(self, config: RunConfig, restart: bool = False, progress: bool = True):
        self.config = config
        self.progress = progress
        dataset = load_dataset(config.data.path)  # validated before any model loads
        for split in (*config.data.train_splits, config.data.test_split):
            if split not in dataset.splits:
                raise ValueError(f"data.path has no split {split!r}; it has {sorted(dataset.splits)}")
        self.dataset = limit_splits(dataset, config.data.max_tasks, config.data.max_personas)
        self.run = RunDir(config, restart=restart)
        self._backends: dict[tuple, Backend] = {}
        self._retriever = None

    # -- players ------------------------------------------------------------------------------
    def backend(self, role: RoleConfig, model: str | None = None) -> Backend:
        """One backend per (kind, model, device); roles naming the same model share it."""
        model = model or role.model
        key = (role.backend, model, role.device, role.dtype)
        if key not in self._backends:
            cls = backend_class(role.backend)
            self._backends[key] = cls(
                model=model, device=role.device, dtype=role.dtype, batch_size=role.batch_size,
                max_context=role.max_context, progress=self.progress,
            )
        return self._backends[key]

    def release_policy(self, iteration: int) -> None:
        """Free the memory of a fine-tuned policy that no later step needs."""
        path = str(self.checkpoint(iteration))
        self._backends = {k: v for k, v in self._backends.items() if k[1] != path}

    def checkpoint(self, iteration: int) -> Path:
        return self.run.path(f"iter_{iteration}", "checkpoint")

    def scorer(self) -> Backend:
        """Q_BASE, frozen: the initial questioner model."""
        return self.backend(self.config.roles.questioner)

    def questioner(self, iteration: int) -> Questioner:
        """Q_iteration: the base model for 0, else that iteration's checkpoint."""
        role = self.config.roles.questioner
        model = None if iteration == 0 else str(self.checkpoint(iteration))
        params = SamplingParams(temperature=role.temperature, top_p=role.top_p, max_new_tokens=role.max_new_tokens)
        return Questioner(self.backend(role, model), get_template(role.prompt or "questioner_fewshot"), params)

    def roleplayer(self) -> Roleplayer:
        role = self.config.roles.roleplayer
        params = SamplingParams(temperature=role.temperature, top_p=role.top_p, max_new_tokens=role.max_new_tokens)
        backend = self.backend(role) if role.mode != "facts" else None
        if role.mode == "persona":
            return PersonaRoleplayer(backend, get_template(role.prompt or "roleplayer_persona"), params)
        if self._retriever is None:
            from star_gate.roles.grounding import FactRetriever

            self._retriever = FactRetriever(role.embedder)
        template = get_template(role.prompt or "roleplayer_grounded")
        return GroundedRoleplayer(
            backend, template, params, self._retriever, role.facts_per_answer, verbatim=role.mode == "facts"
        )

    # -- data -----------------------------------------------------------------------------------
    def split_for(self, iteration: int) -> str:
        return self.config.data.train_splits[(iteration - 1) % 2]

    def pairs(self, split: str) -> list[Pair]:
        return self.dataset.pairs(split)

    # -- stages -----------------------------------------------------------------------------------
    def _simulate_chunked(self, key: str, out: str, pairs: list[Pair], policy_iteration: int, n: int, turns: int):
        """Simulate in chunks of pairs, each saved on its own, then merge: a crash loses one chunk."""
        if self.run.is_done(key):
            return
        size = self.config.simulate.chunk_pairs
        conversations: list[Conversation] = []
        for index, start in enumerate(range(0, len(pairs), size)):
            chunk_key = f"{key}/chunk_{index:04d}"
            if not self.run.is_done(chunk_key):
                chunk = simulate(
                    pairs[start : start + size], self.questioner(policy_iteration), self.roleplayer(),
                    conversations_per_pair=n, max_turns=turns,
                    seed=stage_seed(self.config.seed, key, index),
                )
                self.run.write_records(chunk_key, f"{out}.chunks/{index:04d}.jsonl", chunk)
            conversations += self.run.records(chunk_key, Conversation.from_json)
        self.run.write_records(key, out, conversations, pairs=len(pairs))

    def simulate_stage(self, iteration: int) -> None:
        sim = self.config.simulate
        self._simulate_chunked(
            f"iter_{iteration}/simulate", f"iter_{iteration}/conversations.jsonl",
            self.pairs(self.split_for(iteration)), iteration - 1, sim.conversations_per_pair, sim.max_turns,
        )

    def _require(self, key: str) -> None:
        if not self.run.is_done(key):
            raise RuntimeError(f"stage {key} has not run yet in {self.run.root}; run it first")

    def score_stage(self, iteration: int) -> None:
        key = f"iter_{iteration}/score"
        if self.run.is_done(key):
            return
        self._require(f"iter_{iteration}/simulate")
        conversations = self.run.records(f"iter_{iteration}/simulate", Conversation.from_json)
        scored = score_conversations(conversations, self.pairs(self.split_for(iteration)), self.scorer())
        self.run.write_records(key, f"iter_{iteration}/scored.jsonl", scored)

    def select_stage(self, iteration: int) -> None:
        key = f"iter_{iteration}/select"
        if self.run.is_done(key):
            return
        self._require(f"iter_{iteration}/score")
        scored = self.run.records(f"iter_{iteration}/score", Conversation.from_json)
        self.run.write_records(key, f"iter_{iteration}/selected.jsonl", select_top_k(scored, self.config.select.top_k))

    def regularize_stage(self, iteration: int) -> None:
        key = f"iter_{iteration}/regularize"
        if self.run.is_done(key):
            return
        self._require(f"iter_{iteration}/select")
        kept = self.run.records(f"iter_{iteration}/select", Conversation.from_json)
        mode = self.config.regularize.mode
        policy = self.questioner(iteration - 1) if mode == "policy" else None
        final = regularize(kept, self.pairs(self.split_for(iteration)), policy, mode, self.config.regularize.max_new_tokens)
        self.run.write_records(key, f"iter_{iteration}/regularized.jsonl", final, mode=mode)

    def train_stage(self, iteration: int) -> None:
        key = f"iter_{iteration}/train"
        if self.run.is_done(key):
            return
        self._require(f"iter_{iteration}/regularize")
        from transformers import AutoTokenizer

        from star_gate.backends.models import resolve_model

        cfg, role = self.config.train, self.config.roles.questioner
        kept = self.run.records(f"iter_{iteration}/regularize", Conversation.from_json)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(role.model))
        template = get_template(role.prompt or "questioner_fewshot")
        examples, truncated = build_examples(kept, self.pairs(self.split_for(iteration)), template, tokenizer, cfg.max_length)
        target = self.checkpoint(iteration)
        staging = target.with_name("checkpoint.partial")
        metrics = finetune(examples, role.model, staging, cfg, seed=stage_seed(self.config.seed, key))
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # the checkpoint appears whole or not at all
        self.run.mark_done(key, target, truncated_examples=truncated, **metrics)

    def controls_stage(self) -> None:
        key = "eval/controls"
        if not self.run.is_done(key):
            controls = score_controls(self.pairs(self.config.data.test_split), self.scorer())
            self.run.write_records(key, "eval/controls.jsonl", controls)

    def evaluate_stage(self, iteration: int) -> None:
        """Simulate test conversations with Q_iteration and score the gold under them."""
        key = f"eval/iter_{iteration}"
        pairs = self.pairs(self.config.data.test_split)
        simulate_key = f"{key}/simulate"
        self._simulate_chunked(
            simulate_key, f"eval/iter_{iteration}_conversations.jsonl", pairs, iteration,
            self.config.evaluate.conversations_per_pair, self.config.eval_max_turns,
        )
        if not self.run.is_done(key):
            conversations = self.run.records(simulate_key, Conversation.from_json)
            scored = score_conversations(conversations, pairs, self.scorer())
            self.run.write_records(key, f"eval/iter_{iteration}_scored.jsonl", scored)

    STAGE_METHODS: ClassVar[dict] = {
        "simulate": simulate_stage, "score": score_stage, "select": select_stage,
        "regularize": regularize_stage, "train": train_stage,
    }

    def run_stage(self, iteration: int, stage: str) -> None:
        self.STAGE_METHODS[stage](self, iteration)

    # -- the whole loop ---------------------------------------------------------------------------
    def run_all(self) -> list[EvalRow]:
        self.controls_stage()
        self.evaluate_stage(0)
        for iteration in range(1, self.config.iterations + 1):
            for stage in STAGES:
                self.run_stage(iteration, stage)
            self.evaluate_stage(iteration)
            self.release_policy(iteration - 1)
        return self.eval_table()

    def paired_gain(self, later: int, earlier: int = 0) -> EvalRow | None:
        """Per test pair, mean log-prob under Q_later's conversations minus Q_earlier's; mean ± SEM
        over pairs. Pairing removes the (large) differences between gold answers' lengths."""
        keys = [f"eval/iter_{later}", f"eval/iter_{earlier}"]
        if not all(self.run.is_done(k) for k in keys):
            return None
        per_pair = []
        for key in keys:
            groups: dict[str, list[float]] = {}
            for c in self.run.records(key, Conversation.from_json):
                groups.setdefault(c.pair_id, []).append(c.logprob)
            per_pair.append({k: statistics.fmean(v) for k, v in groups.items()})
        diffs = [per_pair[0][k] - per_pair[1][k] for k in per_pair[0] if k in per_pair[1]]
        return EvalRow(f"Q_{later} - Q_{earlier}, paired by test pair", *mean_sem(diffs), len(diffs))

    def eval_table(self) -> list[EvalRow]:
        """Mean ± SEM of test gold log-probs: controls, then each iteration's conversations."""
        rows = []
        controls = self.run.records("eval/controls", ScoredControl.from_json)
        for condition in ("negative", "positive"):
            values = [c.logprob for c in controls if c.condition == condition]
            rows.append(EvalRow(f"{condition} control", *mean_sem(values), len(values)))
        for iteration in range(self.config.iterations + 1):
            key = f"eval/iter_{iteration}"
            if self.run.is_done(key):
                values = [c.logprob for c in self.run.records(key, Conversation.from_json)]
                rows.append(EvalRow(f"Q_{iteration} conversations", *mean_sem(values), len(values)))
        return rows
