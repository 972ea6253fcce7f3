"""The vLLM backend: local models on GPUs, batched and scheduled by vLLM (an optional extra).

Install with `pip install 'star-gate[vllm]'` (GPU only); `vllm` is imported only when a role
names this backend, so everything else works without it.

Prompts are the transformers backend's: each chat is rendered and cut by backends/tokens.py (the
truncation policy is in backends/hf.py's docstring; every cut is counted in `truncated_prompts`)
and handed to vLLM as token ids, so vLLM never tokenizes or truncates anything itself.

Generation: one `LLM.generate` call for all chats; vLLM batches and schedules them (the role's
`batch_size` is not used). Each chat's request carries a seed of its own, derived from
(params.seed, the chat's index): chats that are equal (the n conversations of one pair start
alike) still get different samples, as the rows of a transformers batch do, and a rerun gets the
same ones. vLLM gives the n samples of one request distinct seeds itself. Greedy decoding
(temperature 0) asks for one reply per chat and repeats it n times, as the transformers backend
does.

Scoring: prompt + completion go in as one prompt with `prompt_logprobs=0`, for which vLLM returns,
at every position i >= 1, the log-prob of the token at i given the tokens before it (position 0
has none); the completion's positions are summed. vLLM samples at least one token after every
prompt and refuses a prompt that leaves no room for it, so the engine's `max_model_len` is
`max_context + 1`: prompts are cut exactly as in the transformers backend, and max_context must be
below the model's own maximum length.

Not used: the role's `device` (vLLM takes the GPUs CUDA_VISIBLE_DEVICES shows) and `batch_size`.
dtype 'auto' means bfloat16, as in the transformers backend on a GPU.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from star_gate.backends.base import Chat, SamplingParams, WorkCounter
from star_gate.backends.models import resolve_model
from star_gate.backends.tokens import LocalTokenizerBackend, stop_token_ids, text_ids
from star_gate.config import ConfigError
from star_gate.seeds import derive_seed

INSTALL_HINT = "pip install 'star-gate[vllm]' (GPU only)"


# -- the package ------------------------------------------------------------------------------


def vllm_installed() -> bool:
    """Whether the vllm package can be imported here (without importing it)."""
    if "vllm" in sys.modules:  # imported already, or blocked (None)
        return sys.modules["vllm"] is not None
    return importlib.util.find_spec("vllm") is not None


def import_vllm():
    """The vllm module, or a ConfigError that says how to install it."""
    try:
        import vllm
    except ImportError:
        raise ConfigError(
            f"backend vllm needs the vllm package, which is not installed; install it with "
            f"{INSTALL_HINT}"
        ) from None
    return vllm


def preflight(role, label: str, config, cache_path) -> None:
    """Before a run (and before its run directory exists): a role served by vLLM needs the package
    here. The config itself stays valid without it, so that a run's saved config can still be
    read, reported on and validated on a machine without a GPU.

    Raises:
        ConfigError: one sentence naming the role.
    """
    if not vllm_installed():
        raise ConfigError(
            f"{label} uses backend vllm, but the vllm package is not installed; install it with {INSTALL_HINT}"
        )


# -- reading vLLM's answers -------------------------------------------------------------------


def completion_logprobs(prompt_logprobs, ids: list[int], count: int) -> list[float]:
    """The log-probs of the last `count` tokens of `ids`, read from vLLM's `prompt_logprobs` for
    the prompt `ids`: entry i maps token ids to Logprob objects for position i (entry 0 is None,
    nothing precedes it), and with prompt_logprobs=0 holds just the token that is there."""
    if prompt_logprobs is None or len(prompt_logprobs) != len(ids):
        got = "none" if prompt_logprobs is None else f"{len(prompt_logprobs)} entries"
        raise RuntimeError(
            f"vLLM returned {got} of prompt log-probs for a prompt of {len(ids)} tokens"
        )
    values = []
    for position in range(len(ids) - count, len(ids)):
        entry = prompt_logprobs[position]
        if not entry or ids[position] not in entry:
            raise RuntimeError(f"vLLM returned no log-prob for prompt token {position}")
        values.append(float(entry[ids[position]].logprob))
    return values


def generation_eos(path: str):
    """The end-of-turn id(s) in the model's generation_config.json, or None without one."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        return None


# -- the backend ------------------------------------------------------------------------------


class VLLMBackend(LocalTokenizerBackend):
    """Serve a causal LM with vLLM on one or more GPUs (tensor parallel).

    Example:
        >>> backend = VLLMBackend("bundled", tensor_parallel_size=1)
        >>> backend.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(n=2))
    """

    def __init__(
        self,
        model: str,
        max_context: int = 2048,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        progress: bool = True,
        prefix_caching: bool = True,
    ):
        vllm = import_vllm()
        self.name = model
        self.max_context = max_context
        self.progress = progress
        # Prompts cut from the left to fit max_context (counted, not hidden), and new tokens
        # produced up to and including each reply's stop token: as in the transformers backend.
        self.work = WorkCounter("truncated_prompts")  # prompts cut from the left to fit max_context
        self.generated_tokens = 0
        path = resolve_model(model)
        self.llm = vllm.LLM(
            model=path,
            tensor_parallel_size=tensor_parallel_size,
            dtype="bfloat16" if dtype == "auto" else dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_context + 1,  # + the one token vLLM samples after a scored text
            seed=0,  # never drawn from: every request carries its own seed
            enable_prefix_caching=prefix_caching,  # the few-shot opening is shared by every prompt
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.stop_ids = stop_token_ids(self.tokenizer.eos_token_id, generation_eos(path))

    @classmethod
    def from_role(
        cls, role, model: str | None = None, progress: bool = True, cache_path=None
    ) -> VLLMBackend:
        """Build from a role config; `model` (a fine-tuned checkpoint's folder) replaces
        role.model."""
        return cls(
            model or role.model,
            max_context=role.max_context,
            dtype=role.dtype,
            tensor_parallel_size=role.tensor_parallel_size,
            gpu_memory_utilization=role.gpu_memory_utilization,
            progress=progress,
        )

    def _run(self, prompts: list[list[int]], sampling):
        """One batched call; vLLM returns the outputs in the prompts' order."""
        requests = [{"prompt_token_ids": ids} for ids in prompts]
        return self.llm.generate(requests, sampling, use_tqdm=self.progress)

    # -- generation -------------------------------------------------------------------------
    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        """params.n sampled replies per chat, in input order (Backend.generate)."""
        if not chats:
            return []
        prompts = [self.encode_prompt(chat, room=params.max_new_tokens) for chat in chats]
        greedy = params.temperature == 0
        sampling = [
            self._sampling(params, derive_seed(params.seed, i), greedy) for i in range(len(prompts))
        ]
        replies = [
            [self._reply(sample) for sample in out.outputs] for out in self._run(prompts, sampling)
        ]
        # Greedy decoding is deterministic: one reply, repeated (older vLLM refuses n > 1 there).
        return [texts * params.n for texts in replies] if greedy else replies

    def _sampling(self, params: SamplingParams, seed: int, greedy: bool):
        return import_vllm().SamplingParams(
            n=1 if greedy else params.n,
            temperature=params.temperature,
            top_p=1.0 if greedy else params.top_p,
            max_tokens=params.max_new_tokens,
            seed=seed,
            stop_token_ids=self.stop_ids,
        )

    def _reply(self, sample) -> str:
        ids = list(sample.token_ids)
        self.generated_tokens += len(ids)
        # Decoded here rather than taken from vLLM's text, so that the same ids give the same
        # text as in the transformers backend (which decodes them this way).
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # -- scoring ----------------------------------------------------------------------------
    def token_logprobs(
        self, chats: Sequence[Chat], completions: Sequence[str]
    ) -> list[list[float]]:
        """Per completion token, log p(token | chat, earlier tokens): the terms `logprobs` sums."""
        if len(chats) != len(completions):
            raise ValueError("logprobs needs one completion per chat")
        targets = [text_ids(self.tokenizer, c) for c in completions]
        longest = max((len(t) for t in targets), default=0)
        if longest >= self.max_context:  # the transformers backend would score past the context
            raise ValueError(
                f"a completion of {longest} tokens leaves no room for its chat in max_context "
                f"({self.max_context}); raise max_context"
            )
        prompts = [self.encode_prompt(chat, room=len(t)) for chat, t in zip(chats, targets)]
        scored = [i for i, t in enumerate(targets) if t]  # an empty completion: no terms, log p = 0
        sequences = [prompts[i] + targets[i] for i in scored]
        results: list[list[float]] = [[] for _ in chats]
        if sequences:
            for i, ids, out in zip(scored, sequences, self._run(sequences, self._scoring())):
                results[i] = completion_logprobs(out.prompt_logprobs, ids, len(targets[i]))
        return results

    def _scoring(self):
        # temperature 1: an engine that scales prompt log-probs by temperature leaves them as is.
        return import_vllm().SamplingParams(
            n=1, temperature=1.0, top_p=1.0, max_tokens=1, seed=0, prompt_logprobs=0
        )
