"""Load and validate a dataset folder: tasks.jsonl, personas.jsonl, gold.jsonl, splits.json,
and, for a dataset scored by missing details (IN3), details.jsonl.

Schemas (one JSON object per line):
    tasks.jsonl     {"task_id": str, "text": str}
    personas.jsonl  {"persona_id": str, "name": str, "description": str}
    gold.jsonl      {"task_id": str, "persona_id": str, "text": str, "oracle": str}
    details.jsonl   {"task_id": str, "persona_id": str, "vague": bool, "category": str,
                     "details": [{"description": str, "importance": 1-3, "inquiry": str,
                                  "options": [str], "choice": str (one of the options)}]}
    splits.json     {"A": {"tasks": [ids], "personas": [ids]}, "B": {...}, "test": {...}}
                    or, per split, {"pairs": [[task_id, persona_id], ...]}

gold.jsonl may be left out when details.jsonl is there (`score.reward: details` needs no gold).
Every pair of a split needs its gold when gold.jsonl exists, and its details when details.jsonl
does.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

from star_gate.data.jsonl import DataError, read_jsonl
from star_gate.data.records import (
    Dataset,
    Gold,
    MissingDetail,
    PairDetails,
    Persona,
    Task,
    split_pair_ids,
)

BUNDLED = "bundled"

_SCHEMAS: dict[str, dict[str, type]] = {
    "tasks.jsonl": {"task_id": str, "text": str},
    "personas.jsonl": {"persona_id": str, "name": str, "description": str},
    "gold.jsonl": {"task_id": str, "persona_id": str, "text": str},
}
_OPTIONAL = {"gold.jsonl": {"oracle": str}}


def bundled_path() -> Path:
    return Path(str(importlib.resources.files("star_gate.data") / "bundled"))


def resolve_dataset_path(path: str | Path) -> Path:
    return bundled_path() if str(path) == BUNDLED else Path(path)


def _validated_rows(path: Path) -> list[tuple[int, dict]]:
    schema, optional = _SCHEMAS[path.name], _OPTIONAL.get(path.name, {})
    rows = []
    for number, row in read_jsonl(path):
        for key, kind in schema.items():
            if key not in row:
                raise DataError(path, number, f"missing field '{key}'")
            if not isinstance(row[key], kind):
                raise DataError(path, number, f"field '{key}' must be a string")
            if not row[key].strip():
                raise DataError(path, number, f"field '{key}' is empty")
        for key in row.keys() - schema.keys() - optional.keys():
            raise DataError(path, number, f"unknown field '{key}'")
        for key, kind in optional.items():
            if key in row and not isinstance(row[key], kind):
                raise DataError(path, number, f"field '{key}' must be a string")
        rows.append((number, row))
    return rows


def _unique(path: Path, rows: list[tuple[int, dict]], *fields: str) -> dict:
    """Index rows by the value of `fields` (a tuple of values when there are several)."""
    seen: dict = {}
    for number, row in rows:
        ident = row[fields[0]] if len(fields) == 1 else tuple(row[f] for f in fields)
        if ident in seen:
            names = ", ".join(f"'{f}'" for f in fields)
            label = "field" if len(fields) == 1 else "fields"
            raise DataError(
                path,
                number,
                f"{label} {names}: duplicate id {ident!r} (first on line {seen[ident][0]})",
            )
        seen[ident] = (number, row)
    return seen


def load_tasks(path: Path) -> dict[str, Task]:
    rows = _unique(path, _validated_rows(path), "task_id")
    return {k: Task(r["task_id"], r["text"]) for k, (_, r) in rows.items()}


def load_personas(path: Path) -> dict[str, Persona]:
    rows = _unique(path, _validated_rows(path), "persona_id")
    return {k: Persona(r["persona_id"], r["name"], r["description"]) for k, (_, r) in rows.items()}


def load_gold(
    path: Path, tasks: dict[str, Task], personas: dict[str, Persona]
) -> dict[tuple[str, str], Gold]:
    """Gold answers keyed by (task_id, persona_id); every id must name a known task and persona."""
    gold = {}
    for key, (number, row) in _unique(path, _validated_rows(path), "task_id", "persona_id").items():
        if row["task_id"] not in tasks:
            raise DataError(path, number, f"field 'task_id': unknown task {row['task_id']!r}")
        if row["persona_id"] not in personas:
            raise DataError(
                path, number, f"field 'persona_id': unknown persona {row['persona_id']!r}"
            )
        gold[key] = Gold(
            row["task_id"], row["persona_id"], row["text"], row.get("oracle", "unknown")
        )
    return gold


def load_dataset(path: str | Path = BUNDLED) -> Dataset:
    """Read and cross-check a dataset folder.

    Raises:
        DataError: naming file, line and field for the first problem found.
    """
    root = resolve_dataset_path(path)
    if not root.is_dir():
        raise DataError(root, None, "dataset folder not found")
    tasks_path, personas_path, gold_path = (root / n for n in _SCHEMAS)
    details_path = root / DETAILS
    tasks = load_tasks(tasks_path)
    personas = load_personas(personas_path)
    has_gold = gold_path.exists() or not details_path.exists()  # no details: gold is required
    gold = load_gold(gold_path, tasks, personas) if has_gold else {}
    details = load_details(details_path, tasks, personas) if details_path.exists() else {}
    splits = _load_splits(root / "splits.json", tasks, personas)
    _check_disjoint(root / "splits.json", splits)
    if has_gold:
        _check_gold_in_splits(gold_path, gold, splits)
    for name, spec in splits.items():
        for key in split_pair_ids(spec):
            if has_gold and key not in gold:
                raise DataError(
                    root / "splits.json",
                    None,
                    f"split '{name}': no gold response for pair ({key[0]}, {key[1]})",
                )
            if details_path.exists() and key not in details:
                raise DataError(
                    root / "splits.json",
                    None,
                    f"split '{name}': no missing details for pair ({key[0]}, {key[1]})",
                )
    return Dataset(tasks, personas, gold, splits, details)


def _check_disjoint(path: Path, splits: dict[str, dict]) -> None:
    """No task or persona (no pair, for splits given as pairs) belongs to two splits: a test
    split must hold people and requests that training never saw."""
    names = list(splits)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = splits[first], splits[second]
            fields = ("tasks", "personas") if "pairs" not in a and "pairs" not in b else ()
            for field_name in fields:
                shared = sorted(set(a[field_name]) & set(b[field_name]))
                if shared:
                    raise DataError(
                        path,
                        _line_of(path, shared[0], second),
                        f"split '{second}' field '{field_name}': {shared[0]!r} is also in "
                        f"split '{first}'; splits must not share {field_name}",
                    )
            if not fields and (shared := set(split_pair_ids(a)) & set(split_pair_ids(b))):
                pair = min(shared)
                raise DataError(
                    path, None, f"split '{second}' field 'pairs': {pair} is also in '{first}'"
                )


def _check_gold_in_splits(path: Path, gold: dict, splits: dict[str, dict]) -> None:
    """Every gold answer belongs to a pair of some split: one that belongs to none is a typo in
    an id or a split, and would silently never be used."""
    in_splits = {key for spec in splits.values() for key in split_pair_ids(spec)}
    stray = [key for key in gold if key not in in_splits]
    if stray:
        line = next(
            number
            for number, row in read_jsonl(path)
            if (row.get("task_id"), row.get("persona_id")) == stray[0]
        )
        raise DataError(
            path,
            line,
            f"fields 'task_id', 'persona_id': pair ({stray[0][0]}, {stray[0][1]}) is in no split",
        )


def _line_of(path: Path, ident: str, split: str) -> int | None:
    """The line of splits.json where `ident` is listed under `split` (None if not found)."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        inside = inside or f'"{split}"' in line
        if inside and f'"{ident}"' in line:
            return number
    return None


DETAILS = "details.jsonl"
_KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
_DETAIL_FIELDS = {
    "description": str,
    "importance": int,
    "inquiry": str,
    "options": list,
    "choice": str,
}


def load_details(
    path: Path, tasks: dict[str, Task], personas: dict[str, Persona]
) -> dict[tuple[str, str], PairDetails]:
    """Missing details keyed by (task_id, persona_id), each checked field by field."""
    rows = list(read_jsonl(path))
    records = {number: _pair_details(path, number, row, tasks, personas) for number, row in rows}
    return {
        key: records[number]
        for key, (number, _) in _unique(path, rows, "task_id", "persona_id").items()
    }


def _pair_details(path, number, row, tasks, personas) -> PairDetails:
    schema = {"task_id": str, "persona_id": str, "vague": bool, "category": str, "details": list}
    for key, kind in schema.items():
        if key not in row:
            raise DataError(path, number, f"missing field '{key}'")
        if not isinstance(row[key], kind):
            raise DataError(path, number, f"field '{key}' must be {_KIND_NAMES[kind]}")
    for key in row.keys() - schema.keys():
        raise DataError(path, number, f"unknown field '{key}'")
    if row["task_id"] not in tasks:
        raise DataError(path, number, f"field 'task_id': unknown task {row['task_id']!r}")
    if row["persona_id"] not in personas:
        raise DataError(path, number, f"field 'persona_id': unknown persona {row['persona_id']!r}")
    if not row["vague"] and row["details"]:
        raise DataError(path, number, "field 'details': a clear task (vague false) has none")
    details = tuple(
        _missing_detail(path, number, f"details[{i}]", item)
        for i, item in enumerate(row["details"])
    )
    return PairDetails(row["task_id"], row["persona_id"], row["vague"], row["category"], details)


def _missing_detail(path, number, where: str, item) -> MissingDetail:
    if not isinstance(item, dict):
        raise DataError(path, number, f"field '{where}' must be an object")
    for key, kind in _DETAIL_FIELDS.items():
        value = item.get(key)
        if value is None:
            raise DataError(path, number, f"field '{where}.{key}' is missing")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(path, number, f"field '{where}.{key}' must be {_KIND_NAMES[kind]}")
    for key in item.keys() - _DETAIL_FIELDS.keys():
        raise DataError(path, number, f"field '{where}': unknown field '{key}'")
    if item["importance"] not in (1, 2, 3):
        raise DataError(path, number, f"field '{where}.importance' must be 1, 2 or 3")
    options = item["options"]
    if not options or not all(isinstance(o, str) and o.strip() for o in options):
        raise DataError(path, number, f"field '{where}.options' must be non-empty strings")
    if item["choice"] not in options:
        raise DataError(path, number, f"field '{where}.choice' is not one of its options")
    if not item["description"].strip():
        raise DataError(path, number, f"field '{where}.description' is empty")
    return MissingDetail(
        item["description"], item["importance"], item["inquiry"], tuple(options), item["choice"]
    )


def _load_splits(path: Path, tasks, personas) -> dict[str, dict[str, list]]:
    try:
        raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a byte-order mark is no error
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except OSError as err:
        raise DataError(path, None, f"cannot be read ({err.strerror})") from None
    try:
        splits = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(path, line, f"invalid UTF-8 at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, f"not valid JSON ({err.msg})") from None
    if not isinstance(splits, dict):
        raise DataError(
            path, None, "expected an object mapping split names to task and persona ids"
        )
    for name, spec in splits.items():
        if isinstance(spec, dict) and set(spec) == {"pairs"}:
            _check_pair_list(path, name, spec["pairs"], tasks, personas)
            continue
        if not isinstance(spec, dict) or set(spec) != {"tasks", "personas"}:
            raise DataError(
                path, None, f"split '{name}' must have exactly 'tasks' and 'personas', or 'pairs'"
            )
        for field_name, known in (("tasks", tasks), ("personas", personas)):
            ids = spec[field_name]
            if not isinstance(ids, list) or not ids:
                raise DataError(
                    path, None, f"split '{name}' field '{field_name}' must be a non-empty list"
                )
            for ident in ids:
                if not isinstance(ident, str) or ident not in known:
                    raise DataError(
                        path, None, f"split '{name}' field '{field_name}': unknown id {ident!r}"
                    )
    return splits


def _check_pair_list(path: Path, name: str, pairs, tasks, personas) -> None:
    if not isinstance(pairs, list) or not pairs:
        raise DataError(path, None, f"split '{name}' field 'pairs' must be a non-empty list")
    for index, item in enumerate(pairs):
        if not (
            isinstance(item, list) and len(item) == 2 and all(isinstance(i, str) for i in item)
        ):
            raise DataError(
                path, None, f"split '{name}' field 'pairs[{index}]' must be [task_id, persona_id]"
            )
        if item[0] not in tasks:
            raise DataError(
                path, None, f"split '{name}' field 'pairs[{index}]': unknown task {item[0]!r}"
            )
        if item[1] not in personas:
            raise DataError(
                path, None, f"split '{name}' field 'pairs[{index}]': unknown persona {item[1]!r}"
            )
