"""Fine-tuning: in this process (finetune.py) or in launched worker processes (launch.py,
worker.py), SFT or DPO (dpo.py), and the checkpoint that appears whole or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from star_gate.config import TrainConfig
from star_gate.faults import crash_point


def train_checkpoint(
    examples: list[dict],
    base_model: str,
    target: Path,
    cfg: TrainConfig,
    seed: int,
    key: str,
    log_dir: Path | None = None,
) -> dict:
    """Fine-tune base_model on the examples into the checkpoint folder `target`, and return the
    training metrics. With train.report_to, the trainer's logs go to log_dir.

    Training writes into target's sibling checkpoint.partial, renamed to target once whole: a
    crash leaves no half checkpoint where a finished one is expected. key names the stage for
    the fault-injection tests (faults.crash_point).
    """
    from star_gate.training.finetune import finetune
    from star_gate.training.launch import finetune_launched

    staging = target.with_name("checkpoint.partial")
    shutil.rmtree(staging, ignore_errors=True)  # a crashed attempt's files must not mix in
    train = finetune_launched if cfg.distributed.launcher != "none" else finetune
    metrics = train(examples, base_model, staging, cfg, seed=seed, log_dir=log_dir)
    shutil.rmtree(staging / "trainer", ignore_errors=True)
    crash_point("before_rename", key)
    if target.exists():  # renamed by a run that crashed before listing it in the manifest
        shutil.rmtree(target)
    staging.rename(target)
    return metrics
