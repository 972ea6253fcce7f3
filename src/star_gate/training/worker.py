"""One training process of a launched fine-tune (launch.py starts them with `accelerate launch`).

    python -m star_gate.training.worker JOB.json

Every process reads the same job: the examples file, the TrainConfig and where to save. Each runs
`finetune`, whose Trainer shards the data and syncs gradients (DDP), or shards the weights too
(FSDP, DeepSpeed), as the accelerate config says. The main process writes the checkpoint and then
the metrics file, whose appearance tells the pipeline that the checkpoint is whole.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from star_gate.config import TrainConfig
from star_gate.memory import limit_memory_growth
from star_gate.training.launch import die_with_parent


def read_examples(path: Path) -> list[dict]:
    """The training examples the pipeline wrote, one JSON object a line."""
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def check_world_size(expected: int, use_cpu: bool, backend: str | None) -> None:
    """Refuse to train when the launched processes did not join one process group (each would
    train alone on all the data, and all would write the checkpoint)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=use_cpu, backend=backend)
    alone = state.distributed_type == DistributedType.NO  # a group without gradient sync
    if state.num_processes != expected or (expected > 1 and alone):
        raise RuntimeError(
            f"the launched processes did not form one training group of {expected}: this one sees "
            f"{state.num_processes} process(es), distributed type {state.distributed_type.value}; "
            "check the accelerate config's distributed_type and use_cpu"
        )


def run_job(job_path: Path) -> None:
    """Train as one process of the group, and (main process) write the metrics file."""
    import torch

    limit_memory_growth()  # a launched process starts with glibc's defaults again
    job = json.loads(job_path.read_text(encoding="utf-8"))
    if job["use_cpu"]:
        # The Trainer reads this when it sets up its processes; accelerate's torchrun launcher
        # (every distributed_type but MULTI_CPU, which needs MPI) does not pass use_cpu on.
        os.environ["ACCELERATE_USE_CPU"] = "true"
    # Without GPUs accelerate finds no backend for DeepSpeed, and it would run as one process.
    backend = None if torch.cuda.is_available() else "gloo"
    check_world_size(job["num_processes"], job["use_cpu"], backend)
    examples = read_examples(Path(job["examples"]))
    cfg = TrainConfig.model_validate(job["train"])
    output_dir = Path(job["output_dir"])
    if job.get("kind") == "online":
        metrics, is_main = _online_update(job, examples, cfg, output_dir)
    else:
        metrics, is_main = _finetune(job, examples, cfg, output_dir, backend)
    if is_main:
        metrics_path = Path(job["metrics"])
        partial = metrics_path.with_suffix(".partial")
        partial.write_text(json.dumps(metrics), encoding="utf-8")
        partial.rename(metrics_path)


def _finetune(
    job: dict, examples, cfg: TrainConfig, output_dir: Path, backend
) -> tuple[dict, bool]:
    from accelerate.state import AcceleratorState

    from star_gate.training.finetune import finetune

    log_dir = Path(job["log_dir"]) if job.get("log_dir") else None
    metrics = finetune(
        examples,
        job["base_model"],
        output_dir,
        cfg,
        seed=job["seed"],
        ddp_backend=backend,
        log_dir=log_dir,
    )
    state = AcceleratorState()  # as the Trainer set it up: says whether FSDP or DeepSpeed ran
    metrics.update(
        processes=state.num_processes, distributed_type=str(state.distributed_type.value)
    )
    if state.deepspeed_plugin is not None:
        metrics["zero_stage"] = state.deepspeed_plugin.zero_stage
    return metrics, state.is_main_process


def _online_update(job: dict, examples, cfg: TrainConfig, output_dir: Path) -> tuple[dict, bool]:
    """loop online's update, this process's share of it (check_world_size set up the group)."""
    from accelerate import PartialState

    from star_gate.config import OnlineConfig
    from star_gate.training.online import policy_update

    online = OnlineConfig.model_validate(job["online"])
    metrics = policy_update(
        examples, job["policy"], job["base_model"], output_dir, online, cfg, seed=job["seed"]
    )
    state = PartialState()
    metrics.update(processes=state.num_processes)
    return metrics, state.is_main_process


def main(argv: list[str] | None = None) -> None:
    """`python -m star_gate.training.worker JOB.json`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m star_gate.training.worker JOB.json")
    die_with_parent()
    run_job(Path(args[0]))


if __name__ == "__main__":
    main()
