"""The run directory: saved config, manifest, finished stages and records."""

from __future__ import annotations

import json

import pytest

from star_gate.config import ConfigError, load_config
from star_gate.data.records import Conversation
from star_gate.roles.prompts import TEMPLATES
from star_gate.rundir import Layout, RunDir


@pytest.fixture
def config(tmp_path):
    return load_config(None, [f"run_dir={tmp_path / 'run'}", "seed=3"])


def test_new_run_dir_saves_config_and_prompt_versions(config, tmp_path):
    run = RunDir(config)
    assert load_config(tmp_path / "run" / "config.yaml") == config
    assert run.manifest["prompt_versions"] == {name: t.version for name, t in TEMPLATES.items()}
    assert run.manifest["stages"] == {}
    assert not run.manifest_path.exists()  # written when something finishes


def test_write_records_marks_done_and_reads_back(config):
    run = RunDir(config)
    rows = [Conversation("t1", "p1", i, 1, logprob=-float(i)) for i in range(3)]
    path = run.write_records("iter_1/score", "iter_1/scored.jsonl", rows, note="x")
    assert path == run.path("iter_1", "scored.jsonl") and path.exists()
    assert run.is_done("iter_1/score") and not run.is_done("iter_1/select")
    entry = json.loads(run.manifest_path.read_text())["stages"]["iter_1/score"]
    assert (
        entry["output"] == "iter_1/scored.jsonl" and entry["records"] == 3 and entry["note"] == "x"
    )
    assert run.records("iter_1/score", Conversation.from_json) == rows


def test_manifest_survives_reopening(config):
    run = RunDir(config)
    run.write_records("a", "a.jsonl", [])
    run.note("backend", calls=3)
    again = RunDir(config)
    assert again.is_done("a")
    assert again.manifest["notes"] == {"backend": {"calls": 3}}


def test_stage_whose_output_vanished_is_not_done(config):
    run = RunDir(config)
    path = run.write_records("a", "a.jsonl", [])
    path.unlink()
    assert not run.is_done("a")


def test_different_config_is_refused_unless_restarting(config, tmp_path):
    run = RunDir(config)
    run.write_records("a", "a.jsonl", [])
    changed = config.model_copy(update={"seed": 4})
    with pytest.raises(ConfigError, match="different config.*--restart"):
        RunDir(changed)
    restarted = RunDir(changed, restart=True)
    assert restarted.manifest["stages"] == {}
    assert load_config(tmp_path / "run" / "config.yaml").seed == 4
    assert RunDir(changed).manifest["stages"] == {}


def test_a_config_saved_before_a_new_field_existed_still_resumes(config, tmp_path):
    RunDir(config)
    saved = tmp_path / "run" / "config.yaml"
    # as an older star-gate wrote it: without a field added since, whose default changes nothing
    older = "\n".join(
        line for line in saved.read_text().splitlines() if "random_persona" not in line
    )
    saved.write_text(older + "\n")
    RunDir(config)  # accepted: equal as configs
    assert "random_persona" in saved.read_text()  # and saved again in the current form
    saved.write_text(saved.read_text().replace("seed: 3", "seed: 4"))
    with pytest.raises(ConfigError, match="different config"):
        RunDir(config)


def test_a_runs_checkpoints_run_in_order_up_to_the_first_not_saved(tmp_path):
    for iteration in (1, 2, 4):
        folder = tmp_path / f"iter_{iteration}" / "checkpoint"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (tmp_path / "iter_3" / "checkpoint").mkdir(parents=True)  # a save cut short: no config.json
    assert Layout.checkpoints(tmp_path) == [
        tmp_path / "iter_1" / "checkpoint",
        tmp_path / "iter_2" / "checkpoint",
    ]
