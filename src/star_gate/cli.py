"""The `star-gate` command line: thin wrappers over the pipeline."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from star_gate.config import ConfigError, RunConfig, load_config
from star_gate.data.jsonl import DataError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="STaR-GATE: teach models to ask clarifying questions.")
console = Console()
err_console = Console(stderr=True)

ConfigArg = Annotated[str, typer.Argument(help="YAML config file")]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(help="overrides like simulate.max_turns=2")]
RestartOpt = Annotated[bool, typer.Option("--restart", help="start the run directory over")]


def _load(config: str, overrides: list[str] | None) -> RunConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None


def _pipeline(cfg: RunConfig, restart: bool = False):
    from star_gate.pipeline import Pipeline

    try:
        return Pipeline(cfg, restart=restart, progress=sys.stderr.isatty())
    except (ConfigError, DataError, ValueError) as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None


def print_eval_table(rows, title: str = "test gold log-prob, log p_base(g | ...), mean ± SEM") -> None:
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


@app.command()
def run(config: ConfigArg, overrides: OverridesArg = None, restart: RestartOpt = False) -> None:
    """Run the whole loop: N iterations and the test-split evaluation. Resumes when rerun."""
    cfg = _load(config, overrides)
    pipeline = _pipeline(cfg, restart)
    rows = pipeline.run_all()
    console.print(f"run directory: {cfg.run_dir}")
    print_eval_table(rows)
    gain = pipeline.paired_gain(cfg.iterations, 0)
    if gain is not None:
        sems = gain.mean / gain.sem if gain.sem > 0 else float("nan")
        console.print(
            f"{gain.label}: {gain.mean:+.2f} ± {gain.sem:.2f} nats over {gain.count} pairs ({sems:+.1f} SEMs)"
        )


@app.command()
def validate(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Check a config and its dataset without loading any model."""
    from star_gate.data.loaders import load_dataset

    cfg = _load(config, overrides)
    try:
        dataset = load_dataset(cfg.data.path)
    except DataError as err:
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.print(f"ok: {len(dataset.tasks)} tasks, {len(dataset.personas)} personas, {len(dataset.gold)} gold")


def _stage_command(stage: str):
    def command(
        config: ConfigArg,
        overrides: OverridesArg = None,
        iteration: Annotated[int, typer.Option("--iteration", "-i", help="which iteration")] = 1,
    ) -> None:
        cfg = _load(config, overrides)
        pipeline = _pipeline(cfg)
        try:
            pipeline.run_stage(iteration, stage)
        except RuntimeError as err:
            err_console.print(f"[red]error:[/red] {err}")
            raise typer.Exit(2) from None
        console.print(f"{stage} of iteration {iteration}: done ({cfg.run_dir})")

    command.__doc__ = f"Run only the {stage} stage of one iteration (earlier stages must be done)."
    return command


for _stage in ("simulate", "score", "select", "regularize", "train"):
    app.command(name=_stage)(_stage_command(_stage))


@app.command()
def chat(
    checkpoint: Annotated[str, typer.Argument(help="a checkpoint folder, a hub id or 'bundled'")],
    prompt: Annotated[str, typer.Option(help="questioner prompt template")] = "questioner_fewshot",
    turns: Annotated[int, typer.Option(help="questions before the final answer")] = 3,
) -> None:
    """Talk to a questioner as the user: give it a request, answer its questions, get its answer."""
    from star_gate.backends.base import SamplingParams
    from star_gate.backends.hf import TransformersBackend
    from star_gate.data.records import Conversation
    from star_gate.roles.players import Questioner
    from star_gate.roles.prompts import get_template

    questioner = Questioner(
        TransformersBackend(checkpoint, progress=False), get_template(prompt), SamplingParams(max_new_tokens=64)
    )
    task = typer.prompt("Your request")
    conversation = Conversation(task_id="chat", persona_id="you", sample_index=0, target_turns=turns)
    for turn in range(turns):
        question = questioner.ask([task], [conversation], seed=turn)[0]
        console.print(f"[bold cyan]assistant:[/bold cyan] {question}")
        answer = typer.prompt("you")
        conversation = conversation.with_turn("questioner", question).with_turn("roleplayer", answer)
    final = questioner.respond([task], [conversation], max_new_tokens=200)[0]
    console.print(f"[bold cyan]assistant:[/bold cyan] {final}")


def main() -> None:  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


data_app = typer.Typer(no_args_is_help=True, help="Check (and later build) persona–task–gold datasets.")
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
        err_console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    report = check_texts(dataset)
    for fact in report.facts:
        console.print(fact)
    for problem in report.problems:
        console.print(f"[red]problem:[/red] {problem}")
    failed = not report.ok
    if not no_model:
        from star_gate.backends.hf import TransformersBackend
        from star_gate.stages import score_controls

        every_pair = [pair for split in dataset.splits for pair in dataset.pairs(split)]
        chosen = every_pair[:: max(1, len(every_pair) // pairs)][:pairs] if pairs else every_pair
        console.print(f"scoring {len(chosen)} pairs x 2 controls with {model} ({2 * len(chosen)} model calls)")
        controls = score_controls(chosen, TransformersBackend(model, progress=sys.stderr.isatty()))
        half = len(chosen)
        wins = sum(pos.logprob > neg.logprob for neg, pos in zip(controls[:half], controls[half:]))
        share = wins / half
        console.print(f"positive control beats negative on {wins}/{half} pairs = {share:.1%} (required {min_share:.0%})")
        failed |= share < min_share
    console.print("[red]FAILED[/red]" if failed else "[green]passed[/green]")
    raise typer.Exit(1 if failed else 0)
