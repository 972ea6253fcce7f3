"""IN3 import (`star-gate data import-in3`) and datasets scored by missing details: users drawn
from the seed, the held-out fifth fixed by task text, pair-list splits, optional gold, and bad
rows refused with file, line and field, writing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from in3_samples import in3_rows, write_in3
from typer.testing import CliRunner

from star_gate.cli import app
from star_gate.data.in3 import bundled_in3_path, import_in3, is_held_out
from star_gate.data.jsonl import DataError
from star_gate.data.loaders import load_dataset
from star_gate.data.records import PairDetails
from star_gate.preflight import limit_splits


def test_import_draws_users_and_loads_as_a_dataset(tmp_path):
    source = write_in3(tmp_path / "in3.jsonl", in3_rows())
    summary = import_in3(source, tmp_path / "data", users_per_task=3, seed=1)
    dataset = load_dataset(tmp_path / "data")
    assert not dataset.gold and len(dataset.details) == 36
    assert sum(summary["tasks"].values()) == 12
    pair = dataset.pairs("A")[0]
    assert pair.gold is None and isinstance(pair.details, PairDetails)
    held = {t for t, _ in dataset.pair_ids("test")}
    assert held == {task_id for task_id, task in dataset.tasks.items() if is_held_out(task.text)}, (
        "the held-out split is fixed by task text"
    )
    for key, details in dataset.details.items():
        persona = dataset.personas[key[1]]
        assert persona.persona_id.startswith(key[0]), "a user belongs to its task"
        for detail in details.details:
            assert detail.choice in detail.options
            assert f"{detail.description}: {detail.choice}." in persona.description
        assert details.vague == bool(details.details)


def test_import_is_reproducible_and_the_seed_changes_the_users(tmp_path):
    source = write_in3(tmp_path / "in3.jsonl", in3_rows())
    for name, seed in (("a", 0), ("b", 0), ("c", 5)):
        import_in3(source, tmp_path / name, users_per_task=4, seed=seed)
    read = {n: (tmp_path / n / "details.jsonl").read_bytes() for n in "abc"}
    assert read["a"] == read["b"]
    assert read["a"] != read["c"]


def test_import_drops_repeated_tasks(tmp_path):
    rows = in3_rows(4)
    source = write_in3(tmp_path / "in3.jsonl", [*rows, dict(rows[0])])
    summary = import_in3(source, tmp_path / "data")
    assert summary["dropped_near_duplicates"] == [5]
    assert len(load_dataset(tmp_path / "data").tasks) == 4


def test_bundled_training_split_imports(tmp_path):
    summary = import_in3("bundled", tmp_path / "data", users_per_task=1)
    assert bundled_in3_path().name == "train.jsonl"
    assert sum(summary["tasks"].values()) == 1261 - len(summary["dropped_near_duplicates"])
    assert 0.18 < summary["tasks"]["test"] / sum(summary["tasks"].values()) < 0.26


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("task"), "line 2: missing field 'task'"),
        (lambda r: r.update(vague="yes"), "line 2: field 'vague' must be true or false"),
        (
            lambda r: r["missing_details"][1].update(importance="5"),
            "line 2: field 'missing_details[1].importance' must be 1, 2 or 3",
        ),
        (
            lambda r: r["missing_details"][0].update(options=[]),
            "line 2: field 'missing_details[0].options' must be a list of non-empty strings",
        ),
        (
            lambda r: r.update(vague=False),
            "line 2: field 'missing_details': a clear task (vague false) has none",
        ),
    ],
)
def test_bad_rows_exit_2_naming_line_and_field_and_write_nothing(tmp_path, edit, message):
    rows = json.loads(json.dumps(in3_rows(3)))
    edit(rows[1])
    source = write_in3(tmp_path / "in3.jsonl", rows)
    result = CliRunner().invoke(app, ["data", "import-in3", str(source), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no staging left"


def test_import_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    source = write_in3(tmp_path / "in3.jsonl", in3_rows(3))
    result = CliRunner().invoke(app, ["data", "import-in3", str(source), str(tmp_path / "out")])
    assert result.exit_code == 2 and "not empty" in result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_data_check_passes_without_gold(tmp_path):
    source = write_in3(tmp_path / "in3.jsonl", in3_rows())
    import_in3(source, tmp_path / "data")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "no control check" in result.output and "passed" in result.output


def _edit_details(folder: Path, edit) -> None:
    path = folder / "details.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[0]["details"][0].update(choice="Never"), "is not one of its options"),
        (lambda rows: rows[0].update(persona_id="nobody"), "unknown persona 'nobody'"),
        (lambda rows: rows[0]["details"][0].update(importance=True), "must be an integer"),
        (lambda rows: rows.pop(), "no missing details for pair"),
    ],
)
def test_details_file_is_checked_field_by_field(tmp_path, edit, message):
    import_in3(write_in3(tmp_path / "in3.jsonl", in3_rows()), tmp_path / "data")
    _edit_details(tmp_path / "data", edit)
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "data")


def test_limits_on_a_split_of_listed_pairs_keep_tasks_then_users(tmp_path):
    import_in3(write_in3(tmp_path / "in3.jsonl", in3_rows()), tmp_path / "data", users_per_task=3)
    dataset = load_dataset(tmp_path / "data")
    first_tasks = list(dict.fromkeys(t for t, _ in dataset.pair_ids("A")))[:2]
    limited = limit_splits(dataset, max_tasks=2, max_personas=2)
    kept = limited.pair_ids("A")
    assert [t for t, _ in kept] == [first_tasks[0]] * 2 + [first_tasks[1]] * 2
    assert [p for _, p in kept][:2] == [f"{first_tasks[0]}-u0", f"{first_tasks[0]}-u1"]
