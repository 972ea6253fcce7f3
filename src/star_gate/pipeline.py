"""The expert-iteration loop (SPEC, Algorithm 1), with evaluation on the test split.

For iteration k = 1..N on split A, B, A, ...: simulate with Q_{k-1}, score with Q_BASE, keep the
top-k per pair, let Q_{k-1} write the final answers, fine-tune Q_BASE into Q_k, then evaluate Q_k on
the test pairs. Every step writes its records to the run directory (rundir.py names them) and is
skipped when rerun.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from star_gate.config import RoleplayerConfig, RunConfig
from star_gate.data.records import Conversation, Pair, Persona
from star_gate.jobs import (
    AnswerJob,
    ControlsJob,
    FitJob,
    Job,
    JudgeJob,
    ScoreJob,
    SimulateJob,
    covered,
    pairs_of,
)
from star_gate.memory import peak_resident_mb, return_freed_memory
from star_gate.parallel import make_runner
from star_gate.preflight import check_runnable
from star_gate.results import Estimate, RunResults
from star_gate.roles.factory import Players
from star_gate.rundir import STAGES, RunDir
from star_gate.seeds import derive_seed
from star_gate.stages import (
    conversation_prefixes,
    question_gains,
    select_preference_pairs,
    select_top_k,
)
from star_gate.stages.evaluate import random_personas
from star_gate.stages.score import prefix_scores
from star_gate.stages.select import worth as select_worth
from star_gate.stats import mean_sem
from star_gate.training import replace_folder

__all__ = ["STAGES", "Pipeline"]


def acting_in(
    pairs: Sequence[Pair], acting: dict[str, Persona] | None
) -> dict[str, Persona] | None:
    """The personas played instead of these pairs' own (random-persona condition): all a job needs."""
    return (
        None
        if acting is None
        else {p.pair_id: acting[p.pair_id] for p in pairs if p.pair_id in acting}
    )


def in_chunks(items: list, size: int) -> list[list]:
    """Consecutive slices of at most `size` items."""
    return [items[start : start + size] for start in range(0, len(items), size)]


class Pipeline:
    """Runs, resumes and evaluates one STaR-GATE experiment described by a RunConfig."""

    def __init__(
        self,
        config: RunConfig,
        restart: bool = False,
        progress: bool = True,
        branch_from: str | None = None,
        checkpoints: dict[int, str] | None = None,
    ):
        """checkpoints: iteration -> a policy checkpoint made elsewhere (`star-gate eval`)."""
        self.config = config
        self.external_checkpoints = dict(checkpoints or {})
        # Every check before the run directory is touched or any model loads.
        self.dataset = check_runnable(config)
        self.run = RunDir(config, restart=restart, branch_from=branch_from)
        # API backends keep their answers in the run directory: a rerun never pays twice.
        cache = self.run.path("api_cache.sqlite")
        self.players = Players(config, cache, progress)
        self.runner = make_runner(config, self.players, cache)  # Ray starts with the first job
        self._job_work: dict[str, int] = {}  # counted by jobs and not yet stored in the manifest
        self._log = None  # the pipeline's numbers in train.report_to's tracker, opened on first use

    def close(self) -> None:
        """Stop the Ray workers (and the Ray instance, if this pipeline started it), and close the
        run's logs."""
        self.runner.close()
        if self._log is not None:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _new_work(self) -> dict[str, float]:
        """Work counted since the last call, stored with each finished stage (_write): prompts
        cut to fit max_context, and API calls, cache hits and tokens, whether the jobs ran here or
        on Ray workers; and this process's peak resident memory so far (peak_rss_mb)."""
        new: dict[str, float] = self.players.new_work()
        for name, value in self._job_work.items():
            new[name] = new.get(name, 0) + value
        self._job_work = {}
        peak = peak_resident_mb()
        if peak is not None:
            new["peak_rss_mb"] = peak
        return new

    def _write(self, key: str, output: str, records: list, **info) -> None:
        """Save a finished stage's records, with the work counted since the last one finished."""
        self.run.write_records(key, output, records, **self._new_work(), **info)

    # -- models and data ------------------------------------------------------------------------
    def release_policy(self, iteration: int) -> None:
        """Free the memory of a fine-tuned policy that no later step needs, here and on workers."""
        model = str(self.checkpoint(iteration))
        self.players.release(model)
        self.runner.release(model)

    def checkpoint(self, iteration: int) -> Path:
        """The folder of Q_iteration's checkpoint: this run's, or one given to `star-gate eval`."""
        if iteration in self.external_checkpoints:
            return Path(self.external_checkpoints[iteration])
        return self.run.path(self.run.stage_output(iteration, "train"))

    def policy_model(self, iteration: int) -> str | None:
        """The model of Q_iteration: None (the base model) for 0, else that iteration's checkpoint."""
        return None if iteration == 0 else str(self.checkpoint(iteration))

    def split_for(self, iteration: int) -> str:
        """The training split of an iteration: A, B, A, ... (data.train_splits)."""
        return self.config.data.train_splits[(iteration - 1) % 2]

    def pairs(self, split: str) -> list[Pair]:
        """The (task, persona) pairs of a split, as data.* limits it."""
        return self.dataset.pairs(split)

    # -- running jobs ---------------------------------------------------------------------------
    def _run_jobs(self, jobs: dict[int, Job]) -> Iterator[tuple[int, list]]:
        """(index, records) of each job as it finishes, here or on a Ray worker (parallel.engine);
        the work each job counted is stored with the records it gave."""
        for index, records, work in self.runner.run(jobs):
            for name, value in work.items():
                self._job_work[name] = self._job_work.get(name, 0) + value
            yield index, records

    def _run_one(self, job: Job) -> list:
        [(_, records)] = list(self._run_jobs({0: job}))
        return records

    def _in_chunks(self, key: str, out: str, jobs: list[Job], **info) -> None:
        """Run one job per chunk, saving each chunk's records as it finishes (in any order, when
        Ray workers run them), then merge them in chunk order: a crash loses at most the chunks
        in progress, and which worker ran which chunk changes nothing."""
        if self.run.is_done(key):
            return
        chunks = [self.run.chunk(key, out, index) for index in range(len(jobs))]
        covers = [covered(job) for job in jobs]
        pending = {
            index: job
            for index, job in enumerate(jobs)
            if not self.run.is_done(chunks[index][0], covering=covers[index])
        }
        for index, records in self._run_jobs(pending):
            self._write(*chunks[index], records, covers=covers[index])
        merged = [
            record
            for chunk_key, _ in chunks
            for record in self.run.records(chunk_key, Conversation.from_json)
        ]
        self._write(key, out, merged, **info)

    def _chunk_of(self, conversations: list[Conversation]) -> int:
        """Conversations per chunk: those of simulate.chunk_pairs pairs."""
        per_pair = max(1, len(conversations) // max(1, len({c.pair_id for c in conversations})))
        return self.config.simulate.chunk_pairs * per_pair

    def _simulate_chunked(
        self,
        key: str,
        out: str,
        pairs: list[Pair],
        policy_iteration: int,
        n: int,
        turns: int,
        seed_key: str | None = None,
        roleplayer: RoleplayerConfig | None = None,
        acting: dict | None = None,
        openings: tuple[str, ...] = (),
    ):
        """Simulate in chunks of simulate.chunk_pairs pairs.

        seed_key (default: key) names the random stream; evaluation shares one across iterations,
        so every Q_k meets the same conversation lengths and roleplayer samples (paired comparisons).
        roleplayer (default: roles.roleplayer) configures who answers; acting maps pair ids to the
        persona the roleplayer plays instead of the pair's own (random-persona condition);
        openings start the first questions (training conversations only: simulate.openings).
        """
        jobs = [
            SimulateJob(
                chunk,
                self.policy_model(policy_iteration),
                roleplayer,
                n,
                turns,
                seed=derive_seed(self.config.seed, seed_key or key, index),
                acting=acting_in(chunk, acting),
                stop_early=self.config.simulate.stop_early,
                openings=openings,
            )
            for index, chunk in enumerate(in_chunks(pairs, self.config.simulate.chunk_pairs))
        ]
        self._in_chunks(key, out, jobs, pairs=len(pairs))

    def _score_chunked(
        self, key: str, out: str, conversations: list[Conversation], pairs: list[Pair]
    ) -> None:
        chunks = in_chunks(conversations, self._chunk_of(conversations))
        self._in_chunks(key, out, [ScoreJob(chunk, pairs_of(chunk, pairs)) for chunk in chunks])

    def _answer_chunked(
        self,
        key: str,
        out: str,
        conversations: list[Conversation],
        pairs: list[Pair],
        policy_iteration: int,
        mode: str,
        max_new_tokens: int,
    ) -> None:
        """Final answers by Q_policy_iteration (or none, or the gold) appended to conversations,
        chunk by chunk."""
        policy = self.policy_model(policy_iteration)
        jobs = [
            AnswerJob(chunk, pairs_of(chunk, pairs), policy, mode, max_new_tokens)
            for chunk in in_chunks(conversations, self._chunk_of(conversations))
        ]
        self._in_chunks(key, out, jobs, mode=mode)

    # -- the stages of one iteration --------------------------------------------------------------
    def _open_stage(
        self, iteration: int, stage: str, needs: str
    ) -> tuple[str, str, list[Conversation] | None]:
        """(key, output, the records of the stage it needs) of one stage of this iteration; the
        records are None when the stage is already done (nothing to do).

        Raises:
            RuntimeError: the stage it needs has not run.
        """
        key, out = self.run.stage_key(iteration, stage), self.run.stage_output(iteration, stage)
        if self.run.is_done(key):
            return key, out, None
        needed = self.run.stage_key(iteration, needs)
        if not self.run.is_done(needed):
            raise RuntimeError(f"stage {needed} has not run yet in {self.run.root}; run it first")
        return key, out, self.run.records(needed, Conversation.from_json)

    def simulate_stage(self, iteration: int) -> None:
        """Q_{k-1} talks with the roleplayer: n conversations per pair of the iteration's split."""
        sim = self.config.simulate
        self._simulate_chunked(
            self.run.stage_key(iteration, "simulate"),
            self.run.stage_output(iteration, "simulate"),
            self.pairs(self.split_for(iteration)),
            iteration - 1,
            sim.conversations_per_pair,
            sim.max_turns,
            openings=tuple(sim.openings),
        )

    def score_stage(self, iteration: int) -> None:
        """Q_BASE's log-prob of each pair's gold answer after each conversation."""
        key, out, conversations = self._open_stage(iteration, "score", needs="simulate")
        if conversations is not None:
            self._score_chunked(key, out, conversations, self.pairs(self.split_for(iteration)))

    def select_stage(self, iteration: int) -> None:
        """The best conversations per pair (SFT), or the best against the worst (DPO)."""
        key, out, scored = self._open_stage(iteration, "select", needs="score")
        if scored is None:
            return
        select, objective = self.config.select, self.config.train.objective
        if objective == "dpo":  # chosen and rejected, both answered by regularize
            kept = select_preference_pairs(
                scored, select.top_k, select.min_margin, select.turn_cost
            )
        else:
            kept = select_top_k(scored, select.top_k, select.turn_cost, select.min_score)
            if not kept:
                raise ValueError(
                    f"iteration {iteration}: no conversation reached select.min_score "
                    f"({select.min_score}); lower it or sample more conversations per pair"
                )
        self._write(key, out, kept, objective=objective)

    def regularize_stage(self, iteration: int) -> None:
        """Q_{k-1}'s final answer (or none, or the gold) after each kept conversation."""
        key, out, kept = self._open_stage(iteration, "regularize", needs="select")
        if kept is not None:
            regularize = self.config.regularize
            self._answer_chunked(
                key,
                out,
                kept,
                self.pairs(self.split_for(iteration)),
                iteration - 1,
                regularize.mode,
                regularize.max_new_tokens,
            )

    def train_stage(self, iteration: int) -> None:
        """Fine-tune Q_BASE into Q_k on the kept conversations (training/)."""
        key, target, kept = self._open_stage(iteration, "train", needs="regularize")
        if kept is None:
            return
        from star_gate.training import train_checkpoint, training_examples

        examples, truncated = training_examples(
            kept, self.pairs(self.split_for(iteration)), self.config
        )
        # Training needs the memory: launched processes the GPUs', in-process training room for its
        # optimizer state beside nothing else (the policy and scorer load again when next used).
        self.players.release_local_models()
        target = self.run.path(target)
        logs = (
            self.run.path(self.run.train_logs(iteration))
            if self.config.train.report_to != "none"
            else None
        )
        metrics = train_checkpoint(
            examples,
            self.config.roles.questioner.model,
            target,
            self.config.train,
            seed=derive_seed(self.config.seed, key),
            key=key,
            log_dir=logs,
        )
        return_freed_memory()  # the optimizer state and activations: evaluation never needs them
        self.run.mark_done(key, target, **self._new_work(), truncated_examples=truncated, **metrics)

    # -- loop online ------------------------------------------------------------------------------
    def online_stage(self, iteration: int) -> None:
        """Q_k from Q_{k-1} by online.rounds on-policy updates: each round samples a group of
        conversations per pair from the current policy, scores them, and takes one step on their
        group-relative advantages with a KL penalty to Q_BASE (training/online.py). Each round's
        records and policy are saved, so a rerun continues from the last finished round."""
        key = self.run.stage_key(iteration, "online")
        if self.run.is_done(key):
            return
        policy = self.policy_model(iteration - 1) or self.config.roles.questioner.model
        rewards = []
        for round_index in range(1, self.config.online.rounds + 1):
            round_key, _, _, policy_dir = self.run.online_round(iteration, round_index)
            if not self.run.is_done(round_key):
                self._online_round(iteration, round_index, policy)
            rewards.append(self.run.manifest["stages"][round_key]["reward"])
            # From round 2 on, the policy before this round is a round's folder: not needed now.
            self._drop_policy(policy, from_disk=round_index > 1)
            policy = str(self.run.path(policy_dir))
        target = self.run.path(self.run.stage_output(iteration, "train"))
        staging = target.with_name("checkpoint.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(policy, staging)
        replace_folder(staging, target)
        self.run.mark_done(
            key, target, rounds=len(rewards), reward_first=rewards[0], reward_last=rewards[-1]
        )
        self._drop_policy(policy, from_disk=True)  # only now: a rerun before the mark copies it

    def _drop_policy(self, policy: str, from_disk: bool) -> None:
        """Free a policy's memory, here and on workers, and with from_disk its folder."""
        self.players.release(policy)
        self.runner.release(policy)
        if from_disk:
            shutil.rmtree(policy, ignore_errors=True)

    def _online_round(self, iteration: int, round_index: int, policy: str) -> None:
        from star_gate.roles.prompts import get_template
        from star_gate.stages.online import (
            conversation_advantages,
            policy_examples,
            round_pairs,
            turn_advantages,
        )
        from star_gate.training.launch import online_update_launched
        from star_gate.training.online import policy_update

        online, select = self.config.online, self.config.select
        key, out, prefixes_out, policy_dir = self.run.online_round(iteration, round_index)
        split_pairs = self.pairs(self.split_for(iteration))
        order_seed = derive_seed(self.config.seed, self.run.stage_key(iteration, "online"))
        pairs = round_pairs(split_pairs, round_index, online.pairs_per_round, order_seed)
        base = self.config.roles.questioner.model
        conversations = self._run_one(
            SimulateJob(
                pairs,
                None if policy == base else policy,
                None,
                self.config.simulate.conversations_per_pair,
                self.config.simulate.max_turns,
                seed=derive_seed(self.config.seed, key),
                stop_early=self.config.simulate.stop_early,
            )
        )
        scored = self._run_one(ScoreJob(conversations, pairs))
        if online.per_turn:
            prefixes = self._run_one(ScoreJob(conversation_prefixes(scored), pairs))
            self._write(f"{key}/prefixes", prefixes_out, prefixes)
            advantages = turn_advantages(
                scored, prefix_scores(prefixes), select.turn_cost, online.normalize
            )
        else:
            advantages = conversation_advantages(scored, select.turn_cost, online.normalize)
        from transformers import AutoTokenizer

        from star_gate.backends.models import resolve_model

        examples, truncated = policy_examples(
            scored,
            advantages,
            pairs,
            get_template(self.config.questioner_prompt(trained=True)),
            AutoTokenizer.from_pretrained(resolve_model(policy)),
            self.config.train.max_length,
        )
        self.players.release_local_models()  # room for the update's two models and moments
        staging = self.run.path(policy_dir + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        launched = self.config.train.distributed.launcher != "none"
        update = online_update_launched if launched else policy_update
        metrics = update(
            examples,
            policy,
            base,
            staging,
            online,
            self.config.train,
            derive_seed(self.config.seed, key),
        )
        return_freed_memory()  # the update's two models and moments: sampling never needs them
        replace_folder(staging, self.run.path(policy_dir))
        reward, reward_sem = mean_sem([select_worth(c, select.turn_cost) for c in scored])
        self._write(
            key,
            out,
            scored,
            reward=reward,
            reward_sem=reward_sem,
            truncated_examples=truncated,
            **metrics,
        )

    def run_stage(self, iteration: int, stage: str) -> None:
        """Run one of STAGES of this iteration (its method is named STAGE_stage)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; choose from {list(STAGES)}")
        getattr(self, f"{stage}_stage")(iteration)

    # -- evaluation -------------------------------------------------------------------------------
    def controls_stage(self) -> None:
        """The test split's negative (no persona) and positive (whole persona) controls."""
        if not self.run.is_done(self.run.CONTROLS_KEY):
            controls = self._run_one(ControlsJob(self.pairs(self.config.data.test_split)))
            self._write(self.run.CONTROLS_KEY, self.run.CONTROLS_OUTPUT, controls)

    def evaluate_stage(self, iteration: int) -> None:
        """Everything the test split says about Q_iteration: gold log-probs under its conversations
        (and, with evaluate.random_persona, under conversations with another test persona), its
        temperature-0 final answers with their persona fit (evaluate.persona_fit), and
        (iteration > 0, evaluate.win_rates) the judge's verdicts against Q_0's answers."""
        evaluate = self.config.evaluate
        pairs = self.pairs(self.config.data.test_split)
        self._score_test_conversations(iteration, "experimental", pairs)
        if evaluate.question_gains:
            self._question_gains(iteration, pairs)
        if evaluate.random_persona:
            self._score_test_conversations(
                iteration,
                "random",
                pairs,
                random_personas(pairs, self.config.seed),
                evaluate.random_conversations_per_pair,
            )
        if evaluate.win_rates:
            self._final_answers(iteration, pairs)
            if evaluate.persona_fit:
                self._persona_fit(iteration, pairs)
            if iteration > 0:
                self._final_answers(0, pairs)
                answers = self.run.records(
                    self.run.eval_key(iteration, "answers"), Conversation.from_json
                )
                self._judge(iteration, "judge", answers, pairs)
                if evaluate.response_model_ablation:
                    self._base_answers_and_judge(iteration, pairs)

    def _score_test_conversations(
        self,
        iteration: int,
        condition: str,
        pairs: list[Pair],
        acting=None,
        conversations_per_pair: int | None = None,
    ) -> None:
        evaluate = self.config.evaluate
        simulate_key, conversations_out, key, scored_out = self.run.condition_keys(
            iteration, condition
        )
        self._simulate_chunked(
            simulate_key,
            conversations_out,
            pairs,
            iteration,
            conversations_per_pair or evaluate.conversations_per_pair,
            self.config.eval_max_turns,
            seed_key="eval/simulate",
            roleplayer=evaluate.roleplayer,
            acting=acting,
        )
        if not self.run.is_done(key):
            conversations = self.run.records(simulate_key, Conversation.from_json)
            self._score_chunked(key, scored_out, conversations, pairs)

    def _question_gains(self, iteration: int, pairs: list[Pair]) -> None:
        """What each question of Q_iteration's test conversations added to the gold log-prob."""
        key = self.run.eval_key(iteration, "question_gains")
        if self.run.is_done(key):
            return
        scored = self.run.records(self.run.eval_key(iteration), Conversation.from_json)
        prefixes = conversation_prefixes(scored)
        scored_prefixes = self._run_one(ScoreJob(prefixes, pairs_of(prefixes, pairs)))
        gains = question_gains(scored, scored_prefixes)
        self._write(key, self.run.eval_output(iteration, "question_gains"), gains)

    def _judged_conversations(self, iteration: int) -> list[Conversation]:
        """The first evaluate.judged_conversations_per_pair test conversations of each pair, of
        the evaluate.judged_pairs pairs drawn from the seed (the same pairs for every Q_k)."""
        keep = self.config.evaluate.judged_conversations_per_pair
        scored = self.run.records(self.run.eval_key(iteration), Conversation.from_json)
        judged = judged_pairs(scored, self.config.evaluate.judged_pairs, self.config.seed)
        return [c for c in scored if c.sample_index < keep and c.pair_id in judged]

    def _final_answers(self, iteration: int, pairs: list[Pair]) -> None:
        """Q_iteration answers at temperature 0 after its own test conversations (sampled at the
        questioner's temperature), as in the paper's win-rate protocol."""
        key = self.run.eval_key(iteration, "answers")
        if not self.run.is_done(key):
            self._answer_chunked(
                key,
                self.run.eval_output(iteration, "answers"),
                self._judged_conversations(iteration),
                pairs,
                iteration,
                "policy",
                self.config.evaluate.answer_max_new_tokens,
            )

    def _persona_fit(self, iteration: int, pairs: list[Pair]) -> None:
        """Each final answer's persona fit under Q_BASE (stages/evaluate.py, persona_fits)."""
        key = self.run.eval_key(iteration, "persona_fit")
        if not self.run.is_done(key):
            answers = self.run.records(
                self.run.eval_key(iteration, "answers"), Conversation.from_json
            )
            fits = self._run_one(FitJob(answers, pairs_of(answers, pairs)))
            self._write(key, self.run.eval_output(iteration, "persona_fit"), fits)

    def _base_answers_and_judge(self, iteration: int, pairs: list[Pair]) -> None:
        """Response-model ablation: Q_BASE answers after Q_iteration's conversations, judged against Q_0."""
        key = self.run.eval_key(iteration, "base_answers")
        if not self.run.is_done(key):
            self._answer_chunked(
                key,
                self.run.eval_output(iteration, "base_answers"),
                self._judged_conversations(iteration),
                pairs,
                0,
                "policy",
                self.config.evaluate.answer_max_new_tokens,
            )
        self._judge(
            iteration,
            "judge_base",
            self.run.records(key, Conversation.from_json),
            pairs,
            label=f"Q_BASE answering after Q_{iteration}",
        )

    def _judge(
        self,
        iteration: int,
        kind: str,
        contender: list[Conversation],
        pairs: list[Pair],
        label: str = "",
    ) -> None:
        key = self.run.eval_key(iteration, kind)
        if self.run.is_done(key):
            return
        baseline = self.run.records(self.run.eval_key(0, "answers"), Conversation.from_json)
        order, method = self.config.evaluate.judge_order, self.config.evaluate.judge_method
        seed = derive_seed(self.config.seed, key)
        judgements = self._run_one(
            JudgeJob(contender, baseline, pairs, label or f"Q_{iteration}", order, seed, method)
        )
        self._write(
            key,
            self.run.eval_output(iteration, kind),
            judgements,
            order=order,
            seed=seed,
            method=method,
        )

    # -- the whole loop ---------------------------------------------------------------------------
    def run_all(self) -> list[Estimate]:
        """The whole run: controls, Q_0's evaluation, then every iteration and its evaluation."""
        self.controls_stage()
        self.evaluate_stage(0)
        self._log_iteration(0)
        for iteration in range(1, self.config.iterations + 1):
            if self.config.loop == "online":
                self.online_stage(iteration)
            else:
                for stage in STAGES:
                    self.run_stage(iteration, stage)
            self.evaluate_stage(iteration)
            self._log_iteration(iteration)
            self.release_policy(iteration - 1)
        return self.eval_table()

    def _log_iteration(self, iteration: int) -> None:
        """The iteration's numbers (RunResults.iteration_metrics) in train.report_to's tracker."""
        report_to = self.config.train.report_to
        if report_to == "none":
            return
        if self._log is None:
            from star_gate.training.tracking import PipelineLog

            self._log = PipelineLog(
                report_to, self.run.path(self.run.PIPELINE_LOGS), self.run.root.name
            )
        self._log.log(self.results().iteration_metrics(iteration), iteration)

    def evaluate_checkpoints(self) -> list[Estimate]:
        """`star-gate eval`: the evaluation alone, for Q_0 and each given checkpoint."""
        self.controls_stage()
        for iteration in (0, *sorted(self.external_checkpoints)):
            self.evaluate_stage(iteration)
            self.release_policy(iteration)
        return self.eval_table()

    def results(self) -> RunResults:
        """The run's evaluation read back from its records (no model)."""
        return RunResults(self.run.root)

    def eval_table(self) -> list[Estimate]:
        """Mean ± SEM of test gold log-probs: controls, then each iteration's conversations."""
        results = self.results()
        rows = results.control_rows()
        for iteration in results.iterations():
            rows += [
                row
                for condition in ("experimental", "random")
                if (row := results.logprob(iteration, condition))
            ]
        return rows


def judged_pairs(conversations: list[Conversation], count: int | None, seed: int) -> set:
    """The pair ids whose final answers are judged: all of them, or `count` drawn with the seed."""
    ids = sorted({c.pair_id for c in conversations})
    return set(ids if count is None else random.Random(seed).sample(ids, min(count, len(ids))))
