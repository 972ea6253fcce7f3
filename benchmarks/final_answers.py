"""How many final answers still ask again, by the number of extra samples? Measured on a finished run.

For each questioner of a run, final answers are written to kept conversations of a training split
(never the test split), as the regularizer writes them: greedy, then, where the greedy answer asks
again or says nothing, up to N samples in rounds of 4 (`regularize.answer_samples`). Printed per
questioner and N: the share of answers that are still no answer (roles/answers.py), and seconds.

Which conversations each questioner answers:
  Q_0: iteration 1's kept conversations (split A; what it regularized in the run),
  Q_1: iteration 2's (split B; what it regularized in the run),
  Q_2: iteration 1's (split A, which Q_2, trained on B from the base weights, never saw).

    python benchmarks/final_answers.py RUN_DIR [--samples 0,4,8,16] [--models 0,1,2]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from star_gate.config import load_config
from star_gate.data.jsonl import read_jsonl
from star_gate.data.records import Conversation
from star_gate.preflight import runnable_dataset
from star_gate.roles.answers import is_non_answer
from star_gate.roles.factory import Players
from star_gate.stats import mean_sem

# Conversations each Q_k answers: the kept ones of an iteration whose split it was not trained on.
ANSWERED_ITERATION = {0: 1, 1: 2, 2: 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--samples", default="0,4,8,16")
    parser.add_argument("--models", default="0,1,2")
    args = parser.parse_args()
    run = args.run_dir
    config = load_config(run / "config.yaml")
    dataset = runnable_dataset(config)
    players = Players(config)
    max_new_tokens = config.regularize.max_new_tokens
    print(
        f"run {run}: answer prompt {config.regularize.answer_prompt or '(questioner)'}, "
        f"temperature {config.regularize.answer_temperature}, up to {max_new_tokens} tokens"
    )
    print(f"{'model':<6} {'split':<6} {'extra samples':>13} {'no answer':>14} {'secs':>6}")
    for k in [int(m) for m in args.models.split(",")]:
        iteration = ANSWERED_ITERATION[k]
        split = config.data.train_splits[(iteration - 1) % 2]
        kept = [
            Conversation.from_json(row).replace(response=None)
            for _, row in read_jsonl(run / f"iter_{iteration}" / "selected.jsonl")
        ]
        tasks = {p.pair_id: p.task.text for p in dataset.pairs(split)}
        model = str(run / f"iter_{k}" / "checkpoint") if k else None
        for samples in [int(s) for s in args.samples.split(",")]:
            questioner = replace(players.questioner(model), answer_samples=samples)
            started = time.time()
            answers = questioner.respond([tasks[c.pair_id] for c in kept], kept, max_new_tokens)
            share, sem = mean_sem([float(is_non_answer(a)) for a in answers])
            print(
                f"Q_{k:<4} {split:<6} {samples:>13} "
                f"{share:>7.0%} ± {sem:<4.0%} {time.time() - started:>6.0f}",
                flush=True,
            )
        if model:
            players.release(model)


if __name__ == "__main__":
    main()
