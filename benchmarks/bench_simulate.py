"""Simulation throughput: the simulate stage against raw batched `generate`, side by side.

The stage's run is recorded (every batched generate call's prompts and sampling settings); raw
`model.generate` then replays the same prompts, in the same batch sizes, with the same sampling
settings and seeds. Both count new tokens up to each row's stop token. Rounds alternate so
machine noise hits both sides alike. Target: stage / raw >= 0.9.

    python benchmarks/bench_simulate.py [--pairs 8] [--n 4] [--turns 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from star_gate.backends.base import SamplingParams
from star_gate.backends.hf import TransformersBackend, count_generated
from star_gate.config import load_config
from star_gate.pipeline import Pipeline
from star_gate.stages import simulate


class Recorder:
    """Wrap a backend and remember every generate call."""

    def __init__(self, backend: TransformersBackend):
        self.backend, self.name, self.calls = backend, backend.name, []

    def generate(self, chats, params: SamplingParams):
        self.calls.append((list(chats), params))
        return self.backend.generate(chats, params)

    def logprobs(self, chats, completions):
        return self.backend.logprobs(chats, completions)


@torch.inference_mode()
def raw_generate(backend: TransformersBackend, calls) -> int:
    """Plain batched model.generate over the recorded prompts, in input order."""
    model, tokenizer, total = backend.model, backend.tokenizer, 0
    tokenizer.padding_side = "left"
    for chats, params in calls:
        torch.manual_seed(params.seed)
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        for start in range(0, len(texts), backend.batch_size):
            batch = tokenizer(texts[start : start + backend.batch_size], return_tensors="pt",
                              padding=True, add_special_tokens=False).to(backend.device)
            sampling = ({"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
                        if params.temperature > 0 else {"do_sample": False})
            out = model.generate(**batch, max_new_tokens=params.max_new_tokens, num_return_sequences=params.n,
                                 eos_token_id=backend.stop_ids, pad_token_id=tokenizer.pad_token_id, **sampling)
            total += count_generated(out[:, batch["input_ids"].shape[1]:], backend.stop_ids)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--roleplayer", default="grounded")
    args = parser.parse_args()
    cfg = load_config(None, ["run_dir=/tmp/star-gate-bench", f"roles.roleplayer.mode={args.roleplayer}"])
    pipeline = Pipeline(cfg, restart=True, progress=False)
    pairs = pipeline.pairs("A")[: args.pairs]
    questioner, roleplayer = pipeline.questioner(0), pipeline.roleplayer()
    backend = questioner.backend  # the roleplayer shares it: same bundled model
    recorder = Recorder(backend)
    questioner.backend = recorder
    if getattr(roleplayer, "backend", None) is backend:
        roleplayer.backend = recorder
    stage_rates, raw_rates = [], []
    for round_index in range(args.rounds):
        recorder.calls.clear()
        before, started = backend.generated_tokens, time.perf_counter()
        simulate(pairs, questioner, roleplayer, args.n, args.turns, seed=round_index)
        stage_tokens, stage_secs = backend.generated_tokens - before, time.perf_counter() - started
        started = time.perf_counter()
        raw_tokens = raw_generate(backend, recorder.calls)
        raw_secs = time.perf_counter() - started
        stage_rates.append(stage_tokens / stage_secs)
        raw_rates.append(raw_tokens / raw_secs)
        print(f"round {round_index}: simulate stage {stage_tokens} tokens in {stage_secs:.1f}s = "
              f"{stage_rates[-1]:.1f} tok/s | raw generate {raw_tokens} tokens in {raw_secs:.1f}s = "
              f"{raw_rates[-1]:.1f} tok/s | ratio {stage_rates[-1] / raw_rates[-1]:.2f}")
    stage, raw = sum(stage_rates) / len(stage_rates), sum(raw_rates) / len(raw_rates)
    print(f"device={backend.device} pairs={len(pairs)} n={args.n} turns<={args.turns} "
          f"batch={backend.batch_size} roleplayer={args.roleplayer}")
    print(f"simulate stage: {stage:.1f} tok/s   raw batched generate: {raw:.1f} tok/s   "
          f"ratio: {stage / raw:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()
