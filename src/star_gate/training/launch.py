"""Fine-tune in worker processes started by `accelerate launch` (train.distributed.launcher: accelerate).

The pipeline stays one process: at the train stage it writes the examples and a job file into the
staging folder, runs `accelerate launch ... -m star_gate.training.worker JOB` and waits. The
workers train with DDP, FSDP or DeepSpeed as the accelerate config says; the main worker saves
the checkpoint into the staging folder and then writes the metrics file this module reads back.

With several machines, this pipeline's machine is machine 0; every other machine must run the
join command this module prints (and writes next to the job), on a filesystem that all share.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path

from star_gate.config import ConfigError, DistributedConfig, OnlineConfig, TrainConfig

TAIL_LINES = 40  # of the workers' output, quoted when they fail
WORKER_MODULE = "star_gate.training.worker"


def read_accelerate_config(dist: DistributedConfig):
    """accelerate's own reading of the config file (a ClusterConfig), so that a typo or a missing
    package is refused before any model loads, in one sentence naming the field.

    Raises:
        ConfigError: the file is missing or accelerate cannot read it.
    """
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    field = "train.distributed.accelerate_config"
    path = Path(dist.accelerate_config)
    if not path.is_file():
        raise ConfigError(f"{field}: {path} not found")
    try:
        cluster = load_config_from_file(str(path))
    except (ValueError, TypeError, OSError) as err:  # accelerate's own messages name the key
        raise ConfigError(f"{field}: {path} is not a valid accelerate config ({err})") from None
    sharded = cluster.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded and cluster.use_cpu:
        # accelerate would quietly fall back to plain data parallel on the CPU.
        raise ConfigError(
            f"{field}: {path} sets use_cpu, with which accelerate cannot run {cluster.distributed_type.value}"
        )
    if (
        cluster.distributed_type == DistributedType.DEEPSPEED
        and importlib.util.find_spec("deepspeed") is None
    ):
        raise ConfigError(
            f"{field}: {path} uses DeepSpeed, which is not installed (pip install deepspeed)"
        )
    check_machine_address(dist, cluster)
    return cluster


def machines(dist: DistributedConfig, cluster) -> int:
    """How many machines take part: the config's override, else the accelerate file's."""
    return dist.num_machines or cluster.num_machines or 1


def check_machine_address(dist: DistributedConfig, cluster) -> None:
    """Several machines must all be told where machine 0 listens: a known address and port."""
    if machines(dist, cluster) == 1:
        return
    port = (
        dist.main_process_port if dist.main_process_port is not None else cluster.main_process_port
    )
    if not (dist.main_process_ip or cluster.main_process_ip):
        raise ConfigError(
            "train.distributed.main_process_ip: needed with several machines (machine 0's address)"
        )
    if not port:
        raise ConfigError(
            "train.distributed.main_process_port: needed with several machines, and not 0"
        )


def check_launcher(train: TrainConfig, online: bool = False) -> None:
    """Refuse a launched training that cannot start (Pipeline calls this before any model loads).
    online: the loop online's update, which sums its processes' gradients itself (data parallel)
    and so takes no sharded (FSDP, DeepSpeed) config."""
    if train.distributed.launcher != "accelerate":
        return
    cluster = read_accelerate_config(train.distributed)
    from accelerate.utils import DistributedType

    if online and cluster.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ConfigError(
            f"train.distributed.accelerate_config: loop online's launched update is data parallel; "
            f"{cluster.distributed_type.value} is not: use a DDP config (configs/accelerate/ddp.yaml)"
        )


def accelerate_args(dist: DistributedConfig, job: Path, machine_rank: int | str) -> list[str]:
    """Arguments of `accelerate launch` for the worker, with this config's overrides."""
    args = ["--config_file", str(Path(dist.accelerate_config).resolve())]
    overrides = {
        "--num_processes": dist.num_processes,
        "--num_machines": dist.num_machines,
        "--main_process_ip": dist.main_process_ip or None,
        "--main_process_port": dist.main_process_port,
    }
    args += [
        part
        for flag, value in overrides.items()
        if value is not None
        for part in (flag, str(value))
    ]
    return [*args, "--machine_rank", str(machine_rank), "-m", WORKER_MODULE, str(job)]


def launcher_command(dist: DistributedConfig, job: Path) -> list[str]:
    """This machine's launcher (machine 0): `accelerate launch` run by main() below."""
    return [sys.executable, "-m", __name__, *accelerate_args(dist, job, 0)]


def join_command(dist: DistributedConfig, job: Path) -> str:
    """What every other machine runs, with its rank in place of MACHINE_RANK."""
    return " ".join(["accelerate", "launch", *accelerate_args(dist, job, "MACHINE_RANK")])


def die_with_parent() -> None:
    """Ask Linux to end this process when the one that started it dies: a worker left running
    after the pipeline was killed would go on writing into the staging folder of the rerun."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


# A Python exception's last line, as a worker prints it (torchrun prefixes "[rankN]: ").
ERROR_LINE = re.compile(r"^(\[rank\d+\]: )?([\w.]+(Error|Exception)|error): .+")


def run_workers(command: list[str], log_path: Path) -> tuple[int, str, str]:
    """Run the launcher, passing its output on to stderr and into log_path.

    Returns the exit status, the first error line and the last TAIL_LINES lines of output: the
    launcher's own report, which comes last, seldom says what went wrong in a worker."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    first_error = ""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines arrive as they are written
    with (
        log_path.open("w", encoding="utf-8") as log,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        ) as process,
    ):
        for line in process.stdout:
            log.write(line)
            tail.append(line)
            sys.stderr.write(line)
            if not first_error and ERROR_LINE.match(line):
                first_error = line.strip()
    return process.returncode, first_error, "".join(tail)


def model_for_workers(base_model: str) -> str:
    """A path or hub id that loads the same model from any worker's working directory; the
    bundled model is converted here, once, not by every worker at the same time."""
    from star_gate.backends.models import resolve_model

    resolved = resolve_model(base_model)
    return str(Path(resolved).resolve()) if Path(resolved).exists() else resolved


def write_job(
    launch_dir: Path,
    examples: list[dict],
    base_model: str,
    output_dir: Path,
    cfg: TrainConfig,
    seed: int,
    cluster,
    log_dir: Path | None = None,
    extra: dict | None = None,
) -> Path:
    """Write the examples and the job file that every worker process reads (extra: fields of
    another kind of job, as loop online's update)."""
    examples_path = launch_dir / "examples.jsonl"
    with examples_path.open("w", encoding="utf-8") as out:
        out.writelines(json.dumps(example) + "\n" for example in examples)
    job = {
        "examples": str(examples_path.resolve()),
        "base_model": model_for_workers(base_model),
        "output_dir": str(output_dir.resolve()),
        "train": cfg.model_dump(mode="json"),
        "seed": seed,
        "log_dir": str(log_dir.resolve()) if log_dir is not None else None,
        "metrics": str((launch_dir / "metrics.json").resolve()),
        "num_processes": cfg.distributed.num_processes or cluster.num_processes or 1,
        "use_cpu": bool(cluster.use_cpu),
        **(extra or {}),
    }
    job_path = launch_dir / "job.json"
    job_path.write_text(json.dumps(job, indent=1), encoding="utf-8")
    return job_path


def announce_join_command(
    dist: DistributedConfig, job: Path, machines: int, launch_dir: Path
) -> None:
    """Tell the user the command that machines 1.. must run to join."""
    command = join_command(dist, job)
    (launch_dir / "join_command.txt").write_text(command + "\n", encoding="utf-8")
    print(
        f"train: waiting for machines 1..{machines - 1}; run on each, with its rank for MACHINE_RANK "
        f"and this folder on a shared filesystem:\n  {command}",
        file=sys.stderr,
        flush=True,
    )


def finetune_launched(
    examples: list[dict],
    base_model: str,
    output_dir: Path,
    cfg: TrainConfig,
    seed: int,
    log_dir: Path | None = None,
) -> dict:
    """`finetune` (finetune.py) in worker processes: same arguments, same checkpoint, same metrics.

    Raises:
        RuntimeError: the workers failed (with the end of their output) or saved no checkpoint.
    """
    return _launch(examples, base_model, output_dir, cfg, seed, log_dir)


def online_update_launched(
    examples: list[dict],
    policy: str,
    reference: str,
    output_dir: Path,
    online: OnlineConfig,
    cfg: TrainConfig,
    seed: int,
) -> dict:
    """training/online.policy_update in worker processes (loop online): each takes its share of
    the examples and the gradients are summed, so the step is the one a single process takes."""
    extra = {
        "kind": "online",
        "policy": model_for_workers(policy),
        "online": online.model_dump(mode="json"),
    }
    return _launch(examples, reference, output_dir, cfg, seed, extra=extra)


def _launch(examples, base_model, output_dir, cfg, seed, log_dir=None, extra=None) -> dict:
    """Write the job, start the workers on it, wait, and return the metrics the main worker
    wrote."""
    dist = cfg.distributed
    cluster = read_accelerate_config(dist)
    launch_dir = output_dir / "launch"
    launch_dir.mkdir(parents=True)
    job = write_job(
        launch_dir, examples, base_model, output_dir, cfg, seed, cluster, log_dir, extra
    )
    if machines(dist, cluster) > 1:
        announce_join_command(dist, job, machines(dist, cluster), launch_dir)
    log_path = launch_dir / "workers.log"
    status, first_error, tail = run_workers(launcher_command(dist, job), log_path)
    if status != 0:
        raise RuntimeError(
            f"training workers failed with exit status {status}: {first_error or 'see the log'} "
            f"(log: {log_path}); last lines:\n{tail}"
        )
    metrics_path = launch_dir / "metrics.json"
    if not metrics_path.is_file() or not (output_dir / "config.json").is_file():
        raise RuntimeError(
            f"training workers exited without saving a checkpoint in {output_dir} (log: {log_path})"
        )
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    shutil.rmtree(launch_dir)  # the checkpoint folder holds the model and nothing else
    return metrics


def main() -> None:
    """`python -m star_gate.training.launch ARGS` is `accelerate launch ARGS`, ended (with its
    workers) when the pipeline that started it dies."""
    die_with_parent()
    from accelerate.commands.launch import main as accelerate_launch

    sys.argv = ["accelerate launch", *sys.argv[1:]]
    accelerate_launch()


if __name__ == "__main__":
    main()
