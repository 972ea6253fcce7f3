"""Crash safety: `kill -9` a real `star-gate run` at chosen points, rerun the same command, and get
exactly what an uninterrupted run gets. Stray partial files are redone, never trusted, and a
changed config is refused unless the user restarts or branches.

The kills are deterministic: STAR_GATE_FAULT names a crash point (star_gate/faults.py) where the
process sends itself SIGKILL. Each kill is one short process with a time limit, and the killed
run is resumed by the next one, so the whole sequence costs a handful of process starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

import star_gate.training.finetune as finetune_module
from star_gate.cli import app
from star_gate.config import ConfigError, load_config
from star_gate.data.records import Conversation
from star_gate.faults import FAULT_ENV
from star_gate.pipeline import Pipeline

PROCESS_TIME_LIMIT = 180  # seconds; an uninterrupted run takes about 10
SECRET = f"sk-test-{uuid.uuid4().hex}"  # set as API keys in every process; must appear nowhere


def write_config(folder: Path, run_dir: Path, tiny_dir: Path, dataset_dir: Path) -> Path:
    """One iteration with the tiny model as questioner and scorer, on 4 pairs in chunks of 2."""
    path = folder / f"{run_dir.name}.yaml"
    path.write_text(
        f"run_dir: {run_dir}\n"
        "seed: 0\n"
        "iterations: 1\n"
        f"data: {{path: {dataset_dir}}}\n"
        "roles:\n"
        f"  questioner: {{model: {tiny_dir}, device: cpu, max_new_tokens: 6, batch_size: 8}}\n"
        "  roleplayer: {backend: fake, mode: persona}\n"
        f"  judge: {{model: {tiny_dir}, device: cpu}}\n"
        "simulate: {conversations_per_pair: 2, max_turns: 2, chunk_pairs: 2}\n"
        "regularize: {max_new_tokens: 6}\n"
        "train: {batch_size: 2, learning_rate: 1.0e-3, validation_fraction: 0.0}\n"
        "evaluate: {conversations_per_pair: 1}\n"
    )
    return path


def command_env(fault: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OMP_WAIT_POLICY": "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "OPENAI_API_KEY": SECRET,
        "HF_TOKEN": SECRET,
        "STAR_GATE_API_KEY": SECRET,
    }
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return env


def star_gate_run(config: Path, fault: str | None = None, **popen) -> subprocess.Popen:
    """`star-gate run CONFIG` as a real process (the console script's own entry point)."""
    command = [sys.executable, "-c", "from star_gate.cli import main; main()", "run", str(config)]
    return subprocess.Popen(command, env=command_env(fault), text=True, **popen)


CAPTURE = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}


def finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = process.communicate(timeout=PROCESS_TIME_LIMIT)
    except subprocess.TimeoutExpired:
        process.kill()  # bounded: a hung run fails the test instead of outliving it
        process.communicate()
        raise
    return process.returncode, out


def stages(run_dir: Path) -> dict:
    path = run_dir / "manifest.json"
    return json.loads(path.read_text())["stages"] if path.exists() else {}


def temporaries(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.name.endswith(".tmp") or ".partial" in p.name]


# Each kill: the crash point, and what a kill there must have left (proof that it happened there).
def half_written_controls(run: Path) -> None:
    assert (
        list((run / "eval").glob(".controls.jsonl.*.tmp"))
        and not (run / "eval" / "controls.jsonl").exists()
    )
    assert stages(run) == {}


def chunk_written_not_listed(run: Path) -> None:
    """Mid-simulation: the first chunk finished, the second renamed into place but not listed."""
    listed = stages(run)
    assert "iter_1/simulate/chunk_0000" in listed and "iter_1/simulate/chunk_0001" not in listed
    assert (run / "iter_1" / "conversations.jsonl.chunks" / "0001.jsonl").exists()
    assert not temporaries(run)  # the half-written file of the first kill was cleared away


def checkpoint_trained_not_renamed(run: Path) -> None:
    partial = run / "iter_1" / "checkpoint.partial"
    assert (partial / "model.safetensors").stat().st_size > 1000
    assert not (partial / "stale.bin").exists()  # left by the crashed attempt, cleared first
    assert not (run / "iter_1" / "checkpoint").exists() and "iter_1/train" not in stages(run)


def evaluating(run: Path) -> None:
    assert "eval/iter_1/simulate/chunk_0000" in stages(run) and "eval/iter_1" not in stages(run)
    assert "iter_1/train" in stages(run) and not (run / "iter_1" / "checkpoint.partial").exists()


KILLS = [
    ("mid_write:eval/controls.jsonl", half_written_controls),
    ("before_mark:iter_1/simulate/chunk_0001", chunk_written_not_listed),
    ("before_rename:iter_1/train", checkpoint_trained_not_renamed),
    ("after_mark:eval/iter_1/simulate/chunk_0000", evaluating),
]


def leave_a_crashed_training(run: Path) -> None:
    """What a kill during training leaves: a half-filled checkpoint.partial."""
    partial = run / "iter_1" / "checkpoint.partial"
    (partial / "trainer").mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"\x00" * 100)  # a cut-off weights file
    (partial / "stale.bin").write_bytes(b"from the crashed attempt")


def files(run_dir: Path, pattern: str) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob(pattern))
        if p.is_file()
    }


def assert_same_checkpoint(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert left.keys() == right.keys()
    assert all(torch.equal(left[k], right[k]) for k in left)
    # training_args.bin records the output folder, which differs between the two runs.
    names = {p.name for p in a.iterdir()} - {"training_args.bin", "model.safetensors"}
    assert names == {p.name for p in b.iterdir()} - {"training_args.bin", "model.safetensors"}
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def assert_no_duplicates_or_gaps(run_dir: Path) -> None:
    for key, entry in stages(run_dir).items():
        if "records" not in entry:
            continue
        rows = [json.loads(line) for line in (run_dir / entry["output"]).read_text().splitlines()]
        assert len(rows) == entry["records"], key
        if rows and "sample_index" in rows[0]:
            ids = [(r["task_id"], r["persona_id"], r["sample_index"]) for r in rows]
            assert len(set(ids)) == len(ids), key


def test_run_killed_at_four_points_resumes_to_the_uninterrupted_result(
    tmp_path, tiny_dir, dataset_dir
):
    reference_dir, faulted_dir = tmp_path / "reference", tmp_path / "faulted"
    reference_config = write_config(tmp_path, reference_dir, tiny_dir, dataset_dir)
    faulted_config = write_config(tmp_path, faulted_dir, tiny_dir, dataset_dir)
    # The uninterrupted run goes on beside the killed ones (one thread each, two cores).
    reference = star_gate_run(reference_config, **CAPTURE)
    outputs = []
    try:
        for fault, left_behind in KILLS:
            if fault == "before_rename:iter_1/train":
                leave_a_crashed_training(faulted_dir)
            code, out = finish(star_gate_run(faulted_config, fault, **CAPTURE))
            outputs.append(out)
            assert code == -9, f"{fault}: exit {code}, expected death by SIGKILL\n{out[-3000:]}"
            left_behind(faulted_dir)
        code, out = finish(star_gate_run(faulted_config, **CAPTURE))  # the same command again
        outputs.append(out)
        assert code == 0, out[-3000:]
        code, reference_out = finish(reference)
        assert code == 0, reference_out[-3000:]
    finally:
        if reference.poll() is None:  # a failure above: do not leave it running
            reference.kill()
            reference.wait()

    # Every record file equal, byte for byte, to the uninterrupted run's; nothing missing or extra.
    assert files(faulted_dir, "*.jsonl") == files(reference_dir, "*.jsonl")
    assert len(files(reference_dir, "*.jsonl")) >= 15  # at least 11 stages and 4 chunks
    assert_same_checkpoint(
        faulted_dir / "iter_1" / "checkpoint", reference_dir / "iter_1" / "checkpoint"
    )
    assert_no_duplicates_or_gaps(faulted_dir)
    comparable = ("output", "records", "bytes", "truncated_prompts", "truncated_examples", "steps")
    assert {k: {f: e.get(f) for f in comparable} for k, e in stages(faulted_dir).items()} == {
        k: {f: e.get(f) for f in comparable} for k, e in stages(reference_dir).items()
    }
    assert not temporaries(faulted_dir)
    # The API keys in the environment of every process were written nowhere.
    for run_dir in (faulted_dir, reference_dir):
        for path in run_dir.rglob("*"):
            assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path
    assert all(SECRET not in out for out in (*outputs, reference_out))


# -- stray files, fast, on the fake backend ------------------------------------------------------


def fake_config(run_dir: Path, dataset_dir: Path, *overrides: str):
    return load_config(
        None,
        [
            f"run_dir={run_dir}",
            f"data.path={dataset_dir}",
            "roles.questioner.backend=fake",
            "roles.roleplayer.backend=fake",
            "roles.roleplayer.mode=persona",
            "roles.judge.backend=fake",
            "simulate.conversations_per_pair=2",
            "simulate.chunk_pairs=1",
            *overrides,
        ],
    )


def simulated(run_dir: Path, dataset_dir: Path) -> list[Conversation]:
    p = Pipeline(fake_config(run_dir, dataset_dir), progress=False)
    p.simulate_stage(1)
    return p.run.records("iter_1/simulate", Conversation.from_json)


def test_stray_chunk_and_temporary_files_are_redone_not_read(tmp_path, dataset_dir):
    expected = simulated(tmp_path / "reference", dataset_dir)
    run_dir = tmp_path / "run"
    chunks = run_dir / "iter_1" / "conversations.jsonl.chunks"
    chunks.mkdir(parents=True)
    (chunks / "0001.jsonl").write_text('{"task_id": "t1", "persona_id": "p2", "sam')  # cut short
    (chunks / ".0002.jsonl.x1y2.tmp").write_text('{"task_id": "t2"')
    (run_dir / ".manifest.json.a1b2.tmp").write_text('{"stages": {"iter_1/simulate": ')
    assert simulated(run_dir, dataset_dir) == expected
    assert not temporaries(run_dir)


def test_listed_output_that_lost_bytes_is_redone(tmp_path, dataset_dir):
    expected = simulated(tmp_path / "run", dataset_dir)
    merged = tmp_path / "run" / "iter_1" / "conversations.jsonl"
    chunk = tmp_path / "run" / "iter_1" / "conversations.jsonl.chunks" / "0002.jsonl"
    for damaged in (merged, chunk):
        damaged.write_bytes(damaged.read_bytes()[:-40])  # e.g. copied by hand, not atomically
    again = Pipeline(fake_config(tmp_path / "run", dataset_dir), progress=False)
    assert not again.run.is_done("iter_1/simulate") and not again.run.is_done(
        "iter_1/simulate/chunk_0002"
    )
    assert again.run.is_done("iter_1/simulate/chunk_0001")
    assert simulated(tmp_path / "run", dataset_dir) == expected


def test_damaged_manifest_is_refused_with_a_way_out(tmp_path, dataset_dir):
    simulated(tmp_path / "run", dataset_dir)
    (tmp_path / "run" / "manifest.json").write_text('{"stages": {')
    with pytest.raises(ConfigError, match="manifest.json is damaged; pass --restart"):
        Pipeline(fake_config(tmp_path / "run", dataset_dir), progress=False)
    restarted = Pipeline(fake_config(tmp_path / "run", dataset_dir), restart=True, progress=False)
    assert restarted.run.manifest["stages"] == {}


def test_crashed_training_attempt_leaves_nothing_in_the_checkpoint(
    tmp_path, dataset_dir, tiny_dir, monkeypatch
):
    written = []

    def fake_finetune(examples, base_model, output_dir, cfg, seed, **_):
        written.append(sorted(p.name for p in output_dir.iterdir()) if output_dir.exists() else [])
        output_dir.mkdir(parents=True)
        (output_dir / "model.safetensors").write_text("weights")
        return {"train_loss": 1.0, "steps": 1, "examples": len(examples)}

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    p = Pipeline(
        fake_config(tmp_path / "run", dataset_dir, f"roles.questioner.model={tiny_dir}"),
        progress=False,
    )
    for stage in ("simulate", "score", "select", "regularize"):
        p.run_stage(1, stage)
    leave_a_crashed_training(tmp_path / "run")
    p.run_stage(1, "train")
    assert written == [[]]  # training started in an empty folder
    assert sorted(f.name for f in p.checkpoint(1).iterdir()) == ["model.safetensors"]
    assert not (tmp_path / "run" / "iter_1" / "checkpoint.partial").exists()
    # A crash after the rename but before the manifest listed it: trained again, replaced whole.
    (p.checkpoint(1) / "model.safetensors").write_text("first attempt")
    del p.run.manifest["stages"]["iter_1/train"]
    p.run_stage(1, "train")
    assert written == [[], []] and (p.checkpoint(1) / "model.safetensors").read_text() == "weights"
    assert p.run.is_done("iter_1/train")


# -- a changed config: refused, restarted, or branched -------------------------------------------


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setenv("COLUMNS", "500")
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def fake_run(fake_config_file, tmp_path, dataset_dir, tiny_dir, monkeypatch):
    """A config file for whole fake runs (training replaced by a stand-in that writes a file)."""

    def fake_finetune(examples, base_model, output_dir, cfg, seed, **_):
        output_dir.mkdir(parents=True)
        (output_dir / "weights.txt").write_text(f"{len(examples)} examples, seed {seed}")
        return {"train_loss": 1.0, "steps": 1, "examples": len(examples)}

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    extra = "iterations: 1\nevaluate: {conversations_per_pair: 1}\n"
    return fake_config_file(tmp_path, dataset_dir, extra, questioner_model=tiny_dir)


def finished(run_dir: Path) -> dict[str, str]:
    return {k: e["finished"] for k, e in stages(run_dir).items()}


def test_changed_config_is_refused_naming_both_ways_out(cli, fake_run, tmp_path):
    assert cli("run", fake_run).exit_code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    result = cli("run", fake_run, "seed=5")
    assert result.exit_code == 2
    message = "".join(result.output.split())
    assert "holdsarunmadewithadifferentconfig" in message
    assert "--restart" in message and "--branchNEW_RUN_DIR" in message
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


def test_restart_redoes_every_stage(cli, fake_run, tmp_path):
    assert cli("run", fake_run).exit_code == 0
    first = finished(tmp_path / "run")
    result = cli("run", fake_run, "seed=5", "--restart")
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "run" / "config.yaml").seed == 5
    assert finished(tmp_path / "run").keys() == first.keys()


def test_branch_keeps_finished_stages_and_runs_the_rest_under_the_new_config(
    cli, fake_run, tmp_path
):
    source, branch = tmp_path / "run", tmp_path / "branch"
    assert cli("run", fake_run).exit_code == 0
    source_files = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    result = cli("run", fake_run, "iterations=2", "--branch", branch)
    assert result.exit_code == 0, result.output
    assert {
        p: p.read_bytes() for p in source.rglob("*") if p.is_file()
    } == source_files  # untouched
    kept, grown = finished(source), finished(branch)
    assert {k: grown[k] for k in kept} == kept  # copied as they were, not redone
    assert {"iter_2/train", "eval/iter_2"} <= grown.keys() - kept.keys()
    saved = load_config(branch / "config.yaml")
    assert saved.iterations == 2 and saved.run_dir == str(branch)
    assert json.loads((branch / "manifest.json").read_text())["branched_from"] == str(source)
    assert not (tmp_path / "branch.partial").exists()
    # Rerunning the same command resumes the branch: nothing left to do.
    assert cli("run", fake_run, "iterations=2", "--branch", branch).exit_code == 0
    assert finished(branch) == grown


def test_branch_refusals(cli, fake_run, tmp_path):
    result = cli("run", fake_run, "--branch", tmp_path / "branch")
    assert result.exit_code == 2 and "holds no run to branch from" in result.output
    assert not (tmp_path / "branch").exists()
    assert cli("run", fake_run).exit_code == 0
    result = cli("run", fake_run, "--restart", "--branch", tmp_path / "branch")
    assert result.exit_code == 2 and "--restart and --branch exclude each other" in result.output
    result = cli("run", fake_run, "--branch", tmp_path / "run")
    assert result.exit_code == 2 and "needsanewrundirectory" in "".join(result.output.split())


def test_branch_redoes_what_the_changed_settings_change(cli, fake_run, tmp_path):
    source, branch = tmp_path / "run", tmp_path / "branch"
    assert cli("run", fake_run).exit_code == 0
    result = cli("run", fake_run, "train.learning_rate=1e-3", "--branch", branch)
    assert result.exit_code == 0, result.output
    kept, redone = finished(source), finished(branch)
    assert redone.keys() == kept.keys()
    again = {k for k in kept if redone[k] != kept[k]}
    # Training and what depends on it ran again; the conversations it trains on and Q_0's test
    # records were copied.
    assert {"iter_1/train", "eval/iter_1"} <= again
    assert not again & {"iter_1/simulate", "iter_1/score", "iter_1/select", "iter_1/regularize"}
    assert not any(k.startswith(("eval/iter_0", "eval/controls")) for k in again)
    assert all(k.startswith(("iter_1/train", "eval/iter_1")) for k in again)
    manifest = json.loads((branch / "manifest.json").read_text())
    assert manifest["branch_redoes"]["changed"] == ["train"]


@pytest.mark.parametrize(
    ("changed", "redone"),
    [
        ([], []),
        (["iterations", "run_dir"], []),
        (["train"], ["iter_1/train", "iter_2/simulate", "iter_2/train", "eval/iter_1"]),
        (
            ["select"],
            ["iter_1/select", "iter_1/train", "iter_2/simulate", "iter_2/train", "eval/iter_1"],
        ),
        (["evaluate"], ["eval/controls", "eval/iter_0/simulate", "eval/iter_1"]),
        (  # the final answers of Q_0's evaluation follow regularize too
            ["regularize"],
            ["eval/controls", "eval/iter_0/simulate", "iter_1/train", "iter_2/simulate"]
            + ["iter_2/train", "eval/iter_1"],
        ),
        (  # training from iter_1/train on, and all of the evaluation (the judge)
            ["roles.judge", "train"],
            ["eval/controls", "eval/iter_0/simulate", "iter_1/train", "iter_2/simulate"]
            + ["iter_2/train", "eval/iter_1"],
        ),
        (["seed"], None),  # None: every stage
        (["roles.questioner"], None),
    ],
)
def test_stale_stages_follow_the_pipeline_order(changed, redone):
    from star_gate.rundir import stale_stages

    stages = [
        "eval/controls", "eval/iter_0/simulate", "iter_1/simulate/chunk_0000", "iter_1/simulate",
        "iter_1/score", "iter_1/select", "iter_1/train", "iter_2/simulate", "iter_2/train",
        "eval/iter_1",
    ]  # fmt: skip
    assert stale_stages(stages, changed) == (stages if redone is None else redone)


def test_changed_sections_name_roles_one_by_one():
    from star_gate.rundir import changed_sections

    before = {
        "seed": 0,
        "train": {"lr": 1},
        "roles": {"judge": {"m": "a"}, "questioner": {"m": "b"}},
    }
    after = {
        "seed": 0,
        "train": {"lr": 2},
        "roles": {"judge": {"m": "c"}, "questioner": {"m": "b"}},
    }
    assert changed_sections(before, after) == ["roles.judge", "train"]
    assert changed_sections(before, before) == []
    # chunking changes how the work is cut up, not what it writes
    assert (
        changed_sections({"simulate": {"chunk_pairs": 1}}, {"simulate": {"chunk_pairs": 2}}) == []
    )
