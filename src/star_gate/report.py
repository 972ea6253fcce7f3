"""`star-gate report`: report.md and PNG plots for one or more runs (the paper's Figures 3-5).

Everything is computed from the records in the run directories; no model is loaded. Several runs
(a main run and its ablations) share one report: one table per run, one line or panel per run in
each plot.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt

from star_gate.data.jsonl import atomic_write_text
from star_gate.data.loaders import load_dataset
from star_gate.results import RunResults, pooled_gain, repeats_of_one_config

WEAK_JUDGES = ("bundled", "smollm", "135m", "tiny")
CONDITIONS = (
    ("experimental", "conversations with the true persona", "o-"),
    ("random", "conversations with another test persona", "s--"),
)


def fmt(mean: float, sem: float, digits: int = 2) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {sem:.{digits}f}" if math.isfinite(sem) else f"{mean:.{digits}f}"


# -- plots -----------------------------------------------------------------------------------------
DETAILS_SECTION = (
    "## Missing details recovered on the test split",
    "",
    (
        "score.reward details: the importance-weighted share of each pair's missing details that "
        "the questions of Q_k's conversation asked about (a clear request: 1 when answered at once, "
        "0 once anything is asked). The controls are exact: the negative (no conversation) is 0 on "
        "a vague request and 1 on a clear one, the positive (the whole persona) 1. So the share of "
        "the gap closed is the share recovered on the vague requests, less one for each clear "
        "request where Q_k asked, over the number of vague requests. Q_k − Q_0 is paired by test "
        "pair. The IN3 measures: `star-gate bench in3`."
    ),
)
GOLD_SECTION = (
    "## Gold log-probabilities on the test split",
    "",
    (
        "log p_base(g | ·): how likely the frozen base model finds the oracle's "
        "persona-tailored gold answer. Negative control: the task alone; positive control: the "
        "persona written into the task; true persona: after Q_k's conversation with the "
        "roleplayer playing the pair's persona; random persona: after a conversation with "
        "another test persona. Share of persona gap closed = (true − negative) / (positive − "
        "negative) over pair means (bootstrap SEM). Q_k − Q_0 is paired by test pair."
    ),
)

ADDRESS_NOTE = (
    " score.reward gold_after_address: every score here leaves out the gold answer's opening "
    'address ("Aoife,"), log p_base(g | ·) − log p_base(address | ·).'
)


def score_section(runs) -> list[str]:
    """The heading and explanation of the test scores: gold log-probs, or details recovered."""
    reward = runs[0].config.score.reward
    if reward == "details":
        return list(DETAILS_SECTION)
    if reward == "gold_after_address":
        return [*GOLD_SECTION[:2], GOLD_SECTION[2] + ADDRESS_NOTE]
    return list(GOLD_SECTION)


def plot_logprobs(runs: Sequence[RunResults], path: Path) -> Path:
    """Figure 4: test gold log-prob per iteration for each condition, controls as bands."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 4), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        for control, color in zip(run.control_rows(), ("tab:red", "tab:green")):
            ax.axhline(control.mean, color=color, lw=1, label=f"{control.label}")
            ax.axhspan(
                control.mean - control.sem, control.mean + control.sem, color=color, alpha=0.15
            )
        for condition, label, style in CONDITIONS:
            points = [(k, est) for k in run.iterations() if (est := run.logprob(k, condition))]
            if points:
                ax.errorbar(
                    [k for k, _ in points],
                    [e.mean for _, e in points],
                    yerr=[e.sem for _, e in points],
                    fmt=style,
                    capsize=4,
                    label=label,
                )
        ax.set_title(run.name)
        ax.set_xlabel("iteration (questioner Q_k)")
        ax.set_xticks(run.iterations())
    axes[0][0].set_ylabel("log p_base(gold | ...), mean ± SEM")
    axes[0][-1].legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_gap_share(runs: Sequence[RunResults], path: Path) -> Path:
    """Share of the persona gap closed per iteration: 0 = the negative control, 1 = the positive.

    Unlike raw log-probs, it is paired within each test pair, so gold-length variance drops out."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        for condition, label, style in CONDITIONS:
            points = [
                (k, run.gap_share(k, condition))
                for k in run.iterations()
                if run.scored(k, condition)
            ]
            if points:
                ax.errorbar(
                    [k for k, _ in points],
                    [m for _, (m, _) in points],
                    yerr=[e for _, (_, e) in points],
                    fmt=style,
                    capsize=4,
                    label=f"{run.name}: {label}",
                )
    ax.axhline(0, color="tab:red", lw=1, label="negative control")
    ax.axhline(1, color="tab:green", lw=1, label="positive control")
    ax.set_xlabel("iteration (questioner Q_k)")
    ax.set_ylabel("share of persona gap closed ± SEM")
    ax.set_xticks(sorted({k for run in runs for k in run.iterations()}))
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_win_rates(runs: Sequence[RunResults], path: Path) -> Path:
    """Figure 3: win rate of Q_k's answers against Q_0's per iteration, ± SEM, 0.5 = chance."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        for kind, style, suffix in (
            ("judge", "o-", ""),
            ("judge_base", "s--", " (Q_BASE answering)"),
        ):
            points = [
                (k, rate) for k in run.iterations() if k > 0 and (rate := run.win_rate(k, kind))
            ]
            if points:
                ax.errorbar(
                    [0] + [k for k, _ in points],
                    [0.5] + [r.mean for _, r in points],
                    yerr=[0] + [r.sem for _, r in points],
                    fmt=style,
                    capsize=4,
                    label=run.name + suffix,
                )
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xticks(sorted({0, *(k for run in runs for k in run.iterations())}))
    ax.set_xlabel("iteration (Q_k against Q_0; Q_0 is 0.5 by definition)")
    ax.set_ylabel("win rate, mean ± SEM")
    if ax.get_legend_handles_labels()[0]:  # runs without judged answers draw no line
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_win_rates_by_length(run: RunResults, path: Path) -> Path:
    """Win rates per conversation length (turns), one bar per iteration."""
    fig, ax = plt.subplots(figsize=(6, 4))
    iterations = [k for k in run.iterations() if k > 0 and run.judgements(k)]
    width = 0.8 / max(1, len(iterations))
    for offset, k in enumerate(iterations):
        by_length = run.win_rates_by_length(k)
        xs = [turns + (offset - (len(iterations) - 1) / 2) * width for turns in by_length]
        ax.bar(
            xs,
            [r.mean for r in by_length.values()],
            width,
            yerr=[r.sem for r in by_length.values()],
            capsize=3,
            label=f"Q_{k}",
        )
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("conversation length (questions asked)")
    ax.set_ylabel("win rate against Q_0, mean ± SEM")
    ax.set_title(run.name)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_online_rewards(runs: Sequence[RunResults], path: Path) -> Path:
    """loop online: each round's mean training reward ± SEM, rounds numbered across iterations."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in runs:
        rounds = run.online_rounds()
        if rounds:
            ax.errorbar(
                range(1, len(rounds) + 1),
                [entry["reward"] for _, _, entry in rounds],
                yerr=[entry.get("reward_sem", 0.0) for _, _, entry in rounds],
                fmt="o-",
                capsize=3,
                label=run.name,
            )
    ax.set_xlabel("online round (all iterations)")
    ax.set_ylabel("training reward, mean ± SEM")
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    fig.savefig(partial, dpi=110)
    plt.close(fig)
    partial.replace(path)  # a plot appears whole or not at all
    return path


# -- markdown --------------------------------------------------------------------------------------
def describe_runs(runs: Sequence[RunResults]) -> list[str]:
    lines = [
        "| run | questioner | roleplayer (train / test) | judge | regularize | test pairs | iterations |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        cfg = run.config
        train_rp = f"{cfg.roles.roleplayer.mode} ({cfg.roles.roleplayer.model})"
        test = cfg.evaluate.roleplayer
        test_rp = f"{test.mode} ({test.model})" if test else "same"
        pairs = len(run.controls("negative"))
        lines.append(
            f"| `{run.root}` | {cfg.roles.questioner.model} | {train_rp} / {test_rp} | "
            f"{describe_judge(cfg)} | {cfg.regularize.mode}"
            f"{f' ({cfg.regularize.answer_prompt} prompt)' if cfg.regularize.answer_prompt else ''} | "
            f"{pairs} | {', '.join(map(str, run.iterations()))} |"
        )
    return lines


def comparison_table(runs: Sequence[RunResults]) -> list[str]:
    """Runs side by side at their last evaluated iteration N: the gain over Q_0 (in SEMs), the
    share of the persona gap, the win rate against Q_0, the persona fit, the questions asked and
    the wall time. Meant for runs on the same data, seed and evaluation budget."""
    lines = [
        (
            "| run | method | Q_N − Q_0, paired (SEMs) | gap share Q_0 → Q_N | win rate vs Q_0 "
            "(bias) | persona fit Q_N − Q_0 | questions asked Q_0 → Q_N | wall |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        last = max(run.iterations(), default=0)
        if last == 0:
            continue
        gain = run.paired_gain(last, 0)
        sems = f" ({gain.mean / gain.sem:+.1f})" if gain and gain.sem > 0 else ""
        shares = [run.gap_share(k) for k in (0, last)]
        rate = run.win_rate(last)
        fit = run.persona_fit_gain(last, 0)
        asked = [run.questions_asked(k) for k in (0, last)]
        wall = run.wall_seconds
        cells = [
            f"`{run.name}`",
            run.method,
            (fmt(gain.mean, gain.sem) + sems) if gain else "–",
            " → ".join(fmt(*share) for share in shares),
            f"{fmt(rate.mean, rate.sem, 3)} ({bias_cell(rate.position_bias)})" if rate else "–",
            fmt(fit.mean, fit.sem, 3) if fit else "–",
            " → ".join(fmt(a.mean, a.sem) if a else "–" for a in asked),
            f"{wall / 60:.1f} min" if wall is not None else "–",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pooled_lines(runs: Sequence[RunResults]) -> list[str]:
    """For runs that repeat one config with other seeds: each Q_k − Q_0 averaged over the runs,
    with the SEM over runs (each run one draw of the whole experiment)."""
    if not repeats_of_one_config(runs):
        return []
    common = set.intersection(*(set(run.iterations()) for run in runs)) - {0}
    lines = [
        f"## Pooled over {len(runs)} seeds",
        "",
        (
            "The runs differ only in their seed. Each run's paired Q_k − Q_0 counts once; the "
            "mean over the runs ± the larger of their spread (SEM over runs) and their own SEMs "
            "(root mean square, over √runs): a few runs can agree by chance far more closely than "
            "their error bars allow."
        ),
        "",
        "| | mean ± SEM over runs | SEMs | per run |",
        "|---|---|---|---|",
    ]
    for k in sorted(common):
        pooled = pooled_gain(runs, k)
        if pooled is None:
            continue
        each = ", ".join(f"{run.paired_gain(k).mean:+.2f}" for run in runs)
        sems = f"{pooled.mean / pooled.sem:+.1f}" if pooled.sem > 0 else "–"
        lines.append(f"| Q_{k} − Q_0 | {fmt(pooled.mean, pooled.sem)} | {sems} | {each} |")
    return [*lines, ""]


def describe_judge(cfg) -> str:
    evaluate = cfg.evaluate
    if evaluate.judge_method == "persona_fit":
        return "none: persona fit under the frozen base model"
    if evaluate.judge_method == "pointwise":
        return f"{cfg.roles.judge.model} (pointwise, one answer at a time)"
    return f"{cfg.roles.judge.model} ({evaluate.judge_method}, {evaluate.judge_order} order)"


def bias_cell(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "n/a"


def answer_tables(run: RunResults) -> list[str]:
    """Per Q_k: non-answers among the judged final answers, and their persona fit; then the
    regularization answers' non-answers per training iteration."""
    iterations = [k for k in run.iterations() if run.non_answers(k)]
    regularized = [
        (k, share) for k in run.training_iterations() if (share := run.regularized_non_answers(k))
    ]
    if not iterations and not regularized:
        return [
            f"### {run.name}",
            "",
            "No final answers in this run (evaluate.win_rates is off or not run yet).",
            "",
        ]
    lines = [f"### {run.name}", ""]
    if iterations:
        lines += [
            (
                "| Q_k | turns that ask ± SEM (turns) | non-answers ± SEM (n) | persona fit, "
                "nats/token | persona fit − Q_0, paired |"
            ),
            "|---|---|---|---|---|",
        ]
        for k in iterations:
            share, fit, asking = run.non_answers(k), run.persona_fit(k), run.asking(k)
            gain = run.persona_fit_gain(k) if k > 0 else None
            lines.append(
                f"| Q_{k} | {fmt(asking.mean, asking.sem) + f' ({asking.count})' if asking else '–'} | "
                f"{fmt(share.mean, share.sem)} ({share.count}) | "
                f"{fmt(fit.mean, fit.sem, 3) if fit else '–'} | {fmt(gain.mean, gain.sem, 3) if gain else '–'} |"
            )
        lines.append("")
    training = [(k, t) for k in run.training_iterations() if (t := run.training_asking(k))]
    if training:
        lines += [
            "Questioner turns that ask in training conversations (written by Q_{k-1}):",
            "",
            "| training iteration | sampled ± SEM (turns) | kept by selection ± SEM (turns) |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | {fmt(s.mean, s.sem)} ({s.count}) | {fmt(kept.mean, kept.sem)} ({kept.count}) |"
            for k, (s, kept) in training
        ]
        lines.append("")
    if regularized:
        lines += [
            "Regularization answers (written by Q_{k-1} for training iteration k) that are no answer:",
            "",
            "| training iteration | written by | non-answers ± SEM (n) |",
            "|---|---|---|",
        ]
        lines += [
            f"| {k} | Q_{k - 1} | {fmt(share.mean, share.sem)} ({share.count}) |"
            for k, share in regularized
        ]
        lines.append("")
    return lines


def logprob_tables(run: RunResults) -> list[str]:
    lines = [f"### {run.name}", ""]
    for control in run.control_rows():
        lines.append(f"- {control.label}: {fmt(control.mean, control.sem)} ({control.count} pairs)")
    lines += [
        "",
        (
            "| Q_k | true persona (n) | random persona (n) | gap closed, true | gap closed, random "
            "| Q_k − Q_0, paired |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for k in run.iterations():
        cells = []
        for condition in ("experimental", "random"):
            est = run.logprob(k, condition)
            cells.append(f"{fmt(est.mean, est.sem)} ({est.count})" if est else "–")
        shares = [
            fmt(*run.gap_share(k, c), digits=3) if run.scored(k, c) else "–"
            for c in ("experimental", "random")
        ]
        gain = run.paired_gain(k) if k > 0 else None
        cells += [*shares, fmt(gain.mean, gain.sem) if gain else "–"]
        lines.append(f"| Q_{k} | " + " | ".join(cells) + " |")
    return lines + [""]


def win_rate_tables(run: RunResults) -> list[str]:
    rows = [
        (k, kind, rate)
        for k in run.iterations()
        if k > 0
        for kind in ("judge", "judge_base")
        if (rate := run.win_rate(k, kind))
    ]
    if not rows:
        return [
            f"### {run.name}",
            "",
            "No judged answers in this run (evaluate.win_rates is off or not run yet).",
            "",
        ]
    lines = [
        f"### {run.name}",
        "",
        "| contender vs Q_0 | win rate ± SEM | judged | unreadable | position bias |",
        "|---|---|---|---|---|",
    ]
    for k, kind, rate in rows:
        label = f"Q_{k}" if kind == "judge" else f"Q_BASE answering after Q_{k}"
        lines.append(
            f"| {label} | {fmt(rate.mean, rate.sem, 3)} | {rate.count} | {rate.unreadable} | "
            f"{bias_cell(rate.position_bias)} |"
        )
    lengths = sorted(
        {turns for k, kind, _ in rows if kind == "judge" for turns in run.win_rates_by_length(k)}
    )
    lines += [
        "",
        "By conversation length (questions asked):",
        "",
        "| Q_k | " + " | ".join(f"{t} turn{'s' * (t > 1)}" for t in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for k, kind, _ in rows:
        if kind == "judge":
            by_length = run.win_rates_by_length(k)
            cells = [
                f"{fmt(by_length[t].mean, by_length[t].sem)} ({by_length[t].count})"
                if t in by_length
                else "–"
                for t in lengths
            ]
            lines.append(f"| Q_{k} | " + " | ".join(cells) + " |")
    return lines + [""]


def judge_caveat(runs: Sequence[RunResults]) -> list[str]:
    weak = sorted(
        {
            run.config.roles.judge.model
            for run in runs
            if run.config.evaluate.uses_judge
            and any(marker in run.config.roles.judge.model.lower() for marker in WEAK_JUDGES)
        }
    )
    if not weak:
        return []
    return [
        (
            f"> **A weak judge.** The judge here is {', '.join(weak)}, a small model, not GPT-4. Its "
            "verdicts follow the position and surface features more than the persona (see the "
            "position-bias column), so these win rates check the bookkeeping and show the trend at "
            "best; they are not evidence that one model's answers suit people better. Use a strong "
            "judge (`roles.judge`) for that."
        ),
        "",
    ]


def online_round_table(run: RunResults) -> list[str]:
    rounds = run.online_rounds()
    if not rounds:
        return []
    lines = [f"### {run.name}", "", "| iteration | round | reward ± SEM | KL / token | loss |"]
    lines.append("|---|---|---|---|---|")
    for k, index, entry in rounds:
        reward = fmt(entry["reward"], entry.get("reward_sem", float("nan")))
        lines.append(f"| {k} | {index} | {reward} | {entry['kl']:.4f} | {entry['loss']:+.4f} |")
    return [*lines, ""]


def question_gain_tables(run: RunResults) -> list[str]:
    """Q_k by question number: what each question added to the gold log-prob."""
    gains = {k: run.question_gains(k) for k in run.iterations()}
    width = max((len(rows) for rows in gains.values()), default=0)
    if not width:
        return []
    lines = [
        f"### {run.name}",
        "",
        "| Q_k | " + " | ".join(f"question {i} (pairs)" for i in range(1, width + 1)) + " |",
        "|---" * (width + 1) + "|",
    ]
    for k, rows in gains.items():
        cells = [f"{fmt(g.mean, g.sem)} ({g.count})" for g in rows] + ["–"] * (width - len(rows))
        lines.append(f"| Q_{k} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def example_tables(run: RunResults, count: int) -> list[str]:
    """For a few test pairs, each iteration's first test conversation and final answer side by side."""
    dataset = load_dataset(run.config.data.path)
    answers = {
        k: {c.pair_id: c for c in run.answers(k) if c.sample_index == 0} for k in run.iterations()
    }
    iterations = [k for k in run.iterations() if answers[k]]
    if not iterations:
        return []
    pair_ids = _varied_pairs(list(answers[iterations[0]]), count)
    lines = []
    for pair_id in pair_ids:
        task_id, persona_id = pair_id.split("|")
        persona = dataset.personas[persona_id]
        lines += [
            f"### {dataset.tasks[task_id].text} ({persona.name})",
            "",
            f"<details><summary>persona</summary>\n\n{persona.description}\n\n</details>",
            "",
            "<table><tr>",
        ]
        lines += [f"<th>Q_{k}</th>" for k in iterations] + ["</tr><tr>"]
        for k in iterations:
            conversation = answers[k].get(pair_id)
            lines.append(f'<td valign="top">{_conversation_html(conversation)}</td>')
        lines += ["</tr></table>", ""]
    return lines


def _varied_pairs(pair_ids: list[str], count: int) -> list[str]:
    """Up to `count` pairs, preferring ones whose task and persona no earlier choice has."""
    chosen, tasks, personas = [], set(), set()
    for pair_id in pair_ids:
        task_id, persona_id = pair_id.split("|")
        if task_id not in tasks and persona_id not in personas:
            chosen.append(pair_id)
            tasks.add(task_id)
            personas.add(persona_id)
    chosen += [p for p in pair_ids if p not in chosen]
    return chosen[:count]


def _cell(text: str) -> str:
    """Text safe inside an HTML table cell of a markdown file (a bare newline would end the table)."""
    return html.escape(text).replace("\n", "<br>")


def _conversation_html(conversation) -> str:
    if conversation is None:
        return "–"
    who = {"questioner": "<b>Q</b>", "roleplayer": "<b>user</b>"}
    parts = [f"{who[turn.speaker]}: {_cell(turn.text)}" for turn in conversation.turns]
    parts.append(f"<b>final answer</b>: {_cell(conversation.response or '')}")
    return "<br><br>".join(parts)


def write_report(
    run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, examples: int = 3
) -> Path:
    runs = [RunResults(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else runs[0].root
    out.mkdir(parents=True, exist_ok=True)
    plots = {
        "logprobs": plot_logprobs(runs, out / "logprobs.png"),
        "gap_share": plot_gap_share(runs, out / "gap_share.png"),
        "win_rates": plot_win_rates(runs, out / "win_rates.png"),
    }
    if any(k > 0 and runs[0].judgements(k) for k in runs[0].iterations()):
        plots["by_length"] = plot_win_rates_by_length(runs[0], out / "win_rates_by_length.png")
    lines = [
        "# STaR-GATE report",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `star-gate report`.",
        "",
        *describe_runs(runs),
        "",
        *(["## Side by side", "", *comparison_table(runs), ""] if len(runs) > 1 else []),
        *pooled_lines(runs),
        *score_section(runs),
        "",
    ]
    for run in runs:
        lines += logprob_tables(run)
    lines += [
        f"![log-probs per iteration]({plots['logprobs'].name})",
        f"![share of the persona gap closed per iteration]({plots['gap_share'].name})",
        "",
        "## Win rates against the initial model",
        "",
        (
            "Q_k answers at temperature 0 after one of its own test conversations; so does Q_0; the "
            "judge sees the persona and the task and picks the better answer. Ties (counterbalanced "
            "order, verdicts that flip with the order) count one half. Calibrated order: both "
            "orders are asked and the contender's log-odds log p(its letter) − log p(the other), "
            "averaged over the two, decides, so a constant preference for a position cancels out. "
            "Pointwise: the judge sees one answer at a time and the higher log p('Yes') − log "
            "p('No') wins. Persona fit: no judge; the answer with the higher persona fit (below) "
            "wins. Position bias: share of verdicts that follow the position, not the answer "
            "(counterbalanced and calibrated: the raw picks are the same position in both orders; "
            "random order: |2·P(first) − 1|; n/a where no two answers are shown side by side)."
        ),
        "",
        *judge_caveat(runs),
    ]
    for run in runs:
        lines += win_rate_tables(run)
    lines.append(f"![win rates per iteration]({plots['win_rates'].name})")
    if "by_length" in plots:
        lines.append(f"![win rates per conversation length]({plots['by_length'].name})")
    lines += [
        "",
        "## Final answers",
        "",
        (
            "Non-answers: final answers that are empty or under four words, end with a question "
            "mark, or whose first sentence is a question (they ask instead of answering). Persona "
            "fit: [log p_base(answer | persona, task) − log p_base(answer | task)] per answer "
            "token, under the frozen base model: how much more the answer suits this person than "
            "anyone. Q_k − Q_0 is paired by test pair."
        ),
        "",
    ]
    for run in runs:
        lines += answer_tables(run)
    if any(run.question_gains(k) for run in runs for k in run.iterations()):
        lines += [
            "",
            "## What each question adds",
            "",
            (
                "Each test conversation scored again cut before each of its questions "
                "(`evaluate.question_gains`): the gain in log p_base(g | ·) that question and its "
                "answer brought, mean ± SEM over test pairs. Later questions are asked only in the "
                "longer conversations."
            ),
            "",
        ]
        for run in runs:
            lines += question_gain_tables(run)
    if any(run.online_rounds() for run in runs):
        plot = plot_online_rewards(runs, out / "online_rewards.png")
        lines += [
            "",
            "## Online rounds",
            "",
            (
                "`loop: online`: the mean training reward (score less select.turn_cost per "
                "question) of each round's fresh conversations, sampled from the policy of that "
                "moment, and the KL to Q_BASE per trained token after its update."
            ),
            "",
        ]
        for run in runs:
            lines += online_round_table(run)
        lines.append(f"![reward per online round]({plot.name})")
    lines += [
        "",
        "## Examples",
        "",
        f"The first test conversation of {examples} test pairs ({runs[0].name}).",
        "",
    ]
    lines += example_tables(runs[0], examples)
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
