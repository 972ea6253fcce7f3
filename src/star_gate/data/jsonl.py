"""JSONL reading with located errors, and atomic writing."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from star_gate.faults import crash_point_for_path

_BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """Bad input data. The message names the file, the line and the field."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")


def _refuse_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    """json.loads would silently keep the last of two equal keys; a repeated field is an error."""
    row = {}
    for key, value in pairs:
        if key in row:
            raise ValueError(f"field '{key}' appears twice")
        row[key] = value
    return row


def _is_escaped_byte(char: str) -> bool:
    return "\udc80" <= char <= "\udcff"  # how surrogateescape stores a byte that is not UTF-8


def _fields_with_bad_bytes(line: bytes) -> list[str]:
    """The top-level fields whose string value holds the invalid bytes, when the line is JSON."""
    try:
        row = json.loads(line.decode("utf-8", "surrogateescape"))
    except ValueError:
        return []
    if not isinstance(row, dict):
        return []
    return [
        key
        for key, value in row.items()
        if isinstance(value, str) and any(_is_escaped_byte(c) for c in value)
    ]


def _decode_line(path: Path, number: int, line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        fields = _fields_with_bad_bytes(line)
        where = f"field '{fields[0]}': " if fields else ""
        raise DataError(path, number, f"{where}invalid UTF-8 at byte {err.start}") from None


def read_jsonl(path: Path | str) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; raise DataError on anything else.

    A UTF-8 byte-order mark at the start of the file (as some editors write) is ignored.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except OSError as err:
        raise DataError(path, None, f"cannot be read ({err.strerror})") from None
    raw = raw.removeprefix(_BOM)
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        text = _decode_line(path, number, line)
        try:
            row = json.loads(text, object_pairs_hook=_refuse_repeated_keys)
        except json.JSONDecodeError as err:
            raise DataError(path, number, f"not valid JSON ({err.msg})") from None
        except ValueError as err:  # a repeated field
            raise DataError(path, number, str(err)) from None
        if not isinstance(row, dict):
            raise DataError(path, number, "expected a JSON object")
        yield number, row


def _sync_folder(folder: Path) -> None:
    """Make a rename durable: after a power cut the new name is there, not only the data."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its renames are journaled anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            half = len(text) // 2
            handle.write(text[:half])
            handle.flush()
            crash_point_for_path("mid_write", path.as_posix())  # tests: die with half a file
            handle.write(text[half:])
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def is_temporary(path: Path) -> bool:
    """Whether `path` is a temporary file of atomic_write_text (left behind only by a crash)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def write_jsonl(path: Path | str, rows: Iterable[dict]) -> int:
    """Atomically write rows as JSONL; return how many were written."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
