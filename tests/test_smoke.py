"""End to end: `star-gate run configs/tiny.yaml` on the bundled SmolLM2 model (minutes on a CPU)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from star_gate.config import load_config
from star_gate.pipeline import STAGES, Pipeline

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
# Passive OpenMP threads: spinning ones slow a 2-core machine to a crawl when anything else is busy.
ENV = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "COLUMNS": "200"}


def star_gate_command() -> list[str]:
    """The installed `star-gate` script beside this Python, or the same entry point through -c."""
    script = Path(sys.executable).with_name("star-gate")
    return (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from star_gate.cli import main; main()"]
    )


@pytest.mark.slow
def test_tiny_config_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [*star_gate_command(), "run", str(TINY), f"run_dir={run_dir}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env=ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for label in ("negative control", "positive control", "Q_0 conversations", "Q_1 conversations"):
        assert label in done.stdout

    config = load_config(TINY, [f"run_dir={run_dir}"])
    pipeline = Pipeline(config, progress=False)
    pairs = len(pipeline.pairs(config.data.test_split))
    rows = pipeline.eval_table()
    assert [r.label for r in rows][2:] == [
        f"Q_{i} {condition}"
        for i in range(config.iterations + 1)
        for condition in ("conversations", "random persona")
    ]
    assert rows[0].count == rows[1].count == pairs
    assert all(r.count == pairs * config.evaluate.conversations_per_pair for r in rows[2:])
    assert all(math.isfinite(r.mean) and r.mean < 0 for r in rows)
    # the persona helps the base model predict persona-tailored gold
    assert rows[1].mean > rows[0].mean
    for stage in STAGES:
        assert pipeline.run.is_done(f"iter_1/{stage}")
    kept = pipeline.run.manifest["stages"]["iter_1/regularize"]["records"]
    assert kept == len(pipeline.pairs(config.data.train_splits[0])) * config.select.top_k
    # the bundled model judged Q_1's answers against Q_0's, and the run ended with its report
    judged = pipeline.results().win_rate(1)
    assert judged.count + judged.unreadable == pairs * config.evaluate.judged_conversations_per_pair
    assert "win rate of Q_1 against Q_0" in " ".join(done.stdout.split())
    assert "peak resident memory:" in " ".join(done.stdout.split())
    assert (run_dir / "report.md").exists() and (run_dir / "logprobs.png").exists()
