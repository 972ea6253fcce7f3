"""Which roleplayer gives the clearer learning signal? Measured, on the bundled model.

For each roleplayer mode, Q_0 holds n one-turn conversations per test pair; each is scored by
log p_base(gold | task, conversation). Printed per mode: the mean gain over the negative control
(mean ± SEM over pairs), the gain of the best conversation per pair (what selection keeps), and
the spread between conversations of a pair (without spread, selection has nothing to choose).

    python benchmarks/roleplayer_signal.py [--pairs 16] [--n 4]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from star_gate.config import load_config
from star_gate.pipeline import Pipeline
from star_gate.stages import score_controls, score_conversations, simulate
from star_gate.stats import mean_sem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--modes", default="persona,grounded,facts")
    args = parser.parse_args()
    base = load_config(None, ["run_dir=/tmp/star-gate-roleplayer-signal"])
    pipeline = Pipeline(base, restart=True, progress=False)
    pairs = pipeline.pairs("test")[: args.pairs]
    controls = score_controls(pairs, pipeline.players.scorer())
    negative = {c.pair_id: c.logprob for c in controls if c.condition == "negative"}
    print(f"{len(pairs)} test pairs, {args.n} one-turn conversations each")
    print(
        f"{'roleplayer':<10} {'gain vs negative':>20} {'best-of-n gain':>18} {'spread in pair':>15} {'secs':>6}"
    )
    for mode in args.modes.split(","):
        # Same pipeline (models and retriever stay loaded); only the roleplayer mode changes.
        pipeline.config = load_config(
            None, ["run_dir=/tmp/star-gate-roleplayer-signal", f"roles.roleplayer.mode={mode}"]
        )
        started = time.time()
        conversations = simulate(
            pairs, pipeline.players.questioner(), pipeline.players.roleplayer(), args.n, 1, seed=0
        )
        scored = score_conversations(conversations, pairs, pipeline.players.scorer())
        by_pair = defaultdict(list)
        for c in scored:
            by_pair[c.pair_id].append(c.logprob - negative[c.pair_id])
        gains = [statistics.fmean(v) for v in by_pair.values()]
        best = [max(v) for v in by_pair.values()]
        spread = statistics.fmean(statistics.pstdev(v) for v in by_pair.values())
        g, gs = mean_sem(gains)
        b, bs = mean_sem(best)
        print(
            f"{mode:<10} {g:>+11.1f} ± {gs:<6.1f} {b:>+10.1f} ± {bs:<5.1f} {spread:>15.1f} {time.time() - started:>6.0f}"
        )


if __name__ == "__main__":
    main()
