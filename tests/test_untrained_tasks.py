"""benchmarks/untrained_tasks.py: the held-out split it writes is loadable and holds exactly the
tasks a run never trained on."""

import importlib.util
from pathlib import Path

import pytest

from star_gate.data.loaders import bundled_path, load_dataset

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "untrained_tasks.py"


def load_script():
    spec = importlib.util.spec_from_file_location("untrained_tasks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_untrained_split_holds_the_tasks_after_the_trained_ones(tmp_path):
    script = load_script()
    name = script.write_dataset(bundled_path(), tmp_path, "A", 6)
    dataset = load_dataset(tmp_path)
    untrained = {p.task.task_id for p in dataset.pairs(name)}
    trained = {p.task.task_id for p in dataset.pairs("A")} - untrained
    assert name == "A_untrained"
    assert sorted(trained) == [f"a0{i}" for i in range(1, 7)]
    assert len(untrained) == 14 and len(dataset.pairs(name)) == 14 * 8


def test_a_split_with_no_task_left_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no task after the 20"):
        load_script().write_dataset(bundled_path(), tmp_path / "data", "A", 20)
    assert not (tmp_path / "data").exists()  # nothing half written
