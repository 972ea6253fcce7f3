"""What counts as a final answer: the rule that flags answers that ask again or say nothing."""

from __future__ import annotations

import re

MIN_ANSWER_WORDS = 4
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')\]*_]|$)")


def ends_with_question(text: str) -> bool:
    """Whether the text ends with '?', closing quotes, brackets and markdown aside."""
    return text.rstrip("\"')]*_ ").endswith("?")


def is_non_answer(text: str | None) -> bool:
    """Whether a final answer fails to answer: it is empty or shorter than MIN_ANSWER_WORDS words,
    it ends with a question mark, or its first sentence is a question (the first '.', '!' or '?'
    followed by a space or the end is a '?').

    Such an answer asks another question, or says nothing, instead of answering the request. The
    rule is deliberately simple and strict: "Looking for a book? Try Dune." counts as a non-answer.
    """
    stripped = (text or "").strip()
    if len(stripped.split()) < MIN_ANSWER_WORDS:
        return True
    if ends_with_question(stripped):
        return True
    first_end = _SENTENCE_END.search(stripped)
    return first_end is not None and first_end.group() == "?"
