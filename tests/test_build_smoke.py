"""From nothing to a trained iteration: build a dataset with the bundled model as oracle, then run
one iteration of the loop on it (minutes on a CPU)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_smoke import ENV, TINY, star_gate_command

from star_gate.data.loaders import load_dataset

REQUESTS = [
    "Recommend me a book to read.",
    "Recommend me a book to read!",  # dropped as a duplicate
    "What should I cook for dinner tonight?",
    "Plan a weekend trip for me.",
    "How should I start exercising?",
    "Which laptop should I buy?",
]


def star_gate(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [*star_gate_command(), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env=ENV,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_dataset_built_from_scratch_runs_one_iteration(tmp_path):
    source = tmp_path / "requests.jsonl"
    source.write_text(
        "".join(json.dumps({"request": r}) + "\n" for r in REQUESTS), encoding="utf-8"
    )
    folder = tmp_path / "dataset"
    sizes = "A=2,B=1,test=1"
    persona_sizes = "A=2,B=1,test=2"  # two test personas: the random-persona condition needs them

    tasks = star_gate(
        "data",
        "tasks",
        str(folder),
        "--source",
        str(source),
        "--column",
        "request",
        "--splits",
        sizes,
    )
    assert "0 model calls" in tasks.stdout and "dropped 1" in tasks.stdout
    personas = star_gate(
        "data", "personas", str(folder), "--splits", persona_sizes, "--max-new-tokens", "128"
    )
    assert "5 model calls planned" in personas.stdout
    gold = star_gate("data", "gold", str(folder), "roles.oracle.max_new_tokens=96")
    assert "7 model calls" in gold.stdout  # 2x2 + 1x1 + 1x2 pairs
    again = star_gate("data", "gold", str(folder))
    assert "0 model calls" in again.stdout

    dataset = load_dataset(folder)
    assert (len(dataset.tasks), len(dataset.personas), len(dataset.gold)) == (4, 5, 7)
    assert {g.oracle for g in dataset.gold.values()} == {"bundled"}

    run_dir = tmp_path / "run"
    run = star_gate("run", str(TINY), f"run_dir={run_dir}", f"data.path={folder}")
    assert "Q_1 conversations" in run.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["stages"]["iter_1/regularize"]["records"] == 4  # 4 pairs of A, top 1 each
    assert Path(run_dir / "iter_1" / "checkpoint" / "config.json").exists()
