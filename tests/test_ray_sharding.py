"""parallel.engine: ray — chunks run on Ray workers give exactly the records of a one-process run.

Tested on a local Ray instance (2 CPUs, 2 workers) on one machine, not on a multi-node cluster.
The tests that need Ray skip when it is not installed (pip install 'star-gate[ray]').
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from star_gate.cli import app
from star_gate.config import ConfigError, RunConfig, load_config
from star_gate.data.records import Conversation
from star_gate.parallel import RayPool
from star_gate.pipeline import Pipeline


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def tiny_config(run_dir: Path, tiny_dir: Path, data_dir: Path, engine: str) -> RunConfig:
    """One iteration with the tiny model as questioner, scorer and judge; one pair per chunk, so
    that both workers get chunks of every stage, and a short context, so that they count
    truncated prompts."""
    model = {
        "model": str(tiny_dir),
        "device": "cpu",
        "max_new_tokens": 6,
        "batch_size": 8,
        "max_context": 160,
    }
    return RunConfig.model_validate(
        {
            "run_dir": str(run_dir),
            "iterations": 1,
            "data": {"path": str(data_dir)},
            "roles": {
                "questioner": model,
                "roleplayer": {"backend": "fake", "mode": "persona"},
                "judge": model,
            },
            "simulate": {"conversations_per_pair": 2, "max_turns": 2, "chunk_pairs": 1},
            "regularize": {"max_new_tokens": 6},
            "train": {"batch_size": 2, "learning_rate": 1.0e-3, "validation_fraction": 0.0},
            "evaluate": {"conversations_per_pair": 1, "answer_max_new_tokens": 6},
            "parallel": {"engine": engine, "workers": 2},
        }
    )


def records_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*.jsonl"))}


def manifest_counts(run_dir: Path) -> tuple[dict, dict]:
    """Every stage's entry but its measurements (when it finished, how long training took, the
    driver's peak memory, which Ray workers change), and the run's totals."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    measured = ("finished", "train_seconds", "peak_rss_mb")
    stages = {
        key: {k: v for k, v in entry.items() if k not in measured}
        for key, entry in manifest["stages"].items()
    }
    return stages, manifest["totals"]


@pytest.fixture
def ray_jobs(monkeypatch):
    """The indexes of the jobs each RayPool.run call was given, in call order."""
    calls: list[list[int]] = []
    real_run = RayPool.run

    def run(self, jobs):
        calls.append(sorted(jobs))
        return real_run(self, jobs)

    monkeypatch.setattr(RayPool, "run", run)
    return calls


# First in this module, while no Ray instance runs here: the pipeline must start its own.
def test_a_stage_command_starts_and_stops_its_own_local_ray(
    tmp_path, dataset_dir, fake_config_file
):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance already runs in this process")
    config = fake_config_file(tmp_path, dataset_dir)
    alone = load_config(config, ["simulate.chunk_pairs=1", f"run_dir={tmp_path / 'alone'}"])
    Pipeline(alone, progress=False).simulate_stage(1)

    result = invoke("simulate", config, "parallel.engine=ray", "simulate.chunk_pairs=1")
    assert result.exit_code == 0, result.output
    assert not ray.is_initialized()  # shut down by the pipeline that started it
    ray_records = (tmp_path / "run" / "iter_1" / "conversations.jsonl").read_bytes()
    assert ray_records == (tmp_path / "alone" / "iter_1" / "conversations.jsonl").read_bytes()


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray instance for the module; pipelines join it and leave it running."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()


def test_ray_run_gives_the_records_of_a_one_process_run(
    local_ray, tmp_path, tiny_dir, dataset_factory, ray_jobs
):
    data = dataset_factory(tmp_path / "data")
    runs = {engine: tmp_path / engine for engine in ("none", "ray")}
    for engine, run_dir in runs.items():
        with Pipeline(tiny_config(run_dir, tiny_dir, data, engine), progress=False) as pipeline:
            pipeline.run_all()
    assert ray_jobs and max(len(jobs) for jobs in ray_jobs) == 4  # four chunks at once on 2 workers

    one, many = records_files(runs["none"]), records_files(runs["ray"])
    assert (
        "iter_1/conversations.jsonl.chunks/0003.jsonl" in one and "eval/iter_1_judge.jsonl" in one
    )
    assert one.keys() == many.keys()
    assert [name for name in one if one[name] != many[name]] == []  # byte for byte
    stages, totals = manifest_counts(runs["ray"])
    assert (stages, totals) == manifest_counts(runs["none"])
    assert (
        stages["iter_1/simulate/chunk_0003"]["truncated_prompts"] > 0
        and totals["truncated_prompts"] > 0
    )
    assert local_ray.is_initialized()  # the instance it joined is left running


def test_a_crashed_run_resumes_on_ray_computing_only_the_missing_chunks(
    local_ray, tmp_path, dataset_dir, fake_config_file, ray_jobs
):
    config = fake_config_file(tmp_path, dataset_dir)
    alone = load_config(config, ["simulate.chunk_pairs=1"])
    reference = load_config(config, ["simulate.chunk_pairs=1", f"run_dir={tmp_path / 'reference'}"])
    Pipeline(reference, progress=False).simulate_stage(1)
    first = Pipeline(alone, progress=False)
    first.simulate_stage(1)
    # What a crash after the second of four chunks leaves: two chunks listed, two not.
    manifest = json.loads(first.run.manifest_path.read_text())
    for key in ("iter_1/simulate", "iter_1/simulate/chunk_0002", "iter_1/simulate/chunk_0003"):
        del manifest["stages"][key]
    first.run.manifest_path.write_text(json.dumps(manifest))

    on_ray = load_config(config, ["simulate.chunk_pairs=1", "parallel.engine=ray"])
    with Pipeline(on_ray, progress=False) as resumed:  # another engine is not another config
        resumed.simulate_stage(1)
        resumed.simulate_stage(1)  # finished: no job at all
    assert ray_jobs == [[2, 3]]
    merged = resumed.run.records("iter_1/simulate", Conversation.from_json)
    assert merged == Pipeline(reference, progress=False).run.records(
        "iter_1/simulate", Conversation.from_json
    )


def test_engine_ray_without_the_ray_package_is_a_config_error(
    tmp_path, dataset_dir, fake_config_file, monkeypatch
):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "ray" else real_find_spec(name, *a),
    )
    result = invoke("run", fake_config_file(tmp_path, dataset_dir), "parallel.engine=ray")
    assert result.exit_code == 2
    assert "ray package is not installed" in result.output and "star-gate[ray]" in result.output
    assert not (tmp_path / "run").exists()


def test_a_local_ray_instance_needs_the_gpus_asked_for(tmp_path, dataset_dir, fake_config_file):
    pytest.importorskip("ray")
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs")
    config = fake_config_file(tmp_path, dataset_dir)
    result = invoke("run", config, "parallel.engine=ray", "parallel.gpus_per_worker=1")
    assert result.exit_code == 2
    assert "need 2 GPUs and this machine has" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_parallel_defaults_to_one_process_and_refuses_unknown_engines():
    assert load_config(None).parallel.engine == "none"
    with pytest.raises(ConfigError, match="parallel.engine"):
        load_config(None, ["parallel.engine=spark"])
