"""benchmarks/untrained_tasks.py: the held-out split it writes is loadable and holds exactly the
tasks a run never trained on."""

import pytest

from star_gate.data.loaders import bundled_path, load_dataset


def test_the_untrained_split_holds_the_tasks_after_the_trained_ones(tmp_path, benchmark_script):
    script = benchmark_script("untrained_tasks")
    name = script.write_dataset(bundled_path(), tmp_path, "A", 6)
    dataset = load_dataset(tmp_path)
    untrained = {p.task.task_id for p in dataset.pairs(name)}
    trained = {p.task.task_id for p in dataset.pairs("A")} - untrained
    assert name == "A_untrained"
    assert sorted(trained) == [f"a0{i}" for i in range(1, 7)]
    assert len(untrained) == 14 and len(dataset.pairs(name)) == 14 * 8


def test_a_split_with_no_task_left_is_refused(tmp_path, benchmark_script):
    with pytest.raises(SystemExit, match="no task after the 20"):
        benchmark_script("untrained_tasks").write_dataset(
            bundled_path(), tmp_path / "data", "A", 20
        )
    assert not (tmp_path / "data").exists()  # nothing half written
