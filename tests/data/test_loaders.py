"""Dataset loading: the bundled data loads, and every kind of bad input names file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataset_edits import append_gold, drop_gold, edit_line, edit_splits, without

from star_gate.data.jsonl import DataError
from star_gate.data.loaders import bundled_path, load_dataset, resolve_dataset_path


def test_bundled_dataset_loads_with_expected_sizes():
    dataset = load_dataset("bundled")
    assert len(dataset.tasks) == 60
    assert len(dataset.personas) == 28
    assert len(dataset.gold) == 560
    assert sorted(dataset.splits) == ["A", "B", "test"]
    assert len(dataset.pairs("A")) == 160
    assert len(dataset.pairs("B")) == 160
    assert len(dataset.pairs("test")) == 240  # version 2: 20 tasks x 12 personas


def test_bundled_splits_are_disjoint():
    splits = load_dataset("bundled").splits
    for field in ("tasks", "personas"):
        a, b, test = (set(splits[s][field]) for s in ("A", "B", "test"))
        assert not (a & b) and not (a & test) and not (b & test)


def test_resolve_dataset_path():
    assert resolve_dataset_path("bundled") == bundled_path()
    assert resolve_dataset_path("/some/where") == Path("/some/where")


def test_small_dataset_loads(dataset_dir):
    dataset = load_dataset(dataset_dir)
    assert len(dataset.tasks) == 6 and len(dataset.personas) == 6 and len(dataset.gold) == 12
    pairs = dataset.pairs("A")
    assert [p.pair_id for p in pairs] == ["t1|p1", "t1|p2", "t2|p1", "t2|p2"]
    assert all(
        p.gold.task_id == p.task.task_id and p.gold.persona_id == p.persona.persona_id
        for p in pairs
    )
    assert pairs[0].gold.oracle == "tests"


def test_oracle_is_optional(dataset_dir):
    path = dataset_dir / "gold.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        del row["oracle"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_dataset(dataset_dir).gold[("t1", "p1")].oracle == "unknown"


def test_blank_lines_are_skipped_but_counted(dataset_dir):
    path = dataset_dir / "tasks.jsonl"
    lines = path.read_text().splitlines()
    path.write_text(
        "\n"
        + "\n".join(lines[:2])
        + "\n\n"
        + '{"task_id": "t1", "text": "again"}\n'
        + "\n".join(lines[2:])
    )
    with pytest.raises(
        DataError,
        match=r"tasks\.jsonl, line 5: field 'task_id': duplicate id 't1' \(first on line 2\)",
    ):
        load_dataset(dataset_dir)


# -- table-driven bad inputs ---------------------------------------------------------------------


def _invalid_utf8(folder: Path) -> None:
    path = folder / "personas.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"Maria", b"Mar\xffa")
    path.write_bytes(b"\n".join(lines))


BAD_INPUTS = {
    "malformed JSON": (
        edit_line("tasks.jsonl", 2, lambda row: '{"task_id": "t2", "text": '),
        ["tasks.jsonl, line 2", "not valid JSON"],
    ),
    "not an object": (
        edit_line("tasks.jsonl", 3, lambda row: '["t3", "text"]'),
        ["tasks.jsonl, line 3", "expected a JSON object"],
    ),
    "missing field": (
        edit_line("personas.jsonl", 3, lambda row: without(row, "name")),
        ["personas.jsonl, line 3", "missing field 'name'"],
    ),
    "wrong type": (
        edit_line("gold.jsonl", 4, lambda row: {**row, "text": 42}),
        ["gold.jsonl, line 4", "field 'text' must be a string"],
    ),
    "wrong type of optional field": (
        edit_line("gold.jsonl", 2, lambda row: {**row, "oracle": ["gpt"]}),
        ["gold.jsonl, line 2", "field 'oracle' must be a string"],
    ),
    "empty text": (
        edit_line("tasks.jsonl", 5, lambda row: {**row, "text": "   "}),
        ["tasks.jsonl, line 5", "field 'text' is empty"],
    ),
    "unknown field": (
        edit_line("tasks.jsonl", 1, lambda row: {**row, "txet": "typo"}),
        ["tasks.jsonl, line 1", "unknown field 'txet'"],
    ),
    "duplicate id": (
        edit_line("personas.jsonl", 4, lambda row: {**row, "persona_id": "p2"}),
        ["personas.jsonl, line 4", "field 'persona_id'", "duplicate id 'p2'"],
    ),
    "duplicate gold pair": (
        edit_line("gold.jsonl", 2, lambda row: {**row, "persona_id": "p1"}),
        ["gold.jsonl, line 2", "fields 'task_id', 'persona_id'", "duplicate id ('t1', 'p1')"],
    ),
    "unknown task in gold": (
        edit_line("gold.jsonl", 6, lambda row: {**row, "task_id": "t99"}),
        ["gold.jsonl, line 6", "field 'task_id'", "unknown task 't99'"],
    ),
    "unknown persona in gold": (
        edit_line("gold.jsonl", 7, lambda row: {**row, "persona_id": "p99"}),
        ["gold.jsonl, line 7", "field 'persona_id'", "unknown persona 'p99'"],
    ),
    "invalid UTF-8": (_invalid_utf8, ["personas.jsonl, line 3", "invalid UTF-8"]),
    "missing gold for a split pair": (
        drop_gold("t4", "p3"),
        ["splits.json", "split 'B'", "no gold response for pair (t4, p3)"],
    ),
    "unknown id in a split": (
        edit_splits(lambda s: s["test"]["personas"].append("p42")),
        ["splits.json", "split 'test' field 'personas'", "unknown id 'p42'"],
    ),
    "split without personas": (
        edit_splits(lambda s: s["A"].pop("personas")),
        ["splits.json", "split 'A' must have exactly 'tasks' and 'personas'"],
    ),
    "empty split list": (
        edit_splits(lambda s: s["B"].update(tasks=[])),
        ["splits.json", "split 'B' field 'tasks' must be a non-empty list"],
    ),
    "task shared between splits": (
        edit_splits(lambda s: s["test"]["tasks"].append("t1")),
        ["splits.json, line 1", "split 'test' field 'tasks'", "'t1' is also in split 'A'"],
    ),
    "persona shared between splits": (
        edit_splits(lambda s: s["B"]["personas"].append("p1")),
        ["splits.json", "split 'B' field 'personas'", "'p1' is also in split 'A'"],
    ),
    "gold for a pair in no split": (
        append_gold("t1", "p3"),
        ["gold.jsonl, line 13", "fields 'task_id', 'persona_id'", "pair (t1, p3) is in no split"],
    ),
    "splits not JSON": (
        lambda folder: (folder / "splits.json").write_text("{'A': nope"),
        ["splits.json", "not valid JSON"],
    ),
    "missing file": (
        lambda folder: (folder / "personas.jsonl").unlink(),
        ["personas.jsonl", "file not found"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_located_data_error(dataset_dir, case):
    mutate, expected = BAD_INPUTS[case]
    mutate(dataset_dir)
    with pytest.raises(DataError) as caught:
        load_dataset(dataset_dir)
    message = str(caught.value)
    for part in expected:
        assert part in message, f"{case}: {part!r} not in {message!r}"
    assert str(dataset_dir) in message  # the full path, not only the name


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(tmp_path / "nowhere")


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
    assert str(DataError("x.jsonl", 3, "bad")) == "x.jsonl, line 3: bad"
    assert str(DataError("x.jsonl", None, "bad")) == "x.jsonl: bad"
