"""Secrets: API keys come from the environment only, and no file of a run directory, and no line
the command prints, ever holds one."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from star_gate.cli import app
from star_gate.config import load_config
from star_gate.data.records import Conversation
from star_gate.rundir import RunDir
from star_gate.secrets import scrub_secrets

KEY_VARIABLES = ("OPENAI_API_KEY", "HF_TOKEN", "STAR_GATE_API_KEY")


@pytest.fixture
def secret(monkeypatch) -> str:
    """A unique key, set in every variable an API backend or the hub client would read."""
    value = f"sk-{uuid.uuid4().hex}"
    for name in KEY_VARIABLES:
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return value


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("COLUMNS", "500")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_keys_in_the_environment_are_written_nowhere(
    fake_config_file, secret, cli, capfd, tmp_path, dataset_dir, tiny_dir
):
    """A whole run, real training included (checkpoints pickle their training arguments)."""
    extra = "iterations: 1\ntrain: {batch_size: 4, validation_fraction: 0.0}\nevaluate: {conversations_per_pair: 1}\n"
    config = fake_config_file(tmp_path, dataset_dir, extra, questioner_model=tiny_dir)
    result = cli("run", config)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    assert (run_dir / "iter_1" / "checkpoint" / "model.safetensors").exists()
    assert len(list(run_dir.rglob("*.jsonl"))) > 10
    assert files_holding(run_dir, secret) == []
    printed = capfd.readouterr()
    assert secret not in result.output + printed.out + printed.err


@pytest.mark.parametrize(
    "yaml_text",
    [
        "api_key: {secret}\n",
        "roles:\n  questioner: {{api_key: {secret}}}\n",
        "roles:\n  judge: {{openai_api_key: '{secret}'}}\n",
        "roles:\n  oracle: {{hf_token: {secret}}}\n",
    ],
    ids=["api_key", "questioner api_key", "judge openai_api_key", "oracle hf_token"],
)
def test_a_key_in_the_config_is_refused_pointing_at_the_environment(
    yaml_text, secret, cli, tmp_path, dataset_dir
):
    config = tmp_path / "config.yaml"
    config.write_text(
        f"run_dir: {tmp_path / 'run'}\ndata: {{path: {dataset_dir}}}\n"
        + yaml_text.format(secret=secret)
    )
    result = cli("run", config)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "unknown key" in message
    assert (
        "secrets such as API keys are never read from a config: set them in the environment"
        in message
    )
    assert secret not in result.output
    assert not (tmp_path / "run").exists()


def test_a_config_value_holding_a_key_is_scrubbed_from_the_run_directory(secret, tmp_path):
    # e.g. a URL with credentials in it; config.yaml and the manifest show the variable's name.
    model = f"https://user:{secret}@models.example/some-model"
    config = load_config(None, [f"run_dir={tmp_path / 'run'}", f"roles.judge.model={model}"])
    run = RunDir(config)
    run.write_records("a", "a.jsonl", [Conversation("t1", "p1", 0, 1)], source=model)
    assert files_holding(tmp_path / "run", secret) == []
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "https://user:<$" in saved and ">@models.example/some-model" in saved
    assert RunDir(config).is_done("a")  # the scrubbed config still matches on resume


def test_scrub_leaves_short_and_ordinary_values_alone(monkeypatch):
    monkeypatch.setenv("SOME_API_KEY", "abcdefgh12345")
    monkeypatch.setenv("EMPTY_TOKEN", "1")  # too short to be a key; replacing it would garble text
    monkeypatch.setenv("GREETING", "hello world, how are you")  # not named like a secret
    assert scrub_secrets("x abcdefgh12345 y 1, hello world, how are you") == (
        "x <$SOME_API_KEY> y 1, hello world, how are you"
    )
