"""How accurate is each judging method? Measured on a labelled judge set built from gold answers.

For a (task, persona) pair of the A and B splits (never the test split), the fitting answer is the
pair's gold and the other is the gold of the same task written for a different persona. Each
method picks one; accuracy is the share of picks of the fitting answer (ties count one half),
± SEM. Methods: logprobs (A or B, one order per comparison drawn from the seed), calibrated (both
orders, log-odds averaged), pointwise (log p('Yes') - log p('No') of each answer alone),
persona_fit (no judge: per-token log p_base(answer | persona, task) - log p_base(answer | task)
under the scorer), and generate (parse an A/B reply). Position bias is shown for the methods that
show two answers side by side (calibrated: the raw picks'; its decision is calibrated).

    python benchmarks/judge_accuracy.py [--data bundled] [--judge bundled] [--scorer bundled] \
        [--count 72] [--seed 0] [--methods logprobs,calibrated,pointwise,persona_fit] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

from star_gate.backends import SamplingParams, load_backend
from star_gate.config import RoleConfig
from star_gate.data.loaders import load_dataset
from star_gate.judge_eval import METHODS, judge_accuracy, labelled_comparisons
from star_gate.roles.players import Judge
from star_gate.roles.prompts import get_template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="bundled", help="dataset folder or 'bundled'")
    parser.add_argument("--splits", default="A,B", help="training splits to draw comparisons from")
    parser.add_argument(
        "--judge", default="bundled", help="judge model (local folder, hub id or 'bundled')"
    )
    parser.add_argument("--judge-backend", default="transformers", choices=("transformers", "vllm"))
    parser.add_argument("--scorer", default="bundled", help="frozen base model for persona_fit")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--count", type=int, default=72, help="comparisons drawn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="logprobs,calibrated,pointwise,persona_fit")
    parser.add_argument("--judge-prompt", default="judge")
    parser.add_argument("--pointwise-prompt", default="judge_pointwise")
    parser.add_argument("--json", default="", help="also write the results to this JSON file")
    args = parser.parse_args()

    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    dataset = load_dataset(args.data)
    comparisons = labelled_comparisons(dataset, args.splits.split(","), args.count, args.seed)
    backends: dict[tuple[str, str], object] = {}

    def backend(model: str, kind: str):
        if (model, kind) not in backends:
            backends[model, kind] = load_backend(
                RoleConfig.of(model=model, backend=kind, device=args.device), progress=False
            )
        return backends[model, kind]

    judge = None
    if any(m != "persona_fit" for m in methods):
        judge = Judge(
            backend(args.judge, args.judge_backend),
            get_template(args.judge_prompt),
            SamplingParams(temperature=0.0, max_new_tokens=4),
            "logprobs",
            pointwise_template=get_template(args.pointwise_prompt),
        )
    scorer = backend(args.scorer, "transformers") if "persona_fit" in methods else None

    print(
        f"{len(comparisons)} labelled comparisons from splits {args.splits} of {args.data} (seed {args.seed}); "
        f"judge {args.judge}, scorer {args.scorer}"
    )
    print(
        f"{'method':<12} {'accuracy':>16} {'n':>5} {'unreadable':>11} {'position bias':>14} {'secs':>6}"
    )
    results = []
    for method in methods:
        started = time.time()
        rate = judge_accuracy(comparisons, method, judge=judge, scorer=scorer, seed=args.seed)
        secs = time.time() - started
        bias = f"{rate.position_bias:.2f}" if math.isfinite(rate.position_bias) else "n/a"
        print(
            f"{method:<12} {rate.mean:>8.3f} ± {rate.sem:<5.3f} {rate.count:>5} {rate.unreadable:>11} {bias:>14} {secs:>6.0f}"
        )
        results.append(
            {
                "method": method,
                "accuracy": rate.mean,
                "sem": rate.sem if math.isfinite(rate.sem) else None,
                "count": rate.count,
                "unreadable": rate.unreadable,
                "position_bias": rate.position_bias if math.isfinite(rate.position_bias) else None,
                "seconds": round(secs, 1),
            }
        )
    if args.json:
        summary = {
            "data": args.data,
            "splits": args.splits,
            "judge": args.judge,
            "scorer": args.scorer,
            "count": len(comparisons),
            "seed": args.seed,
            "results": results,
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
