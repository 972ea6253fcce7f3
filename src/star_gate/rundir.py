"""The run directory: records, checkpoints and a manifest saying which stages are finished.

A stage counts as finished only once its output file has been renamed into place and the manifest
(itself written atomically) records it, so a crash at any point leaves either nothing or a whole
result, and rerunning the command resumes after the last finished stage. Output renamed into place
but not yet in the manifest (a crash between the two) is simply redone. Temporary files that a
crash left behind are removed when the run directory is opened again.

Nothing read from the environment is written here: config.yaml holds the validated config (which
has no field for secrets) and the manifest holds counts; as a second line of defence, the value of
any environment variable named like a secret (..._KEY, ..._TOKEN, ...) is replaced by its name.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from star_gate.config import ConfigError, RunConfig, config_to_yaml
from star_gate.data.jsonl import atomic_write_text, is_temporary, read_jsonl, write_jsonl
from star_gate.faults import crash_point
from star_gate.roles.prompts import TEMPLATES
from star_gate.secrets import scrub_secrets

# Counts that stages report and the manifest also sums over the whole run.
TOTALLED = ("truncated_prompts", "truncated_examples")
# Counted by API backends only, so totalled only in runs where some stage reports them.
TOTALLED_WHEN_REPORTED = (
    "api_calls",
    "api_retries",
    "api_cache_hits",
    "api_prompt_tokens",
    "api_completion_tokens",
)

STAGES = ("simulate", "score", "select", "regularize", "train")  # of one expert iteration, in order
_STAGE_OUTPUTS = {
    "simulate": "conversations.jsonl",
    "score": "scored.jsonl",
    "select": "selected.jsonl",
    "regularize": "regularized.jsonl",
    "train": "checkpoint",
}


class Layout:
    """Where each stage's records go, and the manifest key that says it finished: the one place
    that knows the run directory's names (RunDir, results, report and cli ask it).

    Training iteration k: key iter_k/STAGE, records iter_k/conversations.jsonl, ..., the
    checkpoint in iter_k/checkpoint. Evaluation of Q_k: key eval/iter_k (its scored test
    conversations) and eval/iter_k/PART (its other results), records eval/iter_k_PART.jsonl.
    A chunked stage also lists each chunk: KEY/chunk_NNNN, records OUTPUT.chunks/NNNN.jsonl.
    """

    CONTROLS_KEY = "eval/controls"
    PIPELINE_LOGS = "logs/pipeline"  # train.report_to: the pipeline's numbers, per iteration
    CONTROLS_OUTPUT = "eval/controls.jsonl"

    @staticmethod
    def stage_key(iteration: int, stage: str) -> str:
        return f"iter_{iteration}/{stage}"

    @staticmethod
    def stage_output(iteration: int, stage: str) -> str:
        return f"iter_{iteration}/{_STAGE_OUTPUTS[stage]}"

    @staticmethod
    def online_round(iteration: int, round_index: int) -> tuple[str, str, str, str]:
        """loop online, round r of iteration k: (key, scored conversations file, prefix-scores
        file, policy folder). The iteration's own key is stage_key(k, "online"), its output the
        checkpoint folder, as in the offline loop."""
        stem = f"iter_{iteration}/online/round_{round_index:03d}"
        return stem, f"{stem}.jsonl", f"{stem}_prefixes.jsonl", f"{stem}_policy"

    @staticmethod
    def train_logs(iteration: int) -> str:
        """train.report_to: the trainer's curves of iteration k."""
        return f"logs/train/iter_{iteration}"

    @staticmethod
    def eval_key(iteration: int, part: str = "") -> str:
        """part: '' (the scored test conversations), 'random', 'answers', 'persona_fit', 'judge',
        'base_answers', 'judge_base'."""
        return f"eval/iter_{iteration}" + (f"/{part}" if part else "")

    @staticmethod
    def eval_output(iteration: int, part: str) -> str:
        return f"eval/iter_{iteration}_{part}.jsonl"

    @classmethod
    def condition_keys(cls, iteration: int, condition: str) -> tuple[str, str, str, str]:
        """(simulate key, conversations file, score key, scored file) of Q_iteration's test
        conversations: condition 'experimental' (the pair's own persona) or 'random'."""
        part = "" if condition == "experimental" else condition
        key, stem = (
            cls.eval_key(iteration, part),
            f"eval/iter_{iteration}" + (f"_{part}" if part else ""),
        )
        return f"{key}/simulate", f"{stem}_conversations.jsonl", key, f"{stem}_scored.jsonl"

    @staticmethod
    def chunk(key: str, output: str, index: int) -> tuple[str, str]:
        """(key, records file) of chunk `index` of a chunked stage."""
        return f"{key}/chunk_{index:04d}", f"{output}.chunks/{index:04d}.jsonl"

    @classmethod
    def evaluated_iterations(cls, keys) -> list[int]:
        """The k whose test conversations were scored, among these manifest keys."""
        keys = set(keys)
        # Every iteration evaluated adds keys of its own, so none is numbered above len(keys).
        return [k for k in range(len(keys) + 1) if cls.eval_key(k) in keys]

    @classmethod
    def checkpoints(cls, run_dir: str | Path) -> list[Path]:
        """A run's saved checkpoints in order, iter_1's on, up to the first one not saved."""
        found: list[Path] = []
        while (
            (folder := Path(run_dir) / cls.stage_output(len(found) + 1, "train"))
            .joinpath("config.json")
            .exists()
        ):
            found.append(folder)
        return found

    @classmethod
    def trained_iterations(cls, keys) -> list[int]:
        """The k whose regularization answers were written, among these manifest keys."""
        keys = set(keys)
        return [k for k in range(1, len(keys) + 1) if cls.stage_key(k, "regularize") in keys]


# The training stages in pipeline order. A changed config section named after one of them (all
# but simulate) first changes that stage's records: a branch redoes it from iteration 1 on, and
# everything after it. Sections not named here and not listed below change every stage; the
# evaluation's own sections change the evaluation only (eval/...), and these change nothing.
_TRAINING_STAGES = ("simulate", "score", "select", "regularize", "train", "online")
_STAGE_SECTIONS = set(_TRAINING_STAGES) - {"simulate"}
_EVALUATION_ONLY = {"evaluate", "roles.judge"}
_CHANGES_NOTHING = {"run_dir", "iterations", "parallel"}
# Sections that change trained questioners only: Q_0's test records and the controls stay. Any
# other change redoes the whole evaluation (the final answers, for one, follow `regularize`).
_TRAINED_ONLY = {"select", "train", "online"}


# Fields that change how the work is cut up, not its records (chunks are matched to what they
# cover when a run resumes).
_LAYOUT_ONLY = {"simulate": ("chunk_pairs",)}


def changed_sections(before: dict, after: dict) -> list[str]:
    """The config sections that differ (top-level keys; roles by role: 'roles.judge'), layout
    fields aside."""

    def sections(config: dict) -> dict:
        flat = {k: v for k, v in config.items() if k != "roles"}
        for section, fields in _LAYOUT_ONLY.items():
            if isinstance(flat.get(section), dict):
                flat[section] = {k: v for k, v in flat[section].items() if k not in fields}
        flat |= {f"roles.{role}": v for role, v in (config.get("roles") or {}).items()}
        return flat

    before, after = sections(before), sections(after)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def stale_stages(stages: Iterable[str], changed: Iterable[str]) -> list[str]:
    """The manifest keys whose records a run under the changed sections would write otherwise."""
    changed = set(changed) - _CHANGES_NOTHING
    if not changed:
        return []
    training = changed - _EVALUATION_ONLY
    if not training <= _STAGE_SECTIONS:  # data, roles, seed, simulate, ...: every record
        return list(stages)
    first = min((_TRAINING_STAGES.index(s) for s in training), default=None)

    def stale(key: str) -> bool:
        parts = key.split("/")
        if parts[0] == "eval":
            trained = parts[1] not in ("controls", "iter_0")
            return trained or not changed <= _TRAINED_ONLY
        iteration = parts[0].removeprefix("iter_")
        if not iteration.isdigit() or len(parts) < 2 or parts[1] not in _TRAINING_STAGES:
            return True  # a stage this rule does not know: redone, to be safe
        return first is not None and (
            int(iteration) > 1 or _TRAINING_STAGES.index(parts[1]) >= first
        )

    return [key for key in stages if stale(key)]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _left_by_a_crash(folder: str, names: list[str]) -> set[str]:
    """copytree filter: temporary files and unfinished checkpoints are not finished work."""
    return {n for n in names if is_temporary(Path(n)) or n.endswith(".partial")}


class RunDir(Layout):
    """One run's folder.

    Args:
        restart: forget every finished stage (the files stay, and are overwritten as stages rerun).
        branch_from: when this run directory does not exist yet, first copy the finished stages
            of the run in `branch_from` into it, except those the config's changes would alter
            (stale_stages); they and the stages not finished there run under the new config.
    """

    def __init__(
        self, config: RunConfig, restart: bool = False, branch_from: str | Path | None = None
    ):
        self.root = Path(config.run_dir)
        self.config = config
        self.manifest_path = self.root / "manifest.json"
        if branch_from is not None:
            self._branch(Path(branch_from))
        self._check_config(restart)
        self._remove_temporaries()
        self.manifest = self._load_manifest()

    def _check_config(self, restart: bool) -> None:
        saved = self.root / "config.yaml"
        text = scrub_secrets(config_to_yaml(self.config))
        if (
            saved.exists()
            and not restart
            and not self._same_config(saved.read_text(encoding="utf-8"), text)
        ):
            raise ConfigError(
                f"{self.root} holds a run made with a different config; use a new run_dir, "
                "pass --restart to start this one over, or --branch NEW_RUN_DIR to continue a "
                "copy of it under the new config"
            )
        if restart and self.manifest_path.exists():
            self.manifest_path.unlink()
        atomic_write_text(saved, text)

    @staticmethod
    def _same_config(saved: str, text: str) -> bool:
        """Equal as configs, not as text: a field added to the schema later, with a default that
        changes nothing, must not lock its users out of their earlier runs."""
        if saved == text:
            return True
        try:
            old, new = (RunConfig.model_validate(yaml.safe_load(t)) for t in (saved, text))
        except (ValueError, yaml.YAMLError):  # a field since removed or renamed: not the same run
            return False
        # Where jobs run (parallel) never changes what they give: a run may resume on Ray workers.
        return old.model_copy(update={"parallel": new.parallel}) == new

    def _branch(self, source: Path) -> None:
        """Copy the finished work of `source` here, unless an earlier call did (the branch is then
        resumed like any run); the copy appears whole or not at all."""
        if source.resolve() == self.root.resolve():
            raise ConfigError(f"--branch needs a new run directory, not {source} itself")
        if self.root.exists():
            return
        if not (source / "config.yaml").exists():
            raise ConfigError(f"{source} holds no run to branch from")
        staging = self.root.with_name(self.root.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging, ignore=_left_by_a_crash)
        source_config = yaml.safe_load((staging / "config.yaml").read_text(encoding="utf-8"))
        (staging / "config.yaml").unlink()  # replaced by the new config in _check_config
        manifest_path = staging / "manifest.json"
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            after = yaml.safe_load(config_to_yaml(self.config))
            changed = [c for c in changed_sections(source_config, after) if c != "run_dir"]
            stale = stale_stages(manifest["stages"], changed)
            for key in stale:
                _remove(staging / manifest["stages"].pop(key)["output"])
            manifest["branched_from"] = str(source)
            manifest["branch_redoes"] = {"changed": changed, "stages": len(stale)}
            atomic_write_text(manifest_path, scrub_secrets(json.dumps(manifest, indent=2)))
        staging.rename(self.root)

    def _remove_temporaries(self) -> None:
        for path in self.root.rglob(".*.tmp"):
            if path.is_file() and is_temporary(path):
                path.unlink(missing_ok=True)

    def _load_manifest(self) -> dict:
        if self.manifest_path.exists():
            try:
                return json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                # Written atomically, so only an outside hand can have damaged it.
                raise ConfigError(
                    f"{self.manifest_path} is damaged; pass --restart to start the run over"
                ) from None
        return {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "prompt_versions": {name: t.version for name, t in TEMPLATES.items()},
            "stages": {},
        }

    def _save_manifest(self) -> None:
        atomic_write_text(self.manifest_path, scrub_secrets(json.dumps(self.manifest, indent=2)))

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def is_done(self, key: str, covering: str | None = None) -> bool:
        """Listed in the manifest, and the output is there with the size it had when listed;
        with `covering`, a chunk that covers those records (jobs.covered; chunks listed before
        it was recorded are taken as they are)."""
        entry = self.manifest["stages"].get(key)
        if entry is None:
            return False
        if covering is not None and entry.get("covers", covering) != covering:
            return False
        output = self.path(entry["output"])
        if "bytes" in entry:
            return output.is_file() and output.stat().st_size == entry["bytes"]
        return output.exists()

    def mark_done(self, key: str, output: Path, **info) -> None:
        """List a stage as finished, with its counts (such as prompts truncated to fit a model's
        context, which the pipeline passes); the TOTALLED ones are summed over the run in the
        manifest's "totals"."""
        crash_point("before_mark", key)
        counts = ", ".join(f"{k}={v}" for k, v in info.items() if isinstance(v, (int, float, str)))
        print(f"[{time.strftime('%H:%M:%S')}] done {key} {counts}", file=sys.stderr, flush=True)
        size = {"bytes": output.stat().st_size} if output.is_file() else {}
        self.manifest["stages"][key] = {
            "output": str(output.relative_to(self.root)),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **size,
            **info,
        }
        stages = self.manifest["stages"].values()
        reported = [
            name for name in TOTALLED_WHEN_REPORTED if any(name in entry for entry in stages)
        ]
        self.manifest["totals"] = {
            name: sum(entry.get(name, 0) for entry in stages) for name in (*TOTALLED, *reported)
        }
        peaks = [entry["peak_rss_mb"] for entry in stages if "peak_rss_mb" in entry]
        if peaks:  # the run's peak resident memory (each process's, as its stages recorded it)
            self.manifest["peak_rss_mb"] = max(peaks)
        self._save_manifest()
        crash_point("after_mark", key)

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
