"""How much could one question gain? Fixed questions against Q_0's own, on a training split.

The demo's trained questioners gain about a nat of log p_base(gold) over Q_0. Is that the most the
environment allows, or the most a 135M learner finds? Here every pair of a split gets one-turn
conversations whose question is fixed, written by hand, next to Q_0's sampled ones, all answered
by the configured roleplayer and scored by the frozen base model. Printed per questioner: the
gain over Q_0's mean (paired by pair, mean ± SEM), the gain over the negative control, the share
of the persona gap closed, how often the roleplayer's reply holds the persona's first name
(every bundled gold answer opens with it), and how often the question asks something (roles/answers.asks);
with --address, also the gain over Q_0 when the gold answer's opening address ("Aoife,") is not
scored: what the questions are worth beyond guessing the name. With --hint, also Q_0 shown the
pair's gold answer as a private note while it asks (STaR's rationalization, applied to the
question): does a hint teach it better questions, or do its questions copy the answer, which the
scorer then finds in the conversation?

A training split only (A or B): this is about the environment, and the test split stays unseen.

    python benchmarks/question_ceiling.py [--config configs/demo.yaml] [--split B] [--n 4]
        [--set roles.questioner.prompt=questioner_person]   # Q_0 under another prompt
        [--opening "What is your"]   # also Q_0 whose question starts with these words
        [--address]   # also the gains with the gold's opening address ("Aoife,") left out
        [--hint]   # also Q_0 shown the gold answer while it asks
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Sequence

from star_gate.config import load_config
from star_gate.data.records import Conversation
from star_gate.pipeline import Pipeline
from star_gate.roles.answers import asks
from star_gate.roles.players import Questioner
from star_gate.stages import score_controls, score_conversations, simulate
from star_gate.stages.score import less_address
from star_gate.stats import mean_sem, paired_differences, per_pair_means, persona_gap_share

FIXED_QUESTIONS = {
    "name + about you": "What is your name, and could you tell me a little about yourself?",
    "about you": "Could you tell me a little about yourself?",
    "name only": "What is your name?",
    "what you enjoy": "What do you enjoy doing in your free time?",
}


# Appended to the request in the questioner's view only; the roleplayer and the scorer never see it.
GOLD_HINT = (
    "\n\n(A note for the assistant only; the user cannot see it. The reply that will suit this "
    'user is:\n"{gold}"\nDo not give it yet. First ask the user the one short question whose '
    "answer tells you what you need to know to write it.)"
)


class HintedQuestioner:
    """The questioner shown each pair's gold answer while it asks (the simulate stage's questioner
    protocol): STaR's rationalization, the answer given as a hint."""

    def __init__(self, questioner: Questioner, golds: dict[str, str]):
        self.questioner, self.golds = questioner, golds

    def ask(
        self, tasks: Sequence[str], conversations: Sequence[Conversation], seed: int
    ) -> list[str]:
        hinted = [
            task + GOLD_HINT.format(gold=self.golds[c.pair_id])
            for task, c in zip(tasks, conversations)
        ]
        return self.questioner.ask(hinted, conversations, seed)


def word_runs(text: str, words: int) -> set[tuple[str, ...]]:
    tokens = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1)}


def copies(question: str, gold: str, first_name: str, words: int = 4) -> bool:
    """Whether a question holds the person's first name or any run of `words` words of the gold."""
    return (first_name,) in word_runs(question, 1) or bool(
        word_runs(question, words) & word_runs(gold, words)
    )


class FixedQuestioner:
    """Asks the same question in every conversation: the simulate stage's questioner protocol."""

    def __init__(self, question: str):
        self.question = question

    def ask(
        self, tasks: Sequence[str], conversations: Sequence[Conversation], seed: int
    ) -> list[str]:
        return [self.question] * len(tasks)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--split", default="B", choices=["A", "B"])
    parser.add_argument("--n", type=int, default=4, help="Q_0's conversations per pair")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", default="/tmp/star-gate-question-ceiling", help="scratch")
    parser.add_argument(
        "--opening",
        action="append",
        default=[],
        help="also sample Q_0 with its question starting with these words (simulate.openings)",
    )
    parser.add_argument(
        "--no-fixed", action="store_true", help="leave out the fixed questions (with --opening)"
    )
    parser.add_argument(
        "--address",
        action="store_true",
        help="also the gain over Q_0 without the gold answer's opening address (its name): "
        "log p(gold) - log p(address)",
    )
    parser.add_argument(
        "--hint",
        action="store_true",
        help="also Q_0 shown the pair's gold answer as a private note while it asks",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args(argv)
    # Every task and persona of the split: the demo's data.* limits would keep only 48 pairs.
    overrides = [
        f"run_dir={args.run_dir}",
        "data.train_max_tasks=1000",
        "data.train_max_personas=1000",
        *args.set,
    ]
    pipeline = Pipeline(load_config(args.config, overrides), restart=True, progress=False)
    pairs = pipeline.pairs(args.split)
    first_names = {p.pair_id: p.persona.name.split()[0].lower() for p in pairs}
    scorer = pipeline.players.scorer()
    controls = score_controls(pairs, scorer)
    negative = {c.pair_id: c.logprob for c in controls if c.condition == "negative"}
    positive = {c.pair_id: c.logprob for c in controls if c.condition == "positive"}
    roleplayer = pipeline.players.roleplayer()

    def run(questioner, n: int, opening: str = "") -> tuple[list[Conversation], float]:
        started = time.time()
        conversations = simulate(
            pairs,
            questioner,
            roleplayer,
            n,
            1,
            seed=args.seed,
            openings=[opening] if opening else (),
        )
        return score_conversations(conversations, pairs, scorer), time.time() - started

    questioner = pipeline.players.questioner()
    rows = [("Q_0 (sampled)", *run(questioner, args.n))]
    rows += [(f"Q_0 '{o}'", *run(questioner, args.n, o)) for o in args.opening]
    golds = {p.pair_id: p.gold.text for p in pairs}
    if args.hint:
        rows.append(("Q_0 shown the gold", *run(HintedQuestioner(questioner, golds), args.n)))
    fixed = {} if args.no_fixed else FIXED_QUESTIONS
    rows += [(label, *run(FixedQuestioner(q), 1)) for label, q in fixed.items()]
    pair_means = {label: per_pair_means((c.pair_id, c.logprob) for c in s) for label, s, _ in rows}
    q0_means = pair_means["Q_0 (sampled)"]
    rest_means = {}
    if args.address:
        for label, scored, _ in rows:
            rest = less_address(scored, pairs, scorer)
            rest_means[label] = per_pair_means((c.pair_id, c.logprob) for c in rest)

    width = max(18, *(len(label) for label, _, _ in rows))
    print(f"split {args.split}: {len(pairs)} pairs; Q_0 {args.n} one-turn conversations per pair")
    print(
        f"{'questioner':<{width}} {'vs Q_0 mean':>16} {'vs negative':>16} {'gap share':>10} "
        f"{'name told':>10} {'name asked':>11} {'asks':>5} {'secs':>6}"
        + (f" {'after address':>16}" if args.address else "")
    )
    for label, scored, secs in rows:
        means = pair_means[label]
        vs_q0 = mean_sem(paired_differences(means, q0_means))
        vs_negative = mean_sem(paired_differences(means, negative))
        share, _ = persona_gap_share(means, negative, positive)
        told = statistics.fmean(
            first_names[c.pair_id] in " ".join(c.answers).lower() for c in scored
        )
        asked = statistics.fmean("name" in " ".join(c.questions).lower() for c in scored)
        asking = statistics.fmean(asks(c.questions[0]) for c in scored)
        rest = ""
        if args.address:
            gain, sem = mean_sem(paired_differences(rest_means[label], rest_means["Q_0 (sampled)"]))
            rest = f" {gain:>+8.2f} ± {sem:.2f}"
        print(
            f"{label:<{width}} {vs_q0[0]:>+8.2f} ± {vs_q0[1]:<5.2f} {vs_negative[0]:>+8.2f} ± "
            f"{vs_negative[1]:<5.2f} {share:>10.2f} {told:>10.2f} {asked:>11.2f} {asking:>5.2f} {secs:>6.0f}"
            + rest
        )
    for label, question in fixed.items():
        print(f"  {label}: {question!r}")
    if args.hint:
        print_hint_summary(rows[-1][1], golds, first_names, q0_means)


def print_hint_summary(hinted, golds, first_names, q0_means) -> None:
    """How many hinted questions copy the answer, and what the others gain over Q_0."""
    copied = [copies(c.questions[0], golds[c.pair_id], first_names[c.pair_id]) for c in hinted]
    own = per_pair_means((c.pair_id, c.logprob) for c, cp in zip(hinted, copied) if not cp)
    gain, sem = mean_sem(paired_differences(own, q0_means)) if own else (float("nan"),) * 2
    print(
        f"Q_0 shown the gold: {sum(copied)} of {len(copied)} questions hold the person's name or "
        f"4 words in a row of the gold answer; the others, vs Q_0 mean: {gain:+.2f} ± {sem:.2f} "
        f"over {len(own)} pairs"
    )


if __name__ == "__main__":
    main()
