"""Run configuration: one pydantic model per concern, nested in RunConfig.

Every field has a default and a description. Unknown keys are refused (with the closest valid
name), and cross-field rules are checked here, before any model is loaded.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from star_gate.roles.prompts import TEMPLATES


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleConfig(Section):
    model: str = Field("bundled", description="'bundled' (SmolLM2-135M-Instruct), a local folder or a hub id")
    backend: Literal["transformers", "fake"] = Field("transformers", description="which backend serves this role")
    prompt: str = Field("", description="prompt template name (roles/prompts.py); empty for the role's default")
    temperature: float = Field(0.9, ge=0, description="sampling temperature; 0 is greedy")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(48, ge=1, description="longest reply in tokens")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = Field("auto", description="'auto' (bf16 on GPU, fp32 on CPU), 'float32', 'bfloat16'")
    batch_size: int = Field(16, ge=1, description="sequences per forward pass")
    max_context: int = Field(2048, ge=64, description="prompts longer than this are cut from the left (counted)")

    @model_validator(mode="after")
    def _known_prompt(self):
        if self.prompt and self.prompt not in TEMPLATES:
            raise ValueError(f"prompt {self.prompt!r} is not a template; choose from {sorted(TEMPLATES)}")
        return self


class RoleplayerConfig(RoleConfig):
    mode: Literal["persona", "grounded", "facts"] = Field(
        "grounded",
        description="persona: the model sees the whole persona (paper); grounded: the model answers "
        "from the m persona facts nearest to the question; facts: those m facts are the answer",
    )
    facts_per_answer: int = Field(2, ge=1, description="m: facts retrieved per question when grounded")
    embedder: str = Field("bundled", description="sentence encoder for fact retrieval ('bundled' = all-MiniLM-L6-v2)")


class RolesConfig(Section):
    questioner: RoleConfig = RoleConfig(prompt="questioner_fewshot", temperature=0.9, top_p=0.9)
    roleplayer: RoleplayerConfig = RoleplayerConfig(temperature=0.7, top_p=0.9)
    oracle: RoleConfig = RoleConfig(prompt="oracle", temperature=0.0, max_new_tokens=200)
    judge: RoleConfig = RoleConfig(prompt="judge", temperature=0.0, max_new_tokens=4)

    @model_validator(mode="before")
    @classmethod
    def _keep_role_defaults(cls, data):
        """A partly given role keeps this role's own defaults (e.g. the judge's temperature 0)."""
        if isinstance(data, dict):
            data = {
                name: {**cls.model_fields[name].default.model_dump(exclude_unset=True), **value}
                if name in cls.model_fields and isinstance(value, dict)
                else value
                for name, value in data.items()
            }
        return data


class DataConfig(Section):
    path: str = Field("bundled", description="dataset folder (tasks/personas/gold/splits) or 'bundled'")
    train_splits: tuple[str, str] = Field(("A", "B"), description="splits alternated over iterations")
    test_split: str = Field("test", description="held-out split for evaluation")
    max_tasks: int | None = Field(None, ge=1, description="use only the first N tasks of each split")
    max_personas: int | None = Field(None, ge=1, description="use only the first N personas of each split")


class SimulateConfig(Section):
    conversations_per_pair: int = Field(10, ge=1, description="n: conversations sampled per (task, persona)")
    max_turns: int = Field(3, ge=1, description="K: each conversation's length is uniform in 1..K")
    chunk_pairs: int = Field(16, ge=1, description="pairs per saved chunk (a crash loses at most one)")


class SelectConfig(Section):
    top_k: int = Field(1, ge=1, description="conversations kept per pair, best gold log-prob first")


class RegularizeConfig(Section):
    mode: Literal["policy", "none", "gold"] = Field(
        "policy",
        description="final turn: the previous policy's answer (paper), none (questions only), or the gold",
    )
    max_new_tokens: int = Field(200, ge=1, description="longest final answer")


class TrainConfig(Section):
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (paper: 2e-5)")
    epochs: float = Field(1.0, gt=0, description="passes over the kept conversations (paper: 1)")
    batch_size: int = Field(8, ge=1, description="examples per device step")
    gradient_accumulation: int = Field(1, ge=1, description="steps per optimizer update")
    scheduler: str = Field("cosine", description="learning-rate schedule (paper: cosine)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps warming up (paper: 0.1)")
    max_length: int = Field(1024, ge=32, description="longest training sequence (paper: 1024)")
    validation_fraction: float = Field(0.05, ge=0, lt=1, description="held out for eval loss (paper: 0.05)")
    bf16: bool | None = Field(None, description="bf16 mixed precision; default: on when a GPU has it")


class EvaluateConfig(Section):
    conversations_per_pair: int = Field(10, ge=1, description="conversations per test pair per model")
    max_turns: int | None = Field(None, ge=1, description="K for evaluation; default: simulate.max_turns")


class RunConfig(Section):
    run_dir: str = Field("runs/demo", description="where every record, checkpoint and manifest goes")
    seed: int = Field(0, description="all randomness derives from this")
    iterations: int = Field(3, ge=1, description="N: expert-iteration rounds (paper: 3)")
    data: DataConfig = DataConfig()
    roles: RolesConfig = RolesConfig()
    simulate: SimulateConfig = SimulateConfig()
    select: SelectConfig = SelectConfig()
    regularize: RegularizeConfig = RegularizeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _cross_field(self):
        if self.select.top_k > self.simulate.conversations_per_pair:
            raise ValueError(
                f"select.top_k ({self.select.top_k}) cannot exceed "
                f"simulate.conversations_per_pair ({self.simulate.conversations_per_pair})"
            )
        return self

    @property
    def eval_max_turns(self) -> int:
        return self.evaluate.max_turns or self.simulate.max_turns


class ConfigError(ValueError):
    """A config that cannot run. The message is one sentence naming the field."""


def _field_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(prefix + name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _field_names(annotation, prefix + name + ".")
    return names


def _explain(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(location, _field_names(RunConfig), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: unknown key '{location}'{hint}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: {location + ': ' if location else ''}{message}"


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Apply one 'a.b.c=value' override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    path, raw = override.split("=", 1)
    keys = path.strip().split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: '{key}' is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config, apply overrides and validate.

    Raises:
        ConfigError: one sentence naming the file and the field.
    """
    tree: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        try:
            tree = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for override in overrides:
        apply_override(tree, override)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_explain(err, source)) from None


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
