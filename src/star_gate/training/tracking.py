"""Logs to watch a run by (train.report_to): the trainer's own curves (loss, learning rate, DPO's
rewards), through transformers' callbacks, and once per iteration the pipeline's numbers
(RunResults.iteration_metrics). Everything goes under the run directory's logs/."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from star_gate.config import ConfigError

TRACKERS = ("tensorboard", "wandb", "trackio")
PROJECT = "star-gate"  # the wandb and trackio project


def check_tracker(report_to: str) -> None:
    """Refuse, before a run, a tracker whose package is missing (the config stays valid without it)."""
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise ConfigError(
            f"train.report_to is '{report_to}' but the {report_to} package is not installed; install it "
            f"with pip install {report_to}, or set train.report_to: none"
        )


@contextmanager
def trainer_logging(report_to: str, log_dir: Path | None) -> Iterator[list[str]]:
    """The Trainer's report_to list, with its callbacks pointed at log_dir for the duration."""
    if report_to == "none" or log_dir is None:
        yield []
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    variable = {
        "tensorboard": "TENSORBOARD_LOGGING_DIR",
        "wandb": "WANDB_DIR",
        "trackio": "TRACKIO_DIR",
    }[report_to]
    before = os.environ.get(variable)
    os.environ[variable] = str(log_dir)
    try:
        yield [report_to]
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before


class PipelineLog:
    """The pipeline's numbers, one step per iteration, in the run's tracker."""

    def __init__(self, report_to: str, log_dir: Path, run_name: str):
        self.report_to = report_to
        self._writer = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))
        elif report_to in ("wandb", "trackio"):
            log_dir.mkdir(parents=True, exist_ok=True)
            self._tracker = __import__(report_to)
            options = {"dir": str(log_dir)} if report_to == "wandb" else {}
            self._tracker.init(project=PROJECT, name=run_name, **options)

    def log(self, metrics: dict[str, float], iteration: int) -> None:
        """Log one iteration's numbers."""
        if self.report_to == "tensorboard":
            for name, value in metrics.items():
                self._writer.add_scalar(name, value, global_step=iteration)
            self._writer.flush()
        elif self.report_to in ("wandb", "trackio"):
            # The trainer's own steps share the run: the iteration goes in as a metric, not a step.
            self._tracker.log({**metrics, "iteration": iteration})

    def close(self) -> None:
        """Flush and close the tracker."""
        if self._writer is not None:
            self._writer.close()
        elif self.report_to in ("wandb", "trackio"):
            self._tracker.finish()
