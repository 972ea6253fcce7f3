"""DPO examples: (chosen, rejected) conversations of one (task, persona), each tokenized with the
SFT loss mask of stages/train.py (the questioner's turns and the final answer); training/dpo.py
trains on them."""

from __future__ import annotations

from collections.abc import Sequence

from star_gate.data.records import Conversation, Pair
from star_gate.roles.prompts import PromptTemplate
from star_gate.stages.train import conversation_tokenizer


def build_preference_examples(
    preference_pairs: Sequence[tuple[Conversation, Conversation]],
    pairs: Sequence[Pair],
    template: PromptTemplate,
    tokenizer,
    max_length: int,
) -> tuple[list[dict], int]:
    """Tokenized (chosen, rejected) examples and how many sequences were truncated."""
    tokenize = conversation_tokenizer(pairs, template, tokenizer, max_length)
    examples, truncated = [], 0
    for chosen, rejected in preference_pairs:
        example = {}
        for side, conversation in (("chosen", chosen), ("rejected", rejected)):
            ids, mask, cut = tokenize(conversation)
            example[f"{side}_ids"], example[f"{side}_mask"] = ids, mask
            truncated += cut
        examples.append(example)
    return examples, truncated
