"""Mutations of a dataset folder for table-driven bad-input tests: each returns mutate(folder)."""

from __future__ import annotations

import json
from pathlib import Path


def edit_line(name: str, line: int, edit):
    """Replace line `line` (1-based) of `name` by edit(row): a dict, or raw text (str or bytes)."""

    def mutate(folder: Path) -> None:
        path = folder / name
        lines = path.read_bytes().split(b"\n")
        new = edit(json.loads(lines[line - 1]))
        if isinstance(new, dict):
            new = json.dumps(new, ensure_ascii=False)
        lines[line - 1] = new.encode("utf-8") if isinstance(new, str) else new
        path.write_bytes(b"\n".join(lines))

    return mutate


def without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def edit_splits(edit):
    """Apply edit(splits) to splits.json in place."""

    def mutate(folder: Path) -> None:
        path = folder / "splits.json"
        splits = json.loads(path.read_text())
        edit(splits)
        path.write_text(json.dumps(splits))

    return mutate


def drop_gold(task_id: str, persona_id: str):
    """Remove the gold answer of one pair (which must exist)."""

    def mutate(folder: Path) -> None:
        path = folder / "gold.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        kept = [r for r in rows if (r["task_id"], r["persona_id"]) != (task_id, persona_id)]
        assert len(kept) == len(rows) - 1
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    return mutate


def append_gold(task_id: str, persona_id: str):
    """Add a gold answer for one pair at the end of gold.jsonl."""

    def mutate(folder: Path) -> None:
        row = {"task_id": task_id, "persona_id": persona_id, "text": "Try the local library."}
        with (folder / "gold.jsonl").open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    return mutate
