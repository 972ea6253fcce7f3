"""Build a persona–task–gold dataset for any domain: `star-gate data tasks | personas | gold`.

Each step adds files to one dataset folder and records what it did in `build.json`:
    tasks     import requests (JSONL, CSV, text, or a hub dataset's column), de-duplicate, split
    personas  the oracle writes new personas; each call is shown two random seed personas
    gold      the oracle writes the gold answer for every (task, persona) pair of the splits
Model output is saved after every chunk of calls and a rerun continues where the last one stopped,
so a crash or Ctrl-C never pays twice for the same call. Once all three steps have run, the folder
loads with `load_dataset` like the bundled one.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from star_gate.backends.base import Backend, SamplingParams
from star_gate.data.checks import NEAR_DUPLICATE, jaccard, shingles
from star_gate.data.jsonl import DataError, atomic_write_text, read_jsonl, write_jsonl
from star_gate.data.loaders import load_gold, load_personas, load_tasks
from star_gate.data.records import Gold, Persona, Task
from star_gate.roles.prompts import PromptTemplate
from star_gate.roles.views import oracle_chat, persona_writer_chat

_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_NAME = re.compile(
    r"(?:[Mm]y name is|I am|I'm|Meet|[Nn]ame:|named)\s+([A-Z][\w'-]+(?:\s+[A-Z][\w'-]+)?)"
)

Say = Callable[[str], None]


# -- importing requests ---------------------------------------------------------------------------
def read_requests(source: str, column: str = "text", hub_split: str = "train") -> list[str]:
    """Request texts from a local .jsonl/.csv/.txt file, a local dataset folder, or a hub dataset."""
    path = Path(source)
    if path.is_file():
        return _read_request_file(path, column)
    if path.is_dir() or (_HUB_ID.fullmatch(source) and not path.suffix):
        return _read_hub_column(source, column, hub_split)
    raise DataError(path, None, "file not found (and not a hub dataset id like 'owner/name')")


def _read_request_file(path: Path, column: str) -> list[str]:
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if column not in (reader.fieldnames or []):
                raise DataError(
                    path, 1, f"field '{column}': no such column; columns are {reader.fieldnames}"
                )
            return [row[column] or "" for row in reader]
    if path.suffix == ".jsonl":
        texts = []
        for number, row in read_jsonl(path):
            if not isinstance(row.get(column), str):
                problem = "missing" if column not in row else "not a string"
                raise DataError(path, number, f"field '{column}' is {problem}")
            texts.append(row[column])
        return texts
    raise DataError(path, None, "unsupported file type; use .jsonl, .csv or .txt")


def _read_hub_column(name: str, column: str, split: str) -> list[str]:
    import datasets

    try:
        table = datasets.load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 (no network, unknown id, bad split: the user must fix it)
        raise DataError(
            name, None, f"could not load dataset split {split!r}: {type(err).__name__}: {err}"
        ) from None
    if column not in table.column_names:
        raise DataError(
            name, None, f"field '{column}': no such column; columns are {table.column_names}"
        )
    return [value if isinstance(value, str) else "" for value in table[column]]


def extract_requests(texts: Sequence[str], pattern: str) -> list[str]:
    """The first capture group of `pattern` in each text (the whole match if it has no group);
    a text it does not match becomes empty, which dedupe then drops and counts.

    Example: rows like "Human: Recommend me a book. Assistant: ..." (the paper's source dataset)
    with the pattern Human:\\s*(.*?)\\s*Assistant: give "Recommend me a book.".
    """
    try:
        regex = re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise ValueError(
            f"--extract {pattern!r} is not a valid regular expression ({err})"
        ) from None
    found = (regex.search(text) for text in texts)
    return [
        (match.group(1) if regex.groups else match.group(0)) or "" if match else ""
        for match in found
    ]


def dedupe(
    texts: Sequence[str], wanted: int, threshold: float = NEAR_DUPLICATE
) -> tuple[list[str], int]:
    """The first `wanted` texts that are neither empty nor near-duplicates of an earlier kept one,
    with whitespace normalised; also how many were dropped on the way."""
    kept: list[str] = []
    seen: list[set] = []
    dropped = 0
    for raw in texts:
        text = " ".join(raw.split())
        grams = shingles(text)
        if not text or any(jaccard(grams, other) >= threshold for other in seen):
            dropped += 1
            continue
        kept.append(text)
        seen.append(grams)
        if len(kept) == wanted:
            break
    return kept, dropped


def parse_split_sizes(spec: str) -> dict[str, int]:
    """'A=20,B=20,test=10' -> {'A': 20, 'B': 20, 'test': 10}."""
    sizes = {}
    for part in spec.split(","):
        name, _, count = part.partition("=")
        if not name.strip() or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(
                f"bad split size {part!r}: write NAME=COUNT with COUNT >= 1, e.g. A=20,B=20,test=10"
            )
        sizes[name.strip()] = int(count)
    return sizes


def assign_splits(ids: Sequence[str], sizes: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Shuffle ids with the seed and cut them into disjoint splits of the given sizes."""
    order = list(ids)
    random.Random(seed).shuffle(order)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = sorted(order[start : start + size])
        start += size
    return splits


def persona_name(description: str, fallback: str) -> str:
    match = _NAME.search(description)
    return match.group(1) if match else fallback


# -- the dataset folder being built -------------------------------------------------------------
class DatasetFolder:
    """tasks.jsonl, personas.jsonl, gold.jsonl, splits.json and build.json, each written atomically."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.build_path = self.root / "build.json"
        self.build = (
            json.loads(self.build_path.read_text(encoding="utf-8"))
            if self.build_path.exists()
            else {}
        )

    def file(self, name: str) -> Path:
        return self.root / name

    def tasks(self) -> dict[str, Task]:
        return load_tasks(self.file("tasks.jsonl")) if self.file("tasks.jsonl").exists() else {}

    def personas(self) -> dict[str, Persona]:
        return (
            load_personas(self.file("personas.jsonl"))
            if self.file("personas.jsonl").exists()
            else {}
        )

    def gold(self) -> dict[tuple[str, str], Gold]:
        path = self.file("gold.jsonl")
        return load_gold(path, self.tasks(), self.personas()) if path.exists() else {}

    def splits(self) -> dict[str, dict[str, list[str]]]:
        path = self.file("splits.json")
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def require_splits(self) -> dict[str, dict[str, list[str]]]:
        splits = self.splits()
        if not splits:
            raise DataError(
                self.file("splits.json"), None, "file not found; run `star-gate data tasks` first"
            )
        return splits

    def write_splits(self, splits: dict) -> None:
        atomic_write_text(self.file("splits.json"), json.dumps(splits, indent=1) + "\n")

    def record(self, step: str, **info) -> None:
        """Note in build.json what a step did (merged into what earlier runs of it noted)."""
        self.build[step] = {
            **self.build.get(step, {}),
            **info,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(self.build_path, json.dumps(self.build, indent=2) + "\n")


@dataclass
class StepResult:
    added: int  # records written by this call
    calls: int  # model calls (prompts sent) made by this call


# -- tasks -----------------------------------------------------------------------------------------
def build_tasks(
    folder: DatasetFolder,
    texts: Sequence[str],
    sizes: dict[str, int],
    seed: int,
    source: str,
    say: Say = print,
    extract: str = "",
) -> StepResult:
    """Keep the first sum(sizes) distinct requests as tasks and split them. Makes no model calls.

    extract: a regular expression whose first group is the request within each text (see
    extract_requests); empty means each text is the request.
    """
    settings = {"source": source, "sizes": sizes, "seed": seed}
    if extract:
        settings["extract"] = extract
        texts = extract_requests(texts, extract)
    if folder.file("tasks.jsonl").exists():
        done = folder.build.get("tasks", {})
        if {k: done.get(k) for k in settings} == settings:
            say(f"tasks: already built in {folder.root} (0 model calls)")
            return StepResult(0, 0)
        raise DataError(
            folder.file("tasks.jsonl"), None, "already built with other settings; use a new folder"
        )
    wanted = sum(sizes.values())
    kept, dropped = dedupe(texts, wanted)
    if len(kept) < wanted:
        raise DataError(
            source, None, f"only {len(kept)} distinct requests, but the splits need {wanted}"
        )
    say(
        f"tasks: 0 model calls; kept the first {wanted} distinct requests, dropped {dropped} empty or near-duplicate"
    )
    ids = [f"task_{i:04d}" for i in range(1, wanted + 1)]
    write_jsonl(folder.file("tasks.jsonl"), ({"task_id": i, "text": t} for i, t in zip(ids, kept)))
    splits = {
        name: {"tasks": task_ids, "personas": []}
        for name, task_ids in assign_splits(ids, sizes, seed).items()
    }
    folder.write_splits(splits)
    folder.record("tasks", **settings, count=wanted, dropped=dropped)
    return StepResult(wanted, 0)


# -- personas --------------------------------------------------------------------------------------
def plan_personas(folder: DatasetFolder, seeds: Sequence[Persona], sizes: dict[str, int]) -> int:
    """How many personas are still to write; refuses (before any model loads) what cannot work."""
    if len(seeds) < 2:
        raise ValueError("persona generation needs at least 2 seed personas")
    splits = folder.require_splits()
    if set(sizes) - set(splits):
        raise ValueError(
            f"persona splits {sorted(set(sizes) - set(splits))} have no tasks; the task splits are {sorted(splits)}"
        )
    wanted, written = sum(sizes.values()), len(folder.personas())
    if written > wanted:
        raise DataError(
            folder.file("personas.jsonl"),
            None,
            f"holds {written} personas, more than the {wanted} asked for",
        )
    return wanted - written


def build_personas(
    folder: DatasetFolder,
    oracle: Backend | None,
    template: PromptTemplate,
    seeds: Sequence[Persona],
    sizes: dict[str, int],
    params: SamplingParams,
    seed: int = 0,
    chunk: int = 8,
    say: Say = print,
) -> StepResult:
    """Write sum(sizes) new personas with the oracle, then split them.

    Every call shows two seed personas drawn at random. A draft that is too short or a near-duplicate
    of a seed or an accepted persona is dropped and another call made, up to three calls per persona.
    `oracle` may be None when every persona is already written (a rerun only finishes the split).
    """
    to_write = plan_personas(folder, seeds, sizes)
    wanted = sum(sizes.values())
    personas = list(folder.personas().values())
    attempts = folder.build.get("personas", {}).get("attempts", 0)
    budget = attempts + 3 * to_write  # each run may retry; a rerun gets a fresh allowance
    say(
        f"personas: {to_write} model calls planned, at most {budget - attempts} with retries "
        f"({len(personas)} of {wanted} personas already written)"
    )
    accepted_grams = [shingles(p.description) for p in (*seeds, *personas)]
    calls = 0
    while len(personas) < wanted:
        if attempts >= budget:
            raise RuntimeError(
                f"gave up after {attempts} calls: only {len(personas)} of {wanted} personas were usable"
            )
        batch = min(chunk, wanted - len(personas), budget - attempts)
        shown = [
            random.Random(f"{seed}|{index}").sample(list(seeds), 2)
            for index in range(attempts, attempts + batch)
        ]
        chats = [persona_writer_chat(template, *pair) for pair in shown]
        drafts = oracle.generate(
            chats, dataclasses.replace(params, seed=seed * 1_000_003 + attempts)
        )
        attempts += batch
        calls += batch
        for (draft,), examples in zip(drafts, shown):
            text = " ".join(draft.split())
            if len(personas) < wanted and _usable_persona(text, examples, accepted_grams):
                ident = f"persona_{len(personas) + 1:04d}"
                personas.append(Persona(ident, persona_name(text, ident), text))
                accepted_grams.append(shingles(text))
        _write_personas(folder, personas)
        folder.record(
            "personas", attempts=attempts, count=len(personas), oracle=oracle.name, seed=seed
        )
    splits = folder.splits()
    if not any(spec["personas"] for spec in splits.values()):
        for name, ids in assign_splits([p.persona_id for p in personas], sizes, seed).items():
            splits[name]["personas"] = ids
        folder.write_splits(splits)
    say(
        f"personas: {len(personas)} in {folder.root} ({calls} model calls made now, {attempts} in all)"
    )
    return StepResult(to_write, calls)


def _usable_persona(text: str, examples: Sequence[Persona], accepted_grams: list[set]) -> bool:
    """Long enough, not one of the examples retold (small models copy them), not a near-duplicate."""
    if len(text.split()) < 25 or any(example.name in text for example in examples):
        return False
    grams = shingles(text)
    return all(jaccard(grams, other) < NEAR_DUPLICATE for other in accepted_grams)


def _write_personas(folder: DatasetFolder, personas: Sequence[Persona]) -> None:
    rows = (
        {"persona_id": p.persona_id, "name": p.name, "description": p.description} for p in personas
    )
    write_jsonl(folder.file("personas.jsonl"), rows)


# -- gold ------------------------------------------------------------------------------------------
def plan_gold(
    folder: DatasetFolder, split_names: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """The (task, persona) pairs of the splits that have no gold answer yet."""
    splits = folder.require_splits()
    names = list(split_names or splits)
    for name in names:
        if name not in splits or not splits[name]["personas"]:
            raise DataError(
                folder.file("splits.json"),
                None,
                f"split {name!r} has no personas yet; run `star-gate data personas` first",
            )
    gold = folder.gold()
    return [
        (task_id, persona_id)
        for name in names
        for task_id in splits[name]["tasks"]
        for persona_id in splits[name]["personas"]
        if (task_id, persona_id) not in gold
    ]


def build_gold(
    folder: DatasetFolder,
    oracle: Backend,
    template: PromptTemplate,
    params: SamplingParams,
    split_names: Sequence[str] | None = None,
    chunk: int = 16,
    say: Say = print,
) -> StepResult:
    """The oracle's answer for every (task, persona) pair of the splits that has none yet."""
    pending = plan_gold(folder, split_names)
    tasks, personas, gold = folder.tasks(), folder.personas(), folder.gold()
    say(f"gold: {len(pending)} model calls ({len(gold)} answers already written)")
    for start in range(0, len(pending), chunk):
        keys = pending[start : start + chunk]
        chats = [oracle_chat(template, personas[p], tasks[t].text) for t, p in keys]
        answers = oracle.generate(chats, params)
        for (task_id, persona_id), (answer,) in zip(keys, answers):
            if (
                answer.strip()
            ):  # an empty answer stays pending: a rerun (or another oracle) retries it
                gold[task_id, persona_id] = Gold(task_id, persona_id, answer.strip(), oracle.name)
        _write_gold(folder, gold.values())
        folder.record(
            "gold",
            count=len(gold),
            oracle=oracle.name,
            template=f"{template.name} v{template.version}",
        )
        say(f"gold: {len(gold)} answers written")
    empty = sum(key not in gold for key in pending)
    if empty:
        say(f"gold: {empty} answers came back empty and are still missing; rerun to retry them")
    return StepResult(len(pending) - empty, len(pending))


def _write_gold(folder: DatasetFolder, gold: Sequence[Gold]) -> None:
    rows = (
        {"task_id": g.task_id, "persona_id": g.persona_id, "text": g.text, "oracle": g.oracle}
        for g in gold
    )
    write_jsonl(folder.file("gold.jsonl"), rows)
