"""Training examples for the objective, and fine-tuning: in this process (finetune.py) or in
launched worker processes (launch.py, worker.py), SFT or DPO (dpo.py), and the checkpoint that
appears whole or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from star_gate.config import RunConfig, TrainConfig
from star_gate.data.records import Conversation, Pair
from star_gate.faults import crash_point


def training_examples(
    kept: list[Conversation], pairs: list[Pair], config: RunConfig
) -> tuple[list[dict], int]:
    """The kept conversations tokenized for train.objective, in the trained questioners' prompt
    (train.prompt): examples (SFT) or (chosen, rejected) pairs of them (DPO), and how many were
    cut to train.max_length.

    Raises:
        RuntimeError: DPO with no pair left (select.min_margin kept none).
    """
    from transformers import AutoTokenizer

    from star_gate.backends.models import resolve_model
    from star_gate.roles.prompts import get_template
    from star_gate.stages import preference_pairs
    from star_gate.stages.preference import build_preference_examples
    from star_gate.stages.train import build_examples

    cfg = config.train
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.roles.questioner.model))
    template = get_template(config.questioner_prompt(trained=True))
    if cfg.objective == "sft":
        return build_examples(kept, pairs, template, tokenizer, cfg.max_length)
    if not kept:
        raise RuntimeError(
            "no preference pair beats its rejected conversation by more than select.min_margin "
            f"({config.select.min_margin} nats); lower it"
        )
    return build_preference_examples(
        preference_pairs(kept, config.select.turn_cost), pairs, template, tokenizer, cfg.max_length
    )


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
    replace_folder(staging, target)
    return metrics


def replace_folder(staging: Path, target: Path) -> None:
    """Put a finished folder in place of target with one rename. A target already there was
    renamed by a run that crashed before the manifest listed it: it is replaced whole."""
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
