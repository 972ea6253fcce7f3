"""Run configuration: one pydantic model per concern, nested in RunConfig.

Every field has a default and a description. Unknown keys are refused (with the closest valid
name), and cross-field rules are checked here, before any model is loaded.
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from star_gate.roles.prompts import DEFAULT_PROMPTS, TEMPLATES
from star_gate.secrets import is_secret_name


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoleConfig(Section):
    """What every role has, whatever serves it. A role's config is one of the subclasses below,
    chosen by its `backend` (each backend owns its fields; a field of another backend is refused).
    Build one from fields with RoleConfig.of(...)."""

    model: str = Field(
        "bundled", description="'bundled' (SmolLM2-135M-Instruct), a local folder or a hub id"
    )
    backend: str = Field(
        "transformers",
        description="which backend serves this role (backends/__init__.py registers them); openai: "
        "any OpenAI-compatible server; vllm: a local model on GPUs through vLLM (pip install "
        "'star-gate[vllm]')",
    )
    prompt: str = Field(
        "", description="prompt template name (roles/prompts.py); empty for the role's default"
    )
    temperature: float = Field(0.9, ge=0, description="sampling temperature; 0 is greedy")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(48, ge=1, description="longest reply in tokens")
    max_context: int = Field(
        2048, ge=64, description="prompts longer than this are cut from the left (counted)"
    )

    @classmethod
    def of(cls, **fields) -> RoleConfig:
        """The role config these fields describe: the class of their backend (default
        transformers)."""
        return _adapter(cls).validate_python(fields)

    def serving_key(self, model: str) -> tuple:
        """Roles whose keys are equal share one loaded backend (Players.backend)."""
        return (self.backend, model)

    @model_validator(mode="before")
    @classmethod
    def _drop_other_backends_defaults(cls, data):
        """Configs saved before roles were typed list every backend's fields: a field of another
        backend at its default value is dropped, any other value is refused as unknown."""
        if isinstance(data, dict) and cls is not RoleConfig:
            own = set(cls.model_fields)
            defaults = _foreign_defaults()
            data = {k: v for k, v in data.items() if k in own or defaults.get(k, _MISSING) != v}
        return data

    @model_validator(mode="after")
    def _known_prompt(self):
        if self.prompt and self.prompt not in TEMPLATES:
            raise ValueError(
                f"prompt {self.prompt!r} is not a template; choose from {sorted(TEMPLATES)}"
            )
        return self

    @model_validator(mode="after")
    def _reply_fits_context(self):
        # The prompt is cut to leave room for the reply; a reply as long as the context leaves none.
        if self.max_new_tokens >= self.max_context:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must be smaller than "
                f"max_context ({self.max_context})"
            )
        return self


# The dtype of a copy of a local model's weights; empty: the model's own dtype; 'auto': bf16
# where the device computes it natively (a GPU with bf16, a CPU with AVX512-BF16 or AMX), else
# the model's own dtype (emulated bf16 on an AVX2-only CPU is many times slower than fp32).
CopyDtype = Literal["", "auto", "float32", "bfloat16", "float16"]


class TransformersRole(RoleConfig):
    """A model loaded in this process with transformers."""

    backend: Literal["transformers"] = "transformers"
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    dtype: str = Field(
        "auto", description="'auto' (bf16 on GPU, fp32 on CPU), 'float32', 'bfloat16'"
    )
    sample_dtype: CopyDtype = Field(
        "",
        description="dtype of a copy of the model that generates text (scoring keeps dtype); "
        "'bfloat16' decodes faster on a GPU or a CPU with AMX; 'auto': bf16 where the device "
        "has it natively, else dtype; empty: dtype",
    )
    score_dtype: CopyDtype = Field(
        "",
        description="dtype of the layers that compute log-probs, the output layer staying at "
        "dtype; 'bfloat16' scores about twice as fast on a CPU with bf16 instructions, each "
        "conversation's log-prob off by about 0.5 nats (SD), paired means by a few hundredths; "
        "'auto': bf16 where the device has it natively, else dtype; empty: dtype",
    )
    batch_size: int = Field(16, ge=1, description="sequences per forward pass")

    def serving_key(self, model: str) -> tuple:
        dtypes = (self.dtype, self.sample_dtype, self.score_dtype)
        return (self.backend, model, self.device, *dtypes)


class VllmRole(RoleConfig):
    """A model on this machine's GPUs through vLLM."""

    backend: Literal["vllm"] = "vllm"
    dtype: str = Field("auto", description="'auto', 'float32', 'bfloat16', 'float16'")
    tensor_parallel_size: int = Field(
        1, ge=1, description="GPUs that split the model's weights (tensor parallel)"
    )
    gpu_memory_utilization: float = Field(
        0.85,
        gt=0,
        le=1,
        description="share of each GPU's memory this model's vLLM engine reserves (weights and KV "
        "cache); engines and training on the same GPU need their shares to fit together",
    )

    def serving_key(self, model: str) -> tuple:
        return (self.backend, model, self.dtype, self.tensor_parallel_size)


class OpenAIRole(RoleConfig):
    """A model behind an OpenAI-compatible server (model: the name the server knows it by)."""

    backend: Literal["openai"] = "openai"
    base_url: str = Field(
        "",
        description="OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1; empty: "
        "api.openai.com",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="environment variable holding the API key (never the key itself)",
    )
    max_concurrency: int = Field(4, ge=1, description="requests in flight at once")
    request_timeout: float = Field(
        60.0, gt=0, description="seconds before a request times out (retried)"
    )
    max_retries: int = Field(
        6,
        ge=0,
        description="retries after 429, 5xx, timeouts, refused connections (exponential backoff)",
    )
    logprobs: Literal["auto", "echo", "prompt_logprobs", "none"] = Field(
        "auto",
        description="how completion log-probs are read: echo (/v1/completions with echo: "
        "llama.cpp, vLLM), prompt_logprobs (vLLM), auto (the first that passes a check), none "
        "(cannot score)",
    )
    chat_template: str = Field(
        "",
        description="model whose tokenizer renders chats into prompts when scoring; default: model",
    )

    def serving_key(self, model: str) -> tuple:
        return (self.backend, model, self.base_url, self.api_key_env, self.logprobs)

    @model_validator(mode="after")
    def _key_env_is_a_name(self):
        # A key pasted here would be written to config.yaml; a variable name cannot be a secret.
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError(
                "api_key_env must name an environment variable (like OPENAI_API_KEY), not hold the "
                "key"
            )
        return self


class OtherRole(RoleConfig):
    """A registered backend without fields of its own (fake, or one a user adds)."""

    @field_validator("backend")
    @classmethod
    def _registered(cls, backend: str) -> str:
        from star_gate.backends import BACKENDS  # the registry: a new backend registers only there

        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
        return backend


class RoleplayerConfig(RoleConfig):
    """The roleplayer's own fields, whatever serves it (RoleplayerConfig.of builds one)."""

    mode: Literal["persona", "grounded", "facts", "details"] = Field(
        "grounded",
        description="persona: the model sees the whole persona (paper); grounded: the model "
        "answers from the m persona facts nearest to the question; facts: those m facts are the "
        "answer; details (datasets with missing details, e.g. IN3): the facts of the missing "
        "details the question asks about, or that it has no preference when it asks about none",
    )
    facts_per_answer: int = Field(
        2, ge=1, description="m: facts retrieved per question when grounded"
    )
    embedder: str = Field(
        "bundled", description="sentence encoder for fact retrieval ('bundled' = all-MiniLM-L6-v2)"
    )
    repeat_facts: bool = Field(
        True,
        description="grounded and facts modes: false leaves the facts already told in this "
        "conversation out of the retrieval, so each answer tells something new",
    )
    answer_questions_only: bool = Field(
        False,
        description="grounded and facts modes: the facts are retrieved for the turn's questions "
        "(its sentences that ask, roles/answers.py) only, and a turn that asks nothing is told nothing ('Okay.'): "
        "advice whose words happen to lie near a persona sentence no longer draws it out",
    )

    @property
    def uses_model(self) -> bool:
        """Whether a model writes the answers (facts and details modes quote the data)."""
        return self.mode not in ("facts", "details")


class TransformersRoleplayer(RoleplayerConfig, TransformersRole):
    """A roleplayer loaded with transformers."""


class VllmRoleplayer(RoleplayerConfig, VllmRole):
    """A roleplayer served by vLLM."""


class OpenAIRoleplayer(RoleplayerConfig, OpenAIRole):
    """A roleplayer behind an OpenAI-compatible server."""


class OtherRoleplayer(RoleplayerConfig, OtherRole):
    """A roleplayer on another registered backend."""


_MISSING = object()
_TYPED = {"transformers": 0, "vllm": 1, "openai": 2}  # backends with fields of their own
_VARIANTS = {
    RoleConfig: (TransformersRole, VllmRole, OpenAIRole, OtherRole),
    RoleplayerConfig: (TransformersRoleplayer, VllmRoleplayer, OpenAIRoleplayer, OtherRoleplayer),
}


def _backend_tag(value) -> str:
    backend = value.get("backend", "transformers") if isinstance(value, dict) else value.backend
    return backend if backend in _TYPED else "other"


def _union(kind: type[RoleConfig]):
    tags = (*_TYPED, "other")
    members = tuple(Annotated[cls, Tag(tag)] for cls, tag in zip(_VARIANTS[kind], tags))
    return Annotated[Union[members], Discriminator(_backend_tag)]  # noqa: UP007


@functools.cache
def _adapter(kind: type[RoleConfig]) -> TypeAdapter:
    return TypeAdapter(
        _union(RoleplayerConfig if issubclass(kind, RoleplayerConfig) else RoleConfig)
    )


@functools.cache
def _foreign_defaults() -> dict[str, Any]:
    """Every backend-specific field with its default (fields that configs once listed for all)."""
    common = set(RoleplayerConfig.model_fields)
    return {
        name: info.default
        for cls in _VARIANTS[RoleConfig]
        for name, info in cls.model_fields.items()
        if name not in common
    }


Role = _union(RoleConfig)
Roleplayer = _union(RoleplayerConfig)


class RolesConfig(Section):
    questioner: Role = TransformersRole(
        prompt=DEFAULT_PROMPTS["questioner"], temperature=0.9, top_p=0.9
    )
    roleplayer: Roleplayer = TransformersRoleplayer(temperature=0.7, top_p=0.9)
    oracle: Role = TransformersRole(prompt="oracle", temperature=0.0, max_new_tokens=200)
    judge: Role = TransformersRole(prompt="judge", temperature=0.0, max_new_tokens=4)

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
    path: str = Field(
        "bundled", description="dataset folder (tasks/personas/gold/splits) or 'bundled'"
    )
    train_splits: tuple[str, str] = Field(
        ("A", "B"), description="splits alternated over iterations"
    )
    test_split: str = Field("test", description="held-out split for evaluation")
    max_tasks: int | None = Field(
        None, ge=1, description="use only the first N tasks of each split"
    )
    max_personas: int | None = Field(
        None, ge=1, description="use only the first N personas of each split"
    )
    train_max_tasks: int | None = Field(
        None,
        ge=1,
        description="use only the first N tasks of each training split; default: max_tasks",
    )
    train_max_personas: int | None = Field(
        None,
        ge=1,
        description="use only the first N personas of each training split; default: max_personas",
    )

    def limits(self, split: str) -> tuple[int | None, int | None]:
        """(tasks, personas) kept of a split: the train_ limits for training splits when set."""
        if split in self.train_splits and split != self.test_split:
            return (
                self.train_max_tasks or self.max_tasks,
                self.train_max_personas or self.max_personas,
            )
        return self.max_tasks, self.max_personas


class SimulateConfig(Section):
    conversations_per_pair: int = Field(
        10, ge=1, description="n: conversations sampled per (task, persona)"
    )
    max_turns: int = Field(3, ge=1, description="K: each conversation's length is uniform in 1..K")
    stop_early: bool = Field(
        False,
        description="the questioner decides when to stop: a turn that answers instead of asking "
        "ends the conversation as its final answer, after at most max_turns questions (training "
        "and test conversations alike); false: each length drawn uniformly from 1..max_turns (paper)",
    )
    chunk_pairs: int = Field(
        16, ge=1, description="pairs per saved chunk (a crash loses at most one)"
    )
    ask_samples: int = Field(
        0,
        ge=0,
        description="a questioner turn that asks nothing (roles/answers.py) is replaced by the "
        "first of up to this many further samples that asks, in training, evaluation and chat "
        "alike (part of the policy); each conversation counts its rejected samples; 0: never",
    )
    openings: list[str] = Field(
        [],
        description="exploration, training conversations only: the first question of a pair's "
        "conversation s starts with openings[s % len(openings)] and the questioner writes the "
        "rest ('' : all of it). The opening is part of the question trained on, so the trained "
        "questioner learns to write it itself; test conversations, and the on-policy rounds of "
        "loop online, never get one. Empty: none (the paper)",
    )


class SelectConfig(Section):
    top_k: int = Field(
        1,
        ge=1,
        description="conversations kept per pair, best gold log-prob first; with train.objective "
        "dpo, preference pairs per (task, persona): the i-th best against the i-th worst",
    )
    turn_cost: float = Field(
        0.0,
        ge=0,
        description="nats charged per question when ranking conversations: the best conversation "
        "is the one with the highest gold log-prob minus turn_cost x questions asked",
    )
    min_score: float | None = Field(
        None,
        description="SFT: keep a conversation only when its score reaches this (e.g. 0.01 with "
        "score.reward details: only conversations that recovered a detail, or answered a clear "
        "request at once); None keeps the best of every pair",
    )
    min_margin: float = Field(
        0.0,
        ge=0,
        description="train.objective dpo only: a preference pair is kept only when its chosen "
        "conversation beats the rejected one by more than this many nats of gold log-prob",
    )


class ScoreConfig(Section):
    reward: Literal["gold_logprob", "gold_after_address", "details"] = Field(
        "gold_logprob",
        description="what a conversation scores: gold_logprob, log p_base(gold | task, "
        "conversation) (paper); gold_after_address, the same less the log-prob of the gold's "
        "opening address ('Aoife,'; any part of the persona's name, then a comma), so that "
        "drawing out the person's name is not most of the reward; details, the "
        "importance-weighted share of the pair's missing details its questions asked about "
        "(datasets with details.jsonl, e.g. IN3; no gold needed)",
    )


class RegularizeConfig(Section):
    mode: Literal["policy", "none", "gold"] = Field(
        "policy",
        description="final turn: the previous policy's answer (paper), none (questions only), or "
        "the gold",
    )
    max_new_tokens: int = Field(200, ge=1, description="longest final answer")
    answer_prompt: str = Field(
        "",
        description="prompt template of every final answer the questioner writes: these "
        "regularization answers and the evaluation's judged answers (e.g. questioner_answer, with "
        "worked examples of direct answers); empty: the questioner's own prompt "
        "(roles.questioner.prompt). Training examples keep the questioner's prompt either way",
    )

    answer_samples: int = Field(
        0,
        ge=0,
        description="when a temperature-0 final answer asks again or says nothing "
        "(roles/answers.py), sample up to this many more at answer_temperature, in rounds of 4 "
        "for the answers no earlier round fixed, and keep the first that answers; for these "
        "regularization answers and the evaluation's alike; 0: the greedy answer as it is (paper)",
    )
    answer_temperature: float = Field(
        1.0,
        gt=0,
        description="temperature of those extra samples. On 48 of split B's conversations, the "
        "bundled Q_0's final answers still asked again in 12.5% of cases with 4 samples at 0.7, "
        "10.4% with 8 at 0.7, and 2.1% with 4 at 1.0",
    )

    @model_validator(mode="after")
    def _known_answer_prompt(self):
        if self.answer_prompt and self.answer_prompt not in TEMPLATES:
            raise ValueError(
                f"answer_prompt {self.answer_prompt!r} is not a template; choose from {sorted(TEMPLATES)}"
            )
        return self


class LoraConfig(Section):
    enabled: bool = Field(False, description="train LoRA adapters (PEFT) instead of all weights")
    r: int = Field(16, ge=1, description="rank of each adapter")
    alpha: float = Field(
        32.0, gt=0, description="adapter scale numerator: updates are scaled by alpha / r"
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: str | list[str] = Field(
        "all-linear",
        description="'all-linear' (every linear layer but the output head) or module names",
    )


class DistributedConfig(Section):
    launcher: Literal["none", "accelerate"] = Field(
        "none",
        description="none: train inside the pipeline's process; accelerate: `accelerate launch` "
        "worker processes (many GPUs, FSDP, DeepSpeed, many machines) while the pipeline waits",
    )
    accelerate_config: str = Field(
        "",
        description="accelerate config file (see configs/accelerate/); needed with launcher: "
        "accelerate",
    )
    # Each of these overrides the accelerate config file's own value when set.
    num_processes: int | None = Field(
        None, ge=1, description="training processes over all machines"
    )
    num_machines: int | None = Field(None, ge=1, description="machines taking part")
    main_process_ip: str = Field("", description="address of machine 0, where this pipeline runs")
    main_process_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port for the process group on machine 0; 0: any free port (one machine)",
    )

    @model_validator(mode="after")
    def _launcher_has_its_config(self):
        # Whether the file exists is checked when a pipeline starts (training/launch.py), so
        # that a run directory's saved config can still be read on a machine without it.
        if self.launcher == "accelerate" and not self.accelerate_config:
            raise ValueError(
                "launcher 'accelerate' needs accelerate_config, e.g. configs/accelerate/ddp.yaml"
            )
        if self.launcher == "none" and self.accelerate_config:
            raise ValueError(
                "accelerate_config is set but launcher is 'none'; set launcher: accelerate to use it"
            )
        return self


class DpoConfig(Section):
    beta: float = Field(
        0.1,
        gt=0,
        description="strength of the pull toward the reference model (DPO's beta; TRL's default "
        "0.1)",
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="weight of an added NLL term on the chosen conversation's trained tokens "
        "(SFT+DPO); 0: plain DPO",
    )
    reference: str = Field(
        "",
        description="model whose log-probs anchor the preferences; empty: the base model "
        "(roles.questioner.model), which every Q_k is trained from",
    )


class TrainConfig(Section):
    objective: Literal["sft", "dpo"] = Field(
        "sft",
        description="sft: fine-tune on the best conversations (paper); dpo: direct preference "
        "optimization, best against worst conversation of each pair (TRL's DPO loss, same loss "
        "mask)",
    )
    dpo: DpoConfig = Field(DpoConfig(), description="settings of train.objective dpo")
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (paper: 2e-5)")
    epochs: float = Field(1.0, gt=0, description="passes over the kept conversations (paper: 1)")
    batch_size: int = Field(8, ge=1, description="examples per device step")
    gradient_accumulation: int = Field(1, ge=1, description="steps per optimizer update")
    scheduler: str = Field("cosine", description="learning-rate schedule (paper: cosine)")
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="share of steps warming up (paper: 0.1)"
    )
    max_length: int = Field(1024, ge=32, description="longest training sequence (paper: 1024)")
    validation_fraction: float = Field(
        0.05, ge=0, lt=1, description="held out for eval loss (paper: 0.05)"
    )
    bf16: bool | None = Field(
        None,
        description="bf16 mixed precision; default: on where the device has bf16 natively (a GPU "
        "that has it, a CPU with AVX512-BF16 or AMX), where it makes training several times "
        "faster; true on a CPU without them emulates bf16, many times slower than fp32",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass: less memory, about a third more "
        "compute (TRL's default is on; a small model on a CPU does not need it)",
    )
    padding_free: bool = Field(
        True,
        description="batch examples as one unpadded sequence (TRL padding_free): no compute spent "
        "on padding; attention stays within each example through its position ids",
    )
    prompt: str = Field(
        "",
        description="prompt template the trained questioners Q_1, Q_2, ... are trained with and "
        "then prompted with; empty: roles.questioner.prompt (the paper's choice). Q_0 keeps "
        "roles.questioner.prompt. A short prompt (questioner_plain) makes training and the trained "
        "questioners' turns faster",
    )
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = Field(
        "none",
        description="where to log the trainer's curves and, once per iteration, the pipeline's "
        "numbers (selection gain, train loss, test gains); under the run directory's logs/",
    )
    lora: LoraConfig = Field(
        LoraConfig(),
        description="LoRA adapters, merged into the saved checkpoint; off: full fine-tuning",
    )
    distributed: DistributedConfig = Field(
        DistributedConfig(),
        description="train in worker processes across GPUs or machines; default: in-process",
    )

    @model_validator(mode="after")
    def _questioner_prompt(self):
        choices = sorted(name for name in TEMPLATES if name.startswith("questioner_"))
        if self.prompt and self.prompt not in choices:
            raise ValueError(
                f"prompt {self.prompt!r} is not a questioner template; choose from {choices}"
            )
        return self


class OnlineConfig(Section):
    """loop online: on-policy rounds, each a small batch of fresh conversations and one update."""

    rounds: int = Field(8, ge=1, description="policy updates per iteration")
    pairs_per_round: int = Field(
        4,
        ge=1,
        description="(task, persona) pairs sampled per round, each a group of "
        "simulate.conversations_per_pair conversations; rounds cycle through the split",
    )
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate of each update")
    kl_coef: float = Field(
        0.05,
        ge=0,
        description="weight of the per-token KL penalty to Q_BASE (the k3 estimator on the "
        "trained tokens); 0: none",
    )
    per_turn: bool = Field(
        False,
        description="credit per question: each question's tokens get the reward still to come "
        "from it (from the prefix scores) against its group's mean at that question; false: one "
        "advantage per conversation (GRPO)",
    )
    normalize: bool = Field(
        True,
        description="divide the advantages of a group by the standard deviation of its rewards",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping of each update")


class EvaluateConfig(Section):
    conversations_per_pair: int = Field(
        10, ge=1, description="conversations per test pair per model"
    )
    max_turns: int | None = Field(
        None, ge=1, description="K for evaluation; default: simulate.max_turns"
    )
    random_persona: bool = Field(
        True,
        description="also simulate with the roleplayer holding another test persona (paper's random "
        "condition)",
    )
    random_conversations_per_pair: int | None = Field(
        None,
        ge=1,
        description="conversations per test pair in the random-persona condition; default: "
        "conversations_per_pair. The control differs from the true persona by far more than Q_k "
        "from Q_0, so fewer conversations measure it",
    )
    win_rates: bool = Field(
        True, description="judge each Q_k's final answers against Q_0's with roles.judge"
    )
    judged_conversations_per_pair: int = Field(
        1, ge=1, description="conversations per test pair whose final answers are judged (paper: 1)"
    )
    judged_pairs: int | None = Field(
        None,
        ge=1,
        description="test pairs whose final answers are written, judged and fitted, drawn once "
        "from the seed, the same for every Q_k: final answers are the evaluation's slowest part; "
        "None: all",
    )
    judge_order: Literal["random", "counterbalanced", "calibrated"] = Field(
        "random",
        description="random: one order per comparison, drawn from the seed (paper); "
        "counterbalanced: both orders, and a disagreement counts as a tie; calibrated "
        "(judge_method logprobs only): both orders, the contender's log-odds averaged over them "
        "decides, so a constant preference for a position cancels out. Ignored by pointwise and "
        "persona_fit, which show no two answers side by side",
    )
    judge_method: Literal["generate", "logprobs", "pointwise", "persona_fit"] = Field(
        "logprobs",
        description="generate: parse the judge's 'A'/'B' reply (API judges); "
        "logprobs: compare log p('A') with log p('B'), which never fails to parse; "
        "pointwise: the judge sees one answer at a time and the higher log p('Yes') - log p('No') "
        "wins; persona_fit: no judge, the answer whose per-token log p_base gains more from the "
        "persona (the frozen base model's, as in scoring) wins",
    )
    pointwise_prompt: str = Field(
        DEFAULT_PROMPTS["judge_pointwise"],
        description="prompt template of the judge with judge_method pointwise",
    )
    persona_fit: bool = Field(
        True,
        description="score each judged final answer's persona fit with the frozen base model: "
        "[log p(answer | persona, task) - log p(answer | task)] per token (needs win_rates, which "
        "makes the final answers)",
    )
    answer_max_new_tokens: int = Field(200, ge=1, description="longest final answer that is judged")
    response_model_ablation: bool = Field(
        False,
        description="also judge Q_BASE's answers after Q_k's conversations (isolates the questions)",
    )
    question_gains: bool = Field(
        False,
        description="also score every test conversation cut before each question: the gain in "
        "gold log-prob each question (with its answer) brings, averaged per question number for "
        "each Q_k (which questions help?)",
    )
    roleplayer: Roleplayer | None = Field(
        None,
        description="roleplayer for test conversations (generalization ablation); default: "
        "roles.roleplayer",
    )

    @model_validator(mode="after")
    def _judge_order_fits_method(self):
        if self.judge_order == "calibrated" and self.judge_method != "logprobs":
            raise ValueError(
                f"judge_order 'calibrated' needs judge_method 'logprobs' (it averages the log-odds "
                f"log p('A') - log p('B') over both orders), not {self.judge_method!r}; use "
                "judge_order counterbalanced or random with that method"
            )
        if self.pointwise_prompt not in TEMPLATES:
            raise ValueError(
                f"pointwise_prompt {self.pointwise_prompt!r} is not a template; choose from {sorted(TEMPLATES)}"
            )
        return self

    @property
    def judge_scores(self) -> bool:
        """Whether the judge (roles.judge) must score given text (read log-probs) in this config."""
        return self.win_rates and self.judge_method in ("logprobs", "pointwise")

    @property
    def uses_judge(self) -> bool:
        """Whether roles.judge is asked at all (persona_fit judges with the frozen base model)."""
        return self.win_rates and self.judge_method != "persona_fit"


class ParallelConfig(Section):
    """Where simulation, scoring, final answers, controls and judging run. Never what they give:
    a run may be resumed under another engine (RunDir compares configs without this section)."""

    engine: Literal["none", "ray"] = Field(
        "none",
        description="none: every job in this process; ray: chunks spread over Ray workers, each "
        "holding its own model replicas (pip install 'star-gate[ray]')",
    )
    workers: int = Field(
        2, ge=1, description="Ray workers (actors), each loading the models its chunks need"
    )
    address: str = Field(
        "",
        description="empty: start a private local Ray instance; 'auto' or 'ray://HOST:10001': join "
        "a running cluster (run_dir and data.path must then be on a filesystem every node shares)",
    )
    cpus_per_worker: float = Field(
        1,
        gt=0,
        description="CPU cores reserved per worker; Ray sets its OMP_NUM_THREADS (torch threads) to "
        "it",
    )
    gpus_per_worker: float = Field(
        0, ge=0, description="GPUs per worker (fractions share a GPU); 0: CPU only"
    )


class RunConfig(Section):
    run_dir: str = Field(
        "runs/demo", description="where every record, checkpoint and manifest goes"
    )
    seed: int = Field(0, description="all randomness derives from this")
    iterations: int = Field(3, ge=1, description="N: expert-iteration rounds (paper: 3)")
    loop: Literal["offline", "online"] = Field(
        "offline",
        description="offline: each iteration samples with Q_{k-1}, keeps the best and fine-tunes "
        "Q_BASE (paper); online: each iteration is `online.rounds` on-policy updates of the "
        "current policy on group-relative advantages of the score, with a KL penalty to Q_BASE",
    )
    online: OnlineConfig = Field(OnlineConfig(), description="settings of loop online")
    data: DataConfig = DataConfig()
    roles: RolesConfig = RolesConfig()
    simulate: SimulateConfig = SimulateConfig()
    score: ScoreConfig = ScoreConfig()
    select: SelectConfig = SelectConfig()
    regularize: RegularizeConfig = RegularizeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    parallel: ParallelConfig = ParallelConfig()

    @model_validator(mode="after")
    def _online_loop(self):
        if self.loop != "online":
            return self
        if self.simulate.conversations_per_pair < 2:
            raise ValueError(
                "loop online compares the conversations of a group: simulate.conversations_per_pair "
                "must be at least 2"
            )
        if self.questioner_prompt(trained=True) != self.questioner_prompt(trained=False):
            raise ValueError(
                "loop online samples and trains one policy with one prompt: leave train.prompt "
                "empty or equal to roles.questioner.prompt"
            )
        return self

    @model_validator(mode="after")
    def _cross_field(self):
        if self.score.reward == "details" and self.regularize.mode == "gold":
            raise ValueError(
                "regularize.mode gold needs gold answers, which score.reward details does without"
            )
        details_roleplayers = [
            label
            for label, role in (
                ("roles.roleplayer", self.roles.roleplayer),
                ("evaluate.roleplayer", self.evaluate.roleplayer),
            )
            if role is not None and role.mode == "details"
        ]
        if details_roleplayers and self.evaluate.random_persona:
            raise ValueError(
                f"{details_roleplayers[0]} mode details plays users who belong to one task: "
                "set evaluate.random_persona to false"
            )
        n, top_k = self.simulate.conversations_per_pair, self.select.top_k
        if self.train.objective == "dpo" and 2 * top_k > n:
            raise ValueError(
                f"train.objective dpo pairs the i-th best with the i-th worst conversation: select.top_k "
                f"({top_k}) pairs need simulate.conversations_per_pair of at least {2 * top_k}, not {n}"
            )
        if self.select.top_k > self.simulate.conversations_per_pair:
            raise ValueError(
                f"select.top_k ({self.select.top_k}) cannot exceed "
                f"simulate.conversations_per_pair ({self.simulate.conversations_per_pair})"
            )
        if self.evaluate.judged_conversations_per_pair > self.evaluate.conversations_per_pair:
            raise ValueError(
                f"evaluate.judged_conversations_per_pair ({self.evaluate.judged_conversations_per_pair}) cannot "
                f"exceed evaluate.conversations_per_pair ({self.evaluate.conversations_per_pair})"
            )
        if self.evaluate.answer_max_new_tokens >= self.roles.questioner.max_context:
            raise ValueError(
                f"evaluate.answer_max_new_tokens ({self.evaluate.answer_max_new_tokens}) must be smaller than "
                f"roles.questioner.max_context ({self.roles.questioner.max_context}), the policy that answers"
            )
        context = self.roles.questioner.max_context
        if self.regularize.max_new_tokens >= context:
            raise ValueError(
                f"regularize.max_new_tokens ({self.regularize.max_new_tokens}) must be smaller than "
                f"roles.questioner.max_context ({context}), the policy that writes the final answers"
            )
        return self

    @model_validator(mode="after")
    def _api_roles_that_score(self):
        # Refused here, before any model loads; whether a server's log-probs can be trusted is
        # checked by a probe when the pipeline starts (backends/openai_compat.py).
        if self.roles.questioner.backend == "openai":
            raise ValueError(
                "roles.questioner.backend cannot be 'openai': the questioner is fine-tuned every "
                "iteration and its base model scores the gold answers, so it must be a local model"
            )
        judge = self.roles.judge
        if self.evaluate.judge_scores and judge.backend == "openai" and judge.logprobs == "none":
            raise ValueError(
                "roles.judge has logprobs: none, so it cannot score with evaluate.judge_method "
                f"{self.evaluate.judge_method!r}; set judge_method: generate, or serve the judge where "
                "log-probs exist"
            )
        return self

    def questioner_prompt(self, trained: bool) -> str:
        """The prompt template of Q_0 (trained False) or of a fine-tuned Q_k (train.prompt)."""
        base = self.roles.questioner.prompt or DEFAULT_PROMPTS["questioner"]
        return (self.train.prompt or base) if trained else base

    @property
    def eval_max_turns(self) -> int:
        return self.evaluate.max_turns or self.simulate.max_turns


class ConfigError(ValueError):
    """A config that cannot run. The message is one sentence naming the field."""


def _models_in(annotation) -> list[type[BaseModel]]:
    """The config models an annotation holds: itself, or the members of a union (typed roles)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _field_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(prefix + name)
        for member in _models_in(info.annotation):
            names += [n for n in _field_names(member, prefix + name + ".") if n not in names]
    return names


def _backends_owning(field: str) -> list[str]:
    """The backends whose role config has this field (none: a field every role has, or none has)."""
    owners = [cls for cls in _VARIANTS[RoleConfig] if field in cls.model_fields]
    if len(owners) == len(_VARIANTS[RoleConfig]):
        return []
    return [cls.model_fields["backend"].default for cls in owners]


def _explain(error: ValidationError, source: str) -> str:
    """One sentence naming the field. Never the value: it may be a secret put in the wrong place."""
    first = error.errors()[0]
    # A typed role's errors name its variant after the role (roles.judge.openai.base_url): drop it.
    loc = [str(part) for part in first["loc"] if part not in (*_TYPED, "other")]
    location = ".".join(loc)
    if first["type"] == "extra_forbidden":
        owners = _backends_owning(loc[-1])
        if owners:
            return (
                f"{source}: '{location}' is a field of backend {' or '.join(owners)} only; set that "
                f"backend or remove the field"
            )
        if is_secret_name(loc[-1]):
            return (
                f"{source}: unknown key '{location}'; secrets such as API keys are never read from "
                "a config: set them in the environment (e.g. OPENAI_API_KEY) instead"
            )
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

    A config may start from another with `base: other.yaml` (a path relative to the config), so an
    ablation states only what it changes; sections merge key by key.

    Raises:
        ConfigError: one sentence naming the file and the field.
    """
    tree: dict[str, Any] = read_config_tree(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "overrides"
    for override in overrides:
        apply_override(tree, override)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_explain(err, source)) from None


def read_config_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    if "base" not in tree:
        return tree
    base = path.parent / str(tree.pop("base"))
    if base.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to {base}")
    return _merge(read_config_tree(base, (*seen, path.resolve())), tree)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = (
            _merge(base[key], value)
            if isinstance(value, dict) and isinstance(base.get(key), dict)
            else value
        )
    return merged


def config_to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
