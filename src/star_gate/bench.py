"""`star-gate bench`: the loop's speed on this machine, new path against the present one, side by side.

One run, on the same prompts and seeds, measures three stages of an expert iteration at the demo's
settings on the bundled model:

- simulate: generated tokens/s of the simulate stage on the shared-prefix path, on the present
  path (plain batched `generate`, kept here as `PresentPath`), and on a decode ceiling: raw batched
  `generate` of as many new tokens, at the same batch size, from a one-token prompt, which is what
  this machine can do if prefill were free;
- score: gold tokens scored per second, both paths, on the same conversations, and how far apart
  their scores are (per conversation, and in which conversations selection keeps);
- train: seconds per training example, both paths, on the same selected conversations. The present
  path is TRL's defaults as the pipeline used them (activation checkpointing, padded batches, fp32,
  the few-shot prompt in every example); the new one is the demo's `train` section;
- peak memory: of the process that runs the new path alone (a spawned child, models released
  before training as in the pipeline), which is what a demo run holds.

Machines are noisy, so only ratios measured in one run mean anything; the targets are ratios.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from star_gate.backends.base import Chat, SamplingParams
from star_gate.backends.hf import TransformersBackend
from star_gate.config import RunConfig, TrainConfig, load_config
from star_gate.data.jsonl import read_jsonl, write_jsonl
from star_gate.data.records import Conversation
from star_gate.memory import limit_memory_growth

TARGETS = {
    "simulate_speedup": 5.0,
    "simulate_vs_ceiling": 0.6,
    "score_speedup": 1.5,
    "train_speedup": 2.0,
}
MEMORY_TARGET_MB = 4096


class PresentPath:
    """The transformers backend as it was before shared-prefix caching: every prompt prefilled in
    full, left-padded batches sorted by length, one `model.generate` per batch. The baseline."""

    def __init__(self, backend: TransformersBackend, batch_size: int):
        self.backend, self.name, self.batch_size = backend, backend.name, batch_size
        self.generated_tokens = 0

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.backend.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return ids, mask

    @torch.inference_mode()
    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        prompts = [self.backend.encode_prompt(chat, room=params.max_new_tokens) for chat in chats]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[str]] = [[] for _ in prompts]
        torch.manual_seed(params.seed)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for index, texts in zip(
                batch, self._generate_batch([prompts[i] for i in batch], params)
            ):
                results[index] = texts
        return results

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[list[str]]:
        ids, mask = self._left_pad(prompts)
        greedy = params.temperature == 0
        sampling = (
            {"do_sample": False}
            if greedy
            else {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
        )
        out = self.backend.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=1 if greedy else params.n,
            eos_token_id=self.backend.stop_ids,
            pad_token_id=self.backend.tokenizer.pad_token_id,
            **sampling,
        )
        new = out[:, ids.shape[1] :]
        rows = [_until_stop(row, self.backend.stop_ids) for row in new.tolist()]
        self.generated_tokens += sum(len(r) for r in rows)
        texts = [self.backend.tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]
        per = 1 if greedy else params.n
        return [
            texts[i * per : (i + 1) * per] * (params.n if greedy else 1)
            for i in range(len(prompts))
        ]

    @torch.inference_mode()
    def logprobs(self, chats: Sequence[Chat], completions: Sequence[str]) -> list[float]:
        from star_gate.backends.tokens import text_ids

        targets = [text_ids(self.backend.tokenizer, c) for c in completions]
        prompts = [self.backend.encode_prompt(chat, room=len(t)) for chat, t in zip(chats, targets)]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(targets[i]))
        results = [0.0] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            ids, mask = self._left_pad([prompts[i] + targets[i] for i in batch])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            longest = max(len(targets[i]) for i in batch)
            logits = (
                self.backend.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    logits_to_keep=longest + 1,
                )
                .logits[:, :-1]
                .float()
            )
            token_logp = (
                torch.log_softmax(logits, -1).gather(-1, ids[:, -longest:, None]).squeeze(-1)
            )
            for row, index in enumerate(batch):
                results[index] = float(token_logp[row, longest - len(targets[index]) :].sum())
        return results


def _until_stop(row: list[int], stop_ids: list[int]) -> list[int]:
    """New tokens up to and including the first stop token (the rest is padding)."""
    for position, token in enumerate(row):
        if token in stop_ids:
            return row[: position + 1]
    return row


@dataclass
class Timing:
    amount: float  # tokens or examples
    seconds: float

    @property
    def rate(self) -> float:
        return self.amount / self.seconds


def _timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


@torch.inference_mode()
def decode_ceiling(
    backend: TransformersBackend, tokens: int, batch_size: int, new_tokens: int
) -> Timing:
    """Raw batched `generate` of about `tokens` new tokens from a one-token prompt: prefill is free."""
    model = backend.sampler.model  # the model (and dtype) the new path samples with
    rounds = max(1, round(tokens / (batch_size * new_tokens)))
    start = torch.full((batch_size, 1), backend.tokenizer.bos_token_id or 0)
    torch.manual_seed(0)

    def run():
        for _ in range(rounds):
            model.generate(
                input_ids=start,
                attention_mask=torch.ones_like(start),
                do_sample=True,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=backend.tokenizer.pad_token_id,
            )

    _, seconds = _timed(run)
    return Timing(rounds * batch_size * new_tokens, seconds)


def bench_config(quick: bool) -> RunConfig:
    """The demo's settings (configs/demo.yaml), on fewer pairs with --quick."""
    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    overrides = ["run_dir=" + tempfile.mkdtemp(prefix="star-gate-bench-")]
    if quick:
        overrides += ["data.train_max_tasks=2", "data.train_max_personas=4"]
    return load_config(demo if demo.exists() else None, overrides)


def _setup(quick: bool):
    """The bench's config, its pairs (the first training split's) and the players."""
    from star_gate.preflight import runnable_dataset
    from star_gate.roles.factory import Players

    cfg = bench_config(quick)
    pairs = runnable_dataset(cfg).pairs(cfg.data.train_splits[0])
    return cfg, pairs, Players(cfg)


def _simulate_with(serving, questioner, roleplayer, pairs, cfg: RunConfig):
    from star_gate.stages import simulate

    questioner.backend = serving
    n, turns = cfg.simulate.conversations_per_pair, cfg.simulate.max_turns
    return simulate(pairs, questioner, roleplayer, n, turns, seed=0)


def new_path(quick: bool, work: Path) -> None:
    """The demo's path, alone in its own process, so that its peak memory is its own: simulate,
    score, select, final answers, then train with the models released first, as the pipeline does.
    Writes its timings and records into `work` for the baseline to run on the same data."""
    limit_memory_growth()  # as the CLI sets it for a run (a spawned child starts anew)
    cfg, pairs, players = _setup(quick)
    simulated, scored_timing, scored, answered = _new_inference(cfg, pairs, players)
    players.release_local_models()
    trained = _train_timing(cfg, cfg.train, cfg.questioner_prompt(trained=True), answered, pairs)
    write_jsonl(work / "scored.jsonl", (c.to_json() for c in scored))
    write_jsonl(work / "answered.jsonl", (c.to_json() for c in answered))
    timings = {"simulate": simulated, "score": scored_timing, "train": trained}
    (work / "new_path.json").write_text(
        json.dumps(
            {
                **{name: [t.amount, t.seconds] for name, t in timings.items()},
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def _new_inference(cfg: RunConfig, pairs, players):
    """Simulate, score, select and final answers on the new path, timed where the bench compares."""
    from star_gate.backends.tokens import text_ids
    from star_gate.stages import regularize, score_conversations, select_top_k

    questioner, roleplayer = players.questioner(None), players.roleplayer()
    backend: TransformersBackend = questioner.backend
    conversations, seconds = _timed(
        lambda: _simulate_with(backend, questioner, roleplayer, pairs, cfg)
    )
    simulated = Timing(backend.generated_tokens, seconds)
    by_id = {p.pair_id: p for p in pairs}
    gold_tokens = sum(
        len(text_ids(backend.tokenizer, by_id[c.pair_id].gold.text)) for c in conversations
    )
    scored, seconds = _timed(lambda: score_conversations(conversations, pairs, backend))
    kept = select_top_k(scored, cfg.select.top_k)
    answered = regularize(kept, pairs, questioner, "policy", cfg.regularize.max_new_tokens)
    return simulated, Timing(gold_tokens, seconds), scored, answered


def _run_new_path(quick: bool, work: Path) -> dict:
    """new_path in a fresh process (spawned: no memory of this one's)."""
    child = multiprocessing.get_context("spawn").Process(target=new_path, args=(quick, work))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the new path's process failed (exit status {child.exitcode})")
    measured = json.loads((work / "new_path.json").read_text())
    return {
        "peak_rss_mb": measured.pop("peak_rss_mb"),
        **{name: Timing(*value) for name, value in measured.items()},
    }


def run_bench(quick: bool = False, present_batch_size: int = 32, say=print) -> dict:
    from star_gate.stages import score_conversations

    with tempfile.TemporaryDirectory(prefix="star-gate-bench-") as folder:
        work = Path(folder)
        new = _run_new_path(quick, work)
        scored = [Conversation.from_json(row) for _, row in read_jsonl(work / "scored.jsonl")]
        answered = [Conversation.from_json(row) for _, row in read_jsonl(work / "answered.jsonl")]
    cfg, pairs, players = _setup(quick)
    questioner, roleplayer = players.questioner(None), players.roleplayer()
    backend: TransformersBackend = questioner.backend
    present = PresentPath(backend, present_batch_size)
    say(
        f"bundled model, {len(pairs)} pairs x {cfg.simulate.conversations_per_pair} conversations "
        f"x up to {cfg.simulate.max_turns} turns; batch {backend.batch_size} (new path), "
        f"{present_batch_size} (present path)"
    )
    _, seconds = _timed(lambda: _simulate_with(present, questioner, roleplayer, pairs, cfg))
    old_sim = Timing(present.generated_tokens, seconds)
    questioner.backend = backend
    new_sim = new["simulate"]
    # The most rows the new path decodes at once
    batch = min(backend.batch_size, len(pairs) * cfg.simulate.conversations_per_pair)
    ceiling = decode_ceiling(backend, new_sim.amount, batch, questioner.params.max_new_tokens)
    say(
        f"simulate: new {new_sim.rate:.1f} tok/s | present {old_sim.rate:.1f} tok/s | "
        f"decode ceiling {ceiling.rate:.1f} tok/s (batch {batch}, {backend.sampler.model.dtype})"
    )

    new_score = new["score"]
    old_scored, seconds = _timed(lambda: score_conversations(scored, pairs, present))
    old_score = Timing(new_score.amount, seconds)
    drift = score_drift(scored, old_scored, cfg.select.top_k)
    say(
        f"score: new {new_score.rate:.0f} gold tok/s | present {old_score.rate:.0f} gold tok/s | "
        f"new minus present {drift['mean']:+.3f} ± {drift['sd']:.3f} nats per conversation "
        f"(largest {drift['largest']:.2e}); the same {cfg.select.top_k} kept in "
        f"{drift['same_kept']} of {drift['pairs']} pairs"
    )

    players.release_local_models()
    # TRL's defaults as the pipeline used them: fp32, padded batches of the whole update at once,
    # activation checkpointing, and the questioner's few-shot prompt in every example.
    present_cfg = cfg.train.model_copy(
        update={
            "gradient_checkpointing": True,
            "padding_free": False,
            "bf16": False,
            "batch_size": cfg.train.batch_size * cfg.train.gradient_accumulation,
            "gradient_accumulation": 1,
        }
    )
    old_train = _train_timing(
        cfg, present_cfg, cfg.questioner_prompt(trained=False), answered, pairs
    )
    new_train = new["train"]
    say(
        f"train: new {new_train.seconds / new_train.amount:.2f} s/example | "
        f"present {old_train.seconds / old_train.amount:.2f} s/example "
        f"({int(new_train.amount)} examples)"
    )
    say(f"peak memory of the new path's process: {new['peak_rss_mb']:.0f} MB")

    results = {
        "simulate_new_tok_s": new_sim.rate,
        "simulate_present_tok_s": old_sim.rate,
        "simulate_ceiling_tok_s": ceiling.rate,
        "score_new_tok_s": new_score.rate,
        "score_present_tok_s": old_score.rate,
        "score_max_difference_nats": drift["largest"],
        "score_mean_difference_nats": drift["mean"],
        "score_sd_difference_nats": drift["sd"],
        "score_same_kept_pairs": drift["same_kept"],
        "train_new_s_per_example": new_train.seconds / new_train.amount,
        "train_present_s_per_example": old_train.seconds / old_train.amount,
        "simulate_speedup": new_sim.rate / old_sim.rate,
        "simulate_vs_ceiling": new_sim.rate / ceiling.rate,
        "score_speedup": new_score.rate / old_score.rate,
        "train_speedup": (old_train.seconds / old_train.amount)
        / (new_train.seconds / new_train.amount),
        "peak_rss_mb": new["peak_rss_mb"],
        "bench_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    for name, target in TARGETS.items():
        verdict = "meets" if results[name] >= target else "MISSES"
        say(f"{name}: {results[name]:.2f} ({verdict} target >= {target})")
    verdict = "meets" if results["peak_rss_mb"] <= MEMORY_TARGET_MB else "MISSES"
    say(f"peak_rss_mb: {results['peak_rss_mb']:.0f} ({verdict} target <= {MEMORY_TARGET_MB})")
    return results


def score_drift(new: Sequence[Conversation], present: Sequence[Conversation], top_k: int) -> dict:
    """How far the new path's scores are from the present path's on the same conversations (in
    the same order), and in how many pairs both keep the same top_k conversations."""
    from star_gate.stages import select_top_k

    differences = [a.logprob - b.logprob for a, b in zip(new, present)]

    def kept(scored) -> dict:
        by_pair = defaultdict(set)
        for c in select_top_k(scored, top_k):
            by_pair[c.pair_id].add(c.sample_index)
        return by_pair

    new_kept, present_kept = kept(new), kept(present)
    pairs = {c.pair_id for c in new}
    return {
        "mean": statistics.fmean(differences),
        "sd": statistics.pstdev(differences),
        "largest": max(abs(d) for d in differences),
        "pairs": len(pairs),
        "same_kept": sum(new_kept[p] == present_kept[p] for p in pairs),
    }


def _train_timing(cfg: RunConfig, train_cfg: TrainConfig, prompt: str, answered, pairs) -> Timing:
    """Seconds of one epoch of fine-tuning on these conversations (training only: no load or save)."""
    from transformers import AutoTokenizer

    from star_gate.backends.models import resolve_model
    from star_gate.roles.prompts import get_template
    from star_gate.stages.train import build_examples
    from star_gate.training.finetune import finetune

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.roles.questioner.model))
    examples, _ = build_examples(
        answered, pairs, get_template(prompt), tokenizer, train_cfg.max_length
    )
    one_epoch = train_cfg.model_copy(update={"epochs": 1.0, "validation_fraction": 0.0})
    with tempfile.TemporaryDirectory() as out:
        metrics = finetune(examples, cfg.roles.questioner.model, Path(out), one_epoch, seed=0)
    return Timing(len(examples), metrics["train_seconds"])


def main(quick: bool, as_json: bool) -> None:
    say = (lambda line: print(line, file=sys.stderr)) if as_json else print
    results = run_bench(quick, say=say)
    if as_json:
        print(json.dumps(results))
