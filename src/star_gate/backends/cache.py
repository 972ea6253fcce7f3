"""A persistent cache of API answers, so that a rerun or a resumed run never pays for a call twice.

One SQLite file per run directory (`api_cache.sqlite`), in WAL mode: every answer is committed as
soon as it arrives, so a crash loses at most the calls in flight. Keys are hashes of everything
that decides an answer (model, messages or prompt, sampling settings, sample number); values are
JSON. Without a path the cache lives in memory only (one process, e.g. a data-building command).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any


def cache_key(**parts: Any) -> str:
    """A stable digest of the parts (key order and dict order do not matter)."""
    text = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseCache:
    """Thread-safe get/put of JSON values by key; `path=None` keeps them in memory."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._memory: dict[str, str] = {}
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the backend's worker threads, serialised by the lock.
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            self._db.commit()

    def get(self, key: str) -> Any | None:
        """The stored answer for a request key, or None."""
        with self._lock:
            if self._db is None:
                raw = self._memory.get(key)
            else:
                row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
                raw = row[0] if row else None
        return None if raw is None else json.loads(raw)

    def put(self, key: str, value: Any) -> None:
        """Store an answer under a request key (kept across runs when the cache has a path)."""
        raw = json.dumps(value, ensure_ascii=False)
        with self._lock:
            if self._db is None:
                self._memory[key] = raw
                return
            self._db.execute(
                "INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)", (key, raw)
            )
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            if self._db is None:
                return len(self._memory)
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # later use (unlikely) falls back to memory, never a closed handle
