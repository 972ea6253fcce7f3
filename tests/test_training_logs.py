"""train.report_to: the trainer's curves and the pipeline's numbers per iteration, read back from
TensorBoard's event files; a tracker whose package is missing is refused before the run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from star_gate.cli import app
from star_gate.pipeline import Pipeline
from star_gate.training import tracking


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_holds_the_training_curve_and_each_iterations_numbers(
    tiny_dir, tmp_path, dataset_factory, tiny_config
):
    pytest.importorskip("tensorboard")
    config = tiny_config(
        tmp_path,
        tiny_dir,
        dataset_factory(tmp_path / "data"),
        iterations=1,
        train={"validation_fraction": 0.0, "report_to": "tensorboard"},
        evaluate={"answer_max_new_tokens": 6},
    )
    with Pipeline(config, progress=False) as pipeline:
        pipeline.run_all()
        manifest = pipeline.run.manifest["stages"]
        results = pipeline.results()
    logs = tmp_path / "run" / "logs"

    trainer = scalars(logs / "train" / "iter_1")
    steps = manifest["iter_1/train"]["steps"]
    assert [step for step, _ in trainer["train/loss"]] == list(
        range(1, steps + 1)
    )  # logged every step

    pipeline_numbers = scalars(logs / "pipeline")
    assert [step for step, _ in pipeline_numbers["eval/logprob"]] == [0, 1]
    for tag in (
        "eval/logprob",
        "eval/gain_vs_q0",
        "train/loss",
        "select/kept_logprob_gain",
        "eval/win_rate_vs_q0",
    ):
        [value] = [v for step, v in pipeline_numbers[tag] if step == 1]
        assert value == pytest.approx(results.iteration_metrics(1)[tag], rel=1e-5), tag
    assert pipeline_numbers["train/loss"][0][1] == pytest.approx(
        manifest["iter_1/train"]["train_loss"], rel=1e-5
    )
    assert pipeline_numbers["select/kept_logprob_gain"][0][1] >= 0  # the best of each pair is kept
    assert results.iteration_metrics(1)["eval/gain_vs_q0"] == pytest.approx(
        results.paired_gain(1).mean
    )


def test_a_tracker_without_its_package_is_refused_before_the_run(
    fake_config_file, dataset_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        tracking, "importlib", SimpleNamespace(util=SimpleNamespace(find_spec=lambda name: None))
    )
    monkeypatch.setenv("COLUMNS", "500")
    path = fake_config_file(tmp_path, dataset_dir)
    result = CliRunner().invoke(app, ["run", str(path), "train.report_to=wandb"])
    assert result.exit_code == 2, result.output
    assert "train.report_to is 'wandb' but the wandb package is not installed" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "run").exists()
