"""Q_k against Q_0 on the tasks of a training split that a run never trained on.

The demo trains on the first `data.train_max_tasks` tasks of A and B (6 of 20 each) and leaves the
rest untouched. Those pairs (14 tasks x 8 personas of each split) are a held-out set four times the
test split's size, so Q_k − Q_0 is measured there with a smaller error bar, without looking at the
test split. The tasks are new to every model; the personas are not: Q_1 trained on conversations
with A's personas, Q_2 with B's. (A questioner never sees the persona, only the roleplayer's
replies; still, the test split, whose tasks and personas are both new, stays the clean measure.)

Writes a dataset folder (the run's own files, plus a split `<SPLIT>_untrained`) and an evaluation
config under OUT, then runs `star-gate eval` there: Q_0, then Q_1, Q_2, ... of the first run, then
those of each further run (same config, other seeds), log-probs only, `--conversations` per pair.
Rerunning resumes.

    python benchmarks/untrained_tasks.py RUN_DIR [RUN_DIR ...] --split A --out runs/untrained-A
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from star_gate.config import load_config
from star_gate.data.loaders import resolve_dataset_path
from star_gate.rundir import Layout

DATA_FILES = ("tasks.jsonl", "personas.jsonl", "gold.jsonl", "splits.json")


def write_dataset(source: Path, target: Path, split: str, trained_tasks: int) -> str:
    """Copy the dataset, keep in `split` the first `trained_tasks` tasks, and add a split of the
    pairs of the tasks after them; its name. The new split is written as pairs: splits given as
    tasks and personas may share neither (data/loaders.py), and these pairs share their
    personas with the training split on purpose."""
    splits = json.loads((source / "splits.json").read_text())
    untrained = splits[split]["tasks"][trained_tasks:]
    if not untrained:
        sys.exit(f"split {split} has no task after the {trained_tasks} the run trains on")
    target.mkdir(parents=True, exist_ok=True)
    for name in DATA_FILES:
        shutil.copyfile(source / name, target / name)
    name = f"{split}_untrained"
    personas = splits[split]["personas"]
    splits[split] = {"tasks": splits[split]["tasks"][:trained_tasks], "personas": personas}
    splits[name] = {"pairs": [[task, persona] for task in untrained for persona in personas]}
    (target / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
    return name


def checkpoints(run: Path) -> list[Path]:
    found = Layout.checkpoints(run)
    if not found:
        sys.exit(f"{run} has no iter_k/checkpoint")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--split", default="A", help="a training split of the runs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--conversations", type=int, default=3, help="test conversations per pair")
    args = parser.parse_args()
    first = args.runs[0]
    config = load_config(first / "config.yaml")
    if args.split not in config.data.train_splits:
        sys.exit(f"{args.split} is not a training split of {first}: {config.data.train_splits}")
    trained_tasks, trained_personas = config.data.limits(args.split)
    if trained_tasks is None:
        sys.exit(f"{first} trains on every task of {args.split}: none is left untrained")
    out = args.out.resolve()
    source = resolve_dataset_path(config.data.path)
    split = write_dataset(source, out / "data", args.split, trained_tasks)
    overrides = {
        "base": str((first / "config.yaml").resolve()),
        "run_dir": str(out / "run"),
        "data": {
            "path": str(out / "data"),
            "test_split": split,
            "max_tasks": None,
            "max_personas": trained_personas,
        },
        "evaluate": {
            "conversations_per_pair": args.conversations,
            "random_persona": False,
            "win_rates": False,
        },
    }
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump(overrides, sort_keys=False))
    # the star-gate of this interpreter's environment, even when it is not on PATH
    star_gate = shutil.which("star-gate", path=str(Path(sys.executable).parent)) or "star-gate"
    command = [star_gate, "eval", str(config_path), "--from", str(first)]
    for run in args.runs[1:]:
        for checkpoint in checkpoints(run):
            command += ["--checkpoint", str(checkpoint)]
    print(" ".join(command), flush=True)
    sys.exit(subprocess.call(command))


if __name__ == "__main__":
    main()
