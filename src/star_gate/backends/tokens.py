"""Token ids for the local backends (transformers, vLLM), built one way so both cut the same.

A chat is rendered with the tokenizer's chat template, ready for the assistant's reply, and cut
from the left to fit the context (the policy is in backends/hf.py's docstring). Nothing here
needs torch or vLLM: only a Hugging Face tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from star_gate.backends.base import Chat

# A probe conversation: does a chat template take a system message, and render it in place?
_PROBE = [
    {"role": "system", "content": "S-probe"},
    {"role": "user", "content": "U-probe-1"},
    {"role": "assistant", "content": "A-probe-1"},
    {"role": "user", "content": "U-probe-2"},
]
_TAKES_SYSTEM: dict[str, bool] = {}  # chat template text -> verdict


def takes_system_message(tokenizer) -> bool:
    """Whether the tokenizer's chat template accepts a leading system message and renders every
    conversation as the concatenation of its prefixes with the system prompt first.

    Some do not: Mistral-7B-Instruct-v0.1/v0.2's and Gemma's templates raise on a system role,
    and later Mistral templates put the system prompt before the *last* user message, so each
    turn would see it in a different place (and training masks, derived from prefixes, break).
    """
    template = str(getattr(tokenizer, "chat_template", None))
    if template not in _TAKES_SYSTEM:
        _TAKES_SYSTEM[template] = _renders_system_in_place(tokenizer)
    return _TAKES_SYSTEM[template]


def _renders_system_in_place(tokenizer) -> bool:
    try:
        whole = tokenizer.apply_chat_template(_PROBE, tokenize=False)
        first_turn = tokenizer.apply_chat_template(
            _PROBE[:2], tokenize=False, add_generation_prompt=True
        )
    except Exception:  # noqa: BLE001 (jinja raises TemplateError via raise_exception, or others)
        return False
    return "S-probe" in first_turn and whole.startswith(first_turn.rstrip())


def fold_system_message(chat: Chat) -> Chat:
    """The chat with its system prompt moved to the start of the first user message."""
    if not chat or chat[0]["role"] != "system":
        return list(chat)
    system, rest = chat[0]["content"], list(chat[1:])
    if rest and rest[0]["role"] == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


def render_chat(tokenizer, chat: Chat, add_generation_prompt: bool = True) -> str:
    """The chat as text through the tokenizer's chat template; for templates that cannot take a
    system message in place, the system prompt opens the first user message instead. A chat that
    ends with an assistant message, rendered for a reply, is left open after that message: the
    reply continues it (an opening the caller wrote for the model)."""
    if not takes_system_message(tokenizer):
        chat = fold_system_message(chat)
    if add_generation_prompt and chat and chat[-1]["role"] == "assistant":
        return tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True)
    return tokenizer.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def chat_prompt_ids(tokenizer, chat: Chat) -> list[int]:
    """The whole chat as token ids, ending with the assistant header the reply follows."""
    text = render_chat(tokenizer, chat)
    # The template already wrote any BOS it wants; a second one would change every log-prob.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def text_ids(tokenizer, text: str) -> list[int]:
    """A completion's token ids, as they follow a prompt (no special tokens added)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def keep_last(ids: list[int], limit: int) -> list[int]:
    """The last `limit` ids, and never fewer than one: a prompt cut to nothing has no position
    to predict its first completion token from."""
    limit = max(limit, 1)
    return ids[len(ids) - limit :] if len(ids) > limit else ids


def fit_prompt(tokenizer, chat: Chat, max_context: int, room: int = 0) -> tuple[list[int], bool]:
    """Token ids of `chat` ready for the assistant's reply, cut from the left to leave `room` of
    `max_context` (at least one token stays), and whether anything was cut."""
    ids = chat_prompt_ids(tokenizer, chat)
    kept = keep_last(ids, max_context - room)
    return kept, len(kept) < len(ids)


def stop_token_ids(*eos: int | Iterable[int] | None) -> list[int]:
    """Every end-of-turn id, sorted, from ids or lists of ids (Llama 3 lists several) or None."""
    found: set[int] = set()
    for item in eos:
        if item is None:
            continue
        found.update([item] if isinstance(item, int) else item)
    return sorted(found)


class LocalTokenizerBackend:
    """What the backends holding a tokenizer (transformers, vLLM) share: prompts fitted to
    max_context and counted, and log-probs as sums of their per-token terms.

    A subclass sets self.tokenizer, self.max_context and self.work (a base.WorkCounter named
    "truncated_prompts"), and defines token_logprobs.
    """

    def encode_prompt(self, chat: Chat, room: int = 0) -> list[int]:
        """Token ids of a chat ready for the assistant's reply, left-truncated to leave `room`
        (at least one token is kept, even when `room` alone fills the context)."""
        ids, cut = fit_prompt(self.tokenizer, chat, self.max_context, room)
        self.work.add(truncated_prompts=cut)
        return ids

    @property
    def truncated_prompts(self) -> int:
        """Prompts cut to fit max_context so far (counted, never hidden)."""
        return self.work.totals["truncated_prompts"]

    def counters(self) -> dict[str, int]:
        """Work since the last call (Backend.counters): prompts cut to fit max_context."""
        return self.work.take()

    def logprobs(self, chats: Sequence[Chat], completions: Sequence[str]) -> list[float]:
        """log p(completion | chat) per pair: the sum of token_logprobs (Backend.logprobs)."""
        return [math.fsum(values) for values in self.token_logprobs(chats, completions)]
