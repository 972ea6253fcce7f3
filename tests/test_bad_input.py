"""Bad input through `star-gate run`: every case exits 2 with one located sentence, before any
model loads, and writes nothing. Text longer than a model's context is cut, counted, and the run
goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dataset_edits import drop_gold, edit_line, edit_splits, without
from typer.testing import CliRunner

from star_gate.cli import app
from star_gate.config import load_config
from star_gate.data.records import Conversation, ScoredControl
from star_gate.pipeline import Pipeline
from star_gate.roles import factory as factory_module


def squash(text: str) -> str:
    """Whitespace-free text, so that a message rich wrapped still matches."""
    return "".join(text.split())


@pytest.fixture
def run_cli(monkeypatch):
    """invoke(*args) -> result, with no model allowed to load (all of this is checked before)."""
    monkeypatch.setenv("COLUMNS", "500")

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(factory_module, "load_backend", no_model)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def assert_refused(result, run_dir: Path, *expected: str) -> None:
    """Exit status 2, every expected part in the message, no traceback, no run directory."""
    output = squash(result.output)
    assert result.exit_code == 2, result.output
    for part in expected:
        assert squash(part) in output, f"{part!r} not in {result.output!r}"
    assert "Traceback" not in result.output
    assert not run_dir.exists(), "something was written"


# -- bad data ------------------------------------------------------------------------------------


def replace_with_folder(name: str):
    def mutate(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()

    return mutate


# (mutation of the small dataset, parts the message must hold besides the file's full path)
BAD_DATA = {
    "malformed JSONL": (
        edit_line("tasks.jsonl", 2, lambda row: '{"task_id": "t2", "text": "Recommend'),
        ["tasks.jsonl, line 2: not valid JSON"],
    ),
    "line that is not an object": (
        edit_line("tasks.jsonl", 3, lambda row: '["t3", "Where should I go?"]'),
        ["tasks.jsonl, line 3: expected a JSON object"],
    ),
    "missing field": (
        edit_line("personas.jsonl", 3, lambda row: without(row, "description")),
        ["personas.jsonl, line 3: missing field 'description'"],
    ),
    "wrong-typed text": (
        edit_line("gold.jsonl", 4, lambda row: {**row, "text": 42}),
        ["gold.jsonl, line 4: field 'text' must be a string"],
    ),
    "wrong-typed id": (
        edit_line("tasks.jsonl", 1, lambda row: {**row, "task_id": 1}),
        ["tasks.jsonl, line 1: field 'task_id' must be a string"],
    ),
    "field given twice": (
        edit_line("tasks.jsonl", 2, lambda row: '{"task_id": "t2", "text": "a", "text": "b"}'),
        ["tasks.jsonl, line 2: field 'text' appears twice"],
    ),
    "duplicate task id": (
        edit_line("tasks.jsonl", 4, lambda row: {**row, "task_id": "t2"}),
        ["tasks.jsonl, line 4: field 'task_id': duplicate id 't2' (first on line 2)"],
    ),
    "duplicate gold pair": (
        edit_line("gold.jsonl", 2, lambda row: {**row, "persona_id": "p1"}),
        ["gold.jsonl, line 2: fields 'task_id', 'persona_id': duplicate id ('t1', 'p1')"],
    ),
    "unknown task id in gold": (
        edit_line("gold.jsonl", 6, lambda row: {**row, "task_id": "t99"}),
        ["gold.jsonl, line 6: field 'task_id': unknown task 't99'"],
    ),
    "unknown persona id in gold": (
        edit_line("gold.jsonl", 7, lambda row: {**row, "persona_id": "p99"}),
        ["gold.jsonl, line 7: field 'persona_id': unknown persona 'p99'"],
    ),
    "empty text": (
        edit_line("tasks.jsonl", 5, lambda row: {**row, "text": ""}),
        ["tasks.jsonl, line 5: field 'text' is empty"],
    ),
    "blank gold text": (
        edit_line("gold.jsonl", 3, lambda row: {**row, "text": " \n\t "}),
        ["gold.jsonl, line 3: field 'text' is empty"],
    ),
    "invalid UTF-8 in a value": (
        edit_line(
            "personas.jsonl",
            2,
            lambda row: json.dumps(row).encode().replace(b"Kenji", b"Ken\xffji"),
        ),
        ["personas.jsonl, line 2: field 'name': invalid UTF-8 at byte"],
    ),
    "invalid UTF-8 in broken JSON": (
        edit_line("gold.jsonl", 5, lambda row: b'{"task_id": "t\xc3'),
        ["gold.jsonl, line 5: invalid UTF-8 at byte 14"],
    ),
    "unknown field": (
        edit_line("personas.jsonl", 1, lambda row: {**row, "nmae": "typo"}),
        ["personas.jsonl, line 1: unknown field 'nmae'"],
    ),
    "missing file": (
        lambda folder: (folder / "gold.jsonl").unlink(),
        ["gold.jsonl: file not found"],
    ),
    "folder instead of a file": (
        replace_with_folder("tasks.jsonl"),
        ["tasks.jsonl: cannot be read"],
    ),
    "missing gold for a pair of a split": (
        drop_gold("t4", "p3"),
        ["splits.json: split 'B': no gold response for pair (t4, p3)"],
    ),
    "empty split": (
        edit_splits(lambda s: s["test"].update(personas=[])),
        ["splits.json: split 'test' field 'personas' must be a non-empty list"],
    ),
    "split id of the wrong type": (
        edit_splits(lambda s: s["A"]["tasks"].append(["t1"])),
        ["splits.json: split 'A' field 'tasks': unknown id ['t1']"],
    ),
    "splits not valid JSON": (
        lambda folder: (folder / "splits.json").write_text('{\n "A": {"tasks": ["t1"],\n'),
        ["splits.json, line 3: not valid JSON"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_exits_2_naming_file_line_and_field(
    fake_config_file, case, run_cli, tmp_path, dataset_dir
):
    mutate, expected = BAD_DATA[case]
    mutate(dataset_dir)
    before = files_under(dataset_dir)
    result = run_cli("run", fake_config_file(tmp_path, dataset_dir))
    assert_refused(result, tmp_path / "run", str(dataset_dir), *expected)
    assert files_under(dataset_dir) == before


def test_byte_order_mark_is_accepted(fake_config_file, run_cli, tmp_path, dataset_dir):
    for name in ("tasks.jsonl", "splits.json"):
        path = dataset_dir / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = run_cli("validate", fake_config_file(tmp_path, dataset_dir))
    assert result.exit_code == 0, result.output
    assert "ok: 6 tasks" in result.output


def test_missing_dataset_folder(fake_config_file, run_cli, tmp_path):
    result = run_cli("run", fake_config_file(tmp_path, tmp_path / "nowhere"))
    assert_refused(result, tmp_path / "run", f"{tmp_path / 'nowhere'}: dataset folder not found")


# -- impossible settings -------------------------------------------------------------------------

# (YAML added to the config file, overrides, parts of the message)
BAD_CONFIG = {
    "unknown key": (
        "select: {topk: 1}\n",
        [],
        ["unknown key 'select.topk'; did you mean 'select.top_k'?"],
    ),
    "k > n": (
        "select: {top_k: 3}\n",
        [],
        ["select.top_k (3) cannot exceed simulate.conversations_per_pair (2)"],
    ),
    "turns < 1": (
        "",
        ["simulate.max_turns=0"],
        ["simulate.max_turns: Input should be greater than or equal to 1"],
    ),
    "evaluation turns < 1": (
        "evaluate: {max_turns: 0}\n",
        [],
        ["evaluate.max_turns: Input should be greater than or equal to 1"],
    ),
    "no iterations": (
        "iterations: 0\n",
        [],
        ["iterations: Input should be greater than or equal to 1"],
    ),
    "final answer as long as the context": (
        "regularize: {max_new_tokens: 2048}\n",
        [],
        [
            "regularize.max_new_tokens (2048) must be smaller than",
            "roles.questioner.max_context (2048)",
        ],
    ),
    "reply as long as the context": (
        "",
        ["roles.roleplayer.max_new_tokens=64", "roles.roleplayer.max_context=64"],
        ["roles.roleplayer: max_new_tokens (64) must be smaller than max_context (64)"],
    ),
    "DPO without enough conversations for its pairs": (
        "train: {objective: dpo}\n",
        ["simulate.conversations_per_pair=3", "select.top_k=2"],
        ["select.top_k (2) pairs need simulate.conversations_per_pair of at least 4, not 3"],
    ),
    "negative DPO beta": (
        "train: {objective: dpo, dpo: {beta: -0.1}}\n",
        [],
        ["train.dpo.beta: Input should be greater than 0"],
    ),
    "negative preference margin": (
        "",
        ["select.min_margin=-1"],
        ["select.min_margin: Input should be greater than or equal to 0"],
    ),
    "negative turn cost": (
        "",
        ["select.turn_cost=-0.5"],
        ["select.turn_cost: Input should be greater than or equal to 0"],
    ),
    "unknown training objective": (
        "",
        ["train.objective=ppo"],
        ["train.objective: Input should be 'sft' or 'dpo'"],
    ),
    "split the dataset lacks": (
        "",
        ["data.test_split=holdout"],
        ["data.path has no split 'holdout'; it has ['A', 'B', 'test']"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_impossible_settings_exit_2_with_one_sentence(
    fake_config_file, case, run_cli, tmp_path, dataset_dir
):
    extra, overrides, expected = BAD_CONFIG[case]
    result = run_cli("run", fake_config_file(tmp_path, dataset_dir, extra), *overrides)
    assert_refused(result, tmp_path / "run", *expected)
    message = result.output.strip()
    assert message.startswith("error:") and message.count("error:") == 1


# -- text longer than the model's context --------------------------------------------------------


def test_text_longer_than_the_context_is_cut_counted_and_the_stages_finish(
    tmp_path, dataset_dir, tiny_dir
):
    long_text = " ".join(["I grew up on a farm near the sea."] * 300)  # about 3,000 tokens
    for name, field, row_index in (("tasks.jsonl", "text", 0), ("gold.jsonl", "text", 8)):
        path = dataset_dir / name
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows[row_index][field] = long_text  # task t1 (split A); gold of (t5, p5) (test split)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.path={dataset_dir}",
            f"roles.questioner.model={tiny_dir}",
            "roles.questioner.device=cpu",
            "roles.questioner.max_context=64",  # the least allowed
            "roles.questioner.max_new_tokens=6",
            "roles.roleplayer.backend=fake",
            "roles.roleplayer.mode=persona",
            "simulate.conversations_per_pair=1",
            "simulate.max_turns=1",
            "regularize.max_new_tokens=6",
            "evaluate.answer_max_new_tokens=6",
        ],
    )
    p = Pipeline(config, progress=False)
    p.controls_stage()
    p.simulate_stage(1)
    p.score_stage(1)

    stages = json.loads(p.run.manifest_path.read_text())["stages"]
    # At 64 tokens every prompt is cut: even the shortest, task-only control with its gold is 70.
    assert stages["eval/controls"]["truncated_prompts"] == 8  # 4 test pairs x 2 controls
    assert stages["iter_1/simulate/chunk_0000"]["truncated_prompts"] == 4  # 4 pairs x 1 turn
    assert stages["iter_1/simulate"]["truncated_prompts"] == 0  # merging calls no model
    assert stages["iter_1/score/chunk_0000"]["truncated_prompts"] == 4
    assert stages["iter_1/score"]["truncated_prompts"] == 0
    totals = json.loads(p.run.manifest_path.read_text())["totals"]
    assert totals["truncated_prompts"] == 16 and totals["truncated_examples"] == 0
    controls = p.run.records("eval/controls", ScoredControl.from_json)
    assert all(c.logprob < 0 for c in controls)  # the 3,000-token gold was scored whole
    long_gold = max(c.logprob for c in controls if c.pair_id == "t5|p5")
    assert long_gold < 10 * min(c.logprob for c in controls if c.pair_id != "t5|p5")
    assert len(p.run.records("iter_1/score", Conversation.from_json)) == 4
