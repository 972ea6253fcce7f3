"""Training examples from the kept conversations, with loss only on the questioner's turns (the
model is fine-tuned on them by training/: SFT, the paper's objective, or DPO on pairs of them built
by stages/preference.py).

TRL's `assistant_only_loss` needs `{% generation %}` tags that many chat templates (SmolLM2's among
them) lack. Instead the loss mask is built from message boundaries, which works for any template
that renders a conversation as the concatenation of its prefixes: the characters of message i are
those between the rendering of messages[:i] (plus the assistant header) and that of messages[:i+1].
TRL then trains on the pre-tokenized `input_ids` with those `assistant_masks`.
"""

from __future__ import annotations

from collections.abc import Sequence

from star_gate.backends.tokens import render_chat
from star_gate.data.records import Conversation, Pair
from star_gate.roles import views
from star_gate.roles.prompts import Message, PromptTemplate


def training_chat(
    template: PromptTemplate, task: str, conversation: Conversation
) -> tuple[list[Message], list[int]]:
    """The questioner's view of a kept conversation (plus its final answer, if any).

    Returns the messages and the indices of those that carry loss: the questions and the final
    answer. The system prompt, few-shot examples, task and roleplayer answers are context only.
    """
    if conversation.response is None:
        messages = views.questioner_chat(template, task, conversation)
    else:
        messages = views.final_answer_chat(template, task, conversation)
        messages.append({"role": "assistant", "content": conversation.response})
    return messages, questioner_turns(template, messages)


def questioner_turns(template: PromptTemplate, messages: list[Message]) -> list[int]:
    """Indices of the questioner's own messages: the assistant ones after the template's opening
    (system prompt and few-shot examples) and the task."""
    first_real = len(template.opening()) + 1
    return [i for i in range(first_real, len(messages)) if messages[i]["role"] == "assistant"]


def _render(tokenizer, messages: list[Message], add_generation_prompt: bool = False) -> str:
    # As generation and scoring render it: a template without a system slot gets it folded in.
    return render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)


def tokenize_with_loss_mask(
    tokenizer, messages: list[Message], trainable: Sequence[int], max_length: int
) -> tuple[list[int], list[int], bool]:
    """Token ids of the whole chat, a 0/1 mask of the tokens that carry loss, and whether the
    sequence was cut. Sequences over max_length keep their last max_length tokens, since the
    loss-bearing turns come last.

    Raises:
        ValueError: if the chat template does not render conversations prefix by prefix.
    """
    ids, turns, truncated = tokenize_with_turns(tokenizer, messages, trainable, max_length)
    return ids, [int(turn > 0) for turn in turns], truncated


def tokenize_with_turns(
    tokenizer, messages: list[Message], trainable: Sequence[int], max_length: int
) -> tuple[list[int], list[int], bool]:
    """As tokenize_with_loss_mask, but each token is marked with the number of the trainable
    message it belongs to (1 for the first, ...; 0 for context), so that each turn can carry its
    own weight (loop online, per-question credit)."""
    full = _render(tokenizer, messages)
    spans = []
    for index in trainable:
        start = len(_render(tokenizer, messages[:index], add_generation_prompt=True))
        upto = _render(tokenizer, messages[: index + 1])
        if not full.startswith(upto):
            raise ValueError(
                "the chat template does not render a conversation as the concatenation of its "
                "prefixes, so loss masks cannot be derived from message boundaries"
            )
        spans.append((start, len(upto)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    turns = [
        next((n for n, (start, end) in enumerate(spans, 1) if start <= token_start < end), 0)
        for token_start, _ in encoded["offset_mapping"]
    ]
    truncated = len(ids) > max_length
    if truncated:
        ids, turns = ids[-max_length:], turns[-max_length:]
    return ids, turns, truncated


def conversation_tokenizer(
    pairs: Sequence[Pair], template: PromptTemplate, tokenizer, max_length: int
):
    """A function from a kept conversation to (ids, loss mask, truncated), in the questioner's
    view of it (training_chat) with its pair's task."""
    tasks = {p.pair_id: p.task.text for p in pairs}

    def tokenize(conversation: Conversation) -> tuple[list[int], list[int], bool]:
        messages, trainable = training_chat(template, tasks[conversation.pair_id], conversation)
        return tokenize_with_loss_mask(tokenizer, messages, trainable, max_length)

    return tokenize


def build_examples(
    conversations: Sequence[Conversation],
    pairs: Sequence[Pair],
    template: PromptTemplate,
    tokenizer,
    max_length: int,
) -> tuple[list[dict], int]:
    """Tokenized training examples and how many were truncated."""
    tokenize = conversation_tokenizer(pairs, template, tokenizer, max_length)
    examples, truncated = [], 0
    for conversation in conversations:
        ids, mask, cut = tokenize(conversation)
        truncated += cut
        examples.append({"input_ids": ids, "assistant_masks": mask})
    return examples, truncated
