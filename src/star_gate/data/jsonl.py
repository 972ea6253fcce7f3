"""JSONL reading with located errors, and atomic writing."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file, the line and the field."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")


def read_jsonl(path: Path | str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; raise DataError on anything else."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(path, number, f"invalid UTF-8 at byte {err.start}") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(path, number, f"not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(path, number, "expected a JSON object")
        yield number, row


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: Path | str, rows: Iterable[dict]) -> int:
    """Atomically write rows as JSONL; return how many were written."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
