"""The command line: exit codes and messages, driven through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from star_gate.cli import _peak_memory, app

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("COLUMNS", "500")  # rich would otherwise wrap long messages at 80 columns
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def squash(text: str) -> str:
    """Whitespace-free text, so a wrapped line still matches."""
    return "".join(text.split())


def test_validate_good_config(cli):
    result = cli("validate", TINY)
    assert result.exit_code == 0, result.output
    assert "ok: 60 tasks, 28 personas, 560 gold" in result.output


def test_validate_with_overrides(cli, dataset_dir):
    result = cli("validate", TINY, f"data.path={dataset_dir}", "simulate.max_turns=1")
    assert result.exit_code == 0, result.output
    assert "ok: 6 tasks, 6 personas, 12 gold" in result.output


def test_validate_unknown_key_suggests(cli):
    result = cli("validate", TINY, "simulate.max_turn=2")
    assert result.exit_code == 2
    assert squash("unknown key 'simulate.max_turn'; did you mean 'simulate.max_turns'?") in squash(
        result.output
    )


def test_validate_unknown_key_in_file(cli, tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("select: {topk: 2}\n")
    result = cli("validate", path)
    assert result.exit_code == 2
    assert squash(f"{path}: unknown key 'select.topk'; did you mean 'select.top_k'?") in squash(
        result.output
    )


def test_validate_bad_value(cli):
    result = cli("validate", TINY, "simulate.max_turns=0")
    assert result.exit_code == 2
    assert "simulate.max_turns" in result.output


def test_validate_bad_dataset_names_file_and_line(cli, dataset_dir):
    path = dataset_dir / "personas.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"name"', '"nome"')
    path.write_text("\n".join(lines) + "\n")
    result = cli("validate", TINY, f"data.path={dataset_dir}")
    assert result.exit_code == 2
    assert squash(f"{path}, line 2: missing field 'name'") in squash(result.output)


def test_missing_config_file(cli, tmp_path):
    result = cli("validate", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_stage_commands_run_and_check_order(fake_config_file, cli, tmp_path, dataset_dir):
    config = fake_config_file(tmp_path, dataset_dir)
    early = cli("score", config, "-i", "1")
    assert early.exit_code == 2
    assert squash("stage iter_1/simulate has not run yet") in squash(early.output)
    for stage in ("simulate", "score", "select", "regularize"):
        result = cli(stage, config, "--iteration", "1")
        assert result.exit_code == 0, result.output
        assert f"{stage} of iteration 1: done" in result.output
    assert (tmp_path / "run" / "iter_1" / "regularized.jsonl").exists()


def test_run_with_a_missing_split_exits_2(fake_config_file, cli, tmp_path, dataset_dir):
    config = fake_config_file(tmp_path, dataset_dir)
    result = cli("run", config, "data.test_split=holdout")
    assert result.exit_code == 2
    assert "no split 'holdout'" in result.output


def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for command in (
        "run",
        "validate",
        "simulate",
        "score",
        "select",
        "regularize",
        "train",
        "chat",
    ):
        assert command in result.output


def test_peak_memory_names_the_stage_that_reached_it():
    stages = {
        "iter_1/simulate": {"peak_rss_mb": 2048.0},
        "iter_1/train": {"peak_rss_mb": 3788.8},
        "eval/iter_1": {"peak_rss_mb": 3788.8},  # the peak so far: reached in training
        "eval/controls": {},  # listed by a version that did not measure it
    }
    assert _peak_memory({"stages": stages}) == (
        "peak resident memory: 3.7 GB, in iter_1/train (every stage's is in manifest.json)"
    )
    assert _peak_memory({"stages": {"eval/controls": {}}}) is None


def test_every_reward_has_a_table_title():
    from typing import get_args

    from star_gate.cli import SCORE_TITLES
    from star_gate.config import ScoreConfig

    rewards = get_args(ScoreConfig.model_fields["reward"].annotation)
    assert set(SCORE_TITLES) == set(rewards)


def test_chat_talks_to_the_runs_measured_policy(tiny_run, cli):
    """Given a run directory, chat loads Q_k's checkpoint with the run's prompt, sampling and
    final-answer settings; a missing iteration exits 2."""
    from star_gate.cli import _chat_questioner
    from star_gate.rundir import Layout

    config, _ = tiny_run
    saved = Layout.checkpoints(config.run_dir)
    questioner, turns, answer_tokens = _chat_questioner(config.run_dir, 2, "", None)
    assert questioner.backend.name == str(saved[1])
    assert questioner.template.name == config.questioner_prompt(trained=True)
    assert questioner.params.temperature == config.roles.questioner.temperature
    assert questioner.ask_samples == config.simulate.ask_samples
    assert questioner.answer_samples == config.regularize.answer_samples
    assert (turns, answer_tokens) == (
        config.eval_max_turns,
        config.evaluate.answer_max_new_tokens,
    )
    base, _, _ = _chat_questioner(config.run_dir, 0, "", None)
    assert base.template.name == config.questioner_prompt(trained=False)
    result = cli("chat", config.run_dir, "--iteration", "7")
    assert result.exit_code == 2 and "no Q_7" in result.output
