"""The `star-gate` command line: thin wrappers over the pipeline."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from star_gate.config import ConfigError, RunConfig, load_config
from star_gate.data.jsonl import DataError
from star_gate.memory import limit_memory_growth
from star_gate.rundir import STAGES, Layout

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="STaR-GATE: teach models to ask clarifying questions.",
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: object, status: int = 2, label: str = "error") -> NoReturn:
    """One line on stderr, then exit: 2 for input that cannot run, 1 for a failure that is not the
    input's. Escaped, since messages hold brackets (star-gate[vllm]) that rich reads as markup."""
    err_console.print(f"[red]{label}:[/red] {escape(str(message))}")
    raise typer.Exit(status) from None


ConfigArg = Annotated[str, typer.Argument(help="YAML config file")]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="overrides like simulate.max_turns=2")
]
RestartOpt = Annotated[bool, typer.Option("--restart", help="start the run directory over")]
BranchOpt = Annotated[
    str | None,
    typer.Option(
        "--branch",
        metavar="NEW_RUN_DIR",
        help="continue in NEW_RUN_DIR under this (changed) config: the stages finished in the "
        "config's run_dir that the change leaves as they were are copied there (e.g. a changed "
        "train section keeps the conversations, scores, selection, final answers and Q_0's "
        "evaluation, and trains and evaluates again); the rest runs under the new config. Rerun "
        "the same command to resume the branch.",
    ),
]


def _load(config: str, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        _fail(err)


def _pipeline(
    cfg: RunConfig, restart: bool = False, branch_from: str | None = None, checkpoints=None
):
    from star_gate.pipeline import Pipeline

    try:
        return Pipeline(
            cfg,
            restart=restart,
            progress=sys.stderr.isatty(),
            branch_from=branch_from,
            checkpoints=checkpoints,
        )
    except (ConfigError, DataError, ValueError) as err:
        _fail(err)


def print_eval_table(
    rows, title: str = "test gold log-prob, log p_base(g | ...), mean ± SEM"
) -> None:
    """The closing table of `run` and `eval`: gold log-probs, paired gains, answers."""
    table = Table(title=title)
    for column in ("condition", "mean", "± SEM", "n", "vs negative (SEMs)"):
        table.add_column(column, justify="left" if column == "condition" else "right")
    negative = rows[0]
    for row in rows:
        gap = ""
        if row is not negative:
            combined = (row.sem**2 + negative.sem**2) ** 0.5
            gap = f"{(row.mean - negative.mean) / combined:+.1f}" if combined > 0 else ""
        table.add_row(row.label, f"{row.mean:.2f}", f"{row.sem:.2f}", str(row.count), gap)
    console.print(table)


def _cell(estimate, digits: int = 2, signed: bool = False, percent: bool = False) -> str:
    if estimate is None or math.isnan(estimate.mean):
        return "–"
    scale, suffix = (100, "%") if percent else (1, "")
    mean = f"{estimate.mean * scale:{'+' if signed else ''}.{0 if percent else digits}f}{suffix}"
    sem = estimate.sem * scale
    return mean if math.isnan(sem) else f"{mean} ± {sem:.{0 if percent else digits}f}{suffix}"


def _bias(value: float) -> str:
    return (
        "n/a" if math.isnan(value) else f"{value:.2f}"
    )  # nan: pointwise and persona_fit have no position


def print_answer_table(results) -> None:
    """Per Q_k: the share of final answers that are no answer, their persona fit (and its paired
    gain over Q_0's), and the win rate against Q_0; then the regularization answers' non-answers."""
    iterations = [k for k in results.iterations() if results.non_answers(k) is not None]
    if iterations:
        table = Table(
            title="final answers on the test split (fit: persona fit, nats/token; fit − Q_0 paired)"
        )
        # Short headers: the table must stay readable at 80 columns (a log file, CI).
        for column in (
            "model",
            "no answer",
            "n",
            "fit/token",
            "fit − Q_0",
            "win vs Q_0",
            "pos. bias",
        ):
            table.add_column(column, justify="left" if column == "model" else "right")
        for k in iterations:
            share, rate = results.non_answers(k), results.win_rate(k) if k > 0 else None
            table.add_row(
                f"Q_{k}",
                _cell(share, percent=True),
                str(share.count),
                _cell(results.persona_fit(k), 3),
                _cell(results.persona_fit_gain(k), 3, signed=True) if k > 0 else "–",
                _cell(rate, 3) if rate else "–",
                _bias(rate.position_bias) if rate else "–",
            )
        console.print(table)
    regularized = [
        (k, share)
        for k in results.training_iterations()
        if (share := results.regularized_non_answers(k))
    ]
    if regularized:
        cells = ", ".join(
            f"iter_{k} (by Q_{k - 1}) {_cell(share, percent=True)} of {share.count}"
            for k, share in regularized
        )
        console.print(f"regularization answers that are no answer: {cells}")


def print_asking(results) -> None:
    """The share of questioner turns that ask, per Q_k on test and per training iteration, sampled
    and kept by selection; and how many samples were resampled for asking nothing."""
    asking = [(k, a) for k in results.iterations() if (a := results.asking(k))]
    if asking:
        cells = ", ".join(f"Q_{k} {_cell(a, percent=True)} of {a.count}" for k, a in asking)
        console.print(f"questioner turns that ask, test: {cells}")
        rejected = [(k, r) for k, _ in asking if (r := results.rejected_questions(k))]
        if rejected:
            cells = ", ".join(f"Q_{k} {r:.2f}" for k, r in rejected)
            console.print(f"samples rejected for asking nothing, per test turn: {cells}")
    training = [(k, t) for k in results.training_iterations() if (t := results.training_asking(k))]
    if training:
        cells = ", ".join(
            f"iter_{k} (Q_{k - 1}) {_cell(sampled, percent=True)} → {_cell(kept, percent=True)}"
            for k, (sampled, kept) in training
        )
        console.print(f"questioner turns that ask, training conversations sampled → kept: {cells}")


@app.command()
def run(
    config: ConfigArg,
    overrides: OverridesArg = None,
    restart: RestartOpt = False,
    branch: BranchOpt = None,
) -> None:
    """Run the whole loop: N iterations and the test-split evaluation. Resumes when rerun."""
    cfg = _load(config, overrides)
    source = None
    if branch is not None:
        if restart:
            _fail("--restart and --branch exclude each other")
        source, cfg = cfg.run_dir, cfg.model_copy(update={"run_dir": branch})
    with _pipeline(
        cfg, restart, branch_from=source
    ) as pipeline:  # stops any Ray workers at the end
        _summarise(pipeline, pipeline.run_all())


SCORE_TITLES = {
    "gold_logprob": "test gold log-prob, log p_base(g | ...), mean ± SEM",
    "gold_after_address": "test gold log-prob after its opening address, "
    "log p_base(g | ..., address), mean ± SEM",
    "details": "test score: share of missing details recovered (score.reward details), mean ± SEM",
}


def _summarise(pipeline, rows) -> None:
    """The closing table, the paired gain and win rate of the last iteration, and report.md."""
    from star_gate.report import write_report

    console.print(f"run directory: {pipeline.run.root}")
    details = pipeline.config.score.reward == "details"
    unit = "of the weighted missing details" if details else "nats"
    print_eval_table(rows, SCORE_TITLES[pipeline.config.score.reward])
    results = pipeline.results()
    last = max(results.iterations())
    for k in results.iterations():
        gain = results.paired_gain(k, 0) if k > 0 else None
        if gain is not None:
            sems = gain.mean / gain.sem if gain.sem > 0 else float("nan")
            console.print(
                f"{gain.label}: {gain.mean:+.2f} ± {gain.sem:.2f} {unit} over {gain.count} pairs ({sems:+.1f} SEMs)"
            )
    shares = [(k, results.gap_share(k)) for k in results.iterations()]
    if results.controls("positive") and shares:
        cells = ", ".join(f"Q_{k} {share:.2f} ± {sem:.2f}" for k, (share, sem) in shares)
        console.print(f"share of the persona gap closed: {cells}")
    print_asking(results)
    if pipeline.config.simulate.stop_early:  # the questioner decided when to stop
        asked = [results.questions_asked(k) for k in results.iterations()]
        cells = ", ".join(
            f"Q_{k} {a.mean:.2f} ± {a.sem:.2f}" for k, a in zip(results.iterations(), asked) if a
        )
        console.print(f"questions asked per test conversation: {cells}")
    rounds = results.online_rounds()
    if rounds:
        cells = ", ".join(f"{k}.{r} {entry['reward']:+.2f}" for k, r, entry in rounds)
        console.print(f"online training reward per round (iteration.round): {cells}")
    gains = [(k, results.question_gains(k)) for k in results.iterations()]
    if any(rows for _, rows in gains):
        cells = "; ".join(
            f"Q_{k} "
            + ", ".join(f"q{i} {g.mean:+.2f} ± {g.sem:.2f}" for i, g in enumerate(rows, 1))
            for k, rows in gains
            if rows
        )
        console.print(
            f"gain in {'the details recovered' if details else 'gold log-prob'} per question, {unit} "
            f"(mean ± SEM over test pairs): {cells}"
        )
    print_answer_table(results)
    rate = results.win_rate(last) if last > 0 else None
    if rate is not None:
        evaluate = pipeline.config.evaluate
        judge = (
            "persona fit under the frozen base model"
            if evaluate.judge_method == "persona_fit"
            else f"judge {pipeline.config.roles.judge.model}, {evaluate.judge_method}"
        )
        console.print(
            f"win rate of Q_{last} against Q_0: {rate.mean:.3f} ± {rate.sem:.3f} over {rate.count} judged answers "
            f"({judge}, position bias {_bias(rate.position_bias)})"
        )
    peak = _peak_memory(pipeline.run.manifest)
    if peak:
        console.print(peak)
    console.print(f"report: {write_report([pipeline.run.root])}")


def _peak_memory(manifest: dict) -> str | None:
    """The run's peak resident memory and the first stage that reached it: each stage records
    its process's peak so far, in the order the stages finished."""
    peaks = {
        key: entry["peak_rss_mb"]
        for key, entry in manifest["stages"].items()
        if "peak_rss_mb" in entry
    }
    if not peaks:
        return None
    stage = max(peaks, key=peaks.get)  # the first of equal values: the one that reached it
    return (
        f"peak resident memory: {peaks[stage] / 1024:.1f} GB, in {stage} "
        "(every stage's is in manifest.json)"
    )


@app.command("eval")
def evaluate(
    config: ConfigArg,
    overrides: OverridesArg = None,
    from_run: Annotated[
        str | None,
        typer.Option("--from", help="a run directory whose iter_k checkpoints to evaluate"),
    ] = None,
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(help="a checkpoint to evaluate as Q_1, Q_2, ... (repeatable)"),
    ] = None,
) -> None:
    """Run the evaluation alone (all conditions, win rates) on Q_0 and the given checkpoints, into the
    config's run_dir. Resumes when rerun, like `run`."""

    cfg = _load(config, overrides)
    found = _checkpoints(from_run, checkpoint)
    if not found:
        _fail("no checkpoints: give --from RUN_DIR (with iter_k/checkpoint) or --checkpoint PATH")
    with _pipeline(cfg, checkpoints=found) as pipeline:
        _summarise(pipeline, pipeline.evaluate_checkpoints())


def _checkpoints(from_run: str | None, checkpoint: list[str] | None) -> dict[int, str]:
    """Q_k -> checkpoint: a run's iter_k checkpoints in order, then the given ones."""
    from pathlib import Path

    found: dict[int, str] = {}
    if from_run:
        found = {k: str(path) for k, path in enumerate(Layout.checkpoints(from_run), start=1)}
    for iteration, path in enumerate(checkpoint or [], start=len(found) + 1):
        if not Path(path).exists():
            _fail(f"checkpoint {path} not found")
        found[iteration] = path
    return found


@app.command()
def report(
    runs: Annotated[
        list[str], typer.Argument(help="run directories; the first holds the report unless --out")
    ],
    out: Annotated[str | None, typer.Option(help="folder for report.md and the plots")] = None,
    examples: Annotated[
        int, typer.Option(help="test pairs shown conversation by conversation")
    ] = 3,
) -> None:
    """Write report.md and PNG plots (log-probs, win rates) for one run or several side by side."""
    from star_gate.report import write_report

    try:
        console.print(f"report: {write_report(runs, out, examples)}")
    except (FileNotFoundError, ConfigError, DataError) as err:
        _fail(err)


@app.command()
def validate(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Check a config and its dataset without loading any model."""
    from star_gate.preflight import check_runnable

    cfg = _load(config, overrides)
    try:
        # Offline: no API key looked up, no server probed (`run` does both before it starts).
        dataset = check_runnable(cfg, probe_roles=False)
    except (DataError, ConfigError, ValueError) as err:
        _fail(err)
    scored_by = (
        f"{len(dataset.details)} pairs with missing details"
        if dataset.details
        else f"{len(dataset.gold)} gold"
    )
    console.print(f"ok: {len(dataset.tasks)} tasks, {len(dataset.personas)} personas, {scored_by}")


def _stage_command(stage: str):
    def command(
        config: ConfigArg,
        overrides: OverridesArg = None,
        iteration: Annotated[int, typer.Option("--iteration", "-i", help="which iteration")] = 1,
    ) -> None:
        cfg = _load(config, overrides)
        with _pipeline(cfg) as pipeline:
            try:
                pipeline.run_stage(iteration, stage)
            except RuntimeError as err:
                _fail(err)
        console.print(f"{stage} of iteration {iteration}: done ({cfg.run_dir})")

    command.__doc__ = f"Run only the {stage} stage of one iteration (earlier stages must be done)."
    return command


for _stage in STAGES:
    app.command(name=_stage)(_stage_command(_stage))


bench_app = typer.Typer(no_args_is_help=False, help="Measure the loop's speed on this machine.")
app.add_typer(bench_app, name="bench")


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    quick: Annotated[
        bool, typer.Option("--quick", help="fewer pairs: about a third of the time")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object of the results on the last line")
    ] = False,
) -> None:
    """Simulation, scoring and training speed, new path against the present one and a decode
    ceiling, side by side in one run on the bundled model with the demo's settings."""
    if ctx.invoked_subcommand is None:
        from star_gate.bench import main as bench_main

        bench_main(quick, as_json)


# What `bench in3` sets, whatever the config says: IN3's protocol.
IN3_SETTINGS = [
    "score.reward=details",
    "roles.roleplayer.mode=details",
    "evaluate.roleplayer=null",
    "simulate.stop_early=true",
    "evaluate.random_persona=false",
    "evaluate.win_rates=false",
]


@bench_app.command("in3")
def bench_in3(
    config: ConfigArg,
    data: Annotated[str, typer.Option(help="a dataset folder from `star-gate data import-in3`")],
    overrides: OverridesArg = None,
    from_run: Annotated[
        str | None,
        typer.Option("--from", help="a run directory whose iter_k checkpoints to measure"),
    ] = None,
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(help="a checkpoint to measure as Q_1, Q_2, ... (repeatable)"),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(help="run directory of the conversations; default: the config's + '-in3'"),
    ] = None,
) -> None:
    """IN3 (Tell Me More!) measures for Q_0 and each checkpoint on the dataset's held-out split:
    vagueness accuracy, missing details recovered (by importance), rounds, details per question;
    beside the published rows. Resumes when rerun."""
    from star_gate.in3_bench import HOW_OURS_DIFFER, in3_measures
    from star_gate.roles.detail_matcher import DetailMatcher

    cfg = _load(config, [*(overrides or []), *IN3_SETTINGS, f"data.path={data}"])
    cfg = cfg.model_copy(update={"run_dir": out or f"{cfg.run_dir.rstrip('/')}-in3"})
    found = _checkpoints(from_run, checkpoint)
    with _pipeline(cfg, checkpoints=found) as pipeline:
        pipeline.evaluate_checkpoints()
        results = pipeline.results()
        pairs = pipeline.pairs(cfg.data.test_split)
        matcher = DetailMatcher()
        rows = [
            in3_measures(f"Q_{k}", results.scored(k), pairs, matcher) for k in results.iterations()
        ]
    print_in3_table(rows, cfg)
    console.print(HOW_OURS_DIFFER)


def print_in3_table(rows, cfg) -> None:
    from star_gate.in3_bench import PUBLISHED, paired_gain

    table = Table(title=f"IN3 on {cfg.data.path} split {cfg.data.test_split}")
    for name in (
        "questioner", "vague acc.", "recovered", "imp. 1", "imp. 2", "imp. 3",
        "weighted, vague (- Q_0, paired)", "rounds", "details/question",
    ):  # fmt: skip
        table.add_column(name, justify="left" if name == "questioner" else "right")
    for row in rows:
        weighted = f"{row.weighted:.3f} ± {row.weighted_sem:.3f}"
        if row is not rows[0]:
            mean, sem, _ = paired_gain(row, rows[0])
            weighted += f" ({mean:+.3f} ± {sem:.3f})"
        table.add_row(
            f"{row.label} ({row.conversations} conv.)",
            f"{row.vagueness_accuracy:.2f}",
            f"{row.recovered:.2f}",
            *(f"{v:.2f}" for v in row.by_importance),
            weighted,
            f"{row.rounds:.2f}",
            f"{row.details_per_question:.2f}",
        )
    for name, published in PUBLISHED.items():
        levels = published.get("by_importance", ("", "", ""))
        table.add_row(
            f"{name} (published)",
            f"{published['vagueness_accuracy']:.2f}",
            f"{published['recovered']:.2f}",
            *(f"{v:.2f}" if v != "" else "" for v in levels),
            "", "", "",
        )  # fmt: skip
    console.print(table)
    if rows:
        console.print(
            f"a questioner that always asks would score vagueness accuracy "
            f"{rows[0].always_ask_accuracy:.2f} on these pairs"
        )


@app.command()
def chat(
    source: Annotated[
        str,
        typer.Argument(help="a run directory (its Q_k as measured), a checkpoint, or 'bundled'"),
    ],
    iteration: Annotated[
        int | None,
        typer.Option(
            help="with a run directory: which Q_k (0 = the base model); default: the last"
        ),
    ] = None,
    prompt: Annotated[
        str, typer.Option(help="questioner prompt template; default: the run's or the questioner's")
    ] = "",
    turns: Annotated[
        int | None, typer.Option(help="questions before the final answer; default: the run's K")
    ] = None,
) -> None:
    """Talk to a questioner as the user: give it a request, answer its questions, get its answer.

    Given a run directory, it talks to the policy that run measured: Q_k's checkpoint with the
    run's prompt, sampling, resampling of turns that ask nothing, and final-answer prompt and
    sampling, as in its evaluation."""
    from star_gate.data.records import Conversation

    questioner, turns, answer_tokens = _chat_questioner(source, iteration, prompt, turns)
    task = typer.prompt("Your request")
    conversation = Conversation(
        task_id="chat", persona_id="you", sample_index=0, target_turns=turns
    )
    for turn in range(turns):
        question = questioner.ask([task], [conversation], seed=turn)[0]
        console.print(f"[bold cyan]assistant:[/bold cyan] {question}")
        answer = typer.prompt("you")
        conversation = conversation.with_turn("questioner", question).with_turn(
            "roleplayer", answer
        )
    final = questioner.respond([task], [conversation], max_new_tokens=answer_tokens)[0]
    console.print(f"[bold cyan]assistant:[/bold cyan] {final}")


def _chat_questioner(source: str, iteration: int | None, prompt: str, turns: int | None):
    """The questioner to chat with, its number of questions and its final answers' length: a run
    directory's Q_k as its evaluation used it, or a bare checkpoint with default sampling."""
    from star_gate.backends.base import SamplingParams
    from star_gate.backends.hf import TransformersBackend
    from star_gate.roles.factory import Players
    from star_gate.roles.players import Questioner
    from star_gate.roles.prompts import template_for
    from star_gate.rundir import Layout

    root = Path(source)
    if not (root / "manifest.json").exists():
        if iteration is not None:
            _fail(f"--iteration needs a run directory; {source} has no manifest.json")
        questioner = Questioner(
            TransformersBackend(source, progress=False),
            template_for("questioner", prompt),
            SamplingParams(max_new_tokens=64),
        )
        return questioner, turns or 3, 200
    cfg = _load(str(root / "config.yaml"), [])
    saved = Layout.checkpoints(root)
    k = len(saved) if iteration is None else iteration
    if not 0 <= k <= len(saved):
        _fail(f"{source} has checkpoints for iterations 1..{len(saved)}; no Q_{k}")
    questioner = Players(cfg).questioner(str(saved[k - 1]) if k else None)
    if prompt:
        questioner.template = template_for("questioner", prompt)
    console.print(f"Q_{k} of {source}" + (f" ({saved[k - 1]})" if k else " (the base model)"))
    return questioner, turns or cfg.eval_max_turns, cfg.evaluate.answer_max_new_tokens


def main() -> None:  # pragma: no cover
    """The star-gate command (the console script)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    limit_memory_growth()  # before any tensor: see memory.py
    app()


data_app = typer.Typer(no_args_is_help=True, help="Build and check persona–task–gold datasets.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    path: Annotated[str, typer.Argument(help="dataset folder, or 'bundled'")] = "bundled",
    model: Annotated[str, typer.Option(help="scoring model for the control check")] = "bundled",
    pairs: Annotated[int, typer.Option(help="pairs for the control check (0: all)")] = 0,
    no_model: Annotated[bool, typer.Option("--no-model", help="text checks only")] = False,
    min_share: Annotated[float, typer.Option(help="required positive-over-negative share")] = 0.9,
) -> None:
    """Validate a dataset: one gold per pair, no (near-)duplicates, gold lengths, and the share of
    pairs whose gold is likelier with the persona than without (positive over negative control)."""
    from star_gate.data.checks import check_texts
    from star_gate.data.loaders import load_dataset

    try:
        dataset = load_dataset(path)
    except DataError as err:
        _fail(err)
    report = check_texts(dataset)
    for fact in report.facts:
        console.print(fact)
    for problem in report.problems:
        console.print(f"[red]problem:[/red] {problem}")
    failed = not report.ok
    if not dataset.gold:
        no_model = True
        console.print("no gold answers (scored by missing details): no control check to run")
    if not no_model:
        from star_gate.backends.hf import TransformersBackend
        from star_gate.stages import score_controls

        every_pair = [pair for split in dataset.splits for pair in dataset.pairs(split)]
        chosen = every_pair[:: max(1, len(every_pair) // pairs)][:pairs] if pairs else every_pair
        console.print(
            f"scoring {len(chosen)} pairs x 2 controls with {model} ({2 * len(chosen)} model calls)"
        )
        controls = score_controls(chosen, TransformersBackend(model, progress=sys.stderr.isatty()))
        half = len(chosen)
        wins = sum(pos.logprob > neg.logprob for neg, pos in zip(controls[:half], controls[half:]))
        share = wins / half
        console.print(
            f"positive control beats negative on {wins}/{half} pairs = {share:.1%} (required {min_share:.0%})"
        )
        failed |= share < min_share
    console.print("[red]FAILED[/red]" if failed else "[green]passed[/green]")
    raise typer.Exit(1 if failed else 0)


@data_app.command("import-in3")
def data_import_in3(
    source: Annotated[
        str, typer.Argument(help="an IN3 .jsonl file, or 'bundled' (the packaged training split)")
    ],
    folder: Annotated[str, typer.Argument(help="the dataset folder to write (new or empty)")],
    users_per_task: Annotated[
        int, typer.Option(help="simulated users per task: one option drawn per missing detail")
    ] = 2,
    splits: Annotated[
        str, typer.Option(help="training splits the non-held-out tasks are dealt into")
    ] = "A,B",
    held_out_split: Annotated[
        str, typer.Option(help="the split of the validation fifth (tasks fixed by their text)")
    ] = "test",
    seed: SeedOpt = 0,
) -> None:
    """Import IN3 (Tell Me More!) tasks with their missing details as a dataset folder that the loop
    runs with `score.reward: details` (no gold answers needed)."""
    from star_gate.data.checks import details_summary
    from star_gate.data.in3 import import_in3
    from star_gate.data.loaders import load_dataset

    names = tuple(name.strip() for name in splits.split(",") if name.strip())
    try:
        summary = import_in3(source, folder, users_per_task, names, held_out_split, seed)
    except (DataError, ValueError) as err:
        _fail(err)
    console.print(details_summary(load_dataset(folder)))
    for name, count in summary["tasks"].items():
        console.print(f"split {name}: {count} tasks, {summary['pairs'][name]} pairs")
    console.print(f"wrote {folder}")


FolderArg = Annotated[str, typer.Argument(help="the dataset folder being built")]
ConfigOpt = Annotated[
    str | None, typer.Option("--config", "-c", help="config naming the oracle model")
]
SeedOpt = Annotated[int, typer.Option(help="seed for shuffling into splits and for sampling")]


def _data_step(step):
    """Run a dataset-building step; bad input is exit status 2 with the message, as everywhere."""
    from star_gate.build import DatasetFolder

    try:
        return step(DatasetFolder)
    except (DataError, ValueError) as err:
        _fail(err)
    except RuntimeError as err:  # the model would not produce usable output: not the input's fault
        _fail(err, status=1, label="failed")


@data_app.command("tasks")
def data_tasks(
    folder: FolderArg,
    source: Annotated[
        str, typer.Option(help="a .jsonl/.csv/.txt file, a dataset folder, or a hub dataset id")
    ],
    column: Annotated[
        str, typer.Option(help="the field or column holding the request text")
    ] = "text",
    hub_split: Annotated[str, typer.Option(help="which split of a hub dataset to read")] = "train",
    splits: Annotated[str, typer.Option(help="tasks per split")] = "A=20,B=20,test=10",
    extract: Annotated[
        str,
        typer.Option(
            help="regular expression whose first group is the request, e.g. "
            "'Human:\\s*(.*?)\\s*Assistant:'"
        ),
    ] = "",
    seed: SeedOpt = 0,
) -> None:
    """Import requests, drop empty and near-duplicate ones, keep the first needed, split them."""
    from star_gate.build import build_tasks, extract_requests, parse_split_sizes, read_requests

    def step(folder_cls):
        sizes = parse_split_sizes(splits)
        extract_requests([], extract)  # a bad pattern is refused before a hub dataset downloads
        texts = read_requests(source, column, hub_split)
        build_tasks(
            folder_cls(folder), texts, sizes, seed, source, say=console.print, extract=extract
        )

    _data_step(step)


@data_app.command("personas")
def data_personas(
    folder: FolderArg,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
    seeds: Annotated[
        str, typer.Option(help="seed personas: a personas.jsonl, or 'bundled'")
    ] = "bundled",
    splits: Annotated[
        str, typer.Option(help="personas per split (the task splits' names)")
    ] = "A=8,B=8,test=4",
    temperature: Annotated[
        float, typer.Option(help="sampling temperature (varied people need > 0)")
    ] = 0.9,
    max_new_tokens: Annotated[int, typer.Option(help="length limit of one persona")] = 256,
    seed: SeedOpt = 0,
) -> None:
    """The oracle writes new personas, each call shown 2 random seed personas; then they are split."""
    from star_gate.backends import SamplingParams, load_backend
    from star_gate.build import build_personas, parse_split_sizes, plan_personas
    from star_gate.data.loaders import load_personas, resolve_dataset_path
    from star_gate.roles.prompts import get_template

    role = _load(config, overrides).roles.oracle

    def step(folder_cls):
        target, sizes = folder_cls(folder), parse_split_sizes(splits)
        seed_personas = list(load_personas(_personas_file(resolve_dataset_path(seeds))).values())
        to_write = plan_personas(target, seed_personas, sizes)
        oracle = load_backend(role, progress=sys.stderr.isatty()) if to_write else None
        params = SamplingParams(
            temperature=temperature, top_p=role.top_p, max_new_tokens=max_new_tokens
        )
        build_personas(
            target,
            oracle,
            get_template("persona_writer"),
            seed_personas,
            sizes,
            params,
            seed,
            say=console.print,
        )

    _data_step(step)


def _personas_file(path):
    return path / "personas.jsonl" if path.is_dir() else path


@data_app.command("gold")
def data_gold(
    folder: FolderArg,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
    split: Annotated[
        list[str] | None, typer.Option(help="only these splits (default: all)")
    ] = None,
) -> None:
    """The oracle (roles.oracle in the config) writes the gold answer for every pair of the splits."""
    from star_gate.backends import load_backend, role_sampling
    from star_gate.build import build_gold, plan_gold
    from star_gate.roles.prompts import template_for

    role = _load(config, overrides).roles.oracle

    def step(folder_cls):
        target = folder_cls(folder)
        if not plan_gold(target, split):
            console.print("gold: every pair already has an answer (0 model calls)")
            return
        oracle = load_backend(role, progress=sys.stderr.isatty())
        build_gold(
            target,
            oracle,
            template_for("oracle", role.prompt),
            role_sampling(role),
            split,
            say=console.print,
        )

    _data_step(step)
