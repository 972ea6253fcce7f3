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

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from star_gate.backends.base import Chat, SamplingParams
from star_gate.backends.models import resolve_model
from star_gate.backends.tokens import fit_prompt, stop_token_ids, text_ids


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def count_generated(new_tokens: torch.Tensor, stop_ids: list[int]) -> int:
    """Tokens each row generated up to and including its first stop token (the rest is padding)."""
    stopped = torch.isin(new_tokens, torch.tensor(stop_ids, device=new_tokens.device))
    after_stop = (stopped.cumsum(-1) - stopped.int()) > 0
    return int((~after_stop).sum())


class TransformersBackend:
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
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.max_context = max_context
        self.progress = progress
        self.truncated_prompts = 0  # prompts cut from the left to fit max_context (counted, not hidden)
        self.generated_tokens = 0  # new tokens produced, up to and including each row's stop token
        if model_object is None:
            path = resolve_model(model)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model_object = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, self.device))
        self.model = model_object.to(self.device).eval()
        self.tokenizer = tokenizer
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop_ids = stop_token_ids(
            self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id
        )

    # -- shared -----------------------------------------------------------------------------
    def encode_prompt(self, chat: Chat, room: int = 0) -> list[int]:
        """Token ids of a chat ready for the assistant's reply, left-truncated to leave `room`
        (at least one token is kept, even when `room` alone fills the context)."""
        ids, cut = fit_prompt(self.tokenizer, chat, self.max_context, room)
        self.truncated_prompts += cut
        return ids

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    def _batches(self, order: list[int], desc: str):
        starts = range(0, len(order), self.batch_size)
        bar = tqdm(starts, desc=desc, leave=False, disable=not self.progress or len(starts) < 2)
        for start in bar:
            yield order[start : start + self.batch_size]

    # -- generation -------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[str]]:
        prompts = [self.encode_prompt(chat, room=params.max_new_tokens) for chat in chats]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[str]] = [[] for _ in prompts]
        torch.manual_seed(params.seed)
        for batch in self._batches(order, "generate"):
            for index, texts in zip(batch, self._generate_batch([prompts[i] for i in batch], params)):
                results[index] = texts
        return results

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[list[str]]:
        if params.temperature == 0 and params.n > 1:
            # Greedy decoding is deterministic: decode once, repeat (transformers refuses n > 1).
            once = self._generate_batch(prompts, replace(params, n=1))
            return [texts * params.n for texts in once]
        ids, mask = self._left_pad(prompts)
        sampling = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            if params.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=params.max_new_tokens,
            num_return_sequences=params.n,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        new_tokens = out[:, ids.shape[1] :]
        self.generated_tokens += count_generated(new_tokens, self.stop_ids)
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        return [texts[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    # -- scoring ----------------------------------------------------------------------------
    def logprobs(self, chats: Sequence[Chat], completions: Sequence[str]) -> list[float]:
        return [math.fsum(values) for values in self.token_logprobs(chats, completions)]

    @torch.inference_mode()
    def token_logprobs(self, chats: Sequence[Chat], completions: Sequence[str]) -> list[list[float]]:
        """Per completion token, log p(token | chat, earlier tokens): the terms `logprobs` sums."""
        if len(chats) != len(completions):
            raise ValueError("logprobs needs one completion per chat")
        targets = [text_ids(self.tokenizer, c) for c in completions]
        prompts = [self.encode_prompt(chat, room=len(t)) for chat, t in zip(chats, targets)]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(targets[i]))
        results: list[list[float]] = [[] for _ in prompts]
        for batch in self._batches(order, "score"):
            rows = self._logprob_batch([prompts[i] for i in batch], [targets[i] for i in batch])
            for index, values in zip(batch, rows):
                results[index] = values
        return results

    def _logprob_batch(self, prompts: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        ids, mask = self._left_pad([p + t for p, t in zip(prompts, targets)])
        # Without explicit positions a left-padded row would be shifted and score differently.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        longest = max(len(t) for t in targets)
        if longest == 0:  # every completion is empty: no terms, log p = 0
            return [[] for _ in targets]
        # Left padding puts every completion at the end, so only the last columns need logits.
        logits = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=longest + 1
        ).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        next_ids = ids[:, -longest:]
        token_logp = logp.gather(-1, next_ids.unsqueeze(-1)).squeeze(-1).tolist()
        # Row r's completion fills its last len(target) columns (an empty one fills none).
        return [
            token_logp[row][longest - len(target) :] if target else []
            for row, target in enumerate(targets)
        ]
