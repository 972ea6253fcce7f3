"""The transformers backend: local models on CPU or GPU.

Generation uses left padding so every row's new tokens start at the same column; prompts are
sorted by length before batching to waste little compute on padding. Log-probs also use left
padding, with explicit position ids, so that a padded row computes exactly what it would alone.

Truncation policy (text longer than the model's context never stops a stage):
    generation  the prompt is cut from the left to max_context - max_new_tokens tokens, so the
                most recent turns and the assistant header stay and the system prompt and
                few-shot examples go first (the config refuses max_new_tokens >= max_context);
    scoring     the completion (the gold answer) is never cut, since its log-prob is the result;
                the prompt is cut from the left to leave room for it, keeping at least one token.
Every cut prompt is counted in `truncated_prompts`; the pipeline stores the count with each
finished stage in the run's manifest, and their sum in its "totals". The cutting itself lives in
backends/tokens.py, shared with the vLLM backend so that both cut the same prompts the same way.
"""

from __future__ import annotations

import copy as copy_module
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from star_gate.backends.base import Chat, SamplingParams, WorkCounter
from star_gate.backends.models import resolve_model
from star_gate.backends.shared_prefix import SharedPrefixRunner, common_prefix_length
from star_gate.backends.tokens import LocalTokenizerBackend, stop_token_ids, text_ids

SCORE_LOGIT_TOKENS = 2048  # completion positions whose logits one scoring batch holds (~0.4 GB)


def pick_device(device: str) -> str:
    """'auto' is the first GPU when there is one, else the CPU."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_flags() -> set[str]:
    """The instruction-set flags this CPU advertises (Linux); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def native_bf16(device: str) -> bool:
    """Whether `device` computes in bf16 at full speed: a GPU that has it, or a CPU with
    AVX512-BF16 or AMX. Elsewhere bf16 is emulated: on an AVX2-only AMD EPYC a bf16 matrix
    product took 80 times as long as the same one in fp32."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' is bf16 on a GPU and fp32 on a CPU; otherwise the named torch dtype."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class FullPrecisionOutput(torch.nn.Module):
    """A model's output layer fed by lower-precision layers: the logits come out at the layer's
    own precision, so log-softmax over 49k tokens adds no rounding of its own."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden.to(self.layer.weight.dtype))


def with_output_layer(body: torch.nn.Module, layer: torch.nn.Module) -> torch.nn.Module:
    """`body` (a causal LM) with `layer` as its output layer, sharing every other weight with it;
    `body` itself keeps its own output layer."""
    mixed = copy_module.copy(body)
    mixed._modules = dict(body._modules)  # its own table of submodules: the swap stays local
    mixed.set_output_embeddings(FullPrecisionOutput(layer))
    return mixed


class TransformersBackend(LocalTokenizerBackend):
    """Serve a causal LM with transformers.

    Example:
        >>> backend = TransformersBackend("bundled")
        >>> backend.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(n=2))
    """

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_context: int = 2048,
        progress: bool = True,
        model_object=None,
        tokenizer=None,
        sample_dtype: str = "",
        score_dtype: str = "",
    ):
        from transformers import AutoTokenizer

        self.name = model
        self.device = pick_device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_context = max_context
        self.progress = progress
        self.work = WorkCounter("truncated_prompts")  # prompts cut from the left to fit max_context
        self.generated_tokens = 0  # new tokens produced, up to and including each row's stop token
        self._path = None  # where the weights load from again, when they were loaded here
        if model_object is None:
            self._path = resolve_model(model)
            tokenizer = AutoTokenizer.from_pretrained(self._path)
            model_object = self._load_full()
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop_ids = stop_token_ids(
            self.tokenizer.eos_token_id, model_object.generation_config.eos_token_id
        )
        self._model = model_object.to(self.device).eval()
        self._runner = None
        self._copies: dict[torch.dtype, torch.nn.Module] = {}  # low-precision copies, by dtype
        self._score_dtype = self._other_dtype(score_dtype)
        sample_at = self._other_dtype(sample_dtype)
        if sample_at:
            # Sampled text needs no exact log-probs: a bf16 copy decodes faster (on GPUs, and on
            # CPUs with AVX512-BF16 or AMX).
            self.sampler = SharedPrefixRunner(self._copy_at(sample_at), self.tokenizer.pad_token_id)
            if self._path is not None:
                # A policy is only ever sampled from: its full-precision weights (twice the copy's
                # bytes) load again from disk if something scores with it.
                self._model = None
        else:
            self.sampler = self.runner

    def _other_dtype(self, name: str) -> torch.dtype | None:
        """The dtype `name` names, where it is not the model's own; 'auto' names bf16 where this
        device computes it natively (native_bf16), else nothing."""
        if name == "auto":
            name = "bfloat16" if native_bf16(self.device) else ""
        dtype = getattr(torch, name) if name else None
        return dtype if dtype != self._model.dtype else None

    def _copy_at(self, dtype: torch.dtype):
        """The model at `dtype`: one copy, shared by sampling and scoring."""
        if dtype not in self._copies:
            self._copies[dtype] = copy_module.deepcopy(self.model).to(dtype)
        return self._copies[dtype]

    def _load_full(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(
            self._path, dtype=pick_dtype(self.dtype, self.device)
        )

    @property
    def model(self):
        """The model at its own dtype (which scores, unless score_dtype names another)."""
        if self._model is None:
            self._model = self._load_full().to(self.device).eval()
        return self._model

    @property
    def runner(self) -> SharedPrefixRunner:
        """Scoring, and generation unless a sample_dtype copy samples."""
        if self._runner is None:
            scoring = self.model
            if self._score_dtype is not None:
                # Layers at score_dtype, the output layer and the log-softmax at full precision
                # (docs/performance.md, "Score"): a conversation's log-prob moves by about 0.5 nats, paired
                # means by a few hundredths.
                output = self.model.get_output_embeddings()
                scoring = with_output_layer(self._copy_at(self._score_dtype), output)
                if self._path is not None:
                    self._model = None  # all but its output layer: it loads again if asked for
            self._runner = SharedPrefixRunner(scoring, self.tokenizer.pad_token_id)
        return self._runner

    @classmethod
    def from_role(cls, role, model: str, progress: bool, cache_path=None) -> TransformersBackend:
        """Build from a role config (the fields this backend reads)."""
        return cls(
            model=model,
            device=role.device,
            dtype=role.dtype,
            batch_size=role.batch_size,
            max_context=role.max_context,
            progress=progress,
            sample_dtype=role.sample_dtype,
            score_dtype=role.score_dtype,
        )

    # -- shared -----------------------------------------------------------------------------
    def _batches(self, sizes: list[int], desc: str) -> list[list[int]]:
        """Consecutive index groups whose sizes add up to at most batch_size (one item at least)."""
        groups: list[list[int]] = []
        total = 0
        for index, size in enumerate(sizes):
            if not groups or total + size > self.batch_size:
                groups.append([])
                total = 0
            groups[-1].append(index)
            total += size
        return list(
            tqdm(groups, desc=desc, leave=False, disable=not self.progress or len(groups) < 2)
        )

    # -- generation -------------------------------------------------------------------------
    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """params.n replies per chat. Identical chats are prefilled once and sampled together, and
        the prefix all chats share is computed once (backends/shared_prefix.py)."""
        prompts = [tuple(self.encode_prompt(chat, room=params.max_new_tokens)) for chat in chats]
        greedy = params.temperature == 0
        per_chat = (
            1 if greedy else params.n
        )  # greedy decoding is deterministic: decode once, repeat
        distinct = sorted(set(prompts), key=lambda p: (len(p), p))
        copies = Counter(prompts)
        shared = common_prefix_length(distinct)
        generator = None
        if not greedy:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        sampling = None if greedy else (params.temperature, params.top_p)
        samples = [copies[p] * per_chat for p in distinct]
        drawn: dict[tuple, list[list[int]]] = {}
        for batch in self._batches(samples, "generate"):
            new = self.sampler.sample(
                list(distinct[0][:shared]),
                [list(distinct[i][shared:]) for i in batch],
                [samples[i] for i in batch],
                params.max_new_tokens,
                self.stop_ids,
                sampling,
                generator,
            )
            drawn.update(zip((distinct[i] for i in batch), new))
        results, taken = [], Counter()
        for prompt in prompts:  # the k-th chat with this prompt takes the k-th share of its samples
            start = taken[prompt] * per_chat
            taken[prompt] += 1
            texts = [self._reply(ids) for ids in drawn[prompt][start : start + per_chat]]
            results.append(texts * params.n if greedy else texts)
        return results

    def _reply(self, ids: list[int]) -> str:
        self.generated_tokens += len(ids)
        if ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # -- scoring ----------------------------------------------------------------------------
    def _score_batches(self, order, targets) -> list[list[int]]:
        """Rows in `order`, batch_size at most per batch, and fewer where their completions' logits
        (rows x longest completion x vocabulary) would pass SCORE_LOGIT_TOKENS: memory stays flat."""
        groups: list[list[int]] = []
        longest = 0
        for index in order:
            longest_with = max(longest, len(targets[index]))
            if (
                not groups
                or len(groups[-1]) >= self.batch_size
                or longest_with * (len(groups[-1]) + 1) > SCORE_LOGIT_TOKENS
            ):
                groups.append([])
                longest_with = len(targets[index])
            groups[-1].append(index)
            longest = longest_with
        return list(
            tqdm(groups, desc="score", leave=False, disable=not self.progress or len(groups) < 2)
        )

    def token_logprobs(
        self, chats: Sequence[Chat], completions: Sequence[str]
    ) -> list[list[float]]:
        """Per completion token, log p(token | chat, earlier tokens): the terms `logprobs` sums."""
        if len(chats) != len(completions):
            raise ValueError("logprobs needs one completion per chat")
        targets = [text_ids(self.tokenizer, c) for c in completions]
        prompts = [self.encode_prompt(chat, room=len(t)) for chat, t in zip(chats, targets)]
        shared = common_prefix_length(prompts)
        # By length, and rows that share a prompt side by side, so a batch runs that prompt once.
        longest_with: dict[tuple[int, ...], int] = {}
        for prompt, target in zip(prompts, targets):
            key = tuple(prompt)
            longest_with[key] = max(longest_with.get(key, 0), len(prompt) + len(target))
        order = sorted(
            range(len(prompts)), key=lambda i: (longest_with[tuple(prompts[i])], prompts[i], i)
        )
        results: list[list[float]] = [[] for _ in prompts]
        for rows in self._score_batches(order, targets):
            scored = self.runner.score(
                prompts[0][:shared], [prompts[i][shared:] for i in rows], [targets[i] for i in rows]
            )
            for index, values in zip(rows, scored):
                results[index] = values
        return results
