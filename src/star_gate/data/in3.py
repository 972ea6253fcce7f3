"""Import IN3 (Tell Me More!, Qian et al. 2024) as a dataset folder: `star-gate data import-in3`.

Each IN3 task becomes a task; each of its simulated users is one seeded draw of one option per
missing detail, so a user belongs to one task (splits list pairs). The user's hidden facts read
like "Duration of the trip: 1 week". details.jsonl keeps what the `details` reward and the IN3
roleplayer need (vague flag, category, each detail with its importance, inquiry, options and the
user's choice); no gold answers are written, since that reward needs none.

The validation split is a fixed fifth of the tasks, chosen by a hash of the task text (not by the
seed), so that the detail matcher is calibrated on the same tasks that training uses and never
on the validation ones.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from star_gate.data.checks import NEAR_DUPLICATE, near_duplicates
from star_gate.data.jsonl import DataError, read_jsonl, write_jsonl
from star_gate.data.records import MissingDetail, PairDetails, Persona, Task

BUNDLED_IN3 = "bundled"
NO_DETAILS = "No further preferences beyond the request."


def bundled_in3_path() -> Path:
    """The IN3 training split that ships with the package (Apache-2.0, attribution kept)."""
    return Path(str(importlib.resources.files("star_gate.data") / "bundled_in3" / "train.jsonl"))


def is_held_out(task_text: str) -> bool:
    """Whether a task belongs to the validation fifth: fixed by its text, whatever the seed."""
    return int(hashlib.sha256(task_text.encode("utf-8")).hexdigest(), 16) % 5 == 0


@dataclass(frozen=True)
class In3Task:
    line: int
    text: str
    vague: bool
    category: str
    details: tuple[dict, ...]  # description, importance (int), inquiry, options (tuple)


def read_in3(path: Path) -> list[In3Task]:
    """Every row of an IN3 JSONL file, checked field by field.

    Raises:
        DataError: naming the file, the line and the field of the first bad row.
    """
    tasks = [_in3_task(path, number, row) for number, row in read_jsonl(path)]
    if not tasks:
        raise DataError(path, None, "no tasks")
    return tasks


def _in3_task(path: Path, number: int, row: dict) -> In3Task:
    for key, kind, name in (
        ("task", str, "a string"),
        ("vague", bool, "true or false"),
        ("missing_details", list, "a list"),
    ):
        if key not in row:
            raise DataError(path, number, f"missing field '{key}'")
        if not isinstance(row[key], kind):
            raise DataError(path, number, f"field '{key}' must be {name}")
    if not row["task"].strip():
        raise DataError(path, number, "field 'task' is empty")
    if not isinstance(row.get("category", ""), str):
        raise DataError(path, number, "field 'category' must be a string")
    if not row["vague"] and row["missing_details"]:
        raise DataError(
            path, number, "field 'missing_details': a clear task (vague false) has none"
        )
    details = tuple(
        _in3_detail(path, number, f"missing_details[{i}]", item)
        for i, item in enumerate(row["missing_details"])
    )
    return In3Task(number, row["task"].strip(), row["vague"], row.get("category", ""), details)


def _in3_detail(path: Path, number: int, where: str, item) -> dict:
    if not isinstance(item, dict):
        raise DataError(path, number, f"field '{where}' must be an object")
    for key in ("description", "inquiry"):
        if not isinstance(item.get(key), str) or not item[key].strip():
            raise DataError(path, number, f"field '{where}.{key}' must be a non-empty string")
    importance = str(item.get("importance", ""))
    if importance not in ("1", "2", "3"):
        raise DataError(path, number, f"field '{where}.importance' must be 1, 2 or 3")
    options = item.get("options")
    if (
        not isinstance(options, list)
        or not options
        or not all(isinstance(o, str) and o.strip() for o in options)
    ):
        raise DataError(
            path, number, f"field '{where}.options' must be a list of non-empty strings"
        )
    return {
        "description": item["description"].strip(),
        "importance": int(importance),
        "inquiry": item["inquiry"].strip(),
        "options": tuple(o.strip() for o in options),
    }


def without_near_duplicates(tasks: list[In3Task]) -> tuple[list[In3Task], list[int]]:
    """The tasks without those that repeat an earlier one (word-trigram Jaccard at or above the
    threshold of `data check`), and the lines dropped. IN3 repeats a few requests, and a repeat
    on both sides of the validation split would leak."""
    lines = {task.line: task for task in tasks}
    texts = {task.line: task.text for task in tasks}
    dropped = sorted({max(a, b) for a, b, _ in near_duplicates(texts, NEAR_DUPLICATE)})
    return [lines[n] for n in lines if n not in set(dropped)], dropped


def draw_users(
    task: In3Task, task_id: str, users: int, rng: random.Random
) -> list[tuple[Persona, PairDetails]]:
    """`users` simulated users of one task: each picks one option per missing detail."""
    drawn = []
    for index in range(users):
        persona_id = f"{task_id}-u{index}"
        details = tuple(
            MissingDetail(
                d["description"],
                d["importance"],
                d["inquiry"],
                d["options"],
                rng.choice(d["options"]),
            )
            for d in task.details
        )
        description = " ".join(f"{d.fact}." for d in details) or NO_DETAILS
        persona = Persona(persona_id, f"User {index + 1}", description)
        drawn.append(
            (persona, PairDetails(task_id, persona_id, task.vague, task.category, details))
        )
    return drawn


def import_in3(
    source: str | Path,
    folder: str | Path,
    users_per_task: int = 2,
    train_splits: tuple[str, ...] = ("A", "B"),
    held_out_split: str = "test",
    seed: int = 0,
) -> dict:
    """Write a dataset folder from an IN3 file ('bundled': the packaged training split).

    The held-out fifth of the tasks goes to `held_out_split`; the others are shuffled with the
    seed and dealt evenly into `train_splits`. Nothing is written unless every row is valid, and
    the folder appears whole. Returns the summary also written to `import.json`.
    """
    path = bundled_in3_path() if str(source) == BUNDLED_IN3 else Path(source)
    if not path.is_file():
        raise DataError(path, None, "file not found")
    if users_per_task < 1:
        raise ValueError("--users-per-task must be at least 1")
    if (
        not train_splits
        or held_out_split in train_splits
        or len(set(train_splits)) < len(train_splits)
    ):
        raise ValueError(
            "--splits must name distinct training splits, none of them the held-out one"
        )
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} already exists and is not empty; choose a new folder")
    in3_tasks, dropped = without_near_duplicates(read_in3(path))
    rng = random.Random(seed)
    tasks, personas, details, pairs_of = [], [], [], {}
    for task in in3_tasks:
        task_id = f"in3-{task.line:04d}"
        tasks.append(Task(task_id, task.text))
        users = draw_users(task, task_id, users_per_task, rng)
        personas += [persona for persona, _ in users]
        details += [pair for _, pair in users]
        pairs_of[task_id] = [[task_id, persona.persona_id] for persona, _ in users]
    splits = _splits(in3_tasks, tasks, pairs_of, train_splits, held_out_split, seed)
    summary = {
        "source": str(path),
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "users_per_task": users_per_task,
        "seed": seed,
        "held_out": f"{held_out_split}: tasks with sha256(text) % 5 == 0",
        "dropped_near_duplicates": dropped,
        "tasks": {name: len({t for t, _ in spec["pairs"]}) for name, spec in splits.items()},
        "pairs": {name: len(spec["pairs"]) for name, spec in splits.items()},
    }
    _write_folder(folder, tasks, personas, details, splits, summary)
    return summary


def _splits(in3_tasks, tasks, pairs_of, train_splits, held_out_split, seed) -> dict:
    held = [t.task_id for t, raw in zip(tasks, in3_tasks) if is_held_out(raw.text)]
    rest = [t.task_id for t, raw in zip(tasks, in3_tasks) if not is_held_out(raw.text)]
    random.Random(f"in3-splits-{seed}").shuffle(rest)
    dealt = {name: rest[i :: len(train_splits)] for i, name in enumerate(train_splits)}
    dealt[held_out_split] = held
    return {
        name: {"pairs": [pair for task_id in ids for pair in pairs_of[task_id]]}
        for name, ids in dealt.items()
    }


def _write_folder(folder: Path, tasks, personas, details, splits, summary) -> None:
    """All files into a temporary sibling, then one rename: a crash leaves no half folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        write_jsonl(staging / "tasks.jsonl", map(asdict, tasks))
        write_jsonl(staging / "personas.jsonl", map(asdict, personas))
        write_jsonl(staging / "details.jsonl", (d.to_json() for d in details))
        (staging / "splits.json").write_text(json.dumps(splits, indent=1) + "\n", encoding="utf-8")
        (staging / "import.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
