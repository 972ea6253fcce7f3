"""The run directory: records, checkpoints and a manifest saying which stages are finished.

A stage counts as finished only once its output file has been renamed into place and the manifest
(itself written atomically) records it, so a crash at any point leaves either nothing or a whole
result, and rerunning the command resumes after the last finished stage.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from star_gate.config import ConfigError, RunConfig, config_to_yaml
from star_gate.data.jsonl import atomic_write_text, read_jsonl, write_jsonl
from star_gate.roles.prompts import TEMPLATES


class RunDir:
    def __init__(self, config: RunConfig, restart: bool = False):
        self.root = Path(config.run_dir)
        self.config = config
        self.manifest_path = self.root / "manifest.json"
        self._check_config(restart)
        self.manifest = self._load_manifest()

    def _check_config(self, restart: bool) -> None:
        saved = self.root / "config.yaml"
        text = config_to_yaml(self.config)
        if saved.exists() and saved.read_text(encoding="utf-8") != text and not restart:
            raise ConfigError(
                f"{self.root} holds a run made with a different config; use a new run_dir, "
                "or pass --restart to start this one over"
            )
        if restart and self.manifest_path.exists():
            self.manifest_path.unlink()
        atomic_write_text(saved, text)

    def _load_manifest(self) -> dict:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        return {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "prompt_versions": {name: t.version for name, t in TEMPLATES.items()},
            "stages": {},
        }

    def _save_manifest(self) -> None:
        atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=2))

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def is_done(self, key: str) -> bool:
        entry = self.manifest["stages"].get(key)
        return entry is not None and self.path(entry["output"]).exists()

    def mark_done(self, key: str, output: Path, **info) -> None:
        counts = ", ".join(f"{k}={v}" for k, v in info.items() if isinstance(v, (int, float, str)))
        print(f"[{time.strftime('%H:%M:%S')}] done {key} {counts}", file=sys.stderr, flush=True)
        self.manifest["stages"][key] = {
            "output": str(output.relative_to(self.root)),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **info,
        }
        self._save_manifest()

    def note(self, key: str, **info) -> None:
        """Record run-wide facts (counts of truncations, model calls) in the manifest."""
        self.manifest.setdefault("notes", {}).setdefault(key, {}).update(info)
        self._save_manifest()

    def records(self, key: str, decode: Callable[[dict], object]) -> list:
        entry = self.manifest["stages"][key]
        return [decode(row) for _, row in read_jsonl(self.path(entry["output"]))]

    def write_records(self, key: str, relative: str, rows: Iterable, **info) -> Path:
        output = self.path(relative)
        count = write_jsonl(output, (r.to_json() for r in rows))
        self.mark_done(key, output, records=count, **info)
        return output
