"""The expert-iteration loop (SPEC, Algorithm 1), with evaluation on the test split.

For iteration k = 1..N on split A, B, A, ...: simulate with Q_{k-1}, score with Q_BASE, keep the
top-k per pair, let Q_{k-1} write the final answers, fine-tune Q_BASE into Q_k, then evaluate Q_k on
the test pairs. Every step writes its records to the run directory and is skipped when rerun.
"""

from __future__ import annotations

import shutil
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from star_gate.backends import Backend, load_backend, role_sampling
from star_gate.config import RoleConfig, RoleplayerConfig, RunConfig
from star_gate.data.loaders import load_dataset
from star_gate.data.records import Conversation, Dataset, Pair
from star_gate.faults import crash_point
from star_gate.results import Estimate, RunResults
from star_gate.roles.players import (
    GroundedRoleplayer,
    Judge,
    PersonaRoleplayer,
    Questioner,
    Roleplayer,
)
from star_gate.roles.prompts import get_template
from star_gate.rundir import RunDir
from star_gate.stages import regularize, score_controls, score_conversations, select_top_k, simulate
from star_gate.stages.evaluate import judge_answers, random_personas
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


def backend_work(backend: Backend) -> dict[str, int]:
    """Running totals a backend keeps: prompts it truncated, and an API backend's calls and tokens."""
    counts = {"truncated_prompts": getattr(backend, "truncated_prompts", 0)}
    if hasattr(backend, "api_counts"):
        counts.update(backend.api_counts())
    return counts


def check_api_roles(config: RunConfig) -> None:
    """Refuse, before the run directory is touched, an API role whose key is missing from the
    environment, or a judge that must score on a server whose log-probs fail the probe."""
    used = {"roles.judge": config.roles.judge} if config.evaluate.win_rates else {}
    roleplayers = {"roles.roleplayer": config.roles.roleplayer, "evaluate.roleplayer": config.evaluate.roleplayer}
    for label, role in roleplayers.items():
        if role is not None and role.mode != "facts":
            used[label] = role
    api_roles = {label: role for label, role in used.items() if role.backend == "openai"}
    if not api_roles:
        return
    from star_gate.backends.openai_compat import check_role

    run_dir = Path(config.run_dir)
    # The run's own cache when it exists (a rerun pays nothing); never created here, so that
    # a refused config leaves no run directory behind and --branch still finds none.
    cache = run_dir / "api_cache.sqlite" if run_dir.is_dir() else None
    for label, role in api_roles.items():
        must_score = label == "roles.judge" and config.evaluate.judge_method == "logprobs"
        check_role(role, label, must_score, cache)


class Pipeline:
    """Runs, resumes and evaluates one STaR-GATE experiment described by a RunConfig."""

    def __init__(
        self, config: RunConfig, restart: bool = False, progress: bool = True, branch_from: str | None = None,
        checkpoints: dict[int, str] | None = None,
    ):
        """checkpoints: iteration -> a policy checkpoint made elsewhere (`star-gate eval`)."""
        self.config = config
        self.progress = progress
        self.external_checkpoints = dict(checkpoints or {})
        dataset = load_dataset(config.data.path)  # validated before any model loads
        for split in (*config.data.train_splits, config.data.test_split):
            if split not in dataset.splits:
                raise ValueError(f"data.path has no split {split!r}; it has {sorted(dataset.splits)}")
        self.dataset = limit_splits(dataset, config.data.max_tasks, config.data.max_personas)
        if config.evaluate.random_persona and len(self.dataset.splits[config.data.test_split]["personas"]) < 2:
            raise ValueError(
                "evaluate.random_persona needs at least 2 test personas; set it to false or use more personas"
            )
        check_api_roles(config)  # keys present, and a scoring server's log-probs pass a probe
        self.run = RunDir(config, restart=restart, branch_from=branch_from)
        self._backends: dict[tuple, Backend] = {}
        self._counted: dict[tuple, tuple[weakref.ref, dict[str, int]]] = {}  # work already counted
        self.run.work_counts = self._new_work
        self._retriever = None

    # -- players ------------------------------------------------------------------------------
    def backend(self, role: RoleConfig, model: str | None = None) -> Backend:
        """One backend per (kind, model, device or server); roles naming the same model share it."""
        model = model or role.model
        key = (role.backend, model, role.device, role.dtype, role.base_url, role.api_key_env, role.logprobs)
        if key not in self._backends:
            # API backends keep their answers in the run directory: a rerun never pays twice.
            cache = self.run.path("api_cache.sqlite")
            self._backends[key] = load_backend(role, model, self.progress, cache_path=cache)
        return self._backends[key]

    def _new_work(self) -> dict[str, int]:
        """Work the backends counted since the last call (RunDir.mark_done stores it with each
        finished stage): prompts cut to fit max_context, and API calls, cache hits and tokens."""
        new = {"truncated_prompts": 0}
        for key, backend in self._backends.items():
            counts = backend_work(backend)
            # A weak reference, so that counting never keeps a released model in memory.
            seen_ref, seen = self._counted.get(key, (lambda: None, {}))
            for name, value in counts.items():
                new[name] = new.get(name, 0) + value - (seen.get(name, 0) if seen_ref() is backend else 0)
            self._counted[key] = (weakref.ref(backend), counts)
        return new

    def release_policy(self, iteration: int) -> None:
        """Free the memory of a fine-tuned policy that no later step needs."""
        path = str(self.checkpoint(iteration))
        self._backends = {k: v for k, v in self._backends.items() if k[1] != path}

    def checkpoint(self, iteration: int) -> Path:
        if iteration in self.external_checkpoints:
            return Path(self.external_checkpoints[iteration])
        return self.run.path(f"iter_{iteration}", "checkpoint")

    def scorer(self) -> Backend:
        """Q_BASE, frozen: the initial questioner model."""
        return self.backend(self.config.roles.questioner)

    def questioner(self, iteration: int) -> Questioner:
        """Q_iteration: the base model for 0, else that iteration's checkpoint."""
        role = self.config.roles.questioner
        model = None if iteration == 0 else str(self.checkpoint(iteration))
        params = role_sampling(role)
        return Questioner(self.backend(role, model), get_template(role.prompt or "questioner_fewshot"), params)

    def roleplayer(self, role: RoleplayerConfig | None = None) -> Roleplayer:
        role = role or self.config.roles.roleplayer
        params = role_sampling(role)
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
    def _in_chunks(self, key: str, out: str, items: list, work: Callable[[list, int], list], size: int, **info):
        """Apply work(chunk, chunk_index) to items in chunks, saving each chunk's records on its own,
        then merge them in order: a crash loses at most the chunk in progress."""
        if self.run.is_done(key):
            return
        records: list[Conversation] = []
        for index, start in enumerate(range(0, len(items), size)):
            chunk_key = f"{key}/chunk_{index:04d}"
            if not self.run.is_done(chunk_key):
                self.run.write_records(chunk_key, f"{out}.chunks/{index:04d}.jsonl", work(items[start : start + size], index))
            records += self.run.records(chunk_key, Conversation.from_json)
        self.run.write_records(key, out, records, **info)

    def _chunk_of(self, conversations: list[Conversation]) -> int:
        """Conversations per chunk: those of simulate.chunk_pairs pairs."""
        per_pair = max(1, len(conversations) // max(1, len({c.pair_id for c in conversations})))
        return self.config.simulate.chunk_pairs * per_pair

    def _simulate_chunked(
        self, key: str, out: str, pairs: list[Pair], policy_iteration: int, n: int, turns: int,
        seed_key: str | None = None, roleplayer: RoleplayerConfig | None = None, acting: dict | None = None,
    ):
        """Simulate in chunks of simulate.chunk_pairs pairs.

        seed_key (default: key) names the random stream; evaluation shares one across iterations,
        so every Q_k meets the same conversation lengths and roleplayer samples (paired comparisons).
        roleplayer (default: roles.roleplayer) configures who answers; acting maps pair ids to the
        persona the roleplayer plays instead of the pair's own (random-persona condition).
        """

        def work(chunk: list[Pair], index: int) -> list[Conversation]:
            return simulate(
                chunk, self.questioner(policy_iteration), self.roleplayer(roleplayer),
                conversations_per_pair=n, max_turns=turns,
                seed=stage_seed(self.config.seed, seed_key or key, index), roleplayer_personas=acting,
            )

        self._in_chunks(key, out, pairs, work, self.config.simulate.chunk_pairs, pairs=len(pairs))

    def _score_chunked(self, key: str, out: str, conversations: list[Conversation], pairs: list[Pair]) -> None:
        def work(chunk: list[Conversation], _index: int) -> list[Conversation]:
            return score_conversations(chunk, pairs, self.scorer())

        self._in_chunks(key, out, conversations, work, self._chunk_of(conversations))

    def _answer_chunked(self, key: str, out: str, conversations: list[Conversation], pairs: list[Pair],
                        policy: Questioner | None, mode: str, max_new_tokens: int) -> None:
        """Final answers (or none, or the gold) appended to conversations, chunk by chunk."""
        def work(chunk: list[Conversation], _index: int) -> list[Conversation]:
            return regularize(chunk, pairs, policy, mode, max_new_tokens)

        self._in_chunks(key, out, conversations, work, self._chunk_of(conversations), mode=mode)

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
        self._score_chunked(key, f"iter_{iteration}/scored.jsonl", conversations, self.pairs(self.split_for(iteration)))

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
        self._answer_chunked(key, f"iter_{iteration}/regularized.jsonl", kept, self.pairs(self.split_for(iteration)),
                             policy, mode, self.config.regularize.max_new_tokens)

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
        shutil.rmtree(staging, ignore_errors=True)  # a crashed attempt's files must not mix in
        metrics = finetune(examples, role.model, staging, cfg, seed=stage_seed(self.config.seed, key))
        shutil.rmtree(staging / "trainer", ignore_errors=True)
        crash_point("before_rename", key)
        if target.exists():  # renamed by a run that crashed before listing it in the manifest
            shutil.rmtree(target)
        staging.rename(target)  # the checkpoint appears whole or not at all
        self.run.mark_done(key, target, truncated_examples=truncated, **metrics)

    def controls_stage(self) -> None:
        key = "eval/controls"
        if not self.run.is_done(key):
            controls = score_controls(self.pairs(self.config.data.test_split), self.scorer())
            self.run.write_records(key, "eval/controls.jsonl", controls)

    def evaluate_stage(self, iteration: int) -> None:
        """Everything the test split says about Q_iteration: gold log-probs under its conversations
        (and, with evaluate.random_persona, under conversations with another test persona), its
        temperature-0 final answers, and (iteration > 0, evaluate.win_rates) the judge's verdicts
        against Q_0's answers."""
        evaluate = self.config.evaluate
        pairs = self.pairs(self.config.data.test_split)
        self._score_test_conversations(iteration, "experimental", pairs)
        if evaluate.random_persona:
            self._score_test_conversations(iteration, "random", pairs, random_personas(pairs, self.config.seed))
        if evaluate.win_rates:
            self._final_answers(iteration, pairs)
            if iteration > 0:
                self._final_answers(0, pairs)
                self._judge(iteration, "judge", self.run.records(f"eval/iter_{iteration}/answers", Conversation.from_json), pairs)
                if evaluate.response_model_ablation:
                    self._base_answers_and_judge(iteration, pairs)

    def _score_test_conversations(self, iteration: int, condition: str, pairs: list[Pair], acting=None) -> None:
        evaluate = self.config.evaluate
        key = f"eval/iter_{iteration}" + ("" if condition == "experimental" else f"/{condition}")
        stem = f"eval/iter_{iteration}" + ("" if condition == "experimental" else f"_{condition}")
        self._simulate_chunked(
            f"{key}/simulate", f"{stem}_conversations.jsonl", pairs, iteration, evaluate.conversations_per_pair,
            self.config.eval_max_turns, seed_key="eval/simulate", roleplayer=evaluate.roleplayer, acting=acting,
        )
        if not self.run.is_done(key):
            conversations = self.run.records(f"{key}/simulate", Conversation.from_json)
            self._score_chunked(key, f"{stem}_scored.jsonl", conversations, pairs)

    def _judged_conversations(self, iteration: int) -> list[Conversation]:
        """The first evaluate.judged_conversations_per_pair test conversations of each pair."""
        keep = self.config.evaluate.judged_conversations_per_pair
        return [c for c in self.run.records(f"eval/iter_{iteration}", Conversation.from_json) if c.sample_index < keep]

    def _final_answers(self, iteration: int, pairs: list[Pair]) -> None:
        """Q_iteration answers at temperature 0 after its own test conversations (sampled at the
        questioner's temperature), as in the paper's win-rate protocol."""
        key = f"eval/iter_{iteration}/answers"
        if not self.run.is_done(key):
            self._answer_chunked(key, f"eval/iter_{iteration}_answers.jsonl", self._judged_conversations(iteration),
                                 pairs, self.questioner(iteration), "policy", self.config.evaluate.answer_max_new_tokens)

    def _base_answers_and_judge(self, iteration: int, pairs: list[Pair]) -> None:
        """Response-model ablation: Q_BASE answers after Q_iteration's conversations, judged against Q_0."""
        key = f"eval/iter_{iteration}/base_answers"
        if not self.run.is_done(key):
            self._answer_chunked(key, f"eval/iter_{iteration}_base_answers.jsonl", self._judged_conversations(iteration),
                                 pairs, self.questioner(0), "policy", self.config.evaluate.answer_max_new_tokens)
        self._judge(iteration, "judge_base", self.run.records(key, Conversation.from_json), pairs,
                    label=f"Q_BASE answering after Q_{iteration}")

    def judge(self) -> Judge:
        role = self.config.roles.judge
        params = role_sampling(role)
        return Judge(self.backend(role), get_template(role.prompt or "judge"), params, self.config.evaluate.judge_method)

    def _judge(self, iteration: int, kind: str, contender: list[Conversation], pairs: list[Pair], label: str = "") -> None:
        key = f"eval/iter_{iteration}/{kind}"
        if self.run.is_done(key):
            return
        baseline = self.run.records("eval/iter_0/answers", Conversation.from_json)
        order = self.config.evaluate.judge_order
        seed = stage_seed(self.config.seed, key)
        judgements = judge_answers(contender, baseline, pairs, self.judge(), label or f"Q_{iteration}", order, seed)
        self.run.write_records(key, f"eval/iter_{iteration}_{kind}.jsonl", judgements, order=order, seed=seed)

    STAGE_METHODS: ClassVar[dict] = {
        "simulate": simulate_stage, "score": score_stage, "select": select_stage,
        "regularize": regularize_stage, "train": train_stage,
    }

    def run_stage(self, iteration: int, stage: str) -> None:
        self.STAGE_METHODS[stage](self, iteration)

    # -- the whole loop ---------------------------------------------------------------------------
    def run_all(self) -> list[Estimate]:
        self.controls_stage()
        self.evaluate_stage(0)
        for iteration in range(1, self.config.iterations + 1):
            for stage in STAGES:
                self.run_stage(iteration, stage)
            self.evaluate_stage(iteration)
            self.release_policy(iteration - 1)
        return self.eval_table()

    def evaluate_checkpoints(self) -> list[Estimate]:
        """`star-gate eval`: the evaluation alone, for Q_0 and each given checkpoint."""
        self.controls_stage()
        for iteration in (0, *sorted(self.external_checkpoints)):
            self.evaluate_stage(iteration)
            self.release_policy(iteration)
        return self.eval_table()

    def results(self) -> RunResults:
        return RunResults(self.run.root)

    def paired_gain(self, later: int, earlier: int = 0) -> Estimate | None:
        return self.results().paired_gain(later, earlier)

    def eval_table(self) -> list[Estimate]:
        """Mean ± SEM of test gold log-probs: controls, then each iteration's conversations."""
        results = self.results()
        rows = results.control_rows()
        for iteration in results.iterations():
            rows += [row for condition in ("experimental", "random") if (row := results.logprob(iteration, condition))]
        return rows
